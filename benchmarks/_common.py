"""Helpers shared by the benchmark scripts (imported as ``from _common import ...``; the scripts' folder is on
``sys.path`` when one of them runs)."""
import time

import numpy as np
import torch

from open_clip_simzss.evaluation.datasets import load_class_names
from open_clip_simzss.segmentation.classifier import build_text_classifier
from open_clip_simzss.segmentation.engine import SlidingWindowEngine
from open_clip_simzss.segmentation.protocol import SegmentationProtocol
from open_clip_simzss.segmentation.windows import window_grid


class Clock:
    def __init__(self, device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def __call__(self):
        self.sync()
        return time.perf_counter()


def time_tower(model, clock):
    """Wrap ``model.encode_dense`` so that every call adds its wall time to ``box[0]``."""
    box = [0.0]
    inner = model.encode_dense

    def encode_dense(*args, **kwargs):
        t0 = clock()
        out = inner(*args, **kwargs)
        box[0] += clock() - t0
        return out

    model.encode_dense = encode_dense
    return box


def run_case(model, tokenizer, clock, tower, name, size, classes, split, with_background, images, templates,
             window_batch_size, images_per_batch=2, **segmenter_options):
    """One image shape through the engine's evaluation path, step by step (``segment_throughput.py``).
    ``segmenter_options`` are ``SegmentationProtocol`` fields (e.g. a smaller ``short_side``/``window``/``stride``)."""
    protocol = SegmentationProtocol.of(templates=templates, background_threshold=0.5 if with_background else None,
                                       **segmenter_options)
    seg = SlidingWindowEngine(model, protocol, window_batch_size=window_batch_size)
    t0 = clock()
    clf = build_text_classifier(model, tokenizer, load_class_names(classes), templates, device=seg.device)
    classifier_s = clock() - t0
    rng = np.random.default_rng(0)
    pics = [rng.integers(0, 256, size + (3,), dtype=np.uint8) for _ in range(images + 1)]
    seg.classes_and_confidence(pics[0], clf, with_confidence=with_background)  # warm-up (allocator, kernels)
    per_image = []
    for pic in pics[1:]:
        # The steps of classes_and_confidence, timed one by one.
        tower[0] = 0.0
        t0 = clock()
        normalized, orig = seg.preprocess(pic)
        t1 = clock()
        stitched = seg.stitched_logits(normalized, clf)
        t2 = clock()
        seg.reduce_to_size(stitched, orig, with_confidence=with_background)  # as the evaluation does
        t3 = clock()
        per_image.append({"total": t3 - t0, "tower": tower[0], "preprocess": t1 - t0,
                          "windows_minus_tower": t2 - t1 - tower[0], "to_original": t3 - t2})
    # Medians over the images: this machine is shared, and one slow image should not decide.
    med = {k: float(np.median([r[k] for r in per_image])) for k in per_image[0]}
    # The evaluator's path: images_per_batch consecutive images share the tower's forwards
    # (classes_and_confidence_batch), against the same images one at a time, interleaved to share the machine's
    # state.
    batched, single = [], []
    groups = [pics[1:][k: k + images_per_batch] for k in range(0, images, images_per_batch)]
    for group in groups:
        t0 = clock()
        seg.classes_and_confidence_batch(group, clf, with_confidence=with_background)
        t1 = clock()
        for pic in group:
            seg.classes_and_confidence(pic, clf, with_confidence=with_background)
        t2 = clock()
        batched.append(t1 - t0)
        single.append(t2 - t1)
    return {
        "case": name, "classes": clf.num_classes, "images": images,
        "windows_per_image": len(window_grid(*seg.resized_size(*size), protocol.window, protocol.stride)),
        "images_per_s": len(per_image) / sum(r["total"] for r in per_image),
        "median_s_per_image": med["total"], "median_tower_s_per_image": med["tower"],
        "overhead_share": 1 - med["tower"] / med["total"],
        "overhead_ms_per_image": {k: 1000 * med[k] for k in ("preprocess", "windows_minus_tower", "to_original")},
        "classifier_build_s": classifier_s,
        "classifier_amortised_share": (classifier_s / split) / (med["total"] + classifier_s / split),
        "split_size": split,
        "images_per_batch": images_per_batch,
        "batched_images_per_s": images / sum(batched),
        "batched_speedup": sum(single) / sum(batched),
    }
