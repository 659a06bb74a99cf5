"""The sliding-window engine: dense scores of a SimZSS model for any classifier, in plain PyTorch, following the
TCL/MMSeg protocol of docs/evaluation.md exactly.

Pipeline of :class:`SlidingWindowEngine` (docs/evaluation.md, "Inference"), for a ``SegmentationProtocol``:

1. the image (RGB uint8) is resized keeping its aspect ratio with MMSeg's ``img_scale=(2048, 448)`` rule
   (``windows.rescale_size``), bilinearly without antialiasing and rounded back to uint8, as cv2 does;
2. it is normalised with the vision tower's own mean/std (docs/method.md);
3. 448x448 windows with stride 224 are placed as MMSeg does (``windows.window_grid``); the windows of one or
   more images are encoded in batches;
4. per window, the l2-normalised patch tokens are multiplied with the classifier's unit-norm rows
   (``classifier.py``: text rows, or few-shot rows) -> patch-level cosine similarities, bilinearly upsampled to
   the window (optionally refined with PAMR, with the window's image, as TCL does), summed into the stitched
   map and divided by the per-pixel window count;
5. the stitched map is resized bilinearly (align_corners=False) to the original image size and the label is
   the argmax; with a background threshold, low-confidence pixels are background (``background.py``).

Steps 4-5 are linear maps, so they are computed in cheaper but equivalent ways (tests compare them with the
step-by-step version): the stitching as two matrix products (``_stitch_separable``; PAMR, which is not linear,
takes the window-by-window path), and the full-resolution argmax/confidence without materialising C x H x W
scores (``resize.argmax_and_confidence``). Memory is bounded by the resized image (C x h x w, h x w <= 448 x
2048) plus ``window_batch_size`` windows, whatever the original size.

Score semantics: ``logits(image, classifier)`` returns **cosine similarities** in [-1, 1]: for class c and pixel
p, the bilinear interpolation (window -> stitched average -> original size) of ``<normalize(z_v(patch)), w_c>``
where ``w_c`` is the class's unit-norm row. With several rows per class (``synonyms="max"``) the class score is
the max over its rows' cosines, taken per patch.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import open_clip
import torch
import torch.nn.functional as F

from ..images import to_uint8_image
from ..validation import check_count
from .background import apply_background
from .classifier import Classifier
from .pamr import PAMR
from .protocol import SegmentationProtocol
from .resize import argmax_and_confidence
from .windows import placement_matrix, rescale_size, resize_image_uint8, window_grid


def _model_device_dtype(model) -> Tuple[torch.device, torch.dtype]:
    try:
        p = next(model.visual.parameters())
        return p.device, p.dtype
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu"), torch.float32


@dataclass
class DensePrediction:
    """What :meth:`SlidingWindowEngine.segment` returns.

    Attributes:
        logits: [C, h, w] cosine scores at the processing resolution (short side 448), before the final resize.
        labels: [H, W] int64 at the image size: 0..C-1, or with a background threshold 0 = background and
            c + 1 = class c.
        confidence: [H, W] foreground confidence when there is a threshold, else None.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    confidence: Optional[torch.Tensor]


class SlidingWindowEngine:
    """Dense scores of one model under one protocol, for any classifier (module docstring).

    Args:
        model: a SimZSS model (``encode_dense``, ``visual.patch_size``).
        protocol: the :class:`~.protocol.SegmentationProtocol` (default: the paper's).
        window_batch_size: windows encoded per forward (bounds the vision tower's memory).
        device: where inference runs (default: the model's device).
        mean, std: image normalisation (default: the tower's own, ``open_clip.get_model_preprocess_cfg``).
        max_chunk_elements: bound on the temporary values of the full-resolution step.
    """

    def __init__(self, model, protocol: Optional[SegmentationProtocol] = None, window_batch_size: int = 4,
                 device=None, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 max_chunk_elements: int = 1 << 24):
        self.protocol = protocol if protocol is not None else SegmentationProtocol()
        if not isinstance(self.protocol, SegmentationProtocol):
            raise TypeError("protocol must be a SegmentationProtocol")
        self.window_batch_size = check_count("window_batch_size", window_batch_size)
        self.max_chunk_elements = check_count("max_chunk_elements", max_chunk_elements)
        self.model = model
        model_device, self.dtype = _model_device_dtype(model)
        self.device = torch.device(device) if device is not None else model_device
        self.patch_size = int(model.visual.patch_size)
        self.pamr = PAMR() if self.protocol.pamr else None
        if mean is None or std is None:
            cfg = open_clip.get_model_preprocess_cfg(model)
            if "mean" not in cfg or "std" not in cfg:
                raise ValueError("the model has no preprocess mean/std: pass mean= and std=")
            mean = cfg["mean"] if mean is None else mean
            std = cfg["std"] if std is None else std
        # Pixels stay in the 0..255 range until normalisation, as in MMSeg (resize on uint8, then Normalize).
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(3, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(3, 1, 1) * 255.0

    # --- preprocessing -----------------------------------------------------------------------------------
    def resized_size(self, height: int, width: int) -> Tuple[int, int]:
        return rescale_size(height, width, self.protocol.short_side, self.protocol.max_long_side)

    def preprocess(self, image) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Image -> (normalised resized image [3, h, w] float32 on the device, original (H, W))."""
        pixels = to_uint8_image(image)
        size = tuple(pixels.shape[-2:])
        resized = resize_image_uint8(pixels.to(self.device), self.resized_size(*size))
        return (resized - self.mean) / self.std, size

    # --- dense scores --------------------------------------------------------------------------------------
    def window_tokens(self, crops: torch.Tensor) -> torch.Tensor:
        """Windows [N, 3, h, w] (normalised) -> unit-norm dense tokens [N, h/p, w/p, d] in fp32 (the tower in
        bf16 autocast with ``precision="amp_bf16"``)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.protocol.precision == "amp_bf16"):
            tokens = self.model.encode_dense(crops.to(self.dtype), normalize=False)
        return F.normalize(tokens.float(), dim=-1)

    def window_layout(self, normalized: torch.Tensor):
        """(boxes, crop size, padded size) of the windows of a normalised resized image."""
        height, width = normalized.shape[-2:]
        boxes = window_grid(height, width, self.protocol.window, self.protocol.stride)
        crop = (boxes[0][1] - boxes[0][0], boxes[0][3] - boxes[0][2])  # all windows have one size
        # A crop that is not a multiple of the patch size (only when the image is smaller than the window and
        # its side is odd-sized) is padded with the mean colour (0 after normalisation) at the bottom/right;
        # its patch scores are upsampled to the padded size and the padding is cut off again.
        p = self.patch_size
        padded = (crop[0] + -crop[0] % p, crop[1] + -crop[1] % p)
        return boxes, crop, padded

    def _window_scores(self, images: Sequence[torch.Tensor], classifier: Classifier):
        """Patch scores of every window of one or more normalised images, per image: (boxes, crop size, padded
        size, [N, C, hp, wp], crops or None). Windows are batched across images, in order (``window_batch_size``
        per forward, consecutive windows of one crop size): small images fill a forward together."""
        layouts = [self.window_layout(n) for n in images]
        windows = [(i, box) for i, (boxes, _, _) in enumerate(layouts) for box in boxes]
        scores = [[] for _ in images]
        crops_of = [[] for _ in images]
        start = 0
        while start < len(windows):
            shape = layouts[windows[start][0]][1:]
            stop = start + 1
            while (stop < len(windows) and stop - start < self.window_batch_size
                   and layouts[windows[stop][0]][1:] == shape):
                stop += 1
            (crop, padded), batch = shape, windows[start:stop]
            crops = torch.stack([images[i][:, y1:y2, x1:x2] for i, (y1, y2, x1, x2) in batch])
            if padded != crop:
                crops = F.pad(crops, (0, padded[1] - crop[1], 0, padded[0] - crop[0]))
            batch_scores = classifier.scores(self.window_tokens(crops)).permute(0, 3, 1, 2)  # [N, C, hp, wp]
            for k, (i, _) in enumerate(batch):
                scores[i].append(batch_scores[k: k + 1])
                if self.pamr is not None:
                    crops_of[i].append(crops[k: k + 1, :, :crop[0], :crop[1]])
            start = stop
        return [(boxes, crop, padded, torch.cat(scores[i]), torch.cat(crops_of[i]) if crops_of[i] else None)
                for i, (boxes, crop, padded) in enumerate(layouts)]

    @torch.no_grad()
    def stitched_logits(self, normalized: torch.Tensor, classifier: Classifier) -> torch.Tensor:
        """Slide inference on a normalised resized image [3, h, w] -> averaged cosine map [C, h, w]:
        per window, patch scores upsampled bilinearly to the window, summed, divided by the window count."""
        return self.stitched_logits_batch([normalized], classifier)[0]

    @torch.no_grad()
    def stitched_logits_batch(self, images: Sequence[torch.Tensor], classifier: Classifier) -> List[torch.Tensor]:
        """``stitched_logits`` of several normalised images, their windows batched together."""
        stitched = []
        for image, (boxes, crop, padded, scores, crops) in zip(images, self._window_scores(images, classifier)):
            if self.pamr is not None:
                stitched.append(self._stitch_windows(image.shape[-2:], boxes, crop, padded, scores, crops))
            else:
                stitched.append(self._stitch_separable(image.shape[-2:], boxes, crop, padded, scores))
        return stitched

    def _stitch_windows(self, size, boxes, crop, padded, scores, crops=None) -> torch.Tensor:
        """The protocol step by step: upsample each window (then PAMR, which is not linear), add, divide."""
        stitched = torch.zeros(scores.shape[1], *size, device=scores.device)
        count = torch.zeros(1, *size, device=scores.device)
        for i, (y1, y2, x1, x2) in enumerate(boxes):
            # One window at a time: a batch of C x 448 x 448 maps would be C/3 times the size of the images.
            up = F.interpolate(scores[i: i + 1], size=padded, mode="bilinear",
                               align_corners=False)[:, :, :crop[0], :crop[1]]
            if crops is not None and self.pamr is not None:
                up = self.pamr(crops[i: i + 1], up)
            stitched[:, y1:y2, x1:x2] += up[0]
            count[:, y1:y2, x1:x2] += 1
        return stitched.div_(count)

    def _stitch_separable(self, size, boxes, crop, padded, scores) -> torch.Tensor:
        """The same map as ``_stitch_windows`` from two matrix products. Bilinear upsampling is separable and
        linear, the windows form a grid (rows x columns) and the window count of a pixel is (windows over its
        row) x (windows over its column), so upsample + place + sum + divide is ``B_y @ P @ B_x^T``: P holds the
        patch scores of window (r, c) in block (r, c), and B_y / B_x put each window's patch rows / columns at
        its pixels with bilinear weights, divided by the per-row / per-column count."""
        rows = sorted({(y1, y2) for y1, y2, _, _ in boxes})
        cols = sorted({(x1, x2) for _, _, x1, x2 in boxes})
        num, num_classes, hp, wp = scores.shape
        # boxes are row-major over the grid: window (r, c) is boxes[r * len(cols) + c]
        grid = scores.view(len(rows), len(cols), num_classes, hp, wp).permute(2, 0, 3, 1, 4)
        grid = grid.reshape(num_classes, len(rows) * hp, len(cols) * wp)
        b_y = placement_matrix(size[0], rows, hp, padded[0], scores.device)
        b_x = placement_matrix(size[1], cols, wp, padded[1], scores.device)
        return b_y @ (grid @ b_x.t())

    # --- at the image's size -----------------------------------------------------------------------------------
    def reduce_to_size(self, stitched: torch.Tensor, size: Tuple[int, int], with_confidence: bool = True
                       ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(argmax [H, W], foreground confidence [H, W] or None) of the stitched map resized to ``size``
        (``resize.argmax_and_confidence``: exact, without the C x H x W scores)."""
        return argmax_and_confidence(stitched, size, self.protocol.background, with_confidence,
                                     self.max_chunk_elements)

    @torch.no_grad()
    def logits(self, image, classifier: Classifier) -> torch.Tensor:
        """Cosine scores [C, H, W] at the original image size (module docstring, "Score semantics").

        Memory is C x H x W floats; for labels only, ``classes_and_confidence`` works in bounded chunks instead.
        """
        normalized, size = self.preprocess(image)
        stitched = self.stitched_logits(normalized, classifier)
        if tuple(stitched.shape[-2:]) == size:
            return stitched
        return F.interpolate(stitched[None], size=size, mode="bilinear", align_corners=False)[0]

    @torch.no_grad()
    def classes_and_confidence(self, image, classifier: Classifier, with_confidence: bool = True
                               ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(argmax over the classifier's classes [H, W] int64, foreground confidence [H, W] float32 or None): what
        a background threshold is then applied to, or a threshold sweep scores many thresholds with.

        Equal to ``logits(image, classifier).argmax(0)`` and ``protocol.background.confidence(logits(...))``, but
        the full-resolution scores are never materialised.
        """
        return self.classes_and_confidence_batch([image], classifier, with_confidence)[0]

    @torch.no_grad()
    def classes_and_confidence_batch(self, images: Sequence, classifier: Classifier, with_confidence: bool = True
                                     ) -> List[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """``classes_and_confidence`` of several images, with their windows batched through the vision tower
        together (the evaluator's path: a VOC image has 2 windows, a batch of 4 images fills a forward of 8)."""
        prepared = [self.preprocess(image) for image in images]
        stitched = self.stitched_logits_batch([normalized for normalized, _ in prepared], classifier)
        return [self.reduce_to_size(s, size, with_confidence) for s, (_, size) in zip(stitched, prepared)]

    @torch.no_grad()
    def segment(self, image, classifier: Classifier) -> DensePrediction:
        """Scores, labels and background (the protocol's threshold) of one image in one pass."""
        normalized, size = self.preprocess(image)
        stitched = self.stitched_logits(normalized, classifier)
        threshold = self.protocol.background.threshold
        labels, confidence = self.reduce_to_size(stitched, size, with_confidence=threshold is not None)
        if threshold is not None:
            labels = apply_background(labels, confidence, threshold)
        return DensePrediction(stitched, labels, confidence)

    @torch.no_grad()
    def predict(self, image, classifier: Classifier) -> torch.Tensor:
        """Label map [H, W] int64 at the original size: class indices 0..C-1 without a background threshold;
        with one, 0 = background and c + 1 = class c (MMSeg with-background sets)."""
        return self.segment(image, classifier).labels
