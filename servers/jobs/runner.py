"""Schedules accepted jobs onto worker processes and records their outcome (durably, exactly once)."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import aiohttp

from diarflow.servers.jobs.fetch import FetchError, download
from diarflow.servers.jobs.media import MediaStore
from diarflow.servers.jobs.pool import JobCall, WorkerLost, WorkerPool, WorkerSlot, make_pool
from diarflow.servers.jobs.settings import JobsSettings
from diarflow.servers.jobs.store import Job, JobStore
from diarflow.servers.jobs.worker import JobFailure

__all__ = ["JobRunner", "webhook_body"]

log = logging.getLogger("diarflow.jobs")

CRASH_MESSAGE = "The worker processing this job stopped unexpectedly (retried once); the job was not completed"


def webhook_body(job: Job, status: str, output: dict[str, Any]) -> bytes:
    """The webhook payload of a terminal job (output only on success without ``webhookStatusOnly``)."""
    body: dict[str, Any] = {"jobId": job.id, "status": status}
    if status == "succeeded" and not job.webhook_status_only:
        body["output"] = output
    return json.dumps(body, separators=(",", ":")).encode()


class JobRunner:
    """Queue of job ids served by ``settings.worker_count`` worker processes.

    A job's input is fetched here (async, capped, SSRF-guarded) into a work folder, then the worker
    diarizes the local file. Outcomes go to the store with a compare-and-set on the status, so a
    canceled job or a repeated result never produces a second outcome or a second webhook.
    """

    def __init__(self, store: JobStore, media: MediaStore, work_dir: Path, settings: JobsSettings,
                 model_dir: Path | None, http: aiohttp.ClientSession) -> None:
        self.store = store
        self.media = media
        self.work_dir = work_dir
        self.settings = settings
        self.http = http
        self._model_dir = str(model_dir) if model_dir else None
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._pool = WorkerPool([])
        self._tasks: list[asyncio.Task[None]] = []
        self.on_terminal: asyncio.Event = asyncio.Event()  # pokes the webhook dispatcher

    async def start(self) -> None:
        """Start the workers and re-queue jobs a previous run left unfinished."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._pool = make_pool(self.settings, self._model_dir)
        for job in self.store.unfinished_jobs():
            if job.status == "running":
                self.store.requeue(job.id)
            log.info("re-queued job %s after restart", job.id)
            self._queue.put_nowait(job.id)
        self._tasks = [asyncio.create_task(self._serve(slot)) for slot in self._pool.slots]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pool.close()

    def submit(self, job_id: str) -> None:
        self._queue.put_nowait(job_id)

    def finish(self, job: Job, status: str, output: dict[str, Any],
               from_statuses: tuple[str, ...] = ("created", "running")) -> bool:
        changed = self.store.finish(job.id, status, output, webhook_body(job, status, output), from_statuses)
        if changed:
            self.on_terminal.set()
            shutil.rmtree(self.work_dir / job.id, ignore_errors=True)
        return changed

    async def _serve(self, slot: WorkerSlot) -> None:
        while True:
            job_id = await self._queue.get()
            try:
                await self._run(slot, job_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one job take the slot down
                log.exception("job %s: unexpected error", job_id)
                job = self.store.get_job(job_id)
                if job is not None:
                    self.finish(job, "failed", {"error": "Internal error while processing the job"})

    async def _prepare_input(self, job: Job) -> tuple[str, str]:
        """Local path of the job's audio and the name to show in errors."""
        url = job.params["url"]
        if url.startswith("media://"):
            found = self.store.get_media(job.team, url)
            if found is None or not Path(found[0]).is_file():
                raise JobFailure(f"Could not load audio: {url} was not uploaded (or has expired)")
            return found[0], url
        folder = self.work_dir / job.id
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / "input"
        limit = self.settings.voiceprint_max_bytes if job.kind == "voiceprint" else self.settings.upload_max_bytes
        try:
            await asyncio.wait_for(download(self.http, url, dest, limit, self.settings.address_policy),
                                   self.settings.fetch_timeout_s)
        except FetchError as exc:
            raise JobFailure(f"Could not load audio: {exc}") from None
        except asyncio.TimeoutError:
            raise JobFailure("Could not load audio: timed out while downloading") from None
        return str(dest), "the downloaded file"

    async def _run(self, slot: WorkerSlot, job_id: str) -> None:
        job = self.store.get_job(job_id)
        if job is None or not self.store.mark_running(job_id):
            return  # canceled or expired while queued
        try:
            path, name = await self._prepare_input(job)
            params = dict(job.params)
            if job.kind == "voiceprint":
                params["maxAudioS"] = self.settings.voiceprint_max_audio_s
            output = await slot.run(JobCall(job.id, job.kind, path, params, str(self.store.path),
                                            self.settings.max_audio_s, name))
        except JobFailure as exc:
            self.finish(job, "failed", {"error": str(exc)})
            return
        except WorkerLost:
            job = self.store.requeue(job_id, crashed=True) or job
            if job.status != "created":
                return
            if job.crashes >= 2:
                log.warning("job %s: worker crashed twice, giving up", job_id)
                self.finish(job, "failed", {"error": CRASH_MESSAGE})
            else:
                log.warning("job %s: worker crashed, retrying once", job_id)
                self._queue.put_nowait(job_id)
            return
        if output is not None:
            self.finish(job, "succeeded", output, from_statuses=("running",))
