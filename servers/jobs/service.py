"""The job API's lifecycle: ``setup_jobs(app)`` adds its routes and owns its store, workers and tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any, AsyncIterator

from aiohttp import web

from diarflow.servers.jobs.fetch import new_session
from diarflow.servers.jobs.keys import KeyRing
from diarflow.servers.jobs.media import MediaStore, UrlSigner, load_or_create_secret
from diarflow.servers.jobs.ratelimit import RateLimiter
from diarflow.servers.jobs.routes import JOBS, JobsContext, add_routes
from diarflow.servers.jobs.runner import JobRunner
from diarflow.servers.jobs.settings import JobsSettings, default_data_dir
from diarflow.servers.jobs.store import JobStore
from diarflow.servers.jobs.webhooks import WebhookDispatcher, WebhookSecrets
from diarflow.servers.state import SETTINGS

__all__ = ["JOBS", "JobsSettings", "default_data_dir", "job_api_problems", "job_workers", "setup_jobs", "sweep"]

log = logging.getLogger("diarflow.jobs")

JOB_TASKS: web.AppKey[list[asyncio.Task[None]]] = web.AppKey("job_tasks")


def sweep(ctx: JobsContext, work_dir: Path) -> tuple[int, int]:
    """Delete jobs finished more than ``output_ttl_s`` ago and media older than ``media_ttl_s``.

    Returns the numbers of jobs and media objects removed.
    """
    now = time.time()
    expired = ctx.store.expired_jobs(now - ctx.settings.output_ttl_s)
    ctx.store.delete_jobs(expired)
    for job_id in expired:
        shutil.rmtree(work_dir / job_id, ignore_errors=True)
    old_media = ctx.store.expired_media(now - ctx.settings.media_ttl_s)
    for team, key, path in old_media:
        Path(path).unlink(missing_ok=True)
        ctx.store.delete_media(team, key)
    ctx.media.remove_partial_uploads(older_than=now - 3600)  # uploads cut off long ago
    ctx.limiter.prune()
    return len(expired), len(old_media)


async def _sweeper(ctx: JobsContext, work_dir: Path) -> None:
    while True:
        try:
            jobs, media = sweep(ctx, work_dir)
            if jobs or media:
                log.info("retention: deleted %d jobs and %d media objects", jobs, media)
        except Exception:
            log.exception("retention sweep failed")
        await asyncio.sleep(ctx.settings.sweep_interval_s)


def job_api_problems(app: web.Application) -> list[str]:
    """What keeps the job API from working right now (``[]`` when healthy), for ``/health``.

    Reports a failing store (e.g. disk full), too little free space in the data directory, and
    worker slots or background tasks that have stopped. Messages name no path or key.
    """
    if JOBS not in app:
        return []
    ctx = app[JOBS]
    problems = []
    if ctx.store.health.failing:
        problems.append(f"job store: writes failing ({ctx.store.health.last_error})")
    try:
        free_bytes = shutil.disk_usage(ctx.media.root).free
    except OSError as exc:
        problems.append(f"data directory: cannot read free space ({exc.strerror})")
    else:
        if free_bytes < ctx.settings.min_free_bytes:
            problems.append(f"data directory: {free_bytes >> 20} MiB free, below {ctx.settings.min_free_bytes >> 20} MiB")
    dead = ctx.runner.dead_slots()
    if dead:
        problems.append(f"job workers: {dead} of {ctx.runner.workers()['slots']} slots stopped")
    stopped = sum(1 for task in app.get(JOB_TASKS, []) if task.done())
    if stopped:
        problems.append(f"job API: {stopped} background tasks stopped (webhooks, retention)")
    return problems


def job_workers(app: web.Application) -> dict[str, Any] | None:
    """The job API's worker pool for ``/health`` (``{"backend", "location", "slots"}``); ``None`` before start-up."""
    return app[JOBS].runner.workers() if JOBS in app else None


def setup_jobs(app: web.Application) -> None:
    """Add the job API's routes and a cleanup context that owns its store, workers and tasks.

    Everything comes from ``app[SETTINGS]`` (``data_dir``, ``jobs``, ``model_dir``, ``auth_enabled``,
    ``api_keys``); the data directory defaults to :func:`default_data_dir`.
    """
    app.cleanup_ctx.append(_lifecycle)
    add_routes(app)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    server = app[SETTINGS]
    settings = server.jobs
    root = Path(server.data_dir) if server.data_dir is not None else default_data_dir()
    root.mkdir(parents=True, exist_ok=True)
    work_dir = root / "work"
    store = JobStore(root / "jobs.sqlite3")
    media = MediaStore(root / "media")
    removed = media.remove_partial_uploads()  # no upload is in flight before we serve: all are leftovers
    if removed:
        log.info("removed %d partial uploads left by an earlier run", removed)
    http = new_session(settings.address_policy)
    signer = UrlSigner(load_or_create_secret(root / "server_secret"))
    runner = JobRunner(store, media, work_dir, settings, server.model_dir, signer, server.base_url)
    ctx = JobsContext(settings, store, media, signer, KeyRing.from_env(server.auth_enabled, server.api_keys),
                      RateLimiter(max_windows=settings.rate_limit_windows), runner)
    app[JOBS] = ctx
    dispatcher = WebhookDispatcher(store, WebhookSecrets.load(root), settings, http, runner.on_terminal)
    try:
        await runner.start()
    except BaseException:  # e.g. no Ray cluster at --ray-address: close what was opened
        await http.close()
        store.close()
        raise
    tasks = [asyncio.create_task(dispatcher.run()), asyncio.create_task(_sweeper(ctx, work_dir))]
    app[JOB_TASKS] = tasks
    workers = runner.workers()
    log.info("job API ready: data in %s, %d %s workers (%s); workers fetch uploads from %s", root,
             workers["slots"], workers["backend"], workers["location"], server.base_url)
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await dispatcher.close()
        await runner.stop()
        await http.close()
        store.close()
