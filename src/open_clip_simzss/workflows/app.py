"""The web app: segment any image with any words in the browser (``simzss-app``, the ``[app]`` extra: Gradio).

    simzss-app                                       # the demo's SimZSS model, trained on the spot when absent
    simzss-app --checkpoint simzss-coco/ --port 7860 # any checkpoint reference load_model takes

Two layers, so that the requests are testable without a browser: :class:`SegmentApp` (here) checks the input
and segments (one sentence for every bad input, outputs only under its output folder) and ``page.build_blocks``
lays out the Gradio page on it. The command line is ``cli/app.py``; ``app.py`` at the repository root serves the
same page as a Hugging Face Space (docs/app.md).

The embedded default model (:func:`embedded_model`) is the SimZSS ``simzss-tiny`` that ``make demo`` trained on
synthetic scenes (README, "The demo"); without one, the demo's quick model is trained once through the demo's
own code path (``demo.make_data``, ``demo.train``) and cached under the user's cache folder.
"""
import json
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..images import ImageError, load_image
from ..segmentation.background import DEFAULT_BACKGROUND_SCORE, BackgroundRule, default_threshold
from ..segmentation.labels import BACKGROUND, parse_labels
from ..segmentation.protocol import SegmentationProtocol
from ..segmentation.segmenter import Segmenter, write_outputs
from .demo import DemoConfig, demo_methods, demo_protocol
from .synthetic import CATEGORIES

# Bounds of one request: memory and output size stay small whatever users send.
MAX_LABELS = 64
MAX_PIXELS = 24_000_000          # decoded image (a 6000x4000 photo); larger ones are refused with a sentence
MAX_LABELS_FILE_BYTES = 64_000
MAX_UPLOAD = "40mb"              # Gradio's own limit on an uploaded file
KEPT_REQUESTS = 32               # request folders kept under the output folder (older ones are deleted)
PCA_SCALES = (1.0, 2.0)          # paper Fig. 1 at 1x and 2x the model's training size
PCA_MAX_TOKENS = 4096            # patch budget of one PCA forward (bounds memory and time on a CPU)

DEMO_SEED = 0


class InputError(ValueError):
    """Input the app cannot segment; the message is the one sentence shown in the page."""


# --- the embedded default model ---------------------------------------------------------------------------------
def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/open_clip_simzss`` (default ``~/.cache/open_clip_simzss``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "open_clip_simzss"


@dataclass
class EmbeddedModel:
    """A SimZSS model trained by the demo: its checkpoint, the held-out scenes and a sentence for the page."""

    checkpoint: Path
    scenes: Path                 # the demo's held-out split (MMSeg layout: images/ and annotations/validation)
    description: str
    # the protocol the demo evaluates its model with (demo.evaluate): its training size, half-window stride
    protocol: SegmentationProtocol = field(default_factory=lambda: demo_protocol(DemoConfig.image_size))
    model: str = "simzss-tiny"


def _epoch(path: Path) -> int:
    match = re.fullmatch(r"epoch_(\d+)\.pt", path.name)
    return int(match.group(1)) if match else -1


def find_demo_model(root) -> Optional[EmbeddedModel]:
    """The SimZSS model of a demo output folder (``simzss-demo --output root``, quick or full): the lowest seed's
    last epoch; None when there is none."""
    root = Path(root)
    # the demo's SimZSS runs, one per seed
    runs = sorted(root.glob(f"runs/{demo_methods(DemoConfig())['SimZSS'].run_name('*')}/checkpoints"),
                  key=lambda p: int(re.search(r"seed(\d+)$", p.parent.name).group(1)))
    for folder in runs:
        epochs = sorted(folder.glob("epoch_*.pt"), key=_epoch)
        if epochs and (root / "data" / "eval" / "images").is_dir():
            checkpoint = epochs[-1]
            quick = _epoch(checkpoint) < DemoConfig().epochs
            what = (f"the demo's quick SimZSS `simzss-tiny` model ({_epoch(checkpoint)} epoch(s) on "
                    f"{DemoConfig.quick().train_images} synthetic scenes; `make demo` trains a better one)" if quick
                    else "the SimZSS `simzss-tiny` model that `make demo` trained on synthetic scenes")
            return EmbeddedModel(checkpoint, root / "data" / "eval", f"{what}; it knows the {len(CATEGORIES)} "
                                 f"categories of those scenes (`{checkpoint}`)")
    return None


def train_quick_model(folder, log: Callable[[str], None] = print) -> EmbeddedModel:
    """Train the demo's quick SimZSS model (``DemoConfig.quick()``, seed 0) into ``folder`` through the demo's
    code path, once: it is built in a sibling folder and renamed, so an interrupted run leaves nothing behind."""
    from ..extras import require_train_extra
    from . import demo

    folder = Path(folder)
    require_train_extra("training the app's default model")
    cfg = demo.DemoConfig.quick()
    work = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    start = time.time()
    log(f"no demo model found: training the demo's quick SimZSS model once into {folder} (about a minute on a CPU)")
    log(f"  1/2 synthetic scenes and spaCy concepts ({cfg.train_images} training images)")
    info = demo.make_data(cfg, work / "data")
    log(f"  2/2 training simzss-tiny with SimZSS ({cfg.epochs} epoch, batch {cfg.batch_size})")
    demo.train(cfg, info, work, DEMO_SEED, demo.demo_methods(cfg)["SimZSS"])
    for unused in (work / "data" / "train", work / "data" / "concepts", work / "cache"):  # training inputs only
        shutil.rmtree(unused, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        work.rename(folder)
    except OSError:  # another process finished first: use its model
        shutil.rmtree(work, ignore_errors=True)
    log(f"  done in {time.time() - start:.0f} s")
    return find_demo_model(folder)


def embedded_model(demo_output="demo_output", cache_dir=None, log: Callable[[str], None] = print) -> EmbeddedModel:
    """The app's default model: the one ``make demo`` trained (in ``demo_output``), else the demo's quick model
    cached in ``cache_dir`` (default :func:`user_cache_dir`), trained on the first call."""
    found = find_demo_model(demo_output)
    if found is not None:
        return found
    folder = Path(cache_dir or user_cache_dir()) / "demo-quick"
    found = find_demo_model(folder)
    if found is None:
        found = train_quick_model(folder, log)
    return found


def example_scenes(root, count: int = 6) -> List[Tuple[str, str]]:
    """(image path, its labels "grass, dog, ...") for the first held-out scenes of a demo split: the categories
    present in each scene's ground truth."""
    root = Path(root)
    out = []
    for image in sorted((root / "images" / "validation").glob("*.jpg"))[:count]:
        truth = np.asarray(Image.open(root / "annotations" / "validation" / f"{image.stem}.png"))
        present = [CATEGORIES[i].name for i in np.unique(truth) if i < len(CATEGORIES)]
        out.append((str(image), ", ".join(present)))
    return out


# --- requests ---------------------------------------------------------------------------------------------------
@dataclass
class AppResult:
    """What one request produced: files under the request's folder, and the shares for the legend."""

    folder: Path
    overlay: Path
    label_map: Path
    report: Path
    similarity: Path
    pca: Path
    labels: List[str]
    colors: List[Tuple[int, int, int]]
    shares: List[float]
    pixels: List[int]
    seconds: float

    @property
    def downloads(self) -> List[str]:
        return [str(self.label_map), str(self.report)]


def _read_labels_file(path) -> List[str]:
    path = Path(path)
    if path.stat().st_size > MAX_LABELS_FILE_BYTES:
        raise InputError(f"The labels file is larger than {MAX_LABELS_FILE_BYTES // 1000} kB; give at most "
                         f"{MAX_LABELS} labels, one a line.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError("The labels file is not a UTF-8 text file; give one label a line.") from None
    return [line.split("#", 1)[0] for line in text.splitlines()]  # "#" starts a comment, as simzss-segment


def request_labels(text: Optional[str], labels_file=None) -> List[str]:
    """The labels of a request: the comma-separated text, then the file's lines; InputError when unusable."""
    items = [item for item in (text or "").split(",")]
    if labels_file:
        items += _read_labels_file(labels_file)
    try:
        labels = parse_labels(items)
    except ValueError as e:
        if not any(" ".join(i.split()) for i in items):
            raise InputError("Type at least one label, e.g. \"cat, grass, sky\".") from None
        raise InputError(f"{str(e)[0].upper()}{str(e)[1:]}.") from None
    if len(labels) > MAX_LABELS:
        raise InputError(f"{len(labels)} labels given; the app takes at most {MAX_LABELS} per image.")
    return labels


def request_image(path) -> np.ndarray:
    """The uploaded file as RGB uint8; InputError for no image, a file that is not an image or a huge one."""
    if not path:
        raise InputError("Upload an image first (or click one of the examples).")
    try:
        with Image.open(path) as header:  # reads the header only: the size is known before decoding
            width, height = header.size
    except Image.DecompressionBombError:
        raise InputError(f"The image is larger than {MAX_PIXELS // 1_000_000} megapixels; resize it first.") from None
    except (OSError, ValueError, SyntaxError):
        raise InputError("The file is not an image this app can read (JPEG, PNG, WebP, TIFF, BMP, GIF).") from None
    if width * height > MAX_PIXELS:
        raise InputError(f"The image is {width}x{height} pixels; the app takes up to "
                         f"{MAX_PIXELS // 1_000_000} megapixels, resize it first.")
    try:
        return load_image(path)
    except ImageError:
        raise InputError("The image file is damaged or truncated and cannot be decoded.") from None


class SegmentApp:
    """The app's requests on a loaded model (no Gradio here).

    Args:
        model, tokenizer: a SimZSS model from ``load_model`` and its tokenizer.
        output_dir: every file a request writes goes to ``output_dir/requests/<id>/`` (the last
            ``KEPT_REQUESTS`` are kept).
        description: which model this is, shown in the page.
        protocol: the segmentation protocol (templates, sizes, windows; the page sets background and PAMR per
            request); its ``pamr`` is the initial state of the page's PAMR switch.
        device: where inference runs (default: the model's device).
        examples: (image path, labels) pairs offered as clickable examples.
    """

    def __init__(self, model, tokenizer, output_dir, description: str,
                 protocol: Optional[SegmentationProtocol] = None, device=None,
                 examples: Sequence[Tuple[str, str]] = ()):
        self.model, self.tokenizer = model, tokenizer
        self.output_dir = Path(output_dir).resolve()
        self.requests_dir = self.output_dir / "requests"
        self.requests_dir.mkdir(parents=True, exist_ok=True)
        self.description = description
        self.protocol = protocol or SegmentationProtocol()
        self.device = device
        self.examples = list(examples)
        self.pamr = self.protocol.pamr
        self._segmenters: Dict[Tuple[str, bool], Segmenter] = {}
        self._lock = threading.Lock()  # Gradio's queue serialises requests; this also guards direct callers

    def segmenter(self, background_score: str, pamr: bool) -> Segmenter:
        key = (background_score, bool(pamr))
        if key not in self._segmenters:
            protocol = self.protocol.replace(background=BackgroundRule(background_score), pamr=bool(pamr))
            self._segmenters[key] = Segmenter(self.model, self.tokenizer, protocol, device=self.device)
        return self._segmenters[key]

    def _new_folder(self) -> Path:
        folders = sorted(self.requests_dir.iterdir(), key=lambda p: p.stat().st_mtime)
        for old in folders[:max(0, len(folders) - KEPT_REQUESTS + 1)]:
            shutil.rmtree(old, ignore_errors=True)
        folder = self.requests_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        return folder

    def segment(self, image_path, labels_text: Optional[str], labels_file=None, background: bool = False,
                threshold: Optional[float] = None, background_score: str = DEFAULT_BACKGROUND_SCORE,
                pamr: bool = False) -> AppResult:
        """One request: InputError (one sentence) for bad input, else the files of :class:`AppResult`."""
        import open_clip

        from ..segmentation.pictures import feature_pyramid, pca_figure, pca_panels, similarity_figure

        labels = request_labels(labels_text, labels_file)
        try:  # the rule checks itself: "background_threshold must be ..." becomes "The background threshold ..."
            rule = BackgroundRule(background_score)
            if background:
                rule = rule.with_threshold(default_threshold(rule.score) if threshold is None else threshold)
        except ValueError as e:
            raise InputError(f"The {str(e).replace('_', ' ')}.") from None
        if background and BACKGROUND in {label.lower() for label in labels}:
            raise InputError("With background on, low-confidence pixels are background: remove the label "
                             "\"background\" or turn background off.")
        image = request_image(image_path)
        start = time.time()
        with self._lock:
            segmenter = self.segmenter(rule.score, pamr)
            segmenter.background_threshold = rule.threshold
            result = segmenter.segment(image, labels)
            folder = self._new_folder()
            settings = {"model": self.model.source.spec, "checkpoint": self.model.source.weights,
                        "background_threshold": rule.threshold,
                        "background_score": rule.score if background else None, "pamr": bool(pamr)}
            report = write_outputs(result, folder, "segmentation", settings)
            similarity = similarity_figure(image, result.logits, result.text_labels, folder / "similarity.png")
            cfg = open_clip.get_model_preprocess_cfg(self.model)
            pyramid = feature_pyramid(self.model, image, PCA_SCALES, int(self.model.visual.image_size[0]),
                                      cfg["mean"], cfg["std"], PCA_MAX_TOKENS)
            pca = pca_figure(image, pca_panels([f for _, f, _ in pyramid]),
                             [f"x{s:g}: {f.shape[1]}x{f.shape[0]} patches" for s, f, _ in pyramid], folder / "pca.png")
        data = json.loads(report.read_text(encoding="utf-8"))
        return AppResult(folder, folder / data["overlay"], folder / data["label_map"], report, similarity, pca,
                         list(result.labels), [tuple(int(c) for c in col) for col in result.colors],
                         [data["shares"][n] for n in result.labels], [data["pixels"][n] for n in result.labels],
                         time.time() - start)
