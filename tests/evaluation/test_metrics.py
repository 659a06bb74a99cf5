"""mIoU as MMSeg computes it (docs/evaluation.md, "mIoU") and the background-threshold sweep."""
import math

import numpy as np
import pytest
import torch

from open_clip_simzss.evaluation.metrics import IoUAccumulator, ThresholdSweep, parse_sweep
from open_clip_simzss.segmentation.background import apply_background

# 5 classes. Valid pixels (gt != 255): the first five.
GT = np.array([0, 0, 1, 1, 2, 255, 255])
PRED = np.array([0, 1, 1, 1, 3, 2, 4])
# By hand: class 0: I=1, U=2 -> 0.5; class 1: I=2, U=3 -> 2/3; class 2: I=0, U=1 (in GT only; its prediction at
# pixel 5 is ignored) -> 0; class 3: predicted only -> 0; class 4: predicted only on an ignored pixel -> U=0 -> NaN.
HAND_IOU = [0.5, 2 / 3, 0.0, 0.0, math.nan]
HAND_MIOU = (0.5 + 2 / 3 + 0 + 0) / 4 * 100


def test_iou_matches_hand_computation():
    acc = IoUAccumulator(5)
    acc.update(PRED, GT)
    np.testing.assert_allclose(acc.iou(), HAND_IOU)
    assert acc.miou() == pytest.approx(HAND_MIOU)
    summary = acc.summary(["a", "b", "c", "d", "e"])
    assert summary["miou"] == round(HAND_MIOU, 2) == 29.17
    assert summary["per_class"] == {"a": 50.0, "b": 66.67, "c": 0.0, "d": 0.0, "e": None}
    assert summary["aacc"] == pytest.approx(3 / 5 * 100)


def test_accumulates_over_the_dataset_not_per_image():
    acc = IoUAccumulator(5)
    for sl in (slice(0, 3), slice(3, 7)):  # same pixels in two images, as 2-D arrays and as tensors
        acc.update(torch.as_tensor(PRED[sl]).view(1, -1), GT[sl].reshape(1, -1))
    np.testing.assert_allclose(acc.iou(), HAND_IOU)
    # The mean of per-image mIoUs would differ: image 1 alone has class 0 at 0.5 and class 1 at 0.5.
    first = IoUAccumulator(5)
    first.update(PRED[:3], GT[:3])
    np.testing.assert_allclose(first.iou(), [0.5, 0.5, math.nan, math.nan, math.nan])


def test_rejects_bad_input():
    acc = IoUAccumulator(3)
    with pytest.raises(ValueError):
        acc.update(np.zeros(4), np.zeros(5))
    with pytest.raises(ValueError):
        acc.update(np.array([0, 3]), np.array([0, 1]))  # prediction out of range
    with pytest.raises(ValueError):
        acc.update(np.array([0, 1]), np.array([0, 7]))  # label out of range and not 255


def test_empty_accumulator_is_nan():
    assert math.isnan(IoUAccumulator(3).miou())


def test_threshold_sweep_equals_one_accumulator_per_threshold():
    gen = torch.Generator().manual_seed(0)
    thresholds = [0.2, 0.5, 0.8]
    sweep = ThresholdSweep(4, thresholds)
    direct = [IoUAccumulator(4) for _ in thresholds]
    for _ in range(3):
        fg = torch.randint(0, 3, (6, 7), generator=gen)
        conf = torch.rand(6, 7, generator=gen)
        label = torch.randint(0, 4, (6, 7), generator=gen)
        label[0] = 255
        sweep.update(fg, conf, label)
        for t, acc in zip(thresholds, direct):
            acc.update(apply_background(fg, conf, t), label)
    for acc_sweep, acc in zip(sweep.accumulators, direct):
        assert torch.equal(acc_sweep.confusion, acc.confusion)
    assert sweep.mious() == [acc.miou() for acc in direct]
    assert len(set(sweep.mious())) > 1  # the thresholds do change the result
    assert sweep.mious()[sweep.best()] == max(sweep.mious())


def test_parse_sweep():
    values = parse_sweep("0.1:0.9:0.05")
    assert len(values) == 17 and values[0] == 0.1 and values[-1] == 0.9
    assert values[1] == 0.15
    assert parse_sweep("0.4,0.55") == [0.4, 0.55]
    assert parse_sweep("0.5:0.5:0.1") == [0.5]
    for bad in ("0.1:0.9", "0.9:0.1:0.05", "0.1:0.9:0", "a:b:c", "", "0.1:0.9:-0.1"):
        with pytest.raises(ValueError):
            parse_sweep(bad)
