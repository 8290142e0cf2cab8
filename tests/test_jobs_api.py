"""Job API routes through a real server on 127.0.0.1: validation, auth, teams, media, rate limits, SSRF."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web

from diarflow.provisioning import ModelPaths
from diarflow.servers.jobs.fetch import AddressPolicy, FetchError, new_session, request_guarded
from diarflow.testing import ServerProcess, rss_bytes, upload, wait_for_job

KEYS = {"key-a": "teamA", "key-b": "teamB", "key-c": "teamC"}
A = {"Authorization": "Bearer key-a", "Content-Type": "application/json"}
B = {"Authorization": "Bearer key-b"}
DIARIZE_NULLS = {"webhook": None, "webhookStatusOnly": None, "model": None, "numSpeakers": None,
                 "minSpeakers": None, "maxSpeakers": None, "confidence": None, "turnLevelConfidence": None,
                 "exclusive": None, "transcription": None}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_paths: ModelPaths) -> Iterator[ServerProcess]:
    """Auth on, public-only outbound URLs, a 5 MB upload cap and small rate limits; no job ever reaches a worker."""
    with ServerProcess(tmp_path_factory.mktemp("jobs-api"), env={"DIARFLOW_ALLOW_PRIVATE_URLS": "0"},
                       jobs={"workers": 1, "upload_max_bytes": 5_000_000, "rate_limit_post": 40,
                             "rate_limit_get": 60},
                       auth_enabled=True, api_keys=KEYS, model_dir=str(model_paths.campplus.parent)) as proc:
        yield proc


@pytest.fixture
def api_headers() -> dict[str, str]:
    return A  # real clients send a JSON Content-Type even on GETs


async def test_key_check_and_401(api: aiohttp.ClientSession) -> None:
    response = await api.get("/v1/test")
    assert response.status == 200
    assert await response.json() == {"status": "OK", "message": "Test connection successful"}
    assert response.headers["X-RateLimit-Limit"] == "60" and int(response.headers["X-RateLimit-Remaining"]) < 60
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": "key-a"}, {}):
        async with aiohttp.ClientSession(api._base_url) as anonymous:
            refused = await anonymous.get("/v1/test", headers=headers)
            body = await refused.json()
            assert refused.status == 401 and set(body) == {"requestId", "message"}
            assert "X-RateLimit-Remaining" in refused.headers


@pytest.mark.parametrize("patch, field, message", [
    ({"url": None}, "url", "url is required"),
    ({"url": "file:///etc/passwd"}, "url", "http"),
    ({"url": "media://bad key"}, "url", "media URLs"),
    ({"numSpeakers": 2, "minSpeakers": 1}, "numSpeakers", "cannot be combined"),
    ({"numSpeakers": 2, "maxSpeakers": 3}, "numSpeakers", "cannot be combined"),
    ({"minSpeakers": 3, "maxSpeakers": 2}, "minSpeakers", "must not be greater"),
    ({"numSpeakers": 0}, "numSpeakers", ">= 1"),
    ({"numSpeakers": "2"}, "numSpeakers", ">= 1"),
    ({"transcription": True}, "transcription", "transcription is not supported by this server"),
    ({"model": "precision-1"}, "model", "model must be one of"),
    ({"confidence": "yes"}, "confidence", "boolean"),
    ({"webhook": "ftp://example.com/x"}, "webhook", "http"),
    ({"mergeSimilarity": 1.5}, "mergeSimilarity", "mergeSimilarity must be a number in (-1, 1]"),
    ({"mergeSimilarity": -1}, "mergeSimilarity", "lower merges more speakers"),
    ({"mergeSimilarity": "0.5"}, "mergeSimilarity", "got \"0.5\""),
    ({"mergeSimilarity": True}, "mergeSimilarity", "(-1, 1]"),
])
async def test_diarize_validation(api: aiohttp.ClientSession, patch: dict, field: str, message: str) -> None:
    body = {**DIARIZE_NULLS, "url": "https://example.com/a.wav", **patch}
    response = await api.post("/v1/diarize", json=body)
    assert response.status == 400
    payload = await response.json()
    assert field in {e["field"] for e in payload["errors"]}
    assert message in payload["message"]


async def test_body_errors(api: aiohttp.ClientSession) -> None:
    for data in (b"", b"{not json", b"[1, 2]"):
        response = await api.post("/v1/diarize", data=data)
        assert response.status == 400 and (await response.json())["errors"][0]["field"] == "body"
    response = await api.post("/v1/diarize", data=b'{"url": "' + b"a" * 3_000_000 + b'"}')
    assert response.status == 413 and "requestId" in await response.json()


async def test_nulls_and_unknown_fields_accepted(api: aiohttp.ClientSession) -> None:
    for extra in ({"model": "community-1", "someFutureField": 1}, {"numSpeakers": 2, "minSpeakers": None,
                                                                   "maxSpeakers": None, "model": "precision-2"}):
        response = await api.post("/v1/diarize", json={**DIARIZE_NULLS, "url": "media://missing.wav", **extra})
        assert response.status == 200
        body = await response.json()
        assert set(body) == {"jobId", "status"} and body["status"] == "created"
        job = await wait_for_job(api, body["jobId"], 30)
        assert job["status"] == "failed" and "media://missing.wav" in job["output"]["error"]


async def test_identify_and_voiceprint_validation(api: aiohttp.ClientSession) -> None:
    good = {"url": "https://example.com/a.wav", "voiceprints": [{"label": "Ann", "voiceprint": "dfv1:x"}]}
    cases = [
        ({**good, "voiceprints": []}, "voiceprints"),
        ({**good, "voiceprints": [{"label": "SPEAKER_01", "voiceprint": "x"}]}, "voiceprints[0].label"),
        ({**good, "voiceprints": [{"label": "Ann", "voiceprint": "not-ours"}]}, "voiceprints[0].voiceprint"),
        ({**good, "matching": {"threshold": 101}}, "matching.threshold"),
        ({**good, "transcription": True}, "transcription"),
    ]
    for body, field in cases:
        response = await api.post("/v1/identify", json=body)
        assert response.status == 400, body
        assert field in {e["field"] for e in (await response.json())["errors"]}
    response = await api.post("/v1/voiceprint", json={"url": None})
    assert response.status == 400


async def test_jobs_404_list_cancel_and_team_isolation(api: aiohttp.ClientSession, server: ServerProcess) -> None:
    missing = await api.get("/v1/jobs/00000000-0000-4000-8000-000000000000")
    assert missing.status == 404 and set(await missing.json()) == {"requestId", "message"}
    ids = []
    for _ in range(3):
        response = await api.post("/v1/diarize", json={**DIARIZE_NULLS, "url": "media://never-uploaded.wav"})
        ids.append((await response.json())["jobId"])
    for job_id in ids:
        await wait_for_job(api, job_id, 30)
    page = await (await api.get("/v2/jobs?limit=2")).json()
    assert len(page["items"]) == 2 and page["nextCursor"] == page["items"][-1]["id"]
    assert set(page["items"][0]) == {"id", "status", "createdAt"}
    second = await (await api.get(f"/v2/jobs?limit=2&cursor={page['nextCursor']}")).json()
    assert not {i["id"] for i in second["items"]} & {i["id"] for i in page["items"]}
    failed = await (await api.get("/v2/jobs?status=failed&limit=100")).json()
    assert all(i["status"] == "failed" for i in failed["items"]) and ids[0] in {i["id"] for i in failed["items"]}
    assert (await api.get("/v2/jobs?limit=0")).status == 400
    assert (await api.get("/v2/jobs?status=bogus")).status == 400
    async with aiohttp.ClientSession(server.url, headers=B) as other:
        assert (await other.get(f"/v1/jobs/{ids[0]}")).status == 404
        assert (await other.delete(f"/v1/jobs/{ids[0]}")).status == 404
        assert (await (await other.get("/v2/jobs")).json())["items"] == []
    done = await api.delete(f"/v1/jobs/{ids[0]}")
    assert done.status == 409


async def test_media_urls_are_signed_and_team_scoped(api: aiohttp.ClientSession, server: ServerProcess,
                                                     tmp_path: Path) -> None:
    payload = tmp_path / "bytes.bin"
    payload.write_bytes(b"0123456789" * 1000)
    await upload(api, "media://folder/one.bin", payload)
    out = await api.post("/v1/media/output", json={"url": "media://folder/one.bin"})
    assert out.status == 201
    async with aiohttp.ClientSession() as anonymous:
        got = await anonymous.get((await out.json())["url"])
        assert got.status == 200 and await got.read() == payload.read_bytes()
        put_url = (await (await api.post("/v1/media/input", json={"url": "media://x.bin"})).json())["url"]
        forged = put_url[:-3] + ("AAA" if not put_url.endswith("AAA") else "BBB")
        assert (await anonymous.put(forged, data=b"x")).status == 401
    async with aiohttp.ClientSession(server.url, headers=B) as other:
        assert (await other.post("/v1/media/output", json={"url": "media://folder/one.bin"})).status == 404
    assert (await api.post("/v1/media/output", json={"url": "media://nope.bin"})).status == 404
    assert (await api.post("/v1/media/input", json={"url": "http://x/y"})).status == 400


async def test_upload_over_cap_is_refused_while_streaming(api: aiohttp.ClientSession, server: ServerProcess) -> None:
    put_url = (await (await api.post("/v1/media/input", json={"url": "media://big.bin"})).json())["url"]
    chunk = b"\0" * (1 << 20)
    before = rss_bytes(server.pid)

    async def body() -> AsyncIterator[bytes]:  # chunked: no Content-Length for the server to trust
        for _ in range(60):
            yield chunk

    async with aiohttp.ClientSession() as anonymous:
        try:
            response = await anonymous.put(put_url, data=body(), skip_auto_headers=["Content-Type"])
            status = response.status
            assert status == 413 and "requestId" in await response.json()
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
            status = 413  # the server closed the connection after answering 413 mid-stream
        declared = await anonymous.put(put_url, data=b"\0" * 6_000_000)
        assert declared.status == 413
    growth = rss_bytes(server.pid) - before
    assert growth < 20 << 20, f"server RSS grew by {growth / 1e6:.1f} MB"
    assert (await api.post("/v1/media/output", json={"url": "media://big.bin"})).status == 404


async def test_rate_limit_429_with_headers(server: ServerProcess) -> None:
    async with aiohttp.ClientSession(server.url, headers={"Authorization": "Bearer key-c"}) as session:
        statuses = [(await session.get("/v1/jobs/00000000-0000-4000-8000-000000000001")).status for _ in range(60)]
        assert set(statuses) == {404}
        refused = await session.get("/v1/jobs/00000000-0000-4000-8000-000000000001")
        assert refused.status == 429
        assert refused.headers["X-RateLimit-Remaining"] == "0" and refused.headers["X-RateLimit-Limit"] == "60"
        assert 0 < int(refused.headers["Retry-After"]) <= 60
        assert int(refused.headers["X-RateLimit-Reset"]) >= int(time.time())
        assert set(await refused.json()) == {"requestId", "message"}
        other_route = await session.get("/v1/test")  # limits are per key and route
        assert other_route.status == 200


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/a.wav", "http://localhost:9/a.wav", "http://[::1]:9/a.wav", "http://10.1.2.3/a.wav",
    "http://192.168.0.10/a.wav", "http://169.254.169.254/latest/meta-data", "http://224.0.0.1/a.wav",
])
async def test_ssrf_refused(api: aiohttp.ClientSession, url: str) -> None:
    response = await api.post("/v1/diarize", json={**DIARIZE_NULLS, "url": url})
    assert response.status == 200
    job = await wait_for_job(api, (await response.json())["jobId"], 30)
    assert job["status"] == "failed"
    assert "non-public" in job["output"]["error"] and job["output"]["error"].startswith("Could not load audio")


async def test_redirect_to_private_refused() -> None:
    """A redirector the policy allows (standing in for a public host) that points into the LAN."""
    async def hop(request: web.Request) -> web.Response:
        target = {"/to-private": "http://10.0.0.7/x", "/to-loopback": "http://127.0.0.2:9/x",
                  "/to-metadata": "http://169.254.169.254/", "/loop": "/loop", "/to-file": "file:///etc/passwd"}
        raise web.HTTPFound(target[request.path])

    app = web.Application()
    app.router.add_get("/{name}", hop)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    policy = AddressPolicy(False, frozenset({"127.0.0.1"}))
    session = new_session(policy)
    try:
        for path, reason in [("to-private", "refused"), ("to-loopback", "refused"), ("to-metadata", "refused"),
                             ("loop", "too_many_redirects"), ("to-file", "refused")]:
            with pytest.raises(FetchError) as caught:
                await request_guarded(session, "GET", f"http://127.0.0.1:{port}/{path}", policy)
            assert caught.value.reason == reason, path
    finally:
        await session.close()
        await runner.cleanup()
