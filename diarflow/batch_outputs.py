"""Batch outputs and resume: per-file RTTM / JSON, the ``segments`` and ``files`` Parquet datasets."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from diarflow.batch_records import FILES_SCHEMA, SEGMENTS_SCHEMA, FileOutcome

__all__ = ["BatchWriter"]


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
