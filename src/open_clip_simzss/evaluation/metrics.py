"""Dataset-level mIoU as MMSeg computes it (docs/evaluation.md, "mIoU"), and a background-threshold sweep
that scores many thresholds from one pass over the model's outputs (docs/evaluation.md, "Background").

Per image, pixels whose ground truth is the ignore index (255) are dropped; intersection, prediction and
ground-truth areas are accumulated over the whole split (here as a confusion matrix, from which all three
follow). IoU_c = I_c / U_c; a class with U_c = 0 (never in the ground truth, never predicted) is NaN and left
out of the mean; a class that is predicted but never in the ground truth gets 0. mIoU is x100, rounded to 2
decimals only when reported.
"""
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ..segmentation.background import apply_background
from ..segmentation.labels import IGNORE_INDEX

ArrayLike = Union[np.ndarray, torch.Tensor]


def _as_long_tensor(x: ArrayLike) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return x.reshape(-1).long()


class IoUAccumulator:
    """Confusion matrix over ``num_classes`` classes (rows: ground truth, columns: prediction)."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        if num_classes < 1:
            raise ValueError("num_classes must be positive")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def _valid(self, pred: ArrayLike, label: ArrayLike):
        pred, label = _as_long_tensor(pred), _as_long_tensor(label)
        if pred.shape != label.shape:
            raise ValueError(f"prediction and label sizes differ: {pred.numel()} vs {label.numel()} pixels")
        keep = label != self.ignore_index
        pred, label = pred[keep].cpu(), label[keep].cpu()
        if label.numel() and (int(label.min()) < 0 or int(label.max()) >= self.num_classes):
            raise ValueError(f"label values must be in [0, {self.num_classes}) or {self.ignore_index}; got "
                             f"{int(label.min())}..{int(label.max())}")
        return pred, label

    def _add(self, pred: torch.Tensor, label: torch.Tensor):
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= self.num_classes):
            raise ValueError(f"predictions must be in [0, {self.num_classes})")
        n = self.num_classes
        self.confusion += torch.bincount(label * n + pred, minlength=n * n).view(n, n)

    def update(self, pred: ArrayLike, label: ArrayLike):
        """Add one image: ``pred`` and ``label`` of the same size, label 255 ignored."""
        self._add(*self._valid(pred, label))

    def counts(self) -> torch.Tensor:
        """The confusion matrix as a stack [1, C, C] int64: what ranks all-reduce and partial states store."""
        return self.confusion.unsqueeze(0).clone()

    def add_counts(self, counts: torch.Tensor):
        """Add a stack from :meth:`counts` (another rank's, or a finished shard's). Integer counts: the sum
        does not depend on the order, so any split of the images gives the same confusion matrix."""
        self.confusion += _checked_counts(counts, 1, self.num_classes)[0]

    @property
    def intersection(self) -> np.ndarray:
        return self.confusion.diagonal().numpy().astype(np.float64)

    @property
    def union(self) -> np.ndarray:
        c = self.confusion
        return (c.sum(0) + c.sum(1) - c.diagonal()).numpy().astype(np.float64)

    def iou(self) -> np.ndarray:
        """Per-class IoU in [0, 1], NaN for classes with an empty union."""
        union = self.union
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, self.intersection / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU x100 over the classes with a non-empty union (NaN if there is none)."""
        iou = self.iou()
        return float(np.nanmean(iou) * 100) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = int(self.confusion.sum())
        return float(self.confusion.diagonal().sum()) / total * 100 if total else float("nan")

    def summary(self, class_names: Optional[Sequence[str]] = None) -> Dict:
        """{"miou", "aacc", "per_class": {name: IoU x100 or None}} rounded to 2 decimals as MMSeg reports."""
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        per_class = {n: (None if np.isnan(v) else round(float(v) * 100, 2)) for n, v in zip(names, self.iou())}
        return {"miou": _round(self.miou()), "aacc": _round(self.pixel_accuracy()), "per_class": per_class}


def _round(x: float) -> Optional[float]:
    return None if np.isnan(x) else round(x, 2)


class ThresholdSweep:
    """One :class:`IoUAccumulator` per background threshold, fed from one forward pass per image.

    Classes are in the with-background convention: 0 = background, c + 1 = text class c. A pixel is
    background for threshold t when its foreground confidence is < t: ``segmentation.background.apply_background``,
    the rule the engine applies.
    """

    def __init__(self, num_classes: int, thresholds: Sequence[float], ignore_index: int = IGNORE_INDEX):
        if not thresholds:
            raise ValueError("at least one threshold is needed")
        self.thresholds = [float(t) for t in thresholds]
        self.accumulators = [IoUAccumulator(num_classes, ignore_index) for _ in self.thresholds]

    def update(self, foreground: ArrayLike, confidence: ArrayLike, label: ArrayLike):
        """``foreground``: argmax over the text classes (0..C-1); ``confidence``: foreground confidence."""
        first = self.accumulators[0]
        fg = _as_long_tensor(foreground)
        conf = confidence if isinstance(confidence, torch.Tensor) else torch.from_numpy(np.asarray(confidence))
        conf = conf.reshape(-1).cpu()
        keep = _as_long_tensor(label) != first.ignore_index
        if conf.numel() != keep.numel():
            raise ValueError(f"confidence and label sizes differ: {conf.numel()} vs {keep.numel()} pixels")
        fg, label_v = first._valid(fg, label)
        conf = conf[keep.cpu()]
        for t, acc in zip(self.thresholds, self.accumulators):
            acc._add(apply_background(fg, conf, t), label_v)

    def mious(self) -> List[float]:
        return [acc.miou() for acc in self.accumulators]

    def counts(self) -> torch.Tensor:
        """The confusion matrices of all thresholds, [T, C, C] int64."""
        return torch.stack([acc.confusion for acc in self.accumulators])

    def add_counts(self, counts: torch.Tensor):
        counts = _checked_counts(counts, len(self.accumulators), self.accumulators[0].num_classes)
        for acc, confusion in zip(self.accumulators, counts):
            acc.confusion += confusion

    def best(self) -> int:
        """Index of the threshold with the highest mIoU (the first one on ties)."""
        mious = np.array([m if np.isfinite(m) else -np.inf for m in self.mious()])
        return int(np.argmax(mious))


def _checked_counts(counts: torch.Tensor, stack: int, num_classes: int) -> torch.Tensor:
    if counts.dtype != torch.int64 or tuple(counts.shape) != (stack, num_classes, num_classes):
        raise ValueError(f"confusion counts must be int64 of shape {(stack, num_classes, num_classes)}, got "
                         f"{counts.dtype} {tuple(counts.shape)}")
    return counts.cpu()


def parse_sweep(spec: str) -> List[float]:
    """"start:stop:step" (stop included, e.g. "0.1:0.9:0.05" -> 17 values) or a comma list "0.3,0.5"."""
    try:
        if ":" in spec:
            parts = [float(p) for p in spec.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if step <= 0 or stop < start:
                raise ValueError
            n = int(np.floor((stop - start) / step + 1e-9)) + 1
            values = [round(start + i * step, 10) for i in range(n)]
        else:
            values = [float(p) for p in spec.split(",") if p.strip()]
            if not values:
                raise ValueError
    except ValueError:
        raise ValueError(f"bad threshold sweep {spec!r}: expected start:stop:step with step > 0 and "
                         f"stop >= start (e.g. 0.1:0.9:0.05), or a comma list (e.g. 0.4,0.5)") from None
    if any(not np.isfinite(v) for v in values):
        raise ValueError(f"bad threshold sweep {spec!r}: values must be finite")
    return values
