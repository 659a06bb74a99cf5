"""Pictures: label-map PNGs and overlays, PCA-to-RGB of dense features at several scales with one basis
(paper Fig. 1), similarity heat maps (paper Fig. 3), and the ``simzss-visualize`` command on a real photo."""
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import open_clip_simzss
from open_clip_simzss.weights.save import save_pretrained
from open_clip_simzss.cli.visualize import main
from open_clip_simzss.segmentation.pictures import (
    feature_pyramid, label_colors, label_map_image, overlay_with_legend, pca_panels, scaled_size,
)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return open_clip_simzss.create_model("simzss-tiny").eval()


@pytest.fixture(scope="module")
def model_dir(tiny, tmp_path_factory):
    return save_pretrained(tiny, tmp_path_factory.mktemp("model") / "tiny", model_name="simzss-tiny")


def test_label_map_png_round_trip(tmp_path):
    labels = np.random.default_rng(0).integers(0, 4, (30, 40)).astype(np.uint8)
    colors = label_colors(4, background=True)
    assert (colors[0] == 0).all() and len({tuple(c) for c in colors}) == 4
    label_map_image(labels, colors).save(tmp_path / "l.png")
    saved = Image.open(tmp_path / "l.png")
    assert saved.mode == "P" and (np.asarray(saved) == labels).all()
    assert (np.asarray(saved.convert("RGB")) == colors[labels]).all()
    many = np.arange(300, dtype=np.int32).reshape(15, 20)  # more labels than a palette holds: 16-bit values
    label_map_image(many, label_colors(300)).save(tmp_path / "m.png")
    assert (np.asarray(Image.open(tmp_path / "m.png")) == many).all()


def test_overlay_keeps_background_and_adds_legend():
    image = data.chelsea()
    labels = np.zeros(image.shape[:2], np.uint8)
    labels[:, 200:] = 1
    colors = label_colors(2, background=True)
    out = overlay_with_legend(image, labels, ["background", "cat"], colors, shares=[0.5, 0.5], alpha=0.5,
                              background_index=0)
    pixels = np.asarray(out)
    assert out.width > image.shape[1] and out.height >= image.shape[0]
    assert (pixels[:, :200] == image[:, :200]).all()  # background untouched
    assert not (pixels[:, 200:451] == image[:, 200:]).all()


def test_pca_uses_one_basis_for_all_scales():
    coarse = torch.randn(6, 9, 16, generator=torch.Generator().manual_seed(0))
    fine = coarse.repeat_interleave(2, dim=0).repeat_interleave(2, dim=1)  # the same features, 4x the patches
    a, b = pca_panels([coarse, fine])
    assert a.shape == (6, 9, 3) and b.shape == (12, 18, 3) and a.dtype == np.uint8
    assert (np.repeat(np.repeat(a, 2, axis=0), 2, axis=1) == b).all()  # equal features, equal colours
    assert a.std() > 20  # the colours spread over the range


def test_feature_pyramid_scales_and_budget(tiny):
    image = data.chelsea()  # 300 x 451
    assert scaled_size(300, 451, 64, 8) == (64, 96)
    pyramid = feature_pyramid(tiny, image, [1, 2], base_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    (s1, f1, c1), (s2, f2, c2) = pyramid
    assert f1.shape[:2] == (4, 6) and f2.shape[:2] == (8, 12) and not (c1 or c2)
    torch.testing.assert_close(f2.norm(dim=-1), torch.ones(8, 12))
    (_, capped, was_capped), = feature_pyramid(tiny, image, [8], 32, (0.5,) * 3, (0.5,) * 3, max_tokens=100)
    assert was_capped and capped.shape[0] * capped.shape[1] <= 100


def test_visualize_command(model_dir, tmp_path, capsys):
    Image.fromarray(data.chelsea()).save(tmp_path / "cat.jpg")
    code = main(["--image", str(tmp_path / "cat.jpg"), "--checkpoint", str(model_dir), "--scales", "1", "2",
                 "--base-size", "32", "--labels", "cat, grass", "--templates", "photo1", "--short-side", "64",
                 "--window", "64", "--stride", "32", "--output", str(tmp_path / "pics"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    for name in ("cat_pca.png", "cat_similarity.png"):
        picture = Image.open(tmp_path / "pics" / name)
        assert picture.width > 600 and np.asarray(picture.convert("RGB")).std() > 10


@pytest.mark.parametrize("args,message", [
    (["--scales", "0"], "--scales must be a finite number > 0, got 0.0"),
    (["--scales", "1", "nan"], "--scales must be a finite number > 0, got nan"),
    (["--labels", ""], "no labels given"),
    (["--image", "{tmp}/missing.jpg"], "image not found"),
    (["--labels", "cat", "--labels-file", "x.txt"], "not allowed with"),
    (["--labels", " , "], "no labels"),
    (["--model", "simzss-giant"], "unknown SimZSS model"),
])
def test_visualize_errors_are_one_line(model_dir, tmp_path, capsys, args, message):
    Image.fromarray(data.coffee()).save(tmp_path / "coffee.png")
    argv = ["--image", str(tmp_path / "coffee.png"), "--output", str(tmp_path / "out")]
    argv += [a.format(tmp=tmp_path) for a in args]
    if "--model" not in args:
        argv += ["--checkpoint", str(model_dir)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
