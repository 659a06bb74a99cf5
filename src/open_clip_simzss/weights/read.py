"""Reading weights and fitting them to a model: the one state-dict reader of the project.

Every checkpoint file is read here, with safetensors or ``torch.load(weights_only=True)`` (never arbitrary
pickles unless the caller explicitly trusts the file), by the factory, the model loader, the checkpoint tools
and the trainer. Loading is strict: a checkpoint that does not fit the model is refused with one line naming
the first differing keys.
"""
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple, Union

import torch

StateDict = Dict[str, torch.Tensor]


class CheckpointError(Exception):
    """A checkpoint or model that cannot be used; the message is one line, for command-line tools."""


def one_line(error: BaseException) -> str:
    """An exception as one line (torch/hub errors span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def read_checkpoint(path: Union[str, Path], weights_only: bool = True):
    """The object stored in a checkpoint file: safetensors, or ``torch.load`` (``weights_only=True`` by default)
    of a local file or an fsspec URL (``s3://...``, as OpenCLIP's trainer resumes from)."""
    path = str(path)
    remote = "://" in path
    if not remote and not Path(path).is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.endswith(".safetensors"):
            import safetensors.torch
            return safetensors.torch.load_file(path)
        if remote:
            import fsspec
            with fsspec.open(path, "rb") as f:
                return torch.load(f, map_location="cpu", weights_only=weights_only)
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # noqa: BLE001 - unpickling/format/network errors come in many types
        hint = " (it holds Python objects that weights_only=True refuses)" if "weights_only" in str(e) else ""
        # The first sentence says what failed; torch's further sentences are generic advice.
        reason = one_line(e).split(". ")[0][:300]
        raise CheckpointError(f"cannot read checkpoint {path}{hint}: {type(e).__name__}: {reason}") from None


def read_state_dict(path: Union[str, Path], weights_only: bool = True) -> StateDict:
    """Tensors of a checkpoint file: safetensors, a plain state dict, or a training checkpoint
    (``{"epoch", "state_dict", "optimizer", ...}``); a DDP ``module.`` prefix is removed."""
    state = read_checkpoint(path, weights_only)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict (expected tensors by parameter name)")
    return strip_ddp_prefix(state)


def strip_ddp_prefix(state: StateDict) -> StateDict:
    """The state dict without DistributedDataParallel's ``module.`` prefix (when every key has it)."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def shapes(tensors: StateDict) -> Dict[str, Tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def first_names(names: Iterable[str], n: int = 3) -> str:
    """A few names of a set, sorted, and how many there are in all."""
    names = sorted(names)
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


# Parameters whose shape says most about which config a checkpoint was trained with: a difference in one of them
# is named first, with what it means.
TELLING_SHAPES = {"text.positional_embedding": "another text width or context length",
                  "text.text_projection": "another embedding size",
                  "visual.trunk.pos_embed": "another vision width or token count",
                  "visual.trunk.patch_embed.proj.weight": "another vision width or patch size"}


def mismatch(expected: Dict[str, Tuple[int, ...]], found: Dict[str, Tuple[int, ...]],
             expected_name: str = "the model", found_name: str = "the checkpoint") -> Optional[str]:
    """None when the names and shapes agree, else a one-line description of the difference: the first shape
    that differs (a ``TELLING_SHAPES`` one when there is one), then missing and unexpected names."""
    missing = set(expected) - set(found)
    unexpected = set(found) - set(expected)
    reshaped = [k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k])]
    parts = []
    if reshaped:
        rank = list(TELLING_SHAPES)
        k = min(reshaped, key=lambda name: (rank.index(name) if name in rank else len(rank), name))
        notes = [TELLING_SHAPES[k]] if k in TELLING_SHAPES else []
        notes += [f"and {len(reshaped) - 1} more shapes differ"] if len(reshaped) > 1 else []
        parts.append(f"{k} is {list(found[k])} in {found_name} but {list(expected[k])} in {expected_name}"
                     + (f" ({'; '.join(notes)})" if notes else ""))
    if missing:
        parts.append(f"{found_name} lacks {first_names(missing)}")
    if unexpected:
        parts.append(f"{expected_name} has no {first_names(unexpected)}")
    return "; ".join(parts) or None


def fit_state_dict(model: torch.nn.Module, weights: Union[str, Path, StateDict], what: str = "the model",
                   weights_only: bool = True, source: Optional[str] = None) -> StateDict:
    """The checkpoint's tensors, checked against the model's names and shapes (CheckpointError, one line).
    ``source`` names a state dict in the message (default: the file name, or "the state dict")."""
    source = source or (str(weights) if not isinstance(weights, dict) else "the state dict")
    state = read_state_dict(weights, weights_only) if not isinstance(weights, dict) else strip_ddp_prefix(dict(weights))
    own = model.state_dict()
    if "logit_scale" in state and "logit_scale" in own and state["logit_scale"].numel() == 1:
        state["logit_scale"] = state["logit_scale"].reshape(own["logit_scale"].shape)  # [] vs [1]
    problem = mismatch(shapes(own), shapes(state))
    if problem:
        raise CheckpointError(f"checkpoint {source} does not fit {what} (was it trained with another --model?): "
                              f"{problem}")
    return state


def load_weights(model: torch.nn.Module, weights: Union[str, Path, StateDict], what: str = "the model",
                 weights_only: bool = True) -> torch.nn.Module:
    """Strictly load a checkpoint file or state dict into ``model``; CheckpointError (one line) if it does not
    fit (a checkpoint of another model)."""
    model.load_state_dict(fit_state_dict(model, weights, what, weights_only), strict=True)
    return model


def assign_weights(model: torch.nn.Module, state: StateDict) -> bool:
    """Assign a fitted state dict to a model built on the meta device (no random initialisation to overwrite);
    True when every tensor of the model is then real."""
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True, assign=True)
    # Non-persistent buffers are not in checkpoints: rebuild the one SimZSS has (the text tower's causal mask).
    for module in model.modules():
        mask = getattr(module, "attn_mask", None)
        if isinstance(mask, torch.Tensor) and mask.is_meta and hasattr(module, "build_causal_mask"):
            module.attn_mask = module.build_causal_mask()
    return not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
