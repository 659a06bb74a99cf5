"""PAMR: pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020, "Single-Stage Semantic Segmentation
from Image Labels", §3.3), the optional post-processing of TCL's released evaluation (docs/evaluation.md).

It equals the authors' released module (github visinf/1-stage-wseg, ``models/mods/pamr.py``, which TCL and
Talk2DINO use unchanged), written here from its definition:

- Masks of another size than the image are first resized to the image (bilinear, ``align_corners=True``); the
  refinement runs, and the result comes out, at the image's resolution.
- Neighbours: the 8 non-centre taps of a 3x3 kernel at each dilation d (1, 2, 4, 8, 12, 24 -> 48 neighbours),
  with replicate padding (a neighbour outside the image is its nearest inside pixel).
- ``sigma_i``: per colour channel, the unbiased standard deviation of the 3x3 taps *including the centre* of
  every dilation taken together: 9 x 6 = 54 values, the centre pixel counted once per dilation.
- ``kappa(i, j) = -|I_i - I_j| / (1e-8 + 0.1 sigma_i)`` per colour channel, averaged over the channels, then a
  softmax over the 48 neighbours gives the affinities ``alpha_ij`` (positive, summing to one; the centre is
  not a neighbour of itself).
- The masks are refined by ``m_i <- sum_j alpha_ij m_j``, repeated 10 times. Each step is a convex
  combination, so a constant channel (TCL's background constant) stays constant and scores keep their range.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_DILATIONS = (1, 2, 4, 8, 12, 24)
DEFAULT_ITERATIONS = 10


def neighbour_offsets(dilations: Sequence[int]) -> List[Tuple[int, int]]:
    """The (dy, dx) offsets of the 8 neighbours of a 3x3 kernel at each dilation, centre excluded."""
    offsets = []
    for d in dilations:
        for dy in (-d, 0, d):
            for dx in (-d, 0, d):
                if dy or dx:
                    offsets.append((dy, dx))
    return offsets


def _shifted(padded: torch.Tensor, pad: int, dy: int, dx: int, height: int, width: int) -> torch.Tensor:
    # Value of the neighbour at (y + dy, x + dx) for every pixel (y, x) of the unpadded map.
    return padded[..., pad + dy: pad + dy + height, pad + dx: pad + dx + width]


class PAMR(nn.Module):
    """Refine class score maps with image-adaptive local affinities (see module docstring).

    ``forward(image [B, 3, H, W], masks [B, C, h, w]) -> [B, C, H, W]``: masks of another size are resized to
    the image first (bilinear, ``align_corners=True``), as in the reference module.
    """

    def __init__(self, num_iter: int = DEFAULT_ITERATIONS, dilations: Sequence[int] = DEFAULT_DILATIONS,
                 sigma_scale: float = 0.1):
        super().__init__()
        if num_iter < 1:
            raise ValueError("PAMR needs at least one iteration")
        if not dilations or min(dilations) < 1:
            raise ValueError("PAMR dilations must be positive integers")
        self.num_iter = int(num_iter)
        self.dilations = tuple(int(d) for d in dilations)
        self.sigma_scale = float(sigma_scale)
        self.offsets = neighbour_offsets(self.dilations)
        self.pad = max(self.dilations)

    @torch.no_grad()
    def affinity(self, image: torch.Tensor) -> torch.Tensor:
        """Affinities [B, K, H, W] (softmax over the K neighbours) of an image [B, 3, H, W]."""
        image = image.float()
        height, width = image.shape[-2:]
        padded = F.pad(image, [self.pad] * 4, mode="replicate")
        neighbours = torch.stack(
            [_shifted(padded, self.pad, dy, dx, height, width) for dy, dx in self.offsets], dim=2,
        )  # [B, 3, K, H, W]
        centre = image.unsqueeze(2)
        # The reference's sigma: the 9 taps of every dilation, the centre once per dilation (54 values).
        taps = torch.cat([centre.expand(-1, -1, len(self.dilations), -1, -1), neighbours], dim=2)
        sigma = taps.std(dim=2, keepdim=True)
        kappa = (neighbours - centre).abs_().div_(sigma.mul_(self.sigma_scale).add_(1e-8)).neg_()
        return kappa.mean(dim=1).softmax(dim=1)

    @torch.no_grad()
    def forward(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4 or masks.ndim != 4 or image.shape[0] != masks.shape[0]:
            raise ValueError(f"PAMR expects image [B, 3, H, W] and masks [B, C, h, w], got "
                             f"{tuple(image.shape)} and {tuple(masks.shape)}")
        height, width = image.shape[-2:]
        dtype = masks.dtype
        masks = masks.float()
        if masks.shape[-2:] != image.shape[-2:]:
            masks = F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=True)
        alpha = self.affinity(image)
        for _ in range(self.num_iter):
            padded = F.pad(masks, [self.pad] * 4, mode="replicate")
            refined = torch.zeros_like(masks)
            # One neighbour at a time: stacking all K shifted copies of C score maps would need K times the
            # memory of the masks (48 x 171 classes x 448^2 floats is 6.6 GB).
            for k, (dy, dx) in enumerate(self.offsets):
                refined.addcmul_(_shifted(padded, self.pad, dy, dx, height, width), alpha[:, k: k + 1])
            masks = refined
        return masks.to(dtype)
