"""Resumable live sessions: who holds which session, how long a dropped one waits, and its file on disk.

A session is known by a resume token (``secrets.token_urlsafe(24)``: 192 bits). The registry keys it
by the token's SHA-256, so neither memory dumps nor file names hold a usable token. While a connection
serves the session it is *attached*; when the connection drops it is *parked* for ``window_s`` and then
forgotten. With a folder, each session's checkpoint lives in ``<folder>/<sha256>.ckpt`` (written after
every utterance, in place into the older of two slots, so that a kill at any moment leaves a complete
one: :class:`diarflow.slot_file.SlotFile`), so a restarted server can pick it up; the file goes when the
session ends or expires. Nothing here diarizes: sessions are :class:`diarflow.live.LiveSession`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diarflow.live import CheckpointFile, LiveCheckpoint, LiveSession

__all__ = ["LiveRecord", "ResumableSessions", "new_resume_token"]

log = logging.getLogger("diarflow.server.stream")

CHECKPOINT_SUFFIX = ".ckpt"
TURNS_SUFFIX = ".turns"


def new_resume_token() -> str:
    """An unguessable, URL-safe token (192 random bits)."""
    return secrets.token_urlsafe(24)


def _key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


@dataclass(eq=False)
class LiveRecord:
    """One resumable session. ``lock`` serialises engine calls; ``owner`` is the serving connection."""

    key: str
    session_id: str
    team: str | None
    session: LiveSession
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    owner: Any = None
    expires_at: float = math.inf  # monotonic; infinite while a connection is attached


class ResumableSessions:
    """Live sessions by resume token, parked for ``window_s`` after a drop.

    Parameters
    ----------
    window_s
        How long a dropped session waits for its client (seconds, > 0).
    directory
        Where checkpoints persist (created if missing); ``None``: memory only.
    """

    def __init__(self, window_s: float, directory: Path | None) -> None:
        self.window_s = window_s
        self.directory = directory
        self._records: dict[str, LiveRecord] = {}
        self._files: dict[str, CheckpointFile] = {}
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self._records)

    def _file(self, key: str) -> CheckpointFile | None:
        if self.directory is None:
            return None
        if key not in self._files:
            self._files[key] = CheckpointFile(self.directory / f"{key}{CHECKPOINT_SUFFIX}")
        return self._files[key]

    def add(self, token: str, session_id: str, team: str | None, session: LiveSession, owner: Any) -> LiveRecord:
        record = LiveRecord(_key(token), session_id, team, session, owner=owner)
        self._records[record.key] = record
        return record

    def find(self, token: str, team: str | None) -> LiveRecord | None:
        """The session in memory for ``token`` if it belongs to ``team`` and has not expired."""
        record = self._records.get(_key(token))
        if record is None or record.team != team:
            return None
        if record.expires_at <= time.monotonic():
            self._forget(record)
            return None
        return record

    def load(self, token: str, team: str | None) -> LiveCheckpoint | None:
        """The persisted checkpoint for ``token`` (read from disk: call off the event loop), or ``None``
        when there is none, it expired (older than the window), is unreadable, was written by an engine whose
        graph differs (then it is removed), or is another team's."""
        if self.directory is None:
            return None
        key = _key(token)
        file = CheckpointFile(self.directory / f"{key}{CHECKPOINT_SUFFIX}")
        try:
            age_s = time.time() - file.path.stat().st_mtime
            if age_s > self.window_s:
                file.remove()
                return None
            checkpoint = file.load()
            if not checkpoint.resumable:  # written by an engine whose graph differs (an upgrade)
                log.warning("live checkpoint %s is of another engine version: removed", file.path.name)
                file.remove()
                return None
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("live checkpoint %s unreadable: %s", file.path.name, exc)
            return None
        self._files[key] = file  # its journal now holds the very turns the restored session will extend
        if checkpoint.meta.get("team") != team or "session_id" not in checkpoint.meta:
            return None
        return checkpoint

    def adopt(self, token: str, session: LiveSession, owner: Any) -> LiveRecord:
        """Register a session restored from disk (its metadata names its id and team)."""
        return self.add(token, str(session.meta["session_id"]), session.meta.get("team"), session, owner)

    def release(self, record: LiveRecord, owner: Any) -> None:
        """``owner``'s connection ended without finishing: park the session (if it still owns it)."""
        if record.owner is owner and self._records.get(record.key) is record:
            record.owner = None
            record.expires_at = time.monotonic() + self.window_s

    def finish(self, record: LiveRecord) -> None:
        """The session ended (final result sent, or it cannot continue): forget it and its file."""
        self._forget(record)

    def _forget(self, record: LiveRecord) -> None:
        if self._records.get(record.key) is record:
            del self._records[record.key]
        file = self._file(record.key)
        if file is not None:
            file.remove()
        self._files.pop(record.key, None)

    def persist(self, record: LiveRecord) -> int:
        """Write the session's checkpoint atomically (call off the event loop, under ``record.lock``);
        returns its size in bytes (0 without a folder)."""
        file = self._file(record.key)
        if file is None or self._records.get(record.key) is not record:
            return 0
        return file.save(record.session, {"session_id": record.session_id, "team": record.team})

    def sweep(self) -> None:
        """Forget parked sessions past their window, and checkpoint files no session will come back for."""
        now = time.monotonic()
        for record in [r for r in self._records.values() if r.expires_at <= now]:
            log.info("live session %s expired", record.session_id)
            self._forget(record)
        if self.directory is None:
            return
        held = set(self._records)
        # temporary files are leftovers of a write a kill interrupted; checkpoints are named by key
        for path in [*self.directory.glob(f"*{CHECKPOINT_SUFFIX}"), *self.directory.glob(f"*{TURNS_SUFFIX}"),
                     *self.directory.glob(".*.tmp")]:
            try:
                if path.stem not in held and time.time() - path.stat().st_mtime > self.window_s:
                    path.unlink(missing_ok=True)
            except OSError:
                continue
