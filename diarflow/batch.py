"""Batch diarization of many files: inputs, one file's processing, outputs and resume (any engine).

The engine (a local process pool here, Ray Data in :mod:`diarflow.ray_backend`) only decides *where*
:func:`process_file` runs; expanding the inputs, writing the outputs and knowing what is already done
live here, so both engines produce the same folder:

```
OUT/<uri>.rttm, OUT/<uri>.json      per file, as ``diarflow diarize`` writes them
OUT/segments/part-*.parquet         one dataset: uri, start_s, end_s, speaker, confidence
OUT/files/part-*.parquet            one row per input: uri, path, status, error, duration_s, speakers,
                                    seconds_compute (status "ok" rows are what a re-run skips)
```
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import multiprocessing
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Literal, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from diarflow.operators.speaker_count import SpeakerCount, count_from_text

__all__ = [
    "FILES_SCHEMA", "OUTCOME_SCHEMA", "SEGMENTS_SCHEMA", "BatchItem", "BatchOptions", "BatchReport",
    "BatchWriter", "FileOutcome", "expand_inputs", "outcomes_from_table", "outcomes_to_table",
    "process_file", "run_batch",
]

FORMATS = ("rttm", "json", "parquet")
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".mp4", ".mkv", ".webm",
                            ".mov", ".wma", ".aif", ".aiff"})
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list", ".csv", ".parquet"})
URL_SCHEMES = ("http://", "https://")
WORKER_DIED = "the worker processing this file died (tried twice)"

SEGMENTS_SCHEMA = pa.schema([
    pa.field("uri", pa.string(), nullable=False),
    pa.field("start_s", pa.float64(), nullable=False),
    pa.field("end_s", pa.float64(), nullable=False),
    pa.field("speaker", pa.string(), nullable=False),
    pa.field("confidence", pa.uint8()),  # the turn's 0-100 score for its own speaker (offline mode)
])
FILES_SCHEMA = pa.schema([
    pa.field("uri", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # "ok" or "error"
    pa.field("error", pa.string()),
    pa.field("duration_s", pa.float64()),
    pa.field("speakers", pa.int32()),
    pa.field("seconds_compute", pa.float64(), nullable=False),
])
# what a worker hands back per file (engines ship this table; explicit so all-null columns keep their type)
OUTCOME_SCHEMA = pa.schema(list(FILES_SCHEMA) + [
    pa.field("rttm", pa.string()),
    pa.field("json", pa.string()),
    pa.field("seg_start_s", pa.list_(pa.float64())),
    pa.field("seg_end_s", pa.list_(pa.float64())),
    pa.field("seg_speaker", pa.list_(pa.string())),
    pa.field("seg_confidence", pa.list_(pa.uint8())),
])


@dataclass(frozen=True)
class BatchOptions:
    """What to compute for every file (small and picklable: it is every worker's constructor argument).

    Parameters
    ----------
    num_speakers
        Exact number of speakers per file, if known (excludes ``min_speakers`` / ``max_speakers``).
    min_speakers, max_speakers
        Bounds on each file's estimated number of speakers (>= 1, min <= max).
    formats
        Outputs: any of ``rttm``, ``json`` (per file) and ``parquet`` (the segments dataset). The
        ``files`` table is always written: it is the resume record.
    model_dir
        Model cache on the workers; ``None``: their ``$DIARFLOW_MODEL_DIR`` or ``~/.cache/diarflow/models``.
    url_timeout_s
        Socket timeout for downloading an input URL, seconds (> 0).
    """

    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    formats: tuple[str, ...] = FORMATS
    model_dir: str | None = None
    url_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        SpeakerCount(self.num_speakers, self.min_speakers, self.max_speakers)  # SpeakerCountError if invalid
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown or not self.formats:
            raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {self.formats}; "
                             "hint: --format rttm,json,parquet")
        if self.url_timeout_s <= 0:
            raise ValueError(f"url_timeout_s must be > 0, got {self.url_timeout_s}")


@dataclass(frozen=True)
class BatchItem:
    """One input to diarize: ``uri`` names its outputs, ``path`` is a local path or an http(s) URL."""

    uri: str
    path: str


@dataclass(frozen=True)
class FileOutcome:
    """One file's row of the ``files`` table, plus its per-file outputs when it succeeded.

    ``segments`` holds ``(start_s, end_s, speaker, confidence)`` tuples, sorted by start.
    """

    uri: str
    path: str
    status: Literal["ok", "error"]
    error: str | None = None
    duration_s: float | None = None
    speakers: int | None = None
    seconds_compute: float = 0.0
    rttm: str | None = None
    json: str | None = None
    segments: tuple[tuple[float, float, str, int | None], ...] = ()

    @classmethod
    def failed(cls, item: BatchItem, error: str, seconds_compute: float = 0.0) -> FileOutcome:
        return cls(item.uri, item.path, "error", error, seconds_compute=seconds_compute)


# ---------------------------------------------------------------------------------------------- inputs

def _is_url(text: str) -> bool:
    return text.lower().startswith(URL_SCHEMES)


def _stem(path: str) -> str:
    name = urllib.parse.unquote(urllib.parse.urlparse(path).path) if _is_url(path) else path
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
        elif "://" in text and not _is_url(text):
            yield where, f"unsupported URL scheme in {text!r} (only http:// and https://)"
        else:
            yield (text if _is_url(text) or os.path.isabs(text) else str(list_path.parent / text)), None


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
        if _is_url(spec):
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
    unique = list(dict.fromkeys(os.path.abspath(p) if not _is_url(p) else p for p in paths))
    stems = Counter(_stem(p) for p in unique)
    items = [BatchItem(_stem(p) if stems[_stem(p)] == 1 else
                       f"{_stem(p)}-{hashlib.sha1(p.encode()).hexdigest()[:8]}", p) for p in unique]
    errors = [FileOutcome.failed(BatchItem(_stem(where), where), message) for where, message in problems]
    return items, errors


# ------------------------------------------------------------------------------------- one file's work

class _DownloadError(Exception):
    pass


def _download(url: str, dest: Path, timeout_s: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "diarflow-batch"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response, open(dest, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except urllib.error.HTTPError as exc:
        raise _DownloadError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _DownloadError(f"could not download {url}: {reason}") from None


def process_file(item: BatchItem, options: BatchOptions, resources: Any = None) -> FileOutcome:
    """Diarize one input (a URL is downloaded to a temporary file first); never raises.

    Parameters
    ----------
    item
        The input.
    options
        Speaker constraints and formats.
    resources
        Loaded models (:class:`diarflow.operators.models.Resources`); ``None``: once per process.

    Returns
    -------
    FileOutcome
        ``status="ok"`` with the RTTM / JSON text and the segments, or ``"error"`` with a message.
    """
    from diarflow.api import diarize
    from diarflow.audio import AudioDecodeError

    started = time.perf_counter()
    scratch: tempfile.TemporaryDirectory[str] | None = None
    try:
        if _is_url(item.path):
            scratch = tempfile.TemporaryDirectory(prefix="diarflow-batch-")
            local = Path(scratch.name) / "input"
            _download(item.path, local, options.url_timeout_s)
        else:
            local = Path(item.path)
            if not local.is_file():
                raise FileNotFoundError(f"file not found: {item.path}")
        result = diarize(local, num_speakers=options.num_speakers, min_speakers=options.min_speakers,
                         max_speakers=options.max_speakers, resources=resources, uri=item.uri)
    except (AudioDecodeError, FileNotFoundError, _DownloadError, ValueError, OSError) as exc:
        message = str(exc).replace(str(scratch.name) + "/input", item.path) if scratch else str(exc)
        return FileOutcome.failed(item, message, time.perf_counter() - started)
    except Exception as exc:  # one broken file is an error row, never a dead batch
        return FileOutcome.failed(item, f"{type(exc).__name__}: {exc}", time.perf_counter() - started)
    finally:
        if scratch is not None:
            scratch.cleanup()
    segments = tuple((s.start_s, s.end_s, s.speaker, s.confidence.get(s.speaker)) for s in result.segments)
    return FileOutcome(
        item.uri, item.path, "ok", None, result.duration_s, len(result.speakers), time.perf_counter() - started,
        result.to_rttm() if "rttm" in options.formats else None,
        json.dumps(result.to_json(), indent=1) if "json" in options.formats else None,
        segments,
    )


def outcomes_to_table(outcomes: Sequence[FileOutcome]) -> pa.Table:
    """Outcomes as an :data:`OUTCOME_SCHEMA` table (what an engine's workers hand back)."""
    return pa.table({
        "uri": [o.uri for o in outcomes], "path": [o.path for o in outcomes],
        "status": [o.status for o in outcomes], "error": [o.error for o in outcomes],
        "duration_s": [o.duration_s for o in outcomes], "speakers": [o.speakers for o in outcomes],
        "seconds_compute": [o.seconds_compute for o in outcomes],
        "rttm": [o.rttm for o in outcomes], "json": [o.json for o in outcomes],
        "seg_start_s": [[s[0] for s in o.segments] for o in outcomes],
        "seg_end_s": [[s[1] for s in o.segments] for o in outcomes],
        "seg_speaker": [[s[2] for s in o.segments] for o in outcomes],
        "seg_confidence": [[s[3] for s in o.segments] for o in outcomes],
    }, schema=OUTCOME_SCHEMA)


def outcomes_from_table(table: pa.Table) -> list[FileOutcome]:
    """Inverse of :func:`outcomes_to_table`."""
    out = []
    for row in table.to_pylist():
        segments = tuple(zip(row["seg_start_s"] or [], row["seg_end_s"] or [], row["seg_speaker"] or [],
                             row["seg_confidence"] or []))
        out.append(FileOutcome(row["uri"], row["path"], row["status"], row["error"], row["duration_s"],
                               row["speakers"], row["seconds_compute"], row["rttm"], row["json"], segments))
    return out


# --------------------------------------------------------------------------------- outputs and resume

def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_parquet_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


class BatchWriter:
    """Writes outcomes as they arrive and knows which inputs an earlier run finished.

    Per-file RTTM / JSON are written at once; table rows are buffered and written as one part file
    of ``segments/`` and then of ``files/`` (same name) every ``flush_every`` outcomes or
    ``flush_interval_s`` seconds, so a crash loses at most that much and never half a part: a
    ``segments`` part without its ``files`` part is deleted by the next run, whose ``files`` rows
    are then missing and the files are done again.
    """

    def __init__(self, out_dir: Path, formats: Sequence[str], flush_every: int = 64,
                 flush_interval_s: float = 30.0) -> None:
        self.out_dir = Path(out_dir)
        self.formats = tuple(formats)
        self.flush_every = flush_every
        self.flush_interval_s = flush_interval_s
        self.files_dir = self.out_dir / "files"
        self.segments_dir = self.out_dir / "segments"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.segments_dir.mkdir(parents=True, exist_ok=True)
        self._run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
        self._seq = 0
        self._pending: list[FileOutcome] = []
        self._last_flush = time.monotonic()
        self._drop_orphan_segments()

    def _drop_orphan_segments(self) -> None:
        for part in self.segments_dir.glob("part-*.parquet"):
            if not (self.files_dir / part.name).is_file():
                part.unlink()
        for tmp in [*self.segments_dir.glob(".*.tmp"), *self.files_dir.glob(".*.tmp"), *self.out_dir.glob(".*.tmp")]:
            tmp.unlink()

    def read_files(self) -> pa.Table:
        """The ``files`` table so far, one row per path (the latest)."""
        parts = sorted(self.files_dir.glob("part-*.parquet"))
        if not parts:
            return FILES_SCHEMA.empty_table()
        table = pa.concat_tables([pq.read_table(p, schema=FILES_SCHEMA) for p in parts])
        latest = {path: i for i, path in enumerate(table.column("path").to_pylist())}
        return table.take(sorted(latest.values()))

    def done_paths(self) -> set[str]:
        """Inputs an earlier run diarized successfully (a re-run skips them)."""
        table = self.read_files()
        return {p for p, s in zip(table.column("path").to_pylist(), table.column("status").to_pylist()) if s == "ok"}

    def add(self, outcome: FileOutcome) -> None:
        if outcome.status == "ok":
            if "rttm" in self.formats and outcome.rttm is not None:
                _write_atomic(self.out_dir / f"{outcome.uri}.rttm", outcome.rttm.encode())
            if "json" in self.formats and outcome.json is not None:
                _write_atomic(self.out_dir / f"{outcome.uri}.json", outcome.json.encode())
        self._pending.append(outcome)
        if len(self._pending) >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        name = f"part-{self._run_id}-{self._seq:05d}.parquet"
        self._seq += 1
        if "parquet" in self.formats:
            rows = [(o.uri, *s) for o in pending for s in o.segments]
            segments = pa.table({
                "uri": [r[0] for r in rows], "start_s": [r[1] for r in rows], "end_s": [r[2] for r in rows],
                "speaker": [r[3] for r in rows], "confidence": [r[4] for r in rows]}, schema=SEGMENTS_SCHEMA)
            _write_parquet_atomic(segments, self.segments_dir / name)
        files = pa.table({
            "uri": [o.uri for o in pending], "path": [o.path for o in pending],
            "status": [o.status for o in pending], "error": [o.error for o in pending],
            "duration_s": [o.duration_s for o in pending], "speakers": [o.speakers for o in pending],
            "seconds_compute": [o.seconds_compute for o in pending]}, schema=FILES_SCHEMA)
        _write_parquet_atomic(files, self.files_dir / name)

    def close(self) -> None:
        """Write what is buffered (parts are never merged: a ``files`` part vouches for its partner)."""
        self.flush()


# ------------------------------------------------------------------------------------------- progress

class Progress:
    """One status line: files done, hours of audio done, throughput (hours of audio per wall-clock minute)."""

    def __init__(self, total_files: int, stream: IO[str] | None, period_s: float = 10.0) -> None:
        self.total_files = total_files
        self.stream = stream
        self.period_s = period_s
        self.done = 0
        self.failed = 0
        self.audio_s = 0.0
        self.started = time.monotonic()
        self._last_print = 0.0
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())

    def line(self) -> str:
        elapsed_s = max(time.monotonic() - self.started, 1e-9)
        rate = self.audio_s / 3600 / (elapsed_s / 60)
        return (f"{self.done}/{self.total_files} files ({self.failed} failed), {self.audio_s / 3600:.2f} h of audio, "
                f"{rate:.2f} h/min ({self.audio_s / elapsed_s:.0f}x real time), {elapsed_s:.0f} s")

    def update(self, outcome: FileOutcome) -> None:
        self.done += 1
        self.failed += outcome.status != "ok"
        self.audio_s += outcome.duration_s or 0.0
        if self.stream is None:
            return
        now = time.monotonic()
        if self.tty:
            self.stream.write(f"\r{self.line()}")
            self.stream.flush()
        elif now - self._last_print >= self.period_s or self.done == self.total_files:
            self._last_print = now
            print(self.line(), file=self.stream, flush=True)

    def finish(self) -> None:
        if self.stream is not None and self.tty:
            self.stream.write("\n")


# -------------------------------------------------------------------------------------- local engine

_worker_resources: Any = None


def _watch_parent(parent_pid: int) -> None:
    while True:  # a worker whose batch died (even by SIGKILL) must not keep burning a core
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


def _init_local_worker(model_dir: str | None, parent_pid: int) -> None:
    global _worker_resources
    from diarflow.resources import load_resources

    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    _worker_resources = load_resources(Path(model_dir) if model_dir else None, parallel_calls=1)


def _process_in_worker(item: BatchItem, options: BatchOptions) -> FileOutcome:
    return process_file(item, options, _worker_resources)


class _LocalSlot:
    """One worker process (a one-process pool, so a crash loses only the file it was running)."""

    def __init__(self, model_dir: str | None) -> None:
        self._model_dir = model_dir
        self.pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_local_worker, initargs=(self._model_dir, os.getpid()))

    def restart(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = self._new_pool()

    def close(self) -> None:
        processes = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            proc.kill()
            proc.join(5)


def run_local(items: Sequence[BatchItem], options: BatchOptions, workers: int,
              on_outcome: Callable[[FileOutcome], None]) -> None:
    """Run ``items`` on ``workers`` local processes (models loaded once each); outcomes as they finish.

    A file whose worker dies is run once more on a fresh worker, then becomes an error row.
    """
    queue = deque(items)
    slots = [_LocalSlot(options.model_dir) for _ in range(min(workers, len(items)))]
    running: dict[Future[FileOutcome], tuple[_LocalSlot, BatchItem]] = {}
    crashes: Counter[str] = Counter()

    def feed(slot: _LocalSlot) -> None:
        if queue:
            item = queue.popleft()
            running[slot.pool.submit(_process_in_worker, item, options)] = (slot, item)

    try:
        for slot in slots:
            feed(slot)
        while running:
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                slot, item = running.pop(future)
                try:
                    on_outcome(future.result())
                except BrokenProcessPool:
                    slot.restart()
                    crashes[item.path] += 1
                    if crashes[item.path] >= 2:
                        on_outcome(FileOutcome.failed(item, WORKER_DIED))
                    else:
                        queue.appendleft(item)
                feed(slot)
    finally:
        for slot in slots:
            slot.close()


# ------------------------------------------------------------------------------------------ the batch

@dataclass
class BatchReport:
    """What a run did: inputs found, skipped as done, processed, failed; hours of audio; wall time."""

    inputs: int = 0
    skipped: int = 0
    processed: int = 0
    failed: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0
    errors: list[tuple[str, str]] = field(default_factory=list)


class BatchError(Exception):
    """The batch itself could not run (nothing to do, unusable output folder, no Ray): exit non-zero."""


def run_batch(inputs: Sequence[str], out_dir: str | Path, options: BatchOptions | None = None, *,
              engine: Literal["local", "ray"] = "local", workers: int = 0, ray_address: str | None = None,
              stream: IO[str] | None = sys.stderr) -> BatchReport:
    """Diarize every input into ``out_dir``, skipping inputs an earlier run finished.

    Parameters
    ----------
    inputs
        Files, folders, globs, http(s) URLs and list files (``.txt`` / ``.csv`` / ``.parquet``).
    out_dir
        Output folder (created if missing); the resume record lives in it.
    options
        Speaker constraints, formats and model folder.
    engine
        ``"local"``: a process pool here. ``"ray"``: Ray Data on an actor pool (``pip install 'diarflow[ray]'``).
    workers
        Worker processes / actors; 0 = one per core (local) or per CPU of the Ray cluster.
    ray_address
        ``"auto"`` or ``host:port`` of a running Ray cluster; ``None`` starts a local Ray (ray engine).
    stream
        Where the progress line and warnings go; ``None`` for silence.

    Raises
    ------
    BatchError
        The batch could not run at all; per-file problems are error rows instead.
    """
    options = options or BatchOptions()
    if engine not in ("local", "ray"):
        raise BatchError(f"engine must be 'local' or 'ray', got {engine!r}")
    if workers < 0:
        raise BatchError(f"workers must be >= 0 (0 = one per core), got {workers}")
    started = time.monotonic()

    def warn(message: str) -> None:
        if stream is not None:
            print(f"diarflow: {message}", file=stream)

    items, input_errors = expand_inputs(inputs, warn)
    if not items and not input_errors:
        raise BatchError("no input files found (check the paths, globs and list files given)")
    try:
        writer = BatchWriter(Path(out_dir), options.formats)
        done = writer.done_paths()
    except OSError as exc:
        raise BatchError(f"cannot use output folder {out_dir}: {exc}") from None
    todo = [item for item in items if item.path not in done]
    report = BatchReport(inputs=len(items) + len(input_errors), skipped=len(items) - len(todo))
    if report.skipped:
        warn(f"{report.skipped} of {len(items)} inputs already done in {out_dir}; skipping them")
    progress = Progress(len(todo) + len(input_errors), stream)

    def record(outcome: FileOutcome) -> None:
        writer.add(outcome)
        progress.update(outcome)
        report.processed += 1
        report.audio_s += outcome.duration_s or 0.0
        if outcome.status != "ok":
            report.failed += 1
            report.errors.append((outcome.path, outcome.error or ""))
            if stream is not None and not progress.tty:
                warn(f"{outcome.path}: {outcome.error}")

    try:
        for outcome in input_errors:
            record(outcome)
        if todo:
            if engine == "ray":
                from diarflow.ray_backend import RayUnavailable, run_batch_on_ray

                try:
                    run_batch_on_ray(todo, options, workers, ray_address, record)
                except RayUnavailable as exc:
                    raise BatchError(str(exc)) from None
            else:
                run_local(todo, options, workers or (os.cpu_count() or 1), record)
    finally:
        writer.close()
        progress.finish()
    report.wall_s = time.monotonic() - started
    return report


def batch_command(args: Any) -> int:
    """``diarflow batch``: the CLI's entry (parsed ``argparse`` arguments) -> exit status."""
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    try:
        options = BatchOptions(args.num_speakers, args.min_speakers, args.max_speakers, formats,
                               args.model_dir)
        report = run_batch(args.inputs, args.out, options, engine=args.engine, workers=args.workers,
                           ray_address=args.ray_address)
    except (BatchError, ValueError) as exc:
        print(f"diarflow: batch could not run: {exc}", file=sys.stderr)
        return 1
    rate = report.audio_s / 3600 / max(report.wall_s / 60, 1e-9)
    print(f"batch done: {report.processed - report.failed} diarized, {report.failed} failed, "
          f"{report.skipped} skipped (done earlier); {report.audio_s / 3600:.2f} h of audio in "
          f"{report.wall_s:.1f} s ({rate:.2f} h/min) -> {args.out}")
    for path, error in report.errors[:20]:
        print(f"  failed: {path}: {error}", file=sys.stderr)
    if len(report.errors) > 20:
        print(f"  ... and {len(report.errors) - 20} more (see {args.out}/files)", file=sys.stderr)
    return 0


def _positive_int(text: str) -> int:
    import argparse

    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    return 0 if int(text) == 0 else _positive_int(text)


def add_batch_arguments(parser: Any) -> None:
    """The ``batch`` subcommand's options (kept here so ``cli.py`` only registers the command)."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="files, folders, globs, http(s) URLs, or list files (.txt one per line; "
                             ".csv / .parquet with a 'path' column)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing; "
                        "a re-run skips files already done there)")
    parser.add_argument("--format", default=",".join(FORMATS),
                        help="comma-separated: rttm, json (per file), parquet (segments dataset); default all")
    parser.add_argument("--num-speakers", type=count_from_text, metavar="N",
                        help="exactly N speakers in every file; cannot be combined with --min/--max-speakers")
    parser.add_argument("--min-speakers", type=count_from_text, metavar="N",
                        help="at least N speakers per file (default: estimated from the audio)")
    parser.add_argument("--max-speakers", type=count_from_text, metavar="N",
                        help="at most N speakers per file (default: no limit)")
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="local: a process pool on this machine (default); ray: Ray Data actors")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="join a running Ray cluster ('auto' or host:port); default: start a local Ray")
    parser.add_argument("--workers", type=_non_negative_int, default=0, metavar="N",
                        help="worker processes / Ray actors (default: one per core / cluster CPU)")
    parser.add_argument("--model-dir", default=None, help="model folder on the workers")
