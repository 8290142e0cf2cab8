"""Durable state of the job API in one SQLite file (WAL): jobs, uploaded media, webhook deliveries."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Concatenate, ParamSpec, TypeVar

__all__ = ["Job", "Delivery", "JobStore", "StoreError", "StoreHealth", "TERMINAL", "connect", "until_stored"]

P = ParamSpec("P")
R = TypeVar("R")

TERMINAL = frozenset({"succeeded", "failed", "canceled"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    team TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    params TEXT NOT NULL,
    output TEXT,
    progress REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0,
    worker_pid INTEGER,
    webhook TEXT,
    webhook_status_only INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_team_created ON jobs (team, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE TABLE IF NOT EXISTS media (
    team TEXT NOT NULL,
    key TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    uploaded_at REAL NOT NULL,
    PRIMARY KEY (team, key)
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    team TEXT NOT NULL,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    next_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending'
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_at);
"""


def connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode with a busy timeout (also used by worker processes for progress)."""
    conn = sqlite3.connect(str(path), timeout=10.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


class StoreError(Exception):
    """A read or write of the job store failed (disk full, I/O error, locked for too long).

    The store itself stays usable: the next call tries again, so callers retry or answer 503.
    """


async def until_stored(call: Callable[[], R], what: str, max_delay_s: float, logger: logging.Logger,
                       first_delay_s: float = 0.1) -> R:
    """``call()``, tried again while it raises :class:`StoreError` (a full disk), with pauses doubling
    from ``first_delay_s`` up to ``max_delay_s`` seconds: what must be recorded is never dropped.

    Parameters
    ----------
    call
        One store operation (a write, or a read-modify-write).
    what
        Logged before each retry as ``"<what> yet (<error>); retrying in <s> s"``, e.g.
        ``"job <id>: cannot record succeeded"``.
    max_delay_s
        Longest pause between two attempts, seconds (> 0).
    logger
        Where the retries are logged (warning level).
    """
    delay_s = first_delay_s
    while True:
        try:
            return call()
        except StoreError as exc:
            logger.warning("%s yet (%s); retrying in %.1f s", what, exc, delay_s)
        await asyncio.sleep(delay_s)
        delay_s = min(delay_s * 2, max_delay_s)


@dataclass
class StoreHealth:
    """Outcome of the store's recent calls, for ``/health``.

    ``failing`` is set by any failed call and cleared only by a successful *write*: on a full disk
    reads still work, and must not make the store look healthy.
    """

    failing: bool = False
    errors: int = 0
    last_error: str = ""
    last_error_at: float = 0.0

    def failed(self, exc: BaseException) -> None:
        self.failing = True
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.last_error_at = time.time()


def _tracked(write: bool) -> Callable[[Callable[Concatenate[JobStore, P], R]], Callable[Concatenate[JobStore, P], R]]:
    """Turn ``sqlite3.Error`` into :class:`StoreError` and record the outcome in ``store.health``."""

    def wrap(method: Callable[Concatenate[JobStore, P], R]) -> Callable[Concatenate[JobStore, P], R]:
        @functools.wraps(method)
        def call(self: JobStore, *args: P.args, **kwargs: P.kwargs) -> R:
            try:
                result = method(self, *args, **kwargs)
            except sqlite3.Error as exc:
                self.health.failed(exc)
                raise StoreError(f"job store unavailable ({type(exc).__name__}: {exc})") from exc
            if write:
                self.health.failing = False
            return result

        return call

    return wrap


@dataclass(frozen=True)
class Job:
    """One row of ``jobs``; times are Unix seconds."""

    id: str
    team: str
    kind: str
    status: str
    params: dict[str, Any]
    output_json: str | None  # kept as stored text: answering a poll splices it, never re-parses it
    progress: float | None
    attempts: int
    crashes: int
    worker_pid: int | None
    webhook: str | None
    webhook_status_only: bool
    created_at: float
    updated_at: float
    finished_at: float | None

    @property
    def output(self) -> dict[str, Any] | None:
        return json.loads(self.output_json) if self.output_json is not None else None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        return cls(row["id"], row["team"], row["kind"], row["status"], json.loads(row["params"]),
                   row["output"], row["progress"],
                   row["attempts"], row["crashes"], row["worker_pid"], row["webhook"],
                   bool(row["webhook_status_only"]), row["created_at"], row["updated_at"], row["finished_at"])


@dataclass(frozen=True)
class Delivery:
    """One pending webhook delivery; ``attempt`` 0 is the first try, 1..n the retries."""

    id: int
    job_id: str
    team: str
    url: str
    body: bytes
    attempt: int
    reason: str | None


class JobStore:
    """All reads and writes of the API's durable state.

    Every call is one short transaction on a local file (sub-millisecond), so the server calls it
    from the event loop; worker processes open their own connection only to report progress. Every
    method raises :class:`StoreError` (never ``sqlite3.Error``) when the file cannot be read or written.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.health = StoreHealth()
        self._conn = connect(path)
        self._conn.row_factory = sqlite3.Row
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        self._conn.close()

    # -- jobs -------------------------------------------------------------------------------------
    @_tracked(write=True)
    def create_job(self, team: str, kind: str, params: dict[str, Any], webhook: str | None,
                   webhook_status_only: bool) -> Job:
        now = time.time()
        job_id = str(uuid.uuid4())
        self._conn.execute(
            "INSERT INTO jobs (id, team, kind, status, params, webhook, webhook_status_only, created_at, updated_at)"
            " VALUES (?, ?, ?, 'created', ?, ?, ?, ?, ?)",
            (job_id, team, kind, json.dumps(params), webhook, int(webhook_status_only), now, now))
        row = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row)

    @_tracked(write=False)
    def get_job(self, job_id: str, team: str | None = None) -> Job | None:
        if team is None:
            row = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        else:
            row = self._conn.execute("SELECT * FROM jobs WHERE id = ? AND team = ?", (job_id, team)).fetchone()
        return Job.from_row(row) if row else None

    @_tracked(write=False)
    def list_jobs(self, team: str, limit: int, cursor: str | None, status: str | None) -> tuple[list[Job], str | None]:
        """Newest first; ``cursor`` is the id of the last job of the previous page."""
        sql = "SELECT * FROM jobs WHERE team = ?"
        args: list[Any] = [team]
        if status:
            sql += " AND status = ?"
            args.append(status)
        if cursor:
            ref = self._conn.execute("SELECT created_at, id FROM jobs WHERE id = ? AND team = ?",
                                     (cursor, team)).fetchone()
            if ref is None:
                return [], None
            sql += " AND (created_at < ? OR (created_at = ? AND id < ?))"
            args += [ref["created_at"], ref["created_at"], ref["id"]]
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        args.append(limit + 1)
        jobs = [Job.from_row(r) for r in self._conn.execute(sql, args).fetchall()]
        next_cursor = jobs[limit - 1].id if len(jobs) > limit else None
        return jobs[:limit], next_cursor

    @_tracked(write=False)
    def unfinished_jobs(self) -> list[Job]:
        """Jobs accepted but not terminal, oldest first (re-queued after a restart)."""
        rows = self._conn.execute(
            "SELECT * FROM jobs WHERE status IN ('created', 'running') ORDER BY created_at, id").fetchall()
        return [Job.from_row(r) for r in rows]

    @_tracked(write=True)
    def requeue(self, job_id: str, crashed: bool = False) -> Job | None:
        self._conn.execute(
            "UPDATE jobs SET status = 'created', progress = NULL, worker_pid = NULL, updated_at = ?,"
            " crashes = crashes + ? WHERE id = ? AND status IN ('created', 'running')",
            (time.time(), int(crashed), job_id))
        row = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    @_tracked(write=True)
    def mark_running(self, job_id: str) -> bool:
        cur = self._conn.execute(
            "UPDATE jobs SET status = 'running', progress = 0.0, attempts = attempts + 1, updated_at = ?"
            " WHERE id = ? AND status = 'created'", (time.time(), job_id))
        return cur.rowcount == 1

    @_tracked(write=True)
    def finish(self, job_id: str, status: str, output: dict[str, Any], webhook_body: bytes | None = None,
               from_statuses: tuple[str, ...] = ("created", "running")) -> bool:
        """Move a job to a terminal status and queue its webhook in the same transaction.

        Returns ``False`` (and changes nothing) when the job was no longer in ``from_statuses``,
        which makes a late or repeated result harmless.
        """
        if status not in TERMINAL:
            raise ValueError(f"finish needs a terminal status {sorted(TERMINAL)}, got {status!r}")
        now = time.time()
        marks = ",".join("?" * len(from_statuses))
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            cur = self._conn.execute(
                f"UPDATE jobs SET status = ?, output = ?, progress = NULL, updated_at = ?, finished_at = ?"
                f" WHERE id = ? AND status IN ({marks})",
                (status, json.dumps(output, separators=(",", ":")), now, now, job_id, *from_statuses))
            if cur.rowcount != 1:
                return False
            row = self._conn.execute("SELECT team, webhook FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row["webhook"] and webhook_body is not None:
                self._conn.execute(
                    "INSERT INTO deliveries (job_id, team, url, body, next_at) VALUES (?, ?, ?, ?, ?)",
                    (job_id, row["team"], row["webhook"], webhook_body, now))
        return True

    @_tracked(write=False)
    def expired_jobs(self, older_than: float) -> list[str]:
        rows = self._conn.execute("SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?",
                                  (older_than,)).fetchall()
        return [r["id"] for r in rows]

    @_tracked(write=True)
    def delete_jobs(self, job_ids: list[str]) -> None:
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            for job_id in job_ids:
                self._conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
                self._conn.execute("DELETE FROM deliveries WHERE job_id = ? AND state != 'pending'", (job_id,))

    # -- media ------------------------------------------------------------------------------------
    @_tracked(write=True)
    def put_media(self, team: str, key: str, path: str, size: int) -> None:
        self._conn.execute(
            "INSERT INTO media (team, key, path, size, uploaded_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (team, key) DO UPDATE SET path = excluded.path, size = excluded.size,"
            " uploaded_at = excluded.uploaded_at", (team, key, path, size, time.time()))

    @_tracked(write=False)
    def get_media(self, team: str, key: str) -> tuple[str, int, float] | None:
        row = self._conn.execute("SELECT path, size, uploaded_at FROM media WHERE team = ? AND key = ?",
                                 (team, key)).fetchone()
        return (row["path"], row["size"], row["uploaded_at"]) if row else None

    @_tracked(write=False)
    def expired_media(self, older_than: float) -> list[tuple[str, str, str]]:
        rows = self._conn.execute("SELECT team, key, path FROM media WHERE uploaded_at < ?", (older_than,)).fetchall()
        return [(r["team"], r["key"], r["path"]) for r in rows]

    @_tracked(write=True)
    def delete_media(self, team: str, key: str) -> None:
        self._conn.execute("DELETE FROM media WHERE team = ? AND key = ?", (team, key))

    # -- webhook deliveries -----------------------------------------------------------------------
    @_tracked(write=False)
    def due_deliveries(self, now: float) -> list[Delivery]:
        rows = self._conn.execute(
            "SELECT * FROM deliveries WHERE state = 'pending' AND next_at <= ? ORDER BY next_at, id", (now,)).fetchall()
        return [Delivery(r["id"], r["job_id"], r["team"], r["url"], bytes(r["body"]), r["attempt"], r["reason"])
                for r in rows]

    @_tracked(write=False)
    def next_delivery_at(self) -> float | None:
        row = self._conn.execute("SELECT MIN(next_at) AS t FROM deliveries WHERE state = 'pending'").fetchone()
        return row["t"] if row and row["t"] is not None else None

    @_tracked(write=True)
    def delivery_done(self, delivery_id: int, state: str, reason: str | None = None) -> None:
        self._conn.execute("UPDATE deliveries SET state = ?, reason = ? WHERE id = ?", (state, reason, delivery_id))

    @_tracked(write=True)
    def delivery_retry(self, delivery_id: int, attempt: int, reason: str, next_at: float) -> None:
        self._conn.execute("UPDATE deliveries SET attempt = ?, reason = ?, next_at = ? WHERE id = ?",
                           (attempt, reason, next_at, delivery_id))
