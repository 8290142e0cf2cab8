"""Schedules accepted jobs onto worker processes and records their outcome (durably, exactly once)."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from diarflow.servers.jobs.fetch import AddressPolicy, FetchError, preflight
from diarflow.servers.jobs.media import DOWNLOAD_ROUTE, MediaStore, UrlSigner
from diarflow.servers.jobs.pool import JobCall, WorkerLost, WorkerPool, WorkerSlot, make_pool
from diarflow.servers.jobs.settings import JobsSettings
from diarflow.servers.jobs.store import Job, JobStore, StoreError, until_stored
from diarflow.servers.jobs.worker import JobFailure, JobInput

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
    """Queue of job ids served by a pool of workers (local processes or Ray actors).

    A worker fetches its job's input itself (capped, SSRF-guarded): an upload through a presigned
    download URL of this server (``base_url``), a remote URL directly; nothing but HTTP connects a
    worker to this machine. Outcomes go to the store with a compare-and-set on the status, so a
    canceled job or a repeated result never produces a second outcome or a second webhook.

    Store errors (a full disk) never end a slot: an outcome that cannot be written is kept and
    written again until the store accepts it, and a job that cannot be started goes back to the
    queue. Nothing accepted is lost: what a restart interrupts is re-queued from the store.
    """

    def __init__(self, store: JobStore, media: MediaStore, work_dir: Path, settings: JobsSettings,
                 model_dir: Path | None, signer: UrlSigner, base_url: str) -> None:
        self.store = store
        self.media = media
        self.work_dir = work_dir
        self.settings = settings
        self.signer = signer
        self.base_url = base_url.rstrip("/")
        self._model_dir = str(model_dir) if model_dir else None
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._pool = WorkerPool([])
        self._tasks: list[asyncio.Task[None]] = []
        self._retries: set[asyncio.TimerHandle] = set()
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

    def workers(self) -> dict[str, Any]:
        """The worker pool as ``/health`` reports it: backend, where it runs, slots (jobs at once)."""
        return {"backend": self._pool.backend, "location": self._pool.location, "slots": len(self._pool.slots)}

    def dead_slots(self) -> int:
        """Slots whose serving task has ended (none should: reported by ``/health``)."""
        return sum(1 for task in self._tasks if task.done())

    async def stop(self) -> None:
        for handle in self._retries:
            handle.cancel()
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

    async def record(self, job: Job, status: str, output: dict[str, Any],
                     from_statuses: tuple[str, ...] = ("created", "running")) -> bool:
        """:meth:`finish`, tried again (with back-off) until the store accepts it: the outcome is never dropped."""
        return await until_stored(lambda: self.finish(job, status, output, from_statuses),
                                  f"job {job.id}: cannot record {status}", self.settings.store_retry_max_s, log)

    def _submit_later(self, job_id: str, delay_s: float) -> None:
        loop = asyncio.get_running_loop()

        def put() -> None:
            self._retries.discard(handle)
            self._queue.put_nowait(job_id)

        handle = loop.call_later(delay_s, put)
        self._retries.add(handle)

    async def _serve(self, slot: WorkerSlot) -> None:
        """Run queued jobs on ``slot`` forever: no error of a job or of the store ends this loop."""
        pause_s = 0.1
        while True:
            job_id = await self._queue.get()
            try:
                await self._run(slot, job_id)
                pause_s = 0.1
            except asyncio.CancelledError:
                raise
            except StoreError as exc:  # the job could not be started: it stays accepted, try it again later
                log.warning("job %s: store unavailable (%s); re-queued in %.1f s", job_id, exc, pause_s)
                self._submit_later(job_id, pause_s)
                await asyncio.sleep(pause_s)  # do not spin through the queue while the store is down
                pause_s = min(pause_s * 2, self.settings.store_retry_max_s)
            except Exception:  # never let one job take the slot down
                log.exception("job %s: unexpected error", job_id)
                await self._fail_unexpectedly(job_id)

    async def _fail_unexpectedly(self, job_id: str) -> None:
        try:
            job = self.store.get_job(job_id)
        except StoreError:
            self._submit_later(job_id, self.settings.store_retry_max_s)
            return
        if job is not None:
            await self.record(job, "failed", {"error": "Internal error while processing the job"})

    async def _prepare_input(self, job: Job) -> JobInput:
        """Where the worker fetches the job's audio: a presigned download URL of an upload, or the remote URL.

        Raises
        ------
        JobFailure
            A ``media://`` key that was never uploaded (or has expired); a URL that can only reach
            refused addresses (checked here too, so that no worker is started for it).
        """
        url = job.params["url"]
        limit = self.settings.voiceprint_max_bytes if job.kind == "voiceprint" else self.settings.upload_max_bytes
        if url.startswith("media://"):
            found = self.store.get_media(job.team, url)
            if found is None or not Path(found[0]).is_file():
                raise JobFailure(f"Could not load audio: {url} was not uploaded (or has expired)")
            token = self.signer.sign("get", job.team, url, self.settings.upload_url_ttl_s)
            # our own URL: reachable even where the policy refuses private addresses
            return JobInput(self.base_url + DOWNLOAD_ROUTE.format(token=token), url, limit,
                            self.settings.fetch_timeout_s, AddressPolicy(allow_private=True), from_server=True)
        policy = self.settings.address_policy
        try:
            await preflight(url, policy)
        except FetchError as exc:
            raise JobFailure(f"Could not load audio: {exc}") from None
        return JobInput(url, "the downloaded file", limit, self.settings.fetch_timeout_s, policy)

    async def _run(self, slot: WorkerSlot, job_id: str) -> None:
        job = self.store.get_job(job_id)
        if job is None or not self.store.mark_running(job_id):
            return  # canceled or expired while queued
        try:
            source = await self._prepare_input(job)
            params = dict(job.params)
            if job.kind == "voiceprint":
                params["maxAudioS"] = self.settings.voiceprint_max_audio_s
            output = await slot.run(JobCall(job.id, job.kind, source, params, str(self.store.path),
                                            self.settings.max_audio_s))
        except JobFailure as exc:
            await self.record(job, "failed", {"error": str(exc)})
            return
        except StoreError:  # started but its input could not be looked up: back to created, tried again
            await self._requeue_durably(job)
            raise
        except WorkerLost:
            await self._after_crash(job)
            return
        if output is not None:
            await self.record(job, "succeeded", output, from_statuses=("running",))

    async def _requeue_durably(self, job: Job, crashed: bool = False) -> Job:
        """Put ``job`` back to ``created`` in the store, trying again until the store accepts it."""
        return await until_stored(lambda: self.store.requeue(job.id, crashed=crashed) or job,
                                  f"job {job.id}: cannot re-queue", self.settings.store_retry_max_s, log)

    async def _after_crash(self, job: Job) -> None:
        """The worker died under ``job``: run it once more, or fail it after a second crash."""
        job = await self._requeue_durably(job, crashed=True)
        if job.status != "created":
            return
        if job.crashes >= 2:
            log.warning("job %s: worker crashed twice, giving up", job.id)
            await self.record(job, "failed", {"error": CRASH_MESSAGE})
        else:
            log.warning("job %s: worker crashed, retrying once", job.id)
            self._queue.put_nowait(job.id)
