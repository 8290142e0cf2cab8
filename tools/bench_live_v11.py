"""Benchmark the live protocol v1.1 additions; prints numbers, asserts nothing.

1. label stability: over the dev files streamed through :class:`diarflow.live.LiveSession` (200 ms
   frames, as fast as the engine goes), ``relabelled_s`` per hour of audio and per hour of speech, and
   how far ``final_until`` trails the live edge (audio received) at each snapshot, P50 / P90;
2. checkpoints: a long session (dev files concatenated up to ``--hours``) fed faster than real time;
   the size of the checkpoint at the end and the cost per utterance of taking, serialising and writing
   it atomically (P50 / P99);
3. resume: a server process with ``--data-dir``; reconnect-to-``ready`` latency (a new connection
   resuming a session whose connection dropped), P50 / P99 over ``--reconnects`` resumes;
4. live latency with checkpointing on: one session at real-time pace (``--latency-s`` of dev01);
5. identification live: in each dev conversation, the two speakers with the most speech who also talk in
   another dev recording are enrolled with voiceprints made there (``POST /v1/voiceprint``'s recipe: about
   10 s of their turns alone, diarized as one speaker); the conversation is streamed with ``start.speakers``
   and the final result scored per 10 ms frame: the share of an enrolled person's speech labelled with
   their name, and the share of everyone else's speech labelled with an enrolled name.

Targets (issue 13): <= 30 s relabelled per hour, final_until <= 15 s behind the edge (P50), reconnect
P99 <= 200 ms, checkpoint <= 5 MB after 2 h, write P99 <= 10 ms, >= 95 % of enrolled speech labelled
right and <= 2 % of others' speech labelled with an enrolled name.

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
from diarflow.testing.evaluation import DevItem, load_dev_items, read_rttm, single_speaker_regions

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


_ENROL_S = 10.0  # seconds of solo speech per voiceprint
_FRAME_S = 0.01
_COLLAR_S = 0.25


def _solo_turns(item: DevItem) -> dict[str, list[tuple[float, float]]]:
    """Each reference speaker's stretches where nobody else speaks, in seconds."""
    solo: dict[str, list[tuple[float, float]]] = {}
    for region in single_speaker_regions(read_rttm(item.rttm_path)[item.uri]):
        solo.setdefault(region.speaker, []).append((region.start_s, region.end_s))
    return solo


def _voiceprint(item: DevItem, spans: list[tuple[float, float]], resources: Any) -> str:
    """``POST /v1/voiceprint``'s voiceprint of the longest of ``spans`` of ``item``, up to ``_ENROL_S``."""
    from diarflow.api import voiceprint
    from diarflow.audio import decode_chunks

    audio = np.concatenate(list(decode_chunks(item.audio_path)))
    pieces, total = [], 0.0
    for a, b in sorted(spans, key=lambda s: s[0] - s[1]):  # longest first
        pieces.append(audio[int(a * SAMPLE_RATE):int(b * SAMPLE_RATE)])
        total += b - a
        if total >= _ENROL_S:
            break
    return voiceprint(np.concatenate(pieces)[: int(_ENROL_S * SAMPLE_RATE)], resources=resources)


def identification(items: list[DevItem], resources: Any) -> None:
    from diarflow.live import KnownSpeaker, LiveOptions, LiveSession

    solo = {item.uri: _solo_turns(item) for item in items}
    totals = [[0.0] * 4, [0.0] * 4]  # per protocol: named right, enrolled speech, named wrongly, others' speech
    for item in items:
        reference = read_rttm(item.rttm_path)[item.uri]
        talk: dict[str, float] = {}
        for t in reference:
            talk[t.speaker] = talk.get(t.speaker, 0.0) + t.end_s - t.start_s
        elsewhere = {who: other for who in talk for other in items
                     if other.uri.split("_")[0] != item.uri.split("_")[0] and who in solo[other.uri]
                     and sum(b - a for a, b in solo[other.uri][who]) >= _ENROL_S}
        chosen = sorted(elsewhere, key=lambda who: -talk[who])[:2]
        if len(chosen) < 2:
            print(f"  {item.uri:<11} skipped: fewer than two of its speakers talk {_ENROL_S:g} s alone elsewhere")
            continue
        known = tuple(KnownSpeaker(who, _voiceprint(elsewhere[who], solo[elsewhere[who].uri][who], resources))
                      for who in chosen)
        session = LiveSession(LiveOptions(speakers=known), resources)
        for frame in _frames(item):
            session.push(frame)
        final = session.close()[-1]
        names = {k: label for k, (label, _) in session.names(final).items()}
        frames = int(item.duration_s / _FRAME_S) + 1
        said: dict[str, np.ndarray] = {}
        for t in reference:
            said.setdefault(t.speaker, np.zeros(frames, bool))[int(t.start_s / _FRAME_S):int(t.end_s / _FRAME_S)] = True
        shown: dict[str, np.ndarray] = {who: np.zeros(frames, bool) for who in chosen}
        for t in final.turns:
            if t.speaker in names:
                shown[names[t.speaker]][t.start_sample * 100 // SAMPLE_RATE: t.end_sample * 100 // SAMPLE_RATE] = True
        any_name = np.logical_or.reduce(list(shown.values()))
        scored = np.ones(frames, bool)  # the collar: frames within 0.25 s of a reference boundary are not scored
        for t in reference:
            for edge in (t.start_s, t.end_s):
                scored[max(0, int((edge - _COLLAR_S) / _FRAME_S)):int((edge + _COLLAR_S) / _FRAME_S)] = False
        others = np.logical_or.reduce([v for w, v in said.items() if w not in chosen] or [np.zeros(frames, bool)])
        others &= ~np.logical_or.reduce([said[w] for w in chosen])  # others alone: an enrolled voice may overlap
        line = []
        for k, mask in enumerate((np.ones(frames, bool), scored)):
            counts = [int(sum(np.count_nonzero(said[w] & shown[w] & mask) for w in chosen)),
                      int(sum(np.count_nonzero(said[w] & mask) for w in chosen)),
                      int(np.count_nonzero(others & any_name & mask)), int(np.count_nonzero(others & mask))]
            totals[k] = [a + b * _FRAME_S for a, b in zip(totals[k], counts)]
            line.append(f"{100 * counts[0] / max(counts[1], 1):5.1f} % / {100 * counts[2] / max(counts[3], 1):4.1f} %")
        print(f"  {item.uri:<11} enrolled {', '.join(chosen)}: named right / others named wrongly "
              f"{line[0]} (no collar), {line[1]} (+-0.25 s)", flush=True)
    for k, protocol in enumerate(("no collar", "+-0.25 s collar")):
        right, enrolled_s, wrong, others_s = totals[k]
        print(f"identification live ({protocol}), 2 enrolled speakers per conversation: "
              f"{100 * right / enrolled_s:.1f} % of {enrolled_s:.0f} s of their speech named right (target >= 95 %); "
              f"others' speech named with an enrolled name: {100 * wrong / max(others_s, 1e-9):.1f} % of "
              f"{others_s:.0f} s (target <= 2 %)")


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
    parser.add_argument("--skip", action="append", default=[], choices=["stability", "checkpoints", "server", "identification"])
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
        if "identification" not in args.skip:
            identification(items, resources)
    if "server" not in args.skip:
        server_phases(items, args.reconnects, args.latency_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
