"""Readers for the eight zero-shot segmentation benchmarks, in their MMSeg-standard folder layouts
(docs/evaluation.md, "Datasets"). No MMSeg needed: each reader lists (image, label) pairs in MMSeg's order and
loads labels with Pillow as raw indices (palette PNGs give their indices, not colours).

Layouts, relative to a data root (MMSeg's ``data/`` folder; the dataset folder itself is accepted too):

=============  ==========================  ==============================================================
name           folder                      images / labels / list
=============  ==========================  ==============================================================
voc20, voc21   VOCdevkit/VOC2012           JPEGImages/*.jpg, SegmentationClass/*.png,
                                           ImageSets/Segmentation/val.txt
context59/60   VOCdevkit/VOC2010           JPEGImages/*.jpg, SegmentationClassContext/*.png,
                                           ImageSets/SegmentationContext/val.txt
coco_stuff     coco_stuff164k              images/val2017/*.jpg, annotations/val2017/*_labelTrainIds.png
coco_object    coco_stuff164k              images/val2017/*.jpg, annotations/val2017/*_instanceTrainIds.png
cityscapes     cityscapes                  leftImg8bit/val/*/*_leftImg8bit.png,
                                           gtFine/val/*/*_gtFine_labelTrainIds.png
ade20k         ade/ADEChallengeData2016    images/validation/*.jpg, annotations/validation/*.png
=============  ==========================  ==============================================================

Label conventions: ignore index 255; ``reduce_zero_label`` (voc20, context59, ade20k) maps 0 -> 255 and
x -> x - 1; with-background sets (voc21, context60, coco_object) keep 0 = background.

Text class names come from a named set under ``data/classnames/`` (``CLASS_NAME_SETS``; data/classnames/README.md):
``mmseg`` (default: the exact strings TCL feeds its text encoder, MMSeg 0.27 ``CLASSES``), ``readable`` or
``synonyms``; or from a file of the same format (one class per line, synonyms separated by ","). Background is
never listed (it is not a text class: docs/evaluation.md, "Background").

``split="train"`` reads the training split of the same layout (VOC ``ImageSets/Segmentation/train.txt``,
Context ``ImageSets/SegmentationContext/train.txt``, COCO ``train2017``, Cityscapes ``train``, ADE ``training``),
used to select a background threshold away from the evaluated images (docs/evaluation.md, "Background").
"""
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..segmentation.labels import IGNORE_INDEX
from ..segmentation.protocol import WINDOW_KEYS

CLASSNAMES_DIR = Path(__file__).parent.parent / "data" / "classnames"
# Named class-name sets (data/classnames/README.md). "readable" is the first name of each "synonyms" line.
CLASS_NAME_SETS = ("mmseg", "readable", "synonyms")
DEFAULT_CLASS_NAMES = "mmseg"
SPLITS = ("val", "train")
# Tables 1-2 of the paper: the five sets without background, then the three with background.
BENCHMARK_ORDER = ("voc20", "context59", "coco_stuff", "cityscapes", "ade20k", "context60", "coco_object", "voc21")
PathLike = Union[str, Path]


class DatasetError(ValueError):
    """A dataset folder is missing or malformed; the message says which file was expected where."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str  # under the data root
    img_dir: str
    ann_dir: str
    img_suffix: str
    seg_suffix: str
    split: Optional[str]  # list file under the folder; None: every image in img_dir, sorted by name
    has_background: bool
    reduce_zero_label: bool
    recursive: bool = False
    hint: str = ""
    train: Tuple[str, str, Optional[str]] = ("", "", None)  # img_dir, ann_dir, list file of the train split

    @property
    def layout(self) -> str:
        listing = self.split or f"all {self.img_dir}/{'**/' if self.recursive else ''}*{self.img_suffix}"
        return (f"{self.folder}/{{{self.img_dir}/<id>{self.img_suffix}, {self.ann_dir}/<id>{self.seg_suffix}}}, "
                f"list: {listing}")


_VOC_HINT = "VOC2012 from host.robots.ox.ac.uk (VOCtrainval_11-May-2012.tar), extracted under VOCdevkit/"
_CONTEXT_HINT = "see scripts/prepare_pascal_context.md"
_COCO_HINT = "COCO-Stuff 164k prepared with MMSeg's tools/convert_datasets/coco_stuff.py"
_COCO_OBJECT_HINT = "make the *_instanceTrainIds.png labels with scripts/convert_coco_object.py"
_CITY_HINT = "Cityscapes prepared with cityscapesscripts' createTrainIdLabelImgs"
_ADE_HINT = "ADEChallengeData2016.zip extracted under ade/"
_VOC_TRAIN = ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation/train.txt")
_CONTEXT_TRAIN = ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext/train.txt")
_COCO_TRAIN = ("images/train2017", "annotations/train2017", None)

SPECS = {
    "voc20": DatasetSpec("voc20", "VOCdevkit/VOC2012", "JPEGImages", "SegmentationClass", ".jpg", ".png",
                         "ImageSets/Segmentation/val.txt", False, True, hint=_VOC_HINT, train=_VOC_TRAIN),
    "voc21": DatasetSpec("voc21", "VOCdevkit/VOC2012", "JPEGImages", "SegmentationClass", ".jpg", ".png",
                         "ImageSets/Segmentation/val.txt", True, False, hint=_VOC_HINT, train=_VOC_TRAIN),
    "context59": DatasetSpec("context59", "VOCdevkit/VOC2010", "JPEGImages", "SegmentationClassContext", ".jpg",
                             ".png", "ImageSets/SegmentationContext/val.txt", False, True, hint=_CONTEXT_HINT,
                             train=_CONTEXT_TRAIN),
    "context60": DatasetSpec("context60", "VOCdevkit/VOC2010", "JPEGImages", "SegmentationClassContext", ".jpg",
                             ".png", "ImageSets/SegmentationContext/val.txt", True, False, hint=_CONTEXT_HINT,
                             train=_CONTEXT_TRAIN),
    "coco_stuff": DatasetSpec("coco_stuff", "coco_stuff164k", "images/val2017", "annotations/val2017", ".jpg",
                              "_labelTrainIds.png", None, False, False, hint=_COCO_HINT, train=_COCO_TRAIN),
    "coco_object": DatasetSpec("coco_object", "coco_stuff164k", "images/val2017", "annotations/val2017", ".jpg",
                               "_instanceTrainIds.png", None, True, False, hint=_COCO_OBJECT_HINT,
                               train=_COCO_TRAIN),
    "cityscapes": DatasetSpec("cityscapes", "cityscapes", "leftImg8bit/val", "gtFine/val", "_leftImg8bit.png",
                              "_gtFine_labelTrainIds.png", None, False, False, recursive=True, hint=_CITY_HINT,
                              train=("leftImg8bit/train", "gtFine/train", None)),
    "ade20k": DatasetSpec("ade20k", "ade/ADEChallengeData2016", "images/validation", "annotations/validation",
                          ".jpg", ".png", None, False, True, hint=_ADE_HINT,
                          train=("images/training", "annotations/training", None)),
}


def list_datasets() -> List[str]:
    """Benchmark names in the paper's column order (Tables 1-2)."""
    return list(BENCHMARK_ORDER)


def load_class_names(name_or_path: PathLike, class_set: str = DEFAULT_CLASS_NAMES) -> List[List[str]]:
    """A class-name list: one class per line, synonyms separated by ",", '#' comments and blank lines skipped.

    ``name_or_path`` is a benchmark name (the shipped list of ``class_set``, one of ``CLASS_NAME_SETS``) or the
    path of such a file (``class_set`` is then ignored).
    """
    path = Path(name_or_path)
    if not path.is_file():
        if class_set not in CLASS_NAME_SETS:
            raise DatasetError(f"unknown class-name set {class_set!r}; available: {', '.join(CLASS_NAME_SETS)} "
                               "or a file")
        folder = CLASSNAMES_DIR / ("synonyms" if class_set == "readable" else class_set)
        path = folder / f"{name_or_path}.txt"
    if not path.is_file():
        raise DatasetError(f"no class-name file {name_or_path!r} (expected a file, or one of "
                           f"{', '.join(list_datasets())})")
    classes = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        classes.append([s.strip() for s in line.split(",") if s.strip()])
    if not classes:
        raise DatasetError(f"class-name file {path} lists no classes")
    if class_set == "readable" and path.parent == CLASSNAMES_DIR / "synonyms":
        classes = [syns[:1] for syns in classes]
    return classes


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """MMSeg's reduce_zero_label: 0 -> 255 (ignored), x -> x - 1, and 255 stays 255."""
    out = label.astype(np.int64) - 1
    out[(label == 0) | (label == IGNORE_INDEX)] = IGNORE_INDEX
    return out


def read_label(path: PathLike, reduce_zero: bool = False) -> np.ndarray:
    """A label PNG as raw indices [H, W] int64 (Pillow, palette indices not colours), reduce_zero_label applied."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise DatasetError(f"label {path} has mode {im.mode}; expected a single-channel index PNG "
                                   "(palette 'P' or grey 'L'), not a colour rendering")
            label = np.asarray(im).astype(np.int64)
    except (OSError, SyntaxError) as e:
        raise DatasetError(f"cannot read label {path}: {e}") from None
    return reduce_zero_label(label) if reduce_zero else label


def read_image(path: PathLike) -> np.ndarray:
    """An image as RGB uint8 [H, W, 3]. The EXIF orientation is not applied: labels index the stored pixels."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError) as e:
        raise DatasetError(f"cannot read image {path}: {e}") from None


class SegmentationDataset:
    """One benchmark split: ``items`` [(image path, label path)] in MMSeg order, class names, label rules.

    ``dataset[i]`` -> (image RGB uint8 [H, W, 3], label int64 [H, W] with 255 = ignore). Label values are
    0..num_classes-1: text class c is label c, or c + 1 when ``has_background`` (0 = background).
    """

    def __init__(self, spec: DatasetSpec, root: Path, items: List[Tuple[Path, Path]],
                 class_names: List[List[str]], class_name_set: str = "custom", split: str = "val",
                 stored_ignore_index: int = IGNORE_INDEX, protocol: Optional[Dict[str, int]] = None):
        self.spec = spec
        self.name = spec.name
        self.split = split
        self.class_name_set = class_name_set  # "mmseg", "readable", "synonyms", a file path or "custom"
        self.root = root
        self.items = items
        self.class_names = class_names
        self.has_background = spec.has_background
        self.reduce_zero_label = spec.reduce_zero_label
        self.ignore_index = IGNORE_INDEX
        # the ignore value in the label files (folder datasets may use another one; it is read as 255)
        self.stored_ignore_index = stored_ignore_index
        self.protocol = dict(protocol or {})  # a folder dataset's own resize/window settings (dataset.json)

    @property
    def num_classes(self) -> int:
        """Classes in the label space (text classes, plus background for with-background sets)."""
        return len(self.class_names) + int(self.has_background)

    @property
    def label_names(self) -> List[str]:
        """Display name of each label value (the first synonym), "background" first where there is one."""
        names = [syns[0] for syns in self.class_names]
        return ["background"] + names if self.has_background else names

    def __len__(self) -> int:
        return len(self.items)

    def load_image(self, index: int) -> np.ndarray:
        return read_image(self.items[index][0])

    def load_label(self, index: int) -> np.ndarray:
        """The label map of image ``index``; a value outside the classes (and not the ignore index) is a
        DatasetError naming the file and the value."""
        path = self.items[index][1]
        raw = read_label(path)
        label = raw
        if self.stored_ignore_index != IGNORE_INDEX:
            label = np.where(raw == self.stored_ignore_index, IGNORE_INDEX,
                             np.where(raw == IGNORE_INDEX, -1, raw))  # 255 is a class value there: refused
        if self.reduce_zero_label:
            label = reduce_zero_label(label)
        bad = ((label < 0) | (label >= self.num_classes)) & (label != IGNORE_INDEX)
        if bad.any():
            value = int(raw[bad][0])
            raise DatasetError(f"{self.name}: label {path} has the value {value}, outside the "
                               f"{self.num_classes} classes ({self._label_rule()})")
        return label

    def _label_rule(self) -> str:
        n, ignore = self.num_classes, self.stored_ignore_index
        first = 1 if self.reduce_zero_label else 0
        values = f"values {first}..{first + n - 1}"
        if self.has_background:
            values += " with 0 = background"
        return f"{values}, {ignore} = ignore"

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        return self.load_image(index), self.load_label(index)

    def __repr__(self) -> str:
        return (f"SegmentationDataset({self.name!r}, root={str(self.root)!r}, images={len(self)}, "
                f"classes={self.num_classes}, background={self.has_background})")


def _dataset_folder(spec: DatasetSpec, root: Path) -> Path:
    if not root.is_dir():
        raise DatasetError(f"{spec.name}: data root {root} does not exist")
    # The MMSeg data root, or the dataset folder itself (or its parent, e.g. .../VOCdevkit).
    for folder in (root / spec.folder, root / Path(spec.folder).name, root):
        if (folder / spec.img_dir).is_dir():
            return folder
    raise DatasetError(f"{spec.name}: expected image folder {root / spec.folder / spec.img_dir} "
                       f"(layout {spec.layout}; {spec.hint})")


def _list_items(spec: DatasetSpec, folder: Path) -> List[Tuple[Path, Path]]:
    img_dir, ann_dir = folder / spec.img_dir, folder / spec.ann_dir
    if not ann_dir.is_dir():
        raise DatasetError(f"{spec.name}: expected label folder {ann_dir} ({spec.hint})")
    if spec.split:
        split_file = folder / spec.split
        if not split_file.is_file():
            raise DatasetError(f"{spec.name}: expected split file {split_file} ({spec.hint})")
        ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        if not ids:
            raise DatasetError(f"{spec.name}: split file {split_file} is empty")
        items = [(img_dir / f"{i}{spec.img_suffix}", ann_dir / f"{i}{spec.seg_suffix}") for i in ids]
        missing = [img for img, _ in items if not img.is_file()]
        if missing:
            raise DatasetError(f"{spec.name}: expected image {missing[0]} (listed in {split_file}; "
                               f"{len(missing)} of {len(items)} images missing)")
    else:
        # MMSeg (custom.py load_annotations): scan img_dir for the suffix, sort by the relative file name.
        pattern = f"**/*{spec.img_suffix}" if spec.recursive else f"*{spec.img_suffix}"
        names = sorted(p.relative_to(img_dir).as_posix() for p in img_dir.glob(pattern) if p.is_file())
        if not names:
            raise DatasetError(f"{spec.name}: no *{spec.img_suffix} images in {img_dir}")
        items = [(img_dir / n, ann_dir / (n[: -len(spec.img_suffix)] + spec.seg_suffix)) for n in names]
    missing = [lbl for _, lbl in items if not lbl.is_file()]
    if missing:
        raise DatasetError(f"{spec.name}: expected label {missing[0]} ({len(missing)} of {len(items)} labels "
                           f"missing; {spec.hint})")
    return items


def _split_spec(spec: DatasetSpec, split: str) -> DatasetSpec:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; available: {', '.join(SPLITS)}")
    if split == "val":
        return spec
    img_dir, ann_dir, list_file = spec.train
    return replace(spec, img_dir=img_dir, ann_dir=ann_dir, split=list_file)


def get_dataset(name: str, root: PathLike, class_names: Optional[Union[PathLike, Sequence]] = None,
                split: str = "val") -> SegmentationDataset:
    """The ``name`` benchmark (see ``list_datasets()``) under ``root``, or ``folder:PATH``: your own dataset
    (:func:`get_folder_dataset`; ``root`` is not used).

    Args:
        class_names: a named set (``CLASS_NAME_SETS``; default ``"mmseg"``), a file path, or a list of
            names/synonym lists. ``dataset.class_name_set`` records which.
        split: "val" (the benchmark) or "train" (the same layout's training split; docs/evaluation.md).
    """
    if is_folder_dataset(name):
        if split != "val":
            raise DatasetError(f"{name}: a folder dataset has one split (its images/ and masks/)")
        return get_folder_dataset(name[len(FOLDER_PREFIX):], class_names)
    if name not in SPECS:
        raise DatasetError(f"unknown dataset {name!r}; available: {', '.join(list_datasets())} or "
                           f"{FOLDER_PREFIX}PATH")
    spec = _split_spec(SPECS[name], split)
    folder = _dataset_folder(spec, Path(root).expanduser())
    items = _list_items(spec, folder)
    if class_names is None:
        class_names = DEFAULT_CLASS_NAMES
    if isinstance(class_names, str) and class_names in CLASS_NAME_SETS:
        names, used = load_class_names(name, class_names), class_names
    elif isinstance(class_names, (str, Path)):
        if not Path(class_names).is_file():
            raise DatasetError(f"class names {str(class_names)!r}: not a file nor one of "
                               f"{', '.join(CLASS_NAME_SETS)}")
        names, used = load_class_names(class_names), str(class_names)
    else:
        names, used = [[c] if isinstance(c, str) else list(c) for c in class_names], "custom"
    expected = _NUM_TEXT_CLASSES[name]
    if len(names) != expected:
        raise DatasetError(f"{name}: {len(names)} class names given, the benchmark has {expected} text classes"
                           + (" (background is not a text class: leave it out)" if spec.has_background else ""))
    return SegmentationDataset(spec, folder, items, names, used, split)


# --- your own dataset: --dataset folder:PATH (docs/evaluation.md, "Your own dataset") ------------------------
FOLDER_PREFIX = "folder:"
FOLDER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

FOLDER_OPTIONS = {"name": str, "ignore_index": int, "reduce_zero_label": bool, "background": bool,
                  "protocol": dict}
_FOLDER_LAYOUT = "PATH/{images/<id>.jpg|png, masks/<id>.png, classnames.txt, dataset.json (optional)}"


def _folder_options(folder: Path) -> Dict:
    """dataset.json, checked: known keys with the right types."""
    path = folder / "dataset.json"
    if not path.is_file():
        return {}
    try:
        options = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(options, dict):
        raise DatasetError(f"{path} must hold a JSON object")
    for key, value in options.items():
        kind = FOLDER_OPTIONS.get(key)
        if kind is None:
            raise DatasetError(f"{path}: unknown key {key!r}; known: {', '.join(FOLDER_OPTIONS)}")
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise DatasetError(f"{path}: {key!r} must be a {kind.__name__}, got {value!r}")
    for key, value in options.get("protocol", {}).items():
        if key not in WINDOW_KEYS:
            raise DatasetError(f"{path}: unknown protocol key {key!r}; known: {', '.join(WINDOW_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DatasetError(f"{path}: protocol {key!r} must be a positive integer, got {value!r}")
    if not 0 <= options.get("ignore_index", IGNORE_INDEX) <= 65535:
        raise DatasetError(f"{path}: 'ignore_index' must be in 0..65535")
    return options


def _folder_items(folder: Path) -> List[Tuple[Path, Path]]:
    """(image, mask) pairs matched by file stem, sorted by stem; a mask without an image, an image without a
    mask, or two images with one stem is a DatasetError."""
    images_dir, masks_dir = folder / "images", folder / "masks"
    for needed in (images_dir, masks_dir):
        if not needed.is_dir():
            raise DatasetError(f"folder dataset: expected {needed}/ (layout {_FOLDER_LAYOUT})")
    images: Dict[str, Path] = {}
    for path in sorted(images_dir.iterdir()):
        if path.is_file() and path.suffix.lower() in FOLDER_IMAGE_SUFFIXES:
            if path.stem in images:
                raise DatasetError(f"folder dataset: two images named {path.stem}: {images[path.stem].name} and "
                                   f"{path.name} in {images_dir}")
            images[path.stem] = path
    masks = {p.stem: p for p in sorted(masks_dir.glob("*.png")) if p.is_file()}
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise DatasetError(f"folder dataset: mask {masks[orphans[0]]} has no image in {images_dir} "
                           f"({len(orphans)} masks without an image)")
    unlabelled = sorted(set(images) - set(masks))
    if unlabelled:
        raise DatasetError(f"folder dataset: image {images[unlabelled[0]]} has no mask {masks_dir}/"
                           f"{unlabelled[0]}.png ({len(unlabelled)} images without a mask)")
    if not images:
        raise DatasetError(f"folder dataset: no images ({', '.join(FOLDER_IMAGE_SUFFIXES)}) in {images_dir}")
    return [(images[stem], masks[stem]) for stem in sorted(images)]


def get_folder_dataset(path: PathLike, class_names: Optional[Union[PathLike, Sequence]] = None
                       ) -> SegmentationDataset:
    """Your own dataset (``--dataset folder:PATH``): ``images/``, ``masks/`` (PNG of label indices, same file
    stem), ``classnames.txt`` (one class a line, synonyms separated by ","), and an optional ``dataset.json``:
    ``name`` (default: the folder name), ``ignore_index`` (255), ``reduce_zero_label`` (false: mask value i is
    line i+1 of classnames.txt), ``background`` (false; true: mask value 0 is a background that the
    evaluation's threshold decides, and classnames.txt lists the classes of values 1, 2, ...), ``protocol``
    (``short_side``, ``max_long_side``, ``window``, ``stride``: this dataset's own resize and windows, unless
    given on the command line). ``class_names``: another names file or list (default classnames.txt)."""
    folder = Path(str(path)).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"folder dataset {folder}: not a folder (layout {_FOLDER_LAYOUT})")
    options = _folder_options(folder)
    items = _folder_items(folder)
    if class_names is None or (isinstance(class_names, str) and class_names in CLASS_NAME_SETS):
        names_file = folder / "classnames.txt"
        if not names_file.is_file():
            raise DatasetError(f"folder dataset: expected {names_file} (one class a line, synonyms separated "
                               "by ',')")
        names, used = load_class_names(names_file), str(names_file)
    elif isinstance(class_names, (str, Path)):
        names, used = load_class_names(class_names), str(class_names)
    else:
        names, used = [[c] if isinstance(c, str) else list(c) for c in class_names], "custom"
    background = options.get("background", False)
    if any(syns[0].lower() == "background" for syns in names) and background:
        raise DatasetError(f"{used}: lists 'background', which dataset.json declares as mask value 0 decided by "
                           "a threshold; leave it out of the class names")
    ignore = options.get("ignore_index", IGNORE_INDEX)
    if len(names) + int(background) > IGNORE_INDEX:
        raise DatasetError(f"folder dataset {folder}: {len(names)} classes; at most {IGNORE_INDEX - 1} are "
                           "supported")
    name = options.get("name", folder.name)
    spec = DatasetSpec(name, ".", "images", "masks", "", ".png", None, background,
                       options.get("reduce_zero_label", False), hint=f"layout {_FOLDER_LAYOUT}")
    return SegmentationDataset(spec, folder, items, names, used, "val", stored_ignore_index=ignore,
                               protocol=options.get("protocol"))


def is_folder_dataset(name: str) -> bool:
    return name.startswith(FOLDER_PREFIX)


_NUM_TEXT_CLASSES = {"voc20": 20, "voc21": 20, "context59": 59, "context60": 59, "coco_stuff": 171,
                     "coco_object": 80, "cityscapes": 19, "ade20k": 150}


# --- COCO-Object from COCO-Stuff (docs/evaluation.md, "Datasets") ------------------------------------------
# 0-indexed COCO-Stuff-164k label values of the 80 thing classes (COCO category id - 1; ids 12, 26, 29, 30, 45,
# 66, 68, 69, 71, 83 and 91 are unused by COCO).
COCO_THING_IDS = tuple(
    [*range(0, 11), *range(12, 25), 26, 27, *range(30, 44), *range(45, 65), 66, 69, *range(71, 82),
     *range(83, 90)]
)


def coco_object_lut() -> np.ndarray:
    """Lookup table [256] uint8 from raw COCO-Stuff values to COCO-Object labels: the 80 things -> 1..80 in
    order; stuff (91..181), unused thing ids and 255 (unlabelled) -> 0 = background. So COCO-Object has no
    ignored pixel: unlabelled regions count as background, as in TCL's conversion."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[list(COCO_THING_IDS)] = np.arange(1, len(COCO_THING_IDS) + 1, dtype=np.uint8)
    return lut


def stuff_to_object(label: np.ndarray) -> np.ndarray:
    """Convert a raw 0-indexed COCO-Stuff label map (uint8) to COCO-Object labels (see ``coco_object_lut``)."""
    if label.dtype != np.uint8:
        raise ValueError(f"expected a uint8 COCO-Stuff label map, got {label.dtype}")
    return coco_object_lut()[label]
