"""Shared fixtures: real models from the verified cache, the dev corpus beside the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

from diarflow.evaluation import DevItem, default_dev_dir, load_dev_items
from diarflow.models import ModelPaths, ensure_models
from diarflow.operators.models import Resources

DATA_DIR = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def model_paths() -> ModelPaths:
    return ensure_models()


@pytest.fixture(scope="session")
def resources(model_paths: ModelPaths) -> Resources:
    return Resources.load(model_paths.silero_vad.parent)


@pytest.fixture(scope="session")
def dev_items() -> list[DevItem]:
    dev_dir = default_dev_dir()
    if not (dev_dir / "manifest.json").is_file():
        pytest.fail(f"dev corpus not found at {dev_dir}; set DIARFLOW_DEV_DIR")
    return load_dev_items(dev_dir)
