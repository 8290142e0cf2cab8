"""The aiohttp application: ``make_app(settings)`` wires resources and routes; no diarization logic here."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

from aiohttp import web
from threadpoolctl import threadpool_limits

from diarflow import __version__
from diarflow.resources import load_resources
from diarflow.servers.access_log import RedactingAccessLogger
from diarflow.servers.jobs.service import job_api_problems, job_workers, setup_jobs
from diarflow.servers.state import RESOURCES, SETTINGS, STARTED_AT, ServerSettings
from diarflow.servers.stream import active_sessions, setup_stream

__all__ = ["ServerSettings", "make_app", "run_server", "RESOURCES", "SETTINGS"]

log = logging.getLogger("diarflow.server")


async def _resources_ctx(app: web.Application) -> AsyncIterator[None]:
    """Load (installing on first use) the models once, off the event loop, shared by every request."""
    settings = app[SETTINGS]
    # one thread per model call: the stream pool (one thread per core) runs sessions in parallel; a
    # second level of model threads only added hand-offs (capacity 48-56 sessions instead of 32-48)
    app[RESOURCES] = await asyncio.to_thread(load_resources, settings.model_dir, 1)
    app[STARTED_AT] = time.monotonic()
    log.info("models loaded")
    yield


async def health(request: web.Request) -> web.Response:
    """``GET /health``: 200 ``ok``, or 503 ``degraded`` with the ``problems`` found (store, disk, workers);
    ``job_workers`` says where jobs run (``{"backend": "local"|"ray", "location", "slots"}``)."""
    app = request.app
    problems = job_api_problems(app)
    return web.json_response({
        "status": "degraded" if problems else "ok",
        "problems": problems,
        "version": __version__,
        "models_loaded": RESOURCES in app,
        "uptime_s": round(time.monotonic() - app[STARTED_AT], 3),
        "sessions": active_sessions(app),
        "job_workers": job_workers(app),
    }, status=503 if problems else 200)


def make_app(settings: ServerSettings | None = None) -> web.Application:
    """Build the application; models load in its startup context."""
    app = web.Application(client_max_size=1 << 20)
    app[SETTINGS] = settings or ServerSettings()
    app.cleanup_ctx.append(_resources_ctx)
    app.router.add_get("/health", health)
    setup_stream(app)
    setup_jobs(app)
    return app


def run_server(settings: ServerSettings) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM close open connections cleanly)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("diarflow %s listening on http://%s:%d", __version__, settings.host, settings.port)
    # sessions run in parallel on the model threads; a multi-threaded BLAS would spin on the same cores
    threadpool_limits(limits=1, user_api="blas")
    web.run_app(make_app(settings), host=settings.host, port=settings.port, print=None,
                access_log_class=RedactingAccessLogger, shutdown_timeout=10.0)
