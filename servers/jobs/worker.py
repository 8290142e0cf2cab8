"""Code that runs inside the worker processes: load the models once, run one job at a time.

Nothing here touches the server's event loop; results travel back pickled through the process pool
(or Ray), progress and the worker's pid go straight to the job store (its own SQLite connection) or
are polled by the server. A worker fetches its job's input itself over HTTP (:class:`JobInput`): an
upload from the API node's presigned media URL, a remote URL directly, so a worker needs no access to
the server's disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from diarflow.operators.constants import CONFIDENCE_FRAME_S as _CONFIDENCE_FRAME_S
from diarflow.servers.jobs.fetch import AddressPolicy, FetchError, download, new_session
from diarflow.servers.jobs.probe import demuxed_duration_s, too_long_message

__all__ = ["JobFailure", "JobInput", "StoreProgress", "fetch_input", "init_worker", "load_resources", "run_job",
           "run_job_reporting"]

_resources: Any = None
_PROGRESS_PERIOD_S = 0.5
_LENGTH_TOLERANCE_S = 0.05  # container rounding: a file of exactly the limit is accepted
_NO_SPEECH_CONFIDENCE = 100  # the engine's value for frames it is sure hold no speaker
log = logging.getLogger("diarflow.jobs.worker")


class JobFailure(Exception):
    """A job that ends ``failed`` with a message meant for the client."""


class _Canceled(Exception):
    pass


@dataclass(frozen=True)
class JobInput:
    """Where a worker fetches a job's audio, and the limits of that download.

    Parameters
    ----------
    url
        An http(s) URL: the client's remote URL, or the API node's presigned media download URL
        (a secret: never shown in errors or logs).
    name
        What errors call the input: the ``media://`` key, or "the downloaded file".
    max_bytes
        Largest accepted download, bytes; larger ones stop while streaming.
    timeout_s
        Longest download, seconds.
    policy
        Addresses the download may reach (the server's own media URL is always allowed).
    from_server
        ``url`` is the server's presigned media URL (its failures hint at ``--public-url``).
    """

    url: str
    name: str
    max_bytes: int
    timeout_s: float
    policy: AddressPolicy
    from_server: bool = False


def fetch_input(source: JobInput, dest: Path) -> int:
    """Download ``source`` to ``dest`` (streamed, capped, SSRF-guarded); returns its size in bytes.

    Raises
    ------
    JobFailure
        Refused address, connection failure, HTTP error, too large, timed out.
    """
    async def fetch() -> int:
        async with new_session(source.policy) as http:
            return await asyncio.wait_for(download(http, source.url, dest, source.max_bytes, source.policy),
                                          source.timeout_s)

    prefix = f"Could not load audio: {source.name}: " if source.from_server else "Could not load audio: "
    try:
        return asyncio.run(fetch())
    except FetchError as exc:
        hint = ""
        if source.from_server and exc.reason in ("connection_failed", "http_timeout"):
            hint = " (the worker cannot reach the server's media URL: check `diarflow serve --public-url`)"
        raise JobFailure(f"{prefix}{exc}{hint}") from None
    except asyncio.TimeoutError:
        raise JobFailure(f"{prefix}timed out while downloading") from None


def _watch_parent(parent_pid: int) -> None:
    # A worker whose server died (even by SIGKILL) must not keep burning a core.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


def load_resources(model_dir: str | None) -> None:
    """Load the models once for every job this process (a pool worker or a Ray actor) will run."""
    global _resources
    from diarflow.resources import load_resources as load_models

    _resources = load_models(Path(model_dir) if model_dir else None, parallel_calls=1)


def init_worker(model_dir: str | None, parent_pid: int) -> None:
    """Pool initializer: load the models once for every job this process will run."""
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    try:  # batch work yields the CPU to the server's event loop, so polling stays fast under load
        os.nice(5)
    except OSError:
        pass
    load_resources(model_dir)


class StoreProgress:
    """Writes a job's progress (0..1) to the store at most every ``_PROGRESS_PERIOD_S`` and notices
    cancellation (raises ``_Canceled`` once the job is no longer running).

    Progress is best effort: a store that cannot be read or written (disk full) skips an update and
    never fails the job; the server records the outcome when the store is back.
    """

    def __init__(self, db_path: str, job_id: str, worker_pid: int | None = None) -> None:
        self._conn = sqlite3.connect(db_path, timeout=10.0, isolation_level=None)
        self._job_id = job_id
        self._last = 0.0
        self._pid: int | None = None
        self._write("PRAGMA busy_timeout=10000")
        if worker_pid is not None:
            self.set_worker(worker_pid)

    def _write(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        try:
            self._conn.execute(sql, args)
        except sqlite3.Error as exc:
            log.warning("job %s: progress not recorded (%s)", self._job_id, exc)

    def _canceled(self) -> bool:
        try:
            row = self._conn.execute("SELECT status FROM jobs WHERE id = ?", (self._job_id,)).fetchone()
        except sqlite3.Error:
            return False  # cannot tell: keep going, the server's compare-and-set decides at the end
        return row is None or row[0] != "running"

    def set_worker(self, pid: int) -> None:
        if pid != self._pid:
            self._pid = pid
            self._write("UPDATE jobs SET worker_pid = ? WHERE id = ?", (pid, self._job_id))

    def __call__(self, done_s: float, total_s: float | None) -> None:
        now = time.monotonic()
        if now - self._last < _PROGRESS_PERIOD_S:
            return
        self._last = now
        if self._canceled():
            raise _Canceled()
        fraction = min(done_s / total_s, 0.99) if total_s else 0.0
        self._write("UPDATE jobs SET progress = ? WHERE id = ? AND status = 'running'",
                    (round(fraction, 4), self._job_id))

    def canceled(self, done_s: float, total_s: float | None) -> bool:
        """The same, as a question (for a worker that runs elsewhere and is polled)."""
        try:
            self(done_s, total_s)
        except _Canceled:
            return True
        return False

    def close(self) -> None:
        self._conn.close()


def _checked_length_s(input_path: str, limit_s: float) -> float | None:
    """The input's length in seconds (packets first, then the declared duration); fails fast past the limit.

    Raises
    ------
    JobFailure
        The audio is longer than ``limit_s`` (checked before any decoding).
    """
    from diarflow.audio import probe_duration_s

    declared_s = probe_duration_s(input_path)
    if declared_s is not None and declared_s > limit_s + _LENGTH_TOLERANCE_S:
        raise JobFailure(too_long_message(limit_s))
    measured_s = demuxed_duration_s(input_path, limit_s + _LENGTH_TOLERANCE_S)
    if measured_s is not None and measured_s > limit_s + _LENGTH_TOLERANCE_S:
        raise JobFailure(too_long_message(limit_s))
    return measured_s if measured_s else declared_s


def _whole_file_confidence(result: Any) -> Any:
    """``result`` with a frame confidence covering the whole input (the contract: ``score[i]`` for every
    20 ms of the file), also when the engine found no speech and so produced none."""
    if result.frame_confidence is not None:
        return result
    frames = int(np.ceil(round(result.duration_s / _CONFIDENCE_FRAME_S, 6)))
    return replace(result, frame_confidence=np.full(frames, _NO_SPEECH_CONFIDENCE, np.uint8))


def run_job(job_id: str, kind: str, source: JobInput, params: dict[str, Any], db_path: str,
            max_audio_s: float) -> dict[str, Any] | None:
    """Run one job in a local worker process; returns its output, or ``None`` if it was canceled
    meanwhile (progress and cancellation go through the store at ``db_path``).

    Raises
    ------
    JobFailure
        Input that cannot be fetched or decoded, audio too long, invalid speaker constraints or
        clustering parameters, a bad voiceprint.
    """
    progress = StoreProgress(db_path, job_id, os.getpid())
    try:
        return _execute(kind, source, params, max_audio_s, progress)
    finally:
        progress.close()


def run_job_reporting(kind: str, source: JobInput, params: dict[str, Any], max_audio_s: float,
                      *, report: Callable[[tuple[float, float | None]], bool]) -> dict[str, Any] | None:
    """Run one job where the store is out of reach (a Ray actor): progress ``(done_s, total_s)`` goes
    to ``report``, which returns ``True`` once the job should stop; returns ``None`` then."""
    def on_progress(done_s: float, total_s: float | None) -> None:
        if report((done_s, total_s)):
            raise _Canceled()

    return _execute(kind, source, params, max_audio_s, on_progress)


def _execute(kind: str, source: JobInput, params: dict[str, Any], max_audio_s: float,
             on_progress: Callable[[float, float | None], None]) -> dict[str, Any] | None:
    with tempfile.TemporaryDirectory(prefix="diarflow-job-") as folder:
        input_path = str(Path(folder) / "input")
        fetch_input(source, Path(input_path))
        return _diarize_input(kind, input_path, source.name, params, max_audio_s, on_progress)


def _diarize_input(kind: str, input_path: str, source_name: str, params: dict[str, Any], max_audio_s: float,
                   on_progress: Callable[[float, float | None], None]) -> dict[str, Any] | None:
    from diarflow.api import diarize, voiceprint
    from diarflow.audio import AudioDecodeError

    limit_s = max_audio_s if kind != "voiceprint" else min(max_audio_s, float(params.get("maxAudioS", 30.0)))
    total_s = _checked_length_s(input_path, limit_s)

    def reporter(done_s: float) -> None:
        if done_s > limit_s + _LENGTH_TOLERANCE_S:
            raise JobFailure(too_long_message(limit_s))
        on_progress(done_s, total_s)

    try:
        if kind == "voiceprint":  # no speech: ValueError, reported as the job's error
            return {"voiceprint": voiceprint(input_path, resources=_resources, on_progress=reporter)}
        result = diarize(input_path, num_speakers=params.get("numSpeakers"),
                         min_speakers=params.get("minSpeakers"), max_speakers=params.get("maxSpeakers"),
                         merge_similarity=params.get("mergeSimilarity"), resources=_resources,
                         on_progress=reporter)
    except _Canceled:
        return None
    except AudioDecodeError as exc:
        raise JobFailure("Could not load audio: " + str(exc).replace(input_path, source_name)) from None
    except ValueError as exc:
        raise JobFailure(str(exc)) from None
    if params.get("confidence"):
        result = _whole_file_confidence(result)
    output = result.to_json(confidence=bool(params.get("confidence")),
                            turn_level_confidence=bool(params.get("turnLevelConfidence")),
                            exclusive=bool(params.get("exclusive")))
    if kind == "identify":
        from diarflow.voiceprints import identify

        matching = params.get("matching") or {}
        output = identify(output, result.speaker_embeddings, params["voiceprints"],
                          exclusive=bool(matching.get("exclusive", True)),
                          threshold=float(matching.get("threshold", 0) or 0))
    return output
