"""``simzss-visualize``: PCA pictures of dense features at several input scales (paper Fig. 1) and per-label
similarity heat maps (paper Fig. 3); see ``open_clip_simzss.segmentation.pictures``.

Pictures are written atomically; ``--output`` is checked before the model is loaded.
Exit status: 0 ok, 2 bad input, 1 when some images could not be read or a picture could not be written.
"""
import sys
from pathlib import Path

from ..images import ImageError, collect_images, load_image, output_stems
from ..segmentation.pictures import feature_pyramid, pca_figure, pca_panels, similarity_figure
from ..segmentation.segmenter import Segmenter
from ..validation import check_positive
from . import common


def build_parser():
    p = common.make_parser("visualize", "PCA pictures of dense features at several input scales (paper Fig. 1) "
                           "and per-label similarity heat maps (paper Fig. 3).")
    common.add_image_args(p)
    common.add_model_args(p)
    common.add_device_args(p, precisions=("fp32",))
    common.add_output_arg(p, "output folder", default="simzss_pictures")
    p.add_argument("--scales", nargs="+", type=float, default=[1.0, 2.0, 4.0],
                   help="input short side as multiples of --base-size (default 1 2 4)")
    p.add_argument("--base-size", type=int, help="short side at scale 1 (default: the model's training size)")
    p.add_argument("--max-tokens", type=int, default=16384, help="patch budget of one forward (bounds memory)")
    common.add_label_args(p, required=False, what="labels for heat maps")
    common.add_protocol_args(p)
    p.add_argument("--quiet", action="store_true")
    return p


def visualize(args) -> int:
    import open_clip
    from tqdm import tqdm

    with common.bad_input(ValueError):
        for scale in args.scales:
            check_positive("--scales", scale)
    common.check_positive(args, "base_size", "max_tokens")
    protocol = common.segmentation_protocol(args)
    labels = common.read_labels(args)
    with common.bad_input(ImageError):
        images = collect_images(args.image)
    common.check_output(args.output, folder=True)
    common.check_checkpoint(args)
    device = common.device(args)
    model, tokenizer = common.load(args, device)
    segmenter = None
    if labels:
        segmenter = Segmenter(model, tokenizer, protocol, device=device)
        with common.bad_input(ValueError):
            segmenter.classifier(labels)  # encode the labels now: a bad label set fails here
    cfg = open_clip.get_model_preprocess_cfg(model)
    base = args.base_size or int(model.visual.image_size[0])
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path, stem in tqdm(list(zip(images, output_stems(images))), desc="images", unit="img", file=sys.stderr,
                           disable=args.quiet or len(images) < 2):
        try:
            image = load_image(path)
        except ImageError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        pyramid = feature_pyramid(model, image, args.scales, base, cfg["mean"], cfg["std"], args.max_tokens)
        titles = [f"x{s:g}: {f.shape[1]}x{f.shape[0]} patches" + (" (capped)" if capped else "")
                  for s, f, capped in pyramid]
        written = [pca_figure(image, pca_panels([f for _, f, _ in pyramid]), titles, out_dir / f"{stem}_pca.png")]
        if segmenter is not None:
            result = segmenter.segment(image, labels)
            written.append(similarity_figure(image, result.logits, result.text_labels,
                                             out_dir / f"{stem}_similarity.png"))
        if not args.quiet:
            tqdm.write(f"{path}: " + ", ".join(str(w) for w in written), file=sys.stderr)
    return common.EXIT_FAILURE if failed else 0


def main(argv=None) -> int:
    return common.run(build_parser(), visualize, argv)

