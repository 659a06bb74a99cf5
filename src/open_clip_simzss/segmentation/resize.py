"""From stitched scores to labels at the image's size: the argmax and the foreground confidence of the bilinear
resize of [C, h, w] scores to [H, W], exactly, without materialising the C x H x W scores (step 5 of the
protocol, docs/evaluation.md "Inference"; ``engine.py`` calls it, tests compare it with ``F.interpolate``).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .background import BackgroundRule
from .windows import bilinear_taps


def argmax_and_confidence(stitched: torch.Tensor, size: Tuple[int, int], background: BackgroundRule,
                          with_confidence: bool = True, max_chunk_elements: int = 1 << 24
                          ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The argmax and the confidence of the bilinear resize (align_corners=False) of [C, h, w] to ``size``
    exactly, without materialising the C x H x W scores.

    Bilinear interpolation mixes the same 2x2 source pixels with the same convex weights for every class:

    - where the 4 source pixels share their argmax c, the interpolated argmax is c and the interpolated max
      is the interpolation of the max map (most pixels);
    - elsewhere, a class that is the argmax of none of the 4 is below its second-best score at each of
      them, so below the interpolated second-best map; when the best of the (at most 4) corner labels
      beats that bound, it is the argmax. Only the remaining pixels need all C classes.

    Pixels are processed in chunks (at most ``max_chunk_elements`` temporary values). The softmax confidence needs every class
    everywhere and is computed in row bands.
    """
    num_classes, h, w = stitched.shape
    out_h, out_w = size
    device = stitched.device
    if (h, w) == (out_h, out_w):  # nothing to resize
        labels = stitched.argmax(dim=0)
        if not with_confidence:
            return labels, None
        return labels, background.confidence(stitched)
    rows0, rows1, row_w = bilinear_taps(h, out_h, device)
    cols0, cols1, col_w = bilinear_taps(w, out_w, device)
    flat = stitched.reshape(num_classes, h * w)
    best, label = flat.max(dim=0)
    # finite "minus infinity": -inf times a zero weight would be NaN
    second = flat.scatter(0, label[None], torch.finfo(flat.dtype).min).amax(dim=0)
    grid = label.view(h, w)
    # Same label as the right, lower and lower-right neighbours (edges clamped like the taps: on the last
    # column the right neighbour is the pixel itself and the lower-right one the lower one, and so on).
    uniform = torch.ones(h, w, dtype=torch.bool, device=device)
    uniform[:, :-1] &= grid[:, :-1] == grid[:, 1:]
    uniform[:-1] &= grid[:-1] == grid[1:]
    uniform[:-1, :-1] &= grid[:-1, :-1] == grid[1:, 1:]
    labels = grid.index_select(0, rows0).index_select(1, cols0)
    mixed = ~uniform.index_select(0, rows0).index_select(1, cols0)
    sigmoid = with_confidence and background.score == "sigmoid"
    confidence = None
    if sigmoid:
        confidence = torch.sigmoid(F.interpolate(best.view(1, 1, h, w), size=size, mode="bilinear",
                                                 align_corners=False)[0, 0])
    # Per mixed source cell (top-left source pixel r * w + c), once: its 4 corners, their labels (the
    # candidates), the candidates' scores at the corners and the corners' second-best scores.
    cell = torch.nonzero(~uniform.reshape(-1)).squeeze(1)
    r, c = cell // w, cell % w
    down_ = torch.where(r < h - 1, w, 0)
    right1 = torch.where(c < w - 1, 1, 0)
    corners = torch.stack([cell, cell + right1, cell + down_, cell + down_ + right1], dim=1)  # [m, 4]
    candidates = label[corners]  # [m, 4]
    cell_table = torch.cat([
        flat.reshape(-1)[candidates.unsqueeze(2) * (h * w) + corners.unsqueeze(1)].reshape(-1, 16),
        second[corners],
    ], dim=1)  # [m, 20]: candidate x corner scores, then the corners' second-best scores
    row_of_cell = torch.full((h * w,), -1, dtype=torch.long, device=device)
    row_of_cell[cell] = torch.arange(cell.numel(), device=device)

    ys, xs = mixed.nonzero(as_tuple=True)
    chunk = max(1, max_chunk_elements // (4 * max(num_classes, 5)))
    flat_labels = labels.view(-1)
    flat_conf = confidence.view(-1) if sigmoid else None
    for start in range(0, ys.numel(), chunk):
        y, x = ys[start: start + chunk], xs[start: start + chunk]
        k = row_of_cell[rows0[y] * w + cols0[x]]
        wy, wx = row_w[y].unsqueeze(1), col_w[x].unsqueeze(1)
        table = cell_table.index_select(0, k)
        scores = table[:, :16].view(-1, 4, 4)  # [n, candidate, corner]
        # bilinear weights as two lerps: along x on both source rows, then along y
        scores = torch.lerp(torch.lerp(scores[..., 0], scores[..., 1], wx),
                            torch.lerp(scores[..., 2], scores[..., 3], wx), wy)
        top, pick = scores.max(dim=1)
        bound = torch.lerp(torch.lerp(table[:, 16:17], table[:, 17:18], wx),
                           torch.lerp(table[:, 18:19], table[:, 19:20], wx), wy).squeeze(1)
        winner = candidates.index_select(0, k).gather(1, pick[:, None]).squeeze(1)
        unsure = (top < bound).nonzero().squeeze(1)
        if unsure.numel():  # another class may win: all classes for these few pixels
            cols = flat.index_select(1, corners.index_select(0, k[unsure]).reshape(-1))
            cols = cols.view(num_classes, -1, 4)
            wyu, wxu = wy[unsure].view(1, -1), wx[unsure].view(1, -1)
            full = torch.lerp(torch.lerp(cols[..., 0], cols[..., 1], wxu),
                              torch.lerp(cols[..., 2], cols[..., 3], wxu), wyu)
            top[unsure], winner[unsure] = full.max(dim=0)
        pixel = y * out_w + x
        flat_labels[pixel] = winner
        if sigmoid:
            flat_conf[pixel] = torch.sigmoid(top)
    if with_confidence and not sigmoid:
        confidence = _softmax_confidence(stitched, size, rows0, rows1, row_w, background.scale, max_chunk_elements)
    return labels, confidence

def _softmax_confidence(stitched, size, rows0, rows1, row_w, scale: float, max_chunk_elements: int) -> torch.Tensor:
    """max_c softmax(s * cos)_c at full resolution, one band of output rows at a time. Bilinear resizing is
    separable: per band, the two source rows of each output row are blended (at the small source width), then
    ``F.interpolate`` widens the band (same height in and out, so rows are unchanged)."""
    num_classes, h, w = stitched.shape
    out_h, out_w = size
    confidence = torch.empty(out_h, out_w, device=stitched.device)
    band = max(1, max_chunk_elements // max(1, num_classes * max(out_w, w)))
    for r in range(0, out_h, band):
        sl = slice(r, min(r + band, out_h))
        rows = torch.lerp(stitched[:, rows0[sl]], stitched[:, rows1[sl]], row_w[sl].view(1, -1, 1))
        scores = rows if out_w == w else F.interpolate(
            rows[None], size=(rows.shape[1], out_w), mode="bilinear", align_corners=False)[0]
        best = scores.amax(dim=0)
        confidence[sl] = scores.sub_(best).mul_(scale).exp_().sum(dim=0).reciprocal_()
    return confidence
