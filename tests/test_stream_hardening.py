"""Live endpoint hardening through real sockets (issue 12): idle and start timeouts that pings cannot defeat,
deep JSON, close reasons cut by character, clients that stop reading, and the live-session cap."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any, Iterator

import aiohttp
import pytest

from diarflow.testing.evaluation import DevItem
from diarflow.provisioning import ModelPaths
from diarflow.servers.state import ServerSettings
from diarflow.servers.stream_client import START, file_frames
from diarflow.testing import ServerThread

pytestmark = pytest.mark.timeout(300)

GOOD_START = json.dumps(START)


@pytest.fixture(scope="module")
def server(model_paths: ModelPaths) -> Iterator[ServerThread]:
    """Heartbeat every 0.3 s, far shorter than the 2 s idle timeout: pongs must not count as activity."""
    settings = ServerSettings(port=0, model_dir=model_paths.campplus.parent, heartbeat_s=0.3, idle_timeout_s=2.0,
                              start_timeout_s=1.0, send_timeout_s=1.0, max_live_sessions=3)
    thread = ServerThread(settings).start()
    try:
        yield thread
    finally:
        thread.stop()


async def _sessions(server: ServerThread) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{server.http}/health") as response:
        return int((await response.json())["sessions"])


async def _wait_no_sessions(server: ServerThread, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while (count := await _sessions(server)) != 0:
        assert time.monotonic() < deadline, f"{count} sessions still open after {within_s} s"
        await asyncio.sleep(0.05)


async def _ending(ws: aiohttp.ClientWebSocketResponse, within_s: float = 30.0) -> tuple[list[dict[str, Any]], Any]:
    """Text messages until the close frame, and the close message itself."""
    texts = []
    while True:
        msg = await ws.receive(timeout=within_s)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return texts, msg
        texts.append(json.loads(msg.data))


async def test_idle_timeout_fires_for_a_client_that_answers_pings(server: ServerThread) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url, autoping=True) as ws:
        await ws.send_str(GOOD_START)
        assert json.loads((await ws.receive(timeout=30)).data)["type"] == "ready"
        await ws.send_bytes(b"\0\0" * 16000)
        texts, closing = await _ending(ws)  # pings keep arriving (and are answered) every 0.3 s meanwhile
    assert texts[-1]["type"] == "final_result"
    assert (closing.type, closing.data, closing.extra) == (aiohttp.WSMsgType.CLOSE, 1000, "idle timeout")
    await _wait_no_sessions(server)


async def test_connection_without_start_is_closed_after_the_start_timeout(server: ServerThread) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url, autoping=True) as ws:
        texts, closing = await _ending(ws)
    assert texts == [{"type": "error", "detail": "no start message within 1 s"}]
    assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 1008)


async def test_deeply_nested_json_gets_error_and_1008(server: ServerThread) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url) as ws:
        await ws.send_str("[" * 100_000)
        texts, closing = await _ending(ws)
    assert len(texts) == 1 and texts[0]["type"] == "error" and "JSON" in texts[0]["detail"]
    assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 1008)


@pytest.mark.parametrize("kind", ["x" + "é" * 100, "😀" * 40])
async def test_close_reason_is_cut_at_a_character_boundary(server: ServerThread, kind: str) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url) as ws:
        await ws.send_str(json.dumps({"type": kind}, ensure_ascii=False))
        texts, closing = await _ending(ws)
    assert texts[0]["type"] == "error" and kind in texts[0]["detail"]  # the message itself is whole
    assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 1008)  # not 1007: the reason is valid UTF-8
    assert len(closing.extra.encode()) <= 123 and texts[0]["detail"].startswith(closing.extra)


async def test_session_cap_answers_1013_and_frees_up(server: ServerThread) -> None:
    async with aiohttp.ClientSession() as http:
        held = [await http.ws_connect(server.url) for _ in range(3)]
        for ws in held:
            await ws.send_str(GOOD_START)
            assert json.loads((await ws.receive(timeout=30)).data)["type"] == "ready"
        async with http.ws_connect(server.url) as extra:
            texts, closing = await _ending(extra)
        assert texts[0]["type"] == "error" and "busy" in texts[0]["detail"]
        assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 1013)
        await held[0].close()
        await asyncio.sleep(0.2)
        async with http.ws_connect(server.url) as again:
            await again.send_str(GOOD_START)
            assert json.loads((await again.receive(timeout=30)).data)["type"] == "ready"
        for ws in held[1:]:
            await ws.close()
    await _wait_no_sessions(server)


def _upgrade(port: int) -> socket.socket:
    """A raw WebSocket client with a tiny receive buffer that will never read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /diarize/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    return sock


def _frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (mask of zeros: the payload goes as is)."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


@pytest.fixture(scope="module")
def quiet_server(model_paths: ModelPaths) -> Iterator[ServerThread]:
    """No heartbeat to speak of (10 min), so only the send bound can end a session whose client stopped reading."""
    settings = ServerSettings(port=0, model_dir=model_paths.campplus.parent, heartbeat_s=600.0, idle_timeout_s=600.0,
                              send_timeout_s=1.0)
    thread = ServerThread(settings).start()
    try:
        yield thread
    finally:
        thread.stop()


@pytest.mark.timeout(900)
async def test_client_that_never_reads_loses_its_session(quiet_server: ServerThread,
                                                         speech_clips: dict[str, DevItem]) -> None:
    """Defect 9: speech pushed as fast as possible, answers never read: once a message cannot be sent within
    ``send_timeout_s`` the session ends and its slot is free again."""
    server = quiet_server
    dev01 = speech_clips["two_speakers"]
    frames = file_frames(dev01.audio_path)
    sock = _upgrade(server.port)
    sock.settimeout(2.0)
    pending, sent, seen_open, ended = _frame(0x1, GOOD_START.encode()), 0, False, False
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and not ended:
            try:  # send() blocks once the server stops reading (back-pressure) and fails once it dropped us
                pending = pending[sock.send(pending):]
            except socket.timeout:
                pass
            except OSError:
                ended = seen_open
                break
            if not pending:
                pending = _frame(0x2, frames[sent % len(frames)])
                sent += 1
                if sent % 25 == 0:
                    open_now = await _sessions(server)
                    seen_open = seen_open or open_now == 1
                    ended = seen_open and open_now == 0
        assert seen_open and ended, f"session still open after {sent} frames (seen open: {seen_open})"
    finally:
        sock.close()
    await _wait_no_sessions(server)
