"""The few-shot classifier of the paper's Table 8: the ceiling the text alignment could reach with a tower.

Each class's row is the direction of the mean of the l2-normalised dense tokens of its labelled pixels in a set of
images (the training images of a dataset): a pixel's token is the token of the patch that contains it, in every
window of the engine that covers it (the windows, resizing and normalisation are the engine's, so the rows live
where the engine scores). Scoring with it instead of the text classifier turns zero-shot segmentation into
nearest-class-mean segmentation on the same features: the gap to the text classifier is what the text side has
not learned (docs/studies.md, "fewshot").
"""
from typing import Callable, Iterable, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .classifier import Classifier
from .labels import IGNORE_INDEX


@torch.no_grad()
def class_token_sums(engine, pairs: Iterable[Tuple[object, np.ndarray]], num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> Tuple[torch.Tensor, torch.Tensor]:
    """(sums [C, d] of the normalised tokens of each class's pixels, pixel counts [C] int64) over ``pairs`` of
    (image, label map at the image's size: class indices 0..C-1, ``ignore_index`` left out)."""
    sums, counts = None, torch.zeros(num_classes, dtype=torch.int64)
    p = engine.patch_size
    for image, label in pairs:
        normalized, size = engine.preprocess(image)
        label = torch.as_tensor(np.asarray(label)).long().to(normalized.device)
        if tuple(label.shape) != tuple(size):
            raise ValueError(f"label map of shape {tuple(label.shape)} for an image of size {tuple(size)}")
        valid = label != ignore_index
        if bool(((label[valid] < 0) | (label[valid] >= num_classes)).any()):
            raise ValueError(f"labels must be class indices 0..{num_classes - 1} or {ignore_index} (ignored)")
        height, width = normalized.shape[-2:]
        if (height, width) != tuple(size):  # labels follow the image to the processing resolution
            label = F.interpolate(label[None, None].float(), size=(height, width), mode="nearest")[0, 0].long()
        boxes, crop, padded = engine.window_layout(normalized)  # the engine's windows and padding
        pad = (padded[0] - crop[0], padded[1] - crop[1])
        rows, cols = padded[0] // p, padded[1] // p
        patch_of_pixel = (torch.arange(rows * p, device=label.device)[:, None] // p * cols
                          + torch.arange(cols * p, device=label.device)[None] // p)
        for start in range(0, len(boxes), engine.window_batch_size):
            batch = boxes[start: start + engine.window_batch_size]
            crops = F.pad(torch.stack([normalized[:, y1:y2, x1:x2] for y1, y2, x1, x2 in batch]), (0, pad[1], 0, pad[0]))
            labels = F.pad(torch.stack([label[y1:y2, x1:x2] for y1, y2, x1, x2 in batch]), (0, pad[1], 0, pad[0]),
                           value=ignore_index)
            tokens = engine.window_tokens(crops)
            tokens = tokens.reshape(-1, tokens.shape[-1])  # [N * rows * cols, d], unit norm
            keep = labels != ignore_index
            patch = patch_of_pixel + torch.arange(len(batch), device=label.device)[:, None, None] * (rows * cols)
            # pixels of class c in each patch: the weights of that patch's token in class c's sum
            per_patch = torch.bincount(patch[keep] * num_classes + labels[keep],
                                       minlength=tokens.shape[0] * num_classes).view(-1, num_classes)
            if sums is None:
                sums = tokens.new_zeros(num_classes, tokens.shape[-1])
            sums += per_patch.t().to(tokens.dtype) @ tokens
            counts += per_patch.sum(dim=0).cpu()
    if sums is None:
        raise ValueError("no labelled images given")
    return sums, counts


def fewshot_classifier(engine, pairs: Iterable[Tuple[object, np.ndarray]], num_classes: int,
                       fallback: Optional[Callable[[], Classifier]] = None,
                       ignore_index: int = IGNORE_INDEX) -> Classifier:
    """The few-shot classifier of ``engine`` (a ``SlidingWindowEngine``): row c = normalise(mean of the
    normalised dense tokens of the pixels labelled c in ``pairs``); see the module docstring.

    A class with no labelled pixel takes its row from ``fallback()`` (e.g. the text classifier, built only when
    needed; it must have one row per class); without a fallback, such a class is a ValueError."""
    num_classes = int(num_classes)
    sums, counts = class_token_sums(engine, pairs, num_classes, ignore_index)
    weights = F.normalize(sums, dim=-1)  # the mean's direction
    missing = (counts == 0).to(weights.device)
    if bool(missing.any()):
        absent = missing.nonzero().flatten().tolist()
        if fallback is None:
            raise ValueError(f"classes {absent} have no labelled pixel (and no fallback classifier was given)")
        rows = fallback()
        if rows.weights.shape[0] != num_classes:
            raise ValueError(f"classes {absent} have no labelled pixel and the fallback classifier has no single "
                             "row per class to keep for them")
        weights = torch.where(missing[:, None], rows.weights.to(weights), weights)
    return Classifier(weights, torch.arange(num_classes, device=weights.device), num_classes)
