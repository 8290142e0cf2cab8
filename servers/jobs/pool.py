"""Where jobs run: a ``WorkerPool`` of slots, each running one job at a time (local processes or Ray actors).

The runner sees only :class:`WorkerSlot`: ``await slot.run(call)`` returns the job's output (``None``
if it was canceled meanwhile), raises :class:`~diarflow.servers.jobs.worker.JobFailure` for a failed
job and :class:`WorkerLost` when the worker died under the job (the runner retries it once, as ever).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol

from diarflow.servers.jobs.settings import JobsSettings
from diarflow.servers.jobs.worker import JobInput, StoreProgress, init_worker, run_job

__all__ = ["JobCall", "LocalProcessSlot", "RayActorSlot", "WorkerLost", "WorkerPool", "WorkerSlot", "make_pool"]


class WorkerLost(Exception):
    """The worker process (or actor) running the job died; it has been replaced."""


@dataclass(frozen=True)
class JobCall:
    """One job as a worker runs it: where to fetch its input, and its parameters."""

    job_id: str
    kind: str
    source: JobInput
    params: dict[str, Any]
    db_path: str
    max_audio_s: float


class WorkerSlot(Protocol):
    async def run(self, call: JobCall) -> dict[str, Any] | None: ...

    def close(self) -> None: ...


class LocalProcessSlot:
    """One worker process, in a one-process pool so that a crash breaks only this slot."""

    def __init__(self, model_dir: str | None) -> None:
        self._model_dir = model_dir
        self._pool: ProcessPoolExecutor | None = None  # started with the first job

    @property
    def pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = self._new_pool()
        return self._pool

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn: the server already runs threads (asyncio.to_thread, onnxruntime), fork would be unsafe
        return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=init_worker, initargs=(self._model_dir, os.getpid()))

    def restart(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()

    async def run(self, call: JobCall) -> dict[str, Any] | None:
        args = (call.job_id, call.kind, call.source, call.params, call.db_path, call.max_audio_s)
        loop = asyncio.get_running_loop()
        try:
            try:
                future = loop.run_in_executor(self.pool, run_job, *args)
            except BrokenProcessPool:  # the worker died while idle: not this job's fault
                self.restart()
                future = loop.run_in_executor(self.pool, run_job, *args)
            return await future
        except BrokenProcessPool:
            self.restart()
            raise WorkerLost() from None

    def close(self) -> None:
        if self._pool is None:
            return
        processes = list((getattr(self._pool, "_processes", None) or {}).values())
        for proc in processes:
            proc.kill()  # the server is stopping: a job cut short runs again after restart
        self._pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            proc.join(5)


class RayActorSlot:
    """One Ray actor (models loaded once; restarted by Ray if its process dies).

    The actor fetches the job's input over HTTP (an upload from the server's presigned media URL, a
    remote URL directly), so it needs nothing of the server's disk, and reports progress to this slot,
    which writes it to the store and asks the actor to stop once the job is canceled.
    """

    def __init__(self, model_dir: str | None) -> None:
        from diarflow.ray_backend import ActorWorker

        self._actor = ActorWorker("diarflow.servers.jobs.worker:load_resources", (model_dir,))

    async def run(self, call: JobCall) -> dict[str, Any] | None:
        from diarflow.ray_backend import ActorLost

        progress = StoreProgress(call.db_path, call.job_id)

        def on_poll(reported: Any, pid: int) -> bool:
            progress.set_worker(pid)
            return reported is not None and progress.canceled(*reported)

        try:
            return await self._actor.call(
                "diarflow.servers.jobs.worker:run_job_reporting",
                (call.kind, call.source, call.params, call.max_audio_s), on_poll)
        except ActorLost:
            raise WorkerLost() from None
        finally:
            progress.close()

    def close(self) -> None:
        self._actor.close()


class WorkerPool:
    """The slots of one backend, and what to shut down with them.

    Parameters
    ----------
    slots
        One per job that can run at once.
    on_close
        Called after the slots are closed (e.g. stop the local Ray this pool started).
    backend
        ``"local"`` or ``"ray"`` (reported by ``/health``).
    location
        Where the workers run, for ``/health``: ``"this machine"``, ``"local Ray"`` or the Ray address joined.
    """

    def __init__(self, slots: list[WorkerSlot], on_close: Any = None, backend: str = "local",
                 location: str = "this machine") -> None:
        self.slots = slots
        self._on_close = on_close
        self.backend = backend
        self.location = location

    def close(self) -> None:
        for slot in self.slots:
            slot.close()
        if self._on_close is not None:
            self._on_close()


def make_pool(settings: JobsSettings, model_dir: str | None) -> WorkerPool:
    """``settings.worker_count`` local process slots, or Ray actor slots (``settings.backend == "ray"``).

    Raises
    ------
    diarflow.ray_backend.RayUnavailable
        Ray missing or its cluster unreachable.
    """
    if settings.backend != "ray":
        return WorkerPool([LocalProcessSlot(model_dir) for _ in range(settings.worker_count)])
    from diarflow.ray_backend import connect

    connection = connect(settings.ray_address, settings.workers or None)
    count = settings.workers or connection.cpus
    return WorkerPool([RayActorSlot(model_dir) for _ in range(count)],
                      on_close=connection.close if connection.started_here else None, backend="ray",
                      location="local Ray" if connection.started_here else f"Ray cluster at {settings.ray_address}")
