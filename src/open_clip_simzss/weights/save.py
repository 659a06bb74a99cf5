"""Model folders: save a model as a self-contained folder, and export a training checkpoint to one.

A **model folder** has OpenCLIP's hub layout, the one ``open_clip.push_to_hf_hub`` uploads::

    open_clip_config.json          {"model_cfg": {...}, "preprocess_cfg": {"mean", "std", "interpolation", "resize_mode"}}
    open_clip_model.safetensors    the state dict (``open_clip_pytorch_model.bin`` too with --format both)

``model_cfg`` is the SimZSS config with ``timm_model_pretrained: false`` and no ``pretrained_file`` (the folder
holds every weight; loading it never reaches for timm's pretrained tower). Load it with
``open_clip_simzss.load_model(checkpoint=FOLDER)`` or ``create_model("local-dir:FOLDER")``; upload it with
``hub.push_to_hub``; the authors' released checkpoints become model folders with ``authors``. The command is
``simzss-checkpoint`` (``export``, ``convert``, ``push``).
"""
import json
import re
from pathlib import Path
from typing import Dict, Optional, Union

import open_clip
import torch

from ..atomic import atomic_path, write_error, write_file
from .build import build_checked, model_structure
from .read import CheckpointError, mismatch, shapes
from .resolve import BIN_WEIGHTS_NAME, CONFIG_NAME, SAFE_WEIGHTS_NAME, clean_model_config, source_of_spec

# save_pretrained's safe_serialization for each --format of the command
FORMATS = {"safetensors": True, "bin": False, "both": "both"}


def preprocess_config(model) -> dict:
    """The ``preprocess_cfg`` OpenCLIP's ``save_config_for_hf`` writes: mean, std, interpolation, resize_mode."""
    cfg = open_clip.get_model_preprocess_cfg(model)
    out = {k: list(cfg[k]) if isinstance(cfg[k], tuple) else cfg[k]
           for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}
    if "mean" not in out or "std" not in out:
        raise CheckpointError("the model has no preprocess mean/std (build it with open_clip_simzss.create_model)")
    return out


def _model_cfg_for(model, model_cfg: Optional[dict], model_name: Optional[str]) -> dict:
    if model_cfg is None and model_name is not None:
        model_cfg = source_of_spec(model_name).model_cfg
    if model_cfg is None:
        model_cfg = getattr(getattr(model, "source", None), "model_cfg", None)
    if model_cfg is None:
        raise CheckpointError("which config is this model? pass model_name= (e.g. 'simzss-vitb14') or model_cfg=")
    return clean_model_config(model_cfg)


def save_pretrained(model, save_directory: Union[str, Path], model_name: Optional[str] = None,
                    model_cfg: Optional[dict] = None, preprocess_cfg: Optional[dict] = None,
                    safe_serialization: Union[bool, str] = True) -> Path:
    """Write a self-contained model folder (module docstring) and return its path.

    Args:
        model: a SimZSS model.
        model_name / model_cfg: its config (a name is resolved like ``create_model`` does); default: the config
            the model was built with (``model.source``). It is checked against the model's parameters.
        preprocess_cfg: default: the model's own (``open_clip.get_model_preprocess_cfg``).
        safe_serialization: True -> safetensors, False -> ``open_clip_pytorch_model.bin``, "both" (what
            ``open_clip.push_to_hf_hub`` uploads).
    """
    if safe_serialization not in (True, False, "both"):
        raise ValueError("safe_serialization must be True, False or 'both'")
    cfg = _model_cfg_for(model, model_cfg, model_name)
    state = model.state_dict()
    problem = mismatch(model_structure(cfg), shapes(state), "the config's model", "this model")
    if problem:
        raise CheckpointError(f"the config does not describe this model: {problem}")
    folder = Path(save_directory)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder} is a file, not a folder")
    # Contiguous CPU copies; safetensors refuses tensors that share memory, so shared ones are cloned.
    seen, tensors = set(), {}
    for k, v in state.items():
        v = v.detach().to("cpu").contiguous()
        if v.data_ptr() in seen and v.numel():
            v = v.clone()
        seen.add(v.data_ptr())
        tensors[k] = v
    config = {"model_cfg": cfg, "preprocess_cfg": preprocess_cfg or preprocess_config(model)}

    def write_into(target: Path):
        if safe_serialization in (True, "both"):
            import safetensors.torch
            payload = safetensors.torch.save(tensors, metadata={"format": "pt"})
            write_file(target / SAFE_WEIGHTS_NAME, lambda handle: handle.write(payload))
        if safe_serialization in (False, "both"):
            write_file(target / BIN_WEIGHTS_NAME, lambda handle: torch.save(tensors, handle))
        text = json.dumps(config, indent=2, allow_nan=False) + "\n"
        write_file(target / CONFIG_NAME, lambda handle: handle.write(text.encode("utf-8")))

    # A new folder appears complete or not at all (written as a temporary folder, then renamed); in an existing
    # one (which may hold other files) each file is replaced atomically. Either way no partial file is left.
    if folder.is_dir():
        write_into(folder)
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(folder, error) from None
    with atomic_path(folder) as temporary:
        temporary.mkdir()
        write_into(temporary)
    return folder


def training_params(checkpoint: Union[str, Path]) -> Dict[str, str]:
    """``params.txt`` of the run a training checkpoint belongs to (``logs/NAME/checkpoints/epoch_N.pt``), or {}."""
    params = Path(checkpoint).resolve().parent.parent / "params.txt"
    if not params.is_file():
        return {}
    out = {}
    for line in params.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            out[key.strip()] = value.strip()
    return out


def export_checkpoint(checkpoint: Union[str, Path], output: Union[str, Path], model_name: Optional[str] = None,
                      safe_serialization: Union[bool, str] = True) -> Path:
    """A training checkpoint (or state dict) -> model folder. Without ``model_name``, the run's ``params.txt``
    says which config was trained (with its ``--force-image-size`` / ``--force-context-length``)."""
    params = training_params(checkpoint)
    overrides = {}
    if model_name is None:
        model_name = params.get("model")
        if not model_name:
            raise CheckpointError(f"no params.txt next to {checkpoint}'s run: pass --model")
        for key in ("force_image_size", "force_context_length"):
            value = params.get(key, "None")
            if value not in ("None", ""):
                overrides[key] = int(re.findall(r"\d+", value)[0])
    source = source_of_spec(model_name)  # also: a one-line error for an unknown name
    cfg = source.model_cfg
    source.weights = source.reference = str(checkpoint)
    model = build_checked(source, **overrides)
    if "force_image_size" in overrides:
        cfg["vision_cfg"]["image_size"] = overrides["force_image_size"]
    if "force_context_length" in overrides:
        cfg["text_cfg"]["context_length"] = overrides["force_context_length"]
    return save_pretrained(model, output, model_cfg=cfg, safe_serialization=safe_serialization)
