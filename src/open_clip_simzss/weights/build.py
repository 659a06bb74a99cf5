"""From a :class:`~.resolve.ModelSource` to a model: build it once, read its weights once, set its preprocessing.

:func:`build_model` is what ``factory.create_model`` and ``load.load_model`` both call. With a weights file, the
model is first built on the meta device and the checkpoint's tensors are assigned to it (in fp32): random
initialisation would take seconds for a ViT-B/L tower only to be overwritten. Without one, the vision tower's
pretrained weights come from timm (``pretrained_image``) or a local file (``pretrained_image_path``,
``$SIMZSS_VISION_WEIGHTS``), and a DVT denoiser's from its released file (``dvt.py``); the text tower is random.
"""
import copy
import logging
import os
from typing import Any, Dict, Optional, Tuple, Union

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

from ..model import SimZSS
from .dvt import load_denoiser
from .read import CheckpointError, assign_weights, fit_state_dict, load_weights, one_line, shapes
from .resolve import ModelSource, clean_model_config

# Local weights for the vision tower when the hub is out of reach (a timm or original DINOv2 checkpoint).
VISION_WEIGHTS_ENV = "SIMZSS_VISION_WEIGHTS"
# OpenCLIP's precision names: the dtype the model's weights are held in (``create_model(precision=...)``); the
# trainer's autocast ones (``python -m training.main --precision amp``) keep the weights in fp32.
MODEL_PRECISIONS = ("fp32", "bf16", "fp16", "pure_bf16", "pure_fp16")
AUTOCAST_PRECISIONS = ("amp", "amp_bf16", "amp_bfloat16")


def resolve_device(name: Optional[Union[str, torch.device]] = None) -> torch.device:
    """``name`` or, when None, CUDA if available else CPU; ValueError (one line, starting with "device") for a
    device that cannot run a model here: an unknown name, ``meta`` (tensors without data), CUDA or MPS when
    absent, a GPU index beyond the GPUs present, any other device type."""
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


def model_structure(model_cfg: dict) -> Dict[str, Tuple[int, ...]]:
    """Parameter names and shapes of the SimZSS model a config describes, built without memory (meta device)."""
    cfg = clean_model_config(model_cfg)
    cfg.pop("custom_text", None)
    try:
        with torch.device("meta"):
            model = SimZSS(**cfg)
    except (NotImplementedError, RuntimeError):  # an init that meta tensors do not support: build it for real
        model = SimZSS(**cfg)
    return shapes(model.state_dict())


def check_precision(precision: str) -> str:
    """``precision`` when it is one of OpenCLIP's names; ValueError (one line) otherwise."""
    if precision not in MODEL_PRECISIONS + AUTOCAST_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(MODEL_PRECISIONS + AUTOCAST_PRECISIONS)}, "
                         f"got {precision!r}")
    return precision


def _set_device_and_precision(model: torch.nn.Module, device, precision: str):
    """OpenCLIP's precisions: the ``MODEL_PRECISIONS`` but fp32 cast the weights; fp32 and the autocast ones keep
    them in fp32."""
    if precision not in ("fp16", "bf16", "pure_fp16", "pure_bf16"):
        model.to(device=device)
        return
    model.to(device=device, dtype=torch.float16 if "fp16" in precision else torch.bfloat16)
    if precision in ("fp16", "bf16"):
        # Like OpenCLIP's mixed precision: LayerNormFp32 modules keep fp32 weights.
        for m in model.modules():
            if isinstance(m, open_clip.transformer.LayerNormFp32):
                m.float()


def _model_config(source: ModelSource, with_weights: bool, pretrained_image: bool,
                  pretrained_image_path: Optional[str], force_image_size: Optional[int],
                  force_context_length: Optional[int], model_kwargs: dict) -> dict:
    """The SimZSS constructor's arguments for ``source``: where the tower's weights come from (nowhere when a
    full checkpoint brings them) and the forced sizes."""
    cfg = copy.deepcopy(source.model_cfg)
    vision_cfg = cfg["vision_cfg"]
    pretrained_image_path = pretrained_image_path or os.environ.get(VISION_WEIGHTS_ENV) or None
    if not with_weights and pretrained_image_path:
        if not os.path.isfile(pretrained_image_path):
            raise FileNotFoundError(f"vision tower weights not found: {pretrained_image_path}")
        vision_cfg["pretrained_file"] = pretrained_image_path
    else:
        vision_cfg["timm_model_pretrained"] = bool(pretrained_image and not with_weights)
    if force_image_size is not None:
        vision_cfg["image_size"] = force_image_size
    if force_context_length is not None:
        cfg["text_cfg"]["context_length"] = force_context_length
    cfg.pop("custom_text", None)
    cfg.update(model_kwargs)
    return cfg


def _build_with_weights(cfg: dict, weights, what: str, weights_only: bool):
    """(model, state): the fp32 model built on the meta device with the checkpoint's tensors assigned (no random
    init), or (None, state) when it cannot be built or filled that way (the state is then loaded the usual way);
    state is None when the meta device cannot build this model at all."""
    try:
        with torch.device("meta"):
            model = SimZSS(**cfg)
    except Exception:  # noqa: BLE001 - anything meta tensors cannot do: the caller builds it the usual way
        return None, None
    state = fit_state_dict(model, weights, what, weights_only)
    return (model if assign_weights(model, state) else None), state


def build_model(
        source: ModelSource,
        load_weights_file: bool = True,
        precision: str = "fp32",
        device: Union[str, torch.device] = "cpu",
        force_image_size: Optional[int] = None,
        force_context_length: Optional[int] = None,
        force_preprocess_cfg: Optional[Dict[str, Any]] = None,
        pretrained_image: bool = False,
        pretrained_image_path: Optional[str] = None,
        denoiser_weights: Optional[str] = None,
        cache_dir: Optional[str] = None,
        weights_only: bool = True,
        what: Optional[str] = None,
        **model_kwargs,
) -> SimZSS:
    """The SimZSS model of ``source`` with its weights (module docstring); ``model.source`` is ``source``.

    Args:
        load_weights_file: False builds the architecture only (``source.weights`` is not read).
        precision: OpenCLIP's precision names (``MODEL_PRECISIONS``).
        pretrained_image, pretrained_image_path: the vision tower's weights when no full checkpoint is loaded.
        denoiser_weights: DVT's released weights file for a config with a denoiser; defaults to
            ``$SIMZSS_DENOISER_WEIGHTS``, else the Hugging Face hub (``dvt.py``).
        what: the model's name in error messages (default the spec).
        model_kwargs: more SimZSS constructor arguments (``output_dict``, ``simzss_variant``).
    """
    what = what or source.spec
    check_precision(precision)
    weights = source.weights if load_weights_file else None
    cfg = _model_config(source, weights is not None, pretrained_image, pretrained_image_path, force_image_size,
                        force_context_length, model_kwargs)
    model = None
    if weights is not None:
        logging.info(f"loading SimZSS weights from {weights}")
        if precision == "fp32":
            model, state = _build_with_weights(cfg, weights, what, weights_only)
            weights = weights if state is None else state  # read once
            if model is not None:
                model.to(device)
    if model is None:
        model = SimZSS(**cfg, cast_dtype=open_clip.get_cast_dtype(precision))
        if weights is not None:
            load_weights(model, weights, what, weights_only)
        elif load_weights_file:
            load_denoiser(model.visual.denoiser, denoiser_weights, cache_dir, what=what)
        _set_device_and_precision(model, device, precision)

    # Preprocessing uses the tower's own statistics (ImageNet mean/std for DINOv2), not CLIP's: docs/method.md.
    tower_cfg = model.visual.pretrained_cfg
    preprocess = dict(
        size=model.visual.image_size,
        mean=tuple(tower_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(tower_cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        interpolation=tower_cfg.get("interpolation", "bicubic"),
        resize_mode="shortest",
    )
    preprocess = merge_preprocess_dict(preprocess, source.preprocess_cfg)
    preprocess = merge_preprocess_dict(preprocess, force_preprocess_cfg or {})
    open_clip.set_model_preprocess_cfg(model, preprocess)
    model.source = source
    return model


def build_checked(source: ModelSource, **kwargs) -> SimZSS:
    """:func:`build_model` with one-line errors (CheckpointError) for a broken config or tower: what commands
    and ``load_model`` use."""
    try:
        return build_model(source, **kwargs)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken config or tower: one line
        raise CheckpointError(f"cannot build model {source.spec}: {type(e).__name__}: {one_line(e)}") from None


def image_transforms(model, aug_cfg=None):
    """(train, eval) transforms of a model built by this package (its ``preprocess_cfg``)."""
    cfg = PreprocessCfg(**open_clip.get_model_preprocess_cfg(model))
    return image_transform_v2(cfg, is_train=True, aug_cfg=aug_cfg), image_transform_v2(cfg, is_train=False)
