"""DVT's released denoiser weights (``denoiser.py`` is the module they load into).

DVT's file (Hugging Face ``jjiaweiyang/DVT``, e.g. ``voc_denoised/vit_base_patch14_reg4_dinov2.lvd142m.pth``) is a
dict ``{"denoiser": state, "optimizer": ..., "step": ...}`` whose ``state`` is DVT's ``Denoiser`` state dict
without its ``vit.*`` backbone: ``denoiser.<timm Block keys>`` and ``pos_embed`` [1, 37 * 37, dim]. The authors
load it with ``strict=False`` into their ``Denoiser(vit=...)``; the only keys that skips are the backbone's
``vit.model.*`` (missing from the file, loaded from timm instead): nothing in the file is dropped. We read it with
``weights_only=True`` and load it strictly (``load_denoiser_weights``).
"""
import os
from typing import Dict, Optional, Union

import torch

from ..denoiser import DVTDenoiser
from .read import CheckpointError, mismatch, one_line, read_checkpoint, shapes

DENOISER_WEIGHTS_ENV = "SIMZSS_DENOISER_WEIGHTS"


def read_dvt_weights(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """DVT's released file (module docstring) as this module's state dict: ``denoiser.X`` -> ``block.X``,
    ``pos_embed`` kept. Read with ``weights_only=True``; any other key is refused (CheckpointError, one line)."""
    stored = read_checkpoint(path)
    state = stored.get("denoiser") if isinstance(stored, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a DVT denoiser file (expected a dict with a 'denoiser' entry)")
    out = {}
    for key, value in state.items():
        if key == "pos_embed":
            out[key] = value
        elif key.startswith("denoiser."):
            out["block." + key[len("denoiser."):]] = value
        else:
            raise CheckpointError(f"{path}: unexpected key {key!r} in its 'denoiser' entry (not a DVT transformer "
                                  "denoiser?)")
    return out


def load_denoiser_weights(denoiser: DVTDenoiser, path: Union[str, os.PathLike]) -> DVTDenoiser:
    """Strictly load DVT's released weights into ``denoiser`` (CheckpointError, one line, if they do not fit)."""
    state = read_dvt_weights(path)
    problem = mismatch(shapes(denoiser.state_dict()), shapes(state))
    if problem:
        raise CheckpointError(f"DVT weights {path} do not fit this denoiser: {problem}")
    denoiser.load_state_dict(state, strict=True)
    return denoiser


def denoiser_weights_file(denoiser: DVTDenoiser, path: Optional[str] = None, cache_dir: Optional[str] = None,
                          what: str = "this model") -> str:
    """Where the denoiser's weights come from: ``path``, else ``$SIMZSS_DENOISER_WEIGHTS``, else the Hugging Face
    hub (``hub_file`` of its config). No weights is an error (one line): a random denoiser is never built."""
    path = path or os.environ.get(DENOISER_WEIGHTS_ENV) or None
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"DVT denoiser weights not found: {path}")
        return str(path)
    hint = f"give --denoiser-weights FILE or set {DENOISER_WEIGHTS_ENV}=FILE"
    if not denoiser.hub_file:
        raise CheckpointError(f"{what} has a DVT denoiser but no weights for it: {hint}")
    try:
        from huggingface_hub import hf_hub_download
        org, repo, filename = denoiser.hub_file.split("/", 2)
        return hf_hub_download(f"{org}/{repo}", filename, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001 - offline, network and missing-file errors come in many types
        raise CheckpointError(f"cannot get the DVT denoiser weights hf-hub:{denoiser.hub_file} "
                              f"({type(e).__name__}: {one_line(e)[:160]}); download the file and {hint}") from None


def load_denoiser(denoiser: Optional[DVTDenoiser], path: Optional[str] = None, cache_dir: Optional[str] = None,
                  what: str = "this model") -> Optional[DVTDenoiser]:
    """What ``create_model`` does when no full SimZSS checkpoint is loaded: give the model's denoiser its
    released weights (``denoiser_weights_file``). Weights given for a model without a denoiser are refused."""
    if denoiser is None:
        if path:
            raise CheckpointError(f"denoiser weights {path} given, but {what} has no DVT denoiser "
                                  "(simzss-vitb14-dvt has one)")
        return None
    return load_denoiser_weights(denoiser, denoiser_weights_file(denoiser, path, cache_dir, what))
