"""``simzss-evaluate``: zero-shot semantic segmentation on the benchmarks (docs/evaluation.md).

    simzss-evaluate --model simzss-vitb14 --checkpoint CKPT --dataset voc20 --data-root data
    simzss-evaluate --checkpoint CKPT --dataset all --data-root data --background-sweep 0.0:0.4:0.01 \\
        --sweep-on train:500 --output results.json

Prints mIoU and a per-class IoU table per dataset (``--dataset all``: the paper's row, Tables 1-2 order) and
writes everything to ``--output`` as JSON.
"""
import json
import sys
from pathlib import Path

from ..datasets import BENCHMARK_ORDER, CLASS_NAME_SETS, DEFAULT_CLASS_NAMES, SPLITS, get_dataset
from ..evaluate import BACKGROUND_THRESHOLDS, evaluate_dataset, paper_row, print_dataset, sweep_thresholds
from ..metrics import parse_sweep
from ..segmentation import PRECISIONS, ZeroShotSegmenter
from . import common


def build_parser():
    p = common.make_parser("evaluate", "Zero-shot semantic segmentation (TCL/MMSeg protocol, plain PyTorch).")
    common.add_model_args(p)
    p.add_argument("--dataset", required=True, help=f"one of {', '.join(BENCHMARK_ORDER)}, a comma list, or 'all'")
    p.add_argument("--data-root", required=True, help="MMSeg data root (VOCdevkit/, coco_stuff164k/, ...)")
    common.add_protocol_args(p, background_default="with-background sets only (voc21, context60, coco_object); "
                             "default per dataset, see docs/evaluation.md", evaluation=True)
    p.add_argument("--class-names", default=DEFAULT_CLASS_NAMES, metavar="|".join(CLASS_NAME_SETS) + "|FILE",
                   help=f"text class names: a shipped set (default {DEFAULT_CLASS_NAMES}: the MMSeg 0.27 / TCL "
                        "strings) or a file (single dataset only)")
    p.add_argument("--sweep-on", metavar="train:N|val:N",
                   help="select the swept background threshold on the first N images of the training split, or "
                        "of the evaluated split (then held out of the reported mIoU); default: on the "
                        "evaluated images (labelled 'selected on the test split')")
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    common.add_device_args(p, PRECISIONS)
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
    if args.class_names not in CLASS_NAME_SETS:
        if not Path(args.class_names).is_file():
            raise common.UsageError(f"--class-names {args.class_names}: not one of {', '.join(CLASS_NAME_SETS)} "
                                    "nor a file")
        if len(names) > 1:
            raise common.UsageError("--class-names FILE needs a single --dataset")
    common.check_positive(args, "limit", "window_batch_size")
    if args.workers < 0:
        raise common.UsageError("--workers must be >= 0")
    common.check_protocol(args)
    common.check_checkpoint(args)
    return names


def _sweep_on(args):
    """--sweep-on "train:N" / "val:N" -> (split, N), or None."""
    if args.sweep_on is None:
        return None
    if not args.background_sweep:
        raise common.UsageError("--sweep-on needs --background-sweep")
    split, _, n = args.sweep_on.partition(":")
    if split not in SPLITS or not n.isdigit() or int(n) < 1:
        raise common.UsageError(f"bad --sweep-on {args.sweep_on!r}: expected train:N or val:N with N >= 1")
    return split, int(n)


def _sweep(args):
    """(thresholds, cosine grid) of --background-sweep, or None without one."""
    if not args.background_sweep:
        return None
    with common.bad_input(ValueError):
        grid = parse_sweep(args.background_sweep)
        thresholds = sweep_thresholds(grid, args.background_score)
    return thresholds, (grid if args.background_score == "sigmoid" else None)


def _thresholds(args, name, sweep):
    """(thresholds in confidence units, cosine grid or None, where the threshold comes from)."""
    if sweep:
        return sweep[0], sweep[1], "sweep"
    if args.background_threshold is not None:
        return [args.background_threshold], None, "--background-threshold"
    default = BACKGROUND_THRESHOLDS.get(name, {}).get(args.background_score)
    return [default], None, "per-dataset default, not calibrated for SimZSS"


def evaluate(args) -> int:
    names = _dataset_names(args)
    sweep_on = _sweep_on(args)
    sweep = _sweep(args)
    device = common.device(args)
    datasets = [get_dataset(n, args.data_root, args.class_names) for n in names]
    selection_sets = {d.name: get_dataset(d.name, args.data_root, args.class_names, split="train")
                      for d in datasets if d.has_background and sweep_on and sweep_on[0] == "train"}
    model, tokenizer = common.load(args, device, precision="fp32")  # amp_bf16 autocasts the windows only
    if any(d.has_background for d in datasets) and sweep is None and args.background_threshold is None:
        print(f"note: per-dataset default background thresholds ({args.background_score}), not calibrated for "
              "SimZSS; calibrate with --background-sweep and --sweep-on", file=sys.stderr)
    report = {
        "model": model.source.spec, "checkpoint": args.checkpoint, "random_weights": model.source.random_weights,
        "device": str(device), "precision": args.precision,
        "protocol": {"short_side": args.short_side, "max_long_side": args.max_long_side, "window": args.window,
                     "stride": args.stride, "templates": args.templates, "class_names": args.class_names,
                     "synonyms": args.synonyms, "pamr": args.pamr, "background_score": args.background_score,
                     "background_scale": args.background_scale, "background_sweep": args.background_sweep,
                     "sweep_on": args.sweep_on, "limit": args.limit},
        "datasets": {},
    }
    for dataset in datasets:
        segmenter = ZeroShotSegmenter(
            model, tokenizer, dataset.class_names, templates=args.templates, short_side=args.short_side,
            max_long_side=args.max_long_side, window=args.window, stride=args.stride,
            background_score=args.background_score, background_scale=args.background_scale, pamr=args.pamr,
            synonyms=args.synonyms, window_batch_size=args.window_batch_size, device=device,
            precision=args.precision,
        )
        thresholds, cosines, source = _thresholds(args, dataset.name, sweep)
        select_on = None
        if sweep_on and dataset.has_background:
            select_on = selection_sets[dataset.name] if sweep_on[0] == "train" else dataset
        result = evaluate_dataset(segmenter, dataset, thresholds, args.limit, progress=not args.quiet,
                                  workers=args.workers, select_on=select_on,
                                  selection_images=sweep_on[1] if sweep_on else 0, cosines=cosines)
        if result["background"]:
            result["background"]["source"] = source
        report["datasets"][dataset.name] = result
        print_dataset(dataset.name, result, per_class=not args.quiet)
        del segmenter
    if len(datasets) > 1:
        columns = [n for n in BENCHMARK_ORDER if n in report["datasets"]]
        report["row"] = {"columns": columns, "miou": [report["datasets"][n]["miou"] for n in columns]}
        print("\n" + paper_row(report["datasets"]))
        chosen = {n: f"{r['background']['threshold']:.4g} (on the {r['background']['selected_on']})"
                  for n, r in report["datasets"].items() if r["background"] and r["background"]["selected_on"]}
        if chosen:
            print(f"(with-background sets at their swept threshold: {chosen})")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.output}")
    return 0


def main(argv=None) -> int:
    return common.run(build_parser(), evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
