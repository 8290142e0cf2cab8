"""The "try it" page in a real headless Chromium: a fake microphone plays a dev recording, speakers appear.

Chromium is driven over the DevTools protocol on a WebSocket (aiohttp), so no node is needed. The
screenshots land in ``artifacts/`` (gitignored) for a person to look at.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp
import numpy as np
import pytest
import soundfile as sf

from diarflow.audio import decode_chunks
from diarflow.testing.evaluation import DevItem, read_rttm
from diarflow.models import ModelPaths

from .test_stream_protocol import ServerThread, serve

pytestmark = pytest.mark.timeout(180)

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CLIP_S = 34.0  # dev01's first 34 s: both speakers take several turns (checked against the RTTM below)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,860",
                  "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                  "--autoplay-policy=no-user-gesture-required", "--remote-debugging-port=0"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("chromium is not installed; `make setup-test` installs it")


@pytest.fixture(scope="module")
def clip_wav(speech_clips: dict[str, DevItem], tmp_path_factory: pytest.TempPathFactory) -> Path:
    item = speech_clips["two_speakers"]
    speakers = {t.speaker for t in read_rttm(item.rttm_path)[item.uri] if t.end_s <= CLIP_S}
    assert len(speakers) == 2, f"the clip must hold both speakers, RTTM has {speakers}"
    samples = np.concatenate(list(decode_chunks(item.audio_path, 16000)))[: int(CLIP_S * 16000)]
    path = tmp_path_factory.mktemp("page") / "dev01_clip.wav"
    sf.write(path, samples, 16000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def page_server(model_paths: ModelPaths) -> Iterator[ServerThread]:
    yield from serve(model_paths)


class DevTools:
    """A minimal Chrome DevTools Protocol client: commands by id, events ignored."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        while True:
            msg = await self.ws.receive(timeout=30)
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            body = json.loads(msg.data)
            if body.get("id") == call_id:
                assert "error" not in body, body
                return dict(body["result"])

    async def js(self, expression: str, gesture: bool = False) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True, userGesture=gesture)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        shot = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))


async def _devtools_url(profile: Path, proc: subprocess.Popen[bytes]) -> str:
    """Chromium writes its DevTools port to ``DevToolsActivePort``; find the page target's socket there."""
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while not marker.is_file() or not marker.read_text().strip():
        assert proc.poll() is None, "chromium exited at startup"
        assert time.monotonic() < deadline, "chromium did not open its DevTools port"
        await asyncio.sleep(0.1)
    port = int(marker.read_text().split()[0])
    async with aiohttp.ClientSession() as http:
        for _ in range(50):
            async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                pages = [t for t in await response.json() if t.get("type") == "page"]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
            await asyncio.sleep(0.1)
    raise AssertionError("chromium has no page target")


@asynccontextmanager
async def _browser(clip: Path, profile: Path) -> AsyncIterator[DevTools]:
    proc = subprocess.Popen([_chromium(), *CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={clip}",
                             f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = await _devtools_url(profile, proc)
        async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
            yield DevTools(ws)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


PAGE_STATE = """(() => ({
  speakers: [...document.querySelectorAll('#timeline .seg')].map((e) => Number(e.dataset.speaker)),
  state: document.getElementById('state').dataset.state,
  label: document.getElementById('state').textContent,
  error: document.getElementById('error').textContent,
  timer: document.getElementById('timer').textContent,
  summary: document.getElementById('summary').textContent,
}))()"""


async def _wait_for(tools: DevTools, ready: Any, within_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        state: dict[str, Any] = await tools.js(PAGE_STATE)
        assert not state["error"], f"the page shows an error: {state['error']}"
        if ready(state):
            return state
        assert time.monotonic() < deadline, f"page never got there: {state}"
        await asyncio.sleep(0.5)


async def test_page_shows_two_speakers_from_the_microphone(page_server: ServerThread, clip_wav: Path,
                                                           tmp_path: Path) -> None:
    async with _browser(clip_wav, tmp_path / "profile") as tools:
        await tools.call("Page.navigate", url=page_server.http + "/")
        deadline = time.monotonic() + 20
        while await tools.js("document.readyState") != "complete" or not await tools.js("!!window.fetch"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await tools.js("document.getElementById('mic').click()", gesture=True)
        # the fake microphone loops the clip in real time; on a loaded machine snapshots may lag behind it
        live = await _wait_for(tools, lambda s: len(set(s["speakers"])) >= 2, within_s=2 * CLIP_S + 30)
        try:  # a few more turns make a more telling screenshot; not required
            live = await _wait_for(tools, lambda s: len(s["speakers"]) >= 8, within_s=10)
        except AssertionError:
            pass
        assert live["state"] == "live" and live["timer"] != "00:00"
        assert sorted(set(live["speakers"]))[:2] == [0, 1]
        await tools.screenshot(ARTIFACTS / "stream_page_live.png")
        await tools.js("document.getElementById('mic').click()", gesture=True)
        final = await _wait_for(tools, lambda s: s["state"] == "done", within_s=20)
        assert "Final result" in final["summary"] and len(set(final["speakers"])) >= 2
        await tools.screenshot(ARTIFACTS / "stream_page_final.png")
    async with aiohttp.ClientSession() as http, http.get(page_server.http + "/health") as response:
        assert (await response.json())["sessions"] == 0
