"""End to end through a real server: upload -> diarize -> poll (DER checked), webhooks, voiceprints, failures."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
from pathlib import Path
from typing import AsyncIterator, Iterator

import aiohttp
import numpy as np
import pytest
import soundfile as sf
from aiohttp import web

from diarflow.api import diarize
from diarflow.testing.evaluation import DevItem, Turn, diarization_error_rate, read_rttm
from diarflow.provisioning import ModelPaths
from diarflow.operators.models import Resources
from diarflow.testing import ServerProcess, upload, wait_for_job

SECRET = "flow-test-secret"


@pytest.fixture(scope="module", params=["local", "ray"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           model_paths: ModelPaths) -> Iterator[ServerProcess]:
    """A server whose jobs run on local worker processes, or on a Ray actor (a local Ray started and
    stopped by the server): every test of this module runs against both backends."""
    if request.param == "ray":
        pytest.importorskip("ray")
    with ServerProcess(tmp_path_factory.mktemp("jobs-flow"),
                       env={"DIARFLOW_ALLOW_PRIVATE_URLS": "1", "DIARFLOW_WEBHOOK_SECRET": SECRET},
                       jobs={"workers": 1, "webhook_retry_delays_s": [0.0, 0.3, 0.3], "upload_max_bytes": 8_000_000,
                             "rate_limit_get": 100_000,  # limits are tested in test_jobs_api
                             "backend": request.param},
                       model_dir=str(model_paths.campplus.parent)) as proc:
        yield proc


@pytest.fixture
def dev06(speech_clips: dict[str, DevItem]) -> DevItem:
    """Six speakers in 58 s (all of the dev corpus's dev06)."""
    return speech_clips["six_speakers"]


class Files:
    """A tiny static file server plus a webhook receiver that fails its first ``fail_first`` calls."""

    def __init__(self, root: Path, fail_first: int = 2) -> None:
        self.root = root
        self.fail_first = fail_first
        self.calls: list[tuple[dict[str, str], bytes, bool]] = []
        self.app = web.Application()
        self.app.router.add_post("/hook", self.hook)
        self.app.router.add_get("/files/{name}", self.file)
        self.app.router.add_get("/endless", self.endless)
        self.runner = web.AppRunner(self.app)
        self.port = 0

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    async def file(self, request: web.Request) -> web.StreamResponse:
        path = self.root / request.match_info["name"]
        return web.FileResponse(path) if path.is_file() else web.Response(status=404)

    async def endless(self, request: web.Request) -> web.StreamResponse:
        """Chunked, no Content-Length: only counting while streaming can stop it."""
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for _ in range(64):
                await response.write(b"\0" * (1 << 20))
        except (ConnectionResetError, RuntimeError):
            pass
        return response

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        timestamp = request.headers["X-Request-Timestamp"]
        expected = base64.b64encode(hmac.new(SECRET.encode(), b"v0:" + timestamp.encode() + b":" + body,
                                             hashlib.sha256).digest()).decode()
        valid = hmac.compare_digest(expected, request.headers["X-Signature"])
        self.calls.append((dict(request.headers), body, valid))
        if not valid:
            return web.Response(status=401)
        if len(self.calls) <= self.fail_first:
            return web.Response(status=503)
        return web.Response(status=200)


@pytest.fixture
async def files(tmp_path: Path) -> AsyncIterator[Files]:
    served = Files(tmp_path)
    await served.start()
    yield served
    await served.runner.cleanup()


def _cut(item: DevItem, start_s: float, end_s: float, dest: Path) -> Path:
    audio, rate = sf.read(item.audio_path, dtype="float32")
    sf.write(dest, audio[int(start_s * rate):int(end_s * rate)], rate, format="WAV", subtype="PCM_16")
    return dest


async def test_upload_diarize_poll_der(api: aiohttp.ClientSession, dev06: DevItem) -> None:
    await upload(api, "media://dev/dev06.flac", dev06.audio_path)
    response = await api.post("/v1/diarize", json={
        "url": "media://dev/dev06.flac", "webhook": None, "webhookStatusOnly": None, "model": None,
        "numSpeakers": None, "minSpeakers": None, "maxSpeakers": None, "confidence": True,
        "turnLevelConfidence": True, "exclusive": True, "transcription": False})
    assert response.status == 200
    job_id = (await response.json())["jobId"]
    seen_progress: list[float] = []
    while True:
        job = await (await api.get(f"/v1/jobs/{job_id}")).json()
        assert "output" not in job or job["status"] in ("succeeded", "failed", "canceled")
        if job["status"] == "running":
            seen_progress.append(job["progress"])
        if job["status"] in ("succeeded", "failed", "canceled"):
            break
        await asyncio.sleep(0.2)
    assert job["status"] == "succeeded", job
    assert all(0.0 <= p <= 1.0 for p in seen_progress) and seen_progress == sorted(seen_progress)
    assert job["createdAt"].endswith("Z") and job["updatedAt"] >= job["createdAt"]
    out = job["output"]
    segments = out["diarization"]
    hypothesis = [Turn(s["start"], s["end"], s["speaker"]) for s in segments]
    reference = [t for turns in read_rttm(dev06.rttm_path).values() for t in turns]
    der = diarization_error_rate(reference, hypothesis, dev06.duration_s)["der"]
    assert der < 0.20, der
    # labels by first appearance, sorted by start, 3 decimals
    first_seen = list(dict.fromkeys(s["speaker"] for s in segments))
    assert first_seen == [f"SPEAKER_{i:02d}" for i in range(len(first_seen))]
    assert [s["start"] for s in segments] == sorted(s["start"] for s in segments)
    assert all(round(s["start"], 3) == s["start"] and s["end"] > s["start"] for s in segments)
    # turn-level confidence: 0-100 per speaker, the turn's own speaker the most likely
    for s in segments:
        conf = s["confidence"]
        assert all(isinstance(v, int) and 0 <= v <= 100 for v in conf.values())
        assert conf[s["speaker"]] == max(conf.values())
    # frame confidence covers the whole file at its resolution
    score, resolution = out["confidence"]["score"], out["confidence"]["resolution"]
    assert resolution == 0.02 and len(score) == math.ceil(dev06.duration_s / resolution - 1e-6)
    assert all(isinstance(v, int) and 0 <= v <= 100 for v in score)
    # exclusive: never overlapping, covered by the (overlapping) diarization of the same speaker
    exclusive = out["exclusiveDiarization"]
    assert all(a["end"] <= b["start"] + 1e-9 for a, b in zip(exclusive, exclusive[1:]))
    for e in exclusive:
        assert any(s["speaker"] == e["speaker"] and s["start"] <= e["start"] + 1e-6 and e["end"] <= s["end"] + 1e-6
                   for s in segments)
    total = sum(s["end"] - s["start"] for s in segments)
    assert sum(e["end"] - e["start"] for e in exclusive) <= total + 1e-6
    listed = await (await api.get("/v2/jobs?limit=100")).json()
    assert job_id in {i["id"] for i in listed["items"]}


async def test_uploads_reach_the_worker_over_http_and_the_sensitivity_knob_reaches_the_engine(
        api: aiohttp.ClientSession, server: ServerProcess, speech_clips: dict[str, DevItem], resources: Resources) -> None:
    """The worker (a local process, or a Ray actor that shares nothing with the server but HTTP) fetches an
    upload through the server's presigned media URL: the server's access log shows each fetch, and the
    result equals ``diarize()`` in-process. ``mergeSimilarity`` reaches the engine on either backend: a
    very low value merges the three voices of the clip into one."""
    clip = speech_clips["three_speakers"]
    await upload(api, "media://three.flac", clip.audio_path)
    log_start = len(server.log_path.read_bytes())
    job_ids = {}
    for value in (None, -0.9):
        response = await api.post("/v1/diarize", json={"url": "media://three.flac", "mergeSimilarity": value})
        assert response.status == 200, await response.text()
        job_ids[value] = (await response.json())["jobId"]
    outputs = {}
    for value, job_id in job_ids.items():
        job = await wait_for_job(api, job_id, 180)
        assert job["status"] == "succeeded", job
        outputs[value] = job["output"]
    fetches = server.log_path.read_bytes()[log_start:].decode().count('"GET /v1/media/download/***" 200 ')
    assert fetches == 2, server.log_path.read_text()[-3000:]
    assert outputs[None] == diarize(clip.audio_path, resources=resources).to_json()
    speakers = {value: len({s["speaker"] for s in out["diarization"]}) for value, out in outputs.items()}
    assert speakers[None] == 3 and speakers[-0.9] == 1, speakers


async def test_health_names_the_worker_backend(server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/health") as response:
        body = await response.json()
    backend = server.config["jobs"]["backend"]
    assert response.status == 200 and body["job_workers"] == {
        "backend": backend, "location": "local Ray" if backend == "ray" else "this machine", "slots": 1}


async def test_webhook_signed_retried_until_success(api: aiohttp.ClientSession, files: Files, dev06: DevItem) -> None:
    _cut(dev06, 0.0, 12.0, files.root / "cut.wav")
    response = await api.post("/v1/diarize", json={"url": files.url("files/cut.wav"), "webhook": files.url("hook"),
                                                   "numSpeakers": 2})
    job_id = (await response.json())["jobId"]
    job = await wait_for_job(api, job_id, 60)
    assert job["status"] == "succeeded"
    for _ in range(100):
        if len(files.calls) >= 3:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # nothing more may come after the success
    assert len(files.calls) == 3 and all(valid for _, _, valid in files.calls)
    headers = [h for h, _, _ in files.calls]
    assert "x-retry-num" not in {k.lower() for k in headers[0]}
    assert [h.get("x-retry-num") for h in headers[1:]] == ["1", "2"]
    assert [h.get("x-retry-reason") for h in headers[1:]] == ["http_error", "http_error"]
    payload = json.loads(files.calls[-1][1])
    assert payload["jobId"] == job_id and payload["status"] == "succeeded"
    assert payload["output"] == job["output"]


async def test_status_only_webhook_and_bad_inputs(api: aiohttp.ClientSession, files: Files) -> None:
    files.fail_first = 0
    (files.root / "notes.txt").write_text("this is not audio at all\n" * 100)
    (files.root / "huge.wav").write_bytes(b"\0" * 9_000_000)
    cases = [(files.url("files/notes.txt"), "Could not load audio"),
             (files.url("files/missing.wav"), "Could not load audio: HTTP 404"),
             (files.url("files/huge.wav"), "Could not load audio: the file is larger than 8000000 bytes"),
             (files.url("endless"), "Could not load audio: the file is larger than 8000000 bytes")]
    ids = []
    for url, _ in cases:
        response = await api.post("/v1/diarize", json={"url": url, "webhook": files.url("hook"),
                                                       "webhookStatusOnly": True})
        ids.append((await response.json())["jobId"])
    for job_id, (_, message) in zip(ids, cases):
        job = await wait_for_job(api, job_id, 60)
        assert job["status"] == "failed" and job["output"]["error"].startswith(message), job
        assert "/work" not in job["output"]["error"] and "tmp" not in job["output"]["error"]
    for _ in range(50):
        if len(files.calls) >= len(ids):
            break
        await asyncio.sleep(0.1)
    bodies = sorted((json.loads(body) for _, body, _ in files.calls), key=lambda b: ids.index(b["jobId"]))
    assert bodies == [{"jobId": job_id, "status": "failed"} for job_id in ids]


async def test_cancel_running_job(api: aiohttp.ClientSession, speech_clips: dict[str, DevItem],
                                  tmp_path: Path) -> None:
    longest = tmp_path / "long.flac"  # every shipped clip twice: 6.5 min, several seconds of work
    audio = np.concatenate([sf.read(i.audio_path, dtype="int16")[0] for i in speech_clips.values()] * 2)
    sf.write(longest, audio, 16000, format="FLAC", subtype="PCM_16")
    await upload(api, "media://dev/long.flac", longest)
    job_id = (await (await api.post("/v1/diarize", json={"url": "media://dev/long.flac"})).json())["jobId"]
    for _ in range(200):
        job = await (await api.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] == "running":
            break
        await asyncio.sleep(0.05)
    canceled = await api.delete(f"/v1/jobs/{job_id}")
    assert canceled.status == 200
    body = await canceled.json()
    assert body["status"] == "canceled" and body["output"]["error"]
    await asyncio.sleep(1.0)
    assert (await (await api.get(f"/v1/jobs/{job_id}")).json())["status"] == "canceled"


async def test_voiceprint_identifies_dev_speaker(api: aiohttp.ClientSession, files: Files, dev06: DevItem) -> None:
    reference = [t for turns in read_rttm(dev06.rttm_path).values() for t in turns]
    # the longest reference turn of one speaker, away from any other speaker
    target = max(reference, key=lambda t: t.end_s - t.start_s)
    _cut(dev06, target.start_s, min(target.end_s, target.start_s + 30.0), files.root / "print.wav")
    job_id = (await (await api.post("/v1/voiceprint", json={"url": files.url("files/print.wav"), "model": None})).json())["jobId"]
    job = await wait_for_job(api, job_id, 60)
    assert job["status"] == "succeeded", job
    voiceprint = job["output"]["voiceprint"]
    assert isinstance(voiceprint, str) and voiceprint.startswith("dfv1:") and len(voiceprint) <= 20000
    # a second, unrelated voiceprint from another clip's speaker (nobody in six_speakers)
    other_item = files.root / "other.wav"
    audio, rate = sf.read(dev06.audio_path.with_name("two_speakers.flac"), dtype="float32")
    other_turn = max((t for turns in read_rttm(dev06.rttm_path.with_name("two_speakers.rttm")).values() for t in turns),
                     key=lambda t: t.end_s - t.start_s)
    sf.write(other_item, audio[int(other_turn.start_s * rate):int(min(other_turn.end_s, other_turn.start_s + 20) * rate)],
             rate)
    other_id = (await (await api.post("/v1/voiceprint", json={"url": files.url("files/other.wav")})).json())["jobId"]
    other = (await wait_for_job(api, other_id, 60))["output"]["voiceprint"]

    await upload(api, "media://dev/dev06.flac", dev06.audio_path)
    response = await api.post("/v1/identify", json={
        "url": "media://dev/dev06.flac", "voiceprints": [{"label": "Target", "voiceprint": voiceprint},
                                                         {"label": "Stranger", "voiceprint": other}],
        "matching": {"exclusive": True, "threshold": 50}})
    assert response.status == 200, await response.text()
    job = await wait_for_job(api, (await response.json())["jobId"], 90)
    assert job["status"] == "succeeded", job
    out = job["output"]
    matched = [v for v in out["voiceprints"] if v["match"] == "Target"]
    assert len(matched) == 1 and not any(v["match"] == "Stranger" for v in out["voiceprints"])
    speaker = matched[0]["speaker"]
    assert matched[0]["confidence"]["Target"] >= 50 and matched[0]["confidence"]["Stranger"] < 50
    rows = [r for r in out["identification"] if r["diarizationSpeaker"] == speaker]
    assert rows and all(r["speaker"] == "Target" and r["match"] == "Target" for r in rows)
    assert len(out["identification"]) == len(out["diarization"])
    # the identified speaker's time is mostly the target's reference time
    target_time = sum(max(0.0, min(r["end"], t.end_s) - max(r["start"], t.start_s))
                      for r in rows for t in reference if t.speaker == target.speaker)
    assert target_time > 0.7 * sum(r["end"] - r["start"] for r in rows)
    too_long = files.root / "long.wav"
    sf.write(too_long, np.zeros(16000 * 31, np.float32), 16000)
    long_id = (await (await api.post("/v1/voiceprint", json={"url": files.url("files/long.wav")})).json())["jobId"]
    failed = await wait_for_job(api, long_id, 60)
    assert failed["status"] == "failed" and "longer than 30 s" in failed["output"]["error"]


