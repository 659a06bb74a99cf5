"""notebooks/quickstart.ipynb runs top to bottom (nbclient) with the demo's quick model, so it never rots; it is
kept in git without outputs."""
import importlib.util
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # processes, training or installs (make test-fast leaves it out)

NOTEBOOK = Path(__file__).parents[2] / "notebooks" / "quickstart.ipynb"


def test_notebook_is_stored_without_outputs():
    import json
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)


def test_quickstart_notebook_runs_top_to_bottom(tmp_path, xdg_cache, quick_demo, monkeypatch):
    for module, extra in (("nbclient", "dev"), ("ipykernel", "dev")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the notebook test needs {module}: pip install 'open_clip_simzss[{extra}]'")
    import nbformat
    from nbclient import NotebookClient

    # The kernel inherits this environment: it finds the demo's quick model in the session's cache
    # (tests/conftest.py, quick_demo), the one the app tests use, never in the user's.
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg_cache))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # overlay, similarity maps, PCA picture
    assert "the demo's quick SimZSS" in text
    miou, chance = map(float, re.search(r"mIoU ([\d.]+) on 8 scenes \(chance ([\d.]+)\)", text).groups())
    assert miou > 2 * chance
