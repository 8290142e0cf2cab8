"""``WS /diarize/stream`` (protocol v1.1) and the "try it" page: translate frames into LiveSession calls.

The contract is ``shared/specs/stream-protocol.md``; the server's own limits (idle and start timeouts, slow
readers, the live-session cap and its close code 1013) are in ``docs/stream-session-limits.md``. One :class:`~diarflow.live.LiveSession` per session; the
models in ``app[RESOURCES]`` are shared. ``session.push`` is CPU-bound, so it runs on a thread pool
sized to the cores, one push in flight per session: the handler awaits each push before it reads the
next frame, which is also the back-pressure (a client sending faster than compute stops being read,
and aiohttp stops reading its socket once its small frame queue is full). Sessions outlive their
connection for the resume window (``servers/live_sessions.py``); message shapes are in
``servers/stream_messages.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Mapping, TypeVar

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web

from diarflow.live import LiveSession
from diarflow.operators.constants import SAMPLE_RATE

from diarflow.servers.auth import configured_api_keys, team_for_token
from diarflow.servers.live_sessions import LiveRecord, ResumableSessions, new_resume_token
from diarflow.servers.protocol import START_FIELDS
from diarflow.servers.state import RESOURCES, SETTINGS, STREAM, ServerSettings
from diarflow.servers.stream_messages import (
    ProtocolError,
    close_reason,
    parse_text,
    repeat_message,
    snapshot_message,
    start_options,
    step_and_render,
)

__all__ = ["MAX_FRAME_BYTES", "StreamRegistry", "STREAM", "active_sessions", "snapshot_message", "setup_stream"]

log = logging.getLogger("diarflow.server.stream")

MAX_FRAME_BYTES = 1 << 20
STATIC_DIR = Path(__file__).parent / "static"
UNAUTHORIZED = 4401
SESSION_NOT_FOUND = 4404
RESUMED_ELSEWHERE = 4409
MAX_TOKEN_CHARS = 256
T = TypeVar("T")


@dataclass
class StreamRegistry:
    """Process-wide state of the endpoint: the compute pool, open sockets, resumable sessions, live count."""

    pool: ThreadPoolExecutor
    api_keys: Mapping[str, str]
    resumable: ResumableSessions
    sockets: set[web.WebSocketResponse] = field(default_factory=set)
    sessions: int = 0


def active_sessions(app: web.Application) -> int:
    """Number of live streaming sessions (0 before startup)."""
    return app[STREAM].sessions if STREAM in app else 0


async def _stream_ctx(app: web.Application) -> AsyncIterator[None]:
    """Own the compute pool for the app's lifetime; shut it down after the sockets are closed."""
    settings = app[SETTINGS]
    keys = configured_api_keys(settings.api_keys)
    if settings.auth_enabled and not keys:
        log.warning("auth is enabled but no API keys are configured: every stream will be refused")
    pool = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="diarflow-stream")
    directory = settings.data_dir / "live" if settings.data_dir is not None else None
    resumable = ResumableSessions(settings.resume_window_s, directory)
    app[STREAM] = StreamRegistry(pool=pool, api_keys=keys, resumable=resumable)
    resumable.sweep()  # files of sessions that expired while the server was down

    async def sweep_forever() -> None:
        while True:
            await asyncio.sleep(min(1.0, settings.resume_window_s / 4))
            resumable.sweep()

    sweeper = asyncio.create_task(sweep_forever())
    yield
    sweeper.cancel()
    await asyncio.gather(sweeper, return_exceptions=True)
    pool.shutdown(wait=True, cancel_futures=True)


async def _close_sockets(app: web.Application) -> None:
    """On shutdown, close every open stream with 1001 so clients know to reconnect elsewhere."""
    if STREAM not in app:
        return
    sockets = list(app[STREAM].sockets)
    await asyncio.gather(*(ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown") for ws in sockets),
                         return_exceptions=True)


class _StreamSocket(web.WebSocketResponse):
    """A WebSocket that precedes aiohttp's own 1009 close (frame over ``max_msg_size``) with an ``error``."""

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG and not self.closed:
            try:
                await self.send_json({"type": "error", "detail": f"frame larger than {MAX_FRAME_BYTES} bytes"})
            except (ConnectionError, RuntimeError):
                pass
        return await super().close(code=code, message=message, drain=drain)


class ClientNotReading(Exception):
    """A message could not be handed to the client within ``send_timeout_s``: it stopped reading."""


class _Displaced(Exception):
    """Another connection resumed this connection's session: stop serving it."""


class _Connection:
    """One connection's protocol state machine; only the handler task reads the socket.

    Activity is what the client sends (audio or a message): the WebSocket heartbeat keeps the
    connection alive but never the session, so a silent client is finalised after ``idle_timeout_s``
    whatever its pongs, and one that never sends ``start`` is closed after ``start_timeout_s``.
    Engine calls hold the session record's lock and first check that this connection still owns the
    session: a connection that was displaced by a resume never pushes audio into it again.
    """

    def __init__(self, ws: web.WebSocketResponse, registry: StreamRegistry, resources: Any,
                 settings: ServerSettings, team: str | None) -> None:
        self.ws = ws
        self.registry = registry
        self.resources = resources
        self.team = team
        self.idle_timeout_s = settings.idle_timeout_s
        self.start_timeout_s = settings.start_timeout_s
        self.send_timeout_s = settings.send_timeout_s
        self.max_samples = int(settings.max_session_s * SAMPLE_RATE)
        self.record: LiveRecord | None = None
        self.last_activity_s = time.monotonic()

    @property
    def session_id(self) -> str:
        return self.record.session_id if self.record is not None else ""

    async def _compute(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.registry.pool, fn)
        except (asyncio.CancelledError, ProtocolError):
            raise
        except Exception as exc:  # the engine failed: report it, never crash the server
            log.exception("session %s: inference failed", self.session_id)
            raise ProtocolError(WSCloseCode.INTERNAL_ERROR, f"inference failed: {type(exc).__name__}") from exc

    async def send(self, body: Mapping[str, Any] | str) -> None:
        """Send one message, or raise :class:`ClientNotReading` if it cannot leave within the bound."""
        if self.ws.closed:  # closed under us (shutdown, client gone): nothing left to tell
            return
        try:
            async with asyncio.timeout(self.send_timeout_s):
                await self.ws.send_str(body if isinstance(body, str) else json.dumps(body))
        except TimeoutError:
            raise ClientNotReading(f"a message waited more than {self.send_timeout_s:g} s to be sent") from None

    async def _receive(self) -> WSMessage | None:
        """The next client frame, or ``None`` once the idle (or start) deadline has passed.

        The deadline runs from the client's last message, not from the last frame of any kind:
        aiohttp's own ``receive(timeout=...)`` restarts its wait after every pong.
        """
        wait_s = self.idle_timeout_s if self.record is not None else self.start_timeout_s
        remaining_s = self.last_activity_s + wait_s - time.monotonic()
        if remaining_s <= 0:
            return None
        try:
            async with asyncio.timeout(remaining_s):
                msg = await self.ws.receive()
        except TimeoutError:
            return None
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            self.last_activity_s = time.monotonic()
        return msg

    async def run(self) -> None:
        """Serve the connection until it ends; raises :class:`ProtocolError` on a contract breach."""
        try:
            await self._serve()
        except _Displaced:
            return

    async def _serve(self) -> None:
        while not self.ws.closed:
            msg = await self._receive()
            if msg is None:
                if self.record is None:
                    raise ProtocolError(WSCloseCode.POLICY_VIOLATION,
                                        f"no start message within {self.start_timeout_s:g} s")
                await self._finish("idle timeout")
                return
            if msg.type == WSMsgType.BINARY:
                if await self._on_audio(msg.data):
                    await self._finish("session length limit")
                    return
            elif msg.type == WSMsgType.TEXT:
                body = parse_text(msg.data)
                if body["type"] == "start":
                    await self._on_start(body)
                elif body["type"] == "close":
                    await self._finish("")
                    return
                else:
                    raise ProtocolError(WSCloseCode.POLICY_VIOLATION, f"unknown message type {body['type']!r}")
            else:  # CLOSE, CLOSING, CLOSED, ERROR: the client left (or aiohttp closed it, e.g. 1009)
                return

    async def _on_start(self, body: Mapping[str, Any]) -> None:
        if self.record is not None:
            raise ProtocolError(WSCloseCode.POLICY_VIOLATION, "a second start on the same connection")
        for name, expected in START_FIELDS.items():
            if name not in body:
                raise ProtocolError(WSCloseCode.POLICY_VIOLATION, f"start: missing field {name!r}")
            got = body[name]
            if type(got) is not type(expected) or got != expected:
                raise ProtocolError(WSCloseCode.POLICY_VIOLATION,
                                    f"start: {name} must be {expected!r}, got {got!r} (only 16 kHz mono s16le)")
        options = start_options(body)
        token = body.get("resume_token")
        if token is not None and (not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS):
            raise ProtocolError(WSCloseCode.POLICY_VIOLATION, "start: resume_token must be a non-empty string")
        if self.resources is None:
            raise ProtocolError(WSCloseCode.INTERNAL_ERROR, "models are not loaded")
        if token is not None:
            await self._resume(token)
            return
        token = new_resume_token()
        session = await self._compute(lambda: LiveSession(options, self.resources))
        record = self.registry.resumable.add(token, uuid.uuid4().hex, self.team, session, owner=self)
        self.record = record
        self.registry.sessions += 1
        async with record.lock:
            await self._compute(lambda: self.registry.resumable.persist(record))
        await self.send({"type": "ready", "session_id": record.session_id, "resume_token": token,
                         "resumed": False, "audio_received_s": 0.0})

    async def _resume(self, token: str) -> None:
        """Take over the session of ``token``: from memory, else from its persisted checkpoint."""
        resumable = self.registry.resumable
        record = resumable.find(token, self.team)
        if record is None:
            checkpoint = await self._compute(lambda: resumable.load(token, self.team))
            record = resumable.find(token, self.team)  # it may have been restored meanwhile
            if record is None and checkpoint is not None:
                restored = checkpoint
                session = await self._compute(lambda: LiveSession(restored.options, self.resources, restored))
                record = resumable.find(token, self.team) or resumable.adopt(token, session, owner=None)
        if record is None or record.session.closed:
            raise ProtocolError(SESSION_NOT_FOUND, "session not found or expired")
        previous, record.owner = record.owner, self
        record.expires_at = float("inf")
        self.record = record
        self.registry.sessions += 1
        if isinstance(previous, _Connection):
            await previous.displace()
        async with record.lock:  # any push of the previous connection has finished
            session = record.session
            await self.send({"type": "ready", "session_id": record.session_id, "resume_token": token,
                             "resumed": True, "audio_received_s": session.samples_received / SAMPLE_RATE})
            await self.send(repeat_message(session, record.session_id))

    async def displace(self) -> None:
        """Another connection resumed this session: tell this client, close 4409."""
        self.record = None
        self.registry.sessions -= 1
        detail = "session resumed elsewhere"
        try:
            await self.send({"type": "error", "detail": detail})
        except (ConnectionError, ClientNotReading):
            pass
        await self.ws.close(code=RESUMED_ELSEWHERE, message=detail.encode())

    def _owned(self) -> LiveRecord:
        record = self.record
        if record is None or record.owner is not self:
            raise _Displaced()
        return record

    async def _on_audio(self, payload: bytes) -> bool:
        """Push one frame; returns ``True`` once the session length limit is reached."""
        if self.record is None:
            raise ProtocolError(WSCloseCode.POLICY_VIOLATION, "binary audio before start")
        if not payload or len(payload) % 2:
            raise ProtocolError(WSCloseCode.UNSUPPORTED_DATA,
                                f"audio frame must be a non-empty even number of bytes, got {len(payload)}")
        record = self.record
        async with record.lock:
            self._owned()
            session = record.session
            payload = payload[: 2 * max(0, self.max_samples - session.samples_received)]
            texts = await self._compute(lambda: step_and_render(session, lambda: session.push(payload),
                                                                 "partial_result", record.session_id))
            for text in texts:
                await self.send(text)
            if texts:  # after the client has it: the write is never on the latency path
                await self._compute(lambda: self.registry.resumable.persist(record))
            return session.samples_received >= self.max_samples

    async def _finish(self, reason: str) -> None:
        """Flush the session, send ``final_result`` and close 1000 (no session yet: just close)."""
        if self.record is None:
            raise ProtocolError(WSCloseCode.POLICY_VIOLATION, "close before start")
        record = self.record
        async with record.lock:
            self._owned()
            session = record.session
            texts = await self._compute(lambda: step_and_render(session, session.close, "final_result",
                                                                 record.session_id))
            self.registry.resumable.finish(record)  # a finished session cannot be resumed
        # the engine always emits a final snapshot; should it not, the client still gets a terminal message
        body: str | dict[str, Any] = texts[-1] if texts else {
            "type": "final_result", "session_id": record.session_id,
            "data": {"segments": [], "speakers": [], "final_until": session.samples_received / SAMPLE_RATE},
            "stats": {"utterances": 0, "chunks": session.frames_received, "pipeline_ms": 0.0, "relabelled_s": 0.0}}
        if not reason:  # the client said close; the server-side ends (limit, idle) expect more audio
            await self._reject_late_messages()
        await self.send(body)
        await self.ws.close(code=WSCloseCode.OK, message=reason.encode())

    async def _reject_late_messages(self) -> None:
        """JSON or audio that the client sent after ``close`` and that is already here breaks the contract.

        Only frames already received are checked (a zero-length wait): later ones race with the close
        handshake and are discarded by it.
        """
        if self.ws.closed:
            return
        try:
            msg = await self.ws.receive(timeout=1e-9)
        except asyncio.TimeoutError:
            return
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            kind = "JSON" if msg.type == WSMsgType.TEXT else "audio"
            raise ProtocolError(WSCloseCode.POLICY_VIOLATION, f"{kind} after close")


async def _refuse(conn: _Connection, exc: ProtocolError) -> None:
    """The contract's ending for a breach: one ``error`` message, then the close code and reason.

    Raises :class:`ClientNotReading` if even the ``error`` message cannot be sent.
    """
    log.info("stream %s closed with %d: %s", conn.session_id or "-", exc.code, exc.detail)
    if conn.ws.closed:
        return
    try:
        await conn.send({"type": "error", "detail": exc.detail})
    except ConnectionError:
        pass
    await conn.ws.close(code=exc.code, message=close_reason(exc.detail))


def _over_capacity(registry: StreamRegistry, settings: ServerSettings) -> ProtocolError | None:
    if len(registry.sockets) < settings.max_live_sessions:
        return None
    return ProtocolError(WSCloseCode.TRY_AGAIN_LATER,
                         f"server busy: {settings.max_live_sessions} live sessions already open; try again later")


async def stream_handler(request: web.Request) -> web.StreamResponse:
    """``GET /diarize/stream``: upgrade to a WebSocket and run protocol v1.1 on it."""
    app = request.app
    settings = app[SETTINGS]
    registry = app[STREAM]
    # aiohttp rejects a frame of exactly max_msg_size bytes (before buffering it): +1 admits 1 MiB itself
    ws = _StreamSocket(heartbeat=settings.heartbeat_s, max_msg_size=MAX_FRAME_BYTES + 1)
    await ws.prepare(request)
    team = team_for_token(request.query.get("token"), registry.api_keys) if settings.auth_enabled else None
    conn = _Connection(ws, registry, app.get(RESOURCES), settings, team)
    busy = _over_capacity(registry, settings)
    registry.sockets.add(ws)
    ended = False  # the session cannot continue (a contract breach or an engine failure): not resumable
    try:
        try:
            if busy is not None:
                raise busy
            if settings.auth_enabled and team is None:
                raise ProtocolError(UNAUTHORIZED, "unauthorized")
            await conn.run()
        except ProtocolError as exc:
            ended = True
            await _refuse(conn, exc)
    except ClientNotReading as exc:
        # nothing can reach this client any more (not even a close frame): drop the connection now
        log.info("stream %s: client stopped reading (%s); session parked", conn.session_id or "-", exc)
        if request.transport is not None:
            request.transport.abort()
    except ConnectionError:
        log.info("stream %s: client went away; session parked", conn.session_id or "-")
    finally:
        registry.sockets.discard(ws)
        record, conn.record = conn.record, None  # drop the reference now, not when the request object goes
        if record is not None:
            registry.sessions -= 1
            if ended:
                registry.resumable.finish(record)
            else:  # a drop: the client may resume within the window (no-op once finished)
                registry.resumable.release(record, conn)
    return ws


async def index(request: web.Request) -> web.FileResponse:
    """``GET /``: the "try it" page."""
    return web.FileResponse(STATIC_DIR / "index.html")


def setup_stream(app: web.Application) -> None:
    """Register the live endpoint, the page and their lifecycle hooks on ``app``."""
    app.cleanup_ctx.append(_stream_ctx)
    app.on_shutdown.append(_close_sockets)
    app.router.add_get("/diarize/stream", stream_handler)
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC_DIR, name="static")
