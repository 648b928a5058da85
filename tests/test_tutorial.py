"""docs/tutorial.ipynb runs top to bottom, and its outputs are not committed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "docs" / "tutorial.ipynb"


def test_tutorial_is_committed_without_outputs():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "the tutorial has no code cells"
    for i, cell in enumerate(code):
        assert not cell.get("outputs"), f"code cell {i} of the tutorial has committed outputs: clear them"
        assert cell.get("execution_count") is None, f"code cell {i} of the tutorial has an execution count"


def test_tutorial_runs_top_to_bottom(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # figures inline, as in Jupyter
    nb = nbformat.read(NOTEBOOK, as_version=4)
    t0 = time.perf_counter()
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    seconds = time.perf_counter() - t0
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    # the run file the tutorial made, read back by pyNSID in its last cells, is where it says
    assert list(tmp_path.rglob("*.h5")), "the tutorial wrote no run file"
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 4, f"the tutorial showed {len(images)} figures"
    print(f"tutorial executed in {seconds:.0f} s")
