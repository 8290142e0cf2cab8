"""Protocol v1.1 resume through real sockets: network drops, a killed server, expiry, takeover, teams.

The reference is an uninterrupted run of the same audio through the streaming driver in this process;
a resumed session must end with the same final result (segments within 10 ms, same speaker ids).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest

from diarflow.live import CheckpointFile, LiveOptions, LiveSession, live_graph
from diarflow.provisioning import ModelPaths
from diarflow.operators.models import Resources
from diarflow.servers.live_sessions import CHECKPOINT_SUFFIX
from diarflow.servers.state import ServerSettings
from diarflow.servers.stream import snapshot_message
from diarflow.servers.stream_client import START, file_frames, stream_frames
from diarflow.testing import ServerProcess, ServerThread
from diarflow.testing.evaluation import DevItem
from diarflow.testing.proxy import DroppingProxy

pytestmark = pytest.mark.timeout(180)

WINDOW_S = 2.0


@pytest.fixture(scope="module")
def frames(speech_clips: dict[str, DevItem]) -> list[bytes]:
    """The first 30 s of ``two_speakers`` in 200 ms frames (both speakers, about ten utterances)."""
    return file_frames(speech_clips["two_speakers"].audio_path)[:150]


@pytest.fixture(scope="module")
def reference(frames: list[bytes], resources: Resources) -> list[dict[str, Any]]:
    session = LiveSession(LiveOptions(), resources)
    for frame in frames:
        session.push(frame)
    final = session.close()[-1]
    return list(snapshot_message("final_result", "", final, len(frames), 0.0)["data"]["segments"])


@pytest.fixture(scope="module")
def server(model_paths: ModelPaths) -> Iterator[ServerThread]:
    settings = ServerSettings(port=0, model_dir=model_paths.campplus.parent, resume_window_s=WINDOW_S,
                              auth_enabled=True, api_keys={"key-alpha": "teamA", "key-beta": "teamB"})
    server = ServerThread(settings).start()
    try:
        yield server
    finally:
        server.stop()


def same_result(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g["speaker_id"] == w["speaker_id"]
        assert abs(g["start_time"] - w["start_time"]) <= 0.01 and abs(g["end_time"] - w["end_time"]) <= 0.01


def cut_after(proxy: DroppingProxy, partials: int, then: Any = None) -> Any:
    """An ``on_message`` that cuts the network once, after the ``partials``-th partial result."""
    seen = [0]

    def on_message(body: dict[str, Any], latency_ms: float | None) -> None:
        if body["type"] == "partial_result":
            seen[0] += 1
            if seen[0] == partials:
                proxy.cut()
                if then is not None:
                    then()

    return on_message


async def test_dropped_connection_resumes_to_the_uninterrupted_result(
        server: ServerThread, frames: list[bytes], reference: list[dict[str, Any]]) -> None:
    async with DroppingProxy(server.port) as proxy:
        url = f"ws://127.0.0.1:{proxy.port}/diarize/stream"
        outcome = await stream_frames(url, frames, token="key-alpha", on_message=cut_after(proxy, 3))
    assert outcome.resumes == 1 and proxy.connections == 2
    assert outcome.final is not None and outcome.close_code == 1000
    same_result(outcome.final["data"]["segments"], reference)
    assert outcome.final["data"]["final_until"] == pytest.approx(len(b"".join(frames)) / 32000, abs=0.01)
    repeated = outcome.partials[3]  # the first message after the resume repeats the snapshot
    assert repeated["stats"]["relabelled_s"] == 0.0 and repeated["session_id"] == outcome.session_id


def test_killed_server_resumes_from_its_data_dir(
        tmp_path: Path, model_paths: ModelPaths, frames: list[bytes], reference: list[dict[str, Any]]) -> None:
    first = ServerProcess(tmp_path, model_dir=str(model_paths.campplus.parent)).start()
    second = ServerProcess(tmp_path, model_dir=str(model_paths.campplus.parent))
    second.port, second.config["port"] = first.port, first.port
    restarted: list[asyncio.Task[None]] = []

    def kill_and_restart() -> None:
        first.stop(signal.SIGKILL)
        restarted.append(asyncio.get_running_loop().create_task(asyncio.to_thread(second.start)))

    async def run() -> Any:
        async with DroppingProxy(first.port) as proxy:
            url = f"ws://127.0.0.1:{proxy.port}/diarize/stream"
            outcome = await stream_frames(url, frames, on_message=cut_after(proxy, 3, kill_and_restart))
            await asyncio.gather(*restarted)
            return outcome

    try:
        outcome = asyncio.run(run())
        assert outcome.resumes == 1 and outcome.final is not None and outcome.close_code == 1000
        same_result(outcome.final["data"]["segments"], reference)
        assert not list((tmp_path / "live").glob("*.ckpt")), "a finished session leaves no checkpoint"
    finally:
        first.stop(signal.SIGKILL)
        second.stop()


async def _ready(ws: aiohttp.ClientWebSocketResponse, **fields: Any) -> dict[str, Any]:
    await ws.send_json({**START, **fields})
    return dict(await ws.receive_json())


async def _refused(ws: aiohttp.ClientWebSocketResponse) -> tuple[str, int | None]:
    body = await ws.receive_json()
    await ws.receive()
    return str(body.get("detail")), ws.close_code


async def test_ready_carries_an_unguessable_token_and_unknown_or_expired_ones_get_4404(server: ServerThread) -> None:
    url = f"{server.url}?token=key-alpha"
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url) as ws:
            ready = await _ready(ws)
            assert ready["resumed"] is False and ready["audio_received_s"] == 0.0
            token = ready["resume_token"]
            assert isinstance(token, str) and len(token) >= 22  # >= 128 bits of token_urlsafe
            await ws.send_bytes(b"\0\0" * 8000)
        async with http.ws_connect(url) as ws:  # within the window: resumable, counts the audio held
            again = await _ready(ws, resume_token=token)
            assert again["resumed"] is True and again["session_id"] == ready["session_id"]
            assert again["audio_received_s"] == 0.5 and again["resume_token"] == token
            assert (await ws.receive_json())["type"] == "partial_result"
        await asyncio.sleep(WINDOW_S + 1.0)
        for stale in (token, "not-a-token"):
            async with http.ws_connect(url) as ws:
                await ws.send_json({**START, "resume_token": stale})
                detail, code = await _refused(ws)
                assert code == 4404 and detail == "session not found or expired"


async def test_second_connection_takes_over_and_the_first_gets_4409(server: ServerThread) -> None:
    url = f"{server.url}?token=key-alpha"
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url) as first:
            token = (await _ready(first))["resume_token"]
            async with http.ws_connect(url) as second:
                assert (await _ready(second, resume_token=token))["resumed"] is True
                detail, code = await _refused(first)
                assert code == 4409 and detail == "session resumed elsewhere"
                assert (await second.receive_json())["type"] == "partial_result"
                await second.send_json({"type": "close"})
                assert (await second.receive_json())["type"] == "final_result"
        async with http.ws_connect(url) as late:  # finished: no longer resumable
            await late.send_json({**START, "resume_token": token})
            assert (await _refused(late))[1] == 4404


async def test_another_teams_token_is_4404(server: ServerThread) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{server.url}?token=key-alpha") as ws:
            token = (await _ready(ws))["resume_token"]
            async with http.ws_connect(f"{server.url}?token=key-beta") as other:
                await other.send_json({**START, "resume_token": token})
                assert await _refused(other) == ("session not found or expired", 4404)
            await ws.send_json({"type": "close"})
            assert json.loads((await ws.receive()).data)["type"] == "final_result"


async def test_a_checkpoint_from_another_engine_graph_is_4404_and_removed(
        tmp_path: Path, model_paths: ModelPaths, frames: list[bytes], resources: Resources) -> None:
    """After an upgrade that changed the graph, a session persisted by the old server cannot continue:
    its client gets "not found" (and starts over), the file goes, and the server keeps serving."""
    token = "a-token-the-old-server-gave-out"
    old_graph = live_graph(merge_similarity=0.7)  # stands for the graph of another engine version
    session = LiveSession(LiveOptions(), resources, graph=old_graph)
    for frame in frames[:50]:
        session.push(frame)
    (tmp_path / "live").mkdir()
    path = tmp_path / "live" / f"{hashlib.sha256(token.encode()).hexdigest()}{CHECKPOINT_SUFFIX}"
    CheckpointFile(path).save(session, {"session_id": "0" * 32, "team": None})
    settings = ServerSettings(port=0, model_dir=model_paths.campplus.parent, data_dir=tmp_path)
    server = ServerThread(settings).start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(server.url) as ws:
                await ws.send_json({**START, "resume_token": token})
                assert await _refused(ws) == ("session not found or expired", 4404)
            assert not path.exists()
            async with http.ws_connect(server.url) as ws:  # a new session works as usual
                assert (await _ready(ws))["resumed"] is False
    finally:
        server.stop()
