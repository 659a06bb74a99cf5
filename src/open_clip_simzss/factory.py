"""One factory API, with OpenCLIP's signatures: ``create_model``, ``create_model_and_transforms``,
``create_model_from_pretrained``.

Model configs are OpenCLIP JSON configs (``model_configs/``), registered with ``open_clip.add_model_config`` when
``open_clip_simzss`` is imported, so ``open_clip.list_models()`` and ``open_clip.get_tokenizer()`` know them.
OpenCLIP 3.3's factory has no hook for a custom model class, so SimZSS models are built by *this* factory, and
OpenCLIP's is left as it is: ``open_clip.create_model("simzss-vitb14", force_image_size=224)`` still builds the
plain OpenCLIP view of a token-pooled config (global features only, same state-dict keys), which is what makes our
checkpoints usable by OpenCLIP-only tools (README, "Interoperability with OpenCLIP").

Model names accept OpenCLIP's schemas: a built-in name (``simzss-vitb14``), ``local-dir:PATH`` (a folder with
``open_clip_config.json`` and weights) and ``hf-hub:org/name``. The road is the one ``load_model`` takes:
``weights.resolve`` (name -> config and weights file, once), then ``weights.build`` (model, weights read once).
"""
import logging
import os
from typing import Any, Dict, Optional, Tuple, Union

import torch
from open_clip.transform import AugmentationCfg

from .model import SimZSS
from .weights.build import build_model, image_transforms
from .weights.resolve import resolve_spec


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
            full SimZSS checkpoint is loaded; no weights at all is an error (``weights/dvt.py``).
    """
    source = resolve_spec(model_name, cache_dir)
    if pretrained:
        if source.weights is not None:
            logging.warning(f"ignoring pretrained={pretrained!r}: {model_name} brings its own weights")
        elif not os.path.isfile(pretrained):
            raise FileNotFoundError(f"checkpoint not found: {pretrained}")
        else:
            source.weights = source.reference = str(pretrained)
    if require_pretrained and (source.weights is None or not load_weights):
        raise RuntimeError(f"no SimZSS weights found for {model_name!r}")
    if output_dict is not None:
        model_kwargs["output_dict"] = output_dict
    return build_model(source, load_weights_file=load_weights, precision=precision, device=device,
                       force_image_size=force_image_size, force_context_length=force_context_length,
                       force_preprocess_cfg=force_preprocess_cfg, pretrained_image=pretrained_image,
                       pretrained_image_path=pretrained_image_path, denoiser_weights=denoiser_weights,
                       cache_dir=cache_dir, weights_only=weights_only, what=model_name, **model_kwargs)


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
