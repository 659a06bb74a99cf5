"""The extraction rule: the concepts of a caption, found by spaCy and kept by the concept bank (README, "Concepts
in captions"; the paper's Section 3.1).

Pipeline for one caption:

1. ``clean_caption``: exactly the text OpenCLIP's ``SimpleTokenizer`` (``clean='lower'``) tokenizes, so the
   character offsets below line up with its tokens.
2. spaCy (tagger, parser, lemmatizer; NER excluded) parses the cleaned caption. For every noun chunk the concept
   is the last ``compound`` dependent of the chunk's root (as written), if any, plus the root's lemma:
   "two tennis rackets" -> "tennis racket", "a red bus" -> "bus".
3. The concept is kept if it is in the ``ConceptBank`` (``bank.py``), which also gives its stable id.
   ``ConceptBank.none()`` keeps every concept and ids it by a hash of its text.
4. ``align_concepts`` (``align.py``) maps the character spans of the concept's words to positions in the 77-token sequence
   (position 0 = start token), dropping concepts that truncation cuts.

``ConceptExtractor.annotate`` runs all four steps and returns the ``concepts.json`` record that the
shard preprocessing (``preprocess.py``, ``simzss-preprocess``) stores, so on-the-fly and preprocessed annotations are
identical by construction. Every record carries its provenance (``ConceptExtractor.provenance``: the bank's
name and content hash, the spaCy model's name and version, the extraction rule's version) so that training
can refuse concepts made with another bank or model than its flags name (``provenance.py``).
"""

from __future__ import annotations

import collections
import multiprocessing
import os
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

from open_clip.tokenizer import basic_clean, whitespace_clean

from .align import DEFAULT_CONTEXT_LENGTH, Concept, align_concepts
from .bank import ConceptBank, normalize_concept_text
from .provenance import CONCEPTS_JSON_VERSION, make_provenance
from .spacy_model import DEFAULT_SPACY_MODEL, load_spacy_model, model_identity_from_meta


def clean_caption(text: str) -> str:
    """The caption as OpenCLIP's default tokenizer sees it: ftfy + html unescape, whitespace, lower.

    This is ``SimpleTokenizer``'s ``clean='lower'`` function, built from the same two OpenCLIP helpers, so the
    character offsets of the concepts are offsets into the text that gets tokenized.
    """
    return whitespace_clean(basic_clean(text)).lower()


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
        self.provenance = make_provenance(self.bank, model_identity_from_meta(self.nlp.meta))

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
        """The ``concepts.json`` record of one raw caption (what ``preprocess.py`` stores)::

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
