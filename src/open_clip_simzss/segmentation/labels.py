"""Label conventions of segmentation: the ignored ground-truth value, the background label, and label lists as
users and class-name files give them.

- ``IGNORE_INDEX`` (255): ground-truth pixels that are not scored (MMSeg's convention).
- With background (voc21, context60, coco_object; a ``Segmenter`` with a threshold): value 0 is ``BACKGROUND``
  and text class c is value c + 1 (``background.apply_background``).
- A class is a name or a list of synonyms (``ClassNames``); labels typed by users are a comma-separated string
  or a list (``parse_labels``).
"""
from typing import List, Sequence, Union

IGNORE_INDEX = 255
BACKGROUND = "background"
ClassNames = Sequence[Union[str, Sequence[str]]]


def synonym_lists(class_names: ClassNames) -> List[List[str]]:
    """Each class as a list of its names (synonyms), stripped; ValueError for an empty class or list."""
    out = []
    for entry in class_names:
        names = [entry] if isinstance(entry, str) else list(entry)
        names = [n.strip() for n in names if n and n.strip()]
        if not names:
            raise ValueError("every class needs at least one non-empty name")
        out.append(names)
    if not out:
        raise ValueError("no class names given")
    return out


def parse_labels(labels: Union[str, Sequence[str]]) -> List[str]:
    """ "cat, grass, sky" or a list -> ["cat", "grass", "sky"]; ValueError if empty or repeated."""
    items = labels.split(",") if isinstance(labels, str) else list(labels)
    names = [" ".join(str(n).split()) for n in items]
    names = [n for n in names if n]
    if not names:
        raise ValueError("no labels given (e.g. --labels \"cat, grass, sky\")")
    seen = set()
    for n in names:
        if n.lower() in seen:
            raise ValueError(f"label {n!r} is given twice")
        seen.add(n.lower())
    return names
