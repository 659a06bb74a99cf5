"""``simzss-evaluate``: zero-shot semantic segmentation on the benchmarks (docs/evaluation.md).

    simzss-evaluate --model simzss-vitb14 --checkpoint CKPT --dataset voc20 --data-root data
    simzss-evaluate --checkpoint CKPT --dataset all --data-root data --background-sweep 0.0:0.4:0.01 \\
        --sweep-on train:500 --output results.json

    simzss-evaluate --checkpoint CKPT --dataset folder:my_data --output mine.json       # your own dataset
    torchrun --nproc_per_node 8 -m open_clip_simzss evaluate --checkpoint CKPT --dataset all ...   # 8 GPUs

The flags are parsed into an ``EvaluationProtocol`` and run by ``evaluation.run.Evaluation``. Prints mIoU and a
per-class IoU table per dataset (``--dataset all``: the paper's row, Tables 1-2 order) and writes everything to
``--output`` as JSON. Under torchrun or srun the images are split across the processes
and their counts summed: the JSON is the one of a single process. With ``--output``, finished image shards
are kept beside it, and an interrupted run resumes (docs/evaluation.md, "Many GPUs", "Interrupted runs").
"""
import argparse
import os
import sys
from contextlib import ExitStack, redirect_stderr, redirect_stdout

from ..evaluation.datasets import BENCHMARK_ORDER, CLASS_NAME_SETS, DEFAULT_CLASS_NAMES, FOLDER_PREFIX
from ..evaluation.protocol import EvaluationProtocol
from ..evaluation.ranks import close_ranks, init_ranks
from ..evaluation.report import paper_row, print_dataset
from ..evaluation.run import Evaluation, EvaluationData
from ..evaluation.state import StateError
from ..segmentation.protocol import INFERENCE_PRECISIONS, WINDOW_KEYS
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
    common.add_device_args(p, INFERENCE_PRECISIONS)
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


def _explicit_windows(argv) -> frozenset:
    """The window settings given on the command line (they win over a folder dataset's dataset.json)."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for key in WINDOW_KEYS:
        p.add_argument("--" + key.replace("_", "-"), default=argparse.SUPPRESS)
    return frozenset(vars(p.parse_known_args(argv)[0]))


def protocol_of(args, explicit=frozenset()) -> EvaluationProtocol:
    """The ``EvaluationProtocol`` of the flags; a value that cannot work is a UsageError naming its flag."""
    segmentation = common.segmentation_protocol(args, precision=args.precision)
    dataset = args.dataset.split(",") if args.dataset != "all" else ["all"]
    with common.flags_of(ValueError):
        return EvaluationProtocol(tuple(dataset), args.data_root, args.class_names, segmentation,
                                  args.background_sweep, args.sweep_on, args.fewshot_from, args.limit, explicit)


def evaluate(args, explicit=frozenset()) -> int:
    protocol = protocol_of(args, explicit)
    common.check_positive(args, "window_batch_size", "images_per_batch", "shard_size")
    if args.workers < 0:
        raise common.UsageError("--workers must be >= 0")
    common.check_checkpoint(args)
    if args.output:  # before hours of work, not after
        common.check_output(args.output)
    device = common.device(args)
    ranks = init_ranks(device)
    with ExitStack() as stack:
        stack.callback(close_ranks, ranks)
        if not ranks.is_main:  # rank 0 speaks for all; errors are raised, so they still reach stderr
            stack.enter_context(redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
        return _evaluate(args, protocol, ranks)


def _evaluate(args, protocol: EvaluationProtocol, ranks) -> int:
    data = EvaluationData.read(protocol)  # a missing dataset file is refused before the model is loaded
    with ExitStack() as quiet:
        if not ranks.is_main:
            quiet.enter_context(redirect_stderr(quiet.enter_context(open(os.devnull, "w"))))
        model, tokenizer = common.load(args, ranks.device, precision="fp32")  # amp_bf16 autocasts the windows only
    evaluation = Evaluation(model, tokenizer, protocol, output=args.output, restart=args.restart, ranks=ranks,
                            shard_size=args.shard_size, images_per_batch=args.images_per_batch,
                            window_batch_size=args.window_batch_size, workers=args.workers,
                            progress=not args.quiet, data=data)
    if any(d.has_background for d in evaluation.datasets) and protocol.background_sweep is None \
            and protocol.segmentation.background.threshold is None and ranks.is_main:
        print(f"note: per-dataset default background thresholds ({protocol.segmentation.background.score}), not "
              "calibrated for SimZSS; calibrate with --background-sweep and --sweep-on", file=sys.stderr)
    report = evaluation.run(on_dataset=lambda name, result: print_dataset(name, result, per_class=not args.quiet))
    if "row" in report:
        benchmarks = report["row"]["columns"]
        print("\n" + paper_row({n: report["datasets"][n] for n in benchmarks}))
        chosen = {n: f"{r['background']['threshold']:.4g} (on the {r['background']['selected_on']})"
                  for n, r in report["datasets"].items() if r["background"] and r["background"]["selected_on"]}
        if chosen:
            print(f"(with-background sets at their swept threshold: {chosen})")
    if args.output and ranks.is_main:
        print(f"\nwrote {args.output}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return common.run(build_parser(), lambda args: evaluate(args, _explicit_windows(argv)), argv,
                      input_errors=(StateError,))
