"""The geometry of the sliding-window protocol (docs/evaluation.md, "Inference"): MMSeg's keep-ratio resize,
its window placement, a cv2-like resize of uint8 pixels, and the 1-D bilinear maps that stitch windows and
upsample scores as matrix products.
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F

# MMSeg's slide inference of TCL's protocol: img_scale=(MAX_LONG_SIDE, SHORT_SIDE), keep ratio; crop and stride.
SHORT_SIDE = 448
MAX_LONG_SIDE = 2048
WINDOW = 448
STRIDE = 224


def rescale_size(height: int, width: int, short_side: int = SHORT_SIDE, max_long_side: int = MAX_LONG_SIDE) -> Tuple[int, int]:
    """MMSeg/mmcv keep-ratio rescale for ``img_scale=(max_long_side, short_side)``.

    f = min(max_long_side / long side, short_side / short side); new size = int(x * f + 0.5).
    500x375 (WxH) -> 597x448; 2048x1024 -> 896x448. Small images are enlarged too.
    """
    f = min(max_long_side / max(height, width), short_side / min(height, width))
    return int(height * f + 0.5), int(width * f + 0.5)


def window_grid(height: int, width: int, window: int = WINDOW, stride: int = STRIDE) -> List[Tuple[int, int, int, int]]:
    """MMSeg's slide-inference windows (y1, y2, x1, x2) over an image of height x width.

    n = max(size - window + stride - 1, 0) // stride + 1 per axis; a window crossing the border is moved back
    inside; an image smaller than the window gives one window that is the whole image (no padding).
    """
    if window < 1 or stride < 1:
        raise ValueError("window and stride must be positive")
    rows = max(height - window + stride - 1, 0) // stride + 1
    cols = max(width - window + stride - 1, 0) // stride + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + window, height), min(c * stride + window, width)
            boxes.append((max(y2 - window, 0), y2, max(x2 - window, 0), x2))
    return boxes


def resize_image_uint8(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """cv2.resize(INTER_LINEAR)-like resize of uint8 pixels [3, H, W]: bilinear, half-pixel centres, no
    antialiasing, rounded and clamped back to the uint8 range (returned as float)."""
    image = image.float()
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    out = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0]
    return out.round_().clamp_(0, 255)


def bilinear_taps(n_in: int, n_out: int, device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(first tap [n_out], second tap [n_out], weight of the second [n_out]) of 1-D bilinear resizing with
    align_corners=False, computed as PyTorch does (float32, negative source coordinates clamped to 0), so that a
    band of output rows can be produced on its own."""
    scale = torch.tensor(n_in / n_out, dtype=torch.float32)
    src = ((torch.arange(n_out, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = src.floor().long().clamp_(max=n_in - 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    w1 = src - i0.float()
    return i0.to(device), i1.to(device), w1.to(device)


def interpolation_matrix(n_in: int, n_out: int, device) -> torch.Tensor:
    """[n_out, n_in] matrix of 1-D bilinear resizing (align_corners=False): rows are convex weights."""
    i0, i1, w1 = bilinear_taps(n_in, n_out, device)
    m = torch.zeros(n_out, n_in, device=device)
    rows = torch.arange(n_out, device=device)
    m.index_put_((rows, i0), 1 - w1, accumulate=True)
    m.index_put_((rows, i1), w1, accumulate=True)
    return m


def placement_matrix(length: int, spans, n_patches: int, padded: int, device) -> torch.Tensor:
    """[length, len(spans) * n_patches]: window k's patches upsampled to ``padded`` pixels, cut to its span
    (a, b) and placed at a; each pixel's row divided by the number of windows that cover it."""
    m = torch.zeros(length, len(spans) * n_patches, device=device)
    up = interpolation_matrix(n_patches, padded, device)
    count = torch.zeros(length, 1, device=device)
    for k, (a, b) in enumerate(spans):
        m[a:b, k * n_patches:(k + 1) * n_patches] = up[: b - a]
        count[a:b] += 1
    return m / count
