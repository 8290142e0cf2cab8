"""Batch inputs: files, folders, globs, http(s) URLs and list files -> one :class:`BatchItem` per input."""

from __future__ import annotations

import csv
import glob
import hashlib
import os
import re
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from diarflow.batch_records import BatchItem, FileOutcome

__all__ = ["AUDIO_SUFFIXES", "LIST_SUFFIXES", "expand_inputs", "is_url"]

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".mp4", ".mkv", ".webm",
                            ".mov", ".wma", ".aif", ".aiff"})
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list", ".csv", ".parquet"})
URL_SCHEMES = ("http://", "https://")


def is_url(text: str) -> bool:
    return text.lower().startswith(URL_SCHEMES)


def _stem(path: str) -> str:
    name = urllib.parse.unquote(urllib.parse.urlparse(path).path) if is_url(path) else path
    stem = Path(name.rstrip("/")).stem
    return re.sub(r"[^\w.\-]+", "_", stem).strip("._") or "audio"  # RTTM fields are space-separated


def _read_list(list_path: Path) -> Iterator[tuple[str, str | None]]:
    """``(path, None)`` or ``(location, problem)`` per entry of a list file: a text file (one path or
    URL per line, ``#`` comments), or a CSV / Parquet table with a ``path`` column. Relative paths are
    relative to the list's folder."""
    suffix = list_path.suffix.lower()
    entries: list[tuple[int, Any]]
    if suffix == ".parquet":
        table = pq.read_table(list_path)
        if "path" not in table.column_names:
            raise ValueError(f"no 'path' column (columns: {', '.join(table.column_names)})")
        entries = list(enumerate(table.column("path").to_pylist(), start=1))
    elif suffix == ".csv":
        with open(list_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "path" not in (reader.fieldnames or []):
                raise ValueError(f"no 'path' column (header: {reader.fieldnames})")
            entries = [(n, row.get("path")) for n, row in enumerate(reader, start=2)]
    else:
        with open(list_path, encoding="utf-8") as f:
            entries = [(n, line) for n, line in enumerate(f, start=1)
                       if line.strip() and not line.lstrip().startswith("#")]
    for number, raw in entries:
        where = f"{list_path}:{number}"
        text = raw.strip() if isinstance(raw, str) else ""
        if not text:
            yield where, "empty path in the input list"
        elif any(ord(c) < 32 for c in text):
            yield where, "not a path (control characters) in the input list"
        elif "://" in text and not is_url(text):
            yield where, f"unsupported URL scheme in {text!r} (only http:// and https://)"
        else:
            yield (text if is_url(text) or os.path.isabs(text) else str(list_path.parent / text)), None


def expand_inputs(specs: Sequence[str], warn: Callable[[str], None] = lambda _: None
                  ) -> tuple[list[BatchItem], list[FileOutcome]]:
    """Files, folders (searched recursively for audio), globs, URLs and list files -> items to run.

    Returns the items (each path once, in a stable order) and the error rows of entries that cannot
    be run at all (a bad list line, an unreadable list). ``uri`` is the file stem, made unique with a
    short hash of the path where two inputs share a stem. A missing file is an item: it becomes an
    error row where it is processed (on a cluster, the worker's view of the path is the one that counts).
    """
    paths: list[str] = []
    problems: list[tuple[str, str]] = []
    for spec in specs:
        if is_url(spec):
            paths.append(spec)
        elif any(c in spec for c in "*?["):
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                warn(f"no file matches {spec!r}")
            paths.extend(m for m in matches if os.path.isfile(m))
        elif os.path.isdir(spec):
            found = sorted(str(p) for p in Path(spec).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
            if not found:
                warn(f"no audio file in folder {spec}")
            paths.extend(found)
        elif Path(spec).suffix.lower() in LIST_SUFFIXES and os.path.isfile(spec):
            try:
                for entry, problem in _read_list(Path(spec)):
                    if problem is None:
                        paths.append(entry)
                    else:
                        problems.append((entry, problem))
            except (OSError, ValueError, UnicodeDecodeError, pa.ArrowException, csv.Error) as exc:
                problems.append((spec, f"cannot read the input list: {exc}"))
        else:
            paths.append(spec)
    unique = list(dict.fromkeys(os.path.abspath(p) if not is_url(p) else p for p in paths))
    stems = Counter(_stem(p) for p in unique)
    items = [BatchItem(_stem(p) if stems[_stem(p)] == 1 else
                       f"{_stem(p)}-{hashlib.sha1(p.encode()).hexdigest()[:8]}", p) for p in unique]
    errors = [FileOutcome.failed(BatchItem(_stem(where), where), message) for where, message in problems]
    return items, errors
