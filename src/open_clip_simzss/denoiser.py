"""The DVT denoiser: an optional module of the vision tower, applied to the dense patch tokens.

*Denoising Vision Transformers* (Yang et al., ECCV 2024, github Jiawei-Yang/Denoising-ViT) trains a small
"generalizable denoiser" that removes the position-dependent artefacts of ViT feature maps. The authors'
released SimZSS checkpoints put it after their frozen DINOv2 tower (reference code
``src/DenoisingViT/generalizable_denoiser.py``, ``denoiser_type="transformer"``): for patch tokens ``z`` on an
h x w grid (after the tower's final norm),

    out = Block(z + resample(pos_embed, (h, w)))

with ``Block`` one timm ViT block (``num_heads = dim // 64``, MLP ratio 4, qkv bias, LayerNorm eps 1e-6, no
layer scale) and ``pos_embed`` a learned [1, 37 * 37, dim] embedding resampled bicubically (timm
``resample_abs_pos_embed``) to the grid of the input. There is no norm after the block. The global token
(CLS, or the patch mean for "avg" towers) is taken *before* the denoiser, as in the reference.

Enable it with ``"denoiser_cfg": {...}`` in a config's ``vision_cfg`` (keys below; ``simzss-vitb14-dvt`` is the
tower of the paper's headline ViT-B/14 numbers). It is frozen with the tower. Its state-dict keys are
``visual.denoiser.block.*`` and ``visual.denoiser.pos_embed``.

Weights (``create_model`` loads them unless a full SimZSS checkpoint brings them): DVT's released file
(Hugging Face ``jjiaweiyang/DVT``, e.g. ``voc_denoised/vit_base_patch14_reg4_dinov2.lvd142m.pth``) is a dict
``{"denoiser": state, "optimizer": ..., "step": ...}`` whose ``state`` is DVT's ``Denoiser`` state dict without
its ``vit.*`` backbone: ``denoiser.<timm Block keys>`` and ``pos_embed`` [1, 37 * 37, dim]. The authors load it
with ``strict=False`` into their ``Denoiser(vit=...)``; the only keys that skips are the backbone's
``vit.model.*`` (missing from the file, loaded from timm instead): nothing in the file is dropped. We read it
with ``weights_only=True`` and load it strictly (``load_denoiser_weights``).
"""
import os
from functools import partial
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Block, Mlp

from .weights import CheckpointError, mismatch, one_line, read_checkpoint, shapes

DENOISER_TYPES = ("transformer",)
# denoiser_cfg keys: type, grid_size (the learned position-embedding grid; DVT's is 37x37, DINOv2's native
# 518 / 14), num_heads (default dim // 64 as in DVT), mlp_ratio, hub_file (where the released weights are:
# "org/repo/path/in/repo" on the Hugging Face hub; provenance only, not part of the architecture).
DENOISER_KEYS = {"type", "grid_size", "num_heads", "mlp_ratio", "hub_file"}
DENOISER_WEIGHTS_ENV = "SIMZSS_DENOISER_WEIGHTS"


class DVTDenoiser(nn.Module):
    """DVT's transformer denoiser (module docstring): dense tokens [B, h, w, d] -> [B, h, w, d]."""

    def __init__(self, dim: int, grid_size: Union[int, Sequence[int]] = 37, num_heads: Optional[int] = None,
                 mlp_ratio: float = 4.0, type: str = "transformer", hub_file: Optional[str] = None):
        super().__init__()
        if type not in DENOISER_TYPES:
            raise ValueError(f"denoiser type must be one of {DENOISER_TYPES}, got {type!r}")
        grid = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(int(g) for g in grid_size)
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f"denoiser grid_size must be a positive int or a pair, got {grid_size!r}")
        num_heads = int(num_heads or max(1, dim // 64))
        if dim % num_heads:
            raise ValueError(f"denoiser num_heads ({num_heads}) must divide the tower width ({dim})")
        self.grid_size = grid
        self.hub_file = hub_file
        self.architecture = {"type": type, "grid_size": list(grid), "num_heads": num_heads, "mlp_ratio": mlp_ratio}
        self.block = Block(
            dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, qk_norm=False, init_values=None,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer=nn.GELU, mlp_layer=Mlp,
        )
        self.pos_embed = nn.Parameter(torch.randn(1, grid[0] * grid[1], dim) * 0.02)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        b, h, w, d = dense.shape
        pos = resample_abs_pos_embed(self.pos_embed, (h, w), old_size=self.grid_size, num_prefix_tokens=0)
        x = dense.reshape(b, h * w, d) + pos.to(dense.dtype)
        return self.block(x).reshape(b, h, w, d)


def build_denoiser(dim: int, cfg: Optional[dict]) -> Optional[DVTDenoiser]:
    """A :class:`DVTDenoiser` from a config's ``vision_cfg["denoiser_cfg"]`` (None -> no denoiser)."""
    if cfg is None:
        return None
    if not isinstance(cfg, dict):
        raise ValueError(f"denoiser_cfg must be a dict, got {type(cfg).__name__}")
    unknown = set(cfg) - DENOISER_KEYS
    if unknown:
        raise ValueError(f"unknown denoiser_cfg keys {sorted(unknown)} (known: {sorted(DENOISER_KEYS)})")
    return DVTDenoiser(dim, **cfg)


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
