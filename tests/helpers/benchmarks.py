"""The eight benchmarks as tiny fixtures in their real MMSeg layouts (docs/evaluation.md, "Datasets"): a few 12x16
images per split, labels that exercise each dataset's conventions. ``write_benchmarks(root)`` writes all of them
under one data root (the ``benchmark_root`` fixture of tests/conftest.py)."""
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
H, W = 12, 16
# A label row that exercises the conventions: 0, small values, the largest class, 255.
RAW_VALUES = {"voc": [0, 1, 20, 255], "context": [0, 1, 59, 255], "coco_stuff": [0, 5, 170, 255],
              "cityscapes": [0, 3, 18, 255], "ade": [0, 1, 150, 255]}


def _image(path: Path, seed: int, size=(H, W)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size + (3,), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _label(path: Path, values, palette=False, size=(H, W)):
    path.parent.mkdir(parents=True, exist_ok=True)
    label = np.full(size, values[0], dtype=np.uint8)
    for i, v in enumerate(values):
        label[i, :] = v
    im = Image.fromarray(label, mode="L")
    if palette:  # VOC's colour-palette PNGs: Pillow must return the indices, not the colours
        im = im.convert("P")
        im.putpalette([c for i in range(256) for c in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    im.save(path)


def write_voc(root: Path, ids=("2007_000033", "2007_000032"), train=("2007_000039", "2007_000063", "2007_000042")):
    base = root / "VOCdevkit" / "VOC2012"
    for k, i in enumerate(ids + train):
        _image(base / "JPEGImages" / f"{i}.jpg", k)
        _label(base / "SegmentationClass" / f"{i}.png", RAW_VALUES["voc"], palette=True)
    (base / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    (base / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(train) + "\n")
    _image(base / "JPEGImages" / "2007_999999.jpg", 9)  # not in the split: must not be read


def write_context(root: Path, ids=("2008_000002", "2008_000001"), train=("2008_000008",)):
    base = root / "VOCdevkit" / "VOC2010"
    for k, i in enumerate(ids + train):
        _image(base / "JPEGImages" / f"{i}.jpg", k)
        _label(base / "SegmentationClassContext" / f"{i}.png", RAW_VALUES["context"])
    (base / "ImageSets" / "SegmentationContext").mkdir(parents=True, exist_ok=True)
    (base / "ImageSets" / "SegmentationContext" / "val.txt").write_text("\n".join(ids) + "\n")
    (base / "ImageSets" / "SegmentationContext" / "train.txt").write_text("\n".join(train) + "\n")


def write_coco(root: Path, ids=("000000000285", "000000000139"), train=("000000000009",)):
    base = root / "coco_stuff164k"
    for split, names in (("val2017", ids), ("train2017", train)):
        for k, i in enumerate(names):
            _image(base / "images" / split / f"{i}.jpg", k)
            _label(base / "annotations" / split / f"{i}_labelTrainIds.png", RAW_VALUES["coco_stuff"])
            # raw 0-indexed COCO-Stuff map: person (0), bicycle (1), toothbrush (89), unused thing 11, stuff 91,
            # unlabelled 255
            _label(base / "annotations" / split / f"{i}.png", [0, 1, 89, 11, 91, 255])


def write_cityscapes(root: Path):
    base = root / "cityscapes"
    for k, (city, frame) in enumerate([("lindau", "lindau_000000_000019"), ("frankfurt", "frankfurt_000001_000001"),
                                       ("frankfurt", "frankfurt_000000_000294")]):
        _image(base / "leftImg8bit" / "val" / city / f"{frame}_leftImg8bit.png", k)
        _label(base / "gtFine" / "val" / city / f"{frame}_gtFine_labelTrainIds.png", RAW_VALUES["cityscapes"])
        _label(base / "gtFine" / "val" / city / f"{frame}_gtFine_labelIds.png", [7, 8, 26, 0])  # decoy
    _image(base / "leftImg8bit" / "train" / "aachen" / "aachen_000000_000019_leftImg8bit.png", 5)
    _label(base / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelTrainIds.png",
           RAW_VALUES["cityscapes"])


def write_ade(root: Path):
    base = root / "ade" / "ADEChallengeData2016"
    for k, i in enumerate(["ADE_val_00000002", "ADE_val_00000001"]):
        _image(base / "images" / "validation" / f"{i}.jpg", k)
        _label(base / "annotations" / "validation" / f"{i}.png", RAW_VALUES["ade"])
    _image(base / "images" / "training" / "ADE_train_00000001.jpg", 5)
    _label(base / "annotations" / "training" / "ADE_train_00000001.png", RAW_VALUES["ade"])


def convert_coco_object(root: Path):
    """Run scripts/convert_coco_object.py (in-process: a subprocess would pay the torch import again)."""
    spec = importlib.util.spec_from_file_location("convert_coco_object", REPO / "scripts" / "convert_coco_object.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(root / "coco_stuff164k")]) == 0
    assert script.main([str(root / "coco_stuff164k"), "--split", "train2017"]) == 0
    assert script.main([str(root / "nowhere")]) == 2


def write_benchmarks(root: Path) -> Path:
    """All eight benchmarks under one MMSeg data root."""
    write_voc(root)
    write_context(root)
    write_coco(root)
    write_cityscapes(root)
    write_ade(root)
    convert_coco_object(root)
    return root
