"""The folders are layers: lower ones never import upper ones (checked on the source, no models needed)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _diarflow_imports(folder: str) -> set[tuple[str, str]]:
    """``(file, module)`` for every absolute import of ``diarflow.*`` in the folder, function-level ones too."""
    found = set()
    for path in sorted((REPO / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            found |= {(path.name, m) for m in modules if m == "diarflow" or m.startswith("diarflow.")}
    return found


@pytest.mark.parametrize("folder, allowed", [("dataflow", ()), ("operators", ("diarflow.dataflow",))])
def test_lower_layers_import_nothing_above_them(folder: str, allowed: tuple[str, ...]) -> None:
    outside = {(name, module) for name, module in _diarflow_imports(folder)
               if not any(module == a or module.startswith(a + ".") for a in allowed)}
    assert not outside, f"{folder}/ reaches up: {sorted(outside)}"


def test_the_check_finds_imports() -> None:
    assert ("pipeline.py", "diarflow.dataflow") in _diarflow_imports("operators")
