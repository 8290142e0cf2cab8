"""Real servers on 127.0.0.1 for tests and benchmarks: a child process (``python -m diarflow.testing.server_process``)
or a thread in this process, plus small client helpers and an injected disk-full switch.

Nothing here is used by the library at run time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import fields
from pathlib import Path
from typing import IO, Any, Sequence

from aiohttp import web

__all__ = ["FAIL_WRITES_FLAG", "ServerProcess", "ServerThread", "children_of", "free_port", "rss_bytes", "upload",
           "wait_for_job"]

FAIL_WRITES_FLAG = "FAIL_WRITES"  # in the data dir: while it exists, store and media writes fail as on a full disk
_WRITE_VERBS = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE", "BEGIN"})


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
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

    Two ways to start it: by default the test entry point (``python -m diarflow.testing.server_process``),
    which takes every setting as a keyword and can inject faults; with ``cli_args``, the production
    entry point ``diarflow serve`` with those flags (what benchmarks measure).

    Parameters
    ----------
    data_dir
        The job API's data folder (kept across restarts); required by the test entry point. With
        ``cli_args`` it is passed as ``--data-dir`` when given (``None``: no job API, no live checkpoints).
    env
        Extra environment variables.
    jobs
        :class:`JobsSettings` fields (test entry point only).
    faults
        Install the disk-full switch: while ``<data_dir>/FAIL_WRITES`` exists, the server's store
        writes and upload writes fail with "database or disk is full" / ``ENOSPC`` (test entry point only).
    log_path
        Where the server's output goes (default: ``<data_dir>/server-<port>.log``, or an anonymous
        temporary file without a data dir); its end is shown when the server does not start.
    cli_args
        Run ``diarflow serve --host 127.0.0.1 --port <free port> [--data-dir DIR] *cli_args`` instead,
        e.g. ``["--idle-timeout", "600"]``.
    server
        Other :class:`ServerSettings` fields (``auth_enabled``, ``api_keys``, ``model_dir``...; test
        entry point only: with ``cli_args`` they are flags).

    Examples
    --------
    >>> with ServerProcess(cli_args=["--idle-timeout", "600"]) as server:  # doctest: +SKIP
    ...     print(server.stream_url)
    """

    def __init__(self, data_dir: Path | None = None, env: dict[str, str] | None = None,
                 jobs: dict[str, Any] | None = None, faults: bool = False, log_path: Path | None = None,
                 cli_args: Sequence[str] | None = None, **server: Any) -> None:
        self.port = free_port()
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.cli_args = list(cli_args) if cli_args is not None else None
        self.config: dict[str, Any] = {}  # the test entry point's settings (empty with cli_args)
        if self.cli_args is not None:
            if jobs or faults or server:
                raise ValueError("with cli_args the server is `diarflow serve`: give its settings as flags, "
                                 f"got jobs={jobs!r}, faults={faults!r}, {sorted(server)}")
        elif self.data_dir is None:
            raise ValueError("the test entry point needs a data_dir (or pass cli_args to run `diarflow serve`)")
        else:
            self.config = {"data_dir": str(self.data_dir), "port": self.port, "jobs": jobs or {}, "faults": faults,
                           **server}
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        if log_path is None and self.data_dir is not None:
            log_path = self.data_dir / f"server-{self.port}.log"
        self.log_path = log_path
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The HTTP base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def stream_url(self) -> str:
        """The live endpoint, ``ws://.../diarize/stream``."""
        return f"ws://127.0.0.1:{self.port}/diarize/stream"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the server is not started")
        return self.proc.pid

    def fail_writes(self, failing: bool) -> None:
        """Switch the injected disk-full condition on or off (needs ``faults=True``)."""
        if self.data_dir is None:
            raise RuntimeError("the disk-full switch needs a data_dir")
        flag = self.data_dir / FAIL_WRITES_FLAG
        if failing:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    def _log_tail(self) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    @property
    def command(self) -> list[str]:
        """What :meth:`start` runs (built then, so that a caller may still change ``port``)."""
        if self.cli_args is None:
            config = {**self.config, "port": self.port}
            return [sys.executable, "-m", "diarflow.testing.server_process", json.dumps(config)]
        data_flags = ["--data-dir", str(self.data_dir)] if self.data_dir is not None else []
        return [sys.executable, "-m", "diarflow.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                *data_flags, *self.cli_args]

    def start(self, timeout_s: float = 90.0) -> ServerProcess:
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a+b") if self.log_path is not None else tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self._log_tail()
                self.stop()
                raise RuntimeError(f"server did not start:\n{tail}")
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerThread:
    """The real app on 127.0.0.1 (a free port), served by its own event loop in a thread.

    The port is chosen before the app is built, so that the app knows its own URL: job workers fetch
    uploads through it (``ServerSettings.base_url``).
    """

    def __init__(self, settings: Any) -> None:
        if getattr(settings, "port", 0) == 0:
            settings = dataclasses.replace(settings, host="127.0.0.1", port=free_port())
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None
        self.port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=120)
        return self

    async def _start(self) -> None:
        from diarflow.servers.access_log import RedactingAccessLogger
        from diarflow.servers.app import make_app

        self.runner = web.AppRunner(make_app(self.settings), handle_signals=False, shutdown_timeout=5.0,
                                    access_log_class=RedactingAccessLogger)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.settings.port)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=60)
            self.runner = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/diarize/stream"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# -- the injected disk-full switch ------------------------------------------------------------------------
class _FailingWritesConnection:
    """A ``sqlite3.Connection`` whose writes fail like on a full disk while ``flag`` exists."""

    def __init__(self, conn: sqlite3.Connection, flag: Path) -> None:
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "_flag", flag)

    def _check(self, sql: str) -> None:
        words = sql.lstrip().split(None, 1)
        if words and words[0].upper() in _WRITE_VERBS and self._flag.exists():
            raise sqlite3.OperationalError("database or disk is full")

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self._check(sql)
        return self._conn.execute(sql, *args)

    def __enter__(self) -> _FailingWritesConnection:
        self._conn.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._conn.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._conn, name, value)


class _FailingWritesFile:
    """A binary file whose ``write`` raises ``ENOSPC`` while ``flag`` exists."""

    def __init__(self, file: IO[bytes], flag: Path) -> None:
        self._file = file
        self._flag = flag

    def write(self, data: bytes) -> int:
        if self._flag.exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._file.write(data)

    def __enter__(self) -> _FailingWritesFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._file.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def install_write_faults(data_dir: Path) -> None:
    """Make this process's job store and media writes obey ``<data_dir>/FAIL_WRITES`` (tests only)."""
    from diarflow.servers.jobs import media, store

    flag = Path(data_dir) / FAIL_WRITES_FLAG
    connect, open_temp = store.connect, media.MediaStore.open_temp

    def failing_connect(path: Path) -> Any:
        return _FailingWritesConnection(connect(path), flag)

    def failing_open_temp(self: media.MediaStore, team: str, key: str) -> tuple[Path, Any]:
        path, file = open_temp(self, team, key)
        return path, _FailingWritesFile(file, flag)

    store.connect = failing_connect
    media.MediaStore.open_temp = failing_open_temp


def _main(config_json: str) -> None:
    import logging

    from diarflow.servers.access_log import RedactingAccessLogger
    from diarflow.servers.app import make_app
    from diarflow.servers.jobs.settings import JobsSettings
    from diarflow.servers.state import ServerSettings

    config = json.loads(config_json)
    jobs = config.pop("jobs", {})
    if config.pop("faults", False):
        install_write_faults(Path(config["data_dir"]))
    for name in ("webhook_retry_delays_s", "allowed_addresses"):
        if name in jobs:
            jobs[name] = tuple(jobs[name])
    known = {f.name for f in fields(ServerSettings)}
    kwargs = {k: v for k, v in config.items() if k in known and k != "host"}
    for name in ("data_dir", "model_dir"):
        if kwargs.get(name):
            kwargs[name] = Path(kwargs[name])
    settings = ServerSettings(host="127.0.0.1", jobs=JobsSettings(**jobs), **kwargs)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    web.run_app(make_app(settings), host="127.0.0.1", port=settings.port, print=None,
                access_log_class=RedactingAccessLogger, shutdown_timeout=5.0)


async def upload(session: Any, key: str, path: Path) -> None:
    """``POST /v1/media/input`` then the presigned ``PUT`` (no Authorization, no Content-Type)."""
    import aiohttp

    response = await session.post("/v1/media/input", json={"url": key})
    if response.status != 201:
        raise RuntimeError(f"media/input answered {response.status}: {await response.text()}")
    put_url = (await response.json())["url"]
    async with aiohttp.ClientSession() as anonymous:
        with open(path, "rb") as f:
            put = await anonymous.put(put_url, data=f.read(), skip_auto_headers=["Content-Type"])
        if put.status != 200:
            raise RuntimeError(f"upload answered {put.status}: {await put.text()}")


async def wait_for_job(session: Any, job_id: str, timeout_s: float = 120.0, period_s: float = 0.25) -> dict[str, Any]:
    """Poll ``GET /v1/jobs/{id}`` until the job is terminal; returns the job object."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = await session.get(f"/v1/jobs/{job_id}")
        if response.status != 200:
            raise RuntimeError(f"GET job answered {response.status}: {await response.text()}")
        job = await response.json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return dict(job)
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s} s")
        await asyncio.sleep(period_s)


if __name__ == "__main__":
    _main(sys.argv[1])
