"""Run a real server in a child process for tests and benchmarks (``python -m diarflow.servers.jobs.testing``)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import fields
from pathlib import Path
from typing import Any

__all__ = ["ServerProcess", "free_port", "rss_bytes"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux ``/proc``), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def children_of(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux ``/proc``)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


class ServerProcess:
    """A ``diarflow`` server on 127.0.0.1 in a child process, configured by keyword arguments.

    Parameters
    ----------
    data_dir
        The job API's data folder (kept across :meth:`restart`).
    env
        Extra environment variables.
    jobs
        :class:`JobsSettings` fields.
    server
        Other :class:`ServerSettings` fields (``auth_enabled``, ``api_keys``, ``model_dir``...).
    """

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, jobs: dict[str, Any] | None = None,
                 **server: Any) -> None:
        self.port = free_port()
        self.config = {"data_dir": str(data_dir), "port": self.port, "jobs": jobs or {}, **server}
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(data_dir) / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 90.0) -> ServerProcess:
        Path(self.config["data_dir"]).mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "diarflow.servers.jobs.testing", json.dumps(self.config)],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{self.log_path.read_text()[-4000:]}")
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _main(config_json: str) -> None:
    import logging

    from aiohttp import web

    from diarflow.servers.app import ServerSettings, make_app
    from diarflow.servers.jobs.settings import JobsSettings

    config = json.loads(config_json)
    jobs = config.pop("jobs", {})
    for name in ("webhook_retry_delays_s", "allowed_addresses"):
        if name in jobs:
            jobs[name] = tuple(jobs[name])
    known = {f.name for f in fields(ServerSettings)}
    kwargs = {k: v for k, v in config.items() if k in known}
    for name in ("data_dir", "model_dir"):
        if kwargs.get(name):
            kwargs[name] = Path(kwargs[name])
    settings = ServerSettings(host="127.0.0.1", jobs=JobsSettings(**jobs), **{k: v for k, v in kwargs.items()
                                                                               if k != "host"})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    web.run_app(make_app(settings), host="127.0.0.1", port=settings.port, print=None, access_log=None,
                shutdown_timeout=5.0)


if __name__ == "__main__":
    _main(sys.argv[1])


async def upload(session: Any, key: str, path: Path) -> None:
    """``POST /v1/media/input`` then the presigned ``PUT`` (no Authorization, no Content-Type)."""
    import aiohttp

    response = await session.post("/v1/media/input", json={"url": key})
    assert response.status == 201, await response.text()
    put_url = (await response.json())["url"]
    async with aiohttp.ClientSession() as anonymous:
        with open(path, "rb") as f:
            put = await anonymous.put(put_url, data=f.read(), skip_auto_headers=["Content-Type"])
        assert put.status == 200, await put.text()


async def wait_for_job(session: Any, job_id: str, timeout_s: float = 120.0, period_s: float = 0.25) -> dict[str, Any]:
    """Poll ``GET /v1/jobs/{id}`` until the job is terminal; returns the job object."""
    import asyncio

    deadline = time.monotonic() + timeout_s
    while True:
        response = await session.get(f"/v1/jobs/{job_id}")
        assert response.status == 200, await response.text()
        job = await response.json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return dict(job)
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s} s")
        await asyncio.sleep(period_s)
