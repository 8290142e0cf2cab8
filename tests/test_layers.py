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


_SHARED_FACTS = {"SAMPLE_RATE", "EMBEDDING_DIM", "VAD_WINDOW_SAMPLES", "CONFIDENCE_FRAME_SAMPLES"}


def test_shared_facts_are_defined_once() -> None:
    """Sample rate, embedding width, VAD window and confidence frame live in ``operators/constants.py``;
    everything else imports them (the golden script runs in its own torch virtualenv, outside diarflow)."""
    definitions = []
    for folder in ("dataflow", "operators", "servers", "diarflow", "tools"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                    if isinstance(node, ast.AnnAssign) else []
                definitions += [f"{path.relative_to(REPO)}:{t.id}" for t in targets
                                if isinstance(t, ast.Name) and t.id in _SHARED_FACTS]
    expected = {f"operators/constants.py:{name}" for name in _SHARED_FACTS}
    assert set(definitions) - {"tools/golden/make_campplus_golden.py:SAMPLE_RATE"} == expected
    assert len(definitions) == len(set(definitions))


def test_every_declared_dependency_is_imported() -> None:
    """A runtime dependency nothing imports is dead weight for every install (numba and soxr were)."""
    import re
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~; \[]", requirement, maxsplit=1)[0].lower() for requirement in declared}
    imported = set()
    for folder in ("dataflow", "operators", "servers", "diarflow"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    assert names - imported == set(), "declared but never imported"
