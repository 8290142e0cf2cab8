"""Job API on Ray actors: a job whose actor is killed is retried on the replacement actor, as with processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import soundfile as sf

from diarflow.provisioning import ModelPaths
from diarflow.testing.evaluation import DevItem
from diarflow.testing.server_process import ServerProcess, children_of, upload, wait_for_job


def _row(data_dir: Path, job_id: str) -> dict:
    with sqlite3.connect(data_dir / "jobs.sqlite3", timeout=10) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT status, crashes, worker_pid, progress FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return dict(row) if row else {}


async def test_killed_actor_job_is_retried_and_progress_reported(tmp_path: Path, model_paths: ModelPaths,
                                                                 speech_clips: dict[str, DevItem]) -> None:
    pytest.importorskip("ray")
    samples, rate = sf.read(speech_clips["six_speakers"].audio_path, dtype="int16")
    clip = tmp_path / "clip.flac"  # 3 x 58 s: several 60 s decode chunks, so progress shows while the job runs
    sf.write(clip, np.concatenate([samples] * 3), rate, format="FLAC", subtype="PCM_16")
    with ServerProcess(tmp_path, env={"DIARFLOW_ALLOW_PRIVATE_URLS": "1"},
                       jobs={"workers": 1, "rate_limit_get": 100_000, "backend": "ray"},
                       model_dir=str(model_paths.campplus.parent)) as server:
        async with aiohttp.ClientSession(server.url) as api:
            await upload(api, "media://clip.flac", clip)
            job_id = (await (await api.post("/v1/diarize", json={"url": "media://clip.flac"})).json())["jobId"]
            deadline = time.monotonic() + 60
            while not ((row := _row(tmp_path, job_id)).get("worker_pid") and row.get("progress")):
                assert time.monotonic() < deadline, row
                await asyncio.sleep(0.05)
            actor_pid = int(row["worker_pid"])
            assert actor_pid not in children_of(server.pid)  # a Ray worker, not one of the server's processes
            os.kill(actor_pid, signal.SIGKILL)
            job = await wait_for_job(api, job_id, 120)
            assert job["status"] == "succeeded" and job["output"]["diarization"], job
            row = _row(tmp_path, job_id)
            assert row["crashes"] == 1 and row["worker_pid"] != actor_pid
