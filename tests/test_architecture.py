"""The house (docs/README.md, "The house"), read from the source (AST), not from a running interpreter.

- Layers only look down: every module of ``open_clip_simzss`` has a floor (``FLOORS``), and imports only modules
  of lower floors or of its own subpackage. No library module (below ``workflows``) imports the command line,
  the trainer, OpenCLIP's trainer, ``argparse`` or ``subprocess``; only ``workflows/launch.py`` starts processes.
- No import cycle in ``src/`` (every import statement, ``if __name__`` blocks included; importing ``a.b.c`` runs
  ``a`` and ``a.b`` first, so a package's ``__init__`` counts).
- One entry point per command: ``__main__.py`` and the console scripts point at ``cli/``; no other module of the
  package has an ``if __name__ == "__main__":`` block.
- At most 12 modules at the top of the package (besides ``__init__``, ``__main__`` and ``version``), each
  subpackage says what it holds in its ``__init__`` docstring, and no module of ``src/`` has more than 500 lines.
- Each module-level constant is defined in one module; nothing under ``src/`` cites a document outside the
  repository.
"""
import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PACKAGE = SRC / "open_clip_simzss"
MAX_LINES = 500
MAX_TOP_MODULES = 12

# The floors of the package, bottom to top: a module may import from lower floors, and from its own subpackage.
FLOORS = [
    {"version", "validation", "atomic", "images", "extras", "compat", "variants", "batch", "denoiser",
     "model_configs"},
    {"model", "loss"},
    {"weights"},
    {"factory"},
    {"concepts"},
    {"segmentation"},
    {"evaluation"},
    {"workflows"},
    {"cli"},
    {"__main__", "open_clip_simzss"},  # the entry point and the package face
]
LIBRARY_TOP = FLOORS.index({"workflows"})  # floors below this one are the library
UPWARD = ("open_clip_simzss.cli", "open_clip_simzss.workflows", "training", "open_clip_train", "argparse",
          "subprocess")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py")) if "egg-info" not in str(p)}
PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


def imports(path: Path):
    """(imported module, line) of every import statement of a file, at any depth (``if __name__`` blocks and
    function bodies included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:  # "from . import launch" imports the module open_clip_simzss.workflows.launch
                target = f"{base}.{alias.name}"
                found.append((target if target in MODULES else base, node.lineno))
    return found


def with_parents(name: str, importer: str):
    """``a.b.c`` and the packages Python runs first to import it (``a``, ``a.b``) but those the importer is
    part of: they are being imported already (a package's ``__init__`` that imports its own modules)."""
    parts = name.split(".")
    own = set(with_own(importer))
    return [p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if p == name or p not in own]


def with_own(name: str):
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def graph():
    """{module: modules of src/ that importing it runs}."""
    return {name: {m for target, _ in imports(path) for m in with_parents(target, name) if m in MODULES and m != name}
            for name, path in MODULES.items()}


def room(name: str) -> str:
    """The top-level module or subpackage of the package a module lives in (``open_clip_simzss`` for the face)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def floor(name: str) -> int:
    return next(i for i, rooms in enumerate(FLOORS) if room(name) in rooms)


PACKAGE_MODULES = {name for name in MODULES if name.split(".")[0] == "open_clip_simzss"}
LIBRARY = {name for name in PACKAGE_MODULES if floor(name) < LIBRARY_TOP}


def test_the_scan_sees_the_package():
    assert {"open_clip_simzss.weights.load", "open_clip_simzss.cli.common", "training.main"} <= set(MODULES)
    factory = {m for m, _ in imports(MODULES["open_clip_simzss.factory"])}
    assert {"open_clip_simzss.weights.build", "open_clip_simzss.model", "open_clip.transform"} <= factory
    demo = {m for m, _ in imports(MODULES["open_clip_simzss.workflows.demo"])}
    assert "open_clip_simzss.workflows.launch" in demo  # "from . import launch, synthetic"
    assert "open_clip_simzss.weights" in graph()["open_clip_simzss.factory"]  # a subpackage's __init__ runs first


def test_every_module_has_a_floor():
    assert all(floor(name) >= 0 for name in PACKAGE_MODULES)
    top = {room(name) for name in PACKAGE_MODULES}
    assert top == set().union(*FLOORS), "a new top-level module or subpackage needs a floor in FLOORS"


@pytest.mark.parametrize("name", sorted(PACKAGE_MODULES - {"open_clip_simzss"}))
def test_layers_only_look_down(name):
    """A module imports lower floors or its own room; the package face (``open_clip_simzss``) is imported by
    nothing (a module that needs a name imports it from where it lives)."""
    up = [(m, line) for m, line in imports(MODULES[name])
          if m in PACKAGE_MODULES and room(m) != room(name) and floor(m) >= floor(name)]
    assert not up, f"{name} (floor {floor(name)}) imports upwards or sideways: {up}"


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_the_library_imports_no_command_line_trainer_or_process(name):
    bad = [(m, line) for m, line in imports(MODULES[name]) if m.startswith(UPWARD)]
    assert not bad, f"{name} imports {bad}"


def test_only_the_launcher_starts_processes():
    starters = {name for name in PACKAGE_MODULES if any(m == "subprocess" for m, _ in imports(MODULES[name]))}
    assert starters == {"open_clip_simzss.workflows.launch"}


def find_cycle(graph):
    """One import cycle of a {module: imported modules} graph as a list (first module repeated), or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, stack + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name, [name])
            if cycle:
                return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_detection_works():
    """The checker itself finds a cycle through three modules, and none in a diamond."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) is None


def test_one_entry_point_per_command():
    from open_clip_simzss.__main__ import COMMANDS
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {f"simzss-{c}": f"open_clip_simzss.cli.{m}:main" for c, m in COMMANDS.items()} == scripts
    for module in COMMANDS.values():
        text = MODULES[f"open_clip_simzss.cli.{module}"].read_text()
        assert "def main(argv=None) -> int:" in text or "def main(argv: Optional" in text, module
    guarded = [name for name in PACKAGE_MODULES if name != "open_clip_simzss.__main__"
               and re.search(r'^if __name__ == "__main__":', MODULES[name].read_text(), re.M)]
    assert not guarded, f"__main__ blocks outside __main__.py: {guarded}"


def test_rooms_and_sizes():
    top = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py", "version.py")]
    assert len(top) <= MAX_TOP_MODULES, sorted(top)
    for package in PACKAGES:
        if package.startswith("open_clip_simzss."):
            doc = ast.get_docstring(ast.parse(MODULES[package].read_text()))
            assert doc and len(doc) > 200 and "import" in doc, f"{package}/__init__.py must say what it holds and " \
                                                               "what it may import"
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_each_constant_is_defined_once():
    where = {}
    for name in sorted(PACKAGE_MODULES | {m for m in MODULES if m.startswith("training")}):
        for node in ast.parse(MODULES[name].read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            for target in targets:
                if isinstance(target, ast.Name) and re.fullmatch(r"[A-Z][A-Z0-9_]+", target.id):
                    where.setdefault(target.id, []).append(name)
    repeated = {k: v for k, v in where.items() if len(v) > 1}
    assert not repeated, repeated


CITATION = re.compile(r"SPEC\.md|SPEC §|EVAL_PROTOCOL|\.\./shared|\bshared/(data|SPEC|EVAL)")


def test_no_citation_of_documents_outside_the_repository():
    found = []
    for path in sorted(SRC.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".md", ".txt", ".json", ".sh") and "egg-info" not in str(path):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if CITATION.search(line):
                    found.append(f"{path.relative_to(SRC)}:{number}: {line.strip()[:80]}")
    assert not found, "\n".join(found)
    assert CITATION.search("see SPEC §5") and CITATION.search("EVAL_PROTOCOL.md §3")  # the pattern itself
