"""``simzss-demo``: SimZSS vs LiT end to end on synthetic scenes, on a CPU (README, "The demo"), and the paper's
ablations on the same bench with ``--study`` (docs/studies.md)."""
import argparse

from ..extras import require_train_extra
from ..workflows.demo import BenchMismatchError
from ..workflows.demo import __doc__ as DEMO_DOC
from ..workflows.demo import run_demo
from ..workflows.studies import STUDIES, run_studies
from . import common


def build_parser():
    p = common.make_parser("demo", DEMO_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_output_arg(p, "working and report folder (studies and the demo sharing one reuse each other's "
                          "runs)", default="demo_output")
    p.add_argument("--quick", action="store_true", help="a tiny run for smoke tests (about a minute)")
    p.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2)")
    p.add_argument("--study", nargs="+", choices=list(STUDIES), metavar="NAME",
                   help=f"instead of the demo, run studies one after another ({', '.join(STUDIES)}); reports in "
                        "OUTPUT/studies/NAME/ (docs/studies.md)")
    return p


def demo(args) -> int:
    require_train_extra("simzss-demo")
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        raise common.UsageError("--seeds: each seed once")
    common.check_output(args.output, folder=True)  # before the bench is built (minutes of work)
    if args.study:
        for folder in run_studies(args.study, args.output, args.quick, args.seeds):
            print((folder / "report.md").read_text().split("\n\n## ")[0])
            print(f"\nreport: {folder}/report.md (+ results.json, {folder.name}.png)\n")
        return 0
    report = run_demo(args.output, args.quick, args.seeds)
    print((report / "report.md").read_text().split("\n\nPer-class")[0])
    print(f"\nreport: {report}/report.md (+ overlays.png, loss_curves.png, pca.png, results.json)")
    return 0


def main(argv=None) -> int:
    return common.run(build_parser(), demo, argv, input_errors=(BenchMismatchError,))

