"""Every notebook runs from a clean kernel on the shipped clips and shows its figures (outputs stripped in git)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from diarflow.testing.evaluation import shipped_clips_dir

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def test_notebooks_are_stored_without_outputs() -> None:
    assert NOTEBOOKS
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


def test_notebooks_leave_the_plotting_backend_to_jupyter() -> None:
    """``matplotlib.use("Agg")`` in a notebook turns Jupyter's inline figures off."""
    for path in NOTEBOOKS:
        source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert "matplotlib.use(" not in source, f"{path.name} picks a matplotlib backend"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes_and_shows_figures(path: Path, tmp_path: Path, model_paths: object,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """From a clean kernel, as ``make notebooks`` opens them, on the clips shipped in the repository."""
    monkeypatch.setenv("DIARFLOW_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("DIARFLOW_DEV_DIR", str(shipped_clips_dir()))  # what a clone without ../shared sees
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own inline backend, as in JupyterLab
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors[0]
    figures = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert figures, f"{path.name} ran but showed no figure"
