"""Everything that touches Ray (the one module importing it, lazily): batch actors and job-worker actors.

``pip install 'diarflow[ray]'`` installs it. Two uses:

- :func:`run_batch_on_ray`: ``diarflow batch --engine ray``: Ray Data maps :func:`diarflow.batch_process.process_file`
  over the inputs on an actor pool (models loaded once per actor; each actor decodes its file from the
  path or URL, so only paths and results travel through the object store).
- :class:`ActorWorker`: one job-API worker as a Ray actor (``diarflow serve --workers ray``); the
  server keeps its store and media and drives the actor through this small handle.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import warnings
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    import pyarrow as pa

    from diarflow.batch_records import BatchItem, BatchOptions, FileOutcome

__all__ = ["ActorLost", "ActorWorker", "RayConnection", "RayUnavailable", "connect", "run_batch_on_ray"]

INSTALL_HINT = "pip install 'diarflow[ray]'"
_CONNECT_TIMEOUT_S = 5.0
# a file that kills its actor this many times more is given up (an error row), not retried forever
_MAX_TASK_RETRIES = 1


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached; the message says what to do."""


class ActorLost(RuntimeError):
    """The actor running a call died (it is restarted for the next call)."""


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayUnavailable(f"the Ray engine needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail in seconds with a clear message instead of Ray's long connection retries."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(f"--ray-address must be 'auto', host:port or ray://host:port, got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=_CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise RayUnavailable(f"cannot reach a Ray cluster at {address}: {exc} "
                             "(start one with `ray start --head`, or omit --ray-address to run Ray locally)") from None


@dataclass
class RayConnection:
    """A connection to Ray: ``started_here`` when this process started a local Ray (then
    :meth:`close` shuts it down), else joined to an existing cluster (left running)."""

    started_here: bool
    cpus: int

    def close(self) -> None:
        ray = _ray()
        if ray.is_initialized():
            ray.shutdown()


def connect(address: str | None = None, num_cpus: int | None = None) -> RayConnection:
    """Join the cluster at ``address`` (``"auto"``, ``host:port``, ``ray://host:port``), or start a
    local Ray with ``num_cpus`` CPUs (default: all cores) when ``address`` is ``None``.

    Raises
    ------
    RayUnavailable
        Ray missing, or no cluster at ``address``.
    """
    ray = _ray()
    if ray.is_initialized():
        return RayConnection(False, int(ray.cluster_resources().get("CPU", 1)))
    env = {"env_vars": {"DIARFLOW_MODEL_DIR": os.environ["DIARFLOW_MODEL_DIR"]}} if os.environ.get(
        "DIARFLOW_MODEL_DIR") else None
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING",
             "configure_logging": True}
    if address is not None:
        if address != "auto":
            _check_reachable(address)
        try:
            ray.init(address=address, runtime_env=env, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayUnavailable(f"cannot join the Ray cluster at {address}: {exc}") from None
        started = False
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, runtime_env=env, _node_ip_address="127.0.0.1", **quiet)
        started = True
    return RayConnection(started, int(ray.cluster_resources().get("CPU", 1)))


# ------------------------------------------------------------------------------------------------ batch

class _BatchActor:
    """Ray Data actor: models loaded once in the constructor, then one file per call."""

    def __init__(self, options: BatchOptions) -> None:
        from pathlib import Path

        from diarflow.resources import load_resources

        self.options = options
        self.resources = load_resources(Path(options.model_dir) if options.model_dir else None, parallel_calls=1)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from diarflow.batch_process import process_file
        from diarflow.batch_records import BatchItem, outcomes_to_table

        items = [BatchItem(u, p) for u, p in zip(batch.column("uri").to_pylist(), batch.column("path").to_pylist())]
        return outcomes_to_table([process_file(item, self.options, self.resources) for item in items])


def run_batch_on_ray(items: Sequence[BatchItem], options: BatchOptions, workers: int, address: str | None,
                     on_outcome: Callable[[FileOutcome], None]) -> None:
    """Map :func:`diarflow.batch_process.process_file` over ``items`` with Ray Data on an actor pool.

    Parameters
    ----------
    items
        Inputs (only ``uri`` and ``path`` travel to the actors).
    options
        The actors' constructor argument.
    workers
        Actors (1 CPU each); 0 = one per CPU of the cluster.
    address
        Cluster to join; ``None`` starts a local Ray with ``workers`` CPUs (default all cores).
    on_outcome
        Called on this process for every outcome as it arrives (streaming: a crash keeps what came).

    Raises
    ------
    RayUnavailable
        Ray missing or the cluster unreachable.
    """
    from diarflow.batch_records import WORKER_DIED, FileOutcome, outcomes_from_table

    ray = _ray()
    connection = connect(address, workers or None)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the batch prints its own progress line
        context.max_errored_blocks = -1  # a file that kills its actor every time is an error row, not a dead batch
        context.print_on_execution_start = False
        size = max(1, min(workers or connection.cpus, len(items)))
        # one file per block, made on this process (no shuffle task competing with the actors for CPUs):
        # the load spreads evenly and a retry redoes one file
        dataset = ray.data.from_items([{"uri": i.uri, "path": i.path} for i in items],
                                      override_num_blocks=len(items))
        with warnings.catch_warnings():  # restart / retry limits are still passed as remote args in 2.60
            warnings.simplefilter("ignore")
            results = dataset.map_batches(
                _BatchActor, fn_constructor_kwargs={"options": options}, batch_size=1, batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=size), num_cpus=1,
                max_task_retries=_MAX_TASK_RETRIES, max_restarts=-1,
            )
        seen: set[str] = set()
        for batch in results.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
            for outcome in outcomes_from_table(batch):
                seen.add(outcome.path)
                on_outcome(outcome)
        for item in items:  # blocks given up after repeated actor deaths
            if item.path not in seen:
                on_outcome(FileOutcome.failed(item, WORKER_DIED))
    finally:
        if connection.started_here:
            connection.close()


# ------------------------------------------------------------------------------------------ job workers

class _CallActor:
    """A job worker: ``init`` once (models), then ``call`` one function at a time. Threaded (two
    concurrent calls) so that ``progress`` and ``cancel`` are answered while ``call`` runs."""

    def __init__(self, init: str, init_args: tuple[Any, ...]) -> None:
        _resolve(init)(*init_args)
        self._lock = threading.Lock()
        self._progress: Any = None
        self._cancel = False

    def pid(self) -> int:
        return os.getpid()

    def call(self, function: str, args: tuple[Any, ...]) -> Any:
        with self._lock:
            self._progress, self._cancel = None, False

        def report(value: Any) -> bool:
            with self._lock:
                self._progress = value
                return self._cancel

        return _resolve(function)(*args, report=report)

    def progress(self) -> Any:
        with self._lock:
            return self._progress

    def cancel(self) -> None:
        with self._lock:
            self._cancel = True


def _resolve(path: str) -> Callable[..., Any]:
    module, _, name = path.partition(":")
    return getattr(import_module(module), name)


class ActorWorker:
    """One Ray actor that runs a job at a time (driven from the server's event loop).

    Parameters
    ----------
    init
        ``"module:function"`` run once in the actor (e.g. load models).
    init_args
        Its (small) arguments.

    The actor is restarted by Ray if its process dies (the call running then raises :class:`ActorLost`).
    """

    def __init__(self, init: str, init_args: tuple[Any, ...]) -> None:
        ray = _ray()
        remote = ray.remote(num_cpus=1, max_concurrency=2, max_restarts=-1, max_task_retries=0)(_CallActor)
        self._ray = ray
        self._actor = remote.remote(init, init_args)

    async def call(self, function: str, args: tuple[Any, ...],
                   on_poll: Callable[[Any, int], bool], poll_s: float = 0.5) -> Any:
        """Run ``function(*args, report=...)`` on the actor; every ``poll_s`` pass the latest reported
        value and the actor's pid to ``on_poll``, which returns ``True`` to ask the call to stop.

        Raises
        ------
        ActorLost
            The actor process died during the call.
        """
        exceptions = self._ray.exceptions
        pid = await self._ready()
        future = asyncio.ensure_future(self._actor.call.remote(function, args))
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even if we stop waiting
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=poll_s)
                if done:
                    return future.result()
                if on_poll(await self._actor.progress.remote(), pid):
                    await self._actor.cancel.remote()
        except (exceptions.RayActorError, exceptions.ActorUnavailableError) as exc:
            raise ActorLost(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        except exceptions.RayTaskError as exc:  # the function's own exception, as raised
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, Exception) else exc) from None

    async def _ready(self, timeout_s: float = 300.0) -> int:
        """The actor's pid once it answers (a restarted actor reloads its models first)."""
        exceptions = self._ray.exceptions
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                return int(await self._actor.pid.remote())
            except exceptions.ActorUnavailableError:
                if asyncio.get_running_loop().time() > deadline:
                    raise ActorLost("the actor did not come back") from None
                await asyncio.sleep(0.5)
            except exceptions.RayActorError as exc:
                raise ActorLost(str(exc).splitlines()[0]) from None

    def close(self) -> None:
        try:
            self._ray.kill(self._actor, no_restart=True)
        except Exception:  # already gone, or Ray shut down first
            pass


def worker_cpus() -> int:
    """CPUs of the connected cluster (one actor per CPU by default)."""
    return int(_ray().cluster_resources().get("CPU", 1))
