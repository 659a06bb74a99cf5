"""The SimZSS model configs: OpenCLIP JSON configs, one file per model name in this folder (README, "Model
configs"), and their registration with OpenCLIP.

``register_model_configs`` (run by ``import open_clip_simzss``) adds this folder to OpenCLIP's config registry,
so that ``open_clip.list_models()``, ``open_clip.get_model_config()`` and ``open_clip.get_tokenizer()`` know the
names. Besides OpenCLIP's keys, a config's ``vision_cfg`` may hold ``timm_model_kwargs`` (extra timm arguments)
and ``denoiser_cfg`` (the DVT denoiser, ``denoiser.py``).
"""
import copy
from pathlib import Path
from typing import List

import open_clip

MODEL_CONFIG_DIR = Path(__file__).parent


def list_models() -> List[str]:
    """The SimZSS model configs shipped with the package."""
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))


def register_model_configs():
    """Make our JSON configs known to OpenCLIP (``list_models``, ``get_model_config``, ``get_tokenizer``)."""
    if not set(list_models()) <= set(open_clip.list_models()):
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def get_model_config(name: str) -> dict:
    """A copy of the config of a shipped model; ValueError (one line, listing the names) for another name."""
    cfg = open_clip.get_model_config(name) if name in list_models() else None
    if cfg is None:
        raise ValueError(f"unknown SimZSS model {name!r}; available: {', '.join(list_models())}")
    return copy.deepcopy(cfg)
