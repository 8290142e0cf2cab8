"""Application state shared by the server's parts: settings and the typed ``AppKey``s (imports no route module)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping
from urllib.parse import urlsplit

from aiohttp import web

from diarflow.operators.models import Resources
from diarflow.servers.jobs.settings import JobsSettings

if TYPE_CHECKING:
    from diarflow.servers.stream import StreamRegistry

__all__ = ["RESOURCES", "SETTINGS", "STARTED_AT", "STREAM", "ServerSettings"]


@dataclass(frozen=True)
class ServerSettings:
    """Everything the server needs; defaults are a local, auth-free server on 127.0.0.1:8000.

    Parameters
    ----------
    host, port
        Where to listen.
    model_dir
        Model folder; ``None``: the verified cache.
    auth_enabled
        Require API keys on both doors (job API bearer, live ``?token=``).
    api_keys
        Key -> team; empty: ``$DIARFLOW_API_KEYS`` plus the file ``$DIARFLOW_API_KEYS_FILE``.
    idle_timeout_s
        Live stream: no audio and no client message for this long finalises the session (the
        WebSocket heartbeat does not count as activity).
    start_timeout_s
        Live stream: a connection that sends no ``start`` within this long is closed (1008).
    send_timeout_s
        Live stream: a message the client does not take within this long ends the session (a
        client that stops reading cannot pin it).
    max_live_sessions
        Live stream: open connections beyond this are answered ``error`` + 1013 (try again later).
    max_session_s
        Live stream: audio per session before it is finalised.
    heartbeat_s
        Live stream: WebSocket ping interval.
    resume_window_s
        Live stream: how long a session whose connection dropped waits for its client to resume it.
    data_dir
        Job API store, media, secrets; ``None``: ``$DIARFLOW_DATA_DIR`` or ``~/.local/share/diarflow``.
        When set, live sessions also persist their checkpoints in ``<data_dir>/live`` (resume after a
        restart).
    jobs
        Job API limits, retention, retries.
    public_url
        The server's base URL as job workers reach it (``http(s)://host[:port][/prefix]``): they fetch
        ``media://`` inputs from its presigned download URLs. ``None``: ``http://<host>:<port>``, with
        ``127.0.0.1`` for a wildcard host (right when the workers run on this machine; a Ray cluster of
        several nodes needs this machine's address as the other nodes see it). With ``port=0`` (an
        ephemeral port, known only once bound) set it, or uploads cannot reach the workers.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    model_dir: Path | None = None
    auth_enabled: bool = False
    api_keys: Mapping[str, str] = field(default_factory=dict)
    idle_timeout_s: float = 60.0
    start_timeout_s: float = 10.0
    send_timeout_s: float = 20.0
    max_live_sessions: int = 64
    max_session_s: float = 7200.0
    heartbeat_s: float = 30.0
    resume_window_s: float = 60.0
    data_dir: Path | None = None
    jobs: JobsSettings = field(default_factory=JobsSettings)
    public_url: str | None = None

    def __post_init__(self) -> None:
        if self.public_url is not None:
            parsed = urlsplit(self.public_url)
            if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.query or parsed.fragment:
                raise ValueError(f"public_url must be http(s)://host[:port][/prefix] without query, got "
                                 f"{self.public_url!r} (hint: --public-url http://10.0.0.5:8000)")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        for name in ("idle_timeout_s", "start_timeout_s", "send_timeout_s", "heartbeat_s", "max_session_s",
                     "resume_window_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.max_live_sessions < 1:
            raise ValueError(f"max_live_sessions must be >= 1, got {self.max_live_sessions}")

    @property
    def base_url(self) -> str:
        """``public_url`` without a trailing ``/``, or the URL derived from ``host`` and ``port``."""
        if self.public_url is not None:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"


RESOURCES = web.AppKey("resources", Resources)
SETTINGS = web.AppKey("settings", ServerSettings)
STARTED_AT = web.AppKey("started_at", float)
STREAM: web.AppKey[StreamRegistry] = web.AppKey("stream")
