"""``simzss-demo``: SimZSS vs LiT end to end on synthetic scenes, on a CPU (README, "The demo")."""
import argparse
import sys

from ..demo import __doc__ as DEMO_DOC
from ..demo import run_demo
from ..extras import require_train_extra
from . import common


def build_parser():
    p = common.make_parser("demo", DEMO_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_output_arg(p, "working and report folder", default="demo_output")
    p.add_argument("--quick", action="store_true", help="a tiny run for smoke tests (about a minute)")
    p.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2)")
    return p


def demo(args) -> int:
    require_train_extra("simzss-demo")
    report = run_demo(args.output, args.quick, args.seeds)
    print((report / "report.md").read_text().split("\n\nPer-class")[0])
    print(f"\nreport: {report}/report.md (+ overlays.png, loss_curves.png, pca.png, results.json)")
    return 0


def main(argv=None) -> int:
    return common.run(build_parser(), demo, argv)


if __name__ == "__main__":
    sys.exit(main())
