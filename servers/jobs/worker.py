"""Code that runs inside the worker processes: load the models once, run one job at a time.

Nothing here touches the event loop; results travel back pickled through the process pool,
progress and the worker's pid go straight to the job store (its own SQLite connection).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["JobFailure", "init_worker", "run_job"]

_resources: Any = None
_PROGRESS_PERIOD_S = 0.5


class JobFailure(Exception):
    """A job that ends ``failed`` with a message meant for the client."""


class _Canceled(Exception):
    pass


def _watch_parent(parent_pid: int) -> None:
    # A worker whose server died (even by SIGKILL) must not keep burning a core.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


def init_worker(model_dir: str | None, parent_pid: int) -> None:
    """Pool initializer: load the models once for every job this process will run."""
    global _resources
    from diarflow.operators.models import Resources

    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    try:  # batch work yields the CPU to the server's event loop, so polling stays fast under load
        os.nice(5)
    except OSError:
        pass
    _resources = Resources.load(Path(model_dir) if model_dir else None, parallel_calls=1)


def warm_up() -> int:
    """A no-op task that returns once the initializer has run (used to start workers eagerly)."""
    return os.getpid()


class _Reporter:
    """Writes progress (0..1) at most every ``_PROGRESS_PERIOD_S`` and notices cancellation."""

    def __init__(self, db_path: str, job_id: str, total_s: float | None, limit_s: float) -> None:
        self._conn = sqlite3.connect(db_path, timeout=10.0, isolation_level=None)
        self._conn.execute("PRAGMA busy_timeout=10000")
        self._job_id = job_id
        self._total_s = total_s
        self._limit_s = limit_s
        self._last = 0.0
        self._conn.execute("UPDATE jobs SET worker_pid = ? WHERE id = ?", (os.getpid(), job_id))

    def __call__(self, done_s: float) -> None:
        if done_s > self._limit_s:
            raise JobFailure(_too_long(self._limit_s))
        now = time.monotonic()
        if now - self._last < _PROGRESS_PERIOD_S:
            return
        self._last = now
        fraction = min(done_s / self._total_s, 0.99) if self._total_s else 0.0
        row = self._conn.execute("SELECT status FROM jobs WHERE id = ?", (self._job_id,)).fetchone()
        if row is None or row[0] != "running":
            raise _Canceled()
        self._conn.execute("UPDATE jobs SET progress = ? WHERE id = ? AND status = 'running'",
                           (round(fraction, 4), self._job_id))

    def close(self) -> None:
        self._conn.close()


def _too_long(limit_s: float) -> str:
    if limit_s >= 3600 and limit_s % 3600 == 0:
        return f"Audio is longer than {int(limit_s // 3600)} h"
    return f"Audio is longer than {limit_s:g} s"


def run_job(job_id: str, kind: str, input_path: str, params: dict[str, Any], db_path: str,
            max_audio_s: float, source_name: str) -> dict[str, Any] | None:
    """Run one job; returns its output, or ``None`` if it was canceled meanwhile.

    Raises
    ------
    JobFailure
        Unreadable input, audio too long, invalid speaker constraints, a bad voiceprint.
    """
    from diarflow.api import diarize
    from diarflow.audio import AudioDecodeError, probe_duration_s

    limit_s = max_audio_s if kind != "voiceprint" else min(max_audio_s, float(params.get("maxAudioS", 30.0)))
    total_s = probe_duration_s(input_path)
    if total_s is not None and total_s > limit_s + 0.05:
        raise JobFailure(_too_long(limit_s))
    reporter = _Reporter(db_path, job_id, total_s, limit_s + 0.05)
    try:
        if kind == "voiceprint":
            result = diarize(input_path, num_speakers=1, resources=_resources, on_progress=reporter)
        else:
            result = diarize(input_path, num_speakers=params.get("numSpeakers"),
                             min_speakers=params.get("minSpeakers"), max_speakers=params.get("maxSpeakers"),
                             resources=_resources, on_progress=reporter)
    except _Canceled:
        return None
    except AudioDecodeError as exc:
        raise JobFailure("Could not load audio: " + str(exc).replace(input_path, source_name)) from None
    except ValueError as exc:
        raise JobFailure(str(exc)) from None
    finally:
        reporter.close()
    if kind == "voiceprint":
        from diarflow.voiceprints import encode_voiceprint

        if not result.speaker_embeddings:
            raise JobFailure("No speech found in the voiceprint audio")
        return {"voiceprint": encode_voiceprint(next(iter(result.speaker_embeddings.values())))}
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
