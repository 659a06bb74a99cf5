"""Zero-shot segmentation evaluation over the benchmarks (docs/evaluation.md): :class:`Evaluation` runs an
``EvaluationProtocol`` with a model; ``simzss-evaluate`` only parses its flags into one.

:func:`evaluate_dataset` runs the window engine with one classifier over one dataset and accumulates mIoU. On
with-background sets (voc21, context60, coco_object) it scores every threshold of a sweep from one forward pass
per image, selects the best one on a selection set (the training split, a held-out head of the evaluated split,
or, when none is given, the evaluated images themselves: then labelled "selected on the test split") and reports
the evaluated images at that threshold. Images are cut into shards that the processes of a run share and that an
interrupted run keeps (:class:`EvaluationRun`); ``report.py`` formats the results as the paper's tables.
"""
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from ..atomic import check_output, write_json
from ..segmentation.classifier import Classifier, build_text_classifier
from ..segmentation.engine import SlidingWindowEngine
from ..segmentation.fewshot import fewshot_classifier
from ..validation import check_count
from .datasets import BENCHMARK_ORDER, DatasetError, SegmentationDataset, get_dataset
from .metrics import IoUAccumulator, ThresholdSweep
from .protocol import EvaluationProtocol
from .ranks import Ranks
from .state import PartialState, state_folder


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


def _run_images(engine: SlidingWindowEngine, classifier: Classifier, dataset: SegmentationDataset, items,
                count: int, acc, images_per_batch: int, bar):
    """Feed ``count`` (index, (image, label)) items through the engine into ``acc``, ``images_per_batch``
    images per call."""
    batch = []
    for n in range(count):
        i, (image, label) = next(items)
        if image.shape[:2] != label.shape:
            raise DatasetError(f"{dataset.name}: image {dataset.items[i][0]} is {image.shape[1]}x{image.shape[0]} "
                               f"but its label {dataset.items[i][1]} is {label.shape[1]}x{label.shape[0]}")
        batch.append((image, label))
        if len(batch) == images_per_batch or n == count - 1:
            outputs = engine.classes_and_confidence_batch([im for im, _ in batch], classifier,
                                                          with_confidence=dataset.has_background)
            for (fg, conf), (_, truth) in zip(outputs, batch):
                if dataset.has_background:
                    acc.update(fg, conf, truth)
                else:
                    acc.update(fg, truth)
            bar.update(len(batch))
            batch = []


def _accumulate(engine: SlidingWindowEngine, classifier: Classifier, dataset: SegmentationDataset, indices: Sequence[int],
                thresholds: List[float], progress: bool, workers: int, desc: str,
                run: Optional[EvaluationRun] = None, part: str = "eval"):
    """Feed the images at ``indices`` through the engine: a ThresholdSweep on with-background sets, else an
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
            _run_images(engine, classifier, dataset, items, len(shards[k]), shard, run.images_per_batch, bar)
            if run.state is not None:
                run.state.save_shard(dataset.name, part, fingerprint, k, shard.counts())
            acc.add_counts(shard.counts())
    if run.ranks.distributed:
        total = _new_accumulator(dataset, thresholds)
        total.add_counts(run.ranks.sum(acc.counts()))
        return total
    return acc


def evaluate_dataset(engine: SlidingWindowEngine, classifier: Classifier, dataset: SegmentationDataset,
                     thresholds: List[float],
                     limit: Optional[int] = None, progress: bool = True, workers: int = 2,
                     select_on: Optional[SegmentationDataset] = None, selection_images: int = 0,
                     cosines: Optional[List[float]] = None, run: Optional[EvaluationRun] = None,
                     held_out: int = 0) -> Dict:
    """Run the engine with ``classifier`` over the dataset; returns the result dict of one dataset (the
    ``datasets`` entries of :meth:`Evaluation.run`'s report).

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
        selection = _accumulate(engine, classifier, select_on, range(n_sel), thresholds, progress, workers,
                                f"{dataset.name} (select on {select_on.split})", run, part="select")
        where = f"{select_on.split}[:{n_sel}]" + (" (held out of the reported images)" if held_out else "")
    stop = len(dataset) if limit is None else min(len(dataset), start_index + limit)
    start = time.perf_counter()
    acc = _accumulate(engine, classifier, dataset, range(start_index, stop), thresholds, progress, workers, dataset.name,
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
    background = engine.protocol.background
    result["background"] = {
        "score": background.score,
        "scale": background.scale if background.score == "softmax" else None,
        "threshold": acc.thresholds[chosen],
        "cosine": cosines[chosen] if cosines is not None else None,
        "selected_on": selected_on,
        "sweep": sweep,
    }
    return result


def _r(x: float) -> Optional[float]:
    return None if x != x else round(x, 2)


def checkpoint_identity(reference: Optional[str]):
    """What identifies the weights in the partial results' fingerprint: a file's path, size and time; any other
    reference (a hub id, none) as it is."""
    if reference is None or not Path(reference).is_file():
        return reference
    stat = Path(reference).stat()
    return {"path": str(Path(reference).resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def text_class_labels(dataset: SegmentationDataset, label: np.ndarray) -> np.ndarray:
    """A label map in text-class indices: with-background sets shift by one and ignore the background."""
    if not dataset.has_background:
        return label
    return np.where((label == 0) | (label == dataset.ignore_index), dataset.ignore_index, label - 1)


@dataclass
class EvaluationData:
    """The datasets of a protocol, read (``read``: a missing file is an error before any model is loaded), and
    the splits it selects thresholds and few-shot rows on, by (dataset name, split)."""

    datasets: List[SegmentationDataset]
    splits: Dict[tuple, SegmentationDataset]

    @classmethod
    def read(cls, protocol: EvaluationProtocol) -> "EvaluationData":
        p = protocol
        datasets = [get_dataset(n, p.data_root, p.class_names) for n in p.datasets]
        seen = {}
        for n, d in zip(p.datasets, datasets):
            if d.name in seen:
                raise DatasetError(f"{seen[d.name]} and {n} are both named {d.name!r}: give one of them another "
                                   "name in its dataset.json")
            seen[d.name] = n
        splits = {}
        for n, d in zip(p.datasets, datasets):
            needed = [p.fewshot[0]] if p.fewshot else []
            needed += [p.selection[0]] if p.selection and d.has_background else []
            for split in needed:
                splits[d.name, split] = d if split == d.split else get_dataset(n, p.data_root, p.class_names,
                                                                                split=split)
        return cls(datasets, splits)


class Evaluation:
    """One evaluation: an :class:`~.protocol.EvaluationProtocol` run with a model (docs/evaluation.md).

    Args:
        model, tokenizer: a SimZSS model (``load_model``) and its tokenizer.
        protocol: what is evaluated and how.
        output: write the results as JSON here; finished image shards are kept in ``OUTPUT.partial/`` until the
            end, and a rerun with the same settings resumes from them (``restart`` discards them).
        ranks: this process among the run's processes (default: one process).
        shard_size: images per resumable shard (and per share of work between processes).
        images_per_batch: consecutive images whose windows share the vision tower's forwards.
        window_batch_size: windows per forward.
        workers: threads decoding images ahead (0: none).
        progress: progress bars (rank 0 only).
        data: the protocol's datasets, if already read (``EvaluationData.read``).
    """

    def __init__(self, model, tokenizer, protocol: EvaluationProtocol, output: Optional[Union[str, Path]] = None,
                 restart: bool = False, ranks: Optional[Ranks] = None, shard_size: int = 100,
                 images_per_batch: int = 2, window_batch_size: int = 4, workers: int = 2, progress: bool = True,
                 data: Optional["EvaluationData"] = None):
        if not isinstance(protocol, EvaluationProtocol):
            raise TypeError("protocol must be an EvaluationProtocol")
        check_count("workers", workers, minimum=0)
        self.model, self.tokenizer, self.protocol = model, tokenizer, protocol
        self.output = None if output is None else Path(output)
        if self.output is not None:
            check_output(self.output)  # before hours of work, not after
        self.restart = restart
        self.ranks = ranks or Ranks(device=next(model.parameters()).device)
        self.shard_size, self.images_per_batch = check_count("shard_size", shard_size), \
            check_count("images_per_batch", images_per_batch)
        self.window_batch_size, self.workers, self.progress = window_batch_size, workers, progress
        self.data = data if data is not None else EvaluationData.read(protocol)
        self.datasets = self.data.datasets

    @property
    def source(self):
        return getattr(self.model, "source", None)

    def run(self, on_dataset: Optional[Callable[[str, Dict], None]] = None) -> Dict:
        """Evaluate every dataset of the protocol and return the report (written to ``output`` by rank 0);
        ``on_dataset(name, result)`` is called as each dataset finishes (the command prints it)."""
        ranks, state = self.ranks, None
        if self.output is not None:
            state = PartialState(state_folder(self.output))
            if ranks.is_main and self.restart:
                state.remove()
            ranks.barrier()
        source = self.source
        reference = getattr(source, "reference", None)
        report = {
            "model": getattr(source, "spec", None), "checkpoint": reference,
            "random_weights": getattr(source, "random_weights", None), "device": ranks.device.type,
            "world_size": ranks.world_size, "precision": self.protocol.segmentation.precision,
            "protocol": self.protocol.to_json(), "datasets": {},
        }
        for dataset in self.datasets:
            result = self._dataset(dataset, state, report["protocol"], checkpoint_identity(reference))
            report["datasets"][dataset.name] = result
            if on_dataset is not None:
                on_dataset(dataset.name, result)
        benchmarks = [n for n in BENCHMARK_ORDER if n in report["datasets"]]
        if len(benchmarks) > 1:
            report["row"] = {"columns": benchmarks, "miou": [report["datasets"][n]["miou"] for n in benchmarks]}
        if self.output is not None and ranks.is_main:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.output, report, indent=2)
            state.remove()  # the final result exists: the partial one is no longer needed
        return report

    def _dataset(self, dataset: SegmentationDataset, state: Optional[PartialState], protocol_json: Dict,
                 weights_identity) -> Dict:
        p, ranks = self.protocol, self.ranks
        segmentation = p.segmentation_for(dataset.protocol)
        thresholds, cosines, source = p.thresholds(dataset.name)
        fingerprint = {
            "model": getattr(self.source, "spec", None), "checkpoint": weights_identity,
            "device": ranks.device.type, "precision": segmentation.precision, "dataset": dataset.name,
            "root": str(Path(dataset.root).resolve()), "class_names": dataset.class_name_set,
            "protocol": {**protocol_json, **{k: getattr(segmentation, k) for k in dataset.protocol}},
            "thresholds": thresholds, "shard_size": self.shard_size, "images_per_batch": self.images_per_batch,
            "window_batch_size": self.window_batch_size,
        }
        stored = state.result(dataset.name, fingerprint) if state is not None and ranks.is_main else None
        if ranks.from_main(torch.tensor([int(stored is not None)])).item():
            if ranks.is_main:
                print(f"{dataset.name}: finished before, taken from the partial results in {state.folder} "
                      "(--restart discards them)", file=sys.stderr)
            return stored
        engine = SlidingWindowEngine(self.model, segmentation, window_batch_size=self.window_batch_size,
                                     device=ranks.device)
        classifier, held_out, readout = self._classifier(engine, dataset)
        select_on = None
        selection = p.selection
        if selection and dataset.has_background:
            select_on = self.data.splits[dataset.name, selection[0]]
        run = EvaluationRun(ranks, state, fingerprint, self.shard_size, self.images_per_batch)
        result = evaluate_dataset(engine, classifier, dataset, thresholds, p.limit, progress=self.progress,
                                  workers=self.workers, select_on=select_on,
                                  selection_images=selection[1] if selection else 0, cosines=cosines, run=run,
                                  held_out=held_out)
        result["classifier"] = readout
        if result["background"]:
            result["background"]["source"] = source
        if dataset.protocol:
            result["protocol"] = {k: getattr(segmentation, k) for k in ("short_side", "max_long_side", "window",
                                                                         "stride")}
        if state is not None and ranks.is_main:
            state.save_result(dataset.name, fingerprint, result)
        return result

    def _text_classifier(self, dataset: SegmentationDataset, engine: SlidingWindowEngine) -> Classifier:
        seg = engine.protocol
        return build_text_classifier(self.model, self.tokenizer, dataset.class_names, seg.templates, seg.synonyms,
                                     device=engine.device)

    def _classifier(self, engine: SlidingWindowEngine, dataset: SegmentationDataset):
        """(classifier, images held out of the report, what the JSON calls it): the text classifier, or the
        few-shot one (the paper's Table 8) built from ``fewshot_from``'s images, text rows only for the classes
        those images do not show."""
        fewshot = self.protocol.fewshot
        if fewshot is None:
            return self._text_classifier(dataset, engine), 0, "text (zero-shot)"
        split, count = fewshot
        source = self.data.splits[dataset.name, split]
        count = min(count, len(source))
        pairs = ((image, text_class_labels(source, label)) for image, label in (source[i] for i in range(count)))
        pairs = tqdm(pairs, total=count, desc=f"{dataset.name} (few-shot rows from {source.split})", unit="img",
                     disable=not (self.progress and self.ranks.is_main), file=sys.stderr)
        classifier = fewshot_classifier(engine, pairs, len(dataset.class_names),
                                        fallback=lambda: self._text_classifier(dataset, engine),
                                        ignore_index=dataset.ignore_index)
        held_out = min(count, len(dataset)) if split == "val" else 0
        return classifier, held_out, f"few-shot from {split}[:{fewshot[1]}] (the Table 8 diagnostic, not zero-shot)"
