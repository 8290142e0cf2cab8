"""Run a frozen graph: route messages through operators, checkpoint and resume, and the two drivers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

from .graph import Graph
from .operator import Operator

__all__ = [
    "Checkpoint", "CheckpointMismatch", "Executor", "StreamingSession", "Timed", "iter_offline", "run_offline",
]


class CheckpointMismatch(ValueError):
    """A checkpoint was taken from a different graph (its digest differs)."""


@runtime_checkable
class Timed(Protocol):
    """Messages that know the sample index they end at; the source's raise the watermark."""

    @property
    def end_sample(self) -> int: ...


@dataclass(frozen=True)
class Checkpoint:
    """The state of every operator of one run, tied to its graph by digest."""

    graph_digest: str
    states: Mapping[str, Any]
    watermark: int
    items_pushed: int


class Executor:
    """Routes messages through a :class:`~dataflow.graph.Graph` in topological order.

    Parameters
    ----------
    graph
        The frozen graph.
    resources
        Shared read-only objects handed to every operator's ``build`` (e.g. loaded models).
    checkpoint
        Resume from this state instead of starting fresh.
    """

    def __init__(self, graph: Graph, resources: Any, checkpoint: Checkpoint | None = None) -> None:
        if checkpoint is not None and checkpoint.graph_digest != graph.digest:
            raise CheckpointMismatch(
                f"checkpoint belongs to graph {checkpoint.graph_digest[:12]}, not {graph.digest[:12]}"
            )
        states = checkpoint.states if checkpoint else {}
        self.graph = graph
        self._ops: dict[str, Operator[Any]] = {
            name: config.build(states.get(name), resources) for name, config in graph.nodes.items()
        }
        self._watermark = checkpoint.watermark if checkpoint else 0
        self._items_pushed = checkpoint.items_pushed if checkpoint else 0
        self._source_end = self._watermark
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def items_pushed(self) -> int:
        return self._items_pushed

    def _propagate(self, entry: list[Any], hook: Callable[[Operator[Any]], Sequence[Any]] | None) -> list[Any]:
        """Deliver ``entry`` to the source, then visit nodes upstream first: each consumes its inbox,
        then (if given) ``hook`` lets it emit more; what it produced goes to the inboxes of the downstream
        nodes that accept it."""
        if self._finished:
            raise RuntimeError("this run has ended (end of input was signalled); start a new one")
        inbox: dict[str, list[Any]] = {name: [] for name in self.graph.nodes}
        inbox[self.graph.source].extend(entry)
        results: list[Any] = []
        for name, op in self._ops.items():
            produced: list[Any] = []
            for message in inbox[name]:
                produced.extend(op.on_item(message))
            if hook is not None:
                produced.extend(hook(op))
            if name == self.graph.source:
                ends = [m.end_sample for m in produced if isinstance(m, Timed)]
                self._source_end = max([self._source_end, *ends])
            for downstream in self.graph.edges[name]:
                inbox[downstream].extend(m for m in produced if self.graph.accepts(downstream, m))
            if name in self.graph.sinks:
                results.extend(produced)
        return results

    def push(self, item: Any) -> list[Any]:
        """Feed one input message to the source; returns what the sinks emitted, in order.

        Afterwards the watermark advances to the end of what the source has emitted (the source's
        :class:`Timed` outputs), so every operator may flush work that no later input can change.
        """
        out = self._propagate([item], None)
        self._items_pushed += 1
        out.extend(self.watermark(self._source_end))
        return out

    def watermark(self, sample: int) -> list[Any]:
        """Advance event time to ``sample`` (ignored unless ahead of the current watermark)."""
        if sample <= self._watermark:
            return []
        self._watermark = sample
        return self._propagate([], lambda op: op.on_watermark(sample))

    def eof(self) -> list[Any]:
        """End of input: every operator's ``on_eof`` exactly once, upstream first."""
        results = self._propagate([], lambda op: op.on_eof())
        self._finished = True
        return results

    def checkpoint(self) -> Checkpoint:
        """Snapshot every operator's state (between pushes)."""
        return Checkpoint(
            graph_digest=self.graph.digest,
            states={name: op.checkpoint() for name, op in self._ops.items()},
            watermark=self._watermark,
            items_pushed=self._items_pushed,
        )


class StreamingSession:
    """The streaming driver: small pushes, results after each one, checkpoint between pushes.

    Examples
    --------
    >>> session = StreamingSession(graph, resources)  # doctest: +SKIP
    >>> for chunk in chunks:                          # doctest: +SKIP
    ...     for snapshot in session.push(chunk): show(snapshot)
    >>> final = session.close()                       # doctest: +SKIP
    """

    def __init__(self, graph: Graph, resources: Any, checkpoint: Checkpoint | None = None) -> None:
        self._executor = Executor(graph, resources, checkpoint)

    def push(self, item: Any) -> list[Any]:
        return self._executor.push(item)

    def close(self) -> list[Any]:
        return self._executor.eof()

    def checkpoint(self) -> Checkpoint:
        return self._executor.checkpoint()


def iter_offline(
    graph: Graph,
    resources: Any,
    items: Iterable[Any],
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[Any]:
    """The offline driver: push every (large) input item without pacing, then end of input.

    A generator, so a caller that needs only some outputs (e.g. the final snapshot of a 24 h file)
    never holds the others in memory.

    Parameters
    ----------
    graph, resources
        As for :class:`Executor`.
    items
        Input messages, typically long chunks of decoded audio (so that model calls batch).
    on_progress
        Called with the number of items pushed so far after each one.

    Yields
    ------
    Everything the sinks emit, in order.
    """
    executor = Executor(graph, resources)
    for count, item in enumerate(items, 1):
        yield from executor.push(item)
        if on_progress is not None:
            on_progress(count)
    yield from executor.eof()


def run_offline(
    graph: Graph,
    resources: Any,
    items: Iterable[Any],
    on_progress: Callable[[int], None] | None = None,
) -> list[Any]:
    """:func:`iter_offline` collected into a list."""
    return list(iter_offline(graph, resources, items, on_progress))
