"""Shared fixtures: real models from the verified cache, real speech from the clips shipped in ``tests/data``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator

import aiohttp
import pytest

from diarflow.testing.evaluation import DevItem, load_dev_items, shipped_clips_dir
from diarflow.provisioning import ModelPaths, ensure_models
from diarflow.operators.models import Resources
from diarflow.resources import load_resources

if TYPE_CHECKING:
    from diarflow.testing import ServerProcess

DATA_DIR = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def model_paths() -> ModelPaths:
    return ensure_models()


@pytest.fixture(scope="session")
def resources(model_paths: ModelPaths) -> Resources:
    return load_resources(model_paths.silero_vad.parent)


@pytest.fixture(scope="session")
def speech_clips() -> dict[str, DevItem]:
    """The real-speech clips of ``tests/data/speech`` by name: ``two_speakers`` (59 s), ``three_speakers``
    (49 s), ``six_speakers`` (58 s), ``phone_two_speakers`` (29 s); exact references (see its README).

    Tests use only these, so a clone with no dev corpus beside it runs the whole suite; accuracy on the
    dev corpus is measured by the benchmarks in ``tools/``.
    """
    return {item.uri: item for item in load_dev_items(shipped_clips_dir())}


_NEEDS_MODELS_OR_SPEECH = {"model_paths", "resources", "speech_clips"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that needs the real models or real speech (directly or through a fixture),
    so that ``pytest -m "not slow"`` is the quick, model-free tier."""
    for item in items:
        if _NEEDS_MODELS_OR_SPEECH & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def api_headers() -> dict[str, str]:
    """Headers of every request of the ``api`` client; a module overrides it to send other ones."""
    return {"Authorization": "Bearer key-a"}


@pytest.fixture
async def api(server: ServerProcess, api_headers: dict[str, str]) -> AsyncIterator[aiohttp.ClientSession]:
    """A client of the job API on the test module's own ``server`` fixture (a real server process)."""
    async with aiohttp.ClientSession(server.url, headers=api_headers) as session:
        yield session
