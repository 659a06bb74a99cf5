"""The authors' released checkpoints (reference code's ``SimZSS`` module) -> our model folders.

Reference (github tileb1/simzss @ 2142ac5): ``SimZSS(CustomTextCLIP)``; vision ``visual`` =
``DenoisingViT.Denoiser(vit=ViTWrapper(timm model), denoiser_type="transformer")``; text ``text`` = OpenCLIP
``TextTransformer``. What was verified against their code: scripts/convert_reference_checkpoint.py.
"""
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import open_clip
import torch

from ..model import SimZSS
from .build import build_model, model_structure
from .read import CheckpointError, assign_weights, first_names, mismatch, read_state_dict, shapes
from .resolve import DEFAULT_MODEL, source_of_spec
from .save import save_pretrained

REFERENCE_TRAINING_STATE = ("classification_weights_ema", "beta_ema", "logit_scale_local", "logit_bias_local")
_TEXT_TOP_LEVEL = ("transformer.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection")
CLIP_MEAN, CLIP_STD = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD


def _vision_trunk_prefix(state: Dict[str, torch.Tensor]) -> str:
    for k in state:
        if k.startswith("visual.") and k.endswith("blocks.0.norm1.weight") and ".denoiser." not in k:
            return k[: -len("blocks.0.norm1.weight")]
    raise CheckpointError("no vision transformer found (no visual.*blocks.0.norm1.weight key): not a SimZSS "
                          "reference checkpoint")


def convert_reference_state_dict(state: Dict[str, torch.Tensor], trunk=None
                                 ) -> Tuple[Dict[str, torch.Tensor], Optional[dict], List[str]]:
    """The reference ``SimZSS`` state dict -> (our state dict, ``denoiser_cfg`` or None, dropped keys).

    Name map (prefix ``module.`` removed first):

    ====================================  ===========================================================
    reference                             ours
    ====================================  ===========================================================
    ``visual.vit.model.<timm names>``     ``visual.trunk.<timm names>`` (same timm ViT)
    ``visual.denoiser.<timm Block>``      ``visual.denoiser.block.<timm Block>``
    ``visual.pos_embed``                  ``visual.denoiser.pos_embed`` (DVT's learned grid)
    ``text.*``                            ``text.*`` (OpenCLIP TextTransformer in both)
    ``logit_scale``                       ``logit_scale``
    ``classification_weights_ema``,      dropped: training state of the reference's concept loss
    ``beta_ema``, ``logit_scale_local``
    ====================================  ===========================================================

    Hedges for layouts we did not see: a top-level (non-custom) CLIP text tower (``transformer.*``,
    ``token_embedding`` ...) moves under ``text.``; an original-DINOv2 trunk (``mask_token``,
    ``register_tokens``) goes through timm's ``checkpoint_filter_fn`` (needs ``trunk``, our timm model).
    """
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    prefix = _vision_trunk_prefix(state)
    out, dropped, trunk_state, unknown = {}, [], {}, []
    has_denoiser = any(k.startswith("visual.denoiser.") for k in state)
    for k, v in state.items():
        if k in REFERENCE_TRAINING_STATE:
            dropped.append(k)
        elif k.startswith(prefix) and ".denoiser." not in "." + k[len(prefix):]:
            trunk_state[k[len(prefix):]] = v
        elif k.startswith("visual.denoiser."):
            out["visual.denoiser.block." + k[len("visual.denoiser."):]] = v
        elif k == "visual.pos_embed" and has_denoiser and prefix != "visual.":
            out["visual.denoiser.pos_embed"] = v
        elif k.startswith("text.") or k == "logit_scale":
            out[k] = v
        elif k.startswith(_TEXT_TOP_LEVEL):
            out["text." + k] = v
        else:
            unknown.append(k)
    if unknown:
        raise CheckpointError(f"unknown keys in the reference checkpoint: {first_names(unknown)}")
    if "mask_token" in trunk_state:  # original DINOv2 names (torch.hub): timm's own converter
        if trunk is None:
            raise CheckpointError("an original-DINOv2 vision trunk needs the timm model to convert it")
        from timm.models.vision_transformer import checkpoint_filter_fn
        trunk_state = checkpoint_filter_fn(trunk_state, trunk)
    for k in ("head.weight", "head.bias"):  # the reference built its tower with num_classes=0; be lenient
        if k in trunk_state:
            dropped.append(prefix + k)
            del trunk_state[k]
    out.update({"visual.trunk." + k: v for k, v in trunk_state.items()})
    denoiser_cfg = None
    if has_denoiser:
        if "visual.denoiser.pos_embed" not in out:
            raise CheckpointError("the reference denoiser has no visual.pos_embed")
        n, dim = out["visual.denoiser.pos_embed"].shape[-2:]
        side = int(round(n ** 0.5))
        if side * side != n:
            raise CheckpointError(f"the denoiser position embedding has {n} positions, not a square grid")
        hidden = out["visual.denoiser.block.mlp.fc1.weight"].shape[0]
        # DVT builds the block with num_heads = dim // 64: the weights do not record the head count.
        denoiser_cfg = {"type": "transformer", "grid_size": [side, side], "num_heads": max(1, dim // 64),
                        "mlp_ratio": hidden / dim}
    return out, denoiser_cfg, dropped


def convert_reference_checkpoint(checkpoint: Union[str, Path], output: Union[str, Path],
                                 model_name: str = DEFAULT_MODEL, image_stats: str = "clip",
                                 trust_pickle: bool = False, safe_serialization: Union[bool, str] = True) -> Path:
    """An authors' checkpoint -> model folder (``local-dir:`` / hub layout) of ``model_name`` plus the DVT
    denoiser. ``image_stats="clip"`` keeps the CLIP mean/std the reference fed its DINOv2 tower in training;
    "tower" uses the tower's own (ImageNet), our convention (docs/method.md)."""
    if image_stats not in ("clip", "tower"):
        raise ValueError("image_stats must be 'clip' or 'tower'")
    state = read_state_dict(checkpoint, weights_only=not trust_pickle)
    source = source_of_spec(model_name)
    cfg = source.saved_config
    trunk = None
    if any(k.endswith("mask_token") for k in state):
        trunk = build_model(source, load_weights_file=False).visual.trunk
    converted, denoiser_cfg, _ = convert_reference_state_dict(state, trunk)
    if denoiser_cfg is not None:
        cfg["vision_cfg"]["denoiser_cfg"] = denoiser_cfg
    problem = mismatch(model_structure(cfg), shapes(converted), "our model", "the converted checkpoint")
    if problem:
        raise CheckpointError(f"the converted checkpoint does not fit {model_name}"
                              f"{' + DVT denoiser' if denoiser_cfg else ''}: {problem}")
    model_cfg = dict(cfg)
    model_cfg.pop("custom_text", None)
    with torch.device("meta"):  # no random init: every tensor comes from the checkpoint
        model = SimZSS(**model_cfg)
    if not assign_weights(model, converted):
        raise CheckpointError("internal: the converted model has tensors that no checkpoint provides")
    tower = model.visual.pretrained_cfg
    mean, std = (CLIP_MEAN, CLIP_STD) if image_stats == "clip" else (tower["mean"], tower["std"])
    preprocess = {"mean": list(mean), "std": list(std), "interpolation": tower.get("interpolation", "bicubic"),
                  "resize_mode": "shortest"}
    return save_pretrained(model, output, model_cfg=cfg, preprocess_cfg=preprocess,
                           safe_serialization=safe_serialization)
