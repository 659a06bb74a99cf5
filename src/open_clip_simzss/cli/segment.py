"""``simzss-segment``: zero-shot segmentation of images into any labels.

    simzss-segment --checkpoint simzss-coco --image photo.jpg more/ --labels "cat, grass, sky" --output out

writes per image ``<name>_labels.png``, ``<name>_overlay.png`` and ``<name>.json``
(``segmentation.segmenter.write_outputs``),
each atomically; ``--output`` is checked before the model is loaded.
Exit status: 0 ok, 2 bad input, 1 when some images could not be read or a result could not be written.
"""
import sys
from pathlib import Path

from ..images import ImageError, collect_images, output_stems
from ..segmentation.segmenter import Segmenter, write_outputs
from ..validation import check_fraction
from . import common


def build_parser():
    p = common.make_parser("segment", "Zero-shot segmentation of images into any labels.")
    common.add_image_args(p)
    common.add_label_args(p, required=True)
    common.add_output_arg(p, "output folder", required=True)
    common.add_model_args(p)
    common.add_device_args(p, precisions=("fp32", "bf16", "fp16"))
    common.add_protocol_args(p, background_default="default: none, every pixel gets a label")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the colours in the overlay")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def segment(args) -> int:
    from tqdm import tqdm

    labels = common.read_labels(args)
    with common.bad_input(ImageError):
        images = collect_images(args.image)
    protocol = common.segmentation_protocol(args)
    with common.bad_input(ValueError):
        check_fraction("--alpha", args.alpha)
    common.check_output(args.output, folder=True)
    common.check_checkpoint(args)
    device = common.device(args)
    model, tokenizer = common.load(args, device)
    segmenter = Segmenter(model, tokenizer, protocol, device=device)
    with common.bad_input(ValueError):
        segmenter.classifier(labels)  # encode the labels once, and fail early on a bad label set
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"model": model.source.spec, "checkpoint": args.checkpoint, "templates": args.templates,
                "background_threshold": args.background_threshold,
                "background_score": args.background_score if args.background_threshold is not None else None,
                "pamr": args.pamr}
    failed = 0
    for path, stem in tqdm(list(zip(images, output_stems(images))), desc="segmenting", unit="img",
                           file=sys.stderr, disable=args.quiet or len(images) < 2):
        try:
            result = segmenter.segment(path, labels)
        except ImageError as e:
            tqdm.write(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        write_outputs(result, out_dir, stem, dict(settings, image=str(path)), args.alpha)
    if failed and len(images) > 1:
        print(f"error: {failed} of {len(images)} images could not be read", file=sys.stderr)
    if len(images) > failed:
        print(f"segmented {len(images) - failed} image(s) into {out_dir}")
    return common.EXIT_FAILURE if failed else 0


def main(argv=None) -> int:
    return common.run(build_parser(), segment, argv)

