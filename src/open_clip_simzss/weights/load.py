"""One way to load a trained model: :func:`load_model` takes a model name and a checkpoint reference and returns
the model and its preprocessing, with the same one-line errors (:class:`~.read.CheckpointError`) for every
command and for Python. The reference is resolved once (``resolve.resolve``), the model built and its weights
read once (``build.build_model``).
"""
from typing import Callable, Optional, Tuple, Union

import open_clip
import torch

from .build import build_checked, check_precision, image_transforms, resolve_device
from .read import CheckpointError, one_line
from .resolve import ModelSource, resolve


def load_model(model: Optional[str] = None, checkpoint: Optional[str] = None,
               device: Optional[Union[str, torch.device]] = None, precision: str = "fp32",
               cache_dir: Optional[str] = None) -> Tuple[torch.nn.Module, Callable]:
    """Build a SimZSS model, load its weights and return ``(model, preprocess)`` (OpenCLIP's evaluation
    transform), in eval mode; errors are one line (``CheckpointError``). ``model.source``
    (:class:`~.resolve.ModelSource`) says what was loaded; the tokenizer is ``load_tokenizer(model)``.

    Args:
        model: a config name (``simzss-vitb14``), ``local-dir:PATH`` or ``hf-hub:org/name``; optional when the
            checkpoint is a model folder or hub id (their config defines the model). When both are given they
            must describe the same model.
        checkpoint: a checkpoint file (training checkpoint, state dict, safetensors), a model folder,
            ``local-dir:PATH``, ``hf-hub:org/name`` or a hub id. None: the model's bundled weights, or random
            weights for a plain config name (smoke tests).
        device: default CUDA when available, else CPU.
        precision: OpenCLIP's precision names (``fp32``, ``bf16``, ``fp16``, ``pure_bf16``, ``pure_fp16``).
    """
    try:
        check_precision(precision)
        device = resolve_device(device)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    source = resolve(model, checkpoint, cache_dir)
    net = build_checked(source, device=device, precision=precision, cache_dir=cache_dir, what=model or source.spec)
    net.eval()
    return net, image_transforms(net)[1]


def load_tokenizer(model: torch.nn.Module, cache_dir: Optional[str] = None):
    """The OpenCLIP tokenizer of a model built by this package (``load_model``, ``create_model``)."""
    source = getattr(model, "source", None)
    if not isinstance(source, ModelSource):
        raise CheckpointError("the model was not built by open_clip_simzss: use open_clip_simzss.get_tokenizer(NAME)")
    try:
        return open_clip.get_tokenizer(source.spec, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot build the tokenizer of {source.spec}: {one_line(e)}") from None
