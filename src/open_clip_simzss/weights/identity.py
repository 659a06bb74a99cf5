"""What identifies a vision tower's outputs: a digest of its weights, its configuration and the preprocessing
that feeds it. Two towers with the same digest give the same features, so the digest keys what is computed
from them once: the training feature cache (``training/feature_cache.py``) and the studies' few-shot rows.
"""
import hashlib
import json

import torch


def tower_fingerprint(model, preprocess_cfg: dict, dtype: str) -> str:
    """A 16-hex-digit digest of everything that determines the tower's outputs as stored: its architecture,
    every tensor of its state dict (the DVT denoiser's ``denoiser.*`` included), the image preprocessing and the
    storage ``dtype``."""
    visual = model.visual
    digest = hashlib.sha256()
    for name, tensor in sorted(visual.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    description = {
        "timm": visual.trunk.default_cfg.get("architecture"), "pool": visual.pool,
        "image_size": list(visual.image_size), "patch_size": visual.patch_size, "dtype": dtype,
        "denoiser": visual.denoiser.architecture if visual.denoiser is not None else None,
        "preprocess": {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in sorted(preprocess_cfg.items())},
        "weights": digest.hexdigest(),
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]
