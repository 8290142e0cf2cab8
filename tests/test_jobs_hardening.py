"""Job API hardening through real server processes on 127.0.0.1 (issue 12): a failing store never wedges
job processing, every error is the contract's JSON, limits hold however the requests are spelled."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

import aiohttp
import numpy as np
import pytest
import soundfile as sf
from aiohttp import web

from diarflow.testing.evaluation import DevItem
from diarflow.provisioning import ModelPaths
from diarflow.testing import ServerProcess, rss_bytes, upload, wait_for_job

pytestmark = pytest.mark.timeout(300)

KEYS = {"key-a": "teamA"}
A = {"Authorization": "Bearer key-a"}


def _hidden_length_flac(path: Path, samples: np.ndarray) -> Path:
    """A FLAC whose STREAMINFO says "length unknown" (total samples 0): only decoding reveals it."""
    sf.write(path, samples, 16000, format="FLAC", subtype="PCM_16")
    data = bytearray(path.read_bytes())
    if data[:4] != b"fLaC" or data[4] & 0x7F != 0:
        raise RuntimeError("expected STREAMINFO as the first FLAC metadata block")
    data[21] &= 0xF0  # the 36-bit total sample count: low nibble of byte 21, then bytes 22-25
    data[22:26] = b"\0\0\0\0"
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_paths: ModelPaths) -> Iterator[ServerProcess]:
    """Two workers, the disk-full switch, a 1 s body timeout and a 10 min audio limit; a partial upload of
    an earlier run is planted in the data dir before start-up."""
    data_dir = tmp_path_factory.mktemp("hardening")
    leftover = data_dir / "media" / "0123" / "abcd.5f5f5f.part"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"x" * 1000)
    with ServerProcess(data_dir, env={"DIARFLOW_ALLOW_PRIVATE_URLS": "1"}, faults=True,
                       jobs={"workers": 2, "body_read_timeout_s": 1.0, "max_audio_s": 600.0,
                             "webhook_retry_delays_s": [0.3, 0.3], "rate_limit_get": 100_000,
                             "rate_limit_post": 100_000, "store_retry_max_s": 0.5},
                       auth_enabled=True, api_keys=KEYS, model_dir=str(model_paths.campplus.parent)) as proc:
        yield proc


async def _health(server: ServerProcess) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/health") as response:
        return response.status, await response.json()


async def _wait_until(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s} s")
        await asyncio.sleep(0.1)


def test_partial_uploads_of_an_earlier_run_are_swept_at_startup(server: ServerProcess) -> None:
    assert not list((server.data_dir / "media").glob("*/*.part"))


async def test_store_write_failure_never_wedges_job_processing(api: aiohttp.ClientSession, server: ServerProcess,
                                                               speech_clips: dict[str, DevItem]) -> None:
    """Defect 1: two jobs finish while the store refuses writes; both outcomes are kept and recorded once the
    store recovers, /health says degraded meanwhile, and a new job runs without a restart."""
    dev06 = speech_clips["six_speakers"]
    await upload(api, "media://dev06.flac", dev06.audio_path)
    ids = [(await (await api.post("/v1/diarize", json={"url": "media://dev06.flac"})).json())["jobId"]
           for _ in range(2)]

    async def both_running() -> bool:
        statuses = [(await (await api.get(f"/v1/jobs/{i}")).json())["status"] for i in ids]
        return statuses == ["running", "running"]

    await _wait_until(both_running, 120, "both jobs running")
    log_start = server.log_path.stat().st_size
    server.fail_writes(True)
    try:
        async def outcomes_held() -> bool:  # both results are computed and waiting for the store
            return server.log_path.read_text()[log_start:].count("cannot record succeeded yet") >= 2

        await _wait_until(outcomes_held, 180, "both outcomes waiting for the store")
        status, body = await _health(server)
        assert status == 503 and body["status"] == "degraded"
        assert any("job store" in p for p in body["problems"]), body
        for job_id in ids:
            assert (await (await api.get(f"/v1/jobs/{job_id}")).json())["status"] == "running"
    finally:
        server.fail_writes(False)
    for job_id in ids:
        job = await wait_for_job(api, job_id, 60)
        assert job["status"] == "succeeded" and job["output"]["diarization"]
    after = (await (await api.post("/v1/diarize", json={"url": "media://dev06.flac"})).json())["jobId"]
    assert (await wait_for_job(api, after, 120))["status"] == "succeeded"
    status, body = await _health(server)
    assert status == 200 and body["status"] == "ok" and body["problems"] == []


async def test_disk_full_upload_and_submission_answer_contract_json(api: aiohttp.ClientSession,
                                                                     server: ServerProcess) -> None:
    """Defect 6: 507 / 503 with Retry-After and the contract's body, and no temp file left behind."""
    put_url = (await (await api.post("/v1/media/input", json={"url": "media://full.bin"})).json())["url"]
    server.fail_writes(True)
    try:
        async with aiohttp.ClientSession() as anonymous:
            put = await anonymous.put(put_url, data=b"\1" * 300_000)
            assert put.status == 507 and set(await put.json()) == {"requestId", "message"}
            assert int(put.headers["Retry-After"]) > 0
        submitted = await api.post("/v1/diarize", json={"url": "media://full.bin"})
        assert submitted.status == 503 and set(await submitted.json()) == {"requestId", "message"}
        assert int(submitted.headers["Retry-After"]) > 0 and "X-RateLimit-Remaining" in submitted.headers
        assert not list((server.data_dir / "media").glob("*/*.part"))
    finally:
        server.fail_writes(False)
    async with aiohttp.ClientSession() as anonymous:
        assert (await anonymous.put(put_url, data=b"\1" * 300_000)).status == 200


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"url": "https://example.com/a.wav", "x": ' + b"[" * 20_000
                                  + b"]" * 20_000 + b"}"])
async def test_deeply_nested_json_is_400_with_the_contract_body(api: aiohttp.ClientSession, body: bytes) -> None:
    for route in ("/v1/diarize", "/v1/media/input"):
        response = await api.post(route, data=body, headers={"Content-Type": "application/json"})
        assert response.status == 400, await response.text()
        payload = await response.json()
        assert payload["errors"][0]["field"] == "body" and "X-RateLimit-Remaining" in response.headers


def _raw_request(port: int, head: bytes, body: bytes = b"", wait_s: float = 30.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as s:
        s.sendall(head + body)
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except socket.timeout:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def test_non_utf8_authorization_is_401(server: ServerProcess) -> None:
    head = (b"GET /v1/test HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xff\xfekey-a\r\n"
            b"Connection: close\r\n\r\n")
    answer = _raw_request(server.port, head)
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 401 " in status_line, answer[:300]
    assert set(json.loads(rest.split(b"\r\n\r\n", 1)[1])) == {"requestId", "message"}


def test_stalled_request_body_gets_408_and_is_closed(server: ServerProcess) -> None:
    head = (b"POST /v1/diarize HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer key-a\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    answer = _raw_request(server.port, head, b'{"url": ', wait_s=30.0)  # then nothing: the server must not wait
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b"stalled" in answer


async def test_media_key_with_a_trailing_newline_is_refused(api: aiohttp.ClientSession) -> None:
    for route in ("/v1/media/input", "/v1/diarize"):
        response = await api.post(route, json={"url": "media://a.wav\n"})
        assert response.status == 400 and response.headers["Content-Type"].startswith("application/json")


async def test_shorthand_numeric_host_is_refused_with_a_clear_message(api: aiohttp.ClientSession) -> None:
    job_id = (await (await api.post("/v1/diarize", json={"url": "http://127.1:9/a.wav"})).json())["jobId"]
    job = await wait_for_job(api, job_id, 30)
    assert job["status"] == "failed" and "shorthand" in job["output"]["error"], job


async def test_confidence_covers_the_whole_file_without_speech(api: aiohttp.ClientSession, tmp_path: Path) -> None:
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(60 * 16000, np.int16), 16000, subtype="PCM_16")
    await upload(api, "media://silence60.wav", silence)
    job_id = (await (await api.post("/v1/diarize", json={"url": "media://silence60.wav",
                                                         "confidence": True})).json())["jobId"]
    job = await wait_for_job(api, job_id, 120)
    assert job["status"] == "succeeded", job
    assert job["output"]["diarization"] == [] and len(job["output"]["confidence"]["score"]) == 3000


async def test_hidden_length_fails_before_decoding_with_a_round_limit(api: aiohttp.ClientSession,
                                                                       tmp_path: Path) -> None:
    """20 min of audio in a FLAC that declares no length, against a 10 min limit: failed at once, in words."""
    bomb = _hidden_length_flac(tmp_path / "bomb.flac", np.zeros(20 * 60 * 16000, np.int16))
    await upload(api, "media://bomb.flac", bomb)
    job_id = (await (await api.post("/v1/diarize", json={"url": "media://bomb.flac"})).json())["jobId"]
    job = await wait_for_job(api, job_id, 120, period_s=0.05)
    assert job["status"] == "failed" and job["output"] == {"error": "Audio is longer than 10 min"}


async def test_progress_moves_while_a_job_of_undeclared_length_runs(api: aiohttp.ClientSession, tmp_path: Path,
                                                                     speech_clips: dict[str, DevItem]) -> None:
    dev05 = speech_clips["six_speakers"]
    samples, _ = sf.read(dev05.audio_path, dtype="int16")
    samples = np.concatenate([samples, samples])  # 116 s: two 60 s decode chunks, so progress is seen mid-job
    hidden = _hidden_length_flac(tmp_path / "dev05_hidden.flac", samples)
    await upload(api, "media://dev05_hidden.flac", hidden)
    job_id = (await (await api.post("/v1/diarize", json={"url": "media://dev05_hidden.flac"})).json())["jobId"]
    seen: list[float] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        job = await (await api.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] != "running" and job["status"] != "created":
            break
        if job["status"] == "running":
            seen.append(job["progress"])
        await asyncio.sleep(0.05)
    assert job["status"] == "succeeded", job
    assert any(0.0 < p < 1.0 for p in seen), f"progress never moved: {sorted(set(seen))}"


class _Receiver:
    """A webhook receiver that answers 503 to its first call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []
        self.runner = web.AppRunner(web.Application())
        self.runner.app.router.add_post("/hook", self.hook)
        self.url = ""

    async def hook(self, request: web.Request) -> web.Response:
        await request.read()
        self.calls.append(dict(request.headers))
        return web.Response(status=503 if len(self.calls) == 1 else 200)

    async def __aenter__(self) -> _Receiver:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


async def test_webhook_retries_carry_one_idempotency_key(api: aiohttp.ClientSession) -> None:
    async with _Receiver() as receiver:
        job_id = (await (await api.post("/v1/diarize", json={"url": "media://never.wav",
                                                             "webhook": receiver.url})).json())["jobId"]
        await wait_for_job(api, job_id, 30)
        for _ in range(200):
            if len(receiver.calls) >= 2:
                break
            await asyncio.sleep(0.05)
    keys = [h.get("Idempotency-Key") for h in receiver.calls]
    assert len(keys) == 2 and keys[0] and keys[0] == keys[1] and job_id in keys[0]


async def test_access_log_is_on_and_never_shows_credentials(api: aiohttp.ClientSession,
                                                            server: ServerProcess) -> None:
    put_url = (await (await api.post("/v1/media/input", json={"url": "media://log.bin"})).json())["url"]
    token = put_url.rsplit("/", 1)[1]
    async with aiohttp.ClientSession() as anonymous:
        assert (await anonymous.put(put_url, data=b"x")).status == 200
        async with anonymous.ws_connect(f"{server.url.replace('http', 'ws')}/diarize/stream?token=sekrit-tok"):
            pass
    assert (await api.get("/v1/test")).status == 200
    text = ""
    for _ in range(50):  # the access line is written once the response is done
        text = server.log_path.read_text()
        if "GET /v1/test" in text and "/diarize/stream?token=***" in text:
            break
        await asyncio.sleep(0.1)
    assert "aiohttp.access" in text and "GET /v1/test" in text and "/diarize/stream?token=***" in text
    assert "sekrit-tok" not in text and token not in text and "key-a" not in text


# -- limits: a server of their own (failed authentications block the whole client address) --------------
@pytest.fixture(scope="module")
def limits_server(tmp_path_factory: pytest.TempPathFactory, model_paths: ModelPaths) -> Iterator[ServerProcess]:
    """Auth on with keys from the environment and a keys file (nothing in the settings)."""
    data_dir = tmp_path_factory.mktemp("limits")
    keys_file = data_dir / "keys.txt"
    keys_file.write_text("# team F's key\nkey-file:teamF\n")
    env = {"DIARFLOW_API_KEYS": "key-env:teamE", "DIARFLOW_API_KEYS_FILE": str(keys_file)}
    with ServerProcess(data_dir, env=env, jobs={"workers": 1, "rate_limit_get": 20, "auth_failures_per_min": 30},
                       auth_enabled=True, model_dir=str(model_paths.campplus.parent)) as proc:
        yield proc


async def test_keys_from_env_and_file_open_both_doors(limits_server: ServerProcess) -> None:
    ws_url = limits_server.url.replace("http", "ws") + "/diarize/stream"
    start = {"type": "start", "sample_rate": 16000, "channels": 1, "sample_width": 2, "format": "pcm_s16le"}
    async with aiohttp.ClientSession() as http:
        for key in ("key-env", "key-file"):
            response = await http.get(f"{limits_server.url}/v1/test", headers={"Authorization": f"Bearer {key}"})
            assert response.status == 200, key
            async with http.ws_connect(f"{ws_url}?token={key}") as ws:
                await ws.send_json(start)
                assert json.loads((await ws.receive(timeout=30)).data)["type"] == "ready", key
        async with http.ws_connect(f"{ws_url}?token=nope") as ws:
            assert json.loads((await ws.receive(timeout=30)).data)["detail"] == "unauthorized"
        assert (await http.get(f"{limits_server.url}/v1/test", headers={"Authorization": "Bearer nope"})).status == 401


async def test_rate_limit_holds_however_the_header_is_spelled(limits_server: ServerProcess) -> None:
    spellings = ["Bearer key-env", "bearer key-env", "BEARER key-env", "Bearer   key-env", "bEaReR key-env "]
    async with aiohttp.ClientSession(limits_server.url) as http:
        statuses = [(await http.get("/v1/jobs/00000000-0000-4000-8000-000000000009",
                                    headers={"Authorization": spellings[n % len(spellings)]})).status
                    for n in range(30)]
    assert statuses.count(404) <= 20 and statuses[-5:] == [429] * 5, statuses


async def test_key_guessing_is_throttled_per_client_address(limits_server: ServerProcess) -> None:
    async with aiohttp.ClientSession(limits_server.url) as http:
        statuses = [(await http.get("/v1/test", headers={"Authorization": f"Bearer guess-{n}"})).status
                    for n in range(40)]
        first_429 = statuses.index(429)  # the budget is 30 failures a minute (one was spent by an earlier test)
        assert 25 <= first_429 <= 30 and set(statuses[:first_429]) == {401} and set(statuses[first_429:]) == {429}
        right_key = await http.get("/v1/test", headers={"Authorization": "Bearer key-env"})
        assert right_key.status == 429 and int(right_key.headers["Retry-After"]) > 0  # guessing cannot confirm a key


async def test_junk_keys_do_not_grow_server_memory(limits_server: ServerProcess) -> None:
    """Defect 3: 20 000 distinct junk keys used to cost about 22 MB of rate-limit state."""
    before = rss_bytes(limits_server.pid)
    connector = aiohttp.TCPConnector(limit=20)
    async with aiohttp.ClientSession(limits_server.url, connector=connector) as http:
        async def one(n: int) -> int:
            async with http.get("/v1/test", headers={"Authorization": f"Bearer junk-{n}"}) as response:
                await response.read()
                return response.status

        for lo in range(0, 20_000, 1000):
            statuses = await asyncio.gather(*(one(n) for n in range(lo, lo + 1000)))
            assert set(statuses) <= {401, 429}
    growth = rss_bytes(limits_server.pid) - before
    assert growth < 8 << 20, f"server RSS grew by {growth / 2**20:.1f} MiB"


# -- a real full disk: a small tmpfs (needs root to mount; the injected tests above always run) ----------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    import subprocess

    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'}); "
                    "the injected disk-full tests cover the same code paths")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    block = b"\0" * (1 << 20)
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(block)
        except OSError:
            pass
    with open(filler, "ab", buffering=0) as out:  # the last few KiB too
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


async def test_real_full_disk_answers_json_and_recovers_without_restart(small_disk: Path, model_paths: ModelPaths,
                                                                        tmp_path: Path) -> None:
    clip = tmp_path / "clip.wav"
    sf.write(clip, (np.sin(np.arange(5 * 16000) / 9.0) * 3000).astype(np.int16), 16000, subtype="PCM_16")
    with ServerProcess(small_disk / "data", jobs={"workers": 1, "min_free_bytes": 1 << 20},
                       log_path=tmp_path / "server.log", model_dir=str(model_paths.campplus.parent)) as server:
        async with aiohttp.ClientSession(server.url) as api:
            await upload(api, "media://clip.wav", clip)
            put_url = (await (await api.post("/v1/media/input", json={"url": "media://big.bin"})).json())["url"]
            filler = _fill(small_disk)
            async with aiohttp.ClientSession() as anonymous:
                put = await anonymous.put(put_url, data=b"\1" * (2 << 20))
                assert put.status == 507 and set(await put.json()) == {"requestId", "message"}
            assert not list((small_disk / "data" / "media").glob("*/*.part"))
            submitted = await api.post("/v1/diarize", json={"url": "media://clip.wav"})
            assert submitted.headers["Content-Type"].startswith("application/json")
            assert submitted.status in (200, 503), await submitted.text()
            status, body = await _health(server)
            assert status == 503 and body["status"] == "degraded", body
            filler.unlink()
            if submitted.status == 200:  # accepted while full: it must still end, and well
                job = await wait_for_job(api, (await submitted.json())["jobId"], 120)
                assert job["status"] == "succeeded", job
            after = (await (await api.post("/v1/diarize", json={"url": "media://clip.wav"})).json())["jobId"]
            assert (await wait_for_job(api, after, 120))["status"] == "succeeded"
            assert (await _health(server))[0] == 200
