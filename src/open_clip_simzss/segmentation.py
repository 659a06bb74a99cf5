"""Zero-shot semantic segmentation with a SimZSS model: the window engine, in plain PyTorch, following the
TCL/MMSeg protocol of docs/evaluation.md exactly.

Pipeline of :class:`ZeroShotSegmenter` (docs/evaluation.md, "Inference"):

1. the image (RGB uint8) is resized keeping its aspect ratio with MMSeg's ``img_scale=(2048, 448)`` rule
   (:func:`rescale_size`), bilinearly without antialiasing and rounded back to uint8, as cv2 does;
2. it is normalised with the vision tower's own mean/std (docs/method.md);
3. 448x448 windows with stride 224 are placed as MMSeg does (:func:`window_grid`); the windows of one image
   are encoded in batches;
4. per window, the l2-normalised patch tokens are multiplied with the l2-normalised text classifier
   (``text_classifier``) -> patch-level cosine similarities, bilinearly upsampled to the window (optionally
   refined with PAMR, with the window's image, as TCL does), summed into the stitched map and divided by the
   per-pixel window count;
5. the stitched map is resized bilinearly (align_corners=False) to the original image size and the label is
   the argmax.

Steps 4-5 are linear maps, so they are computed in cheaper but equivalent ways (tests compare them with the
step-by-step version): the stitching as two matrix products (``_stitch_separable``; PAMR, which is not linear,
takes the window-by-window path), and the full-resolution argmax/confidence without materialising C x H x W
scores (``reduce_to_size``). Memory is bounded by the resized image (C x h x w, h x w <= 448 x 2048) plus
``window_batch_size`` windows, whatever the original size.

Score semantics
---------------
``logits(image)`` returns **cosine similarities** in [-1, 1]: for class c and pixel p, the bilinear
interpolation (window -> stitched average -> original size) of ``<normalize(z_v(patch)), w_c>`` where ``w_c``
is the class's unit-norm text embedding. With ``synonyms="max"`` the class score is the max over its synonyms'
cosines, taken per patch.

Background (docs/evaluation.md, "Background") is not a text class. The *foreground confidence* of a pixel is
computed from its full-resolution cosines, and the pixel is background when the confidence is **below** the
threshold (:func:`apply_background`, the one place this rule is written):

- ``background_score="sigmoid"`` (Talk2DINO): confidence = sigmoid(max_c cos_c). A threshold t is the same as
  "max cosine < logit(t)"; Talk2DINO's 0.55 means cos < 0.2007.
- ``background_score="softmax"`` (SCLIP/ProxyCLIP/NACLIP): confidence = max_c softmax_c(s * cos), with
  ``background_scale`` s (default 40, the SCLIP/ProxyCLIP/NACLIP value for most sets).

This equals TCL/Talk2DINO's "prepend a constant bg_thresh channel and take the argmax" except on exact ties
(there the constant channel wins; here a confidence equal to the threshold is foreground). With a threshold,
``predict`` returns the MMSeg with-background convention: 0 = background, c + 1 = class c.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import open_clip
import torch
import torch.nn.functional as F

from .images import to_uint8_image
from .pamr import PAMR
from .text_classifier import DEFAULT_TEMPLATES, ClassNames, build_text_classifier, get_templates, synonym_lists
from .validation import check_fraction, check_positive

# --- the protocol (docs/evaluation.md, "Inference") ---------------------------------------------------------
SHORT_SIDE = 448  # MMSeg img_scale=(MAX_LONG_SIDE, SHORT_SIDE), keep ratio
MAX_LONG_SIDE = 2048
WINDOW = 448  # slide inference crop
STRIDE = 224

# --- background (docs/evaluation.md, "Background"): each kind of confidence next to its default threshold -----
# Talk2DINO's sigmoid(cos) threshold (cos < 0.2 is background) and ProxyCLIP's softmax(40 cos) threshold for
# VOC21. Neither is calibrated for SimZSS: measure with a threshold sweep (``metrics.ThresholdSweep``).
DEFAULT_BACKGROUND_THRESHOLD = {"sigmoid": 0.55, "softmax": 0.2}
BACKGROUND_SCORES = tuple(DEFAULT_BACKGROUND_THRESHOLD)
DEFAULT_BACKGROUND_SCORE = "sigmoid"
DEFAULT_BACKGROUND_SCALE = 40.0
# Inference precision (docs/evaluation.md, "Precision"): "amp_bf16" autocasts the vision tower's forward on the
# windows only; its dense tokens are cast to fp32 before normalising and scoring, the text classifier stays fp32.
PRECISIONS = ("fp32", "amp_bf16")


# --- geometry -------------------------------------------------------------------------------------------
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


def _bilinear_taps(n_in: int, n_out: int, device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Source taps of 1-D bilinear resizing with align_corners=False, computed as PyTorch does (float32,
    # negative source coordinates clamped to 0), so a row band of the output can be produced on its own.
    scale = torch.tensor(n_in / n_out, dtype=torch.float32)
    src = ((torch.arange(n_out, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = src.floor().long().clamp_(max=n_in - 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    w1 = src - i0.float()
    return i0.to(device), i1.to(device), w1.to(device)


def _interpolation_matrix(n_in: int, n_out: int, device) -> torch.Tensor:
    """[n_out, n_in] matrix of 1-D bilinear resizing (align_corners=False): rows are convex weights."""
    i0, i1, w1 = _bilinear_taps(n_in, n_out, device)
    m = torch.zeros(n_out, n_in, device=device)
    rows = torch.arange(n_out, device=device)
    m.index_put_((rows, i0), 1 - w1, accumulate=True)
    m.index_put_((rows, i1), w1, accumulate=True)
    return m


def _placement_matrix(length: int, spans, n_patches: int, padded: int, device) -> torch.Tensor:
    """[length, len(spans) * n_patches]: window k's patches upsampled to ``padded`` pixels, cut to its span
    (a, b) and placed at a; each pixel's row divided by the number of windows that cover it."""
    m = torch.zeros(length, len(spans) * n_patches, device=device)
    up = _interpolation_matrix(n_patches, padded, device)
    count = torch.zeros(length, 1, device=device)
    for k, (a, b) in enumerate(spans):
        m[a:b, k * n_patches:(k + 1) * n_patches] = up[: b - a]
        count[a:b] += 1
    return m / count


# --- background ---------------------------------------------------------------------------------------------
def foreground_confidence(logits: torch.Tensor, background_score: str = DEFAULT_BACKGROUND_SCORE,
                          background_scale: float = DEFAULT_BACKGROUND_SCALE) -> torch.Tensor:
    """Foreground confidence [H, W] of cosine logits [C, H, W] (module docstring, "Score semantics")."""
    if background_score == "sigmoid":
        return torch.sigmoid(logits.max(dim=0).values)
    if background_score == "softmax":
        return torch.softmax(background_scale * logits, dim=0).max(dim=0).values
    raise ValueError(f"background_score must be one of {BACKGROUND_SCORES}, got {background_score!r}")


def sigmoid_threshold_of_cosine(cosine: float) -> float:
    """The ``background_score="sigmoid"`` threshold that means "background where max cosine < ``cosine``"."""
    return float(torch.sigmoid(torch.tensor(cosine, dtype=torch.float64)))


def apply_background(labels: torch.Tensor, confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """MMSeg with-background labels: 0 where confidence < threshold, else foreground label + 1."""
    return torch.where(confidence < threshold, torch.zeros_like(labels), labels + 1)


def _model_device_dtype(model) -> Tuple[torch.device, torch.dtype]:
    try:
        p = next(model.visual.parameters())
        return p.device, p.dtype
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu"), torch.float32


class ZeroShotSegmenter:
    """Zero-shot segmentation of one image at a time under the TCL/MMSeg protocol (module docstring).

    Args:
        model: a SimZSS model (``encode_dense``, ``encode_text``, ``visual.patch_size``).
        tokenizer: the model's OpenCLIP tokenizer.
        class_names: the text classes (background excluded), each a name or a list of synonyms.
        templates: a template set name (``TEMPLATE_SETS``) or a list of "{}" strings; default "openai80".
        short_side, max_long_side: MMSeg ``img_scale=(max_long_side, short_side)``, keep ratio.
        window, stride: slide inference crop and stride.
        background_threshold: None (never predict background) or the threshold on the foreground confidence.
        background_score: "sigmoid" or "softmax" (see "Score semantics"); background_scale: s of the softmax.
        pamr: refine each window's upsampled scores with PAMR (10 iterations, dilations 1..24).
        synonyms: "mean" or "max" (see :func:`build_text_classifier`).
        window_batch_size: windows encoded per forward (bounds the vision tower's memory).
        device: where inference runs (default: the model's device).
        mean, std: image normalisation (default: the tower's own, ``open_clip.get_model_preprocess_cfg``).
        text_batch_size: prompts per text-tower forward when the classifier is built.
        max_chunk_elements: bound on the temporary elements of the full-resolution step of ``predict``.
        precision: "fp32" or "amp_bf16" (bf16 autocast around the vision tower's forward only; ``PRECISIONS``).
    """

    def __init__(
            self,
            model,
            tokenizer,
            class_names: ClassNames,
            templates: Union[str, Sequence[str]] = DEFAULT_TEMPLATES,
            short_side: int = SHORT_SIDE,
            max_long_side: int = MAX_LONG_SIDE,
            window: int = WINDOW,
            stride: int = STRIDE,
            background_threshold: Optional[float] = None,
            background_score: str = DEFAULT_BACKGROUND_SCORE,
            background_scale: float = DEFAULT_BACKGROUND_SCALE,
            pamr: bool = False,
            synonyms: str = "mean",
            window_batch_size: int = 4,
            device=None,
            mean: Optional[Sequence[float]] = None,
            std: Optional[Sequence[float]] = None,
            text_batch_size: int = 256,
            max_chunk_elements: int = 1 << 24,
            precision: str = "fp32",
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if background_score not in BACKGROUND_SCORES:
            raise ValueError(f"background_score must be one of {BACKGROUND_SCORES}, got {background_score!r}")
        if min(short_side, max_long_side, window, stride, window_batch_size) < 1:
            raise ValueError("sizes, stride and window_batch_size must be positive")
        if background_threshold is not None:  # a foreground confidence, in [0, 1] for both scores
            background_threshold = check_fraction("background_threshold", background_threshold)
        background_scale = check_positive("background_scale", background_scale)
        self.model = model
        model_device, self.dtype = _model_device_dtype(model)
        self.device = torch.device(device) if device is not None else model_device
        self.patch_size = int(model.visual.patch_size)
        self.short_side, self.max_long_side = int(short_side), int(max_long_side)
        self.window, self.stride = int(window), int(stride)
        self.background_threshold = background_threshold
        self.background_score = background_score
        self.background_scale = float(background_scale)
        self.window_batch_size = int(window_batch_size)
        self.max_chunk_elements = int(max_chunk_elements)
        self.precision = precision
        self.pamr = PAMR() if pamr else None
        self.class_names = synonym_lists(class_names)
        self.templates = get_templates(templates)
        if mean is None or std is None:
            cfg = open_clip.get_model_preprocess_cfg(model)
            if "mean" not in cfg or "std" not in cfg:
                raise ValueError("the model has no preprocess mean/std: pass mean= and std=")
            mean = cfg["mean"] if mean is None else mean
            std = cfg["std"] if std is None else std
        # Pixels stay in the 0..255 range until normalisation, as in MMSeg (resize on uint8, then Normalize).
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(3, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(3, 1, 1) * 255.0
        was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        self.classifier = build_text_classifier(
            model, tokenizer, self.class_names, self.templates, synonyms, text_batch_size, self.device,
        )
        if was_training:
            model.train()

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    # --- preprocessing -----------------------------------------------------------------------------------
    def resized_size(self, height: int, width: int) -> Tuple[int, int]:
        return rescale_size(height, width, self.short_side, self.max_long_side)

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
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "amp_bf16"):
            tokens = self.model.encode_dense(crops.to(self.dtype), normalize=False)
        return F.normalize(tokens.float(), dim=-1)

    def _patch_scores(self, crops: torch.Tensor) -> torch.Tensor:
        """Windows [N, 3, h, w] -> patch-level cosine scores [N, C, h/p, w/p]."""
        return self.classifier.scores(self.window_tokens(crops)).permute(0, 3, 1, 2)

    def window_layout(self, normalized: torch.Tensor):
        """(boxes, crop size, padded size) of the windows of a normalised resized image."""
        height, width = normalized.shape[-2:]
        boxes = window_grid(height, width, self.window, self.stride)
        crop = (boxes[0][1] - boxes[0][0], boxes[0][3] - boxes[0][2])  # all windows have one size
        # A crop that is not a multiple of the patch size (only when the image is smaller than the window and
        # its side is odd-sized) is padded with the mean colour (0 after normalisation) at the bottom/right;
        # its patch scores are upsampled to the padded size and the padding is cut off again.
        p = self.patch_size
        padded = (crop[0] + -crop[0] % p, crop[1] + -crop[1] % p)
        return boxes, crop, padded

    def _window_scores(self, images: Sequence[torch.Tensor]):
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
            batch_scores = self._patch_scores(crops)
            for k, (i, _) in enumerate(batch):
                scores[i].append(batch_scores[k: k + 1])
                if self.pamr is not None:
                    crops_of[i].append(crops[k: k + 1, :, :crop[0], :crop[1]])
            start = stop
        return [(boxes, crop, padded, torch.cat(scores[i]), torch.cat(crops_of[i]) if crops_of[i] else None)
                for i, (boxes, crop, padded) in enumerate(layouts)]

    @torch.no_grad()
    def stitched_logits(self, normalized: torch.Tensor) -> torch.Tensor:
        """Slide inference on a normalised resized image [3, h, w] -> averaged cosine map [C, h, w]:
        per window, patch scores upsampled bilinearly to the window, summed, divided by the window count."""
        return self.stitched_logits_batch([normalized])[0]

    @torch.no_grad()
    def stitched_logits_batch(self, images: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """``stitched_logits`` of several normalised images, their windows batched together."""
        stitched = []
        for image, (boxes, crop, padded, scores, crops) in zip(images, self._window_scores(images)):
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
        b_y = _placement_matrix(size[0], rows, hp, padded[0], scores.device)
        b_x = _placement_matrix(size[1], cols, wp, padded[1], scores.device)
        return b_y @ (grid @ b_x.t())

    @torch.no_grad()
    def logits(self, image) -> torch.Tensor:
        """Cosine scores [C, H, W] at the original image size (see "Score semantics").

        Memory is C x H x W floats; for labels only, ``predict`` works in bounded row bands instead.
        """
        normalized, size = self.preprocess(image)
        stitched = self.stitched_logits(normalized)
        if tuple(stitched.shape[-2:]) == size:
            return stitched
        return F.interpolate(stitched[None], size=size, mode="bilinear", align_corners=False)[0]

    @torch.no_grad()
    def predict_foreground(self, image, with_confidence: bool = True
                           ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(argmax over the text classes [H, W] int64, foreground confidence [H, W] float32 or None).

        Equivalent to ``logits(image).argmax(0)`` and ``foreground_confidence(logits(image), ...)``, but the
        full-resolution scores are produced band by band (at most ``max_chunk_elements`` floats at a time).
        """
        normalized, size = self.preprocess(image)
        return self.reduce_to_size(self.stitched_logits(normalized), size, with_confidence)

    @torch.no_grad()
    def predict_foreground_batch(self, images: Sequence, with_confidence: bool = True
                                 ) -> List[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """``predict_foreground`` of several images, with their windows batched through the vision tower
        together (the evaluator's path: a VOC image has 2 windows, a batch of 4 images fills a forward of 8)."""
        prepared = [self.preprocess(image) for image in images]
        stitched = self.stitched_logits_batch([normalized for normalized, _ in prepared])
        return [self.reduce_to_size(s, size, with_confidence) for s, (_, size) in zip(stitched, prepared)]

    def reduce_to_size(self, stitched: torch.Tensor, size: Tuple[int, int], with_confidence: bool = True
                       ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The argmax and the confidence of the bilinear resize (align_corners=False) of [C, h, w] to ``size``
        exactly, without materialising the C x H x W scores.

        Bilinear interpolation mixes the same 2x2 source pixels with the same convex weights for every class:

        - where the 4 source pixels share their argmax c, the interpolated argmax is c and the interpolated max
          is the interpolation of the max map (most pixels);
        - elsewhere, a class that is the argmax of none of the 4 is below its second-best score at each of
          them, so below the interpolated second-best map; when the best of the (at most 4) corner labels
          beats that bound, it is the argmax. Only the remaining pixels need all C classes.

        Pixels are processed in chunks (``max_chunk_elements``). The softmax confidence needs every class
        everywhere and is computed in row bands.
        """
        num_classes, h, w = stitched.shape
        out_h, out_w = size
        device = stitched.device
        if (h, w) == (out_h, out_w):  # nothing to resize
            labels = stitched.argmax(dim=0)
            if not with_confidence:
                return labels, None
            return labels, foreground_confidence(stitched, self.background_score, self.background_scale)
        rows0, rows1, row_w = _bilinear_taps(h, out_h, device)
        cols0, cols1, col_w = _bilinear_taps(w, out_w, device)
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
        sigmoid = with_confidence and self.background_score == "sigmoid"
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
        chunk = max(1, self.max_chunk_elements // (4 * max(num_classes, 5)))
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
            confidence = self._softmax_confidence(stitched, size, rows0, rows1, row_w)
        return labels, confidence

    def _softmax_confidence(self, stitched, size, rows0, rows1, row_w) -> torch.Tensor:
        """max_c softmax(s * cos)_c at full resolution, one band of output rows at a time. Bilinear resizing is
        separable: per band, the two source rows of each output row are blended (at the small source width), then
        ``F.interpolate`` widens the band (same height in and out, so rows are unchanged)."""
        num_classes, h, w = stitched.shape
        out_h, out_w = size
        confidence = torch.empty(out_h, out_w, device=stitched.device)
        band = max(1, self.max_chunk_elements // max(1, num_classes * max(out_w, w)))
        for r in range(0, out_h, band):
            sl = slice(r, min(r + band, out_h))
            rows = torch.lerp(stitched[:, rows0[sl]], stitched[:, rows1[sl]], row_w[sl].view(1, -1, 1))
            scores = rows if out_w == w else F.interpolate(
                rows[None], size=(rows.shape[1], out_w), mode="bilinear", align_corners=False)[0]
            best = scores.amax(dim=0)
            confidence[sl] = scores.sub_(best).mul_(self.background_scale).exp_().sum(dim=0).reciprocal_()
        return confidence

    @torch.no_grad()
    def segment(self, image) -> "DensePrediction":
        """Scores, labels and background of one image in one pass (see :class:`DensePrediction`)."""
        normalized, size = self.preprocess(image)
        stitched = self.stitched_logits(normalized)
        with_bg = self.background_threshold is not None
        labels, confidence = self.reduce_to_size(stitched, size, with_confidence=with_bg)
        if with_bg:
            labels = apply_background(labels, confidence, self.background_threshold)
        return DensePrediction(stitched, labels, confidence)

    @torch.no_grad()
    def predict(self, image) -> torch.Tensor:
        """Label map [H, W] int64 at the original size: class indices 0..C-1 without a background threshold;
        with one, 0 = background and c + 1 = class c (MMSeg with-background sets)."""
        return self.segment(image).labels


@dataclass
class DensePrediction:
    """What :meth:`ZeroShotSegmenter.segment` returns.

    Attributes:
        logits: [C, h, w] cosine scores at the processing resolution (short side 448), before the final resize.
        labels: [H, W] int64 at the image size: 0..C-1, or with a background threshold 0 = background and
            c + 1 = class c.
        confidence: [H, W] foreground confidence when there is a threshold, else None.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    confidence: Optional[torch.Tensor]
