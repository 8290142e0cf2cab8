"""Benchmark of the job API through a real server: throughput, request latency under polling, a 4 h input.

Prints:
* hours of audio diarized per wall-clock minute with 8 queued jobs (one worker per core);
* P50/P99 latency of ``POST /v1/diarize`` and ``GET /v1/jobs/{id}`` with 50 concurrent pollers;
* for one 4 h FLAC (dev files concatenated, in a temporary folder): total time through the API and
  the worker's peak RSS.

Run: ``python tools/bench_jobs.py [--skip-long] [--long-hours 4]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import soundfile as sf

from tools import exit_without_dev_corpus
from diarflow.testing.evaluation import load_dev_items
from diarflow.testing import ServerProcess, upload, wait_for_job
from diarflow.operators.constants import SAMPLE_RATE


def _percentiles(samples: list[float]) -> str:
    a = np.asarray(samples) * 1000
    return f"n={len(a)} P50 {np.percentile(a, 50):.1f} ms  P99 {np.percentile(a, 99):.1f} ms  max {a.max():.1f} ms"


def _worker_peak_rss(data_dir: Path, job_id: str) -> int | None:
    with sqlite3.connect(data_dir / "jobs.sqlite3") as conn:
        row = conn.execute("SELECT worker_pid FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if not row or not row[0]:
        return None
    try:
        for line in Path(f"/proc/{row[0]}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


async def throughput_and_latency(server: ServerProcess, pollers: int = 50) -> None:
    items = [i for i in load_dev_items() if i.variant != "long"][:8]
    post_s: list[float] = []
    get_s: list[float] = []
    async with aiohttp.ClientSession(server.url, connector=aiohttp.TCPConnector(limit=200)) as api:
        for item in items:
            await upload(api, f"media://bench/{item.uri}.flac", item.audio_path)
        started = time.perf_counter()
        ids = []
        for item in items:
            t0 = time.perf_counter()
            response = await api.post("/v1/diarize", json={"url": f"media://bench/{item.uri}.flac"})
            post_s.append(time.perf_counter() - t0)
            ids.append((await response.json())["jobId"])
        done = asyncio.Event()

        async def poll(n: int) -> None:
            while not done.is_set():
                t0 = time.perf_counter()
                response = await api.get(f"/v1/jobs/{ids[n % len(ids)]}")
                await response.read()
                get_s.append(time.perf_counter() - t0)
                await asyncio.sleep(0.1)

        async def more_posts() -> None:  # submissions under load (inputs that fail fast, no worker time)
            while not done.is_set():
                t0 = time.perf_counter()
                response = await api.post("/v1/diarize", json={"url": "media://bench/missing.wav"})
                await response.read()
                post_s.append(time.perf_counter() - t0)
                await asyncio.sleep(0.2)

        tasks = [asyncio.create_task(poll(n)) for n in range(pollers)] + [asyncio.create_task(more_posts())]
        jobs = [await wait_for_job(api, job_id, 3600, period_s=1.0) for job_id in ids]
        elapsed = time.perf_counter() - started
        done.set()
        await asyncio.gather(*tasks)
    audio_h = sum(i.duration_s for i in items) / 3600
    ok = sum(j["status"] == "succeeded" for j in jobs)
    print(f"throughput: {len(items)} queued jobs ({audio_h * 60:.1f} min of audio, {ok} succeeded) in "
          f"{elapsed:.1f} s on {os.cpu_count()} cores -> {audio_h / (elapsed / 60):.3f} h of audio per minute")
    print(f"POST /v1/diarize under load: {_percentiles(post_s)}")
    print(f"GET /v1/jobs/{{id}} with {pollers} pollers: {_percentiles(get_s)}")


def make_long_flac(dest: Path, hours: float) -> float:
    """Concatenate dev files (repeating) into a 16 kHz FLAC of ``hours``; returns its duration in s."""
    sources = [i.audio_path for i in load_dev_items() if i.variant == "clean"]
    target = int(hours * 3600 * SAMPLE_RATE)
    written = 0
    with sf.SoundFile(dest, "w", samplerate=SAMPLE_RATE, channels=1, format="FLAC", subtype="PCM_16") as out:
        while written < target:
            for path in sources:
                audio, _ = sf.read(path, dtype="int16")
                audio = audio[: target - written]
                out.write(audio)
                written += len(audio)
                if written >= target:
                    break
    return written / SAMPLE_RATE


async def long_input(server: ServerProcess, data_dir: Path, hours: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.flac"
        duration = make_long_flac(path, hours)
        size_mb = path.stat().st_size / 1e6
        async with aiohttp.ClientSession(server.url) as api:
            t0 = time.perf_counter()
            await upload(api, "media://bench/long.flac", path)
            uploaded = time.perf_counter() - t0
            job_id = (await (await api.post("/v1/diarize", json={"url": "media://bench/long.flac"})).json())["jobId"]
            peak = 0
            while True:
                job = await (await api.get(f"/v1/jobs/{job_id}")).json()
                rss = _worker_peak_rss(data_dir, job_id)
                peak = max(peak, rss or 0)
                if job["status"] in ("succeeded", "failed", "canceled"):
                    break
                await asyncio.sleep(2.0)
            total = time.perf_counter() - t0
    speakers = len({s["speaker"] for s in job.get("output", {}).get("diarization", [])})
    print(f"long input: {duration / 3600:.2f} h FLAC ({size_mb:.0f} MB), "
          f"upload {uploaded:.1f} s, total through the API {total:.1f} s ({duration / total:.1f}x real time), "
          f"status {job['status']}, {speakers} speakers, worker peak RSS {peak / 1e6:.0f} MB")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-long", action="store_true")
    parser.add_argument("--long-hours", type=float, default=4.0)
    parser.add_argument("--pollers", type=int, default=50)
    args = parser.parse_args()
    exit_without_dev_corpus("bench_jobs")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        # rate limits raised: 50 pollers on one address would otherwise be (correctly) throttled
        with ServerProcess(data_dir, jobs={"rate_limit_get": 100_000, "rate_limit_post": 100_000}) as server:
            await throughput_and_latency(server, args.pollers)
            if not args.skip_long:
                await long_input(server, data_dir, args.long_hours)


if __name__ == "__main__":
    asyncio.run(main())
