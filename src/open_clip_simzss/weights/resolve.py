"""From a reference to a model's source: which config, which preprocessing overlay, which weights file.

The one place references are resolved (README, "Python quick start"). A **model spec** names a config: a shipped
name (``simzss-vitb14``), ``local-dir:PATH`` (a model folder: ``open_clip_config.json`` and weights) or
``hf-hub:org/name``. A **checkpoint reference** names weights: a checkpoint file (training checkpoint, state
dict, safetensors), a model folder, ``local-dir:PATH``, ``hf-hub:org/name`` or a bare hub id ``org/name``.
:func:`resolve` turns either or both into a :class:`ModelSource`, once; ``build.build_model`` builds from it
without resolving again.
"""
import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from open_clip.factory import parse_model_name
from open_clip.pretrained import download_pretrained_from_hf

from ..model_configs import get_model_config
from .read import CheckpointError, one_line

DEFAULT_MODEL = "simzss-vitb14"
CONFIG_NAME = "open_clip_config.json"
SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"
BIN_WEIGHTS_NAME = "open_clip_pytorch_model.bin"
WEIGHT_NAMES = (SAFE_WEIGHTS_NAME, BIN_WEIGHTS_NAME)  # in the order a model folder's weights are looked for
# Config keys that do not change what a checkpoint is: where the tower's pretrained weights came from, and the
# default input size (the tower runs at any multiple of the patch size).
_NON_ARCH_VISION_KEYS = ("timm_model_pretrained", "pretrained_file", "image_size")
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".tar")


@dataclass
class ModelSource:
    """Where a model comes from (``model.source`` of a model built by this package).

    Attributes:
        spec: the model spec (``simzss-vitb14``, ``local-dir:PATH``, ``hf-hub:org/name``); give it to
            ``open_clip_simzss.get_tokenizer`` or use ``load_tokenizer``.
        model_cfg: the model's config as the spec gives it (``saved_config`` is what ``save_pretrained`` writes).
        weights: the weights file to load, or None: random weights (a plain config name, smoke tests).
        preprocess_cfg: a model folder's ``preprocess_cfg`` (mean, std, ...), merged over the tower's own.
        reference: the checkpoint reference as it was given (None when only a spec was).
    """

    spec: str
    model_cfg: dict
    weights: Optional[str] = None
    preprocess_cfg: Dict = field(default_factory=dict)
    reference: Optional[str] = None

    @property
    def random_weights(self) -> bool:
        return self.weights is None

    @property
    def saved_config(self) -> dict:
        return clean_model_config(self.model_cfg)


def clean_model_config(model_cfg: dict) -> dict:
    """The config to save with a full checkpoint: the tower's weights are in the file, so timm must not fetch
    them (``timm_model_pretrained: false``) and no local tower file is referenced (``pretrained_file``)."""
    cfg = copy.deepcopy(model_cfg)
    vision = cfg.setdefault("vision_cfg", {})
    vision["timm_model_pretrained"] = False
    vision.pop("pretrained_file", None)
    return cfg


def _find_weights(folder: Path) -> Optional[str]:
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return str(folder / name)
    return None


def resolve_spec(spec: str, cache_dir: Optional[str] = None) -> ModelSource:
    """The source of a model spec: its config, a model folder's (or hub repo's) preprocessing and weights.
    ValueError for an unknown name, FileNotFoundError for a folder without a config, hub errors as raised."""
    schema, identifier = parse_model_name(spec)
    if schema is None:
        return ModelSource(spec, get_model_config(identifier))
    if schema == "local-dir":
        folder = Path(identifier)
        config_path = folder / CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {folder} (expected a folder written by save_pretrained)")
        weights = _find_weights(folder)
    else:  # hf-hub
        config_path = download_pretrained_from_hf(identifier, filename=CONFIG_NAME, cache_dir=cache_dir)
        weights = download_pretrained_from_hf(identifier, cache_dir=cache_dir)
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    if "model_cfg" not in config:
        raise ValueError(f"{config_path} has no 'model_cfg'")
    return ModelSource(spec, config["model_cfg"], weights, config.get("preprocess_cfg", {}))


def source_of_spec(spec: str, cache_dir: Optional[str] = None) -> ModelSource:
    """:func:`resolve_spec` with one-line errors (CheckpointError)."""
    try:
        return resolve_spec(spec, cache_dir)
    except Exception as e:  # noqa: BLE001 - unknown name, missing folder/config, hub failure: one line each
        if spec.startswith("hf-hub:"):
            raise CheckpointError(f"cannot get {spec} from the Hugging Face hub (nor a local file of that name): "
                                  f"{one_line(e)[:240]}") from None
        raise CheckpointError(one_line(e)) from None


def is_hub_id(text: str) -> bool:
    """Looks like a Hugging Face repo id ("org/name") rather than a file name."""
    return bool(_HF_ID.match(text)) and not text.lower().endswith(_WEIGHT_SUFFIXES)


def checkpoint_spec(model: Optional[str], checkpoint: Optional[str]) -> tuple:
    """(model spec, weights file or None) that a model name and a checkpoint reference stand for, from the
    names alone (nothing is downloaded or read). CheckpointError for a reference that names nothing."""
    if checkpoint is None:
        return model or DEFAULT_MODEL, None
    checkpoint = str(checkpoint)
    if checkpoint.startswith(("hf-hub:", "local-dir:")):
        return checkpoint, None
    path = Path(checkpoint)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise CheckpointError(f"{path} is a folder without {CONFIG_NAME} (not a model folder)")
        return f"local-dir:{path}", None
    if path.is_file():
        return model or DEFAULT_MODEL, str(path)
    if is_hub_id(checkpoint):
        return f"hf-hub:{checkpoint}", None
    raise CheckpointError(f"checkpoint not found: {checkpoint}")


def _architecture(model_cfg: dict) -> dict:
    cfg = copy.deepcopy(model_cfg)
    cfg.pop("custom_text", None)
    for key in _NON_ARCH_VISION_KEYS:
        cfg.get("vision_cfg", {}).pop(key, None)
    return cfg


def _flat(d: dict, prefix: str = "") -> Dict[str, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_difference(a: dict, b: dict) -> List[str]:
    """Keys (dotted) where two model configs describe different models."""
    fa, fb = _flat(_architecture(a)), _flat(_architecture(b))
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def resolve(model: Optional[str] = None, checkpoint: Optional[str] = None,
            cache_dir: Optional[str] = None) -> ModelSource:
    """The source of a model name and/or a checkpoint reference (module docstring), with one-line errors
    (CheckpointError). ``model`` is optional when the checkpoint is a model folder or hub id (their config
    defines the model); when both are given they must describe the same model. Without a checkpoint, the
    spec's bundled weights (a model folder's), or none (random weights) for a plain config name."""
    spec, weights = checkpoint_spec(model, checkpoint)
    source = source_of_spec(spec, cache_dir)
    if model and spec != model:
        differs = config_difference(source_of_spec(model, cache_dir).model_cfg, source.model_cfg)
        if differs:
            raise CheckpointError(f"checkpoint {checkpoint} is for another model than {model} (config differs in "
                                  f"{', '.join(differs[:4])}); leave out --model to use the checkpoint's own config")
    if weights is not None:
        source.weights = weights
    source.reference = None if checkpoint is None else str(checkpoint)
    return source
