"""Durability through real server processes: restart mid-job, killed workers, persisted webhook retries, retention."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from diarflow.testing.evaluation import DevItem
from diarflow.provisioning import ModelPaths
from diarflow.testing import ServerProcess, children_of, upload, wait_for_job

SECRET = "durability-secret"


class Receiver:
    """Webhook receiver that answers 503 to the calls whose 1-based number is in ``fail``."""

    def __init__(self) -> None:
        self.fail: set[int] = set()
        self.calls: list[tuple[dict[str, str], dict]] = []
        self.app = web.Application()
        self.app.router.add_post("/hook", self.hook)
        self.runner = web.AppRunner(self.app)
        self.url = ""

    async def hook(self, request: web.Request) -> web.Response:
        self.calls.append((dict(request.headers), json.loads(await request.read())))
        return web.Response(status=503 if len(self.calls) in self.fail else 200)

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.runner.cleanup()


def _row(data_dir: Path, job_id: str) -> dict:
    with sqlite3.connect(data_dir / "jobs.sqlite3", timeout=10) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT status, attempts, crashes, worker_pid FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return dict(row) if row else {}


def _delivery_attempts(data_dir: Path, job_id: str) -> list[int]:
    with sqlite3.connect(data_dir / "jobs.sqlite3", timeout=10) as conn:
        return [r[0] for r in conn.execute("SELECT attempt FROM deliveries WHERE job_id = ?", (job_id,))]


async def _wait_running(data_dir: Path, job_id: str, exclude_pid: int | None = None, timeout_s: float = 60) -> int:
    """The pid of the worker once it has started this job (a different one than ``exclude_pid``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = _row(data_dir, job_id)
        if row.get("status") == "running" and row.get("worker_pid") and row["worker_pid"] != exclude_pid:
            return int(row["worker_pid"])
        await asyncio.sleep(0.05)
    raise TimeoutError(f"job {job_id} never started: {_row(data_dir, job_id)}")


def _server(data_dir: Path, model_paths: ModelPaths, **jobs: object) -> ServerProcess:
    return ServerProcess(data_dir, env={"DIARFLOW_ALLOW_PRIVATE_URLS": "1", "DIARFLOW_WEBHOOK_SECRET": SECRET},
                         jobs={"workers": 1, "rate_limit_get": 100_000, **jobs},
                         model_dir=str(model_paths.campplus.parent))


async def test_restart_mid_job_and_webhook_retry_across_restart(tmp_path: Path, model_paths: ModelPaths,
                                                                speech_clips: dict[str, DevItem],
                                                                receiver: Receiver) -> None:
    dev06 = speech_clips["six_speakers"]
    first = _server(tmp_path, model_paths, webhook_retry_delays_s=[1.5, 1.5, 1.5]).start()
    try:
        async with aiohttp.ClientSession(first.url) as api:
            await upload(api, "media://dev06.flac", dev06.audio_path)
            job_id = (await (await api.post("/v1/diarize", json={"url": "media://dev06.flac",
                                                                 "webhook": receiver.url})).json())["jobId"]
        worker = await _wait_running(tmp_path, job_id)
        first.stop(signal.SIGKILL)  # no graceful shutdown at all
    finally:
        first.stop()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{worker}") and time.monotonic() < deadline:  # orphaned worker exits by itself
        await asyncio.sleep(0.1)
    assert not os.path.exists(f"/proc/{worker}") or "Z" in Path(f"/proc/{worker}/stat").read_text().split()[2]
    assert _row(tmp_path, job_id)["status"] == "running"

    receiver.fail = {1}  # the first delivery fails; its retry is due 1.5 s later
    second = _server(tmp_path, model_paths, webhook_retry_delays_s=[1.5, 1.5, 1.5]).start()
    try:
        async with aiohttp.ClientSession(second.url) as api:
            job = await wait_for_job(api, job_id, 90)
        assert job["status"] == "succeeded" and job["output"]["diarization"]
        for _ in range(100):  # the failed first delivery is recorded with its retry time
            if receiver.calls and _delivery_attempts(tmp_path, job_id) == [1]:
                break
            await asyncio.sleep(0.05)
        second.stop(signal.SIGTERM)  # before the retry is due
    finally:
        second.stop()
    assert len(receiver.calls) == 1 and _row(tmp_path, job_id)["attempts"] == 2

    third = _server(tmp_path, model_paths, webhook_retry_delays_s=[1.5, 1.5, 1.5]).start()
    try:
        for _ in range(100):
            if len(receiver.calls) >= 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
    finally:
        third.stop()
    assert len(receiver.calls) == 2
    (h1, b1), (h2, b2) = receiver.calls
    assert b1 == b2 and b2["jobId"] == job_id and b2["status"] == "succeeded"
    assert "x-retry-num" not in {k.lower() for k in h1}
    assert h2.get("x-retry-num") == "1" and h2.get("x-retry-reason") == "http_error"
    # at-least-once delivery: the retry sent by another server process carries the same idempotency key
    assert h1.get("Idempotency-Key") and h1.get("Idempotency-Key") == h2.get("Idempotency-Key")


async def test_killed_worker_is_retried_once_then_fails(tmp_path: Path, model_paths: ModelPaths,
                                                        speech_clips: dict[str, DevItem]) -> None:
    dev06 = speech_clips["six_speakers"]
    with _server(tmp_path, model_paths) as server:
        async with aiohttp.ClientSession(server.url) as api:
            await upload(api, "media://dev06.flac", dev06.audio_path)
            survivor = (await (await api.post("/v1/diarize", json={"url": "media://dev06.flac"})).json())["jobId"]
            pid = await _wait_running(tmp_path, survivor)
            assert pid in children_of(server.pid)
            os.kill(pid, signal.SIGKILL)
            job = await wait_for_job(api, survivor, 90)
            assert job["status"] == "succeeded" and _row(tmp_path, survivor)["crashes"] == 1

            doomed = (await (await api.post("/v1/diarize", json={"url": "media://dev06.flac"})).json())["jobId"]
            pid = await _wait_running(tmp_path, doomed)
            os.kill(pid, signal.SIGKILL)
            pid = await _wait_running(tmp_path, doomed, exclude_pid=pid)
            os.kill(pid, signal.SIGKILL)
            job = await wait_for_job(api, doomed, 90)
            assert job["status"] == "failed" and "stopped unexpectedly" in job["output"]["error"]
            assert _row(tmp_path, doomed)["attempts"] == 2
            # the slot recovers for the next job
            after = (await (await api.post("/v1/diarize", json={"url": "media://dev06.flac"})).json())["jobId"]
            assert (await wait_for_job(api, after, 90))["status"] == "succeeded"


async def test_outputs_and_media_expire(tmp_path: Path, model_paths: ModelPaths) -> None:
    with _server(tmp_path, model_paths, output_ttl_s=1.0, media_ttl_s=1.0, sweep_interval_s=0.3) as server:
        async with aiohttp.ClientSession(server.url) as api:
            payload = tmp_path / "blob.bin"
            payload.write_bytes(b"x" * 1000)
            await upload(api, "media://blob.bin", payload)
            assert (await api.post("/v1/media/output", json={"url": "media://blob.bin"})).status == 201
            job_id = (await (await api.post("/v1/diarize", json={"url": "media://gone.wav"})).json())["jobId"]
            assert (await wait_for_job(api, job_id, 30))["status"] == "failed"
            await asyncio.sleep(1.8)
            assert (await api.get(f"/v1/jobs/{job_id}")).status == 404
            assert (await api.post("/v1/media/output", json={"url": "media://blob.bin"})).status == 404
            assert _row(tmp_path, job_id) == {}
            assert not [p for p in (tmp_path / "media").rglob("*") if p.is_file()]


async def test_audio_over_the_length_limit_fails(tmp_path: Path, model_paths: ModelPaths,
                                                 speech_clips: dict[str, DevItem]) -> None:
    dev06 = speech_clips["six_speakers"]
    with _server(tmp_path, model_paths, max_audio_s=20.0) as server:
        async with aiohttp.ClientSession(server.url) as api:
            await upload(api, "media://dev06.flac", dev06.audio_path)
            job_id = (await (await api.post("/v1/diarize", json={"url": "media://dev06.flac"})).json())["jobId"]
            job = await wait_for_job(api, job_id, 60)
    assert job["status"] == "failed" and job["output"] == {"error": "Audio is longer than 20 s"}
