"""A Python client for ``WS /diarize/stream``: stream a file, print snapshots, measure per-utterance latency.

Used by ``diarflow stream FILE``, the tests and ``tools/bench_stream.py``. Latency follows the contract:
arrival of a ``partial_result`` minus the time frame number ``stats.chunks`` was sent.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TextIO
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
import numpy as np

from diarflow.servers.protocol import BYTES_PER_SECOND, START_FIELDS

__all__ = ["FRAME_BYTES", "StreamOutcome", "file_frames", "percentile_ms", "run_stream_command", "stream_frames"]

FRAME_BYTES = BYTES_PER_SECOND // 5  # 200 ms, the recommended frame
MAX_RETRIES = 2
RETRY_BASE_S = 1.0
START: Mapping[str, Any] = {"type": "start", **START_FIELDS}


@dataclass
class StreamOutcome:
    """What one streaming session produced, as seen by the client.

    Attributes
    ----------
    session_id
        From ``ready`` (``""`` if the server refused before it).
    partials
        Every ``partial_result`` body, in arrival order.
    final
        The ``final_result`` body, or ``None``.
    error
        The ``error`` body, or ``None``.
    close_code, close_reason
        How the server closed the socket.
    latencies_ms
        One per ``partial_result``: arrival minus send time of frame ``stats.chunks``, in ms.
    frames_sent
        Binary frames sent.
    """

    session_id: str = ""
    partials: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    close_code: int | None = None
    close_reason: str = ""
    latencies_ms: list[float] = field(default_factory=list)
    frames_sent: int = 0


def file_frames(path: str | Path, frame_bytes: int = FRAME_BYTES) -> list[bytes]:
    """Decode any audio/video file to 16 kHz mono s16le frames of ``frame_bytes`` (the last may be shorter)."""
    from diarflow.audio import decode_chunks, to_s16le

    return [to_s16le(chunk) for chunk in decode_chunks(path, frame_bytes // 2)]


def _with_token(url: str, token: str | None) -> str:
    if not token:
        return url
    parts = urlsplit(url)
    query = f"{parts.query}&{urlencode({'token': token})}" if parts.query else urlencode({"token": token})
    return urlunsplit(parts._replace(query=query))


def percentile_ms(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, ``nan`` when empty."""
    data = np.asarray(list(values), dtype=np.float64)
    return float(np.percentile(data, q)) if data.size else float("nan")


async def stream_frames(
    url: str,
    frames: Iterable[bytes],
    *,
    realtime: bool = False,
    token: str | None = None,
    start: Mapping[str, Any] | None = None,
    on_message: Callable[[dict[str, Any], float | None], None] | None = None,
    http: aiohttp.ClientSession | None = None,
) -> StreamOutcome:
    """Run one session: ``start``, the frames, ``close``; collect what the server sends.

    Parameters
    ----------
    url
        ``ws://host:port/diarize/stream``.
    frames
        s16le payloads, sent in order as binary frames.
    realtime
        Pace frames at their audio duration (a 200 ms frame every 200 ms) instead of as fast as
        the socket takes them.
    token
        API key, added as ``?token=`` (never printed).
    start
        Extra ``start`` fields, e.g. ``{"num_speakers": 2}``.
    on_message
        Called with each JSON message from the server and, for ``partial_result``, its latency in ms.
    http
        Client session to use (one is created when omitted).
    """
    outcome = StreamOutcome()
    sent_at: list[float] = []
    own = http is None
    http = http or aiohttp.ClientSession()
    try:
        async with http.ws_connect(_with_token(url, token), max_msg_size=0, heartbeat=None) as ws:
            await ws.send_json({**START, **(start or {})})

            async def send_audio() -> None:
                t0 = time.perf_counter()
                audio_s = 0.0
                for payload in frames:
                    if ws.closed:
                        return
                    if realtime:
                        audio_s += len(payload) / BYTES_PER_SECOND
                        delay = t0 + audio_s - time.perf_counter()
                        if delay > 0:  # the frame is "recorded" once its last sample is
                            await asyncio.sleep(delay)
                    sent_at.append(time.perf_counter())
                    await ws.send_bytes(payload)
                    outcome.frames_sent += 1
                if not ws.closed:
                    await ws.send_json({"type": "close"})

            sender: asyncio.Task[None] | None = None
            try:
                while True:
                    msg = await ws.receive()
                    if msg.type == aiohttp.WSMsgType.CLOSE:
                        outcome.close_reason = str(msg.extra or "")
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    arrived = time.perf_counter()
                    body = json.loads(msg.data)
                    latency = None
                    kind = body.get("type")
                    if kind == "ready":
                        outcome.session_id = body["session_id"]
                        sender = asyncio.create_task(send_audio())
                    elif kind == "partial_result":
                        outcome.partials.append(body)
                        chunks = int(body["stats"]["chunks"])
                        if 0 < chunks <= len(sent_at):
                            latency = (arrived - sent_at[chunks - 1]) * 1000.0
                            outcome.latencies_ms.append(latency)
                    elif kind == "final_result":
                        outcome.final = body
                    elif kind == "error":
                        outcome.error = body
                    if on_message is not None:
                        on_message(body, latency)
            finally:
                if sender is not None:
                    if not sender.done():
                        sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)
            await ws.close()
            outcome.close_code = ws.close_code
    finally:
        if own:
            await http.close()
    return outcome


def _describe(body: Mapping[str, Any]) -> str:
    segments = body["data"]["segments"]
    speakers = sorted({s["speaker_id"] for s in segments})
    stats = body["stats"]
    line = (f"{body['type']:<14} utterances={stats['utterances']:<4} chunks={stats['chunks']:<6} "
            f"pipeline={stats['pipeline_ms']:7.1f} ms  {len(segments)} segments, speakers {speakers}")
    if segments:
        last = segments[-1]
        line += f"; last {last['start_time']:.2f}-{last['end_time']:.2f} s -> {last['speaker_id']}"
    return line


async def run_stream_command(path: str | Path, url: str, realtime: bool, token: str | None,
                             out: TextIO | None = None) -> int:
    """``diarflow stream``: stream ``path``, print every snapshot and (``realtime``) latency percentiles."""
    out = out or sys.stdout
    frames = file_frames(path)

    def show(body: dict[str, Any], latency_ms: float | None) -> None:
        if body.get("type") in ("partial_result", "final_result"):
            line = _describe(body)
            if realtime and latency_ms is not None:
                line += f"  latency {latency_ms:.1f} ms"
            print(line, file=out, flush=True)
        elif body.get("type") == "ready":
            print(f"ready: session {body['session_id']}, sending {len(frames)} frames"
                  f"{' at real-time pace' if realtime else ''}", file=out, flush=True)
        elif body.get("type") == "error":
            print(f"error: {body.get('detail')}", file=out, flush=True)

    outcome = StreamOutcome()
    for attempt in range(MAX_RETRIES + 1):
        if attempt:  # the contract: back off exponentially on 1011 / dropped connections, at most 2 retries
            delay = RETRY_BASE_S * 2 ** (attempt - 1)
            print(f"retrying in {delay:.0f} s with a new session (attempt {attempt + 1})", file=out, flush=True)
            await asyncio.sleep(delay)
        try:
            outcome = await stream_frames(url, frames, realtime=realtime, token=token, on_message=show)
        except aiohttp.ClientConnectionError as exc:
            print(f"connection failed: {exc}", file=out, flush=True)
            if attempt == MAX_RETRIES:
                raise
            continue
        retryable = outcome.close_code in (None, 1006, 1011)  # never 4xxx: those need a person
        if outcome.final is not None or not retryable:
            break
    if outcome.final is not None:
        for seg in outcome.final["data"]["segments"]:
            print(f"  {seg['start_time']:9.2f} {seg['end_time']:9.2f}  speaker {seg['speaker_id']}", file=out)
    if realtime:
        lat = outcome.latencies_ms
        print(f"latency over {len(lat)} utterances: P50 {percentile_ms(lat, 50):.1f} ms, "
              f"P99 {percentile_ms(lat, 99):.1f} ms", file=out)
    print(f"closed with {outcome.close_code}", file=out)
    return 0 if outcome.final is not None and outcome.close_code == 1000 else 1
