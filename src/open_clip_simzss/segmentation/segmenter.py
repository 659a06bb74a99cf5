"""Segment any image with any words: the :class:`Segmenter` Python API (the command is ``simzss-segment``).

    from open_clip_simzss import Segmenter
    segmenter = Segmenter.from_pretrained("simzss-vitb14", "hf-hub:org/simzss-vitb14-coco")
    result = segmenter.segment("photo.jpg", "cat, grass, sky")    # result.label_map, result.scores, result.shares

Segmentation follows the evaluation protocol (``protocol.SegmentationProtocol``, run by ``engine.py``: short side
448, 448 windows, stride 224, 80 prompt templates), so memory is bounded by the resized image and a few windows
whatever the photo's size. Images: anything ``images.load_image`` reads. :func:`write_outputs` writes per image
``<name>_labels.png`` (the label map: a palette PNG whose pixel values are label indices, 0 = background with a
background threshold), ``<name>_overlay.png`` (the colours on the photo, with a legend) and ``<name>.json``
(labels, each label's pixel share and count, settings).
"""
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..atomic import save_image, write_json
from ..images import load_image
from .classifier import Classifier, build_text_classifier
from .engine import SlidingWindowEngine
from .labels import BACKGROUND, parse_labels
from .pictures import label_colors, label_map_image, overlay_with_legend
from .protocol import SegmentationProtocol

# Text classifiers kept by a Segmenter: the label sets of its last requests.
KEPT_LABEL_SETS = 8


@dataclass
class SegmentationResult:
    """What :meth:`Segmenter.segment` returns.

    Attributes:
        image: the RGB uint8 image [H, W, 3] that was segmented (upright).
        labels: the names of the label-map values; ``labels[0] == "background"`` with a background threshold.
        label_map: [H, W] indices into ``labels`` (uint8, or int32 beyond 256 labels).
        text_labels: the text labels, in the order of ``logits``/``scores`` (``labels`` without background).
        logits: [C, h, w] float32 cosine similarity of each text label and each pixel's patch tokens, at the
            processing resolution (short side 448, the protocol's); what heat maps show.
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
        protocol: the :class:`~.protocol.SegmentationProtocol`; or its fields as keyword arguments
            (``templates``, ``short_side``, ``window``, ``stride``, ``pamr``, ``precision``, ...) and the
            background's as ``background_threshold`` (None: every pixel gets a label; else the foreground
            confidence under which a pixel is background), ``background_score``, ``background_scale``.
        window_batch_size: windows per forward of the vision tower.
        device: where inference runs (default: the model's device).
    """

    def __init__(self, model, tokenizer, protocol: Optional[SegmentationProtocol] = None, window_batch_size: int = 4,
                 device=None, **protocol_options):
        if protocol is not None and protocol_options:
            raise TypeError(f"give a protocol or its options, not both ({', '.join(protocol_options)})")
        protocol = protocol or SegmentationProtocol.of(**protocol_options)  # checked now, not at the first labels
        self.model, self.tokenizer = model.eval(), tokenizer
        self._classifiers: "OrderedDict[tuple, Classifier]" = OrderedDict()
        self.engine = SlidingWindowEngine(model, protocol, window_batch_size=window_batch_size, device=device)

    @classmethod
    def from_pretrained(cls, model_name: Optional[str] = None, checkpoint: Optional[str] = None, device=None,
                        precision: str = "fp32", **options) -> "Segmenter":
        """Load a model with ``open_clip_simzss.load_model`` (a config name and/or a checkpoint file, model
        folder or hub id) and wrap it. ``options`` are the constructor's keyword arguments."""
        from ..weights.load import load_model, load_tokenizer
        model, _ = load_model(model_name, checkpoint, device=device, precision=precision)
        return cls(model, load_tokenizer(model), device=next(model.parameters()).device, **options)

    @property
    def protocol(self) -> SegmentationProtocol:
        return self.engine.protocol

    @property
    def background_threshold(self) -> Optional[float]:
        """None, or the foreground confidence under which a pixel is background (settable)."""
        return self.protocol.background.threshold

    @background_threshold.setter
    def background_threshold(self, threshold: Optional[float]):
        # ValueError for nan, inf or a value outside [0, 1]; the classifiers do not depend on it
        background = self.protocol.background.with_threshold(threshold)
        self.engine.protocol = self.protocol.replace(background=background)

    def classifier(self, labels: Union[str, Sequence[str]]) -> Classifier:
        """The text classifier of a label set (its text rows); those of the last few label sets are kept."""
        names = tuple(parse_labels(labels))
        if self.background_threshold is not None and BACKGROUND in {n.lower() for n in names}:
            raise ValueError("'background' cannot be a label when a background threshold is set "
                             "(low-confidence pixels are background)")
        if names not in self._classifiers:
            self._classifiers[names] = build_text_classifier(self.model, self.tokenizer, list(names),
                                                             self.protocol.templates, self.protocol.synonyms,
                                                             device=self.engine.device)
            while len(self._classifiers) > KEPT_LABEL_SETS:
                self._classifiers.popitem(last=False)
        self._classifiers.move_to_end(names)
        return self._classifiers[names]

    @torch.no_grad()
    def segment(self, image, labels: Union[str, Sequence[str]]) -> SegmentationResult:
        """Segment ``image`` (path, PIL image, array or tensor) into ``labels`` ("cat, grass" or a list)."""
        classifier = self.classifier(labels)
        names = list(parse_labels(labels))
        rgb = load_image(image)
        prediction = self.engine.segment(rgb, classifier)
        with_bg = prediction.confidence is not None
        all_names = ([BACKGROUND] if with_bg else []) + names
        dtype = torch.uint8 if len(all_names) <= 256 else torch.int32
        return SegmentationResult(
            image=rgb, labels=all_names, label_map=prediction.labels.to(dtype).cpu().numpy(), text_labels=names,
            logits=prediction.logits.float().cpu(),
            confidence=prediction.confidence.cpu().numpy() if with_bg else None)


def write_outputs(result: SegmentationResult, out_dir: Path, stem: str, extra: dict, alpha: float = 0.5) -> Path:
    """``<stem>_labels.png``, ``<stem>_overlay.png`` and ``<stem>.json``, each written atomically (a full disk
    leaves no partial file: ``atomic.WriteError``); returns the JSON path."""
    label_png, overlay_png, report = out_dir / f"{stem}_labels.png", out_dir / f"{stem}_overlay.png", out_dir / f"{stem}.json"
    save_image(result.label_map_image(), label_png)
    save_image(result.overlay(alpha), overlay_png)
    counts = result.pixel_counts
    total = max(1, result.label_map.size)
    data = dict(extra, width=int(result.label_map.shape[1]), height=int(result.label_map.shape[0]),
                labels=result.labels, shares={k: round(v / total, 6) for k, v in counts.items()}, pixels=counts,
                label_map=label_png.name, overlay=overlay_png.name,
                colors={n: [int(c) for c in col] for n, col in zip(result.labels, result.colors)})
    return write_json(report, data, indent=2)
