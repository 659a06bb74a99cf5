"""``simzss-evaluate``: zero-shot semantic segmentation on the benchmarks (docs/evaluation.md).

    simzss-evaluate --model simzss-vitb14 --checkpoint CKPT --dataset voc20 --data-root data
    simzss-evaluate --checkpoint CKPT --dataset all --data-root data --background-sweep 0.3:0.7:0.05 \\
        --output results.json

Prints mIoU and a per-class IoU table per dataset (``--dataset all``: the paper's row, Tables 1-2 order) and
writes everything to ``--output`` as JSON.
"""
import json
import sys
from pathlib import Path

from ..datasets import BENCHMARK_ORDER, get_dataset
from ..evaluate import evaluate_dataset, paper_row, print_dataset
from ..metrics import parse_sweep
from ..segmentation import DEFAULT_BACKGROUND_THRESHOLD, ZeroShotSegmenter
from . import common


def build_parser():
    p = common.make_parser("evaluate", "Zero-shot semantic segmentation (TCL/MMSeg protocol, plain PyTorch).")
    common.add_model_args(p)
    p.add_argument("--dataset", required=True, help=f"one of {', '.join(BENCHMARK_ORDER)}, a comma list, or 'all'")
    p.add_argument("--data-root", required=True, help="MMSeg data root (VOCdevkit/, coco_stuff164k/, ...)")
    common.add_protocol_args(p, background_default="with-background sets only (voc21, context60, coco_object)",
                             evaluation=True)
    p.add_argument("--class-names", help="class-name file replacing ours (single dataset only)")
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    common.add_device_args(p)
    p.add_argument("--window-batch-size", type=int, default=4, help="windows per vision-tower forward")
    p.add_argument("--workers", type=int, default=2, help="threads decoding images ahead (0: none)")
    common.add_output_arg(p, "write the results as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no per-class table")
    return p


def _dataset_names(args):
    names = list(BENCHMARK_ORDER) if args.dataset == "all" else [n.strip() for n in args.dataset.split(",")]
    unknown = [n for n in names if n not in BENCHMARK_ORDER]
    if unknown or not names:
        raise common.UsageError(f"unknown dataset {', '.join(unknown) or repr(args.dataset)}; "
                                f"choose from {', '.join(BENCHMARK_ORDER)} or 'all'")
    if not Path(args.data_root).is_dir():
        raise common.UsageError(f"data root {args.data_root} does not exist")
    if args.class_names and len(names) > 1:
        raise common.UsageError("--class-names needs a single --dataset")
    common.check_positive(args, "limit", "window_batch_size")
    if args.workers < 0:
        raise common.UsageError("--workers must be >= 0")
    common.check_protocol(args)
    common.check_checkpoint(args)
    return names


def _thresholds(args):
    if args.background_sweep:
        with common.bad_input(ValueError):
            return parse_sweep(args.background_sweep)
    if args.background_threshold is not None:
        return [args.background_threshold]
    return [DEFAULT_BACKGROUND_THRESHOLD[args.background_score]]


def evaluate(args) -> int:
    names = _dataset_names(args)
    thresholds = _thresholds(args)
    device = common.device(args)
    datasets = [get_dataset(n, args.data_root, args.class_names) for n in names]
    model, tokenizer = common.load(args, device)
    if any(d.has_background for d in datasets) and args.background_threshold is None and not args.background_sweep:
        print(f"note: background threshold {thresholds[0]} ({args.background_score}) by default; "
              "calibrate with --background-sweep", file=sys.stderr)
    report = {
        "model": model.source.spec, "checkpoint": args.checkpoint, "random_weights": model.source.random_weights,
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
        result = evaluate_dataset(segmenter, dataset, thresholds, args.limit, progress=not args.quiet,
                                  workers=args.workers)
        report["datasets"][dataset.name] = result
        print_dataset(dataset.name, result, per_class=not args.quiet)
        del segmenter
    if len(datasets) > 1:
        columns = [n for n in BENCHMARK_ORDER if n in report["datasets"]]
        report["row"] = {"columns": columns, "miou": [report["datasets"][n]["miou"] for n in columns]}
        print("\n" + paper_row(report["datasets"]))
        if args.background_sweep:
            best = {n: r["background"]["threshold"] for n, r in report["datasets"].items() if r["background"]}
            print(f"(with-background sets at their best swept threshold: {best})")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.output}")
    return 0


def main(argv=None) -> int:
    return common.run(build_parser(), evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
