"""The evaluation protocol: which benchmarks, with which class names, how each image is segmented, and how the
background threshold is chosen, in one object checked once where it is made (docs/evaluation.md). The command
line parses its flags into it; Python users build it; ``run.Evaluation`` runs it.
"""
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import FrozenSet, List, Optional, Tuple

from ..segmentation.background import default_threshold, sweep_thresholds
from ..segmentation.protocol import WINDOW_KEYS, SegmentationProtocol
from ..validation import check_count
from .datasets import BENCHMARK_ORDER, CLASS_NAME_SETS, DEFAULT_CLASS_NAMES, FOLDER_PREFIX, SPLITS, is_folder_dataset
from .metrics import parse_sweep

ALL = "all"


def split_and_count(value: str, name: str) -> Tuple[str, int]:
    """"train:N" / "val:N" -> (split, N); ValueError (one line) for anything else."""
    split, _, n = value.partition(":")
    if split not in SPLITS or not n.isdigit() or int(n) < 1:
        raise ValueError(f"bad {name} {value!r}: expected train:N or val:N with N >= 1")
    return split, int(n)


@dataclass(frozen=True)
class EvaluationProtocol:
    """Everything that decides an evaluation's numbers (docs/evaluation.md). ValueError (one line naming the
    field) when made with values that cannot work.

    Attributes:
        datasets: benchmark names (``BENCHMARK_ORDER``), ``folder:PATH`` datasets, or ``("all",)``.
        data_root: MMSeg's data folder; needed by the benchmarks.
        class_names: a shipped class-name set (``CLASS_NAME_SETS``) or a file (one dataset only).
        segmentation: how images are segmented; its background rule gives the confidence score and scale, and
            its threshold, when set, is used on every with-background set.
        background_sweep: a grid of thresholds ("start:stop:step" or a comma list; cosine units with the
            sigmoid score, probability units with softmax) scored from one pass per image.
        sweep_on: where the swept threshold is selected: "train:N" (the first N training images) or "val:N" (the
            first N evaluated images, then held out); None: on the evaluated images (labelled so).
        fewshot_from: "train:N" or "val:N": the few-shot classifier of the paper's Table 8 instead of the text
            one (not zero-shot); val images used are held out.
        limit: evaluate at most this many images per dataset.
        fixed_windows: the window settings (``WINDOW_KEYS``) that win over a folder dataset's own dataset.json
            (those given on the command line).
    """

    datasets: Tuple[str, ...]
    data_root: Optional[str] = None
    class_names: str = DEFAULT_CLASS_NAMES
    segmentation: SegmentationProtocol = field(default_factory=SegmentationProtocol)
    background_sweep: Optional[str] = None
    sweep_on: Optional[str] = None
    fewshot_from: Optional[str] = None
    limit: Optional[int] = None
    fixed_windows: FrozenSet[str] = frozenset()

    def __post_init__(self):
        names = (BENCHMARK_ORDER if tuple(self.datasets) == (ALL,) else
                 tuple(n.strip() for n in self.datasets if n.strip()))
        object.__setattr__(self, "datasets", names)
        unknown = [n for n in names if n not in BENCHMARK_ORDER and not is_folder_dataset(n)]
        if unknown or not names:
            raise ValueError(f"unknown dataset {', '.join(unknown) or repr(names)}; "
                             f"choose from {', '.join(BENCHMARK_ORDER)}, 'all' or {FOLDER_PREFIX}PATH")
        if any(n in BENCHMARK_ORDER for n in names):
            if self.data_root is None:
                raise ValueError("data_root is needed for the benchmarks (the MMSeg data folder)")
            if not Path(self.data_root).is_dir():
                raise ValueError(f"data root {self.data_root} does not exist")
        if self.class_names not in CLASS_NAME_SETS:
            if not Path(self.class_names).is_file():
                raise ValueError(f"class_names {self.class_names}: not one of {', '.join(CLASS_NAME_SETS)} nor a file")
            if len(names) > 1:
                raise ValueError("class_names FILE needs a single dataset")
        if self.limit is not None:
            check_count("limit", self.limit)
        if set(self.fixed_windows) - set(WINDOW_KEYS):
            raise ValueError(f"fixed_windows: only {', '.join(WINDOW_KEYS)}")
        object.__setattr__(self, "fixed_windows", frozenset(self.fixed_windows))
        background = self.segmentation.background
        if self.background_sweep is not None:
            if background.threshold is not None:
                raise ValueError("give background_sweep or a background threshold, not both")
            sweep_thresholds(parse_sweep(self.background_sweep), background.score)  # ValueError: a bad grid
        if self.sweep_on is not None:
            if self.background_sweep is None:
                raise ValueError("sweep_on needs background_sweep")
            split_and_count(self.sweep_on, "sweep_on")
        if self.fewshot_from is not None:
            split, _ = split_and_count(self.fewshot_from, "fewshot_from")
            if split == "val" and self.sweep_on is not None and self.sweep_on.startswith("val:"):
                raise ValueError("fewshot_from val:N and sweep_on val:M would both hold out the first images: use "
                                 "train: for one of them")

    def replace(self, **changes) -> "EvaluationProtocol":
        return replace(self, **changes)

    @property
    def selection(self) -> Optional[Tuple[str, int]]:
        """(split, N) of ``sweep_on``, or None."""
        return None if self.sweep_on is None else split_and_count(self.sweep_on, "sweep_on")

    @property
    def fewshot(self) -> Optional[Tuple[str, int]]:
        """(split, N) of ``fewshot_from``, or None."""
        return None if self.fewshot_from is None else split_and_count(self.fewshot_from, "fewshot_from")

    def thresholds(self, dataset: str) -> Tuple[List[float], Optional[List[float]], str]:
        """(thresholds in confidence units, the sweep grid in cosine units or None, where they come from) for a
        with-background dataset: the sweep, the segmentation protocol's threshold, or the published one."""
        background = self.segmentation.background
        if self.background_sweep is not None:
            grid = parse_sweep(self.background_sweep)
            cosines = grid if background.score == "sigmoid" else None
            return sweep_thresholds(grid, background.score), cosines, "sweep"
        if background.threshold is not None:
            return [background.threshold], None, "--background-threshold"
        return [default_threshold(background.score, dataset)], None, "per-dataset default, not calibrated for SimZSS"

    def segmentation_for(self, dataset_protocol: dict) -> SegmentationProtocol:
        """The segmentation protocol of one dataset: a folder dataset's own window settings (dataset.json) win
        unless fixed; the background threshold is the evaluation's business (``thresholds``), not the engine's."""
        own = {k: v for k, v in dataset_protocol.items() if k not in self.fixed_windows}
        return self.segmentation.replace(background=self.segmentation.background.with_threshold(None), **own)

    def to_json(self) -> dict:
        """The protocol as the results JSON records it."""
        seg = self.segmentation
        return {"short_side": seg.short_side, "max_long_side": seg.max_long_side, "window": seg.window,
                "stride": seg.stride, "templates": seg.to_json()["templates"], "class_names": self.class_names,
                "synonyms": seg.synonyms, "pamr": seg.pamr, "background_score": seg.background.score,
                "background_scale": seg.background.scale, "background_sweep": self.background_sweep,
                "sweep_on": self.sweep_on, "fewshot_from": self.fewshot_from, "limit": self.limit}
