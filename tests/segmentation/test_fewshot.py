"""The few-shot classifier (paper Table 8) against a hand computation on tiny images."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from open_clip_simzss.segmentation.classifier import build_text_classifier
from open_clip_simzss.segmentation.engine import SlidingWindowEngine
from open_clip_simzss.segmentation.fewshot import fewshot_classifier
from open_clip_simzss.segmentation.protocol import SegmentationProtocol

PATCH = 2
TEXT_ROWS = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])


class PoolingModel:
    """A stand-in tower whose token of a patch is the mean colour of its 2x2 pixels (d = 3), and a text tower
    that maps class name i to the unit vector e_i."""

    visual = type("Visual", (), {"patch_size": PATCH})()

    def encode_dense(self, images, normalize=False):
        return F.avg_pool2d(images, PATCH).permute(0, 2, 3, 1)

    def encode_text(self, tokens):
        return TEXT_ROWS[tokens[:, 0]]


def tokenizer(prompts):
    return torch.tensor([[["a", "b", "c"].index(p)] for p in prompts])


def make_engine(window, stride):
    # mean 0, std 1/255: the normalised image is the uint8 image itself; short side = the image's (no resize)
    return SlidingWindowEngine(PoolingModel(), SegmentationProtocol(templates="name", short_side=4, window=window,
                                                                    stride=stride),
                               mean=(0, 0, 0), std=(1 / 255,) * 3)


def text_rows():
    """The text classifier of the classes a, b, c: rows e_0, e_1, e_2."""
    return build_text_classifier(PoolingModel(), tokenizer, ["a", "b", "c"], "name", device="cpu")


def token_sums_by_hand(image, label, windows):
    """Per window (y1, x1), per labelled pixel: the normalised mean colour of the 2x2 patch that holds it in
    that window, added to its class's row."""
    sums = np.zeros((3, 3))
    for y1, x1 in windows:
        for y in range(y1, y1 + 4):
            for x in range(x1, x1 + 4):
                if label[y, x] == 255:
                    continue
                py, px = y1 + (y - y1) // PATCH * PATCH, x1 + (x - x1) // PATCH * PATCH
                token = image[py:py + PATCH, px:px + PATCH].reshape(-1, 3).astype(np.float64).mean(0)
                sums[label[y, x]] += token / np.linalg.norm(token)
    return sums


@pytest.mark.parametrize("width, stride, windows", [(4, 4, [(0, 0)]),             # one window
                                                    (6, 2, [(0, 0), (0, 2)])])   # two overlapping windows
def test_rows_are_normalised_means_of_the_pixels_tokens(width, stride, windows):
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(2):
        label = rng.choice(np.array([0, 1, 255], np.uint8), (4, width))  # class 2 has no pixel
        pairs.append((rng.integers(1, 256, (4, width, 3), dtype=np.uint8), label))
    classifier = fewshot_classifier(make_engine(window=4, stride=stride), pairs, 3, fallback=text_rows)
    sums = sum(token_sums_by_hand(image, label, windows) for image, label in pairs)
    expected = sums / np.linalg.norm(sums, axis=1, keepdims=True).clip(1e-12)
    expected[2] = [0, 0, 1]  # no labelled pixel: the class keeps its text row
    assert classifier.num_classes == 3 and classifier.query_class.tolist() == [0, 1, 2]
    assert np.allclose(classifier.weights.numpy(), expected, atol=1e-6)


def test_the_engine_predicts_with_it():
    """Two flat colours labelled 0 and 1: with their mean tokens as rows, the engine labels each pixel with its
    colour's class (with the text rows e_0, e_1, e_2 the blue half would be class 2)."""
    image = np.zeros((4, 4, 3), np.uint8)
    image[:, :2] = (200, 50, 50)
    image[:, 2:] = (60, 60, 210)
    label = np.zeros((4, 4), np.uint8)
    label[:, 2:] = 1
    label[0, 0] = 255
    engine = make_engine(window=4, stride=4)
    classifier = fewshot_classifier(engine, [(image, label)], num_classes=2)
    assert engine.predict(image, classifier).tolist() == np.where(np.arange(4) < 2, 0, 1)[None].repeat(4, 0).tolist()
    assert engine.predict(image, text_rows()).tolist() != engine.predict(image, classifier).tolist()


@pytest.mark.parametrize("label, message", [
    (np.full((4, 4), 3, np.uint8), "class indices 0..2"),
    (np.zeros((4, 2), np.uint8), "label map of shape"),
])
def test_bad_labels_are_refused_in_one_line(label, message):
    image = np.full((4, 4, 3), 100, np.uint8)
    with pytest.raises(ValueError, match=message):
        fewshot_classifier(make_engine(4, 4), [(image, label)], 3)


def test_no_images_is_refused():
    with pytest.raises(ValueError, match="no labelled images"):
        fewshot_classifier(make_engine(4, 4), [], 3)


def test_a_class_without_pixels_needs_a_fallback_and_it_is_built_only_then():
    image = np.full((4, 4, 3), 100, np.uint8)
    label = np.zeros((4, 4), np.uint8)
    built = []
    with pytest.raises(ValueError, match=r"classes \[1, 2\] have no labelled pixel"):
        fewshot_classifier(make_engine(4, 4), [(image, label)], 3)
    fewshot_classifier(make_engine(4, 4), [(image, label)], 1, fallback=lambda: built.append(1) or text_rows())
    assert built == []  # every class has pixels: the text rows are never encoded
