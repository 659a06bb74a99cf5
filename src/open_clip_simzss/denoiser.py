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

Weights: DVT's released file, read by ``weights/dvt.py`` (``create_model`` loads it unless a full SimZSS
checkpoint brings the denoiser's weights).
"""
from functools import partial
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Block, Mlp

DENOISER_TYPES = ("transformer",)
# denoiser_cfg keys: type, grid_size (the learned position-embedding grid; DVT's is 37x37, DINOv2's native
# 518 / 14), num_heads (default dim // 64 as in DVT), mlp_ratio, hub_file (where the released weights are:
# "org/repo/path/in/repo" on the Hugging Face hub; provenance only, not part of the architecture).
DENOISER_KEYS = {"type", "grid_size", "num_heads", "mlp_ratio", "hub_file"}


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
