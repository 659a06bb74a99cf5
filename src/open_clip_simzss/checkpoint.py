"""Checkpoints: self-contained model folders, training-checkpoint export, the Hugging Face hub, and the authors'
released checkpoints.

A **model folder** has OpenCLIP's hub layout, the one ``open_clip.push_to_hf_hub`` uploads::

    open_clip_config.json          {"model_cfg": {...}, "preprocess_cfg": {"mean", "std", "interpolation", "resize_mode"}}
    open_clip_model.safetensors    the state dict (``open_clip_pytorch_model.bin`` too with --format both)

``model_cfg`` is the SimZSS config with ``timm_model_pretrained: false`` and no ``pretrained_file`` (the folder
holds every weight; loading it never reaches for timm's pretrained tower). Load it with
``open_clip_simzss.create_model("local-dir:PATH")``, or from the hub with ``"hf-hub:org/name"`` once uploaded.

    python -m open_clip_simzss.checkpoint export --checkpoint logs/run/checkpoints/epoch_7.pt --output simzss-coco
    python -m open_clip_simzss.checkpoint push --checkpoint simzss-coco --repo-id me/simzss-vitb14-coco
    python -m open_clip_simzss.checkpoint convert --checkpoint simzss_coco.pth --output simzss-vitb14-coco-ref

``export`` reads the model name from the run's ``params.txt`` when ``--model`` is not given. ``convert`` maps
the authors' released checkpoints (reference code's ``SimZSS`` module) to ours; see
``scripts/convert_reference_checkpoint.py`` for what was verified against their code.

Every file is read with ``torch.load(weights_only=True)`` or safetensors. Loading is strict, and a checkpoint
that does not fit the model is refused with one line naming the first differing keys.
"""
import argparse
import copy
import json
import re
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple, Union

import open_clip
import torch

from .factory import CONFIG_NAME, create_model, resolve_model_config

SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"
BIN_WEIGHTS_NAME = "open_clip_pytorch_model.bin"
DEFAULT_MODEL = "simzss-vitb14"
# Config keys that do not change what a checkpoint is: where the tower's pretrained weights came from, and the
# default input size (the tower runs at any multiple of the patch size).
_NON_ARCH_VISION_KEYS = ("timm_model_pretrained", "pretrained_file", "image_size")
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".tar")


class CheckpointError(Exception):
    """A checkpoint or model that cannot be used; the message is one line, for command-line tools."""


def one_line(error: BaseException) -> str:
    """An exception as one line (torch/hub errors span several)."""
    return " ".join(str(error).split()) or type(error).__name__


# --- reading weights ----------------------------------------------------------------------------------------
def read_state_dict(path: Union[str, Path], weights_only: bool = True) -> Dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: safetensors, a plain state dict, or a training checkpoint
    (``{"epoch", "state_dict", "optimizer", ...}``); a DDP ``module.`` prefix is removed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            import safetensors.torch
            state = safetensors.torch.load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # noqa: BLE001 - unpickling/format errors come in many types
        hint = " (it holds Python objects that weights_only=True refuses)" if "weights_only" in str(e) else ""
        raise CheckpointError(f"cannot read checkpoint {path}{hint}: {type(e).__name__}: {one_line(e)[:300]}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict (expected tensors by parameter name)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _shapes(tensors: Dict[str, torch.Tensor]) -> Dict[str, Tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def _first(names: Iterable[str], n: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def mismatch(expected: Dict[str, Tuple[int, ...]], found: Dict[str, Tuple[int, ...]],
             expected_name: str = "the model", found_name: str = "the checkpoint") -> Optional[str]:
    """None when the names and shapes agree, else a one-line description of the difference."""
    missing = set(expected) - set(found)
    unexpected = set(found) - set(expected)
    reshaped = [k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k])]
    parts = []
    if missing:
        parts.append(f"{found_name} lacks {_first(missing)}")
    if unexpected:
        parts.append(f"{expected_name} has no {_first(unexpected)}")
    if reshaped:
        k = sorted(reshaped)[0]
        more = f" (and {len(reshaped) - 1} more shapes differ)" if len(reshaped) > 1 else ""
        parts.append(f"{k} is {list(found[k])} in {found_name} but {list(expected[k])} in {expected_name}{more}")
    return "; ".join(parts) or None


def _prepare(model: torch.nn.Module, weights: Union[str, Path, Dict[str, torch.Tensor]], what: str
             ) -> Dict[str, torch.Tensor]:
    """The checkpoint's tensors, checked against the model's names and shapes (CheckpointError, one line)."""
    source = str(weights) if not isinstance(weights, dict) else "the state dict"
    state = read_state_dict(weights) if not isinstance(weights, dict) else dict(weights)
    own = model.state_dict()
    if "logit_scale" in state and "logit_scale" in own and state["logit_scale"].numel() == 1:
        state["logit_scale"] = state["logit_scale"].reshape(own["logit_scale"].shape)  # [] vs [1]
    problem = mismatch(_shapes(own), _shapes(state))
    if problem:
        raise CheckpointError(f"checkpoint {source} does not fit {what} (a checkpoint of another model?): {problem}")
    return state


def load_weights(model: torch.nn.Module, weights: Union[str, Path, Dict[str, torch.Tensor]],
                 what: str = "the model") -> torch.nn.Module:
    """Strictly load a checkpoint file or state dict into ``model``; CheckpointError (one line) if it does not
    fit (a checkpoint of another model)."""
    model.load_state_dict(_prepare(model, weights, what), strict=True)
    return model


def _materialized(model: torch.nn.Module) -> bool:
    # Non-persistent buffers are not in checkpoints: rebuild the one SimZSS has (the text tower's causal mask).
    for module in model.modules():
        mask = getattr(module, "attn_mask", None)
        if isinstance(mask, torch.Tensor) and mask.is_meta and hasattr(module, "build_causal_mask"):
            module.attn_mask = module.build_causal_mask()
    return not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))


def build_model(spec: str, weights=None, device: Union[str, torch.device] = "cpu", precision: str = "fp32",
                cache_dir: Optional[str] = None, what: Optional[str] = None, **model_kwargs) -> torch.nn.Module:
    """``create_model(spec, load_weights=False, ...)`` then strict loading of ``weights`` (file or state dict).

    With weights (fp32), the model is first built on the meta device and the checkpoint's tensors are assigned
    to it: random initialisation would take seconds for a ViT-B/L tower only to be overwritten.
    """
    what = what or spec
    try:
        if weights is not None and precision == "fp32":
            try:
                with torch.device("meta"):
                    net = create_model(spec, load_weights=False, device="meta", cache_dir=cache_dir, **model_kwargs)
            except Exception:  # noqa: BLE001 - anything meta tensors cannot do: build it the usual way below
                net = None
            if net is not None:
                state = _prepare(net, weights, what)
                own = net.state_dict()
                net.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True, assign=True)
                if _materialized(net):
                    return net.to(device)
                weights = state
        net = create_model(spec, load_weights=False, device=device, precision=precision, cache_dir=cache_dir,
                           **model_kwargs)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken config or tower: one line
        raise CheckpointError(f"cannot build model {spec}: {type(e).__name__}: {one_line(e)}") from None
    return load_weights(net, weights, what) if weights is not None else net


# --- model configs ----------------------------------------------------------------------------------------------
def clean_model_config(model_cfg: dict) -> dict:
    """The config to save with a full checkpoint: the tower's weights are in the file, so timm must not fetch
    them (``timm_model_pretrained: false``) and no local tower file is referenced (``pretrained_file``)."""
    cfg = copy.deepcopy(model_cfg)
    vision = cfg.setdefault("vision_cfg", {})
    vision["timm_model_pretrained"] = False
    vision.pop("pretrained_file", None)
    return cfg


def _architecture(model_cfg: dict) -> dict:
    cfg = copy.deepcopy(model_cfg)
    cfg.pop("custom_text", None)
    for key in _NON_ARCH_VISION_KEYS:
        cfg.get("vision_cfg", {}).pop(key, None)
    return cfg


def _flat(d: dict, prefix: str = "") -> Dict[str, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_difference(a: dict, b: dict) -> List[str]:
    """Keys (dotted) where two model configs describe different models."""
    fa, fb = _flat(_architecture(a)), _flat(_architecture(b))
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def _resolve(model: str, cache_dir: Optional[str] = None) -> Tuple[dict, dict, Optional[str]]:
    try:
        return resolve_model_config(model, cache_dir)
    except Exception as e:  # noqa: BLE001 - unknown name, missing folder/config, hub failure: one line each
        if model.startswith("hf-hub:"):
            raise CheckpointError(f"cannot get {model} from the Hugging Face hub (nor a local file of that name): "
                                  f"{one_line(e)[:240]}") from None
        raise CheckpointError(one_line(e)) from None


def model_structure(model_cfg: dict) -> Dict[str, Tuple[int, ...]]:
    """Parameter names and shapes of the SimZSS model a config describes, built without memory (meta device)."""
    from .model import SimZSS
    cfg = clean_model_config(model_cfg)
    cfg.pop("custom_text", None)
    try:
        with torch.device("meta"):
            model = SimZSS(**cfg)
    except (NotImplementedError, RuntimeError):  # an init that meta tensors do not support: build it for real
        model = SimZSS(**cfg)
    return _shapes(model.state_dict())


# --- loading models ------------------------------------------------------------------------------------------
def is_hub_id(text: str) -> bool:
    """Looks like a Hugging Face repo id ("org/name") rather than a file name."""
    return bool(_HF_ID.match(text)) and not text.lower().endswith(_WEIGHT_SUFFIXES)


def resolve_checkpoint(model: Optional[str], checkpoint: Optional[str]) -> Tuple[str, Optional[str]]:
    """(model spec for the factory, weights file or None) from a model name and a checkpoint that may be a
    file, a model folder, ``local-dir:PATH``, ``hf-hub:org/name`` or a bare hub id ("org/name")."""
    if checkpoint is None:
        return model or DEFAULT_MODEL, None
    checkpoint = str(checkpoint)
    if checkpoint.startswith(("hf-hub:", "local-dir:")):
        return checkpoint, None
    path = Path(checkpoint)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise CheckpointError(f"{path} is a folder without {CONFIG_NAME} (not a model folder)")
        return f"local-dir:{path}", None
    if path.is_file():
        return model or DEFAULT_MODEL, str(path)
    if is_hub_id(checkpoint):
        return f"hf-hub:{checkpoint}", None
    raise CheckpointError(f"checkpoint not found: {checkpoint}")


def load_model(model: Optional[str] = None, checkpoint: Optional[str] = None, device: Union[str, torch.device] = "cpu",
               precision: str = "fp32", cache_dir: Optional[str] = None):
    """Build a SimZSS model and load its weights, with one-line errors (``CheckpointError``).

    Args:
        model: a config name (``simzss-vitb14``), ``local-dir:PATH`` or ``hf-hub:org/name``; optional when the
            checkpoint is a model folder or hub id (their config defines the model). When both are given they
            must describe the same model.
        checkpoint: a checkpoint file (training checkpoint, state dict, safetensors), a model folder,
            ``local-dir:PATH``, ``hf-hub:org/name`` or a hub id. None: the model's bundled weights, or random
            weights for a plain config name (smoke tests).
    Returns:
        (model in eval mode, tokenizer, info dict: ``spec``, ``weights`` (file or None), ``model_cfg``).
    """
    spec, weights = resolve_checkpoint(model, checkpoint)
    model_cfg, _, bundled = _resolve(spec, cache_dir)
    if model and spec != model:
        named_cfg = _resolve(model, cache_dir)[0]
        differs = config_difference(named_cfg, model_cfg)
        if differs:
            raise CheckpointError(f"checkpoint {checkpoint} is for another model than {model} (config differs in "
                                  f"{', '.join(differs[:4])}); leave out --model to use the checkpoint's own config")
    weights = weights or bundled
    net = build_model(spec, weights, device=device, precision=precision, cache_dir=cache_dir, what=model or spec)
    try:
        tokenizer = open_clip.get_tokenizer(spec, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot build the tokenizer of {spec}: {one_line(e)}") from None
    net.eval()
    net.simzss_model_cfg = clean_model_config(model_cfg)  # what save_pretrained writes
    return net, tokenizer, {"spec": spec, "weights": weights, "model_cfg": net.simzss_model_cfg}


# --- saving ------------------------------------------------------------------------------------------------------
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
        model_cfg = _resolve(model_name)[0]
    if model_cfg is None:
        model_cfg = getattr(model, "simzss_model_cfg", None)
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
            the model was loaded with by :func:`load_model`. It is checked against the model's parameters.
        preprocess_cfg: default: the model's own (``open_clip.get_model_preprocess_cfg``).
        safe_serialization: True -> safetensors, False -> ``open_clip_pytorch_model.bin``, "both" (what
            ``open_clip.push_to_hf_hub`` uploads).
    """
    if safe_serialization not in (True, False, "both"):
        raise ValueError("safe_serialization must be True, False or 'both'")
    cfg = _model_cfg_for(model, model_cfg, model_name)
    state = model.state_dict()
    problem = mismatch(model_structure(cfg), _shapes(state), "the config's model", "this model")
    if problem:
        raise CheckpointError(f"the config does not describe this model: {problem}")
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    # Contiguous CPU copies; safetensors refuses tensors that share memory, so shared ones are cloned.
    seen, tensors = set(), {}
    for k, v in state.items():
        v = v.detach().to("cpu").contiguous()
        if v.data_ptr() in seen and v.numel():
            v = v.clone()
        seen.add(v.data_ptr())
        tensors[k] = v
    if safe_serialization in (True, "both"):
        import safetensors.torch
        safetensors.torch.save_file(tensors, str(folder / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
    if safe_serialization in (False, "both"):
        torch.save(tensors, folder / BIN_WEIGHTS_NAME)
    config = {"model_cfg": cfg, "preprocess_cfg": preprocess_cfg or preprocess_config(model)}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
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
    cfg = _resolve(model_name)[0]  # also: a one-line error for an unknown name
    model = build_model(model_name, checkpoint, **overrides)
    if "force_image_size" in overrides:
        cfg["vision_cfg"]["image_size"] = overrides["force_image_size"]
    if "force_context_length" in overrides:
        cfg["text_cfg"]["context_length"] = overrides["force_context_length"]
    return save_pretrained(model, output, model_cfg=cfg, safe_serialization=safe_serialization)


# --- Hugging Face hub ---------------------------------------------------------------------------------------
class _BuiltinTokenizer:
    """OpenCLIP's ``save_for_hf`` saves the tokenizer's files; SimZSS uses OpenCLIP's built-in BPE tokenizer
    (``open_clip.get_tokenizer`` rebuilds it from ``text_cfg``), which has none."""

    def save_pretrained(self, dest):
        pass


def write_hub_folder(model, model_cfg: dict, folder: Union[str, Path], model_card: Optional[dict] = None,
                     repo_id: str = "simzss") -> Path:
    """The folder ``open_clip.push_to_hf_hub`` would upload, written by OpenCLIP's own ``save_for_hf``
    (config + ``open_clip_model.safetensors`` + ``open_clip_pytorch_model.bin``) and ``generate_readme``."""
    from open_clip.push_to_hf_hub import generate_readme, save_for_hf
    folder = Path(folder)
    save_for_hf(model, _BuiltinTokenizer(), clean_model_config(model_cfg), folder, safe_serialization="both")
    card = dict({"tags": ("clip", "open_clip", "simzss", "zero-shot-segmentation"),
                 "pipeline_tag": "image-segmentation",
                 "description": "SimZSS (ICLR 2025) zero-shot segmentation model. Load it with "
                                f"`open_clip_simzss.create_model(\"hf-hub:{repo_id}\")` or "
                                f"`simzss-segment --checkpoint {repo_id} ...`."}, **(model_card or {}))
    (folder / "README.md").write_text(generate_readme(card, repo_id.split("/")[-1]), encoding="utf-8")
    return folder


def push_to_hub(checkpoint: str, repo_id: str, model: Optional[str] = None, commit_message: str = "Add model",
                token: Optional[str] = None, private: bool = False, revision: Optional[str] = None,
                create_pr: bool = False, model_card: Optional[dict] = None):
    """Upload a model (folder, checkpoint file + ``model``, or hub id) to the Hugging Face hub; afterwards
    ``create_model("hf-hub:" + repo_id)`` loads it. Needs network access and a token.

    What is uploaded is ``write_hub_folder``'s folder: exactly what ``open_clip.push_to_hf_hub`` writes, by
    OpenCLIP's own ``save_for_hf``. The upload itself calls ``huggingface_hub`` directly: OpenCLIP 3.3.0's
    ``push_to_hf_hub`` imports ``repo_type_and_id_from_hf_id``, which huggingface_hub >= 1.0 no longer exports,
    so with current huggingface_hub it fails (NameError) before uploading anything.
    """
    from tempfile import TemporaryDirectory

    from huggingface_hub import create_repo, upload_folder
    net, _, info = load_model(model, checkpoint)
    url = create_repo(repo_id, token=token, private=private, exist_ok=True)
    repo_id = getattr(url, "repo_id", None) or repo_id  # the full id when the owner was implicit
    with TemporaryDirectory() as tmp:
        write_hub_folder(net, info["model_cfg"], tmp, model_card, repo_id=repo_id)
        return upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message, token=token,
                             revision=revision, create_pr=create_pr)


# --- the authors' released checkpoints (reference code's SimZSS module) -------------------------------------
# Reference (github tileb1/simzss @ 2142ac5): ``SimZSS(CustomTextCLIP)``; vision ``visual`` =
# ``DenoisingViT.Denoiser(vit=ViTWrapper(timm model), denoiser_type="transformer")``; text ``text`` = OpenCLIP
# ``TextTransformer``. Details in scripts/convert_reference_checkpoint.py.
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
        raise CheckpointError(f"unknown keys in the reference checkpoint: {_first(unknown)}")
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
    "tower" uses the tower's own (ImageNet), our convention (SPEC §1)."""
    if image_stats not in ("clip", "tower"):
        raise ValueError("image_stats must be 'clip' or 'tower'")
    state = read_state_dict(checkpoint, weights_only=not trust_pickle)
    cfg = clean_model_config(_resolve(model_name)[0])
    trunk = None
    if any(k.endswith("mask_token") for k in state):
        trunk = create_model(model_name, load_weights=False).visual.trunk
    converted, denoiser_cfg, _ = convert_reference_state_dict(state, trunk)
    if denoiser_cfg is not None:
        cfg["vision_cfg"]["denoiser_cfg"] = denoiser_cfg
    problem = mismatch(model_structure(cfg), _shapes(converted), "our model", "the converted checkpoint")
    if problem:
        raise CheckpointError(f"the converted checkpoint does not fit {model_name}"
                              f"{' + DVT denoiser' if denoiser_cfg else ''}: {problem}")
    from .model import SimZSS
    model_cfg = dict(cfg)
    model_cfg.pop("custom_text", None)
    with torch.device("meta"):  # no random init: every tensor comes from the checkpoint
        model = SimZSS(**model_cfg)
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in converted.items()}, strict=True, assign=True)
    if not _materialized(model):
        raise CheckpointError("internal: the converted model has tensors that no checkpoint provides")
    tower = model.visual.pretrained_cfg
    mean, std = (CLIP_MEAN, CLIP_STD) if image_stats == "clip" else (tower["mean"], tower["std"])
    preprocess = {"mean": list(mean), "std": list(std), "interpolation": tower.get("interpolation", "bicubic"),
                  "resize_mode": "shortest"}
    return save_pretrained(model, output, model_cfg=cfg, preprocess_cfg=preprocess,
                           safe_serialization=safe_serialization)


# --- command line ------------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise CheckpointError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m open_clip_simzss.checkpoint", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    fmt = dict(choices=("safetensors", "bin", "both"), default="safetensors",
               help="weights file(s) to write (the hub upload writes both)")

    e = sub.add_parser("export", help="training checkpoint -> self-contained model folder")
    e.add_argument("--checkpoint", required=True, help="e.g. logs/RUN/checkpoints/epoch_7.pt")
    e.add_argument("--model", help="SimZSS config name (default: from the run's params.txt)")
    e.add_argument("--output", required=True, help="folder to write (then use it as local-dir:FOLDER)")
    e.add_argument("--format", **fmt)

    c = sub.add_parser("convert", help="the authors' released checkpoint -> model folder")
    c.add_argument("--checkpoint", required=True, help="their PyTorch state dict (.pt/.pth)")
    c.add_argument("--model", default=DEFAULT_MODEL, help="our config of their tower (default simzss-vitb14)")
    c.add_argument("--output", required=True)
    c.add_argument("--image-stats", choices=("clip", "tower"), default="clip",
                   help="normalisation to save: CLIP's, as the reference trained (default), or DINOv2's")
    c.add_argument("--trust-pickle", action="store_true",
                   help="allow a file that weights_only=True refuses (runs its pickled code: trusted files only)")
    c.add_argument("--format", **fmt)

    h = sub.add_parser("push", help="upload a model folder to the Hugging Face hub (OpenCLIP's layout)")
    h.add_argument("--checkpoint", required=True, help="model folder (or checkpoint file with --model)")
    h.add_argument("--model", help="config name, for a checkpoint file")
    h.add_argument("--repo-id", required=True, help="org/name")
    h.add_argument("--private", action="store_true")
    h.add_argument("--token", help="Hugging Face token (default: the logged-in one)")
    return p


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        formats = {"safetensors": True, "bin": False, "both": "both"}
        if args.command == "export":
            folder = export_checkpoint(args.checkpoint, args.output, args.model, formats[args.format])
        elif args.command == "convert":
            folder = convert_reference_checkpoint(args.checkpoint, args.output, args.model, args.image_stats,
                                                  args.trust_pickle, formats[args.format])
        else:
            try:
                push_to_hub(args.checkpoint, args.repo_id, model=args.model, private=args.private,
                            token=args.token)
            except CheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - no network, no token, no permission: say it in one line
                raise CheckpointError(f"upload to {args.repo_id} failed: {type(e).__name__}: {one_line(e)[:300]}")
            print(f"uploaded to https://huggingface.co/{args.repo_id}; load it as hf-hub:{args.repo_id}")
            return 0
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # unwritable output folder, disk full, ...
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"wrote {folder}: load it with --checkpoint {folder} or create_model('local-dir:{folder}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
