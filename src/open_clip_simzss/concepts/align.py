"""Concepts in token positions: a concept's words, found by character offsets in the cleaned caption, mapped
onto the positions of OpenCLIP's 77-token sequence (README, "Concepts in captions"; Eq. 1 pools the text tower's
outputs at these positions).

The mapping follows ``SimpleTokenizer.encode`` word by word, so it is exact: by character offsets, not by a
greedy string search (which misplaces repeated words); a word that BPE splits is covered entirely; a concept
that truncation cuts is dropped.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import List, Optional, Sequence, Tuple

DEFAULT_CONTEXT_LENGTH = 77


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
