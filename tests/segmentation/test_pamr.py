"""PAMR against the reference definition (docs/evaluation.md; Araslanov & Roth's released module), computed by
hand with plain loops: sigma over the 54 taps (centre once per dilation), kappa averaged over the colour
channels, softmax over the 48 neighbours, replicate borders, masks resized to the image with align_corners=True."""
import numpy as np
import pytest
import torch

from open_clip_simzss.segmentation.pamr import PAMR


def clamp(v, n):
    return min(max(v, 0), n - 1)


def hand_affinity(image, dilations, centre_once_per_dilation=True):
    """image [3, H, W] -> {(y, x): [(ny, nx, alpha), ...]} over the 8 non-centre taps of every dilation.
    ``centre_once_per_dilation=False`` counts the centre once in sigma (49 values; this project's old rule)."""
    channels, height, width = image.shape
    out = {}
    for y in range(height):
        for x in range(width):
            taps, neighbours = [], []
            for d in dilations:
                for dy in (-d, 0, d):
                    for dx in (-d, 0, d):
                        ny, nx = clamp(y + dy, height), clamp(x + dx, width)
                        if dy or dx or centre_once_per_dilation or d == dilations[0]:
                            taps.append((ny, nx))  # the centre too, once per dilation
                        if dy or dx:
                            neighbours.append((ny, nx))
            assert len(neighbours) == 8 * len(dilations)
            assert len(taps) == (9 * len(dilations) if centre_once_per_dilation else 8 * len(dilations) + 1)
            kappa = [0.0] * len(neighbours)
            for c in range(channels):
                values = [image[c, ty, tx] for ty, tx in taps]
                mean = sum(values) / len(values)
                sigma = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5  # unbiased
                for k, (ny, nx) in enumerate(neighbours):
                    kappa[k] += -abs(image[c, y, x] - image[c, ny, nx]) / (1e-8 + 0.1 * sigma) / channels
            top = max(kappa)
            e = [np.exp(v - top) for v in kappa]
            out[y, x] = [(ny, nx, w / sum(e)) for (ny, nx), w in zip(neighbours, e)]
    return out


def hand_refine(image, masks, dilations, iterations):
    alpha = hand_affinity(image, dilations)
    for _ in range(iterations):
        refined = np.zeros_like(masks)
        for (y, x), weights in alpha.items():
            for ny, nx, w in weights:
                refined[:, y, x] += w * masks[:, ny, nx]
        masks = refined
    return masks


def hand_resize_align_corners(masks, height, width):
    """Bilinear resize with align_corners=True: output pixel i samples input coordinate i * (n_in - 1) / (n_out - 1)."""
    channels, h, w = masks.shape
    out = np.zeros((channels, height, width))
    for i in range(height):
        sy = i * (h - 1) / (height - 1)
        y0, fy = int(np.floor(sy)), sy - np.floor(sy)
        y1 = min(y0 + 1, h - 1)
        for j in range(width):
            sx = j * (w - 1) / (width - 1)
            x0, fx = int(np.floor(sx)), sx - np.floor(sx)
            x1 = min(x0 + 1, w - 1)
            out[:, i, j] = ((1 - fy) * (1 - fx) * masks[:, y0, x0] + (1 - fy) * fx * masks[:, y0, x1]
                            + fy * (1 - fx) * masks[:, y1, x0] + fy * fx * masks[:, y1, x1])
    return out


@pytest.fixture
def case():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 6, 7))
    image[:, :, 4:] += 2.0  # an edge, so that the affinities are far from uniform
    return image, rng.random(size=(2, 6, 7))


@pytest.mark.parametrize("dilations, iterations", [((1, 2), 2), ((1, 2, 4, 8, 12, 24), 1)])
def test_pamr_equals_the_hand_computation(case, dilations, iterations):
    image, masks = case
    expected = hand_refine(image, masks, dilations, iterations)
    got = PAMR(num_iter=iterations, dilations=dilations)(torch.tensor(image[None], dtype=torch.float32),
                                                          torch.tensor(masks[None], dtype=torch.float32))
    np.testing.assert_allclose(got[0].numpy(), expected, rtol=1e-4, atol=1e-5)


def test_sigma_counts_the_centre_once_per_dilation(case):
    """The 54-value sigma of the reference, not 49 values: the two give measurably different affinities."""
    image, _ = case
    alpha = PAMR(dilations=(1, 2, 4)).affinity(torch.tensor(image[None], dtype=torch.float32))[0]
    reference = hand_affinity(image, (1, 2, 4))
    centre_once = hand_affinity(image, (1, 2, 4), centre_once_per_dilation=False)
    ours = alpha.permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, [[[w for _, _, w in reference[y, x]] for x in range(7)] for y in range(6)],
                               rtol=1e-4, atol=1e-6)
    other = np.array([[[w for _, _, w in centre_once[y, x]] for x in range(7)] for y in range(6)])
    assert np.abs(ours - other).max() > 1e-2


def test_masks_of_another_size_are_resized_to_the_image_with_align_corners(case):
    image, _ = case
    small = np.random.default_rng(1).random(size=(2, 3, 4))
    expected = hand_refine(image, hand_resize_align_corners(small, 6, 7), (1, 2), 2)
    got = PAMR(num_iter=2, dilations=(1, 2))(torch.tensor(image[None], dtype=torch.float32),
                                              torch.tensor(small[None], dtype=torch.float32))
    assert got.shape == (1, 2, 6, 7)  # the image's resolution
    np.testing.assert_allclose(got[0].numpy(), expected, rtol=1e-4, atol=1e-5)
