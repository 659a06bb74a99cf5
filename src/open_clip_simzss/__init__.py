"""open_clip_simzss: SimZSS (ICLR 2025) on top of OpenCLIP and timm.

``import open_clip_simzss`` registers the SimZSS model configs with OpenCLIP (``open_clip.list_models()``,
``open_clip.get_tokenizer("simzss-vitb14")``). It imports neither spaCy nor WebDataset (the ``[train]`` extra):
training and concept extraction import them where they need them.

``load_model(model, checkpoint)`` is the one way to load a trained model: it returns ``(model, preprocess)``
for any checkpoint reference (file, model folder, ``local-dir:``, ``hf-hub:``, ``org/name``).
"""
from open_clip import get_tokenizer

from .factory import (
    create_model, create_model_and_transforms, create_model_from_pretrained, list_models, register_model_configs,
)
from .loading import ModelSource, load_model, load_tokenizer
from .loss import SimZSSLoss, concept_classification_loss, pool_visual_concepts, total_loss
from .model import SimZSS, pool_text_concepts, text_concepts
from .version import __version__
from .weights import CheckpointError

# Imported on first use: keeps ``import open_clip_simzss`` light, and lets ``python -m open_clip_simzss.segment``
# run the module as __main__ without the package having imported it first.
_LAZY = {"Segmenter": "segment", "SegmentationResult": "segment", "ZeroShotSegmenter": "segmentation",
         "save_pretrained": "checkpoint"}

__all__ = [
    "CheckpointError", "ModelSource", "SimZSS", "SimZSSLoss", "__version__", "concept_classification_loss",
    "create_model", "create_model_and_transforms", "create_model_from_pretrained", "get_tokenizer", "list_models",
    "load_model", "load_tokenizer", "pool_text_concepts", "pool_visual_concepts", "register_model_configs",
    "text_concepts", "total_loss", *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


register_model_configs()
