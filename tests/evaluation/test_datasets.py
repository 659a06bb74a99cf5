"""Benchmark readers on tiny fixtures in their real MMSeg layouts (docs/evaluation.md, "Datasets"), written by the
tests (tests/helpers/benchmarks.py)."""

import numpy as np
import pytest
import torch
from PIL import Image

from open_clip_simzss.evaluation.datasets import (
    CLASS_NAME_SETS, COCO_THING_IDS, DatasetError, get_dataset, list_datasets, load_class_names,
    read_label, stuff_to_object,
)
from tests.helpers.benchmarks import H, W, write_coco, write_voc

@pytest.fixture(scope="module")
def data_root(benchmark_root):
    return benchmark_root


def _row_values(label):
    return [int(label[i, 0]) for i in range(label.shape[0])][:4]


def test_registry():
    assert list_datasets() == ["voc20", "context59", "coco_stuff", "cityscapes", "ade20k", "context60",
                               "coco_object", "voc21"]
    with pytest.raises(DatasetError, match="unknown dataset"):
        get_dataset("voc22", ".")


@pytest.mark.parametrize("name, raw, expected, n_classes, background", [
    ("voc20", "voc", [255, 0, 19, 255], 20, False),  # reduce_zero_label: bg ignored, 1..20 -> 0..19
    ("voc21", "voc", [0, 1, 20, 255], 21, True),
    ("context59", "context", [255, 0, 58, 255], 59, False),
    ("context60", "context", [0, 1, 59, 255], 60, True),
    ("coco_stuff", "coco_stuff", [0, 5, 170, 255], 171, False),
    ("cityscapes", "cityscapes", [0, 3, 18, 255], 19, False),
    ("ade20k", "ade", [255, 0, 149, 255], 150, False),
])
def test_reader_label_conventions(data_root, name, raw, expected, n_classes, background):
    ds = get_dataset(name, data_root)
    assert ds.num_classes == n_classes and ds.has_background is background
    assert len(ds.label_names) == n_classes and (ds.label_names[0] == "background") is background
    assert "background" not in [s for syns in ds.class_names for s in syns]
    image, label = ds[0]
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    assert label.shape == (H, W) and label.dtype == np.int64
    assert _row_values(label) == expected
    assert label.max() <= 255 and set(np.unique(label)) <= set(range(n_classes)) | {255}


def test_reader_order_follows_mmseg(data_root):
    voc = get_dataset("voc20", data_root)  # split-file order, not sorted; files outside the split ignored
    assert [p.stem for p, _ in voc.items] == ["2007_000033", "2007_000032"]
    assert voc.items[0][1] == data_root / "VOCdevkit/VOC2012/SegmentationClass/2007_000033.png"
    coco = get_dataset("coco_stuff", data_root)  # no split: sorted by file name
    assert [p.name for p, _ in coco.items] == ["000000000139.jpg", "000000000285.jpg"]
    assert coco.items[0][1].name == "000000000139_labelTrainIds.png"
    city = get_dataset("cityscapes", data_root)  # recursive, sorted by relative path
    assert [p.parent.name + "/" + p.name for p, _ in city.items] == [
        "frankfurt/frankfurt_000000_000294_leftImg8bit.png", "frankfurt/frankfurt_000001_000001_leftImg8bit.png",
        "lindau/lindau_000000_000019_leftImg8bit.png"]
    assert city.items[0][1].name == "frankfurt_000000_000294_gtFine_labelTrainIds.png"
    ade = get_dataset("ade20k", data_root)
    assert [p.name for p, _ in ade.items] == ["ADE_val_00000001.jpg", "ADE_val_00000002.jpg"]


def test_root_may_be_the_dataset_folder(data_root):
    ds = get_dataset("voc21", data_root / "VOCdevkit" / "VOC2012")
    assert len(ds) == 2 and ds.root == data_root / "VOCdevkit" / "VOC2012"


def test_coco_object_conversion(data_root):
    lut_out = stuff_to_object(np.array([0, 1, 89, 11, 91, 181, 255], dtype=np.uint8))
    assert lut_out.tolist() == [1, 2, 80, 0, 0, 0, 0]
    assert len(COCO_THING_IDS) == 80 and max(COCO_THING_IDS) == 89
    ds = get_dataset("coco_object", data_root)
    assert ds.items[0][1].name == "000000000139_instanceTrainIds.png"
    # things -> 1..80, unused thing id, stuff and unlabelled (255) -> background 0: nothing is ignored
    assert [int(v) for v in ds.load_label(0)[:6, 0]] == [1, 2, 80, 0, 0, 0]
    assert ds.num_classes == 81 and ds.label_names[1] == "person"


def test_class_name_files():
    for class_set in CLASS_NAME_SETS:
        for name in list_datasets():
            names = load_class_names(name, class_set)
            assert all(syns and all(s == s.strip() and s for s in syns) for syns in names)
            assert not any(s.lower() == "background" for syns in names for s in syns)
            assert class_set == "synonyms" or all(len(syns) == 1 for syns in names)
    # default: the exact strings TCL feeds its text encoder (MMSeg 0.27 CLASSES, background dropped)
    voc = [syns[0] for syns in load_class_names("voc20")]
    assert voc[0] == "aeroplane" and voc[10] == "diningtable" and voc[15] == "pottedplant" and voc[19] == "tvmonitor"
    assert load_class_names("voc21") == load_class_names("voc20")
    assert load_class_names("context59")[54] == ["tvmonitor"] and len(load_class_names("context60")) == 59
    assert load_class_names("ade20k")[44] == ["chest of drawers"] and len(load_class_names("ade20k")) == 150
    assert load_class_names("coco_stuff")[84] == ["building-other"]
    assert load_class_names("cityscapes")[6] == ["traffic light"]
    assert load_class_names("coco_object")[4] == ["airplane"]  # TCL's COCO-Object list (CLIP-DINOiser: aeroplane)
    # opt-in sets
    assert load_class_names("voc20", "synonyms")[19] == ["tv monitor", "television", "monitor", "screen"]
    assert load_class_names("voc20", "readable")[19] == ["tv monitor"]
    assert load_class_names("coco_stuff", "readable")[84] == ["building"]
    for name in ("voc20", "voc21", "context59", "context60"):  # "ship" is not a synonym of VOC's boat (README)
        assert ["boat"] in load_class_names(name, "synonyms")
    with pytest.raises(DatasetError, match="unknown class-name set"):
        load_class_names("voc20", "fancy")


def test_class_names_override(data_root, tmp_path):
    assert get_dataset("voc20", data_root).class_name_set == "mmseg"
    ds = get_dataset("voc20", data_root, class_names="synonyms")
    assert ds.class_name_set == "synonyms" and ds.class_names[19][1] == "television"
    assert get_dataset("voc20", data_root, class_names="readable").label_names[19] == "tv monitor"
    names = tmp_path / "names.txt"
    names.write_text("# my names\n" + "\n".join(f"thing {i}, alias {i}" for i in range(20)) + "\n")
    ds = get_dataset("voc20", data_root, class_names=names)
    assert ds.class_names[3] == ["thing 3", "alias 3"] and ds.class_name_set == str(names)
    assert get_dataset("voc20", data_root, class_names=[f"c{i}" for i in range(20)]).class_name_set == "custom"
    with pytest.raises(DatasetError, match="20 text classes"):
        get_dataset("voc21", data_root, class_names=["background"] + [f"c{i}" for i in range(20)])
    with pytest.raises(DatasetError, match="not a file nor one of mmseg, readable, synonyms"):
        get_dataset("voc20", data_root, class_names="fancy")


@pytest.mark.parametrize("name, first", [
    ("voc21", "2007_000039.jpg"), ("voc20", "2007_000039.jpg"), ("context60", "2008_000008.jpg"),
    ("coco_stuff", "000000000009.jpg"), ("coco_object", "000000000009.jpg"),
    ("cityscapes", "aachen_000000_000019_leftImg8bit.png"), ("ade20k", "ADE_train_00000001.jpg"),
])
def test_train_split_layouts(data_root, name, first):
    ds = get_dataset(name, data_root, split="train")
    assert ds.split == "train" and ds.items[0][0].name == first
    assert all("val" not in str(p.relative_to(data_root)) for pair in ds.items for p in pair)
    assert ds[0][1].shape == (H, W)
    if name.startswith("voc"):  # the list file's order
        assert [p.stem for p, _ in ds.items] == ["2007_000039", "2007_000063", "2007_000042"]
    with pytest.raises(DatasetError, match="unknown split"):
        get_dataset(name, data_root, split="test")


def test_missing_or_malformed_folders_say_what_was_expected(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        get_dataset("voc20", tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"VOCdevkit/VOC2012/JPEGImages"):
        get_dataset("voc20", tmp_path)
    write_voc(tmp_path)
    split = tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"
    split.write_text("2007_000033\n2007_000404\n")
    with pytest.raises(DatasetError, match=r"expected image .*2007_000404\.jpg"):
        get_dataset("voc20", tmp_path)
    split.unlink()
    with pytest.raises(DatasetError, match=r"expected split file .*ImageSets/Segmentation/val\.txt"):
        get_dataset("voc20", tmp_path)
    write_coco(tmp_path)  # raw labels only: COCO-Object labels not converted yet
    with pytest.raises(DatasetError, match=r"expected label .*_instanceTrainIds\.png.*convert_coco_object"):
        get_dataset("coco_object", tmp_path)
    rgb = tmp_path / "coco_stuff164k/annotations/val2017/000000000139_labelTrainIds.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(rgb)
    with pytest.raises(DatasetError, match="mode RGB"):
        read_label(rgb)


# --- your own dataset: folder:PATH ---------------------------------------------------------------------------
@pytest.fixture
def scenes(tmp_path):
    from open_clip_simzss.workflows import synthetic
    return synthetic.write_folder_dataset(tmp_path / "scenes", 4, seed=3, size=32)


class OraclePredictor:
    """An engine stand-in that predicts ``predict(image_index)`` for each image it is given (whatever the
    classifier)."""

    def __init__(self, dataset, predict):
        self.by_pixels = {dataset.load_image(i).tobytes(): i for i in range(len(dataset))}
        self.predict = predict

    def classes_and_confidence_batch(self, images, classifier, with_confidence=True):
        return [(torch.as_tensor(self.predict(self.by_pixels[im.tobytes()])), None) for im in images]


def test_folder_dataset_round_trips_the_synthetic_scenes(scenes):
    from open_clip_simzss.workflows import synthetic
    from open_clip_simzss.evaluation.run import evaluate_dataset
    ds = get_dataset(f"folder:{scenes}", None)
    names = [c.name for c in synthetic.CATEGORIES]
    assert ds.name == "synthetic_scenes" and len(ds) == 4 and ds.label_names == names
    assert ds.protocol == {"short_side": 32, "max_long_side": 128, "window": 32, "stride": 16}
    labels = [ds.load_label(i) for i in range(len(ds))]
    assert all(np.array_equal(lbl, synthetic.make_scene(i, 3, 32)[1]) for i, lbl in enumerate(labels))

    perfect = evaluate_dataset(OraclePredictor(ds, lambda i: labels[i]), None, ds, [None], progress=False, workers=0)
    assert perfect["miou"] == 100.0
    # a constant prediction c (the commonest class): IoU_c = pixels of c / all pixels, 0 for the other classes
    # present, and the classes neither present nor predicted are left out
    everything = np.concatenate([lbl.ravel() for lbl in labels])
    c = np.bincount(everything).argmax()
    constant = evaluate_dataset(OraclePredictor(ds, lambda i: np.full_like(labels[i], c)), None, ds,
                                [None],
                                progress=False, workers=0)
    expected = 100 * np.mean(everything == c) / len(np.unique(everything))
    assert constant["miou"] == round(expected, 2) and 0 < expected < 50


def _edit(folder, what):
    if what == "mask without image":
        (folder / "images" / "scene_00000.jpg").unlink()
    elif what == "image without mask":
        (folder / "masks" / "scene_00000.png").unlink()
    elif what == "no classnames":
        (folder / "classnames.txt").unlink()
    elif what == "unknown key":
        (folder / "dataset.json").write_text('{"ignore_idx": 0}')
    elif what == "bad protocol":
        (folder / "dataset.json").write_text('{"protocol": {"window": 0}}')
    elif what == "not json":
        (folder / "dataset.json").write_text("{window: 3")


@pytest.mark.parametrize("what, message", [
    ("mask without image", r"mask .*scene_00000.png has no image in .*images \(1 masks without an image\)"),
    ("image without mask", r"image .*scene_00000.jpg has no mask .*masks/scene_00000.png"),
    ("no classnames", r"expected .*classnames.txt"),
    ("unknown key", r"unknown key 'ignore_idx'"),
    ("bad protocol", r"protocol 'window' must be a positive integer, got 0"),
    ("not json", r"dataset.json is not valid JSON"),
])
def test_folder_dataset_mistakes_are_one_line(scenes, what, message):
    _edit(scenes, what)
    with pytest.raises(DatasetError, match=message) as error:
        get_dataset(f"folder:{scenes}", None)
    assert "\n" not in str(error.value)


def test_label_values_outside_the_classes_name_the_file_and_the_value(scenes, data_root, tmp_path):
    mask = scenes / "masks" / "scene_00002.png"
    label = np.array(Image.open(mask))
    label[0, 0] = 13  # the scenes have 13 classes: 0..12
    Image.fromarray(label).save(mask)
    ds = get_dataset(f"folder:{scenes}", None)
    ds.load_label(1)
    with pytest.raises(DatasetError, match=r"scene_00002.png has the value 13, outside the 13 classes "
                                           r"\(values 0..12, 255 = ignore\)"):
        ds.load_label(2)
    # another ignore value: 0 is ignored, and 255 is no longer a valid value
    (scenes / "dataset.json").write_text('{"ignore_index": 0, "reduce_zero_label": true}')
    label[0, 0] = 255
    Image.fromarray(label).save(mask)
    ds = get_dataset(f"folder:{scenes}", None)
    raw = np.array(Image.open(scenes / "masks" / "scene_00001.png"))
    assert np.array_equal(ds.load_label(1), np.where(raw == 0, 255, raw - 1))
    with pytest.raises(DatasetError, match=r"has the value 255, outside the 13 classes \(values 1..13, 0 = ignore\)"):
        ds.load_label(2)
    # the benchmarks too: VOC has 21 values (0 = background, 1..20)
    voc = get_dataset("voc21", data_root)
    path = voc.items[0][1]
    bad = np.array(Image.open(path))
    bad[0, 0] = 21
    Image.fromarray(bad).save(tmp_path / "x.png")
    voc.items[0] = (voc.items[0][0], tmp_path / "x.png")
    with pytest.raises(DatasetError, match=r"x.png has the value 21, outside the 21 classes \(values 0..20 with "
                                           r"0 = background, 255 = ignore\)"):
        voc.load_label(0)
