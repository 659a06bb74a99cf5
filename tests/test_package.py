"""The package face: every Python name the README and the docs use resolves, and the names of
``open_clip_simzss.__all__`` (README, "Python quick start") import from the package itself."""
import importlib
import re
from pathlib import Path

import pytest

import open_clip_simzss

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOTTED = re.compile(r"\bopen_clip_simzss(?:\.[A-Za-z_]\w*)+")
FROM_IMPORT = re.compile(r"from (open_clip_simzss(?:\.\w+)*) import (?:\(([^)]*)\)|([\w ,]+))")


def resolve(dotted: str):
    """The object ``a.b.c`` names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ModuleNotFoundError(dotted)


def names_in_documents():
    found = set()
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        # a method or attribute of a result ("open_clip_simzss.load_model(...).source") is not a path: stop at "("
        found |= {m.rstrip(".") for m in DOTTED.findall(text)}
        for module, grouped, names in FROM_IMPORT.findall(text):
            for name in (grouped or names).split(","):
                name = name.split(" as ")[0].strip()
                if name:
                    found.add(f"{module}.{name}")
    return sorted(found)


NAMES = names_in_documents()


def test_the_documents_name_the_package_face():
    assert "open_clip_simzss.load_model" in NAMES and "open_clip_simzss.Segmenter" in NAMES
    assert len(NAMES) > 15


@pytest.mark.parametrize("name", NAMES)
def test_every_documented_name_resolves(name):
    resolve(name)


@pytest.mark.parametrize("name", open_clip_simzss.__all__)
def test_every_public_name_imports_from_the_package(name):
    namespace = {}
    exec(f"from open_clip_simzss import {name}", namespace)
    assert namespace[name] is getattr(open_clip_simzss, name)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'ZeroShotSegmenter'"):
        open_clip_simzss.ZeroShotSegmenter
