"""The classifier that scores patch tokens: unit-norm rows per class, from text (zero-shot) or from labelled
pixels (``fewshot.py``), and the prompt templates of the text ones.

Text rows: every class name (and synonym) is put in every prompt template, encoded by the text tower
(``g(EOS)``), normalised per prompt, averaged and renormalised: one unit-norm query per class
(docs/evaluation.md, "Prompts"). The window engine that scores pixels with a classifier is ``engine.py``.
"""
import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from .labels import ClassNames, synonym_lists

# --- prompt templates (docs/evaluation.md, "Prompts") -----------------------------------------------------
# Stored as "{}" strings; open_clip's lambdas are called with the placeholder itself.
_OPENAI80 = tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
_SIMPLE7 = tuple(t("{}") for t in SIMPLE_IMAGENET_TEMPLATES)
# TCL's sub_imagenet_template differs from open_clip's 7 in one prompt ("a bad photo of a {}.").
_TCL7 = tuple("a bad photo of a {}." if t == "a bad photo of the {}." else t for t in _SIMPLE7)
TEMPLATE_SETS = {
    "openai80": _OPENAI80,  # CLIP's 80 ImageNet prompts: CLIP-DINOiser, SCLIP, NACLIP, ProxyCLIP; our default
    "simple7": _SIMPLE7,  # open_clip SIMPLE_IMAGENET_TEMPLATES
    "tcl7": _TCL7,  # TCL sub_imagenet_template, used by Talk2DINO
    "tcl9": _TCL7 + ("a photo of many {}.", "a photo of {}s."),  # TCL's eval-time "custom" set
    "photo1": ("a photo of a {}.",),
    "name": ("{}",),  # the bare class name
}
DEFAULT_TEMPLATES = "openai80"


def get_templates(templates: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """A template set by name (``TEMPLATE_SETS``) or an explicit list of strings containing ``{}``."""
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ValueError(f"unknown template set {templates!r}; available: {', '.join(TEMPLATE_SETS)}")
        return TEMPLATE_SETS[templates]
    templates = tuple(templates)
    if not templates or any("{}" not in t for t in templates):
        raise ValueError("templates must be a non-empty list of strings that contain '{}'")
    return templates


# --- classifiers ----------------------------------------------------------------------------------------
@dataclass
class Classifier:
    """Unit-norm queries [Q, d] and the class of each query: Q == C unless a class has several queries (its
    synonyms, with ``synonyms="max"``), and a class's score is its best query's cosine."""

    weights: torch.Tensor
    query_class: torch.Tensor
    num_classes: int

    def to(self, device) -> "Classifier":
        return Classifier(self.weights.to(device), self.query_class.to(device), self.num_classes)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine scores [..., C] of unit-norm features [..., d] (max over a class's queries)."""
        sims = features @ self.weights.t()
        if self.weights.shape[0] == self.num_classes:
            return sims
        index = self.query_class.expand_as(sims)
        out = sims.new_full(sims.shape[:-1] + (self.num_classes,), -math.inf)
        return out.scatter_reduce_(-1, index, sims, reduce="amax")


@torch.no_grad()
def build_text_classifier(
        model,
        tokenizer,
        class_names: ClassNames,
        templates: Union[str, Sequence[str]] = DEFAULT_TEMPLATES,
        synonyms: str = "mean",
        batch_size: int = 256,
        device=None,
) -> Classifier:
    """The zero-shot classifier: every class name and synonym in every template, encoded
    (``model.encode_text`` = g(EOS)), normalised per prompt, averaged, renormalised (CLIP's recipe, as
    CLIP-DINOiser and SCLIP do; docs/evaluation.md, "Prompts").

    Args:
        class_names: one entry per class: a name, or a list of synonyms.
        synonyms: "mean" averages the prompts of all synonyms into one vector per class; "max" keeps one vector
            per synonym and scores a class by its best synonym (the SCLIP idea, applied per patch).
    """
    if synonyms not in ("mean", "max"):
        raise ValueError(f"synonyms must be 'mean' or 'max', got {synonyms!r}")
    names = synonym_lists(class_names)
    templates = get_templates(templates)
    prompts, group = [], []  # group: the query each prompt is averaged into
    query_class = []
    for c, syns in enumerate(names):
        for s, name in enumerate(syns):
            if synonyms == "max" or s == 0:
                query_class.append(c)
            prompts += [t.replace("{}", name) for t in templates]
            group += [len(query_class) - 1] * len(templates)
    if device is None:
        device = next(model.parameters()).device
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()  # no dropout in the prompts' encodings
    try:
        sums = _prompt_sums(model, tokenizer, prompts, group, len(query_class), batch_size, device)
    finally:
        if was_training:
            model.train()
    weights = F.normalize(sums, dim=-1)  # the mean's direction: renormalising makes the 1/n irrelevant
    return Classifier(weights, torch.as_tensor(query_class, device=device), len(names))


def _prompt_sums(model, tokenizer, prompts: List[str], group: List[int], num_queries: int, batch_size: int,
                 device) -> torch.Tensor:
    """[num_queries, d]: the sum of the normalised encodings of each query's prompts."""
    sums = None
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start: start + batch_size]).to(device)
        # SimZSS.encode_text runs the causal text tower only up to the longest prompt's EOS (exact, ~5x faster)
        feats = F.normalize(model.encode_text(tokens).float(), dim=-1)
        if sums is None:
            sums = torch.zeros(num_queries, feats.shape[-1], device=device)
        # index_put(accumulate) rather than index_add_, whose CPU kernel is ~100x slower here
        sums.index_put_((torch.as_tensor(group[start: start + batch_size], device=device),), feats, accumulate=True)
    return sums
