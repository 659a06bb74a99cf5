"""One way to load a model: :func:`load_model` takes a model name and a checkpoint reference and returns the
model and its preprocessing, with the same one-line errors (:class:`~open_clip_simzss.weights.CheckpointError`)
for every command and for Python.

A checkpoint reference is any of: a checkpoint file (training checkpoint, state dict, safetensors), a model
folder (written by ``save_pretrained``), ``local-dir:PATH``, ``hf-hub:org/name`` or a bare hub id ``org/name``.
"""
import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import open_clip
import torch

from .factory import CONFIG_NAME, create_model, image_transforms, resolve_model_config
from .weights import CheckpointError, assign_weights, fit_state_dict, load_weights, one_line, shapes

DEFAULT_MODEL = "simzss-vitb14"
# Config keys that do not change what a checkpoint is: where the tower's pretrained weights came from, and the
# default input size (the tower runs at any multiple of the patch size).
_NON_ARCH_VISION_KEYS = ("timm_model_pretrained", "pretrained_file", "image_size")
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".tar")


def resolve_device(name: Optional[Union[str, torch.device]] = None) -> torch.device:
    """``name`` or, when None, CUDA if available else CPU; ValueError (one line, starting with "device") for a
    device that cannot run a model here: an unknown name, ``meta`` (tensors without data), CUDA or MPS when absent, a GPU index beyond
    the GPUs present, any other device type."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {str(name)!r} is unknown (cpu, cuda or cuda:N)") from None
    if device.type == "meta":
        raise ValueError("device meta holds no data and cannot run a model: use cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device cuda requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {device} requested but there are {torch.cuda.device_count()} CUDA devices "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("device mps requested but MPS is not available")
    elif device.type != "cpu":
        raise ValueError(f"device {device.type} is not supported (cpu, cuda or cuda:N)")
    return device


# --- model configs ----------------------------------------------------------------------------------------------
def clean_model_config(model_cfg: dict) -> dict:
    """The config to save with a full checkpoint: the tower's weights are in the file, so timm must not fetch
    them (``timm_model_pretrained: false``) and no local tower file is referenced (``pretrained_file``)."""
    cfg = copy.deepcopy(model_cfg)
    vision = cfg.setdefault("vision_cfg", {})
    vision["timm_model_pretrained"] = False
    vision.pop("pretrained_file", None)
    return cfg


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


def model_config(model: str, cache_dir: Optional[str] = None) -> Tuple[dict, dict, Optional[str]]:
    """``factory.resolve_model_config`` with one-line errors (CheckpointError)."""
    try:
        return resolve_model_config(model, cache_dir)
    except Exception as e:  # noqa: BLE001 - unknown name, missing folder/config, hub failure: one line each
        if model.startswith("hf-hub:"):
            raise CheckpointError(f"cannot get {model} from the Hugging Face hub (nor a local file of that name): "
                                  f"{one_line(e)[:240]}") from None
        raise CheckpointError(one_line(e)) from None


def model_structure(model_cfg: dict) -> Dict[str, Tuple[int, ...]]:
    """Parameter names and shapes of the SimZSS model a config describes, built without memory (meta device)."""
    from .model import SimZSS
    cfg = clean_model_config(model_cfg)
    cfg.pop("custom_text", None)
    try:
        with torch.device("meta"):
            model = SimZSS(**cfg)
    except (NotImplementedError, RuntimeError):  # an init that meta tensors do not support: build it for real
        model = SimZSS(**cfg)
    return shapes(model.state_dict())


# --- checkpoint references --------------------------------------------------------------------------------------
def is_hub_id(text: str) -> bool:
    """Looks like a Hugging Face repo id ("org/name") rather than a file name."""
    return bool(_HF_ID.match(text)) and not text.lower().endswith(_WEIGHT_SUFFIXES)


def resolve_checkpoint(model: Optional[str], checkpoint: Optional[str]) -> Tuple[str, Optional[str]]:
    """(model spec for the factory, weights file or None) from a model name and a checkpoint reference."""
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


def build_model(spec: str, weights=None, device: Union[str, torch.device] = "cpu", precision: str = "fp32",
                cache_dir: Optional[str] = None, what: Optional[str] = None, **model_kwargs) -> torch.nn.Module:
    """``create_model(spec, load_weights=False, ...)`` then strict loading of ``weights`` (file or state dict).

    With weights (fp32), the model is first built on the meta device and the checkpoint's tensors are assigned
    to it: random initialisation would take seconds for a ViT-B/L tower only to be overwritten.
    """
    what = what or spec
    try:
        if weights is not None and precision == "fp32":
            try:
                with torch.device("meta"):
                    net = create_model(spec, load_weights=False, device="meta", cache_dir=cache_dir, **model_kwargs)
            except Exception:  # noqa: BLE001 - anything meta tensors cannot do: build it the usual way below
                net = None
            if net is not None:
                state = fit_state_dict(net, weights, what)
                if assign_weights(net, state):
                    return net.to(device)
                weights = state
        net = create_model(spec, load_weights=False, device=device, precision=precision, cache_dir=cache_dir,
                           **model_kwargs)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken config or tower: one line
        raise CheckpointError(f"cannot build model {spec}: {type(e).__name__}: {one_line(e)}") from None
    return load_weights(net, weights, what) if weights is not None else net


# --- the loading function ---------------------------------------------------------------------------------------
@dataclass
class ModelSource:
    """Where a model returned by :func:`load_model` came from (``model.source``).

    Attributes:
        spec: the factory name (``simzss-vitb14``, ``local-dir:PATH``, ``hf-hub:org/name``); give it to
            ``open_clip_simzss.get_tokenizer`` or use :func:`load_tokenizer`.
        weights: the weights file that was loaded, or None: random weights (a plain config name, smoke tests).
        model_cfg: the model's config, as ``save_pretrained`` writes it.
    """

    spec: str
    weights: Optional[str]
    model_cfg: dict

    @property
    def random_weights(self) -> bool:
        return self.weights is None


def load_model(model: Optional[str] = None, checkpoint: Optional[str] = None,
               device: Optional[Union[str, torch.device]] = None, precision: str = "fp32",
               cache_dir: Optional[str] = None) -> Tuple[torch.nn.Module, Callable]:
    """Build a SimZSS model, load its weights and return ``(model, preprocess)`` (OpenCLIP's evaluation
    transform); errors are one line (``CheckpointError``). ``model.source`` (:class:`ModelSource`) says what
    was loaded; the tokenizer is ``load_tokenizer(model)``.

    Args:
        model: a config name (``simzss-vitb14``), ``local-dir:PATH`` or ``hf-hub:org/name``; optional when the
            checkpoint is a model folder or hub id (their config defines the model). When both are given they
            must describe the same model.
        checkpoint: a checkpoint file (training checkpoint, state dict, safetensors), a model folder,
            ``local-dir:PATH``, ``hf-hub:org/name`` or a hub id. None: the model's bundled weights, or random
            weights for a plain config name (smoke tests).
        device: default CUDA when available, else CPU.
        precision: OpenCLIP's precision names (``fp32``, ``bf16``, ``fp16``, ``pure_bf16``, ``pure_fp16``).
    """
    spec, weights = resolve_checkpoint(model, checkpoint)
    model_cfg, _, bundled = model_config(spec, cache_dir)
    if model and spec != model:
        differs = config_difference(model_config(model, cache_dir)[0], model_cfg)
        if differs:
            raise CheckpointError(f"checkpoint {checkpoint} is for another model than {model} (config differs in "
                                  f"{', '.join(differs[:4])}); leave out --model to use the checkpoint's own config")
    try:
        device = resolve_device(device)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    weights = weights or bundled
    net = build_model(spec, weights, device=device, precision=precision, cache_dir=cache_dir, what=model or spec)
    net.eval()
    net.source = ModelSource(spec, weights, clean_model_config(model_cfg))
    return net, image_transforms(net)[1]


def load_tokenizer(model: torch.nn.Module, cache_dir: Optional[str] = None):
    """The OpenCLIP tokenizer of a model returned by :func:`load_model`."""
    source = getattr(model, "source", None)
    if not isinstance(source, ModelSource):
        raise CheckpointError("the model was not loaded by load_model: use open_clip_simzss.get_tokenizer(NAME)")
    try:
        return open_clip.get_tokenizer(source.spec, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot build the tokenizer of {source.spec}: {one_line(e)}") from None
