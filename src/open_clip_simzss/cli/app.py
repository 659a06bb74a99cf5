"""``simzss-app``: the web app (``open_clip_simzss.workflows.app`` and ``.page``; the ``[app]`` extra, Gradio).

    simzss-app                                        # the demo's SimZSS model; http://127.0.0.1:7860
    simzss-app --checkpoint simzss-coco/ --host 0.0.0.0 --port 8080 --device cuda

Without ``--checkpoint`` the page uses the SimZSS model ``make demo`` trained (in ``--demo-output``), else the
demo's quick model, trained once (about a minute on a CPU, needs the ``[train]`` extra) and cached under
``$XDG_CACHE_HOME/open_clip_simzss``. Every file a request writes goes under ``--output-dir``.
"""
import importlib.util
import os
import sys
from pathlib import Path

from ..extras import MissingExtraError
from ..segmentation.protocol import SegmentationProtocol
from . import common


def build_parser():
    p = common.make_parser("app", "Segment any image with any words in the browser (Gradio).")
    common.add_model_args(p)
    p.set_defaults(checkpoint=None)
    p.add_argument("--demo-output", default="demo_output",
                   help="where `make demo` wrote its model (default demo_output); used without --checkpoint")
    common.add_device_args(p, precisions=("fp32", "bf16", "fp16"))
    common.add_protocol_args(p)
    # None = the model's own protocol: the demo's for the embedded model, the evaluation protocol otherwise.
    p.set_defaults(templates=None, short_side=None, window=None, stride=None)
    g = p.add_argument_group("server")
    g.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="interface to bind (default 127.0.0.1: this machine only; 0.0.0.0 for a network)")
    g.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                   help="port (default 7860)")
    g.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    g.add_argument("--output-dir", help="folder of the uploads and downloads (default "
                   "$XDG_CACHE_HOME/open_clip_simzss/app, i.e. ~/.cache/open_clip_simzss/app)")
    return p


def serve(args) -> int:
    from ..workflows import app as web
    from ..workflows import page

    if importlib.util.find_spec("gradio") is None:
        raise MissingExtraError("simzss-app needs the [app] extra (gradio not installed): "
                                "pip install 'open_clip_simzss[app]'")
    common.check_positive(args, "port")
    output_dir = Path(args.output_dir or web.user_cache_dir() / "app").resolve()
    os.environ.setdefault("GRADIO_TEMP_DIR", str(output_dir / "uploads"))  # before Gradio is imported
    device = common.device(args)
    # None = the model's own protocol (the demo's for the embedded model); the flags given win over it
    given = {k: getattr(args, k) for k in ("templates", "short_side", "window", "stride") if getattr(args, k) is not None}
    with common.flags_of(ValueError):
        protocol = SegmentationProtocol(pamr=args.pamr, **given)  # checked before a model is loaded or trained
    examples, allowed = [], []
    if args.checkpoint is None and args.model is None:
        embedded = web.embedded_model(args.demo_output, log=lambda line: print(line, file=sys.stderr, flush=True))
        args.model, args.checkpoint = embedded.model, str(embedded.checkpoint)
        protocol, description = embedded.protocol.replace(pamr=args.pamr, **given), embedded.description
        examples, allowed = web.example_scenes(embedded.scenes), [embedded.scenes]
    common.check_checkpoint(args)
    model, tokenizer = common.load(args, device)
    if not examples:
        description = (f"`{model.source.spec}` from `{args.checkpoint}`" if args.checkpoint is not None else
                       f"`{model.source.spec}` with RANDOM weights (no --checkpoint: a smoke test, not a model)")
    app = web.SegmentApp(model, tokenizer, output_dir, description, protocol, device=device, examples=examples)
    print(f"serving {model.source.spec} on http://{args.host}:{args.port} (outputs in {app.output_dir})",
          file=sys.stderr, flush=True)
    page.launch(app, args.host, args.port, args.share, allowed)
    return 0


def main(argv=None) -> int:
    return common.run(build_parser(), serve, argv)

