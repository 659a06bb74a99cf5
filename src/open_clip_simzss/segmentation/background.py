"""Background (docs/evaluation.md, "Background"): not a text class, but the pixels whose foreground confidence is
below a threshold.

The *foreground confidence* of a pixel is computed from its full-resolution cosines [C, H, W]
(:func:`foreground_confidence`), and the pixel is background when the confidence is **below** the threshold
(:func:`apply_background`, the one place this rule is written):

- ``score="sigmoid"`` (Talk2DINO): confidence = sigmoid(max_c cos_c). A threshold t is the same as
  "max cosine < logit(t)"; Talk2DINO's 0.55 means cos < 0.2007.
- ``score="softmax"`` (SCLIP/ProxyCLIP/NACLIP): confidence = max_c softmax_c(s * cos), with ``scale`` s
  (default 40, the SCLIP/ProxyCLIP/NACLIP value for most sets).

This equals TCL/Talk2DINO's "prepend a constant bg_thresh channel and take the argmax" except on exact ties
(there the constant channel wins; here a confidence equal to the threshold is foreground). With a threshold,
labels follow the MMSeg with-background convention: 0 = background, c + 1 = class c.

:class:`BackgroundRule` holds score, scale and threshold, checked once where it is made. ``PUBLISHED_THRESHOLDS``
is the one table of the thresholds peers published per with-background benchmark; none is calibrated for SimZSS
(measure with a threshold sweep: ``sweep_thresholds`` and ``evaluation.metrics.ThresholdSweep``).
"""
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence

import torch

from ..validation import check_fraction, check_positive

BACKGROUND_SCORES = ("sigmoid", "softmax")
DEFAULT_BACKGROUND_SCORE = "sigmoid"
DEFAULT_BACKGROUND_SCALE = 40.0
# Per with-background benchmark and score: Talk2DINO ViT-B's sigmoid threshold (0.55 on all three, i.e. cos <
# 0.2007) and ProxyCLIP's softmax(40 cos) thresholds. The voc21 row is the default for any other images.
PUBLISHED_THRESHOLDS = {
    "voc21": {"sigmoid": 0.55, "softmax": 0.2},
    "context60": {"sigmoid": 0.55, "softmax": 0.15},
    "coco_object": {"sigmoid": 0.55, "softmax": 0.25},
}


def check_score(score: str) -> str:
    if score not in BACKGROUND_SCORES:
        raise ValueError(f"background_score must be one of {', '.join(BACKGROUND_SCORES)}, got {score!r}")
    return score


def default_threshold(score: str = DEFAULT_BACKGROUND_SCORE, dataset: Optional[str] = None) -> float:
    """The published threshold of ``score`` for ``dataset`` (``PUBLISHED_THRESHOLDS``; the voc21 one for any
    other dataset or none)."""
    return PUBLISHED_THRESHOLDS.get(dataset, PUBLISHED_THRESHOLDS["voc21"])[check_score(score)]


@dataclass(frozen=True)
class BackgroundRule:
    """How background is decided: the confidence ``score`` ("sigmoid" or "softmax"), the softmax ``scale``, and
    the ``threshold`` on the confidence (None: no background, every pixel gets a text class). Checked when made
    (ValueError, one line): a known score, a finite scale > 0, a threshold in [0, 1]."""

    score: str = DEFAULT_BACKGROUND_SCORE
    scale: float = DEFAULT_BACKGROUND_SCALE
    threshold: Optional[float] = None

    def __post_init__(self):
        check_score(self.score)
        object.__setattr__(self, "scale", check_positive("background_scale", self.scale))
        if self.threshold is not None:  # a foreground confidence, in [0, 1] for both scores
            object.__setattr__(self, "threshold", check_fraction("background_threshold", self.threshold))

    def with_threshold(self, threshold: Optional[float]) -> "BackgroundRule":
        return replace(self, threshold=threshold)

    def confidence(self, logits: torch.Tensor) -> torch.Tensor:
        return foreground_confidence(logits, self.score, self.scale)

    def to_json(self) -> dict:
        return {"score": self.score, "scale": self.scale, "threshold": self.threshold}


def foreground_confidence(logits: torch.Tensor, score: str = DEFAULT_BACKGROUND_SCORE,
                          scale: float = DEFAULT_BACKGROUND_SCALE) -> torch.Tensor:
    """Foreground confidence [H, W] of cosine logits [C, H, W] (module docstring)."""
    if check_score(score) == "sigmoid":
        return torch.sigmoid(logits.max(dim=0).values)
    return torch.softmax(scale * logits, dim=0).max(dim=0).values


def apply_background(labels: torch.Tensor, confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """MMSeg with-background labels: 0 where confidence < threshold, else foreground label + 1."""
    return torch.where(confidence < threshold, torch.zeros_like(labels), labels + 1)


def sigmoid_threshold_of_cosine(cosine: float) -> float:
    """The ``score="sigmoid"`` threshold that means "background where max cosine < ``cosine``"."""
    return float(torch.sigmoid(torch.tensor(cosine, dtype=torch.float64)))


def sweep_thresholds(grid: Sequence[float], score: str) -> List[float]:
    """Thresholds on the foreground confidence for a sweep grid: for ``sigmoid`` the grid is in cosine units
    (c -> sigmoid(c), i.e. background where max cosine < c); the ``softmax`` confidence is not a function of the
    max cosine, so its grid is in its own (probability) units."""
    if check_score(score) == "sigmoid":
        if any(not -1 <= c <= 1 for c in grid):
            raise ValueError("a --background-sweep grid is in cosine units: values must be in [-1, 1]")
        return [sigmoid_threshold_of_cosine(c) for c in grid]
    if any(not 0 <= t <= 1 for t in grid):
        raise ValueError("a softmax --background-sweep grid is in probability units: values must be in [0, 1]")
    return [float(t) for t in grid]
