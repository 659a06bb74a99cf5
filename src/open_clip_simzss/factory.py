"""One factory API, with OpenCLIP's signatures: ``create_model``, ``create_model_and_transforms``,
``create_model_from_pretrained``.

Model configs are OpenCLIP JSON configs in ``model_configs/``, registered with ``open_clip.add_model_config``
when ``open_clip_simzss`` is imported, so ``open_clip.list_models()`` and ``open_clip.get_tokenizer()`` know
them. OpenCLIP 3.3's factory has no hook for a custom model class, so SimZSS models are built by *this*
factory; ``open_clip.create_model("simzss-vitb14", force_image_size=224)`` still builds the plain OpenCLIP
view of a token-pooled config (global features only, same state-dict keys), which is what makes our checkpoints
usable by OpenCLIP-only tools. We do not monkeypatch OpenCLIP.

Model names accept OpenCLIP's schemas: a built-in name (``simzss-vitb14``), ``local-dir:PATH`` (a folder with
``open_clip_config.json`` and weights) and ``hf-hub:org/name``.
"""
import copy
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import open_clip
import torch
from open_clip.factory import parse_model_name
from open_clip.pretrained import download_pretrained_from_hf
from open_clip.transform import AugmentationCfg, PreprocessCfg, image_transform_v2, merge_preprocess_dict

from .denoiser import load_denoiser
from .model import SimZSS
from . import weights

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
CONFIG_NAME = "open_clip_config.json"
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# Local weights for the vision tower when the hub is out of reach (a timm or original DINOv2 checkpoint).
VISION_WEIGHTS_ENV = "SIMZSS_VISION_WEIGHTS"


def list_models():
    """The SimZSS model configs shipped with the package."""
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))


def register_model_configs():
    """Make our JSON configs known to OpenCLIP (``list_models``, ``get_model_config``, ``get_tokenizer``)."""
    if not set(list_models()) <= set(open_clip.list_models()):
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def _find_weights(folder: Path) -> Optional[str]:
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return str(folder / name)
    return None


def resolve_model_config(model_name: str, cache_dir: Optional[str] = None) -> Tuple[dict, dict, Optional[str]]:
    """Returns (model_cfg, preprocess_cfg overlay, weights file or None) for a name with or without schema."""
    schema, identifier = parse_model_name(model_name)
    if schema is None:
        cfg = open_clip.get_model_config(identifier)
        if cfg is None or identifier not in list_models():
            raise ValueError(f"unknown SimZSS model {identifier!r}; available: {', '.join(list_models())}")
        return copy.deepcopy(cfg), {}, None
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
    return config["model_cfg"], config.get("preprocess_cfg", {}), weights


def _set_device_and_precision(model: torch.nn.Module, device, precision: str):
    if precision in ("fp16", "bf16", "pure_fp16", "pure_bf16"):
        model.to(device=device, dtype=torch.float16 if "fp16" in precision else torch.bfloat16)
        if precision in ("fp16", "bf16"):
            # Like OpenCLIP's mixed precision: LayerNormFp32 modules keep fp32 weights.
            for m in model.modules():
                if isinstance(m, open_clip.transformer.LayerNormFp32):
                    m.float()
    else:
        model.to(device=device)


def create_model(
        model_name: str,
        pretrained: Optional[str] = None,
        load_weights: bool = True,
        precision: str = "fp32",
        device: Union[str, torch.device] = "cpu",
        force_image_size: Optional[int] = None,
        force_context_length: Optional[int] = None,
        force_preprocess_cfg: Optional[Dict[str, Any]] = None,
        pretrained_image: bool = False,
        pretrained_image_path: Optional[str] = None,
        denoiser_weights: Optional[str] = None,
        cache_dir: Optional[str] = None,
        output_dict: Optional[bool] = None,
        require_pretrained: bool = False,
        weights_only: bool = True,
        **model_kwargs,
) -> SimZSS:
    """Build a SimZSS model (OpenCLIP's ``create_model`` signature).

    Args:
        model_name: a SimZSS config name, ``local-dir:PATH`` or ``hf-hub:org/name``.
        pretrained: a SimZSS checkpoint file (OpenCLIP training checkpoint, state dict or safetensors).
        pretrained_image: load the vision tower's pretrained weights with timm (Hugging Face hub) when no
            full checkpoint is loaded.
        pretrained_image_path: a local vision-tower weights file (timm or original DINOv2 format), read by
            timm's loader; defaults to ``$SIMZSS_VISION_WEIGHTS``. Works offline.
        denoiser_weights: DVT's released weights file for a config with a denoiser (``simzss-vitb14-dvt``);
            defaults to ``$SIMZSS_DENOISER_WEIGHTS``, else the Hugging Face hub. Not needed (and ignored) when a
            full SimZSS checkpoint is loaded; no weights at all is an error (denoiser.py).
    """
    model_cfg, preprocess_overlay, checkpoint = resolve_model_config(model_name, cache_dir)
    if pretrained:
        if checkpoint is not None:
            logging.warning(f"ignoring pretrained={pretrained!r}: {model_name} brings its own weights")
        elif not os.path.isfile(pretrained):
            raise FileNotFoundError(f"checkpoint not found: {pretrained}")
        else:
            checkpoint = pretrained
    if not load_weights:
        checkpoint = None
    if require_pretrained and checkpoint is None:
        raise RuntimeError(f"no SimZSS weights found for {model_name!r}")

    vision_cfg = model_cfg["vision_cfg"]
    pretrained_image_path = pretrained_image_path or os.environ.get(VISION_WEIGHTS_ENV) or None
    if checkpoint is None and pretrained_image_path:
        if not os.path.isfile(pretrained_image_path):
            raise FileNotFoundError(f"vision tower weights not found: {pretrained_image_path}")
        vision_cfg["pretrained_file"] = pretrained_image_path
    else:
        vision_cfg["timm_model_pretrained"] = bool(pretrained_image and checkpoint is None)
    if force_image_size is not None:
        vision_cfg["image_size"] = force_image_size
    if force_context_length is not None:
        model_cfg["text_cfg"]["context_length"] = force_context_length
    model_cfg.pop("custom_text", None)
    model_cfg.update(model_kwargs)
    if output_dict is not None:
        model_cfg["output_dict"] = output_dict

    model = SimZSS(**model_cfg, cast_dtype=open_clip.get_cast_dtype(precision))
    if checkpoint:
        logging.info(f"loading SimZSS weights from {checkpoint}")
        weights.load_weights(model, checkpoint, what=model_name, weights_only=weights_only)
    elif load_weights:
        load_denoiser(model.visual.denoiser, denoiser_weights, cache_dir, what=model_name)
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
    preprocess = merge_preprocess_dict(preprocess, preprocess_overlay)
    preprocess = merge_preprocess_dict(preprocess, force_preprocess_cfg or {})
    open_clip.set_model_preprocess_cfg(model, preprocess)
    return model


def image_transforms(model, aug_cfg=None):
    """(train, eval) transforms of a model built by this factory (its ``preprocess_cfg``)."""
    cfg = PreprocessCfg(**open_clip.get_model_preprocess_cfg(model))
    return image_transform_v2(cfg, is_train=True, aug_cfg=aug_cfg), image_transform_v2(cfg, is_train=False)


def create_model_and_transforms(
        model_name: str,
        pretrained: Optional[str] = None,
        image_mean: Optional[Tuple[float, ...]] = None,
        image_std: Optional[Tuple[float, ...]] = None,
        image_interpolation: Optional[str] = None,
        image_resize_mode: Optional[str] = None,
        aug_cfg: Optional[Union[Dict[str, Any], AugmentationCfg]] = None,
        **kwargs,
):
    """OpenCLIP's ``create_model_and_transforms`` for SimZSS: returns (model, preprocess_train, preprocess_val)."""
    force = {k: v for k, v in dict(mean=image_mean, std=image_std, interpolation=image_interpolation,
                                   resize_mode=image_resize_mode).items() if v is not None}
    model = create_model(model_name, pretrained, force_preprocess_cfg=force or None, **kwargs)
    return (model, *image_transforms(model, aug_cfg))


def create_model_from_pretrained(model_name: str, pretrained: Optional[str] = None, return_transform: bool = True,
                                 **kwargs):
    """OpenCLIP's ``create_model_from_pretrained``: weights are required; returns (model, preprocess_val)."""
    model = create_model(model_name, pretrained, require_pretrained=True, **kwargs)
    return (model, image_transforms(model)[1]) if return_transform else model
