"""Benchmark the live protocol v1.1 additions; prints numbers, asserts nothing.

1. label stability: over the dev files streamed through :class:`diarflow.live.LiveSession` (200 ms
   frames, as fast as the engine goes), ``relabelled_s`` per hour of audio and per hour of speech, and
   how far ``final_until`` trails the live edge (audio received) at each snapshot, P50 / P90;
2. checkpoints: a long session (dev files concatenated up to ``--hours``) fed faster than real time;
   the size of the checkpoint at the end and the cost per utterance of taking, serialising and writing
   it atomically (P50 / P99);
3. resume: a server process with ``--data-dir``; reconnect-to-``ready`` latency (a new connection
   resuming a session whose connection dropped), P50 / P99 over ``--reconnects`` resumes;
4. live latency with checkpointing on: one session at real-time pace (``--latency-s`` of dev01).

Targets (issue 13): <= 30 s relabelled per hour, final_until <= 15 s behind the edge (P50), reconnect
P99 <= 200 ms, checkpoint <= 5 MB after 2 h, write P99 <= 10 ms.

Run: ``python -m tools.bench_live_v11`` (``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tools import exit_without_dev_corpus
from diarflow.operators.constants import SAMPLE_RATE
from diarflow.testing import ServerProcess
from diarflow.testing.evaluation import DevItem, load_dev_items

FRAME_SAMPLES = 3200


def _frames(item: DevItem) -> list[bytes]:
    from diarflow.servers.stream_client import file_frames

    return file_frames(item.audio_path)


def _speech_samples(snapshot: Any) -> int:
    spans = sorted((t.start_sample, t.end_sample) for t in snapshot.turns)
    total, reach = 0, 0
    for a, b in spans:
        if b > reach:
            total += b - max(a, reach)
            reach = b
    return total


def stability(items: list[DevItem], resources: Any, settle_s: float | None) -> None:
    from dataclasses import replace

    from diarflow.dataflow import StreamingSession
    from diarflow.operators.messages import PcmBytes, Snapshot
    from diarflow.operators.pipeline import PipelineConfig, build_graph
    from diarflow.testing.evaluation import Turn, diarization_error_rate, read_rttm

    cfg = PipelineConfig().for_mode("stream")
    settle = None if settle_s is None else int(settle_s * SAMPLE_RATE)
    graph = build_graph(replace(cfg, snapshots=replace(cfg.snapshots, settle_samples=settle)))
    print(f"settled horizon: {'the clusterer buffer' if settle is None else f'output settled {settle_s:g} s behind'}")
    relabelled = audio = speech = 0
    behind_s: list[float] = []
    errors_s = total_s = 0.0
    for item in items:
        session = StreamingSession(graph, resources)
        file_relabelled = received = 0
        for frame in _frames(item):
            received += len(frame) // 2
            for snapshot in session.push(PcmBytes(frame)):
                if isinstance(snapshot, Snapshot):
                    file_relabelled += snapshot.relabelled_samples
                    behind_s.append((received - snapshot.settled_until_sample) / SAMPLE_RATE)
        final = [m for m in session.close() if isinstance(m, Snapshot)][-1]
        file_relabelled += final.relabelled_samples
        relabelled += file_relabelled
        audio += received
        speech += _speech_samples(final)
        hypothesis = [Turn(t.start_sample / SAMPLE_RATE, t.end_sample / SAMPLE_RATE, str(t.speaker))
                      for t in final.turns]
        score = diarization_error_rate(read_rttm(item.rttm_path)[item.uri], hypothesis, item.duration_s, 0.25)
        errors_s += score["missed_s"] + score["false_alarm_s"] + score["confusion_s"]
        total_s += score["total_s"]
        print(f"  {item.uri:<11} {received / SAMPLE_RATE:7.1f} s audio, "
              f"relabelled {file_relabelled / SAMPLE_RATE:6.1f} s, DER {100 * score['der']:5.2f} %, "
              f"{final.num_speakers} speakers", flush=True)
    print(f"streaming DER of the final results (pooled, +-0.25 s collar): {100 * errors_s / total_s:.2f} %")
    hours_audio, hours_speech = audio / SAMPLE_RATE / 3600, speech / SAMPLE_RATE / 3600
    print(f"relabelled: {relabelled / SAMPLE_RATE:.1f} s over {hours_audio * 60:.1f} min of audio "
          f"= {relabelled / SAMPLE_RATE / hours_audio:.1f} s per hour of audio, "
          f"{relabelled / SAMPLE_RATE / hours_speech:.1f} s per hour of speech (target <= 30)")
    print(f"final_until behind the live edge: P50 {np.percentile(behind_s, 50):.1f} s, "
          f"P90 {np.percentile(behind_s, 90):.1f} s over {len(behind_s)} snapshots (target P50 <= 15 s)")


def checkpoints(items: list[DevItem], resources: Any, hours: float) -> None:
    from diarflow.live import CheckpointFile, LiveOptions, LiveSession

    session = LiveSession(LiveOptions(), resources)
    limit = int(hours * 3600 * SAMPLE_RATE)
    write_ms: list[float] = []
    size = journal = on_disk = 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        file = CheckpointFile(Path(folder) / "session.ckpt")
        while session.samples_received < limit:
            for item in items:
                for frame in _frames(item):
                    if session.samples_received >= limit:
                        break
                    if session.push(frame):
                        t0 = time.perf_counter()
                        size = file.save(session, {"session_id": "bench", "team": None})
                        write_ms.append((time.perf_counter() - t0) * 1000.0)
                        journal = file.turns_path.stat().st_size if file.turns_path.exists() else 0
                        on_disk = file.path.stat().st_size
        elapsed = time.perf_counter() - started
    print(f"checkpoint after {session.samples_received / SAMPLE_RATE / 3600:.2f} h of audio "
          f"({elapsed:.0f} s to stream): {size / 1e6:.2f} MB (target <= 5 MB; its file, two slots: "
          f"{on_disk / 1e6:.2f} MB) plus {journal / 1e3:.0f} kB of settled "
          f"turns appended beside it; write per utterance "
          f"P50 {np.percentile(write_ms, 50):.2f} ms, P99 {np.percentile(write_ms, 99):.2f} ms over "
          f"{len(write_ms)} utterances (target P99 <= 10 ms)")


async def _resume_latencies(url: str, reconnects: int, frames: list[bytes]) -> list[float]:
    import aiohttp

    from diarflow.servers.stream_client import START

    out: list[float] = []
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url) as ws:
            await ws.send_json(START)
            token = (await ws.receive_json())["resume_token"]
            for frame in frames:
                await ws.send_bytes(frame)
        for _ in range(reconnects):  # each connection ends without a close message: a drop
            t0 = time.perf_counter()
            async with http.ws_connect(url) as ws:
                await ws.send_json({**START, "resume_token": token})
                ready = await ws.receive_json()
                out.append((time.perf_counter() - t0) * 1000.0)
                assert ready["resumed"], ready
                await ws.receive_json()  # the repeated snapshot
    return out


async def _latency(url: str, frames: list[bytes]) -> list[float]:
    from diarflow.servers.stream_client import stream_frames

    outcome = await stream_frames(url, frames, realtime=True)
    return outcome.latencies_ms


def server_phases(items: list[DevItem], reconnects: int, latency_s: float) -> None:
    frames = _frames(items[0])
    with tempfile.TemporaryDirectory() as folder:
        for data_dir in (Path(folder), None):
            # the production entry point, `diarflow serve`, with and without --data-dir
            server = ServerProcess(data_dir, cli_args=[]).start()
            try:
                label = "checkpointing on (--data-dir)" if data_dir is not None else "checkpointing off"
                if data_dir is not None:
                    resumes = asyncio.run(_resume_latencies(server.stream_url, reconnects, frames[:150]))
                    print(f"reconnect to ready (resume, {label}): P50 {np.percentile(resumes, 50):.1f} ms, "
                          f"P99 {np.percentile(resumes, 99):.1f} ms over {len(resumes)} (target P99 <= 200 ms)",
                          flush=True)
                latencies = asyncio.run(_latency(server.stream_url, frames[: int(latency_s / 0.2)]))
                print(f"live latency, 1 session, {label}: P50 {np.percentile(latencies, 50):.1f} ms, "
                      f"P99 {np.percentile(latencies, 99):.1f} ms over {len(latencies)} utterances", flush=True)
            finally:
                server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=2.0, help="length of the long session (default 2)")
    parser.add_argument("--settle-s", type=float, default=None,
                        help="settle the output this far behind the edge (SnapshotEmitterConfig.settle_samples)")
    parser.add_argument("--reconnects", type=int, default=50, help="resumes to time (default 50)")
    parser.add_argument("--latency-s", type=float, default=60.0, help="real-time audio for the latency phase")
    parser.add_argument("--skip", action="append", default=[], choices=["stability", "checkpoints", "server"])
    args = parser.parse_args(argv)
    exit_without_dev_corpus("bench_live_v11")
    from threadpoolctl import threadpool_limits

    from diarflow.api import default_resources

    items = load_dev_items()
    resources = default_resources()
    with threadpool_limits(limits=1, user_api="blas"):
        if "stability" not in args.skip:
            stability(items, resources, args.settle_s)
        if "checkpoints" not in args.skip:
            checkpoints([i for i in items if i.variant == "clean"], resources, args.hours)
    if "server" not in args.skip:
        server_phases(items, args.reconnects, args.latency_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
