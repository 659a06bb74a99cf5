"""``simzss-segment`` and ``Segmenter`` on real photos (scikit-image's astronaut, chelsea, coffee) in the file
formats and pixel layouts users have, end to end through a saved simzss-tiny model folder; every bad input is
one line on stderr and a non-zero exit."""
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import open_clip_simzss
from open_clip_simzss.weights.save import save_pretrained
from open_clip_simzss.cli.segment import main
from open_clip_simzss.images import collect_images, load_image, output_stems
from open_clip_simzss.segmentation.segmenter import Segmenter
from open_clip_simzss.segmentation.labels import parse_labels

FAST = ["--short-side", "64", "--window", "64", "--stride", "32", "--templates", "simple7", "--quiet"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = open_clip_simzss.create_model("simzss-tiny")
    return save_pretrained(model, tmp_path_factory.mktemp("model") / "tiny", model_name="simzss-tiny")


@pytest.fixture(scope="module")
def segmenter(model_dir):
    return Segmenter.from_pretrained(checkpoint=str(model_dir), device="cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The photos as files: EXIF-rotated JPEG, WebP, RGBA PNG, 16-bit grey PNG, grey PNG, palette GIF, tiny PNG,
    a broken file."""
    d = tmp_path_factory.mktemp("photos")
    chelsea, coffee, astronaut = data.chelsea(), data.coffee(), data.astronaut()
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.fromarray(chelsea).save(d / "chelsea_rotated.jpg", exif=exif.tobytes(), quality=90)
    Image.fromarray(coffee).save(d / "coffee.webp", quality=80)
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    rgba[:, :100, 3] = 0  # a transparent band
    Image.fromarray(rgba).save(d / "astronaut_rgba.png")
    grey16 = (np.asarray(Image.fromarray(coffee).convert("L")).astype(np.uint16) * 257)
    Image.fromarray(grey16).save(d / "coffee_16bit.png")
    Image.fromarray(chelsea).convert("L").save(d / "chelsea_grey.png")
    Image.fromarray(astronaut).convert("P", palette=Image.Palette.ADAPTIVE).save(d / "astronaut.gif")
    Image.fromarray(chelsea[100:103, 200:205]).save(d / "tiny.png")  # 3 x 5 pixels
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    return d


# --- images ----------------------------------------------------------------------------------------------------
def test_load_image_formats(photos):
    chelsea, coffee, astronaut = data.chelsea(), data.coffee(), data.astronaut()
    upright = load_image(photos / "chelsea_rotated.jpg")
    assert Image.open(photos / "chelsea_rotated.jpg").size == (451, 300)
    assert upright.shape == (451, 300, 3)  # EXIF orientation applied
    assert np.abs(upright.astype(int) - np.rot90(chelsea, k=-1)).mean() < 6  # JPEG loss only
    assert load_image(photos / "coffee.webp").shape == coffee.shape
    rgba = load_image(photos / "astronaut_rgba.png")
    assert (rgba[:, :100] == 255).all() and (rgba[:, 100:] == astronaut[:, 100:]).all()  # transparent -> white
    grey16 = load_image(photos / "coffee_16bit.png")
    assert Image.open(photos / "coffee_16bit.png").mode.startswith("I")
    expected = np.asarray(Image.fromarray(coffee).convert("L"))
    assert grey16.dtype == np.uint8 and (grey16[..., 0] == expected).all() and (grey16[..., 2] == expected).all()
    assert load_image(photos / "chelsea_grey.png").shape == chelsea.shape
    assert load_image(photos / "astronaut.gif").shape == astronaut.shape
    assert load_image(photos / "tiny.png").shape == (3, 5, 3)


def test_load_image_in_memory_layouts():
    coffee = data.coffee()
    assert (load_image(Image.fromarray(coffee)) == coffee).all()
    assert (load_image(torch.from_numpy(coffee).permute(2, 0, 1)) == coffee).all()  # CHW tensor
    assert (load_image(coffee.astype(np.float32) / 255) == coffee).all()  # floats in 0..1
    assert (load_image(coffee.astype(np.uint16) * 257) == coffee).all()  # 16-bit
    assert load_image(coffee[..., 0]).shape == coffee.shape  # grey
    assert (load_image(np.zeros((4, 4), bool)) == 0).all()


def test_inputs_labels_and_names(photos, tmp_path):
    assert parse_labels(" cat,grass ,, sky  blue ") == ["cat", "grass", "sky blue"]
    for bad in ("", " , ", "cat, Cat"):
        with pytest.raises(ValueError):
            parse_labels(bad)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    found = collect_images([tmp_path / "a", photos / "tiny.png"])
    assert [p.name for p in found] == ["x.png", "tiny.png"]
    assert output_stems([Path("a/x.jpg"), Path("b/x.jpg"), Path("x.png")]) == ["x", "x-2", "x-3"]


# --- the Python API ----------------------------------------------------------------------------------------------
def test_segmenter_three_lines(segmenter):
    """The notebook use, at the protocol's default settings (short side 448, 448 windows, 80 prompts)."""
    result = segmenter.segment(data.astronaut(), "person, sky, rocket")
    assert result.labels == result.text_labels == ["person", "sky", "rocket"]
    assert result.label_map.shape == (512, 512) and result.label_map.max() < 3
    assert result.logits.shape == (3, 448, 448)
    scores = result.scores
    assert scores.shape == (3, 512, 512) and np.abs(scores).max() <= 1 + 1e-5  # cosines at the image size
    assert (scores.argmax(0) == result.label_map).mean() > 0.999  # the label map is the argmax (ties aside)
    assert abs(sum(result.shares.values()) - 1) < 1e-9
    assert sum(result.pixel_counts.values()) == 512 * 512
    assert result.confidence is None


def test_background_threshold_and_bounded_windows(segmenter):
    """A background threshold adds label 0; a big image only ever reaches the tower in window-sized crops."""
    image = np.tile(data.coffee(), (3, 3, 1))  # 1200 x 1800
    seg = Segmenter(segmenter.model, segmenter.tokenizer, templates="photo1", short_side=112, window=112, stride=56,
                    window_batch_size=2)
    seen, encode = [], seg.model.encode_dense

    def spy(images, normalize=False):
        seen.append(tuple(images.shape))
        return encode(images, normalize=normalize)

    seg.model.encode_dense = spy
    try:
        plain = seg.segment(image, ["cup", "table"])
    finally:
        del seg.model.encode_dense
    assert plain.label_map.shape == image.shape[:2]
    assert seen and all(b <= 2 and h <= 112 and w <= 112 for b, _, h, w in seen)
    confidence = 1 / (1 + np.exp(-plain.logits.numpy().max(0)))
    threshold = float(np.median(confidence))
    seg.background_threshold = threshold
    with_bg = seg.segment(image, ["cup", "table"])
    assert with_bg.labels == ["background", "cup", "table"] and with_bg.has_background
    background = with_bg.label_map == 0
    assert 0.2 < background.mean() < 0.8
    assert (with_bg.label_map[~background] == plain.label_map[~background] + 1).all()
    assert (with_bg.confidence[background] < threshold).all()
    with pytest.raises(ValueError, match="background"):
        seg.segment(image[:8, :8], "background, cup")


# --- the command ---------------------------------------------------------------------------------------------------
def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, err


def test_cli_end_to_end(photos, model_dir, tmp_path, capsys):
    folder = tmp_path / "more"
    folder.mkdir()
    for name in ("astronaut.gif",):
        (folder / name).write_bytes((photos / name).read_bytes())
    out = tmp_path / "out"
    images = ["chelsea_rotated.jpg", "astronaut_rgba.png", "coffee_16bit.png", "tiny.png"]
    code, err = run_cli(capsys, "--checkpoint", model_dir, "--image", *[photos / i for i in images], folder,
                        "--labels", "cat, grass, sky", "--output", out, *FAST)
    assert code == 0, err
    expected_sizes = {"chelsea_rotated": (451, 300), "astronaut_rgba": (512, 512), "coffee_16bit": (400, 600),
                      "tiny": (3, 5), "astronaut": (512, 512)}
    for stem, (h, w) in expected_sizes.items():
        labels = Image.open(out / f"{stem}_labels.png")
        assert labels.mode == "P" and labels.size == (w, h)
        values = np.asarray(labels)
        assert values.max() < 3
        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.width > w and overlay.height >= h  # the legend on the right
        report = json.loads((out / f"{stem}.json").read_text())
        assert report["labels"] == ["cat", "grass", "sky"] and (report["height"], report["width"]) == (h, w)
        assert abs(sum(report["shares"].values()) - 1) < 1e-4
        assert report["pixels"] == {n: int((values == i).sum()) for i, n in enumerate(report["labels"])}
        assert report["model"] == f"local-dir:{model_dir}"


def test_cli_background_and_labels_file(photos, model_dir, tmp_path, capsys):
    (tmp_path / "labels.txt").write_text("# what to look for\ncat\ngrass  # lawn\n\nsky\n")
    code, err = run_cli(capsys, "--checkpoint", model_dir, "--image", photos / "chelsea_grey.png",
                        "--labels-file", tmp_path / "labels.txt", "--background-threshold", "0.5",
                        "--output", tmp_path / "out", *FAST)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "chelsea_grey.json").read_text())
    assert report["labels"] == ["background", "cat", "grass", "sky"] and report["background_threshold"] == 0.5
    assert report["colors"]["background"] == [0, 0, 0]
    assert np.asarray(Image.open(tmp_path / "out" / "chelsea_grey_labels.png")).max() <= 3


@pytest.fixture(scope="module")
def tiny_checkpoint_file(model_dir, tmp_path_factory):
    from open_clip_simzss.weights.read import read_state_dict
    path = tmp_path_factory.mktemp("ckpt") / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": read_state_dict(model_dir / "open_clip_model.safetensors")}, path)
    return path


@pytest.mark.parametrize("case,args,code,message", [
    ("missing image", ["--image", "{photos}/nope.jpg", "--labels", "cat"], 2, "image not found"),
    ("unreadable image", ["--image", "{photos}/broken.jpg", "--labels", "cat"], 1, "cannot read image"),
    ("empty labels", ["--image", "{photos}/tiny.png", "--labels", " , "], 2, "no labels"),
    ("repeated label", ["--image", "{photos}/tiny.png", "--labels", "cat, cat"], 2, "twice"),
    ("missing labels file", ["--image", "{photos}/tiny.png", "--labels-file", "{photos}/l.txt"], 2, "not found"),
    ("no labels option", ["--image", "{photos}/tiny.png"], 2, "--labels"),
    ("unknown model", ["--image", "{photos}/tiny.png", "--labels", "cat", "--model", "simzss-giant"], 2,
     "unknown SimZSS model"),
    ("folder of another model", ["--image", "{photos}/tiny.png", "--labels", "cat", "--model", "simzss-vitb14"], 2,
     "another model"),
    ("file of another model", ["--image", "{photos}/tiny.png", "--labels", "cat", "--model", "simzss-vits14",
                               "--checkpoint", "{ckpt}"], 2, "does not fit simzss-vits14"),
    ("missing checkpoint", ["--image", "{photos}/tiny.png", "--labels", "cat", "--checkpoint", "{photos}/x.pt"], 2,
     "checkpoint not found"),
    ("bad template set", ["--image", "{photos}/tiny.png", "--labels", "cat", "--templates", "nope"], 2, "template"),
])
def test_cli_errors_are_one_line(photos, model_dir, tiny_checkpoint_file, tmp_path, capsys, case, args, code,
                                 message):
    argv = [a.format(photos=photos, ckpt=tiny_checkpoint_file) for a in args]
    if "--checkpoint" not in argv:
        argv += ["--checkpoint", str(model_dir)]
    got, err = run_cli(capsys, *FAST, *argv, "--output", tmp_path / "out")  # the case's options win
    assert got == code, err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is absent")
def test_cli_cuda_unavailable(photos, model_dir, tmp_path, capsys):
    code, err = run_cli(capsys, "--image", photos / "tiny.png", "--labels", "cat", "--device", "cuda",
                        "--checkpoint", model_dir, "--output", tmp_path)
    assert code == 2 and "CUDA is not available" in err and err.count("\n") == 1


@pytest.mark.filterwarnings("ignore:.*found in sys.modules")
def test_python_m_entry_point(photos, model_dir, tmp_path, monkeypatch, capsys):
    """``python -m open_clip_simzss segment`` (run in-process: a subprocess would add seconds of imports)."""
    monkeypatch.setattr(sys, "argv", ["open_clip_simzss", "segment", "--image", str(photos / "tiny.png"), "--labels",
                                      "cat, dog", "--checkpoint", str(model_dir), "--output", str(tmp_path), *FAST])
    with pytest.raises(SystemExit) as status:
        runpy.run_module("open_clip_simzss", run_name="__main__")
    assert status.value.code == 0 and (tmp_path / "tiny.json").is_file()
    assert capsys.readouterr().err == ""
