"""The notebooks a user opens run, top to bottom, against a freshly audited workspace.

Executed with nbclient on the `audited_sample` fixture (the bundled sample through `audit
run`); they must be committed with outputs stripped and cell ids, import only `audit` and
the usual plotting libraries, and draw pictures (thumbnails and plots).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
ALLOWED_IMPORTS = {"audit", "os", "pathlib", "json", "matplotlib", "pandas", "huggingface_hub"}


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"explore_workspace.ipynb", "consent_and_bias.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)  # nbformat 4.5+: every cell needs an id
    assert all(cell.get("id") for cell in nb.cells)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [] and cell.execution_count is None, "outputs not stripped"
        for node in ast.walk(ast.parse(cell.source)):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert name.split(".")[0] in ALLOWED_IMPORTS, f"{path.name} imports {name}"
        assert "sys.path" not in cell.source  # the kernel imports the installed audit


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_a_fresh_workspace(path: Path, audited_sample: Path, monkeypatch):
    monkeypatch.setenv("AUDIT_WORKSPACE", str(audited_sample / "indexes" / "sample"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel draws inline, as in Jupyter
    monkeypatch.setenv("AUDIT_NO_PROGRESS", "1")
    # the kernel imports the `audit` of this checkout, installed or not
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) >= 3, "thumbnails and plots expected"
    text = "".join(o.get("text", "") for o in outputs)
    assert "sample: 300 rows" in text
