"""``simzss-evaluate``: zero-shot semantic segmentation on the benchmarks (docs/evaluation.md).

    simzss-evaluate --model simzss-vitb14 --checkpoint CKPT --dataset voc20 --data-root data
    simzss-evaluate --checkpoint CKPT --dataset all --data-root data --background-sweep 0.0:0.4:0.01 \\
        --sweep-on train:500 --output results.json

    simzss-evaluate --checkpoint CKPT --dataset folder:my_data --output mine.json       # your own dataset
    torchrun --nproc_per_node 8 -m open_clip_simzss.evaluate --checkpoint CKPT --dataset all ...   # 8 GPUs

Prints mIoU and a per-class IoU table per dataset (``--dataset all``: the paper's row, Tables 1-2 order) and
writes everything to ``--output`` as JSON. Under torchrun or srun the images are split across the processes
and their counts summed: the JSON is the one of a single process. With ``--output``, finished image shards
are kept beside it, and an interrupted run resumes (docs/evaluation.md, "Many GPUs", "Interrupted runs").
"""
import argparse
import os
import sys
from contextlib import ExitStack, redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..atomic import check_output, write_json
from ..datasets import (
    BENCHMARK_ORDER, CLASS_NAME_SETS, DEFAULT_CLASS_NAMES, FOLDER_PREFIX, FOLDER_PROTOCOL_KEYS, SPLITS, get_dataset,
    is_folder_dataset,
)
from ..eval_state import PartialState, StateError, state_folder
from ..evaluate import (
    BACKGROUND_THRESHOLDS, EvaluationRun, evaluate_dataset, paper_row, print_dataset, sweep_thresholds,
)
from ..metrics import parse_sweep
from ..ranks import close_ranks, init_ranks
from ..segmentation import PRECISIONS, ZeroShotSegmenter
from . import common


def build_parser():
    p = common.make_parser("evaluate", "Zero-shot semantic segmentation (TCL/MMSeg protocol, plain PyTorch).")
    common.add_model_args(p)
    p.add_argument("--dataset", required=True,
                   help=f"one of {', '.join(BENCHMARK_ORDER)}, 'all', {FOLDER_PREFIX}PATH (your own dataset: "
                        "images/, masks/, classnames.txt; docs/evaluation.md), or a comma list of these")
    p.add_argument("--data-root", help="MMSeg data root (VOCdevkit/, coco_stuff164k/, ...); needed for the benchmarks")
    common.add_protocol_args(p, background_default="with-background sets only (voc21, context60, coco_object); "
                             "default per dataset, see docs/evaluation.md", evaluation=True)
    p.add_argument("--class-names", default=DEFAULT_CLASS_NAMES, metavar="|".join(CLASS_NAME_SETS) + "|FILE",
                   help=f"text class names: a shipped set (default {DEFAULT_CLASS_NAMES}: the MMSeg 0.27 / TCL "
                        "strings) or a file (single dataset only)")
    p.add_argument("--sweep-on", metavar="train:N|val:N",
                   help="select the swept background threshold on the first N images of the training split, or "
                        "of the evaluated split (then held out of the reported mIoU); default: on the "
                        "evaluated images (labelled 'selected on the test split')")
    p.add_argument("--fewshot-from", metavar="train:N|val:N",
                   help="the few-shot diagnostic (the paper's Table 8), not zero-shot: each class's row is the mean "
                        "dense token of its pixels in the first N images of the training split, or of the "
                        "evaluated split (then held out of the reported mIoU); docs/evaluation.md")
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    common.add_device_args(p, PRECISIONS)
    p.add_argument("--window-batch-size", type=int, default=4, help="windows per vision-tower forward")
    p.add_argument("--images-per-batch", type=int, default=2,
                   help="consecutive images whose windows share the vision tower's forwards")
    p.add_argument("--workers", type=int, default=2, help="threads decoding images ahead (0: none)")
    common.add_output_arg(p, "write the results as JSON here; finished image shards are kept in OUTPUT.partial/ "
                             "until the end, and a rerun with the same flags resumes from them")
    p.add_argument("--shard-size", type=int, default=100, help="images per resumable shard (and per share of work "
                   "between processes)")
    p.add_argument("--restart", action="store_true", help="discard the partial results of an interrupted run")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no per-class table")
    return p


def _dataset_names(args):
    names = list(BENCHMARK_ORDER) if args.dataset == "all" else [n.strip() for n in args.dataset.split(",")]
    unknown = [n for n in names if n not in BENCHMARK_ORDER and not is_folder_dataset(n)]
    if unknown or not names:
        raise common.UsageError(f"unknown dataset {', '.join(unknown) or repr(args.dataset)}; "
                                f"choose from {', '.join(BENCHMARK_ORDER)}, 'all' or {FOLDER_PREFIX}PATH")
    if any(n in BENCHMARK_ORDER for n in names):
        if args.data_root is None:
            raise common.UsageError("--data-root is needed for the benchmarks (the MMSeg data folder)")
        if not Path(args.data_root).is_dir():
            raise common.UsageError(f"data root {args.data_root} does not exist")
    if args.class_names not in CLASS_NAME_SETS:
        if not Path(args.class_names).is_file():
            raise common.UsageError(f"--class-names {args.class_names}: not one of {', '.join(CLASS_NAME_SETS)} "
                                    "nor a file")
        if len(names) > 1:
            raise common.UsageError("--class-names FILE needs a single --dataset")
    common.check_positive(args, "limit", "window_batch_size", "images_per_batch", "shard_size")
    if args.workers < 0:
        raise common.UsageError("--workers must be >= 0")
    common.check_protocol(args)
    common.check_checkpoint(args)
    return names


def _explicit_protocol_flags(argv) -> set:
    """The protocol settings given on the command line (they win over a folder dataset's dataset.json)."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for key in FOLDER_PROTOCOL_KEYS:
        p.add_argument("--" + key.replace("_", "-"), default=argparse.SUPPRESS)
    return set(vars(p.parse_known_args(argv)[0]))


def _protocol(args, dataset, explicit) -> dict:
    """Resize and window settings for ``dataset``: the flags, or a folder dataset's own unless given."""
    protocol = {key: getattr(args, key) for key in FOLDER_PROTOCOL_KEYS}
    protocol.update({k: v for k, v in dataset.protocol.items() if k not in explicit})
    return protocol


def _checkpoint_identity(checkpoint):
    """What identifies the weights in the partial results' fingerprint: a file's path, size and time."""
    if checkpoint is None or not Path(checkpoint).is_file():
        return checkpoint
    stat = Path(checkpoint).stat()
    return {"path": str(Path(checkpoint).resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _split_and_count(value, flag):
    """"train:N" / "val:N" -> (split, N)."""
    split, _, n = value.partition(":")
    if split not in SPLITS or not n.isdigit() or int(n) < 1:
        raise common.UsageError(f"bad {flag} {value!r}: expected train:N or val:N with N >= 1")
    return split, int(n)


def _sweep_on(args):
    """--sweep-on "train:N" / "val:N" -> (split, N), or None."""
    if args.sweep_on is None:
        return None
    if not args.background_sweep:
        raise common.UsageError("--sweep-on needs --background-sweep")
    return _split_and_count(args.sweep_on, "--sweep-on")


def _fewshot_from(args, sweep_on):
    if args.fewshot_from is None:
        return None
    fewshot = _split_and_count(args.fewshot_from, "--fewshot-from")
    if fewshot[0] == "val" and sweep_on and sweep_on[0] == "val":
        raise common.UsageError("--fewshot-from val:N and --sweep-on val:M would both hold out the first images: "
                                "use train: for one of them")
    return fewshot


def _text_class_labels(dataset, label):
    """A label map in text-class indices: with-background sets shift by one and ignore the background."""
    if not dataset.has_background:
        return label
    return np.where((label == 0) | (label == dataset.ignore_index), dataset.ignore_index, label - 1)


def _fewshot_classifier(segmenter, dataset, source, images, ranks):
    """The few-shot rows of ``dataset``'s classes from the first ``images`` images of ``source``."""
    from ..fewshot import fewshot_classifier

    count = min(images, len(source))
    pairs = ((image, _text_class_labels(source, label)) for image, label in (source[i] for i in range(count)))
    pairs = tqdm(pairs, total=count, desc=f"{dataset.name} (few-shot rows from {source.split})", unit="img",
                 disable=not ranks.is_main, file=sys.stderr)
    return fewshot_classifier(segmenter, pairs, len(dataset.class_names), dataset.ignore_index)


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


def evaluate(args, explicit=frozenset()) -> int:
    names = _dataset_names(args)
    sweep_on = _sweep_on(args)
    fewshot = _fewshot_from(args, sweep_on)
    sweep = _sweep(args)
    if args.output:  # before hours of work, not after
        with common.bad_input(OSError):
            check_output(args.output)
    device = common.device(args)
    ranks = init_ranks(device)
    with ExitStack() as stack:
        stack.callback(close_ranks, ranks)
        if not ranks.is_main:  # rank 0 speaks for all; errors are raised, so they still reach stderr
            stack.enter_context(redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
        return _evaluate(args, names, sweep_on, fewshot, sweep, ranks, explicit)


def _evaluate(args, names, sweep_on, fewshot, sweep, ranks, explicit) -> int:
    datasets = [get_dataset(n, args.data_root, args.class_names) for n in names]
    seen = {}
    for n, d in zip(names, datasets):
        if d.name in seen:
            raise common.UsageError(f"{seen[d.name]} and {n} are both named {d.name!r}: give one of them another "
                                    "name in its dataset.json")
        seen[d.name] = n
    selection_sets = {d.name: get_dataset(n, args.data_root, args.class_names, split="train")
                      for n, d in zip(names, datasets) if d.has_background and sweep_on and sweep_on[0] == "train"}
    fewshot_sets = {d.name: get_dataset(n, args.data_root, args.class_names, split="train") if fewshot[0] == "train"
                    else d for n, d in zip(names, datasets)} if fewshot else {}
    with ExitStack() as quiet:
        if not ranks.is_main:
            quiet.enter_context(redirect_stderr(quiet.enter_context(open(os.devnull, "w"))))
        model, tokenizer = common.load(args, ranks.device, precision="fp32")  # amp_bf16 autocasts the windows only
    if any(d.has_background for d in datasets) and sweep is None and args.background_threshold is None:
        if ranks.is_main:
            print(f"note: per-dataset default background thresholds ({args.background_score}), not calibrated "
                  "for SimZSS; calibrate with --background-sweep and --sweep-on", file=sys.stderr)
    state = None
    if args.output:
        state = PartialState(state_folder(args.output))
        if ranks.is_main and args.restart:
            state.remove()
        ranks.barrier()
    report = {
        "model": model.source.spec, "checkpoint": args.checkpoint, "random_weights": model.source.random_weights,
        "device": ranks.device.type, "world_size": ranks.world_size, "precision": args.precision,
        "protocol": {"short_side": args.short_side, "max_long_side": args.max_long_side, "window": args.window,
                     "stride": args.stride, "templates": args.templates, "class_names": args.class_names,
                     "synonyms": args.synonyms, "pamr": args.pamr, "background_score": args.background_score,
                     "background_scale": args.background_scale, "background_sweep": args.background_sweep,
                     "sweep_on": args.sweep_on, "fewshot_from": args.fewshot_from, "limit": args.limit},
        "datasets": {},
    }
    for dataset in datasets:
        protocol = _protocol(args, dataset, explicit)
        thresholds, cosines, source = _thresholds(args, dataset.name, sweep)
        fingerprint = {
            "model": model.source.spec, "checkpoint": _checkpoint_identity(args.checkpoint),
            "device": ranks.device.type, "precision": args.precision, "dataset": dataset.name,
            "root": str(Path(dataset.root).resolve()), "class_names": dataset.class_name_set,
            "protocol": {**report["protocol"], **protocol}, "thresholds": thresholds,
            "shard_size": args.shard_size, "images_per_batch": args.images_per_batch,
            "window_batch_size": args.window_batch_size,
        }
        stored = state.result(dataset.name, fingerprint) if state is not None and ranks.is_main else None
        if ranks.from_main(torch.tensor([int(stored is not None)])).item():
            result = stored
            if ranks.is_main:
                print(f"{dataset.name}: finished before, taken from the partial results in {state.folder} "
                      "(--restart discards them)", file=sys.stderr)
        else:
            segmenter = ZeroShotSegmenter(
                model, tokenizer, dataset.class_names, templates=args.templates,
                short_side=protocol["short_side"], max_long_side=protocol["max_long_side"],
                window=protocol["window"], stride=protocol["stride"], background_score=args.background_score,
                background_scale=args.background_scale, pamr=args.pamr, synonyms=args.synonyms,
                window_batch_size=args.window_batch_size, device=ranks.device, precision=args.precision,
            )
            select_on = None
            if sweep_on and dataset.has_background:
                select_on = selection_sets[dataset.name] if sweep_on[0] == "train" else dataset
            held_out = 0
            if fewshot:
                segmenter.classifier = _fewshot_classifier(segmenter, dataset, fewshot_sets[dataset.name],
                                                           fewshot[1], ranks)
                held_out = min(fewshot[1], len(dataset)) if fewshot[0] == "val" else 0
            run = EvaluationRun(ranks, state, fingerprint, args.shard_size, args.images_per_batch)
            result = evaluate_dataset(segmenter, dataset, thresholds, args.limit, progress=not args.quiet,
                                      workers=args.workers, select_on=select_on,
                                      selection_images=sweep_on[1] if sweep_on else 0, cosines=cosines, run=run,
                                      held_out=held_out)
            result["classifier"] = (f"few-shot from {fewshot_sets[dataset.name].split}[:{fewshot[1]}] (the Table 8 "
                                    "diagnostic, not zero-shot)" if fewshot else "text (zero-shot)")
            if result["background"]:
                result["background"]["source"] = source
            if dataset.protocol:
                result["protocol"] = protocol
            del segmenter
            if state is not None and ranks.is_main:
                state.save_result(dataset.name, fingerprint, result)
        report["datasets"][dataset.name] = result
        print_dataset(dataset.name, result, per_class=not args.quiet)
    benchmarks = [n for n in BENCHMARK_ORDER if n in report["datasets"]]
    if len(benchmarks) > 1:
        report["row"] = {"columns": benchmarks, "miou": [report["datasets"][n]["miou"] for n in benchmarks]}
        print("\n" + paper_row({n: report["datasets"][n] for n in benchmarks}))
        chosen = {n: f"{r['background']['threshold']:.4g} (on the {r['background']['selected_on']})"
                  for n, r in report["datasets"].items() if r["background"] and r["background"]["selected_on"]}
        if chosen:
            print(f"(with-background sets at their swept threshold: {chosen})")
    if args.output and ranks.is_main:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.output, report, indent=2)
        state.remove()  # the final result exists: the partial one is no longer needed
        print(f"\nwrote {args.output}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return common.run(build_parser(), lambda args: evaluate(args, _explicit_protocol_flags(argv)), argv,
                      input_errors=(StateError,))


if __name__ == "__main__":
    sys.exit(main())
