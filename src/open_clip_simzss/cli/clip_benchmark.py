"""``simzss-clip-benchmark``: SimZSS in clip_benchmark (``eval``, ``suite``, ``merge``, ``build``); see
``open_clip_simzss.evaluation.clip_benchmark``. ``eval`` and ``build`` take clip_benchmark's own flags."""
import logging
import sys
from typing import List, Optional, Sequence

from ..evaluation import clip_benchmark as cb
from ..version import __version__
from . import common

SUBCOMMANDS = ("eval", "suite", "merge", "build")


def suite_parser():
    # allow_abbrev=False: an abbreviation must not swallow a clip_benchmark flag meant for the passthrough.
    p = common.Parser(prog=f"{cb.PROG} suite", allow_abbrev=False, parents=[common.debug_options()],
                      description="Run SimZSS on clip_benchmark's wds zero-shot classification suite. Unknown "
                      "flags are passed to clip_benchmark eval (e.g. --batch_size, --num_workers, --no_amp).")
    p.add_argument("--model", required=True, help="SimZSS model name or local-dir:PATH")
    p.add_argument("--checkpoint", "--pretrained", dest="checkpoint", default="none",
                   help="anything open_clip_simzss.load_model takes, or 'none' for random weights")
    p.add_argument("--dataset_root", required=True,
                   help="root template, e.g. 'DIR/wds_{dataset_cleaned}' (clip_benchmark's templating)")
    p.add_argument("--output_dir", required=True, help="folder for the per-dataset JSON results and table")
    p.add_argument("--datasets", default=str(cb.DATASETS_FILE),
                   help="dataset list file (default: the shipped 38 wds classification datasets)")
    p.add_argument("--split", default="test")
    return p


def merge_parser():
    p = common.Parser(prog=f"{cb.PROG} merge", parents=[common.debug_options()], description="Merge clip_benchmark "
                      "results into one table (CSV + markdown, with the average) and a per-dataset bar chart.")
    p.add_argument("runs", nargs="+", metavar="LABEL=PATH",
                   help="results of one model: a folder of clip_benchmark JSONs, a JSON file or glob, or a CSV "
                        "table written by merge")
    p.add_argument("--output", required=True, help="writes OUTPUT.csv and OUTPUT.md")
    p.add_argument("--plot", default=None, help="also write a bar chart (PNG)")
    p.add_argument("--metric", default="auto", help="metric key; auto = acc1, or mAP for multi-label")
    p.add_argument("--datasets", default=str(cb.DATASETS_FILE), help="dataset list giving the row order")
    return p


def suite(argv: List[str]) -> int:
    args, passthrough = suite_parser().parse_known_args(argv)
    passthrough = [a for a in passthrough if a != "--debug"]
    return cb.run_suite(args.model, args.checkpoint, args.dataset_root, args.output_dir, args.datasets, args.split,
                        passthrough)


def merge(argv: List[str]) -> int:
    args = merge_parser().parse_args(argv)
    for output in [args.output + ".csv", args.output + ".md"] + ([args.plot] if args.plot else []):
        common.check_output(output)
    runs = {}
    for spec in args.runs:
        label, path = cb.parse_run(spec)
        if label in runs:
            raise common.UsageError(f"run label {label!r} given twice")
        runs[label] = cb.load_results(path, args.metric, label)
    table = cb.merge_runs(runs, cb.read_dataset_list(args.datasets))
    csv_path, md_path = cb.write_table(table, args.output)
    print(f"table: {csv_path}, {md_path}")
    if args.plot:
        cb.plot_table(table, args.plot)
        print(f"plot: {args.plot}")
    return 0


def dispatch(argv: List[str]) -> int:
    command, rest = argv[0], argv[1:]
    if command == "suite":
        return suite(rest)
    if command == "merge":
        return merge(rest)
    rest = [a for a in rest if a != "--debug"]  # clip_benchmark's own parser does not know it
    return cb.run_eval(rest) if command == "eval" else cb.run_build(rest)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        print(f"{cb.PROG} {__version__}")
        return 0
    if not argv or argv[0] not in SUBCOMMANDS:
        print(f"usage: {cb.PROG} {{{','.join(SUBCOMMANDS)}}} ...  (--help after a command for its flags)",
              file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else common.EXIT_USAGE
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return common.run(None, dispatch, argv, input_errors=(cb.BenchmarkInputError,))

