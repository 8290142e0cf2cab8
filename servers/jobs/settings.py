"""Tunables of the job API (limits, retention, retries); defaults follow the contract."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diarflow.servers.jobs.fetch import AddressPolicy

__all__ = ["JobsSettings", "default_data_dir"]


def default_data_dir() -> Path:
    """``$DIARFLOW_DATA_DIR``, else ``$XDG_DATA_HOME/diarflow`` (``~/.local/share/diarflow``)."""
    explicit = os.environ.get("DIARFLOW_DATA_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "diarflow"


@dataclass(frozen=True)
class JobsSettings:
    """Limits and timings of the job API.

    Parameters
    ----------
    workers
        Worker processes running jobs (each loads the models once); ``0`` = one per CPU core.
    upload_max_bytes
        Largest accepted upload or download, bytes (contract: 1 GiB); larger ones are refused while streaming.
    voiceprint_max_bytes
        Largest voiceprint input, bytes (contract: 100 MiB).
    json_max_bytes
        Largest JSON request body, bytes.
    rate_limit_post, rate_limit_get
        Requests per authenticated key (or, for presigned URLs and with auth off, per client address)
        and route in a sliding 60 s window.
    auth_failures_per_min
        Failed authentications per client address in a sliding 60 s window; past it every request
        from that address that needs a key is answered 429 (key guessing is throttled).
    rate_limit_windows
        Most rate-limit windows kept in memory (least recently used forgotten first).
    body_read_timeout_s
        Longest wait for the next piece of a request body (JSON or upload), seconds; a client that
        stalls longer gets 408 and the connection is closed.
    min_free_bytes
        Free space under the data directory below which ``/health`` reports ``degraded``.
    store_retry_max_s
        Longest pause between two attempts to record an outcome while the store fails (disk full).
    webhook_retry_delays_s
        Delay before each retry of a failed webhook delivery, seconds (contract: 0, 60, 300).
    webhook_timeout_s
        A webhook answer with 2xx within this many seconds is a success.
    output_ttl_s
        Finished jobs (and their outputs) are deleted this long after completion (24 h).
    media_ttl_s
        Uploaded media are deleted this long after upload (48 h).
    sweep_interval_s
        Period of the retention sweeper, seconds.
    upload_url_ttl_s
        Lifetime of presigned upload/download URLs, seconds.
    fetch_timeout_s
        Total time allowed to download a remote input, seconds.
    max_audio_s
        Longest accepted audio (24 h).
    voiceprint_max_audio_s
        Longest voiceprint input audio (30 s).
    allow_private_urls
        Let downloads and webhooks reach loopback/private addresses; ``None`` reads
        ``DIARFLOW_ALLOW_PRIVATE_URLS``.
    allowed_addresses
        Single non-public addresses that outbound requests may still reach (e.g. a LAN webhook receiver).
    backend
        Where jobs run: ``"local"`` worker processes, or ``"ray"`` actors (``pip install 'diarflow[ray]'``).
    ray_address
        With ``backend="ray"``: the cluster to join (``"auto"``, ``host:port``); ``None`` starts a local Ray.
        ``workers=0`` then means one actor per CPU of the cluster.
    """

    workers: int = 0
    upload_max_bytes: int = 1 << 30
    voiceprint_max_bytes: int = 100 << 20
    json_max_bytes: int = 2 << 20
    rate_limit_post: int = 100
    rate_limit_get: int = 300
    webhook_retry_delays_s: tuple[float, ...] = (0.0, 60.0, 300.0)
    webhook_timeout_s: float = 10.0
    output_ttl_s: float = 24 * 3600.0
    media_ttl_s: float = 48 * 3600.0
    sweep_interval_s: float = 600.0
    upload_url_ttl_s: float = 3600.0
    fetch_timeout_s: float = 3600.0
    max_audio_s: float = 24 * 3600.0
    voiceprint_max_audio_s: float = 30.0
    allow_private_urls: bool | None = None
    allowed_addresses: tuple[str, ...] = ()
    backend: str = "local"
    ray_address: str | None = None
    auth_failures_per_min: int = 30
    rate_limit_windows: int = 10_000
    body_read_timeout_s: float = 30.0
    min_free_bytes: int = 64 << 20
    store_retry_max_s: float = 2.0

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = one per core), got {self.workers}")
        if self.upload_max_bytes < 1:
            raise ValueError(f"upload_max_bytes must be >= 1, got {self.upload_max_bytes}")
        if self.backend not in ("local", "ray"):
            raise ValueError(f"backend must be 'local' or 'ray', got {self.backend!r}")
        if self.ray_address is not None and self.backend != "ray":
            raise ValueError("ray_address needs backend='ray' (hint: diarflow serve --workers ray --ray-address ...)")
        for name in ("body_read_timeout_s", "store_retry_max_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.auth_failures_per_min < 1 or self.rate_limit_windows < 1:
            raise ValueError("auth_failures_per_min and rate_limit_windows must be >= 1")
        if any(d < 0 for d in self.webhook_retry_delays_s):
            raise ValueError(f"webhook_retry_delays_s must be >= 0, got {self.webhook_retry_delays_s}")

    @property
    def worker_count(self) -> int:
        return self.workers or (os.cpu_count() or 1)

    @property
    def private_urls_allowed(self) -> bool:
        if self.allow_private_urls is not None:
            return self.allow_private_urls
        return os.environ.get("DIARFLOW_ALLOW_PRIVATE_URLS", "").lower() in {"1", "true", "yes"}

    @property
    def address_policy(self) -> AddressPolicy:
        from diarflow.servers.jobs.fetch import AddressPolicy

        return AddressPolicy(self.private_urls_allowed, frozenset(self.allowed_addresses))
