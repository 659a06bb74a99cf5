"""open_clip_simzss: SimZSS (ICLR 2025) on top of OpenCLIP and timm.

``import open_clip_simzss`` registers the SimZSS model configs with OpenCLIP (``open_clip.list_models()``,
``open_clip.get_tokenizer("simzss-vitb14")``).
"""
from open_clip import get_tokenizer

from .factory import (
    create_model, create_model_and_transforms, create_model_from_pretrained, list_models, register_model_configs,
)
from .loss import SimZSSLoss, concept_classification_loss, pool_visual_concepts, total_loss
from .model import SimZSS, pool_text_concepts, text_concepts
from .segment import SegmentationResult, Segmenter

__version__ = "0.1.0"

register_model_configs()
