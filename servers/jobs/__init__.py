"""The pyannoteAI-compatible job API: ``setup_jobs(app, ...)`` adds its routes and lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import AsyncIterator, Mapping

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

__all__ = ["JOBS", "JobsSettings", "default_data_dir", "setup_jobs", "sweep"]

log = logging.getLogger("diarflow.jobs")


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
    for part in ctx.media.root.glob("*/*.part"):  # uploads cut off by a crash
        try:
            if part.stat().st_mtime < now - 3600:
                part.unlink()
        except OSError:
            pass
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


def setup_jobs(app: web.Application, data_dir: Path | None, settings: JobsSettings,
               model_dir: Path | None, auth_enabled: bool, api_keys: Mapping[str, str] | None = None) -> None:
    """Add the job API's routes and a cleanup context that owns its store, workers and tasks.

    Parameters
    ----------
    app
        The application being built by ``make_app``.
    data_dir
        Folder of the SQLite store, uploaded media, work files and secrets (default
        :func:`default_data_dir`).
    settings
        Limits and timings.
    model_dir
        Model folder handed to the worker processes.
    auth_enabled
        Require API keys and isolate teams.
    api_keys
        Key -> team; empty or ``None``: ``$DIARFLOW_API_KEYS``.
    """
    root = Path(data_dir) if data_dir is not None else default_data_dir()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        root.mkdir(parents=True, exist_ok=True)
        work_dir = root / "work"
        store = JobStore(root / "jobs.sqlite3")
        media = MediaStore(root / "media")
        http = new_session(settings.address_policy)
        runner = JobRunner(store, media, work_dir, settings, model_dir, http)
        ctx = JobsContext(settings, store, media, UrlSigner(load_or_create_secret(root / "server_secret")),
                          KeyRing.from_env(auth_enabled, api_keys), RateLimiter(), runner)
        app[JOBS] = ctx
        dispatcher = WebhookDispatcher(store, WebhookSecrets.load(root), settings, http, runner.on_terminal)
        try:
            await runner.start()
        except BaseException:  # e.g. no Ray cluster at --ray-address: close what was opened
            await http.close()
            store.close()
            raise
        tasks = [asyncio.create_task(dispatcher.run()), asyncio.create_task(_sweeper(ctx, work_dir))]
        log.info("job API ready: data in %s, %d workers", root, settings.worker_count)
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

    app.cleanup_ctx.append(lifecycle)
    add_routes(app)
