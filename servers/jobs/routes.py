"""HTTP handlers of the pyannoteAI-compatible job API (translation only: the work is in the runner)."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, AsyncIterator, Awaitable, Callable

from aiohttp import web

from diarflow.servers.jobs.keys import KeyRing
from diarflow.servers.jobs.media import DOWNLOAD_ROUTE, UPLOAD_ROUTE, MediaStore, UrlSigner
from diarflow.servers.jobs.ratelimit import RateLimiter, Verdict
from diarflow.servers.jobs.runner import JobRunner
from diarflow.servers.jobs.settings import JobsSettings
from diarflow.servers.jobs.store import TERMINAL, Job, JobStore, StoreError
from diarflow.servers.jobs.validation import (
    ValidationFailed,
    parse_diarize,
    parse_identify,
    parse_media_key,
    parse_voiceprint,
)

__all__ = ["JobsContext", "JOBS", "add_routes"]

log = logging.getLogger("diarflow.jobs")

_WRITE_BATCH_BYTES = 1 << 20
STATUSES = frozenset({"created", "running", "succeeded", "failed", "canceled"})
AUTH_FAILURES = "auth-failures"  # the rate-limit route under which failed authentications are counted
STORE_RETRY_AFTER_S = 5


@dataclass
class JobsContext:
    """Everything the handlers share (one per application)."""

    settings: JobsSettings
    store: JobStore
    media: MediaStore
    signer: UrlSigner
    keys: KeyRing
    limiter: RateLimiter
    runner: JobRunner


JOBS = web.AppKey("jobs", JobsContext)


class ApiError(Exception):
    """A non-validation error answered as ``{"requestId", "message"}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        self.close = close


def _error(status: int, message: str, headers: dict[str, str] | None = None, close: bool = False) -> web.Response:
    response = web.json_response({"requestId": str(uuid.uuid4()), "message": message}, status=status,
                                 headers=headers)
    if close:  # the request body was not read to its end: the connection cannot carry another request
        response.force_close()
    return response


def _store_unavailable() -> ApiError:
    return ApiError(503, "The job store is temporarily unavailable (disk full or I/O error); retry later",
                    {"Retry-After": str(STORE_RETRY_AFTER_S)})


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def job_view(job: Job) -> dict[str, Any]:
    """The contract's job object (never ``"output": null``)."""
    body: dict[str, Any] = {"jobId": job.id, "status": job.status, "createdAt": iso(job.created_at),
                            "updatedAt": iso(job.updated_at)}
    if job.status in TERMINAL:
        body["output"] = job.output if job.output_json is not None else {"error": "no output recorded"}
    elif job.status == "running":
        body["progress"] = float(job.progress or 0.0)
    return body


def job_response(job: Job) -> web.Response:
    """``job_view`` as a response; a stored output is spliced in as text (large outputs are never re-parsed)."""
    if job.status not in TERMINAL or job.output_json is None:
        return web.json_response(job_view(job))
    head = json.dumps({"jobId": job.id, "status": job.status, "createdAt": iso(job.created_at),
                       "updatedAt": iso(job.updated_at)})
    return web.Response(body=f'{head[:-1]}, "output": {job.output_json}}}'.encode(), content_type="application/json")


Handler = Callable[[web.Request, JobsContext, str], Awaitable[web.StreamResponse]]


def _rate_headers(verdict: Verdict) -> dict[str, str]:
    headers = {"X-RateLimit-Limit": str(verdict.limit), "X-RateLimit-Remaining": str(verdict.remaining)}
    if not verdict.allowed:
        headers.update({"X-RateLimit-Reset": str(verdict.reset_epoch_s), "Retry-After": str(verdict.retry_after_s)})
    return headers


def _admit(request: web.Request, ctx: JobsContext, kind: str, authenticate: bool) -> tuple[str | None, Verdict]:
    """Authenticate and rate-limit one request: ``(team or None for 401, the verdict to report)``.

    Limits are counted per authenticated key (however the header is spelled), or per client address
    for presigned URLs and with auth off. Failed authentications count per client address: past
    ``auth_failures_per_min`` every request from that address that needs a key gets 429, so key
    guessing is throttled and junk keys create no state of their own.
    """
    address = f"address:{request.remote or 'unknown'}"
    limit = ctx.settings.rate_limit_get if kind == "get" else ctx.settings.rate_limit_post
    resource = request.match_info.route.resource
    route = f"{request.method} {resource.canonical if resource is not None else request.path}"
    if not authenticate:
        return "", ctx.limiter.check(address, route, limit)
    failures = ctx.settings.auth_failures_per_min
    guarded = ctx.limiter.peek(address, AUTH_FAILURES, failures)
    if not guarded.allowed:
        return "", guarded
    caller = ctx.keys.caller_of(request.headers.get("Authorization"))
    if caller is None:
        return None, ctx.limiter.check(address, AUTH_FAILURES, failures)
    bucket = f"key:{caller.key_id}" if ctx.keys.enabled else address
    return caller.team, ctx.limiter.check(bucket, route, limit)


def api(kind: str, authenticate: bool = True
        ) -> Callable[[Handler], Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """Rate-limit (``kind`` ``"get"``/``"post"``), authenticate, and turn errors into contract bodies.

    Every answer, 401s and 5xx included, carries the ``X-RateLimit-*`` headers and, but for 400s, the
    contract's ``{"requestId", "message"}`` body. Routes with ``authenticate=False`` (presigned media
    URLs) authorise themselves and get team ``""``.
    """

    def wrap(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            ctx = request.app[JOBS]
            team, verdict = _admit(request, ctx, kind, authenticate)
            headers = _rate_headers(verdict)
            if not verdict.allowed:
                return _error(429, "Too many requests; retry later", headers)
            try:
                if team is None:
                    raise ApiError(401, "Invalid or missing API key")
                try:
                    response = await handler(request, ctx, team)
                except StoreError as exc:
                    log.warning("%s %s: %s", request.method, request.path, exc)
                    raise _store_unavailable() from None
            except ValidationFailed as exc:
                response = web.json_response({"message": str(exc), "errors": exc.errors}, status=400)
            except ApiError as exc:
                response = _error(exc.status, str(exc), exc.headers, exc.close)
            except Exception:
                log.exception("%s %s: unexpected error", request.method, request.path)
                response = _error(500, "Internal server error")
            response.headers.update(headers)
            return response

        return handle

    return wrap


async def body_chunks(request: web.Request, timeout_s: float) -> AsyncIterator[bytes]:
    """The request body as it arrives; 408 when the next piece takes longer than ``timeout_s``."""
    while True:
        try:
            async with asyncio.timeout(timeout_s):
                chunk = await request.content.readany()
        except TimeoutError:
            raise ApiError(408, f"Request body stalled: nothing received for {timeout_s:g} s", close=True) from None
        if not chunk:
            return
        yield chunk


async def read_json(request: web.Request, max_bytes: int, timeout_s: float) -> Any:
    """The JSON body, read with a size cap (413 past it) without trusting Content-Length.

    Raises
    ------
    ApiError
        413 past ``max_bytes``; 408 when the body stalls for ``timeout_s``.
    ValidationFailed
        Empty, not JSON, or nested deeper than the parser can follow.
    """
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(413, f"Request body larger than {max_bytes} bytes", close=True)
    data = bytearray()
    async for chunk in body_chunks(request, timeout_s):
        data += chunk
        if len(data) > max_bytes:
            raise ApiError(413, f"Request body larger than {max_bytes} bytes", close=True)
    if not data.strip():
        raise ValidationFailed([{"field": "body", "message": "a JSON body is required"}])
    try:
        return json.loads(data)
    except RecursionError:
        raise ValidationFailed([{"field": "body", "message": "the request body is nested too deeply"}]) from None
    except ValueError:
        raise ValidationFailed([{"field": "body", "message": "the request body is not valid JSON"}]) from None


async def _json_body(request: web.Request, ctx: JobsContext) -> Any:
    return await read_json(request, ctx.settings.json_max_bytes, ctx.settings.body_read_timeout_s)


def _visible(ctx: JobsContext, job_id: str, team: str) -> Job:
    job = ctx.store.get_job(job_id, team)
    if job is None or (job.finished_at is not None and job.finished_at < time.time() - ctx.settings.output_ttl_s):
        raise ApiError(404, "Job not found")
    return job


@api("get")
async def test_key(request: web.Request, ctx: JobsContext, team: str) -> web.Response:
    return web.json_response({"status": "OK", "message": "Test connection successful"})


async def _submit(request: web.Request, ctx: JobsContext, team: str, kind: str,
                  parse: Callable[[Any], dict[str, Any]]) -> web.Response:
    params = parse(await _json_body(request, ctx))
    webhook, status_only = params.pop("webhook"), params.pop("webhookStatusOnly")
    job = ctx.store.create_job(team, kind, params, webhook, status_only)
    ctx.runner.submit(job.id)
    return web.json_response({"jobId": job.id, "status": job.status})


@api("post")
async def diarize(request: web.Request, ctx: JobsContext, team: str) -> web.Response:
    return await _submit(request, ctx, team, "diarize", parse_diarize)


@api("post")
async def voiceprint(request: web.Request, ctx: JobsContext, team: str) -> web.Response:
    return await _submit(request, ctx, team, "voiceprint", parse_voiceprint)


@api("post")
async def identify(request: web.Request, ctx: JobsContext, team: str) -> web.Response:
    return await _submit(request, ctx, team, "identify", parse_identify)


@api("get")
async def get_job(request: web.Request, ctx: JobsContext, team: str) -> web.Response:
    return job_response(_visible(ctx, request.match_info["job_id"], team))


@api("post")
async def cancel_job(request: web.Request, ctx: JobsContext, team: str) -> web.Response:
    job = _visible(ctx, request.match_info["job_id"], team)
    if job.status in TERMINAL:
        raise ApiError(409, f"Job already {job.status}; only created or running jobs can be canceled")
    ctx.runner.finish(job, "canceled", {"error": "Job canceled by the client"})
    return job_response(_visible(ctx, job.id, team))


@api("get")
async def list_jobs(request: web.Request, ctx: JobsContext, team: str) -> web.Response:
    errors = []
    try:
        limit = int(request.query.get("limit", "10"))
        if not 1 <= limit <= 100:
            raise ValueError
    except ValueError:
        errors.append({"field": "limit", "message": "limit must be an integer in [1, 100]"})
        limit = 10
    status = request.query.get("status") or None
    if status is not None and status not in STATUSES:
        errors.append({"field": "status", "message": f"status must be one of {sorted(STATUSES)}"})
    if errors:
        raise ValidationFailed(errors)
    horizon = time.time() - ctx.settings.output_ttl_s
    jobs, cursor = ctx.store.list_jobs(team, limit, request.query.get("cursor") or None, status)
    items = [{"id": j.id, "status": j.status, "createdAt": iso(j.created_at)}
             for j in jobs if j.finished_at is None or j.finished_at >= horizon]
    return web.json_response({"items": items, "nextCursor": cursor})


def _absolute(request: web.Request, path: str) -> str:
    return str(request.url.origin().join(request.app.router["jobs_media_" + path.split("/")[0]].url_for(
        token=path.split("/", 1)[1])))


@api("post")
async def media_input(request: web.Request, ctx: JobsContext, team: str) -> web.Response:
    key = parse_media_key(await _json_body(request, ctx))
    token = ctx.signer.sign("put", team, key, ctx.settings.upload_url_ttl_s)
    return web.json_response({"url": _absolute(request, f"upload/{token}")}, status=201)


@api("post")
async def media_output(request: web.Request, ctx: JobsContext, team: str) -> web.Response:
    key = parse_media_key(await _json_body(request, ctx))
    found = ctx.store.get_media(team, key)
    if found is None or not Path(found[0]).is_file():
        raise ApiError(404, "Media not found")
    token = ctx.signer.sign("get", team, key, ctx.settings.upload_url_ttl_s)
    return web.json_response({"url": _absolute(request, f"download/{token}")}, status=201)


def _disk_full(exc: OSError) -> ApiError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ApiError(507, "Not enough storage on the server for this upload; retry later",
                        {"Retry-After": str(STORE_RETRY_AFTER_S)}, close=True)
    return ApiError(500, f"Could not store the upload ({exc.strerror or type(exc).__name__})", close=True)


async def _write(out: IO[bytes], data: bytes) -> None:
    """Write off the event loop; a failed write (disk full) becomes the contract's error."""
    def write_through() -> None:  # flushed here, so that closing the file has nothing left to fail on
        out.write(data)
        out.flush()

    try:
        await asyncio.to_thread(write_through)
    except OSError as exc:
        raise _disk_full(exc) from None


async def _receive_upload(request: web.Request, ctx: JobsContext, team: str, key: str) -> tuple[Path, int]:
    """Stream the body into a ``.part`` file; returns it and its size. The file is removed on any error."""
    cap = ctx.settings.upload_max_bytes
    try:
        temp, out = ctx.media.open_temp(team, key)
    except OSError as exc:
        raise _disk_full(exc) from None
    size, pending = 0, bytearray()
    try:
        with out:
            async for chunk in body_chunks(request, ctx.settings.body_read_timeout_s):
                size += len(chunk)
                if size > cap:
                    raise ApiError(413, f"Upload larger than {cap} bytes", close=True)
                pending += chunk
                if len(pending) >= _WRITE_BATCH_BYTES:
                    await _write(out, bytes(pending))
                    pending.clear()
            if pending:
                await _write(out, bytes(pending))
    except BaseException:  # the client left, too large, stalled, disk full: nothing of it stays
        temp.unlink(missing_ok=True)
        raise
    return temp, size


@api("post", authenticate=False)
async def media_upload(request: web.Request, ctx: JobsContext, _: str) -> web.Response:
    """``PUT`` of a presigned URL: streamed to disk, refused with 413 as soon as it passes the cap.

    A full disk answers 507 with ``Retry-After``; nothing of the upload is left behind.
    """
    owner = ctx.signer.verify(request.match_info["token"], "put")
    if owner is None:
        return _error(401, "Invalid or expired upload URL")
    team, key = owner
    cap = ctx.settings.upload_max_bytes
    if request.content_length is not None and request.content_length > cap:
        return _error(413, f"Upload larger than {cap} bytes", close=True)
    temp, size = await _receive_upload(request, ctx, team, key)
    final = ctx.media.path_of(team, key)
    try:
        os.replace(temp, final)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise _disk_full(exc) from None
    try:
        ctx.store.put_media(team, key, str(final), size)
    except StoreError:
        final.unlink(missing_ok=True)  # no row, no file: the client is told to retry the whole upload
        raise
    return web.Response(status=200)


@api("get", authenticate=False)
async def media_download(request: web.Request, ctx: JobsContext, _: str) -> web.StreamResponse:
    owner = ctx.signer.verify(request.match_info["token"], "get")
    if owner is None:
        return _error(401, "Invalid or expired download URL")
    found = ctx.store.get_media(*owner)
    if found is None or not Path(found[0]).is_file():
        return _error(404, "Media not found")
    return web.FileResponse(found[0], headers={"Content-Type": "application/octet-stream"})


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/v1/test", test_key)
    router.add_post("/v1/media/input", media_input)
    router.add_post("/v1/media/output", media_output)
    router.add_put(UPLOAD_ROUTE, media_upload, name="jobs_media_upload")
    router.add_get(DOWNLOAD_ROUTE, media_download, name="jobs_media_download")
    router.add_post("/v1/diarize", diarize)
    router.add_post("/v1/voiceprint", voiceprint)
    router.add_post("/v1/identify", identify)
    router.add_get("/v1/jobs/{job_id}", get_job)
    router.add_delete("/v1/jobs/{job_id}", cancel_job)
    router.add_get("/v2/jobs", list_jobs)
