"""The segmentation protocol: how an image is segmented, in one object checked once where it is made
(docs/evaluation.md, "Inference"). The command line (``cli/common.py``), the app, the evaluation and Python
users all build this one object; the window engine (``engine.py``) and the ``Segmenter`` read it.

The defaults are TCL's protocol of the paper: CLIP's 80 prompt templates, MMSeg's keep-ratio resize to short
side 448 (long side at most 2048), 448x448 windows with stride 224, no PAMR, fp32, no background threshold.
"""
from dataclasses import asdict, dataclass, field, replace
from typing import Optional, Tuple, Union

from ..validation import check_count
from .background import DEFAULT_BACKGROUND_SCALE, DEFAULT_BACKGROUND_SCORE, BackgroundRule
from .classifier import DEFAULT_TEMPLATES, get_templates
from .windows import MAX_LONG_SIDE, SHORT_SIDE, STRIDE, WINDOW

# Inference precision (docs/evaluation.md, "Precision"): "amp_bf16" autocasts the vision tower's forward on the
# windows only; its dense tokens are cast to fp32 before normalising and scoring, the text classifier stays fp32.
INFERENCE_PRECISIONS = ("fp32", "amp_bf16")
SYNONYM_RULES = ("mean", "max")
# The window settings a folder dataset's dataset.json may set for itself (evaluation/datasets.py).
WINDOW_KEYS = ("short_side", "max_long_side", "window", "stride")


@dataclass(frozen=True)
class SegmentationProtocol:
    """How images are segmented (module docstring). Checked when made (ValueError, one line naming the field).

    Attributes:
        templates: a template set name (``TEMPLATE_SETS``) or a sequence of strings containing "{}".
        synonyms: "mean" (a class's synonyms averaged into one query) or "max" (its best synonym per patch).
        short_side, max_long_side: MMSeg's ``img_scale=(max_long_side, short_side)``, keep ratio.
        window, stride: the sliding window and its stride, in pixels of the resized image.
        pamr: refine each window's upsampled scores with PAMR.
        precision: "fp32" or "amp_bf16" (``INFERENCE_PRECISIONS``).
        background: the background rule (its threshold None: no background).
    """

    templates: Union[str, Tuple[str, ...]] = DEFAULT_TEMPLATES
    synonyms: str = "mean"
    short_side: int = SHORT_SIDE
    max_long_side: int = MAX_LONG_SIDE
    window: int = WINDOW
    stride: int = STRIDE
    pamr: bool = False
    precision: str = "fp32"
    background: BackgroundRule = field(default_factory=BackgroundRule)

    def __post_init__(self):
        if not isinstance(self.templates, str):
            object.__setattr__(self, "templates", tuple(self.templates))
        get_templates(self.templates)  # ValueError for an unknown set or a template without "{}"
        if self.synonyms not in SYNONYM_RULES:
            raise ValueError(f"synonyms must be one of {', '.join(SYNONYM_RULES)}, got {self.synonyms!r}")
        for key in WINDOW_KEYS:
            check_count(key, getattr(self, key))
        if self.precision not in INFERENCE_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(INFERENCE_PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.background, BackgroundRule):
            raise TypeError("background must be a BackgroundRule")

    @classmethod
    def of(cls, background_threshold: Optional[float] = None, background_score: str = DEFAULT_BACKGROUND_SCORE,
           background_scale: float = DEFAULT_BACKGROUND_SCALE, **fields) -> "SegmentationProtocol":
        """The protocol from flat keyword arguments, the background's as ``background_threshold``,
        ``background_score`` and ``background_scale`` (what ``Segmenter(...)`` and the commands take)."""
        return cls(background=BackgroundRule(background_score, background_scale, background_threshold), **fields)

    def replace(self, **changes) -> "SegmentationProtocol":
        return replace(self, **changes)

    @property
    def template_strings(self) -> Tuple[str, ...]:
        return get_templates(self.templates)

    def to_json(self) -> dict:
        """The protocol as JSON-able values (template sets by name, explicit templates as a list)."""
        out = asdict(self)
        out["templates"] = self.templates if isinstance(self.templates, str) else list(self.templates)
        return out

