"""The batch's local engine: one worker process per slot, models loaded once each, a crash retried once."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Sequence

from diarflow.batch_process import process_file
from diarflow.batch_records import WORKER_DIED, BatchItem, BatchOptions, FileOutcome

__all__ = ["run_local"]

_worker_resources: Any = None


def _watch_parent(parent_pid: int) -> None:
    while True:  # a worker whose batch died (even by SIGKILL) must not keep burning a core
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


def _init_local_worker(model_dir: str | None, parent_pid: int) -> None:
    global _worker_resources
    from diarflow.resources import load_resources

    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    _worker_resources = load_resources(Path(model_dir) if model_dir else None, parallel_calls=1)


def _process_in_worker(item: BatchItem, options: BatchOptions) -> FileOutcome:
    return process_file(item, options, _worker_resources)


class _LocalSlot:
    """One worker process (a one-process pool, so a crash loses only the file it was running)."""

    def __init__(self, model_dir: str | None) -> None:
        self._model_dir = model_dir
        self.pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_local_worker, initargs=(self._model_dir, os.getpid()))

    def restart(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = self._new_pool()

    def close(self) -> None:
        processes = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            proc.kill()
            proc.join(5)


def run_local(items: Sequence[BatchItem], options: BatchOptions, workers: int,
              on_outcome: Callable[[FileOutcome], None]) -> None:
    """Run ``items`` on ``workers`` local processes (models loaded once each); outcomes as they finish.

    A file whose worker dies is run once more on a fresh worker, then becomes an error row.
    """
    queue = deque(items)
    slots = [_LocalSlot(options.model_dir) for _ in range(min(workers, len(items)))]
    running: dict[Future[FileOutcome], tuple[_LocalSlot, BatchItem]] = {}
    crashes: Counter[str] = Counter()

    def feed(slot: _LocalSlot) -> None:
        if queue:
            item = queue.popleft()
            running[slot.pool.submit(_process_in_worker, item, options)] = (slot, item)

    try:
        for slot in slots:
            feed(slot)
        while running:
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                slot, item = running.pop(future)
                try:
                    on_outcome(future.result())
                except BrokenProcessPool:
                    slot.restart()
                    crashes[item.path] += 1
                    if crashes[item.path] >= 2:
                        on_outcome(FileOutcome.failed(item, WORKER_DIED))
                    else:
                        queue.appendleft(item)
                feed(slot)
    finally:
        for slot in slots:
            slot.close()
