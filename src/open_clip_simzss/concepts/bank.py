"""The concept bank: the set of concepts kept in captions and their stable ids (README, "Concepts in captions").

A closed bank is a list of entries, one concept a line (the project's own, ``data/concept_bank.txt``, or any
file); ``ConceptBank.none()`` is the open bank that keeps every concept (the paper's Table 4 ablation). A
concept's id is the same on every rank and every shard: its line index in a closed bank, a hash of its text in
the open one.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
from typing import Dict, Iterable, Iterator, List, Optional

DEFAULT_BANK_RESOURCE = "concept_bank.txt"


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
