"""Pictures: label palettes, overlays, and PCA-to-RGB of dense features (paper Fig. 1)."""
from typing import Optional, Sequence

import numpy as np
import torch


def palette(num_colors: int, seed: int = 3) -> np.ndarray:
    """[num_colors, 3] uint8 distinct colours (golden-angle hues, alternating lightness)."""
    hues = (np.arange(num_colors) * 0.618033988749895 + 0.1) % 1.0
    value = np.where(np.arange(num_colors) % 2 == 0, 0.95, 0.7)
    sat = np.where(np.arange(num_colors) % 3 == 0, 0.65, 0.9)
    h6 = hues * 6
    i = np.floor(h6).astype(int) % 6
    f = h6 - np.floor(h6)
    p, q, t = value * (1 - sat), value * (1 - f * sat), value * (1 - (1 - f) * sat)
    table = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)]
    rgb = np.stack([np.choose(i, [row[c] for row in table]) for c in range(3)], axis=1)
    return (rgb * 255).astype(np.uint8)


def colorize(labels: np.ndarray, colors: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """[H, W] labels -> [H, W, 3] uint8; ignored pixels black."""
    out = colors[np.clip(labels, 0, len(colors) - 1)]
    out[labels == ignore_index] = 0
    return out


def overlay(image: np.ndarray, labels: np.ndarray, colors: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend a colour-coded label map onto an RGB uint8 image."""
    return (image.astype(np.float32) * (1 - alpha) + colorize(labels, colors).astype(np.float32) * alpha).astype(
        np.uint8)


def pca_rgb(features: torch.Tensor, basis: Optional[torch.Tensor] = None, center: Optional[torch.Tensor] = None
            ) -> np.ndarray:
    """[h, w, d] features -> [h, w, 3] uint8: the first three principal components, min-max scaled.

    Pass ``basis``/``center`` (from ``pca_basis``) to colour several images consistently.
    """
    h, w, d = features.shape
    flat = features.reshape(-1, d).float()
    if basis is None:
        center, basis = pca_basis(flat)
    proj = (flat - center) @ basis
    lo, hi = proj.quantile(0.01, dim=0), proj.quantile(0.99, dim=0)
    proj = ((proj - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    return (proj.reshape(h, w, 3).numpy() * 255).astype(np.uint8)


def pca_basis(flat: torch.Tensor, components: int = 3):
    """(center [d], basis [d, components]) of rows of ``flat``."""
    center = flat.mean(0)
    _, _, v = torch.pca_lowrank(flat - center, q=components, center=False)
    return center, v[:, :components]


def legend_patches(names: Sequence[str], colors: np.ndarray):
    """Matplotlib legend handles for label names."""
    from matplotlib.patches import Patch
    return [Patch(color=np.asarray(c) / 255.0, label=n) for n, c in zip(names, colors)]
