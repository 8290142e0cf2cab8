"""Signed webhook deliveries with durable retries (immediately, after 1 min, after 5 min).

Delivery is **at least once**: a delivery whose outcome was not recorded before a crash (or while the
store could not be written) is sent again. Every request of one delivery, retries and re-sends after a
restart included, carries the same ``Idempotency-Key`` header, so a receiver can drop duplicates.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import aiohttp

from diarflow.servers.jobs.fetch import FetchError, request_guarded
from diarflow.servers.jobs.media import load_or_create_secret
from diarflow.servers.jobs.settings import JobsSettings
from diarflow.servers.jobs.store import Delivery, JobStore, StoreError, until_stored

__all__ = ["WebhookSecrets", "WebhookDispatcher", "sign"]

log = logging.getLogger("diarflow.jobs.webhooks")

IDEMPOTENCY_HEADER = "Idempotency-Key"


def idempotency_key(delivery: Delivery) -> str:
    """The same for every attempt of one delivery, across retries and restarts (both parts are stored)."""
    return f"{delivery.job_id}.{delivery.id}"


def sign(secret: bytes, timestamp: int, body: bytes, encoding: str = "base64") -> str:
    """HMAC-SHA256 over ``v0:<timestamp>:<body>``, base64 (default) or hex."""
    digest = hmac.new(secret, b"v0:" + str(timestamp).encode() + b":" + body, hashlib.sha256).digest()
    return digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()


@dataclass(frozen=True)
class WebhookSecrets:
    """Per-team secrets, a shared one, or one generated into the data directory."""

    per_team: Mapping[str, bytes] = field(default_factory=dict)
    shared: bytes = b""
    encoding: str = "base64"

    @classmethod
    def load(cls, data_dir: Path) -> WebhookSecrets:
        """From ``DIARFLOW_WEBHOOK_SECRETS`` / ``DIARFLOW_WEBHOOK_SECRET``, else ``<data_dir>/webhook_secret``."""
        per_team: dict[str, bytes] = {}
        for entry in os.environ.get("DIARFLOW_WEBHOOK_SECRETS", "").split(","):
            team, sep, secret = entry.strip().partition(":")
            if sep and team and secret:
                per_team[team] = secret.encode()
        shared = os.environ.get("DIARFLOW_WEBHOOK_SECRET", "").encode()
        encoding = "hex" if os.environ.get("DIARFLOW_WEBHOOK_SIGNATURE_ENCODING", "").lower() == "hex" else "base64"
        if not per_team and not shared:
            path = data_dir / "webhook_secret"
            existed = path.is_file()
            shared = load_or_create_secret(path).hex().encode()
            log.info("webhook signing secret %s %s", "read from" if existed else "generated in", path)
        return cls(per_team, shared, encoding)

    def of(self, team: str) -> bytes:
        return self.per_team.get(team, self.shared)


class WebhookDispatcher:
    """Sends due deliveries from the store; every attempt's outcome is written back before the next."""

    def __init__(self, store: JobStore, secrets: WebhookSecrets, settings: JobsSettings,
                 http: aiohttp.ClientSession, wake: asyncio.Event) -> None:
        self.store = store
        self.secrets = secrets
        self.settings = settings
        self.http = http
        self.wake = wake
        self._inflight: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Send due deliveries forever; a store error only delays the next look (never ends the loop)."""
        while True:
            try:
                wait_s = self._dispatch_due()
            except StoreError as exc:
                log.warning("webhooks: store unavailable (%s); looking again in %.1f s", exc,
                            self.settings.store_retry_max_s)
                wait_s = self.settings.store_retry_max_s
            except Exception:
                log.exception("webhooks: unexpected error; looking again in %.1f s", self.settings.store_retry_max_s)
                wait_s = self.settings.store_retry_max_s
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), wait_s)
            except asyncio.TimeoutError:
                pass

    def _dispatch_due(self) -> float:
        """Start a task for every due delivery not in flight; returns how long to wait before looking again."""
        for delivery in self.store.due_deliveries(time.time()):
            if delivery.id not in self._inflight:
                self._inflight.add(delivery.id)
                task = asyncio.create_task(self._deliver(delivery))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        next_at = self.store.next_delivery_at()
        return 1.0 if next_at is None else min(max(next_at - time.time(), 0.05), 1.0)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _attempt(self, delivery: Delivery) -> str | None:
        """One POST; ``None`` on success, else the retry reason."""
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "X-Request-Timestamp": str(timestamp),
            "X-Signature": sign(self.secrets.of(delivery.team), timestamp, delivery.body, self.secrets.encoding),
            IDEMPOTENCY_HEADER: idempotency_key(delivery),
        }
        if delivery.attempt > 0:
            headers["x-retry-num"] = str(delivery.attempt)
            headers["x-retry-reason"] = delivery.reason or "http_error"
        try:
            response = await asyncio.wait_for(
                request_guarded(self.http, "POST", delivery.url, self.settings.address_policy,
                                data=delivery.body, headers=headers),
                self.settings.webhook_timeout_s)
        except asyncio.TimeoutError:
            return "http_timeout"
        except FetchError as exc:
            return exc.reason
        async with response:
            return None if 200 <= response.status < 300 else "http_error"

    async def _deliver(self, delivery: Delivery) -> None:
        try:
            reason = await self._attempt(delivery)
            await self._record(delivery, reason)
        finally:
            self._inflight.discard(delivery.id)

    async def _record(self, delivery: Delivery, reason: str | None) -> None:
        """Write the attempt's outcome, trying again while the store fails (the delivery stays in flight
        meanwhile, so it is not sent again before its outcome is known)."""
        await until_stored(lambda: self._write_outcome(delivery, reason),
                           f"webhook of job {delivery.job_id}: cannot record the attempt",
                           self.settings.store_retry_max_s, log)

    def _write_outcome(self, delivery: Delivery, reason: str | None) -> None:
        if reason is None:
            self.store.delivery_done(delivery.id, "done")
            return
        delays = self.settings.webhook_retry_delays_s
        if delivery.attempt >= len(delays):
            log.warning("webhook of job %s failed after %d retries (%s)", delivery.job_id, delivery.attempt, reason)
            self.store.delivery_done(delivery.id, "failed", reason)
            return
        self.store.delivery_retry(delivery.id, delivery.attempt + 1, reason, time.time() + delays[delivery.attempt])
        self.wake.set()
