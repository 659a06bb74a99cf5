"""open_clip_simzss: SimZSS (ICLR 2025) on top of OpenCLIP and timm.

``import open_clip_simzss`` registers the SimZSS model configs with OpenCLIP (``open_clip.list_models()``,
``open_clip.get_tokenizer("simzss-vitb14")``). It imports neither spaCy nor WebDataset (the ``[train]`` extra):
training and concept extraction import them where they need them.

The package face (README): the factory (``create_model``, ``create_model_and_transforms``,
``create_model_from_pretrained``), ``load_model`` (the one way to load a trained model: ``(model, preprocess)``
for any checkpoint reference) and ``load_tokenizer``, the model and its losses (Eq. 1-10), segmentation
(``Segmenter``, ``SlidingWindowEngine``, ``SegmentationProtocol``), evaluation (``Evaluation``,
``EvaluationProtocol``) and ``save_pretrained``. The layers, bottom to top: utilities, the model and its loss,
``weights``, ``factory``, ``concepts``, ``segmentation``, ``evaluation``, ``workflows``, ``cli`` (docs/README.md,
"The house").
"""
from open_clip import get_tokenizer

from .factory import create_model, create_model_and_transforms, create_model_from_pretrained
from .loss import SimZSSLoss, concept_classification_loss, pool_visual_concepts, total_loss
from .model import SimZSS, pool_text_concepts, text_concepts
from .model_configs import list_models, register_model_configs
from .version import __version__
from .weights.load import load_model, load_tokenizer
from .weights.read import CheckpointError
from .weights.resolve import ModelSource

# Imported on first use: keeps ``import open_clip_simzss`` light (segmentation, evaluation and model folders are
# not needed to build or train a model).
_LAZY = {
    "Segmenter": "segmentation.segmenter", "SegmentationResult": "segmentation.segmenter",
    "SlidingWindowEngine": "segmentation.engine", "SegmentationProtocol": "segmentation.protocol",
    "BackgroundRule": "segmentation.background", "build_text_classifier": "segmentation.classifier",
    "Evaluation": "evaluation.run", "EvaluationProtocol": "evaluation.protocol",
    "save_pretrained": "weights.save",
}

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
