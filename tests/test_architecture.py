"""Import directions and citations, read from the source (AST), not from a running interpreter.

- Library modules (everything in ``open_clip_simzss`` but ``cli/``) import no argparse and nothing from
  ``cli/``: the only exception is the two-line ``if __name__ == "__main__":`` block that makes
  ``python -m open_clip_simzss.<name>`` run the command.
- No two modules of the package import each other, directly or through others (no cycle).
- Each module-level constant is defined in one module.
- Nothing under ``src/`` cites a document outside the repository.
"""
import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "open_clip_simzss"
COMMANDS = ("segment", "visualize", "evaluate", "preprocess", "checkpoint", "clip_benchmark", "demo")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_main_guard(node) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def imports(path: Path):
    """(imported module, line) of every import statement of a file, at any depth, except inside its
    ``if __name__ == "__main__":`` block."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if is_main_guard(child):
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(anchor + ([child.module] if child.module else []))
                for alias in child.names:  # "from . import weights" imports the module open_clip_simzss.weights
                    target = f"{base}.{alias.name}"
                    found.append((target if target in MODULES else base, child.lineno))
            visit(child)
    visit(tree)
    return found


LIBRARY = {name: path for name, path in MODULES.items() if not name.startswith("open_clip_simzss.cli")}


def test_the_scan_sees_the_package():
    assert {"open_clip_simzss.loading", "open_clip_simzss.cli.common"} <= set(MODULES)
    factory = {m for m, _ in imports(MODULES["open_clip_simzss.factory"])}
    assert {"open_clip_simzss.weights", "open_clip_simzss.model", "open_clip"} <= factory  # "from . import weights"
    common = {m for m, _ in imports(MODULES["open_clip_simzss.cli.common"])}
    assert {"open_clip_simzss", "open_clip_simzss.loading", "argparse"} <= common  # "from .. import __version__"


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_library_modules_import_no_argparse_and_no_cli(name):
    bad = [(m, line) for m, line in imports(LIBRARY[name])
           if m == "argparse" or m.startswith("open_clip_simzss.cli")]
    assert not bad, f"{name} imports {bad}"


def test_every_command_is_a_cli_module_and_a_python_m_module():
    for command in COMMANDS:
        cli = MODULES[f"open_clip_simzss.cli.{command}"]
        assert "def main(argv=None) -> int:" in cli.read_text() or "def main(argv: Optional" in cli.read_text()
        tree = ast.parse(MODULES[f"open_clip_simzss.{command}"].read_text())
        guards = [node for node in tree.body if is_main_guard(node)]
        assert guards and f"open_clip_simzss.cli.{command}" in ast.unparse(guards[0]), command


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
    graph = {name: {m for m, _ in imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_detection_works():
    """The checker itself finds a cycle through three modules, and none in a diamond."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) is None


def test_each_constant_is_defined_once():
    where = {}
    for name, path in LIBRARY.items():
        for node in ast.parse(path.read_text()).body:
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
