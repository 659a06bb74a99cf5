"""Zero-shot segmentation evaluation over the benchmarks (docs/evaluation.md); the command is
``simzss-evaluate`` (``python -m open_clip_simzss.evaluate``).

:func:`evaluate_dataset` runs a ``ZeroShotSegmenter`` over one dataset and accumulates mIoU. On with-background
sets (voc21, context60, coco_object) it scores every threshold of a sweep from one forward pass per image,
selects the best one on a selection set (the training split, a held-out head of the evaluated split, or, when
none is given, the evaluated images themselves: then labelled "selected on the test split") and reports the
evaluated images at that threshold. :func:`print_dataset` and :func:`paper_row` format the results as the
paper's tables.
"""
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

from .datasets import BENCHMARK_ORDER, DatasetError, SegmentationDataset
from .eval_state import PartialState
from .metrics import IoUAccumulator, ThresholdSweep
from .ranks import Ranks
from .segmentation import ZeroShotSegmenter, sigmoid_threshold_of_cosine
from .validation import check_count

COLUMN_TITLES = {"voc20": "VOC20", "context59": "Context59", "coco_stuff": "COCO-Stuff", "cityscapes": "Cityscapes",
                 "ade20k": "ADE20K", "context60": "Context60", "coco_object": "COCO-Object", "voc21": "VOC21"}

# Default background threshold per with-background set and confidence kind (docs/evaluation.md, "Background"):
# sigmoid = Talk2DINO ViT-B (sigmoid(cos) < 0.55, i.e. cos < 0.2007, on all three sets); softmax = ProxyCLIP
# (max softmax(40 cos) < prob_thd). Taken from those methods: NOT calibrated for SimZSS (use a sweep).
BACKGROUND_THRESHOLDS = {
    "voc21": {"sigmoid": 0.55, "softmax": 0.2},
    "context60": {"sigmoid": 0.55, "softmax": 0.15},
    "coco_object": {"sigmoid": 0.55, "softmax": 0.25},
}


def sweep_thresholds(grid: Sequence[float], background_score: str) -> List[float]:
    """Thresholds on the foreground confidence for a sweep grid: for ``sigmoid`` the grid is in cosine units
    (c -> sigmoid(c), i.e. background where max cosine < c); the ``softmax`` confidence is not a function of the
    max cosine, so its grid is in its own (probability) units."""
    if background_score == "sigmoid":
        if any(not -1 <= c <= 1 for c in grid):
            raise ValueError("a --background-sweep grid is in cosine units: values must be in [-1, 1]")
        return [sigmoid_threshold_of_cosine(c) for c in grid]
    if any(not 0 <= t <= 1 for t in grid):
        raise ValueError("a softmax --background-sweep grid is in probability units: values must be in [0, 1]")
    return [float(t) for t in grid]


def _prefetched(dataset: SegmentationDataset, indices: Sequence[int], workers: int):
    """(index, (image, label)) for ``indices``, decoded ahead in threads (Pillow releases the GIL while
    decoding; a Cityscapes PNG pair takes tens of ms)."""
    if workers < 1:
        for i in indices:
            yield i, dataset[i]
        return
    indices = list(indices)
    with ThreadPoolExecutor(workers) as pool:
        pending = deque(pool.submit(dataset.__getitem__, i) for i in indices[:2 * workers])
        for k, i in enumerate(indices):
            item = pending.popleft().result()
            if k + len(pending) + 1 < len(indices):
                pending.append(pool.submit(dataset.__getitem__, indices[k + len(pending) + 1]))
            yield i, item


@dataclass
class EvaluationRun:
    """How the images of an evaluation are run: by which processes (:class:`ranks.Ranks`), in which shards,
    and where finished shards are kept for a rerun (docs/evaluation.md, "Many GPUs" and "Interrupted runs").

    The images of a dataset are cut into shards of ``shard_size`` consecutive images; each rank takes a
    round-robin share of the shards not finished yet; within a shard, ``images_per_batch`` consecutive images
    share the vision tower's forwards. Each shard's counts are computed the same way whichever process runs
    it, and integer counts add up exactly: the result does not depend on the number of processes or on
    interruptions.
    """

    ranks: Ranks = field(default_factory=Ranks)
    state: Optional[PartialState] = None
    fingerprint: Dict = field(default_factory=dict)  # the settings the stored shards must match
    shard_size: int = 100
    images_per_batch: int = 1

    def __post_init__(self):
        check_count("shard_size", self.shard_size)
        check_count("images_per_batch", self.images_per_batch)


def _new_accumulator(dataset: SegmentationDataset, thresholds: List[float]):
    if dataset.has_background:
        return ThresholdSweep(dataset.num_classes, thresholds, dataset.ignore_index)
    return IoUAccumulator(dataset.num_classes, dataset.ignore_index)


def _run_images(segmenter: ZeroShotSegmenter, dataset: SegmentationDataset, items, count: int, acc,
                images_per_batch: int, bar):
    """Feed ``count`` (index, (image, label)) items through the segmenter into ``acc``, ``images_per_batch``
    images per call."""
    batch = []
    for n in range(count):
        i, (image, label) = next(items)
        if image.shape[:2] != label.shape:
            raise DatasetError(f"{dataset.name}: image {dataset.items[i][0]} is {image.shape[1]}x{image.shape[0]} "
                               f"but its label {dataset.items[i][1]} is {label.shape[1]}x{label.shape[0]}")
        batch.append((image, label))
        if len(batch) == images_per_batch or n == count - 1:
            outputs = segmenter.predict_foreground_batch([im for im, _ in batch],
                                                         with_confidence=dataset.has_background)
            for (fg, conf), (_, truth) in zip(outputs, batch):
                if dataset.has_background:
                    acc.update(fg, conf, truth)
                else:
                    acc.update(fg, truth)
            bar.update(len(batch))
            batch = []


def _accumulate(segmenter: ZeroShotSegmenter, dataset: SegmentationDataset, indices: Sequence[int],
                thresholds: List[float], progress: bool, workers: int, desc: str,
                run: Optional[EvaluationRun] = None, part: str = "eval"):
    """Feed the images at ``indices`` through the segmenter: a ThresholdSweep on with-background sets, else an
    IoUAccumulator, summed over the processes of ``run`` and over the shards a previous run finished."""
    run = run or EvaluationRun()
    indices = list(indices)
    shards = [indices[k: k + run.shard_size] for k in range(0, len(indices), run.shard_size)]
    fingerprint = {**run.fingerprint, "part": part, "images": [indices[0], indices[-1]] if indices else []}
    # Rank 0 reads the partial results and tells the others which shards are finished (the folder need not
    # be shared between nodes); it alone adds their stored counts.
    stored = run.state.finished_shards(dataset.name, part, fingerprint) if run.state and run.ranks.is_main else {}
    done = torch.zeros(len(shards), dtype=torch.int64)
    done[list(stored)] = 1
    finished = set(torch.nonzero(run.ranks.from_main(done)).flatten().tolist())
    acc = _new_accumulator(dataset, thresholds)
    for counts in stored.values():
        acc.add_counts(counts)
    mine = run.ranks.mine(k for k in range(len(shards)) if k not in finished)
    my_images = [i for k in mine for i in shards[k]]
    if stored:
        print(f"{desc}: {len(stored)} of {len(shards)} shards taken from the partial results in "
              f"{run.state.folder} (--restart discards them)", file=sys.stderr)
    if run.ranks.distributed:
        desc += f" (rank 0 of {run.ranks.world_size})"
    items = _prefetched(dataset, my_images, workers)
    with tqdm(total=len(my_images), desc=desc, unit="img", disable=not (progress and run.ranks.is_main),
              file=sys.stderr) as bar:
        for k in mine:
            shard = _new_accumulator(dataset, thresholds)
            _run_images(segmenter, dataset, items, len(shards[k]), shard, run.images_per_batch, bar)
            if run.state is not None:
                run.state.save_shard(dataset.name, part, fingerprint, k, shard.counts())
            acc.add_counts(shard.counts())
    if run.ranks.distributed:
        total = _new_accumulator(dataset, thresholds)
        total.add_counts(run.ranks.sum(acc.counts()))
        return total
    return acc


def evaluate_dataset(segmenter: ZeroShotSegmenter, dataset: SegmentationDataset, thresholds: List[float],
                     limit: Optional[int] = None, progress: bool = True, workers: int = 2,
                     select_on: Optional[SegmentationDataset] = None, selection_images: int = 0,
                     cosines: Optional[List[float]] = None, run: Optional[EvaluationRun] = None,
                     held_out: int = 0) -> Dict:
    """Run the segmenter over the dataset; returns the result dict of one dataset (see ``cli.evaluate``).

    With several ``thresholds`` on a with-background set, the threshold is selected on the first
    ``selection_images`` images of ``select_on``; when ``select_on`` is ``dataset`` itself, those images are
    held out (not in the reported mIoU). Without ``select_on`` it is selected on the reported images, and the
    result says "selected on the test split". ``cosines``: the sweep grid in cosine units, recorded beside each
    threshold. ``limit`` bounds the number of reported images. ``run``: processes, shards and partial results
    (:class:`EvaluationRun`; default one process, nothing kept). ``held_out``: the first images of ``dataset``
    that are not reported (they built a few-shot classifier).
    """
    sweeping = dataset.has_background and len(thresholds) > 1
    if held_out >= len(dataset):
        raise DatasetError(f"{dataset.name}: holding out {held_out} of its {len(dataset)} images leaves none to "
                           "evaluate")
    if held_out and select_on is dataset:
        raise ValueError("held-out images and a selection on the evaluated split cannot be combined")
    start_index = held_out
    selection = None
    if sweeping and select_on is not None:
        if selection_images < 1:
            raise ValueError("selection_images must be positive")
        held_out = select_on is dataset
        n_sel = min(selection_images, len(select_on))
        if held_out:
            if n_sel >= len(dataset):
                raise DatasetError(f"{dataset.name}: selecting on {selection_images} of its {len(dataset)} "
                                   "images leaves none to evaluate")
            start_index = n_sel
        selection = _accumulate(segmenter, select_on, range(n_sel), thresholds, progress, workers,
                                f"{dataset.name} (select on {select_on.split})", run, part="select")
        where = f"{select_on.split}[:{n_sel}]" + (" (held out of the reported images)" if held_out else "")
    stop = len(dataset) if limit is None else min(len(dataset), start_index + limit)
    start = time.perf_counter()
    acc = _accumulate(segmenter, dataset, range(start_index, stop), thresholds, progress, workers, dataset.name,
                      run)
    result = {"num_images": stop - start_index, "first_image": start_index, "num_classes": dataset.num_classes,
              "class_names": dataset.class_name_set, "seconds": round(time.perf_counter() - start, 2)}
    if not dataset.has_background:
        result.update(acc.summary(dataset.label_names))
        result["background"] = None
        return result
    if not sweeping:
        chosen, selected_on = 0, None
    elif selection is None:
        chosen, selected_on = acc.best(), f"test split ({dataset.split}, the reported images)"
    else:
        chosen, selected_on = selection.best(), where
    result.update(acc.accumulators[chosen].summary(dataset.label_names))
    sweep = []
    for k, (t, m) in enumerate(zip(acc.thresholds, acc.mious())):
        row = {"threshold": t, "miou": _r(m)}
        if cosines is not None:
            row = {"cosine": cosines[k], **row}
        if selection is not None:
            row["selection_miou"] = _r(selection.mious()[k])
        sweep.append(row)
    result["background"] = {
        "score": segmenter.background_score,
        "scale": segmenter.background_scale if segmenter.background_score == "softmax" else None,
        "threshold": acc.thresholds[chosen],
        "cosine": cosines[chosen] if cosines is not None else None,
        "selected_on": selected_on,
        "sweep": sweep,
    }
    return result


def _r(x: float) -> Optional[float]:
    return None if x != x else round(x, 2)


def _fmt(x: Optional[float]) -> str:
    return "  n/a" if x is None else f"{x:5.2f}"


def print_dataset(name: str, result: Dict, per_class: bool = True, out=None):
    out = out or sys.stdout  # resolved per call: sys.stdout may be replaced (pytest capture, redirection)
    first = f", from image {result['first_image']}" if result.get("first_image") else ""
    print(f"\n== {name}: mIoU {_fmt(result['miou'])} ({result['num_images']} images{first}, "
          f"{result['num_classes']} classes, class names {result['class_names']}, {result['seconds']} s)", file=out)
    if result.get("classifier", "text").startswith("few-shot"):
        print(f"classifier: {result['classifier']}", file=out)
    bg = result["background"]
    if bg:
        line = (f"background: {bg['score']}" + (f" (scale {bg['scale']:g})" if bg["scale"] else "")
                + f", threshold {bg['threshold']:.4g}"
                + (f" (cosine {bg['cosine']:g})" if bg["cosine"] is not None else ""))
        if bg["selected_on"]:
            line += f", selected on the {bg['selected_on']}"
        elif bg.get("source"):
            line += f" ({bg['source']})"
        print(line, file=out)
        if len(bg["sweep"]) > 1:
            cos = bg["sweep"][0].get("cosine") is not None
            sel = "selection_miou" in bg["sweep"][0]
            print(("  cosine" if cos else "") + "  threshold" + ("  selection" if sel else "") + "   mIoU", file=out)
            for row in bg["sweep"]:
                mark = "  <- selected" if row["threshold"] == bg["threshold"] else ""
                print((f"{row['cosine']:8.4g}" if cos else "") + f"  {row['threshold']:9.4g}"
                      + (f"  {_fmt(row['selection_miou']):>9}" if sel else "") + f"  {_fmt(row['miou'])}{mark}",
                      file=out)
    if per_class:
        width = max(len(c) for c in result["per_class"])
        print(f"{'class':<{width}}  IoU", file=out)
        for cls, iou in result["per_class"].items():
            print(f"{cls:<{width}}  {_fmt(iou)}", file=out)


def paper_row(results: Dict[str, Dict]) -> str:
    """Markdown header and row, Tables 1-2 column order, "|" between without- and with-background sets."""
    cols = [n for n in BENCHMARK_ORDER if n in results]

    def line(cells):
        no_bg = [c for n, c in zip(cols, cells) if BENCHMARK_ORDER.index(n) < 5]
        bg = [c for n, c in zip(cols, cells) if BENCHMARK_ORDER.index(n) >= 5]
        return "| " + " | ".join(no_bg + (["‖"] if no_bg and bg else []) + bg) + " |"
    return (line([COLUMN_TITLES[n] for n in cols]) + "\n"
            + line([_fmt(results[n]["miou"]).strip() for n in cols]))


if __name__ == "__main__":  # python -m open_clip_simzss.evaluate
    from open_clip_simzss.cli.evaluate import main
    raise SystemExit(main())
