"""Hardening benchmarks (issue 12), printed as numbers; servers listen on 127.0.0.1 only.

(a) Server RSS after 100 000 requests with distinct junk API keys (target: at most +10 MiB).
(b) Recovery after a disk-full episode while 2 jobs run: the store refuses writes (the test harness's
    injected ENOSPC / "database or disk is full") until both jobs' outcomes are waiting, then is freed;
    time until the held outcomes are recorded and until a new job succeeds, without a restart.

``python -m tools.bench_hardening [--requests 100000] [--skip-recovery]``
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import soundfile as sf

from tools import exit_without_dev_corpus
from diarflow.testing.evaluation import default_dev_dir, load_dev_items
from diarflow.provisioning import ensure_models
from diarflow.testing import ServerProcess, rss_bytes, upload, wait_for_job
from diarflow.operators.constants import SAMPLE_RATE

CONCURRENCY = 20
BATCH = 2000
MAX_LOOP_S = 600.0  # the request loop stops here whatever the count


async def _junk_key_load(server: ServerProcess, requests: int) -> tuple[int, float, dict[int, int]]:
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    started = time.monotonic()
    sent = 0
    async with aiohttp.ClientSession(server.url, connector=connector) as http:
        async def one(n: int) -> None:
            async with http.get("/v1/test", headers={"Authorization": f"Bearer junk-{n}"}) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1

        while sent < requests and time.monotonic() - started < MAX_LOOP_S:
            batch = range(sent, min(sent + BATCH, requests))
            await asyncio.gather(*(one(n) for n in batch))
            sent += len(batch)
    return sent, time.monotonic() - started, statuses


def bench_rss(model_dir: Path, requests: int) -> None:
    for label, failures in (("default limits (guessing throttled: 429s)", 30), ("failures unthrottled (all 401)", 10**9)):
        with tempfile.TemporaryDirectory(prefix="bench-hardening-") as data_dir, \
                ServerProcess(Path(data_dir), jobs={"workers": 1, "auth_failures_per_min": failures},
                              auth_enabled=True, api_keys={"real-key": "team"}, model_dir=str(model_dir)) as server:
            time.sleep(1.0)
            before = rss_bytes(server.pid)
            sent, elapsed_s, statuses = asyncio.run(_junk_key_load(server, requests))
            time.sleep(1.0)
            after = rss_bytes(server.pid)
            print(f"(a) {label}: {sent} requests with distinct junk keys in {elapsed_s:.1f} s "
                  f"({sent / elapsed_s:.0f} req/s), statuses {dict(sorted(statuses.items()))}")
            print(f"    server RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB: "
                  f"{(after - before) / 2**20:+.1f} MiB (target <= +10 MiB)")


async def _recovery(server: ServerProcess, long_audio: Path, clip: Path) -> None:
    async with aiohttp.ClientSession(server.url) as api:
        await upload(api, "media://long.flac", long_audio)
        await upload(api, "media://clip.wav", clip)
        ids = [(await (await api.post("/v1/diarize", json={"url": "media://long.flac"})).json())["jobId"]
               for _ in range(2)]
        deadline = time.monotonic() + 300
        while [(await (await api.get(f"/v1/jobs/{i}")).json())["status"] for i in ids] != ["running"] * 2:
            if time.monotonic() > deadline:
                raise TimeoutError("the 2 jobs did not start")
            await asyncio.sleep(0.1)
        log_start = server.log_path.stat().st_size
        server.fail_writes(True)
        full_at = time.monotonic()
        while server.log_path.read_text()[log_start:].count("cannot record succeeded yet") < 2:
            if time.monotonic() - full_at > 600:
                raise TimeoutError("the 2 jobs did not finish while the disk was full")
            await asyncio.sleep(0.1)
        async with api.get("/health") as response:
            health = (response.status, (await response.json())["status"])
        held_s = time.monotonic() - full_at
        server.fail_writes(False)
        freed_at = time.monotonic()
        new_id = (await (await api.post("/v1/diarize", json={"url": "media://clip.wav"})).json())["jobId"]
        for job_id in ids:
            job = await wait_for_job(api, job_id, 120, period_s=0.05)
            assert job["status"] == "succeeded", job
        held_recorded_s = time.monotonic() - freed_at
        new_job = await wait_for_job(api, new_id, 120, period_s=0.05)
        new_job_s = time.monotonic() - freed_at
        async with api.get("/health") as response:
            health_after = (response.status, (await response.json())["status"])
    print(f"(b) disk full for {held_s:.1f} s while 2 jobs ran (both finished meanwhile); /health then {health}")
    print(f"    after freeing: the 2 held outcomes recorded in {held_recorded_s:.2f} s, a new 10 s job "
          f"{new_job['status']} in {new_job_s:.2f} s (submitted right after freeing, no restart); "
          f"/health {health_after}")


def bench_recovery(model_dir: Path) -> None:
    items = {i.uri: i for i in load_dev_items(default_dev_dir())}
    with tempfile.TemporaryDirectory(prefix="bench-hardening-") as data_dir:
        clip = Path(data_dir) / "clip.wav"
        samples, rate = sf.read(items["dev06"].audio_path, dtype="int16", frames=10 * SAMPLE_RATE)
        sf.write(clip, np.asarray(samples), rate, subtype="PCM_16")
        with ServerProcess(Path(data_dir) / "server", faults=True, model_dir=str(model_dir),
                           jobs={"workers": 2, "rate_limit_get": 100_000}) as server:
            asyncio.run(_recovery(server, items["dev05"].audio_path, clip))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--skip-recovery", action="store_true")
    args = parser.parse_args()
    exit_without_dev_corpus("bench_hardening")
    model_dir = ensure_models().campplus.parent
    bench_rss(model_dir, args.requests)
    if not args.skip_recovery:
        bench_recovery(model_dir)


if __name__ == "__main__":
    main()
