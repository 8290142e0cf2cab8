"""Benchmark ``WS /diarize/stream`` against a real server process; prints numbers, asserts nothing.

Phases (each can be skipped):

1. latency, real-time pace: 1 session, then 16 concurrent sessions (P50 / P99 per the contract:
   arrival of a ``partial_result`` minus send time of frame ``stats.chunks``);
2. capacity: the largest number of concurrent real-time sessions whose P99 stays <= 280 ms
   (16, 32, 48, 64, ...; stops at the first failure or when the time budget is spent);
3. a 2-hour session (dev files concatenated) fed as fast as the server takes it: server RSS along
   the way and every snapshot checked against the contract's shape rules;
4. DER of the dev set through the endpoint versus the in-process streaming driver
   (``diarflow.diarize(path, mode="stream")``).

Run: ``python -m tools.bench_stream`` (``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from pathlib import Path
from typing import Any, Sequence

import aiohttp

from tools import exit_without_dev_corpus
from diarflow.testing.evaluation import DevItem, Turn, diarization_error_rate, load_dev_items, read_rttm
from diarflow.servers.stream_client import StreamOutcome, file_frames, percentile_ms, stream_frames
from diarflow.servers.protocol import BYTES_PER_SECOND
from diarflow.testing import ServerProcess, rss_bytes

FRAME_S = 0.2
P99_TARGET_MS = 280.0


def _rss_mb(server: ServerProcess) -> float:
    """The server's resident memory, MB (a process of its own: clients share neither it nor its GIL)."""
    return rss_bytes(server.pid) / 2**20


def _clips(library: Sequence[list[bytes]], count: int, seconds: float) -> list[list[bytes]]:
    """``count`` clips of ``seconds`` each, cycling over the recordings at different offsets."""
    n = int(seconds / FRAME_S)
    clips = []
    for i in range(count):
        frames = library[i % len(library)]
        offset = (i // len(library)) * 100 % max(1, len(frames) - n)
        clips.append(frames[offset:offset + n])
    return clips


async def _realtime(url: str, clips: list[list[bytes]]) -> tuple[list[float], int, list[float]]:
    """Stream every clip concurrently at real-time pace (starts spread over one frame)."""
    async def one(clip: list[bytes], http: aiohttp.ClientSession) -> StreamOutcome:
        await asyncio.sleep(random.uniform(0, FRAME_S))
        return await stream_frames(url, clip, realtime=True, http=http)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        outcomes = await asyncio.gather(*(one(c, http) for c in clips))
    failures = sum(1 for o in outcomes if o.close_code != 1000 or o.final is None)
    compute = [float(p["stats"]["pipeline_ms"]) for o in outcomes for p in o.partials]
    return [lat for o in outcomes for lat in o.latencies_ms], failures, compute


def _line(label: str, latencies: list[float], failures: int, compute: list[float]) -> str:
    load = os.getloadavg()[0]  # the machine is shared: say how busy it was
    return (f"{label:<28} utterances {len(latencies):5d}  P50 {percentile_ms(latencies, 50):7.1f} ms  "
            f"P99 {percentile_ms(latencies, 99):7.1f} ms  max {max(latencies, default=float('nan')):7.1f} ms"
            f"  (server compute P50 {percentile_ms(compute, 50):5.1f} / P99 {percentile_ms(compute, 99):5.1f} ms)"
            f"  failed sessions {failures}  load {load:.1f}")


async def bench_latency(server: ServerProcess, library: list[list[bytes]], seconds: float,
                        capacity_budget_s: float, capacity_seconds: float) -> None:
    print("== latency at real-time pace (one 200 ms frame every 200 ms) ==", flush=True)
    lat, failed, compute = await _realtime(server.stream_url, _clips(library, 1, seconds))
    print(_line("1 session", lat, failed, compute), flush=True)
    lat, failed, compute = await _realtime(server.stream_url, _clips(library, 16, seconds))
    print(_line("16 sessions", lat, failed, compute), flush=True)
    ok16 = failed == 0 and percentile_ms(lat, 99) <= P99_TARGET_MS

    print(f"== capacity: concurrent real-time sessions with P99 <= {P99_TARGET_MS:.0f} ms ==", flush=True)
    levels = [32, 48, 52, 56, 64, 96, 128] if ok16 else [12, 8, 4, 2, 1]
    best = 16 if ok16 else 0
    started = time.monotonic()
    for n in levels:
        if time.monotonic() - started + capacity_seconds > capacity_budget_s:
            print(f"(time budget of {capacity_budget_s:.0f} s spent; stopping before {n})")
            break
        lat, failed, compute = await _realtime(server.stream_url, _clips(library, n, capacity_seconds))
        held = failed == 0 and percentile_ms(lat, 99) <= P99_TARGET_MS
        print(_line(f"{n} sessions", lat, failed, compute) + ("  OK" if held else "  over target"), flush=True)
        if ok16 and not held:
            break
        if held:
            best = max(best, n)
            if not ok16:
                break
    print(f"largest concurrent real-time load holding P99 <= {P99_TARGET_MS:.0f} ms: {best} sessions", flush=True)


def _snapshot_problems(body: dict[str, Any]) -> list[str]:
    segments = body["data"]["segments"]
    problems = []
    starts = [s["start_time"] for s in segments]
    if starts != sorted(starts):
        problems.append("segments not ordered by start_time")
    seen: list[int] = []
    for s in segments:
        if s["text"] != "" or s["end_time"] < s["start_time"]:
            problems.append(f"bad segment {s}")
        for t in (s["start_time"], s["end_time"]):
            if abs(t * 100 - round(t * 100)) > 1e-6:
                problems.append(f"time {t} not rounded to 10 ms")
        if s["speaker_id"] not in seen:
            seen.append(s["speaker_id"])
    if seen != list(range(len(seen))):
        problems.append("speakers not numbered by first appearance")
    return problems


async def bench_long_session(server: ServerProcess, library: list[list[bytes]], hours: float) -> None:
    print(f"== one {hours:g} h session, fed faster than real time ==", flush=True)
    total_bytes = int(hours * 3600) * BYTES_PER_SECOND  # exactly the length asked for: file-end frames are short
    rss = [("start", _rss_mb(server))]
    checked = bad = 0
    old_count = 0
    marks = [(int(total_bytes * f), f"{int(f * 100)} %") for f in (0.25, 0.5, 0.75)]
    sent = 0

    def counted() -> Any:  # the dev recordings back to back, as often as it takes
        nonlocal sent
        while True:
            for recording in library:
                for frame in recording:
                    frame = frame[: total_bytes - sent]
                    if not frame:
                        return
                    sent += len(frame)
                    while marks and sent >= marks[0][0]:
                        rss.append((marks.pop(0)[1], _rss_mb(server)))
                    yield frame

    def check(body: dict[str, Any], _latency: float | None) -> None:
        nonlocal checked, bad, old_count
        if body.get("type") not in ("partial_result", "final_result"):
            return
        checked += 1
        problems = _snapshot_problems(body)
        segments = body["data"]["segments"]
        horizon = (segments[-1]["end_time"] if segments else 0.0) - 130.0
        old = sum(1 for s in segments if s["end_time"] < horizon)  # out of the 120 s buffer: must stay
        if old < old_count:
            problems.append(f"segments older than the buffer dropped ({old_count} -> {old})")
        old_count = max(old_count, old)
        if problems:
            bad += 1
            if bad <= 5:
                print("  invalid snapshot:", problems[:3])

    started = time.monotonic()
    outcome = await stream_frames(server.stream_url, counted(), on_message=check)
    elapsed = time.monotonic() - started
    rss.append(("end", _rss_mb(server)))
    final = outcome.final or {"data": {"segments": []}, "stats": {}}
    audio_s = sent / BYTES_PER_SECOND
    print(f"audio {audio_s / 3600:.2f} h in {elapsed:.0f} s ({audio_s / elapsed:.1f}x real time); "
          f"close {outcome.close_code} {outcome.close_reason!r}; final: {len(final['data']['segments'])} segments, "
          f"{final['stats'].get('utterances')} utterances", flush=True)
    print(f"snapshots checked {checked}, invalid {bad}")
    print("server RSS: " + ", ".join(f"{label} {mb:.0f} MB" for label, mb in rss), flush=True)


def _turns(segments: list[dict[str, Any]]) -> list[Turn]:
    return [Turn(s["start_time"], s["end_time"], f"S{s['speaker_id']}") for s in segments]


async def bench_der(server: ServerProcess, items: list[DevItem]) -> None:
    from diarflow import diarize

    print("== DER (collar 0.25 s, overlap scored): endpoint vs in-process streaming driver ==", flush=True)
    limit = asyncio.Semaphore(2)

    async def endpoint(item: DevItem) -> StreamOutcome:
        async with limit:
            return await stream_frames(server.stream_url, file_frames(item.audio_path))

    endpoint_runs = asyncio.gather(*(endpoint(i) for i in items))
    local_runs = asyncio.gather(*(asyncio.to_thread(diarize, i.audio_path, mode="stream") for i in items))
    remote, local = await asyncio.gather(endpoint_runs, local_runs)
    sums = {"endpoint": [0.0, 0.0], "in-process": [0.0, 0.0]}
    identical = 0
    for item, out, res in zip(items, remote, local):
        reference = read_rttm(item.rttm_path)[item.uri]
        ws_segments = out.final["data"]["segments"] if out.final else []
        local_segments = [{"start_time": round(s.start_s, 2), "end_time": round(s.end_s, 2),
                           "speaker_id": int(s.speaker.split("_")[1]), "text": ""} for s in res.segments]
        identical += ws_segments == local_segments
        row = []
        for name, segs in (("endpoint", ws_segments), ("in-process", local_segments)):
            der = diarization_error_rate(reference, _turns(segs), item.duration_s)
            sums[name][0] += der["der"] * der["total_s"]
            sums[name][1] += der["total_s"]
            row.append(der["der"])
        print(f"{item.uri:<12} endpoint DER {row[0] * 100:6.2f} %   in-process DER {row[1] * 100:6.2f} %   "
              f"{'identical segments' if ws_segments == local_segments else 'SEGMENTS DIFFER'}", flush=True)
    overall = {k: v[0] / v[1] * 100 for k, v in sums.items()}
    print(f"{'dev set':<12} endpoint DER {overall['endpoint']:6.2f} %   in-process DER {overall['in-process']:6.2f} %   "
          f"identical on {identical}/{len(items)} files", flush=True)


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per session, 1 and 16 sessions")
    parser.add_argument("--capacity-seconds", type=float, default=40.0, help="audio per session, capacity search")
    parser.add_argument("--capacity-budget", type=float, default=240.0, help="wall-clock cap of the search, s")
    parser.add_argument("--hours", type=float, default=2.0, help="length of the long session")
    parser.add_argument("--der-files", type=int, default=None, help="DER phase: only the first N dev files")
    parser.add_argument("--skip", action="append", default=[], choices=["latency", "long", "der"])
    args = parser.parse_args(argv)
    exit_without_dev_corpus("bench_stream")
    random.seed(0)
    items = load_dev_items()
    library = [file_frames(i.audio_path) for i in items]
    print(f"cores: {os.cpu_count()}, load average at start: {os.getloadavg()[0]:.1f}")
    print(f"dev recordings: {len(items)}, {sum(len(f) for f in library) * FRAME_S:.0f} s of audio", flush=True)
    server = ServerProcess(cli_args=["--idle-timeout", "600"]).start()
    try:
        print(f"server RSS after start: {_rss_mb(server):.0f} MB", flush=True)
        if "latency" not in args.skip:
            await bench_latency(server, library, args.seconds, args.capacity_budget, args.capacity_seconds)
        if "long" not in args.skip:
            await bench_long_session(server, library, args.hours)
        if "der" not in args.skip:
            await bench_der(server, items[: args.der_files])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/health") as response:
                print(f"sessions open at the end: {json.loads(await response.text())['sessions']}")
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
