"""``WS /diarize/stream`` through real sockets: the happy path, every bad input, auth, limits, disconnects."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from dataclasses import replace
from typing import Any, Iterator

import aiohttp
import pytest

from diarflow.dataflow import StreamingSession
from diarflow.live import LiveSession
from diarflow.testing.evaluation import DevItem
from diarflow.provisioning import ModelPaths
from diarflow.operators.messages import PcmBytes, Snapshot
from diarflow.operators.models import Resources
from diarflow.operators.pipeline import PipelineConfig, build_graph
from diarflow.servers import stream as stream_module
from diarflow.servers.state import ServerSettings
from diarflow.servers.stream import snapshot_message
from diarflow.servers.stream_client import START, StreamOutcome, file_frames, stream_frames
from diarflow.testing import ServerThread

pytestmark = pytest.mark.timeout(120)

SILENCE_1S = b"\0\0" * 16000


def serve(model_paths: ModelPaths, **fields: Any) -> Iterator[ServerThread]:
    server = ServerThread(ServerSettings(port=0, model_dir=model_paths.campplus.parent, **fields)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(model_paths: ModelPaths) -> Iterator[ServerThread]:
    yield from serve(model_paths, max_live_sessions=128)  # room for the 100-connection test


@pytest.fixture(scope="module")
def dev01_frames(speech_clips: dict[str, DevItem]) -> list[bytes]:
    """200 ms frames of ``two_speakers`` (dev01's first minute: 297 frames)."""
    return file_frames(speech_clips["two_speakers"].audio_path)


async def session_count(server: ServerThread) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{server.http}/health") as response:
        return int((await response.json())["sessions"])


async def wait_no_sessions(server: ServerThread, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while (count := await session_count(server)) != 0:
        assert time.monotonic() < deadline, f"{count} sessions still open after {within_s} s"
        await asyncio.sleep(0.05)


def check_snapshot(body: dict[str, Any], session_id: str, kind: str, frames_sent: int) -> None:
    """The contract's shape rules for one ``partial_result`` / ``final_result``."""
    assert body["type"] == kind and body["session_id"] == session_id
    assert set(body) == {"type", "session_id", "data", "stats"}
    segments = body["data"]["segments"]
    starts = [s["start_time"] for s in segments]
    assert starts == sorted(starts)
    first_seen: list[int] = []
    assert isinstance(body["data"]["final_until"], float) and body["stats"]["relabelled_s"] >= 0
    assert [s["speaker_id"] for s in body["data"]["speakers"]] == sorted({s["speaker_id"] for s in segments})
    for seg in segments:
        assert {"start_time", "end_time", "speaker_id", "text", "confidence"} <= set(seg) <= {
            "start_time", "end_time", "speaker_id", "text", "confidence", "label"} and seg["text"] == ""
        assert 0 <= seg["confidence"] <= 100
        assert isinstance(seg["speaker_id"], int) and seg["speaker_id"] >= 0
        for t in (seg["start_time"], seg["end_time"]):
            assert abs(t * 100 - round(t * 100)) < 1e-6, f"{t} is not rounded to 10 ms"
        assert 0 <= seg["start_time"] <= seg["end_time"] <= frames_sent * 0.2 + 1e-6
        if seg["speaker_id"] not in first_seen:
            first_seen.append(seg["speaker_id"])
    assert first_seen == list(range(len(first_seen))), "speakers not numbered by first appearance"
    stats = body["stats"]
    assert set(stats) == {"utterances", "chunks", "pipeline_ms", "relabelled_s"}
    assert 1 <= stats["chunks"] <= frames_sent and stats["pipeline_ms"] >= 0


async def short_session(url: str, seconds: int = 2, **kwargs: Any) -> StreamOutcome:
    """A tiny valid session: proves the server still serves new connections."""
    return await stream_frames(url, [SILENCE_1S[:6400]] * (5 * seconds), **kwargs)


def in_process_final(frames: list[bytes], resources: Resources, **counts: int) -> list[dict[str, Any]]:
    cfg = PipelineConfig()
    graph = build_graph(replace(cfg, clustering=replace(cfg.clustering, **counts)))
    session = StreamingSession(graph, resources)
    for frame in frames:
        session.push(PcmBytes(frame))
    final = [m for m in session.close() if isinstance(m, Snapshot)][-1]
    return list(snapshot_message("final_result", "", final, len(frames), 0.0)["data"]["segments"])


async def test_happy_path_dev_recording(server: ServerThread, dev01_frames: list[bytes],
                                        resources: Resources) -> None:
    frames = dev01_frames[:300]  # the first 60 s: both speakers, many utterances
    outcome = await stream_frames(server.url, frames)
    assert re.fullmatch(r"[0-9a-f]{32}", outcome.session_id)
    assert outcome.error is None and outcome.close_code == 1000
    assert len(outcome.partials) >= 5
    utterances = [p["stats"]["utterances"] for p in outcome.partials]
    chunks = [p["stats"]["chunks"] for p in outcome.partials]
    assert utterances == sorted(utterances) and chunks == sorted(chunks)
    for body in outcome.partials:
        check_snapshot(body, outcome.session_id, "partial_result", len(frames))
    assert outcome.final is not None
    check_snapshot(outcome.final, outcome.session_id, "final_result", len(frames))
    assert outcome.final["stats"]["chunks"] == len(frames)
    assert len({s["speaker_id"] for s in outcome.final["data"]["segments"]}) == 2
    # the endpoint is a transport: its final result is exactly the in-process streaming driver's
    assert outcome.final["data"]["segments"] == in_process_final(frames, resources)
    await wait_no_sessions(server)


GOOD_START = json.dumps(START)


def _start_with(**changes: Any) -> str:
    body = {**START, **changes}
    return json.dumps({k: v for k, v in body.items() if v is not None})


# (name, messages to send: str = text, bytes = binary, expected close code, word in the error detail)
BAD_INPUTS: list[tuple[str, list[str | bytes], int, str]] = [
    ("odd binary", [GOOD_START, b"\0" * 6401], 1003, "even"),
    ("empty binary", [GOOD_START, b""], 1003, "even"),
    ("text not JSON", ["hello"], 1008, "JSON"),
    ("JSON not an object", ["[1, 2]"], 1008, "type"),
    ("unknown type", ['{"type": "pause"}'], 1008, "unknown"),
    ("start without format", [_start_with(format=None)], 1008, "format"),
    ("start at 8 kHz", [_start_with(sample_rate=8000)], 1008, "sample_rate"),
    ("start in stereo", [_start_with(channels=2)], 1008, "channels"),
    ("start with string rate", [_start_with(sample_rate="16000")], 1008, "sample_rate"),
    ("start with f32 format", [_start_with(format="pcm_f32le")], 1008, "format"),
    ("num with max speakers", [_start_with(num_speakers=2, max_speakers=3)], 1008, "num_speakers"),
    ("min above max speakers", [_start_with(min_speakers=4, max_speakers=2)], 1008, "speakers"),
    ("zero speakers", [_start_with(num_speakers=0)], 1008, "num_speakers"),
    ("second start", [GOOD_START, GOOD_START], 1008, "second start"),
    ("binary before start", [b"\0" * 6400], 1008, "before start"),
    ("close before start", ['{"type": "close"}'], 1008, "before start"),
    ("JSON after close", [GOOD_START, b"\1\0" * 32000, '{"type": "close"}', GOOD_START], 1008, "after close"),
    ("frame over 1 MiB", [GOOD_START, b"\0" * ((1 << 20) + 2)], 1009, "larger"),
]


@pytest.mark.parametrize(("name", "messages", "code", "word"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
async def test_bad_input_closes_with_its_code(server: ServerThread, name: str, messages: list[str | bytes],
                                              code: int, word: str) -> None:
    received: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url) as ws:
        for message in messages:
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_str(message)
        async for msg in ws:
            assert msg.type == aiohttp.WSMsgType.TEXT
            received.append(json.loads(msg.data))
        assert ws.close_code == code
    kinds = [r["type"] for r in received]
    assert kinds[-1] == "error" and kinds.count("error") == 1, kinds
    assert "final_result" not in kinds
    assert word.lower() in received[-1]["detail"].lower()
    await wait_no_sessions(server)
    again = await short_session(server.url)
    assert again.final is not None and again.close_code == 1000


async def test_inference_failure_is_1011(server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    class FailingSession(LiveSession):
        def push(self, payload: bytes) -> list[Any]:
            raise RuntimeError("model crashed")

    monkeypatch.setattr(stream_module, "LiveSession", FailingSession)
    outcome = await short_session(server.url)
    assert outcome.close_code == 1011 and outcome.error is not None
    assert "inference failed" in outcome.error["detail"]
    monkeypatch.undo()
    await wait_no_sessions(server)
    assert (await short_session(server.url)).close_code == 1000


async def test_num_speakers_caps_the_snapshot_and_sessions_are_isolated(
        server: ServerThread, dev01_frames: list[bytes], resources: Resources) -> None:
    pieces = [dev01_frames[:150], dev01_frames[150:300]]
    capped, second = await asyncio.gather(stream_frames(server.url, pieces[0], start={"num_speakers": 1}),
                                          stream_frames(server.url, pieces[1]))
    assert capped.final is not None and second.final is not None
    for body in (*capped.partials, capped.final):
        assert {s["speaker_id"] for s in body["data"]["segments"]} <= {0}
    # concurrent sessions never see each other: each equals its own run in isolation
    assert capped.final["data"]["segments"] == in_process_final(pieces[0], resources, num_speakers=1)
    assert second.final["data"]["segments"] == in_process_final(pieces[1], resources)


async def test_client_vanishing_mid_stream_frees_the_session(server: ServerThread,
                                                             dev01_frames: list[bytes]) -> None:
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(server.url)
    await ws.send_str(GOOD_START)
    assert json.loads((await ws.receive()).data)["type"] == "ready"
    for frame in dev01_frames[:50]:
        await ws.send_bytes(frame)
    assert await session_count(server) == 1
    transport = ws._response.connection.transport  # type: ignore[union-attr]
    assert transport is not None
    transport.abort()  # no close frame: the network went away
    await http.close()
    await wait_no_sessions(server)
    assert (await short_session(server.url)).close_code == 1000


async def test_hundred_connections_dropped_at_once_leak_nothing(server: ServerThread) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        sockets = await asyncio.gather(*(http.ws_connect(server.url) for _ in range(100)))
        await asyncio.gather(*(ws.send_str(GOOD_START) for ws in sockets))
        readies = await asyncio.gather(*(ws.receive(timeout=30) for ws in sockets))
        assert all(json.loads(m.data)["type"] == "ready" for m in readies)
        await asyncio.gather(*(ws.send_bytes(SILENCE_1S) for ws in sockets[::2]))
        assert await session_count(server) == 100
        for ws in sockets:
            ws._response.connection.transport.abort()  # type: ignore[union-attr]
    await wait_no_sessions(server)
    assert (await short_session(server.url)).close_code == 1000


@pytest.fixture(scope="module")
def auth_server(model_paths: ModelPaths) -> Iterator[ServerThread]:
    yield from serve(model_paths, auth_enabled=True, api_keys={"key-alpha": "teamA", "key-beta": "teamB"})


@pytest.mark.parametrize("token", [None, "", "key-alph", "key-alpha2", "KEY-ALPHA"])
async def test_auth_missing_or_wrong_token_is_4401(auth_server: ServerThread, token: str | None) -> None:
    outcome = await short_session(auth_server.url, token=token)
    assert outcome.close_code == 4401
    assert outcome.error == {"type": "error", "detail": "unauthorized"}
    assert outcome.session_id == ""


async def test_auth_right_token_streams(auth_server: ServerThread) -> None:
    for token in ("key-alpha", "key-beta"):
        outcome = await short_session(auth_server.url, token=token)
        assert outcome.close_code == 1000 and outcome.final is not None


@pytest.fixture(scope="module")
def limited_server(model_paths: ModelPaths) -> Iterator[ServerThread]:
    yield from serve(model_paths, idle_timeout_s=0.5, max_session_s=3.0)


async def test_session_length_limit_finalises(limited_server: ServerThread, dev01_frames: list[bytes]) -> None:
    outcome = await stream_frames(limited_server.url, dev01_frames[:40])  # 8 s offered, 3 s allowed
    assert outcome.final is not None and outcome.error is None
    assert outcome.close_code == 1000 and outcome.close_reason == "session length limit"
    assert all(s["end_time"] <= 3.0 for s in outcome.final["data"]["segments"])


async def test_idle_timeout_finalises(limited_server: ServerThread, dev01_frames: list[bytes]) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(limited_server.url) as ws:
        await ws.send_str(GOOD_START)
        assert json.loads((await ws.receive()).data)["type"] == "ready"
        for frame in dev01_frames[:5]:
            await ws.send_bytes(frame)
        final = json.loads((await ws.receive(timeout=10)).data)
        assert final["type"] == "final_result" and final["stats"]["chunks"] == 5
        closing = await ws.receive(timeout=10)
        assert closing.type == aiohttp.WSMsgType.CLOSE
        assert (closing.data, closing.extra) == (1000, "idle timeout")
    await wait_no_sessions(limited_server)


async def test_shutdown_closes_open_streams_with_1001(model_paths: ModelPaths) -> None:
    server = ServerThread(ServerSettings(port=0, model_dir=model_paths.campplus.parent)).start()
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(server.url) as ws:
            await ws.send_str(GOOD_START)
            assert json.loads((await ws.receive()).data)["type"] == "ready"
            await ws.send_bytes(SILENCE_1S)
            stopping = asyncio.get_running_loop().run_in_executor(None, server.stop)
            closing = await ws.receive(timeout=20)
            assert closing.type == aiohttp.WSMsgType.CLOSE
            assert (closing.data, closing.extra) == (1001, "server shutdown")
            await stopping
    finally:
        server.stop()


def test_static_files_are_packaged() -> None:
    static = Path(stream_module.__file__).parent / "static"
    assert {p.name for p in static.iterdir()} >= {"index.html", "app.js", "style.css", "pcm-worklet.js"}
    for path in static.iterdir():  # self-contained: no CDN, no external fonts or scripts
        assert not re.search(r"(src|href)=\"(https?:)?//|@import|url\(", path.read_text()), path.name


async def test_page_is_served(server: ServerThread) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(server.http + "/") as response:
            assert response.status == 200 and "/static/app.js" in await response.text()
        for name in ("app.js", "pcm-worklet.js", "style.css"):
            async with http.get(f"{server.http}/static/{name}") as response:
                assert response.status == 200


@pytest.fixture(scope="module")
def clip_path(dev01_frames: list[bytes], tmp_path_factory: pytest.TempPathFactory) -> Path:
    import numpy as np
    import soundfile as sf

    path = tmp_path_factory.mktemp("cli") / "clip.wav"
    samples = np.frombuffer(b"".join(dev01_frames[56:106]), "<i2")  # 10 s in which utterances close
    sf.write(path, samples, 16000, subtype="PCM_16")
    return path


def test_stream_command_prints_snapshots_and_latency(server: ServerThread, clip_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from diarflow.cli import main

    assert main(["stream", str(clip_path), "--url", server.url, "--realtime"]) == 0
    out = capsys.readouterr().out
    assert "ready: session" in out and "partial_result" in out and "final_result" in out
    assert re.search(r"latency over \d+ utterances: P50 [\d.]+ ms, P99 [\d.]+ ms", out)
    assert "closed with 1000" in out


def test_stream_command_asks_for_settled_labels(server: ServerThread, clip_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from diarflow.cli import main

    assert main(["stream", str(clip_path), "--url", server.url, "--settle-s", "1"]) == 0
    partials = [float(m) for m in re.findall(r"partial_result .*final until ([\d.]+) s", capsys.readouterr().out)]
    assert partials and max(partials) > 0  # without settle_s nothing settles within a 10 s clip
    assert main(["stream", str(clip_path), "--url", server.url, "--settle-s", "500"]) == 1
    out = capsys.readouterr().out
    assert "settle_s must be at least 0 and below 120 s" in out and "retrying" not in out


def test_stream_command_retries_internal_errors(server: ServerThread, clip_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from diarflow.cli import main
    from diarflow.servers import stream_client

    failures = [True]  # the first session fails, the retry succeeds

    class FlakySession(LiveSession):
        def push(self, payload: bytes) -> list[Any]:
            if failures and failures.pop():
                raise RuntimeError("transient")
            return super().push(payload)

    monkeypatch.setattr(stream_module, "LiveSession", FlakySession)
    monkeypatch.setattr(stream_client, "RETRY_BASE_S", 0.01)
    assert main(["stream", str(clip_path), "--url", server.url]) == 0
    out = capsys.readouterr().out
    assert "inference failed" in out and "retrying" in out and "closed with 1000" in out


def test_stream_command_does_not_retry_unauthorized(auth_server: ServerThread, clip_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from diarflow.cli import main

    assert main(["stream", str(clip_path), "--url", auth_server.url, "--token", "nope"]) == 1
    out = capsys.readouterr().out
    assert "unauthorized" in out and "retrying" not in out and "closed with 4401" in out
    assert "nope" not in out


async def test_frame_of_exactly_1_mib_is_accepted(server: ServerThread) -> None:
    outcome = await stream_frames(server.url, [b"\0" * (1 << 20), b"\0\0"])
    assert outcome.error is None and outcome.close_code == 1000
    assert outcome.final is not None and outcome.final["stats"]["chunks"] == 2
