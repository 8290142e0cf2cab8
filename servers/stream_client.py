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

from diarflow.operators.constants import SAMPLE_RATE
from diarflow.servers.protocol import BYTES_PER_SECOND, START_FIELDS

__all__ = ["FRAME_BYTES", "StreamOutcome", "file_frames", "percentile_ms", "run_stream_command", "stream_frames"]

FRAME_BYTES = BYTES_PER_SECOND // 5  # 200 ms, the recommended frame
MAX_RETRIES = 2
RETRY_BASE_S = 1.0
RESUMABLE_CLOSES = (None, 1001, 1006)  # a drop or a server going down, never a refusal (4xxx) or an end (1000)
RESUME_WINDOW_S = 60.0  # the server's default resume window
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 1.0
START: Mapping[str, Any] = {"type": "start", **START_FIELDS}


@dataclass
class StreamOutcome:
    """What one streaming session produced, as seen by the client.

    Attributes
    ----------
    session_id
        From ``ready`` (``""`` if the server refused before it).
    partials
        Every ``partial_result`` body, in arrival order (after a resume, the repeated snapshot too).
    final
        The ``final_result`` body, or ``None``.
    error
        The ``error`` body, or ``None``.
    close_code, close_reason
        How the last connection was closed.
    latencies_ms
        One per ``partial_result`` of the first connection: arrival minus send time of frame
        ``stats.chunks``, in ms.
    frames_sent
        Binary frames sent (over every connection).
    resumes
        Connections that resumed the session after a drop.
    reconnect_ms
        For each resume: from opening the new connection to its ``ready``, in ms.
    """

    session_id: str = ""
    partials: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    close_code: int | None = None
    close_reason: str = ""
    latencies_ms: list[float] = field(default_factory=list)
    frames_sent: int = 0
    resumes: int = 0
    reconnect_ms: list[float] = field(default_factory=list)


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


class _Run:
    """One session over one or more connections: sends the audio from where the server stands and
    collects what it says; one method per server message."""

    def __init__(self, frames: list[bytes], realtime: bool, outcome: StreamOutcome,
                 on_message: Callable[[dict[str, Any], float | None], None] | None) -> None:
        self.frames = frames
        self.realtime = realtime
        self.outcome = outcome
        self.on_message = on_message
        self.resume_token: str | None = None
        self.sent_at: list[float] = []  # first connection only: frame k -> send time (latency)
        self.t0: float | None = None  # real-time pacing origin, kept across connections
        self.resumed = False
        self.connected_at = 0.0
        self.dropped_at: float | None = None  # monotonic time of the drop being recovered from

    def _frames_from(self, audio_s: float) -> Iterable[tuple[int, bytes]]:
        """(audio byte offset, payload) from ``audio_s`` on; a frame cut by the offset is sent from there."""
        skip = int(round(audio_s * SAMPLE_RATE)) * 2
        offset = 0
        for payload in self.frames:
            end = offset + len(payload)
            if end > skip:
                yield max(offset, skip), payload[max(0, skip - offset):]
            offset = end

    async def send_audio(self, ws: aiohttp.ClientWebSocketResponse, audio_s: float) -> None:
        if self.t0 is None:
            self.t0 = time.perf_counter()
        for offset, payload in self._frames_from(audio_s):
            if ws.closed:
                return
            if self.realtime:  # a frame is "recorded" once its last sample is
                delay = self.t0 + (offset + len(payload)) / BYTES_PER_SECOND - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            if not self.resumed:
                self.sent_at.append(time.perf_counter())
            await ws.send_bytes(payload)
            self.outcome.frames_sent += 1
        if not ws.closed:
            await ws.send_json({"type": "close"})

    def on_ready(self, body: dict[str, Any]) -> float:
        """Returns the audio position (seconds) to send from."""
        self.outcome.session_id = body["session_id"]
        self.resume_token = body.get("resume_token") or self.resume_token
        self.dropped_at = None
        if body.get("resumed"):
            self.outcome.resumes += 1
            self.outcome.reconnect_ms.append((time.perf_counter() - self.connected_at) * 1000.0)
        return float(body.get("audio_received_s") or 0.0)

    def on_partial(self, body: dict[str, Any], arrived: float) -> float | None:
        self.outcome.partials.append(body)
        chunks = int(body["stats"]["chunks"])
        if self.resumed or not 0 < chunks <= len(self.sent_at):
            return None
        latency = (arrived - self.sent_at[chunks - 1]) * 1000.0
        self.outcome.latencies_ms.append(latency)
        return latency

    async def connection(self, http: aiohttp.ClientSession, url: str, start: Mapping[str, Any]) -> None:
        """Serve one connection until it closes (any way)."""
        self.connected_at = time.perf_counter()
        async with http.ws_connect(url, max_msg_size=0, heartbeat=None) as ws:
            resume = {"resume_token": self.resume_token} if self.resume_token else {}
            await ws.send_json({**START, **start, **resume})
            sender: asyncio.Task[None] | None = None
            try:
                while True:
                    msg = await ws.receive()
                    if msg.type == aiohttp.WSMsgType.CLOSE:
                        self.outcome.close_reason = str(msg.extra or "")
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    arrived = time.perf_counter()
                    body = json.loads(msg.data)
                    latency = None
                    kind = body.get("type")
                    if kind == "ready":
                        sender = asyncio.create_task(self.send_audio(ws, self.on_ready(body)))
                    elif kind == "partial_result":
                        latency = self.on_partial(body, arrived)
                    elif kind == "final_result":
                        self.outcome.final = body
                    elif kind == "error":
                        self.outcome.error = body
                    if self.on_message is not None:
                        self.on_message(body, latency)
            finally:
                if sender is not None:
                    if not sender.done():
                        sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)
            await ws.close()
            self.outcome.close_code = ws.close_code


async def stream_frames(
    url: str,
    frames: Iterable[bytes],
    *,
    realtime: bool = False,
    token: str | None = None,
    start: Mapping[str, Any] | None = None,
    on_message: Callable[[dict[str, Any], float | None], None] | None = None,
    http: aiohttp.ClientSession | None = None,
    resume: bool = True,
    resume_window_s: float = RESUME_WINDOW_S,
) -> StreamOutcome:
    """Run one session: ``start``, the frames, ``close``; collect what the server sends.

    A connection that drops (1006, or 1001 from a server going down) is resumed with the session's
    ``resume_token``: the client reconnects (backing off from 0.1 s to 1 s while the server is
    unreachable, for up to ``resume_window_s``) and continues from the ``audio_received_s`` the server
    reports, so no audio is duplicated or lost.

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
    resume
        Resume after a dropped connection (default); ``False``: report the drop.
    resume_window_s
        Give up resuming after this long without a connection.
    """
    outcome = StreamOutcome()
    run = _Run(list(frames), realtime, outcome, on_message)
    own = http is None
    http = http or aiohttp.ClientSession()
    target = _with_token(url, token)
    delay_s = RECONNECT_FIRST_S
    try:
        while True:
            unreachable = False
            try:
                await run.connection(http, target, start or {})
            except (aiohttp.ClientConnectionError, aiohttp.WSServerHandshakeError):
                if run.resume_token is None or not resume:
                    raise
                outcome.close_code, unreachable = None, True
            if (outcome.final is not None or run.resume_token is None or not resume
                    or outcome.close_code not in RESUMABLE_CLOSES):
                break
            now = time.monotonic()
            run.dropped_at = run.dropped_at if run.dropped_at is not None else now
            if now - run.dropped_at > resume_window_s:
                break
            if unreachable:  # e.g. the server restarting: back off
                await asyncio.sleep(delay_s)
                delay_s = min(2 * delay_s, RECONNECT_MAX_S)
            else:
                delay_s = RECONNECT_FIRST_S
            run.resumed = True
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
    if "final_until" in body["data"]:
        line += f", final until {body['data']['final_until']:.2f} s"
    if segments:
        last = segments[-1]
        line += f"; last {last['start_time']:.2f}-{last['end_time']:.2f} s -> {last['speaker_id']}"
    return line


async def run_stream_command(path: str | Path, url: str, realtime: bool, token: str | None,
                             out: TextIO | None = None, start: Mapping[str, Any] | None = None) -> int:
    """``diarflow stream``: stream ``path``, print every snapshot and (``realtime``) latency percentiles.
    ``start``: extra ``start`` fields, e.g. ``{"settle_s": 10}``."""
    out = out or sys.stdout
    frames = file_frames(path)

    def show(body: dict[str, Any], latency_ms: float | None) -> None:
        if body.get("type") in ("partial_result", "final_result"):
            line = _describe(body)
            if realtime and latency_ms is not None:
                line += f"  latency {latency_ms:.1f} ms"
            print(line, file=out, flush=True)
        elif body.get("type") == "ready" and body.get("resumed"):
            print(f"connection dropped; resumed session {body['session_id']} from "
                  f"{float(body['audio_received_s']):.2f} s", file=out, flush=True)
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
            outcome = await stream_frames(url, frames, realtime=realtime, token=token, on_message=show,
                                          start=start)
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
