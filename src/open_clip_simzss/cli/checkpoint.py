"""``simzss-checkpoint``: export a training checkpoint to a model folder, convert the authors' released
checkpoints, upload a model folder to the Hugging Face hub.

    simzss-checkpoint export --checkpoint logs/run/checkpoints/epoch_7.pt --output simzss-coco
    simzss-checkpoint push --checkpoint simzss-coco --repo-id me/simzss-vitb14-coco
    simzss-checkpoint convert --checkpoint simzss_coco.pth --output simzss-vitb14-coco-ref

``export`` reads the model name from the run's ``params.txt`` when ``--model`` is not given. ``--output`` is
checked before any checkpoint is read; a folder appears complete or not at all (``weights.save.save_pretrained``).
"""
from ..weights.resolve import DEFAULT_MODEL
from ..weights.save import FORMATS, export_checkpoint
from . import common


def build_parser():
    p = common.make_parser("checkpoint", "Model folders: export, convert the authors' checkpoints, upload.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=common.Parser)
    parents = [common.debug_options()]
    fmt = dict(choices=tuple(FORMATS), default="safetensors", help="weights file(s) to write (the hub upload "
               "writes both)")
    checkpoint = ("--checkpoint", "--pretrained")

    e = sub.add_parser("export", parents=parents, help="training checkpoint -> self-contained model folder")
    e.add_argument(*checkpoint, dest="checkpoint", required=True, help="e.g. logs/RUN/checkpoints/epoch_7.pt")
    e.add_argument("--model", help="SimZSS config name (default: from the run's params.txt)")
    common.add_output_arg(e, "folder to write (then use it as --checkpoint FOLDER)", required=True)
    e.add_argument("--format", **fmt)

    c = sub.add_parser("convert", parents=parents, help="the authors' released checkpoint -> model folder")
    c.add_argument(*checkpoint, dest="checkpoint", required=True, help="their PyTorch state dict (.pt/.pth)")
    c.add_argument("--model", default=DEFAULT_MODEL, help=f"our config of their tower (default {DEFAULT_MODEL})")
    common.add_output_arg(c, "folder to write", required=True)
    c.add_argument("--image-stats", choices=("clip", "tower"), default="clip",
                   help="normalisation to save: CLIP's, as the reference trained (default), or DINOv2's")
    c.add_argument("--trust-pickle", action="store_true",
                   help="allow a file that weights_only=True refuses (runs its pickled code: trusted files only)")
    c.add_argument("--format", **fmt)

    h = sub.add_parser("push", parents=parents, help="upload a model to the Hugging Face hub (OpenCLIP's layout)")
    h.add_argument(*checkpoint, dest="checkpoint", required=True,
                   help="model folder (or checkpoint file with --model, or hub id)")
    h.add_argument("--model", help="config name, for a checkpoint file")
    h.add_argument("--repo-id", required=True, help="org/name")
    h.add_argument("--private", action="store_true")
    h.add_argument("--token", help="Hugging Face token (default: the logged-in one)")
    return p


def checkpoint(args) -> int:
    if args.command in ("export", "convert"):
        common.check_output(args.output, folder=True)
    if args.command == "export":
        folder = export_checkpoint(args.checkpoint, args.output, args.model, FORMATS[args.format])
    elif args.command == "convert":
        from ..weights.authors import convert_reference_checkpoint
        with common.bad_input(ValueError):
            folder = convert_reference_checkpoint(args.checkpoint, args.output, args.model, args.image_stats,
                                                  args.trust_pickle, FORMATS[args.format])
    else:
        from ..weights.hub import push_to_hub
        common.check_checkpoint(args)
        push_to_hub(args.checkpoint, args.repo_id, model=args.model, private=args.private, token=args.token)
        print(f"uploaded to https://huggingface.co/{args.repo_id}; load it as hf-hub:{args.repo_id}")
        return 0
    print(f"wrote {folder}: load it with --checkpoint {folder} or create_model('local-dir:{folder}')")
    return 0


def main(argv=None) -> int:
    return common.run(build_parser(), checkpoint, argv)

