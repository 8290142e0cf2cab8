"""The try-it page in a real headless Chromium, both modes: a file uploaded through the job API, and a fake
microphone playing a two-speaker recording into the live endpoint; speakers appear, downloads work. Live,
also: a connection reset mid-session (through a proxy) that the page resumes, and a voice enrolled through
the page that live turns then carry the name of.

Chromium is driven over the DevTools protocol on a WebSocket (aiohttp), so no node is needed. The
screenshots land in ``artifacts/`` (gitignored) for a person to look at. Without Chromium (``make
setup-test`` installs it when it can: that needs root) the tests are skipped with the reason, except
under ``CI=true``, where they fail instead.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
import os
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
from diarflow.testing.evaluation import DevItem, Turn, read_rttm
from diarflow.provisioning import ModelPaths
from diarflow.testing import ServerThread
from diarflow.testing.proxy import DroppingProxy

from diarflow.servers.stream_client import file_frames, stream_frames

from .test_stream_protocol import serve

pytestmark = pytest.mark.timeout(180)

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CLIP_S = 34.0  # the first 34 s of two_speakers: both speakers take several turns (checked against the RTTM below)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,860",
                  "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                  "--autoplay-policy=no-user-gesture-required", "--remote-debugging-port=0"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed; CI must run the page tests (`make setup-test` installs it as root)")
    pytest.skip("chromium is not installed and `make setup-test` could not install it (needs root)")


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
def page_server(model_paths: ModelPaths, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    _chromium()  # skip (or fail in CI) before starting anything
    yield from serve(model_paths, data_dir=tmp_path_factory.mktemp("page-jobs"))


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
  lanes: [...document.querySelectorAll('#timeline .lane-name')].map((e) => e.textContent),
  rows: [...document.querySelectorAll('#segments tr')].map((tr) => tr.cells[0].textContent),
  turns: [...document.querySelectorAll('#segments tr')].map((tr) => [...tr.cells].slice(0, 3).map((c) => c.textContent)),
  state: document.getElementById('state').dataset.state,
  label: document.getElementById('state').textContent,
  error: document.getElementById('error').textContent + document.getElementById('file-error').textContent,
  timer: document.getElementById('timer').textContent,
  summary: document.getElementById('summary').textContent,
  file: document.getElementById('file-status').dataset.state,
  confidence_frames: Number(document.getElementById('confidence').dataset.frames || 0),
  downloads_shown: !document.getElementById('downloads').hidden,
  session: document.getElementById('download-json').download,
  enrol: document.getElementById('enrol-status').textContent,
  known: [...document.querySelectorAll('#known li')].map((e) => e.firstChild.textContent),
}))()"""

DOWNLOADS = """(async () => {
  const get = async (id) => {
    const a = document.getElementById(id);
    return {name: a.download, text: await (await fetch(a.href)).text()};
  };
  return {rttm: await get('download-rttm'), json: await get('download-json')};
})()"""


async def _wait_for(tools: DevTools, ready: Any, within_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        state: dict[str, Any] = await tools.js(PAGE_STATE)
        assert not state["error"], f"the page shows an error: {state['error']}"
        if ready(state):
            return state
        assert time.monotonic() < deadline, f"page never got there: {state}"
        await asyncio.sleep(0.5)


async def _open_page(tools: DevTools, url: str) -> None:
    await tools.call("Page.navigate", url=url)
    deadline = time.monotonic() + 20
    while await tools.js("document.readyState") != "complete" or not await tools.js("!!window.fetch"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


def _consistent_names(state: dict[str, Any]) -> None:
    """One naming convention everywhere on the page: "Speaker 1" is speaker id 0."""
    expected = [f"Speaker {k + 1}" for k in sorted(set(state["speakers"]))]
    assert state["lanes"] == expected
    assert set(state["rows"]) <= set(expected) and state["rows"]


async def _speakers_without_the_browser(server: ServerThread, clip: Path) -> int:
    """The same clip sent straight to the live endpoint: tells a capture problem from a server problem."""
    outcome = await stream_frames(server.url, file_frames(clip))
    return len({seg["speaker_id"] for seg in (outcome.final or {"data": {"segments": []}})["data"]["segments"]})


# Through Chromium's fake microphone (16 kHz file -> 48 kHz device -> 16 kHz AudioContext) the resampling
# acts as a channel. The live path's former fixed clustering thresholds merged this clip's two voices in
# about half the runs; its adaptive clustering found both in 5 runs out of 5 (Dec 2026), so the page's
# final result must have two speakers again. The same clip streamed straight to the endpoint is checked
# too: if only the browser run fails, suspect the capture, not the server.
async def test_page_streams_the_microphone_and_renders_live_turns(page_server: ServerThread, clip_wav: Path,
                                                                  tmp_path: Path) -> None:
    async with _browser(clip_wav, tmp_path / "profile") as tools:
        await _open_page(tools, page_server.http + "/")
        await tools.js("document.getElementById('tab-live').click()")
        await tools.js("document.getElementById('mic').click()", gesture=True)
        # the fake microphone plays the clip in real time; on a loaded machine snapshots may lag behind it
        live = await _wait_for(tools, lambda s: len(s["speakers"]) >= 4, within_s=2 * CLIP_S + 30)
        assert live["state"] == "live" and live["timer"] != "00:00"
        assert sorted(set(live["speakers"]))[0] == 0  # speakers numbered from the first one heard
        _consistent_names(live)
        assert live["confidence_frames"] == 0  # the live endpoint sends no confidence: no strip
        await tools.screenshot(ARTIFACTS / "stream_page_live.png")
        await tools.js("document.getElementById('mic').click()", gesture=True)
        final = await _wait_for(tools, lambda s: s["state"] == "done", within_s=20)
        assert "Final result" in final["summary"] and len(final["speakers"]) >= 4
        assert len(set(final["speakers"])) == 2, final  # both voices, told apart through the browser
        _consistent_names(final)
        assert final["downloads_shown"]
        await tools.screenshot(ARTIFACTS / "stream_page_final.png")
    async with aiohttp.ClientSession() as http, http.get(page_server.http + "/health") as response:
        assert (await response.json())["sessions"] == 0
    assert await _speakers_without_the_browser(page_server, clip_wav) == 2  # the endpoint separates them


async def test_file_mode_uploads_diarizes_and_offers_downloads(page_server: ServerThread, clip_wav: Path,
                                                               speech_clips: dict[str, DevItem],
                                                               tmp_path: Path) -> None:
    item = speech_clips["three_speakers"]
    async with _browser(clip_wav, tmp_path / "profile") as tools:
        await _open_page(tools, page_server.http + "/")
        assert await tools.js("document.getElementById('file-panel').hidden") is False  # the default mode
        await tools.screenshot(ARTIFACTS / "page_file_empty.png")
        document = await tools.call("DOM.getDocument")
        found = await tools.call("DOM.querySelector", nodeId=document["root"]["nodeId"], selector="#file")
        await tools.call("DOM.setFileInputFiles", files=[str(item.audio_path)], nodeId=found["nodeId"])
        done = await _wait_for(tools, lambda s: s["file"] == "done", within_s=120)
        assert len(set(done["speakers"])) >= 2, done
        assert "Final result" in done["summary"] and done["downloads_shown"]
        _consistent_names(done)
        assert len(done["rows"]) == len(done["speakers"])  # one table row per turn on the timeline
        assert done["confidence_frames"] == math.ceil(item.duration_s / 0.02 - 1e-6)  # 20 ms scores, whole file
        await tools.screenshot(ARTIFACTS / "page_file_result.png")
        files = await tools.js(DOWNLOADS)
    assert files["rttm"]["name"] == "three_speakers.rttm" and files["json"]["name"] == "three_speakers.json"
    rttm = files["rttm"]["text"].splitlines()
    assert len(rttm) == len(done["speakers"]) and all(line.startswith("SPEAKER three_speakers 1 ") for line in rttm)
    output = json.loads(files["json"]["text"])
    assert len(output["diarization"]) == len(rttm) and output["confidence"]["resolution"] == 0.02
    assert {row["speaker"] for row in output["diarization"]} == {f"SPEAKER_{k:02d}" for k in set(done["speakers"])}


# ---------------------------------------------------------------- turns on the page against the reference

STATE_LOG = """(() => {
  const node = document.getElementById('state');
  window.stateLog = [];
  const note = () => { if (window.stateLog.at(-1) !== node.dataset.state) window.stateLog.push(node.dataset.state); };
  new MutationObserver(note).observe(node, {attributes: true, attributeFilter: ['data-state']});
  note();
})()"""  # every state the page shows, however briefly: window.stateLog


def _seconds(clock: str) -> float:
    """The page's clocks in seconds: "0:03.4" (turns) and "00:03" (timer)."""
    minutes, seconds = clock.split(":")
    return 60 * int(minutes) + float(seconds)


def _turns(state: dict[str, Any]) -> list[Turn]:
    """The page's table of turns (0.1 s resolution), in page time (0 = the first frame the page sent), by name."""
    return [Turn(_seconds(start), _seconds(end), name) for name, start, end in state["turns"]]


def _mask(turns: list[Turn], length_s: float, shift_s: float = 0.0) -> np.ndarray:
    """Speech of these turns at 10 ms frames over ``[0, length_s)``, the turns moved by ``shift_s``."""
    mask = np.zeros(int(length_s * 100), bool)
    for t in turns:
        mask[max(0, round((t.start_s + shift_s) * 100)):max(0, round((t.end_s + shift_s) * 100))] = True
    return mask


def _capture_offset(turns: list[Turn], reference: list[Turn], length_s: float) -> float:
    """Seconds between the file's start and the page's first frame (the fake microphone plays from when the
    page opens it, a little before the session is ready): the shift within -0.5-2 s that best lines up the
    page's speech with the reference's."""
    truth = _mask(reference, length_s)
    shifts = np.round(np.arange(-0.5, 2.0, 0.05), 2)
    return float(max(shifts, key=lambda s: (int((_mask(turns, length_s, s) & truth).sum()), -abs(s))))


def _who(turns: list[Turn], reference: list[Turn], length_s: float, shift_s: float) -> dict[str, dict[str, float]]:
    """Page name -> seconds of each reference speaker under that name's turns."""
    return {name: {speaker: float((_mask([t for t in turns if t.speaker == name], length_s, shift_s)
                                   & _mask([r for r in reference if r.speaker == speaker], length_s)).sum() / 100)
                   for speaker in {r.speaker for r in reference}}
            for name in {t.speaker for t in turns}}


def _still_shown(before: list[Turn], after: list[Turn], length_s: float) -> float:
    """Share of the speech shown in ``before`` that ``after`` still shows under the same name."""
    names = {t.speaker for t in before}
    shown = [_mask([t for t in before if t.speaker == n], length_s) for n in names]
    kept = [m & _mask([t for t in after if t.speaker == n], length_s) for m, n in zip(shown, names)]
    return float(sum(int(k.sum()) for k in kept) / max(1, sum(int(m.sum()) for m in shown)))


# ---------------------------------------------------------------- a dropped connection, resumed by the page

CUT_S = 12.0  # the network goes down this far into the clip (both speakers are on the timeline by then)
OUTAGE_S = 2.0  # and stays down this long: the page's first attempts to reconnect fail
PAD_S = 4.0


@pytest.fixture(scope="module")
def padded_clip_wav(clip_wav: Path) -> Path:
    """The clip and 4 s of silence: the fake microphone loops its file, and stopping anywhere in the silence
    sends the same audio."""
    samples, rate = sf.read(clip_wav, dtype="int16")
    path = clip_wav.with_name("dev01_clip_padded.wav")
    sf.write(path, np.concatenate([samples, np.zeros(int(PAD_S * rate), np.int16)]), rate, subtype="PCM_16")
    return path


async def test_page_resumes_a_dropped_connection_and_keeps_its_timeline(
        page_server: ServerThread, padded_clip_wav: Path, speech_clips: dict[str, DevItem], tmp_path: Path) -> None:
    """The page reaches the server through a proxy that resets every connection mid-session (no close frame)
    and refuses new ones for 2 s: the page shows it is reconnecting, keeps its timeline, resumes the same
    session from where the server's audio stops, and the final result covers the whole clip."""
    item = speech_clips["two_speakers"]
    reference = [t for t in read_rttm(item.rttm_path)[item.uri] if t.end_s <= CLIP_S]
    length_s = CLIP_S + PAD_S
    async with DroppingProxy(page_server.port) as proxy, _browser(padded_clip_wav, tmp_path / "profile") as tools:
        await _open_page(tools, f"http://127.0.0.1:{proxy.port}/")  # the page, and so its socket, via the proxy
        await tools.js(STATE_LOG)
        await tools.js("document.getElementById('tab-live').click()")
        await tools.js("document.getElementById('mic').click()", gesture=True)
        await _wait_for(tools, lambda s: s["state"] == "live" and len(set(s["speakers"])) >= 2
                        and _seconds(s["timer"]) >= CUT_S, within_s=2 * CUT_S + 30)
        proxy.refusing = True
        proxy.cut()
        down = await _wait_for(tools, lambda s: s["state"] == "reconnecting", within_s=5)
        cut_s = _seconds(down["timer"])
        assert down["label"] == "Reconnecting…" and len(set(down["speakers"])) >= 2, down
        deadline = time.monotonic() + OUTAGE_S
        while time.monotonic() < deadline:  # the timeline stays as it was while the network is down
            still = await tools.js(PAGE_STATE)
            assert still["state"] == "reconnecting" and still["turns"] == down["turns"], still
            await asyncio.sleep(0.25)
        assert proxy.refused >= 1, "the page did not try again while the network was down"
        proxy.refusing = False
        back = await _wait_for(tools, lambda s: s["state"] == "live" and any(t.start_s > cut_s for t in _turns(s)),
                               within_s=20)
        await tools.screenshot(ARTIFACTS / "stream_page_resumed.png")
        assert back["session"] == down["session"]  # the page names its result after the session: the same one
        assert set(down["lanes"]) <= set(back["lanes"]), (down["lanes"], back["lanes"])
        assert _still_shown(_turns(down), _turns(back), length_s) >= 0.9, (down["turns"], back["turns"])
        await _wait_for(tools, lambda s: _seconds(s["timer"]) >= CLIP_S + 1.0, within_s=CLIP_S + 30)
        await tools.js("document.getElementById('mic').click()", gesture=True)
        final = await _wait_for(tools, lambda s: s["state"] == "done", within_s=20)
        log = await tools.js("window.stateLog")
    assert log == ["idle", "connecting", "live", "reconnecting", "live", "finalising", "done"], log
    assert final["session"] == down["session"] and "Final result" in final["summary"]
    _consistent_names(final)
    turns = _turns(final)
    shift = _capture_offset([t for t in turns if t.end_s < cut_s - 1.0], reference, length_s)  # before the drop
    # the whole clip, no audio lost or sent twice around the drop: speech ends where the clip's does, and
    # the reference speech is covered, around the outage too
    assert abs(max(t.end_s for t in turns) + shift - reference[-1].end_s) <= 1.0, (shift, final["turns"])
    truth = _mask(reference, length_s)
    heard = _mask(turns, length_s, shift) & truth
    around = slice(int((cut_s - 2.0) * 100), int((cut_s + OUTAGE_S + 3.0) * 100))
    assert heard.sum() >= 0.9 * truth.sum() and heard[around].sum() >= 0.9 * truth[around].sum()
    # the same two speakers before and after the drop: each name is mostly one reference voice
    who = _who(turns, reference, length_s, shift)
    assert len(who) == 2 and len({max(v, key=v.__getitem__) for v in who.values()}) == 2, who
    assert sum(max(v.values()) for v in who.values()) >= 0.75 * sum(sum(v.values()) for v in who.values()), who
    async with aiohttp.ClientSession() as http, http.get(page_server.http + "/health") as response:
        assert (await response.json())["sessions"] == 0


# ---------------------------------------------------------------- enrolment through the page, named live

ENROLLED, NAME = "LS2033", "Dana"
ENROL_FROM_S = 34.0  # her voice is enrolled from her turns after this point of two_speakers where no one else talks
CONVERSATION_S = 17.1  # then the conversation: two_speakers 0-17.1 s, five turns each (a few overlapped)


@pytest.fixture(scope="module")
def enrol_then_talk(speech_clips: dict[str, DevItem],
                    tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Turn], float]:
    """A file for the fake microphone, which plays it from its start each time the page opens the microphone:
    about 11 s of LS2033 alone (the 10 s enrolment records them), 1 s of silence, the first 17 s of the
    recording, where she and LS3080 take turns (other sentences than those enrolled), and 2 s of silence.
    Returns the file, its reference in file time, and where the conversation starts."""
    item = speech_clips["two_speakers"]
    samples = np.concatenate(list(decode_chunks(item.audio_path, 16000)))
    turns = read_rttm(item.rttm_path)[item.uri]
    alone = [t for t in turns if t.speaker == ENROLLED and t.start_s >= ENROL_FROM_S
             and not any(o.speaker != ENROLLED and o.start_s < t.end_s and t.start_s < o.end_s for o in turns)]
    parts: list[np.ndarray] = []
    reference: list[Turn] = []
    for t in alone:
        at = sum(len(p) for p in parts) / 16000
        parts += [samples[int(t.start_s * 16000):int(t.end_s * 16000)], np.zeros(4000, samples.dtype)]
        reference.append(Turn(at, at + t.end_s - t.start_s, ENROLLED))
    conversation_at = sum(len(p) for p in parts) / 16000 + 1.0
    assert sum(t.end_s - t.start_s for t in reference) > 9.5 and conversation_at > 11.0, "too little of her alone"
    parts += [np.zeros(16000, samples.dtype), samples[:int(CONVERSATION_S * 16000)], np.zeros(32000, samples.dtype)]
    reference += [Turn(conversation_at + t.start_s, conversation_at + min(t.end_s, CONVERSATION_S), t.speaker)
                  for t in turns if t.start_s < CONVERSATION_S]
    path = tmp_path_factory.mktemp("enrol") / "enrol_then_talk.wav"
    sf.write(path, np.concatenate(parts), 16000, subtype="PCM_16")
    return path, reference, conversation_at


def _check_her_name(when: str, state: dict[str, Any], reference: list[Turn], conversation_at: float,
                    her_share: float) -> None:
    """In the conversation (up to the page's last turn, where only one of them talks): at least ``her_share``
    of her speech is shown under her name, little of his, and no turn under her name is mostly his."""
    turns = _turns(state)
    length_s = reference[-1].end_s + 2.0
    shift = _capture_offset(turns, reference, length_s)
    hers = _mask([t for t in reference if t.speaker == ENROLLED], length_s)
    his = _mask([t for t in reference if t.speaker != ENROLLED], length_s)
    frames = np.arange(len(hers)) / 100
    talk = (frames >= conversation_at) & (frames < max(t.end_s for t in turns) + shift)
    her_alone, him_alone = hers & ~his & talk, his & ~hers & talk
    named = _mask([t for t in turns if t.speaker == NAME], length_s, shift)
    her_named, his_named = (named & her_alone).sum() / her_alone.sum(), (named & him_alone).sum() / him_alone.sum()
    assert her_named >= her_share and his_named <= 0.15, \
        f"{when}: {her_named:.0%} of her speech and {his_named:.0%} of his shown as {NAME}: {state['turns']}"
    for t in turns:
        turn = _mask([t], length_s, shift)
        her_s, his_s = (turn & her_alone).sum() / 100, (turn & him_alone).sum() / 100
        assert t.speaker != NAME or his_s < max(0.5, 2 * her_s), f"{when}: his turn shown as {NAME}: {t}"


async def test_page_enrols_a_voice_and_names_her_live(page_server: ServerThread,
                                                       enrol_then_talk: tuple[Path, list[Turn], float],
                                                       tmp_path: Path) -> None:
    """Enrol a voice through the page (name typed, 10 s recorded from the microphone, a voiceprint made by
    the job API), then talk live: her turns carry her name as they appear, his do not. The live session hears
    the file from its start again, so its first 11 s are the enrolled audio; only the conversation after it
    is checked."""
    wav, reference, conversation_at = enrol_then_talk
    async with _browser(wav, tmp_path / "profile") as tools:
        await _open_page(tools, page_server.http + "/")
        await tools.js("document.getElementById('tab-live').click()")
        await tools.js("document.getElementById('enrol-name').focus()")
        await tools.call("Input.insertText", text=NAME)  # typed, as a person would
        await tools.js("document.getElementById('enrol-btn').click()", gesture=True)
        enrolled = await _wait_for(tools, lambda s: "enrolled:" in s["enrol"] or "failed" in s["enrol"], within_s=45)
        assert enrolled["enrol"].startswith(f"{NAME} enrolled") and enrolled["known"] == [NAME], enrolled
        await tools.js("document.getElementById('mic').click()", gesture=True)
        live = await _wait_for(tools, lambda s: _seconds(s["timer"]) >= reference[-1].end_s + 1.0,
                               within_s=reference[-1].end_s + 30)
        assert live["state"] == "live", live
        await tools.screenshot(ARTIFACTS / "stream_page_enrolled_live.png")
        await tools.js("document.getElementById('mic').click()", gesture=True)
        final = await _wait_for(tools, lambda s: s["state"] == "done", within_s=20)
        await tools.screenshot(ARTIFACTS / "stream_page_enrolled_final.png")
    for when, state in (("live", live), ("final", final)):
        # she is named, the other voice is a numbered speaker, on the timeline and in the table
        assert NAME in state["lanes"] and any(lane.startswith("Speaker ") for lane in state["lanes"]), state
        assert set(state["rows"]) == set(state["lanes"]) and set(state["lanes"]) <= {NAME} | {
            f"Speaker {k + 1}" for k in set(state["speakers"])}, state
        # most of her speech carries her name (85 % in most runs; 62 % in one loaded run, where the live
        # clustering left a 7 s stretch of both voices to him), and almost none of his does
        _check_her_name(when, state, reference, conversation_at, her_share=0.5)


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_missing_chromium_skips_only_outside_ci(monkeypatch: pytest.MonkeyPatch, ci: str,
                                                outcome: type[BaseException]) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="chromium is not installed"):
        _chromium()
