"""Zero-shot segmentation evaluation over the benchmarks (docs/evaluation.md); the command is
``simzss-evaluate`` (``python -m open_clip_simzss.evaluate``).

:func:`evaluate_dataset` runs a ``ZeroShotSegmenter`` over one dataset and accumulates mIoU; on with-background
sets (voc21, context60, coco_object) it scores every threshold of a sweep from one forward pass per image and
reports the set at its best threshold (chosen on the evaluated split: say so when quoting it; every threshold's
mIoU is in the result). :func:`print_dataset` and :func:`paper_row` format the results as the paper's tables.
"""
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional

from tqdm import tqdm

from .datasets import BENCHMARK_ORDER, DatasetError, SegmentationDataset
from .metrics import IoUAccumulator, ThresholdSweep
from .segmentation import ZeroShotSegmenter

COLUMN_TITLES = {"voc20": "VOC20", "context59": "Context59", "coco_stuff": "COCO-Stuff", "cityscapes": "Cityscapes",
                 "ade20k": "ADE20K", "context60": "Context60", "coco_object": "COCO-Object", "voc21": "VOC21"}


def _prefetched(dataset: SegmentationDataset, n: int, workers: int):
    """(index, (image, label)) for the first n items, decoded ahead in threads (Pillow releases the GIL while
    decoding; a Cityscapes PNG pair takes tens of ms)."""
    if workers < 1:
        for i in range(n):
            yield i, dataset[i]
        return
    with ThreadPoolExecutor(workers) as pool:
        pending = deque(pool.submit(dataset.__getitem__, i) for i in range(min(n, 2 * workers)))
        for i in range(n):
            item = pending.popleft().result()
            if i + len(pending) + 1 < n:
                pending.append(pool.submit(dataset.__getitem__, i + len(pending) + 1))
            yield i, item


def evaluate_dataset(segmenter: ZeroShotSegmenter, dataset: SegmentationDataset, thresholds: List[float],
                     limit: Optional[int] = None, progress: bool = True, workers: int = 2) -> Dict:
    """Run the segmenter over the dataset; returns the result dict of one dataset (see ``main``)."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if dataset.has_background:
        acc = ThresholdSweep(dataset.num_classes, thresholds, dataset.ignore_index)
    else:
        acc = IoUAccumulator(dataset.num_classes, dataset.ignore_index)
    start = time.perf_counter()
    items = _prefetched(dataset, n, workers)
    for i, (image, label) in tqdm(items, total=n, desc=dataset.name, unit="img", disable=not progress,
                                  file=sys.stderr):
        if image.shape[:2] != label.shape:
            raise DatasetError(f"{dataset.name}: image {dataset.items[i][0]} is {image.shape[1]}x{image.shape[0]} "
                               f"but its label {dataset.items[i][1]} is {label.shape[1]}x{label.shape[0]}")
        fg, conf = segmenter.predict_foreground(image, with_confidence=dataset.has_background)
        if dataset.has_background:
            acc.update(fg, conf, label)
        else:
            acc.update(fg, label)
    result = {"num_images": n, "num_classes": dataset.num_classes, "seconds": round(time.perf_counter() - start, 2)}
    if dataset.has_background:
        best = acc.best()
        result.update(acc.accumulators[best].summary(dataset.label_names))
        result["background"] = {
            "score": segmenter.background_score,
            "scale": segmenter.background_scale if segmenter.background_score == "softmax" else None,
            "threshold": acc.thresholds[best],
            "sweep": [{"threshold": t, "miou": _r(m)} for t, m in zip(acc.thresholds, acc.mious())],
        }
    else:
        result.update(acc.summary(dataset.label_names))
        result["background"] = None
    return result


def _r(x: float) -> Optional[float]:
    return None if x != x else round(x, 2)


def _fmt(x: Optional[float]) -> str:
    return "  n/a" if x is None else f"{x:5.2f}"


def print_dataset(name: str, result: Dict, per_class: bool = True, out=None):
    out = out or sys.stdout  # resolved per call: sys.stdout may be replaced (pytest capture, redirection)
    print(f"\n== {name}: mIoU {_fmt(result['miou'])} ({result['num_images']} images, "
          f"{result['num_classes']} classes, {result['seconds']} s)", file=out)
    bg = result["background"]
    if bg:
        print(f"background: {bg['score']}" + (f" (scale {bg['scale']:g})" if bg["scale"] else "")
              + f", threshold {bg['threshold']:g}", file=out)
        if len(bg["sweep"]) > 1:
            print("threshold  mIoU", file=out)
            for row in bg["sweep"]:
                mark = "  <- best" if row["threshold"] == bg["threshold"] else ""
                print(f"{row['threshold']:9.4g}  {_fmt(row['miou'])}{mark}", file=out)
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
