"""Pictures: label palettes, overlays, and PCA-to-RGB of dense features (paper Fig. 1), drawn by
``simzss-visualize`` (``python -m open_clip_simzss visualize``), ``simzss-segment``, the app and the demo.

    simzss-visualize --checkpoint simzss-coco --image cat.jpg --scales 1 2 4 --labels "cat, grass" --output pics

writes per image ``<name>_pca.png``: the input and the first three principal components of the dense patch
tokens as RGB, with the input resized to 1x, 2x, 4x the model's training size (more patches, finer maps: paper
Fig. 1; one PCA basis for all scales, so colours are comparable), and with ``--labels``
``<name>_similarity.png``: per label, the cosine similarity of every pixel's (sliding-window, protocol) patch
token to the label's text embedding, as a heat map on the image (paper Fig. 3; one colour scale for all labels).
"""
import math
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import save_figure
from .labels import IGNORE_INDEX


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


def colorize(labels: np.ndarray, colors: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """[H, W] labels -> [H, W, 3] uint8; ignored pixels black."""
    out = colors[np.clip(labels, 0, len(colors) - 1)]
    out[labels == ignore_index] = 0
    return out


def pca_basis(flat: torch.Tensor, components: int = 3):
    """(center [d], basis [d, components]) of rows of ``flat``."""
    center = flat.mean(0)
    _, _, v = torch.pca_lowrank(flat - center, q=components, center=False)
    return center, v[:, :components]


def legend_patches(names: Sequence[str], colors: np.ndarray):
    """Matplotlib legend handles for label names."""
    from matplotlib.patches import Patch
    return [Patch(color=np.asarray(c) / 255.0, label=n) for n, c in zip(names, colors)]


# --- label maps and overlays (simzss-segment) ----------------------------------------------------------------
def label_colors(num_labels: int, background: bool = False) -> np.ndarray:
    """[num_labels, 3] colours of a label map's values: ``palette``; with ``background`` value 0 is black."""
    if not background:
        return palette(num_labels)
    return np.concatenate([np.zeros((1, 3), np.uint8), palette(max(num_labels - 1, 0))])


def label_map_image(label_map: np.ndarray, colors: np.ndarray):
    """A PIL image whose pixel values are the labels (``np.asarray`` gives them back) and whose palette shows
    them in colour ("P" mode, saved as a palette PNG); with more than 256 labels, 16-bit grey values."""
    from PIL import Image
    if len(colors) > 256:
        return Image.fromarray(label_map.astype(np.uint16))
    img = Image.fromarray(label_map.astype(np.uint8))  # "L"; putpalette turns it into "P"
    img.putpalette(np.asarray(colors, np.uint8).reshape(-1).tolist())
    return img


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def legend_image(names: Sequence[str], colors: np.ndarray, shares: Optional[Sequence[float]] = None,
                 font_size: int = 16):
    """A white PIL panel listing colour swatches and names (and each label's pixel share, in %)."""
    from PIL import Image, ImageDraw
    font = _font(font_size)
    texts = [f"{n}  {100 * s:.1f}%" if shares is not None else str(n)
             for n, s in zip(names, shares if shares is not None else names)]
    pad, line = max(4, font_size // 2), int(font_size * 1.5)
    widths = [ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(t, font=font) for t in texts]
    width = int(3 * pad + font_size + max(widths, default=0))
    panel = Image.new("RGB", (width, 2 * pad + line * len(texts)), "white")
    draw = ImageDraw.Draw(panel)
    for i, (text, color) in enumerate(zip(texts, colors)):
        y = pad + i * line + (line - font_size) // 2
        draw.rectangle([pad, y, pad + font_size, y + font_size], fill=tuple(int(c) for c in color), outline="black")
        draw.text((2 * pad + font_size, y), text, fill="black", font=font)
    return panel


def overlay_with_legend(image: np.ndarray, label_map: np.ndarray, names: Sequence[str], colors: np.ndarray,
                        shares: Optional[Sequence[float]] = None, alpha: float = 0.5,
                        background_index: Optional[int] = None):
    """The label colours blended onto the RGB image (background pixels left as they are), with a legend panel
    on the right. Pillow works on uint8 pixels: 3 bytes per pixel, whatever the image size."""
    from PIL import Image
    base = Image.fromarray(np.ascontiguousarray(image))
    blended = Image.blend(base, Image.fromarray(colors[label_map]), alpha)
    if background_index is not None:
        blended.paste(base, mask=Image.fromarray(((label_map == background_index) * 255).astype(np.uint8)))
    legend = legend_image(names, colors, shares, font_size=int(np.clip(base.height / 28, 11, 40)))
    canvas = Image.new("RGB", (base.width + legend.width, max(base.height, legend.height)), "white")
    canvas.paste(blended, (0, 0))
    canvas.paste(legend, (base.width, 0))
    return canvas


# --- feature pictures (simzss-visualize) -----------------------------------------------------------------------
def scaled_size(height: int, width: int, short_side: int, patch_size: int) -> Tuple[int, int]:
    """Keep-ratio size with the given short side, both sides rounded to multiples of the patch size."""
    f = short_side / min(height, width)
    return (max(patch_size, int(round(height * f / patch_size)) * patch_size),
            max(patch_size, int(round(width * f / patch_size)) * patch_size))


@torch.no_grad()
def dense_features(model, image: np.ndarray, size: Tuple[int, int], mean: Sequence[float], std: Sequence[float]
                   ) -> torch.Tensor:
    """l2-normalised patch tokens [h, w, d] (float32, CPU) of an RGB uint8 image resized to ``size``."""
    param = next(model.parameters())
    x = torch.tensor(image).permute(2, 0, 1)[None].float().div_(255)  # a copy: arrays may be read-only
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return model.encode_dense(x.to(param.device, param.dtype), normalize=True)[0].float().cpu()


def pca_panels(features: Sequence[torch.Tensor], max_rows: int = 20000, seed: int = 0) -> List[np.ndarray]:
    """PCA-to-RGB pictures [h_i, w_i, 3] uint8 of several feature maps [h_i, w_i, d] with ONE basis and one
    colour scaling, fitted on (a sample of) all their tokens, so that equal colours mean equal features."""
    flat = torch.cat([f.reshape(-1, f.shape[-1]).float() for f in features])
    gen = torch.Generator().manual_seed(seed)
    sample = flat[torch.randperm(len(flat), generator=gen)[:max_rows]] if len(flat) > max_rows else flat
    center, basis = pca_basis(sample)
    proj = (sample - center) @ basis
    lo, hi = proj.quantile(0.01, dim=0), proj.quantile(0.99, dim=0)
    out = []
    for f in features:
        p = ((f.reshape(-1, f.shape[-1]).float() - center) @ basis - lo) / (hi - lo).clamp_min(1e-6)
        out.append((p.clamp(0, 1).reshape(*f.shape[:2], 3).numpy() * 255).astype(np.uint8))
    return out


def _display_image(image: np.ndarray, max_side: int = 1024) -> np.ndarray:
    # Figures never need more pixels than this; big photos are shrunk once for display.
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    from PIL import Image
    f = max_side / max(h, w)
    return np.asarray(Image.fromarray(image).resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR))


def _figure(num_panels: int, aspect: float, extra_width: float = 0.0):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panel = 3.2
    fig, axes = plt.subplots(1, num_panels, figsize=(panel * num_panels + extra_width, panel * aspect + 0.6),
                             squeeze=False, layout="constrained")
    for ax in axes[0]:
        ax.set_axis_off()
    return plt, fig, list(axes[0])


def pca_figure(image: np.ndarray, panels: Sequence[np.ndarray], titles: Sequence[str], path) -> Path:
    """Input | PCA panels, side by side (each panel shows its patch grid with nearest-neighbour pixels). Pictures
    are written atomically (``atomic.save_figure``): a failed write leaves no partial file."""
    shown = _display_image(image)
    plt, fig, axes = _figure(1 + len(panels), shown.shape[0] / shown.shape[1])
    axes[0].imshow(shown)
    axes[0].set_title("input", fontsize=9)
    for ax, panel, title in zip(axes[1:], panels, titles):
        ax.imshow(panel, interpolation="nearest")
        ax.set_title(title, fontsize=9)
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
    return Path(path)


def similarity_figure(image: np.ndarray, similarities: torch.Tensor, names: Sequence[str], path) -> Path:
    """Input | one heat map per label: ``similarities`` [C, h, w] (cosines) resized to the shown image and drawn
    over it, with one colour scale (and colour bar) for all labels."""
    shown = _display_image(image)
    maps = F.interpolate(similarities[None].float().cpu(), size=shown.shape[:2], mode="bilinear",
                         align_corners=False)[0].numpy()
    vmin, vmax = float(maps.min()), float(maps.max())
    if not math.isfinite(vmin) or vmax - vmin < 1e-6:
        vmin, vmax = vmin - 1e-3, vmax + 1e-3
    plt, fig, axes = _figure(1 + len(names), shown.shape[0] / shown.shape[1], extra_width=0.8)
    axes[0].imshow(shown)
    axes[0].set_title("input", fontsize=9)
    grey = shown.mean(axis=2)
    artist = None
    for ax, heat, name in zip(axes[1:], maps, names):
        ax.imshow(grey, cmap="gray")
        artist = ax.imshow(heat, cmap="jet", alpha=0.55, vmin=vmin, vmax=vmax)
        ax.set_title(name, fontsize=9)
    if artist is not None:
        fig.colorbar(artist, ax=axes, fraction=0.02, pad=0.01, label="cosine similarity")
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
    return Path(path)


def feature_pyramid(model, image: np.ndarray, scales: Sequence[float], base_size: int, mean, std,
                    max_tokens: int = 16384) -> List[Tuple[float, torch.Tensor, bool]]:
    """(scale, dense features [h, w, d], capped) per scale: the image resized to short side scale x base_size.
    A scale that would exceed ``max_tokens`` patches (one global-attention forward) is reduced to fit."""
    p = int(model.visual.patch_size)
    out = []
    for s in scales:
        size = scaled_size(*image.shape[:2], int(round(s * base_size)), p)
        capped = (size[0] // p) * (size[1] // p) > max_tokens
        if capped:
            f = math.sqrt(max_tokens / ((size[0] // p) * (size[1] // p)))
            size = scaled_size(*image.shape[:2], int(min(size) * f), p)
        out.append((s, dense_features(model, image, size, mean, std), capped))
    return out
