"""Zero-shot segmentation evaluation CLI (SPEC §5, EVAL_PROTOCOL.md).

    python -m open_clip_simzss.evaluate --model simzss-vitb14 --checkpoint CKPT --dataset voc20 --data-root data
    python -m open_clip_simzss.evaluate --model simzss-vitb14 --checkpoint CKPT --dataset all --data-root data \\
        --background-sweep 0.3:0.7:0.05 --output results.json

Prints mIoU and a per-class IoU table per dataset (``--dataset all``: the paper's row, Tables 1-2 order) and
writes everything to ``--output`` as JSON. On with-background sets (voc21, context60, coco_object) a pixel is
background when its foreground confidence is below the threshold (``segmentation`` module docstring); a
``--background-sweep`` scores every threshold from one forward pass per image and reports each set at its best
threshold (chosen on the evaluated split: say so when quoting it; every threshold's mIoU is in the JSON).
Without ``--checkpoint`` the model has random weights (smoke tests only). Bad input gives one line on stderr
and exit status 2.
"""
import argparse
import json
import logging
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

import torch
from tqdm import tqdm

from .datasets import BENCHMARK_ORDER, DatasetError, SegmentationDataset, get_dataset
from .metrics import IoUAccumulator, ThresholdSweep, parse_sweep
from .segmentation import BACKGROUND_SCORES, DEFAULT_BACKGROUND_SCALE, TEMPLATE_SETS, ZeroShotSegmenter, resolve_device

# Used when a with-background set is evaluated without --background-threshold/--background-sweep. Talk2DINO's
# sigmoid(cos) threshold (cos < 0.2 is background) and ProxyCLIP's softmax(40 cos) threshold for VOC21.
# Neither is calibrated for SimZSS: measure with --background-sweep.
DEFAULT_BACKGROUND_THRESHOLD = {"sigmoid": 0.55, "softmax": 0.2}
COLUMN_TITLES = {"voc20": "VOC20", "context59": "Context59", "coco_stuff": "COCO-Stuff", "cityscapes": "Cityscapes",
                 "ade20k": "ADE20K", "context60": "Context60", "coco_object": "COCO-Object", "voc21": "VOC21"}


class UsageError(Exception):
    """Bad command-line input: reported as one line on stderr."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m open_clip_simzss.evaluate",
                description="Zero-shot semantic segmentation (TCL/MMSeg protocol, plain PyTorch).")
    p.add_argument("--model", default="simzss-vitb14", help="SimZSS config name or local-dir:PATH")
    p.add_argument("--checkpoint", help="SimZSS checkpoint (without it: random weights, smoke tests only)")
    p.add_argument("--dataset", required=True,
                   help=f"one of {', '.join(BENCHMARK_ORDER)}, a comma list, or 'all'")
    p.add_argument("--data-root", required=True, help="MMSeg data root (VOCdevkit/, coco_stuff164k/, ...)")
    bg = p.add_mutually_exclusive_group()
    bg.add_argument("--background-threshold", type=float, help="with-background sets (voc21, context60, "
                    "coco_object): background where the foreground confidence is below this "
                    f"(default per score: {DEFAULT_BACKGROUND_THRESHOLD})")
    bg.add_argument("--background-sweep", metavar="START:STOP:STEP",
                    help="evaluate many thresholds from one pass, e.g. 0.1:0.9:0.05 (or a comma list)")
    p.add_argument("--background-score", choices=BACKGROUND_SCORES, default="sigmoid",
                   help="foreground confidence: sigmoid(max cos) or max softmax(scale * cos)")
    p.add_argument("--background-scale", type=float, default=DEFAULT_BACKGROUND_SCALE,
                   help="softmax scale s (only with --background-score softmax)")
    p.add_argument("--pamr", action="store_true", help="refine window scores with PAMR")
    p.add_argument("--templates", default="openai80", help=f"template set: {', '.join(TEMPLATE_SETS)}")
    p.add_argument("--synonyms", choices=("mean", "max"), default="mean")
    p.add_argument("--class-names", help="class-name file replacing ours (single dataset only)")
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16", "pure_bf16", "pure_fp16"))
    p.add_argument("--window-batch-size", type=int, default=4, help="windows per vision-tower forward")
    p.add_argument("--workers", type=int, default=2, help="threads decoding images ahead (0: none)")
    p.add_argument("--short-side", type=int, default=448, help="protocol: 448 (EVAL_PROTOCOL.md §1.2)")
    p.add_argument("--max-long-side", type=int, default=2048, help="protocol: 2048")
    p.add_argument("--window", type=int, default=448, help="protocol: 448 (§1.3)")
    p.add_argument("--stride", type=int, default=224, help="protocol: 224")
    p.add_argument("--output", help="write the results as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no per-class table")
    return p


def _check_args(args) -> List[str]:
    names = list(BENCHMARK_ORDER) if args.dataset == "all" else [n.strip() for n in args.dataset.split(",")]
    unknown = [n for n in names if n not in BENCHMARK_ORDER]
    if unknown or not names:
        raise UsageError(f"unknown dataset {', '.join(unknown) or repr(args.dataset)}; "
                         f"choose from {', '.join(BENCHMARK_ORDER)} or 'all'")
    if not Path(args.data_root).is_dir():
        raise UsageError(f"data root {args.data_root} does not exist")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise UsageError(f"checkpoint {args.checkpoint} not found")
    if args.class_names and len(names) > 1:
        raise UsageError("--class-names needs a single --dataset")
    if args.templates not in TEMPLATE_SETS:
        raise UsageError(f"unknown template set {args.templates!r}; choose from {', '.join(TEMPLATE_SETS)}")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be positive")
    if args.workers < 0:
        raise UsageError("--workers must be >= 0")
    if min(args.window_batch_size, args.short_side, args.max_long_side, args.window, args.stride) < 1:
        raise UsageError("sizes, stride and --window-batch-size must be positive")
    if args.background_scale <= 0:
        raise UsageError("--background-scale must be positive")
    return names


def _thresholds(args) -> List[float]:
    if args.background_sweep:
        try:
            return parse_sweep(args.background_sweep)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if args.background_threshold is not None:
        return [args.background_threshold]
    return [DEFAULT_BACKGROUND_THRESHOLD[args.background_score]]


def _device(name: Optional[str]) -> torch.device:
    try:
        return resolve_device(name)
    except ValueError as e:
        raise UsageError(str(e)) from None


def load_model(args, device):
    """(model, tokenizer, has_weights). Model errors (missing or broken checkpoint) become UsageError."""
    import open_clip
    import open_clip_simzss
    from .factory import resolve_model_config
    try:
        _, _, bundled = resolve_model_config(args.model)
        model = open_clip_simzss.create_model(args.model, pretrained=args.checkpoint, device=device,
                                              precision=args.precision)
        tokenizer = open_clip.get_tokenizer(args.model)
    except Exception as e:  # noqa: BLE001 - any load failure is bad input here; say it in one line
        raise UsageError(f"cannot load model {args.model!r}: {type(e).__name__}: {e}") from None
    model.eval()
    return model, tokenizer, bool(args.checkpoint or bundled)


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


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        names = _check_args(args)
        thresholds = _thresholds(args)
        device = _device(args.device)
        datasets = [get_dataset(n, args.data_root, args.class_names) for n in names]
        model, tokenizer, has_weights = load_model(args, device)
    except (UsageError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not has_weights:
        print(f"warning: no --checkpoint: {args.model} has random weights (smoke test only)", file=sys.stderr)
    if any(d.has_background for d in datasets) and args.background_threshold is None and not args.background_sweep:
        print(f"note: background threshold {thresholds[0]} ({args.background_score}) by default; "
              "calibrate with --background-sweep", file=sys.stderr)

    report = {
        "model": args.model, "checkpoint": args.checkpoint, "random_weights": not has_weights,
        "device": str(device), "precision": args.precision,
        "protocol": {"short_side": args.short_side, "max_long_side": args.max_long_side, "window": args.window,
                     "stride": args.stride, "templates": args.templates, "synonyms": args.synonyms,
                     "pamr": args.pamr, "background_score": args.background_score,
                     "background_scale": args.background_scale, "limit": args.limit},
        "datasets": {},
    }
    for dataset in datasets:
        segmenter = ZeroShotSegmenter(
            model, tokenizer, dataset.class_names, templates=args.templates, short_side=args.short_side,
            max_long_side=args.max_long_side, window=args.window, stride=args.stride,
            background_score=args.background_score, background_scale=args.background_scale, pamr=args.pamr,
            synonyms=args.synonyms, window_batch_size=args.window_batch_size, device=device,
        )
        try:
            result = evaluate_dataset(segmenter, dataset, thresholds, args.limit, progress=not args.quiet,
                                      workers=args.workers)
        except DatasetError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        report["datasets"][dataset.name] = result
        print_dataset(dataset.name, result, per_class=not args.quiet)
        del segmenter
    if len(datasets) > 1:
        row = paper_row(report["datasets"])
        report["row"] = {"columns": [n for n in BENCHMARK_ORDER if n in report["datasets"]],
                         "miou": [report["datasets"][n]["miou"] for n in BENCHMARK_ORDER if n in report["datasets"]]}
        print("\n" + row)
        if args.background_sweep:
            best = {n: r["background"]["threshold"] for n, r in report["datasets"].items() if r["background"]}
            print(f"(with-background sets at their best swept threshold: {best})")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
