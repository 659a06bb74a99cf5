"""Segment any image with any words: the ``simzss-segment`` command and the :class:`Segmenter` Python API.

    simzss-segment --checkpoint simzss-coco --image photo.jpg more/ --labels "cat, grass, sky" --output out

writes per image ``<name>_labels.png`` (the label map: a palette PNG whose pixel values are label indices,
0 = background with ``--background-threshold``), ``<name>_overlay.png`` (the colours on the photo, with a
legend) and ``<name>.json`` (labels, each label's pixel share and count, settings).

    from open_clip_simzss import Segmenter
    segmenter = Segmenter.from_pretrained("simzss-vitb14", "hf-hub:org/simzss-vitb14-coco")
    result = segmenter.segment("photo.jpg", "cat, grass, sky")    # result.label_map, result.scores, result.shares

Segmentation follows the evaluation protocol (``segmentation.ZeroShotSegmenter``: short side 448, 448 windows,
stride 224, 80 prompt templates), so memory is bounded by the resized image and a few windows whatever the
photo's size. Images: anything Pillow reads (JPEG, PNG, WebP, TIFF, BMP, GIF...), turned upright by their EXIF
orientation; grey, palette and CMYK images become RGB; transparent pixels are composited onto white; 16-bit
images are scaled to 8 bits.
"""
import argparse
import json
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .segmentation import resolve_device as segmentation_device
from .segmentation import (
    BACKGROUND_SCORES, DEFAULT_BACKGROUND_SCALE, DEFAULT_TEMPLATES, TEMPLATE_SETS, ZeroShotSegmenter,
    apply_background,
)
from .visualize import label_colors, label_map_image, overlay_with_legend

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif", ".ppm", ".pgm"}
BACKGROUND = "background"


class UsageError(Exception):
    """Bad command-line input: reported as one line on stderr."""


class ImageError(Exception):
    """An image that cannot be read; the message is one line."""


# --- images ------------------------------------------------------------------------------------------------------
def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Any numeric pixel array -> uint8: 16-bit (and 32-bit int) values are scaled from 0..65535, floats from
    0..1 (or taken as 0..255 when larger), booleans to 0/255."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        array = np.nan_to_num(array.astype(np.float32))
        scale = 255.0 if array.size and float(array.max()) <= 1.0 else 1.0
        return np.clip(array * scale + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.dtype.itemsize == 1 or (array.size and int(array.max()) <= 255 and array.dtype != np.uint16):
            return np.clip(array, 0, 255).astype(np.uint8)
        # 16-bit range (uint16, or PIL's 32-bit "I" mode holding 16-bit PNG values): 65535 -> 255
        return np.clip((array.astype(np.float32) / 257.0) + 0.5, 0, 255).astype(np.uint8)
    raise ImageError(f"unsupported pixel type {array.dtype}")


def _flatten_alpha(rgba: np.ndarray) -> np.ndarray:
    # Transparent pixels have arbitrary colours (often black): composite onto white, as viewers show them.
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    return (rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1 - alpha) + 0.5).astype(np.uint8)


def _rgb_array(array: np.ndarray) -> np.ndarray:
    array = _to_uint8(np.asarray(array))
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 2:  # grey + alpha
        return _flatten_alpha(np.concatenate([np.repeat(array[..., :1], 3, axis=2), array[..., 1:]], axis=2))
    if array.ndim == 3 and array.shape[2] == 3:
        return np.ascontiguousarray(array)
    if array.ndim == 3 and array.shape[2] == 4:
        return _flatten_alpha(array)
    raise ImageError(f"expected an image array [H, W], [H, W, 3] or [H, W, 4], got shape {array.shape}")


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """A PIL image -> upright RGB uint8 [H, W, 3] (EXIF orientation applied; see module docstring)."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):  # 16/32-bit grey: scale, not clip
        arr = np.asarray(img)
        if img.mode.startswith("I;16"):
            arr = arr.astype(np.uint16)
        return _rgb_array(arr)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        return _flatten_alpha(np.asarray(img.convert("RGBA")))
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    return np.asarray(img)


def load_image(source) -> np.ndarray:
    """A path, PIL image, numpy array ([H, W], [H, W, 3|4], any dtype) or tensor ([3, H, W] or [H, W, 3]) ->
    RGB uint8 numpy array [H, W, 3]. Unreadable files raise :class:`ImageError` (one-line message)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"image not found: {path}")
        try:
            with Image.open(path) as img:
                img.load()  # decode now: truncated or corrupt files fail here
                rgb = pil_to_rgb(img)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ImageError(f"cannot read image {path}: {' '.join(str(e).split())}") from None
    elif isinstance(source, Image.Image):
        rgb = pil_to_rgb(source)
    elif isinstance(source, torch.Tensor):
        t = source.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4) and t.shape[-1] not in (1, 3, 4):
            t = t.permute(1, 2, 0)
        rgb = _rgb_array(t.numpy())
    elif isinstance(source, np.ndarray):
        rgb = _rgb_array(source)
    else:
        raise TypeError(f"expected an image path, PIL image, numpy array or tensor, got {type(source).__name__}")
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ImageError("empty image")
    return rgb


def collect_images(inputs: Sequence[Union[str, Path]]) -> List[Path]:
    """Files as given, and the image files (by extension) directly inside folders, sorted. UsageError for a
    missing path or a folder without images."""
    out = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(f"no images in folder {path} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise UsageError(f"image not found: {path}")
    return out


def output_stems(paths: Sequence[Path]) -> List[str]:
    """File-name stems for outputs, unique even when inputs share a name (a/x.jpg, b/x.jpg, x.png)."""
    stems, used = [], set()
    for path in paths:
        stem, n = path.stem, 1
        while stem in used:
            n += 1
            stem = f"{path.stem}-{n}"
        used.add(stem)
        stems.append(stem)
    return stems


# --- labels ------------------------------------------------------------------------------------------------------
def parse_labels(labels: Union[str, Sequence[str]]) -> List[str]:
    """ "cat, grass, sky" or a list -> ["cat", "grass", "sky"]; ValueError if empty or repeated."""
    items = labels.split(",") if isinstance(labels, str) else list(labels)
    names = [" ".join(str(n).split()) for n in items]
    names = [n for n in names if n]
    if not names:
        raise ValueError("no labels given (e.g. --labels \"cat, grass, sky\")")
    seen = set()
    for n in names:
        if n.lower() in seen:
            raise ValueError(f"label {n!r} is given twice")
        seen.add(n.lower())
    return names


def read_labels(labels: Optional[str], labels_file: Optional[str]) -> List[str]:
    """Labels from ``--labels`` or ``--labels-file`` (one per line, ``#`` comments); UsageError if bad."""
    try:
        if labels_file is not None:
            path = Path(labels_file)
            if not path.is_file():
                raise UsageError(f"labels file not found: {path}")
            lines = [line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines()]
            return parse_labels(lines)
        return parse_labels(labels or "")
    except ValueError as e:
        raise UsageError(str(e)) from None


def resolve_device(name: Optional[str]) -> torch.device:
    try:
        return segmentation_device(name)
    except ValueError as e:
        raise UsageError(str(e)) from None


# --- the API -------------------------------------------------------------------------------------------------------
@dataclass
class SegmentationResult:
    """What :meth:`Segmenter.segment` returns.

    Attributes:
        image: the RGB uint8 image [H, W, 3] that was segmented (upright).
        labels: the names of the label-map values; ``labels[0] == "background"`` with a background threshold.
        label_map: [H, W] indices into ``labels`` (uint8, or int32 beyond 256 labels).
        text_labels: the text labels, in the order of ``logits``/``scores`` (``labels`` without background).
        logits: [C, h, w] float32 cosine similarity of each text label and each pixel's patch tokens, at the
            processing resolution (short side 448, EVAL protocol); what heat maps show.
        confidence: [H, W] foreground confidence (``background_score``) when a threshold is set, else None.
    """

    image: np.ndarray
    labels: List[str]
    label_map: np.ndarray
    text_labels: List[str]
    logits: torch.Tensor
    confidence: Optional[np.ndarray] = None

    @property
    def has_background(self) -> bool:
        return len(self.labels) == len(self.text_labels) + 1

    @property
    def scores(self) -> np.ndarray:
        """[C, H, W] cosine similarities at the image size (bilinear, as the protocol resizes). Computed on
        access: C x H x W floats, large for big photos."""
        size = tuple(self.label_map.shape)
        logits = self.logits.float()
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
        return logits.cpu().numpy()

    @property
    def pixel_counts(self) -> Dict[str, int]:
        counts = np.bincount(self.label_map.reshape(-1), minlength=len(self.labels))
        return {name: int(c) for name, c in zip(self.labels, counts)}

    @property
    def shares(self) -> Dict[str, float]:
        """Fraction of the image's pixels given to each label (sums to 1)."""
        total = max(1, self.label_map.size)
        return {name: c / total for name, c in self.pixel_counts.items()}

    @property
    def colors(self) -> np.ndarray:
        return label_colors(len(self.labels), background=self.has_background)

    def label_map_image(self) -> Image.Image:
        """The label map as a palette image: values are label indices, the palette shows them in colour."""
        return label_map_image(self.label_map, self.colors)

    def overlay(self, alpha: float = 0.5) -> Image.Image:
        """The label colours on the image with a legend (names and pixel shares)."""
        return overlay_with_legend(self.image, self.label_map, self.labels, self.colors,
                                   list(self.shares.values()), alpha,
                                   background_index=0 if self.has_background else None)


class Segmenter:
    """Zero-shot segmentation of any image with any labels (module docstring).

    Args:
        model, tokenizer: a SimZSS model and its tokenizer (or use :meth:`from_pretrained`).
        templates: prompt templates (a ``TEMPLATE_SETS`` name or "{}" strings); default the 80 CLIP prompts.
        background_threshold: None, or the foreground confidence under which a pixel is background.
        background_score, background_scale: "sigmoid" (Talk2DINO) or "softmax" (SCLIP) confidence.
        pamr: refine window scores with PAMR.
        short_side, max_long_side, window, stride, window_batch_size: the protocol's sliding window.
        device: where inference runs (default: the model's device).
    """

    def __init__(self, model, tokenizer, templates: Union[str, Sequence[str]] = DEFAULT_TEMPLATES,
                 background_threshold: Optional[float] = None, background_score: str = "sigmoid",
                 background_scale: float = DEFAULT_BACKGROUND_SCALE, pamr: bool = False, short_side: int = 448,
                 max_long_side: int = 2048, window: int = 448, stride: int = 224, window_batch_size: int = 4,
                 device=None):
        if background_score not in BACKGROUND_SCORES:
            raise ValueError(f"background_score must be one of {BACKGROUND_SCORES}, got {background_score!r}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.options = dict(templates=templates, short_side=short_side, max_long_side=max_long_side,
                            window=window, stride=stride, background_score=background_score,
                            background_scale=background_scale, pamr=pamr, window_batch_size=window_batch_size,
                            device=device)
        self.background_threshold = background_threshold
        self.info: dict = {}  # set by from_pretrained: the model spec, weights file and config
        self._classifiers: "OrderedDict[tuple, ZeroShotSegmenter]" = OrderedDict()

    @classmethod
    def from_pretrained(cls, model_name: Optional[str] = None, checkpoint: Optional[str] = None, device=None,
                        precision: str = "fp32", **options) -> "Segmenter":
        """Load a model (see ``checkpoint.load_model``: a config name and/or a checkpoint file, model folder or
        hub id) and wrap it. ``options`` are the constructor's keyword arguments."""
        from .checkpoint import load_model
        device = torch.device(device) if device is not None else resolve_device(None)
        model, tokenizer, info = load_model(model_name, checkpoint, device=device, precision=precision)
        segmenter = cls(model, tokenizer, device=device, **options)
        segmenter.info = info
        return segmenter

    def classifier(self, labels: Union[str, Sequence[str]]) -> ZeroShotSegmenter:
        """The protocol segmenter of a label set; text classifiers of the last few label sets are kept."""
        names = tuple(parse_labels(labels))
        if self.background_threshold is not None and BACKGROUND in {n.lower() for n in names}:
            raise ValueError("'background' cannot be a label when a background threshold is set "
                             "(low-confidence pixels are background)")
        if names not in self._classifiers:
            self._classifiers[names] = ZeroShotSegmenter(self.model, self.tokenizer, list(names), **self.options)
            while len(self._classifiers) > 8:
                self._classifiers.popitem(last=False)
        self._classifiers.move_to_end(names)
        return self._classifiers[names]

    @torch.no_grad()
    def segment(self, image, labels: Union[str, Sequence[str]]) -> SegmentationResult:
        """Segment ``image`` (path, PIL image, array or tensor) into ``labels`` ("cat, grass" or a list)."""
        zs = self.classifier(labels)
        rgb = load_image(image)
        normalized, size = zs.preprocess(rgb)
        logits = zs.stitched_logits(normalized)  # [C, h, w] at the processing resolution
        with_bg = self.background_threshold is not None
        label_map, confidence = zs.reduce_to_size(logits, size, with_confidence=with_bg)
        names = [n[0] for n in zs.class_names]
        if with_bg:
            label_map = apply_background(label_map, confidence, self.background_threshold)
        all_names = ([BACKGROUND] if with_bg else []) + names
        dtype = torch.uint8 if len(all_names) <= 256 else torch.int32
        return SegmentationResult(
            image=rgb, labels=all_names, label_map=label_map.to(dtype).cpu().numpy(), text_labels=names,
            logits=logits.float().cpu(), confidence=confidence.cpu().numpy() if with_bg else None)


# --- the command ---------------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="simzss-segment", description="Zero-shot segmentation of images into any labels.")
    p.add_argument("--image", nargs="+", required=True, help="image files and/or folders of images")
    labels = p.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", help='comma-separated labels, e.g. "cat, grass, sky"')
    labels.add_argument("--labels-file", help="a file with one label per line")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--model", help="SimZSS config (default simzss-vitb14; model folders and hub ids bring theirs)")
    p.add_argument("--checkpoint", help="checkpoint file, model folder (local-dir:) or Hugging Face id (hf-hub:)")
    p.add_argument("--background-threshold", type=float,
                   help="pixels whose foreground confidence is below this are 'background' (e.g. 0.55 sigmoid)")
    p.add_argument("--background-score", choices=BACKGROUND_SCORES, default="sigmoid",
                   help="confidence: sigmoid(max cosine) or max softmax(scale * cosine)")
    p.add_argument("--pamr", action="store_true", help="refine with PAMR (sharper edges, slower)")
    p.add_argument("--templates", default=DEFAULT_TEMPLATES, help=f"prompt set: {', '.join(TEMPLATE_SETS)}")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--short-side", type=int, default=448, help="processing short side (protocol: 448)")
    p.add_argument("--window", type=int, default=448, help="sliding window (protocol: 448)")
    p.add_argument("--stride", type=int, default=224, help="window stride (protocol: 224)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the colours in the overlay")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def write_outputs(result: SegmentationResult, out_dir: Path, stem: str, extra: dict, alpha: float = 0.5) -> Path:
    """``<stem>_labels.png``, ``<stem>_overlay.png`` and ``<stem>.json``; returns the JSON path."""
    label_png, overlay_png, report = out_dir / f"{stem}_labels.png", out_dir / f"{stem}_overlay.png", out_dir / f"{stem}.json"
    result.label_map_image().save(label_png)
    result.overlay(alpha).save(overlay_png)
    counts = result.pixel_counts
    total = max(1, result.label_map.size)
    data = dict(extra, width=int(result.label_map.shape[1]), height=int(result.label_map.shape[0]),
                labels=result.labels, shares={k: round(v / total, 6) for k, v in counts.items()}, pixels=counts,
                label_map=label_png.name, overlay=overlay_png.name,
                colors={n: [int(c) for c in col] for n, col in zip(result.labels, result.colors)})
    report.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return report


def main(argv=None) -> int:
    """Exit status: 0 ok, 2 bad input (one line on stderr), 1 when some images could not be read."""
    from tqdm import tqdm

    from .checkpoint import CheckpointError, load_model
    try:
        args = build_parser().parse_args(argv)
        labels = read_labels(args.labels, args.labels_file)
        images = collect_images(args.image)
        if min(args.short_side, args.window, args.stride) < 1:
            raise UsageError("--short-side, --window and --stride must be positive")
        if not 0 <= args.alpha <= 1:
            raise UsageError("--alpha must be between 0 and 1")
        if args.templates not in TEMPLATE_SETS:
            raise UsageError(f"unknown template set {args.templates!r}; choose from {', '.join(TEMPLATE_SETS)}")
        device = resolve_device(args.device)
        model, tokenizer, info = load_model(args.model, args.checkpoint, device=device, precision=args.precision)
        segmenter = Segmenter(model, tokenizer, templates=args.templates,
                              background_threshold=args.background_threshold,
                              background_score=args.background_score, pamr=args.pamr, short_side=args.short_side,
                              window=args.window, stride=args.stride, device=device)
        segmenter.classifier(labels)  # encode the labels once, and fail early on a bad label set
    except (UsageError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not info["weights"]:
        print(f"warning: no --checkpoint: {info['spec']} has random weights (smoke test only)", file=sys.stderr)
    out_dir = Path(args.output)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: cannot create {out_dir}: {e.strerror or e}", file=sys.stderr)
        return 2
    settings = {"model": info["spec"], "checkpoint": args.checkpoint, "templates": args.templates,
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
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
