"""Provenance of stored concepts: every ``concepts.json`` record says which concept bank, spaCy model and
extraction rule made it, so that training refuses concepts made otherwise than its flags say (README, "Concepts
in captions", "Provenance").
"""

from __future__ import annotations

from typing import Dict, Optional

from .bank import ConceptBank

# 2: records carry "provenance"; version-1 records (no provenance) are still read.
CONCEPTS_JSON_VERSION = 2
# The extraction rule of ``extract.py`` (noun chunk -> last compound + root lemma, bank matching with lemma
# aliases, alignment): bump it when a change would give different concepts for the same caption, bank and model.
EXTRACTOR_VERSION = 1


def make_provenance(bank: ConceptBank, spacy_identity: Dict[str, Optional[str]]) -> dict:
    """The ``provenance`` entry of a ``concepts.json`` record."""
    return {
        "concept_bank": {"name": bank.source, "sha256": bank.sha256},
        "spacy_model": dict(spacy_identity),
        "extractor_version": EXTRACTOR_VERSION,
    }


def provenance_mismatch(stored: dict, expected: dict) -> Optional[str]:
    """What differs between a record's ``provenance`` and the one training expects, as a phrase; None if
    nothing does. A spaCy version is compared only when both are known."""
    stored_bank, expected_bank = stored.get("concept_bank") or {}, expected["concept_bank"]
    if stored_bank.get("sha256") != expected_bank["sha256"]:
        def bank(b):
            return "none (open bank)" if b.get("sha256") is None else f"{b.get('name')} (sha256 {b['sha256'][:12]})"
        return f"concept bank {bank(stored_bank)} at preprocessing vs --concept-bank {bank(expected_bank)}"
    stored_model, expected_model = stored.get("spacy_model") or {}, expected["spacy_model"]
    if stored_model.get("name") != expected_model["name"] or (
            stored_model.get("version") and expected_model["version"]
            and stored_model["version"] != expected_model["version"]):
        def model(m):
            return f"{m.get('name')} {m.get('version') or '(version unknown)'}"
        return f"spaCy model {model(stored_model)} at preprocessing vs --spacy-model {model(expected_model)}"
    if stored.get("extractor_version") != expected["extractor_version"]:
        return (f"extractor version {stored.get('extractor_version')} at preprocessing vs "
                f"{expected['extractor_version']} in this version of open_clip_simzss")
    return None
