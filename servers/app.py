"""The aiohttp application: ``make_app(settings)`` wires resources and routes; no diarization logic here."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Mapping

from aiohttp import web
from threadpoolctl import threadpool_limits

from diarflow import __version__
from diarflow.operators.models import Resources
from diarflow.servers.jobs import JobsSettings, setup_jobs

__all__ = ["ServerSettings", "make_app", "run_server", "RESOURCES"]

log = logging.getLogger("diarflow.server")

RESOURCES = web.AppKey("resources", Resources)
SETTINGS: web.AppKey["ServerSettings"] = web.AppKey("settings")
STARTED_AT = web.AppKey("started_at", float)


@dataclass(frozen=True)
class ServerSettings:
    """Everything the server needs; defaults are a local, auth-free server on 127.0.0.1:8000."""

    host: str = "127.0.0.1"
    port: int = 8000
    model_dir: Path | None = None
    auth_enabled: bool = False
    api_keys: Mapping[str, str] = field(default_factory=dict)  # key -> team; empty: $DIARFLOW_API_KEYS
    idle_timeout_s: float = 60.0  # live stream: no frame for this long finalises the session
    max_session_s: float = 7200.0  # live stream: audio per session before it is finalised
    heartbeat_s: float = 30.0  # live stream: WebSocket ping interval
    data_dir: Path | None = None  # job API store, media, secrets; None: $DIARFLOW_DATA_DIR or ~/.local/share/diarflow
    jobs: JobsSettings = field(default_factory=JobsSettings)  # job API limits, retention, retries

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")


async def _resources_ctx(app: web.Application) -> AsyncIterator[None]:
    """Load (installing on first use) the models once, off the event loop, shared by every request."""
    settings = app[SETTINGS]
    # one thread per model call: the stream pool (one thread per core) runs sessions in parallel; a
    # second level of model threads only added hand-offs (capacity 48-56 sessions instead of 32-48)
    app[RESOURCES] = await asyncio.to_thread(Resources.load, settings.model_dir, 1)
    app[STARTED_AT] = time.monotonic()
    log.info("models loaded")
    yield


async def health(request: web.Request) -> web.Response:
    from .stream import active_sessions  # stream.py imports this module's app keys

    app = request.app
    return web.json_response({
        "status": "ok",
        "version": __version__,
        "models_loaded": RESOURCES in app,
        "uptime_s": round(time.monotonic() - app[STARTED_AT], 3),
        "sessions": active_sessions(app),
    })


def make_app(settings: ServerSettings | None = None) -> web.Application:
    """Build the application; models load in its startup context."""
    app = web.Application(client_max_size=1 << 20)
    app[SETTINGS] = settings or ServerSettings()
    app.cleanup_ctx.append(_resources_ctx)
    app.router.add_get("/health", health)
    from .stream import setup_stream  # stream.py imports this module's app keys

    setup_stream(app)
    settings = app[SETTINGS]
    setup_jobs(app, settings.data_dir, settings.jobs, settings.model_dir, settings.auth_enabled,
               settings.api_keys)
    return app


def run_server(settings: ServerSettings) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM close open connections cleanly)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("diarflow %s listening on http://%s:%d", __version__, settings.host, settings.port)
    # sessions run in parallel on the model threads; a multi-threaded BLAS would spin on the same cores
    threadpool_limits(limits=1, user_api="blas")
    web.run_app(make_app(settings), host=settings.host, port=settings.port, print=None,
                access_log=None, shutdown_timeout=10.0)
