"""The engine on its own: graph validation, routing order, watermarks, eof once, checkpoint/resume."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diarflow.dataflow import (
    CheckpointMismatch,
    Executor,
    GraphBuilder,
    GraphError,
    StreamingSession,
    run_offline,
)


@dataclass(frozen=True)
class Numbers:
    values: tuple[int, ...]
    end: int

    @property
    def end_sample(self) -> int:
        return self.end


@dataclass(frozen=True)
class Total:
    value: int
    at: int


@dataclass(frozen=True)
class Source:
    """Passes numbers on, stamping a running position (a stand-in for a framer)."""

    input_types: ClassVar[tuple[type, ...]] = (tuple,)
    output_types: ClassVar[tuple[type, ...]] = (Numbers,)

    def build(self, state: int | None, resources: Any) -> Any:
        return _Source(state or 0)


class _Source:
    def __init__(self, position: int) -> None:
        self.position = position

    def on_item(self, item: tuple[int, ...]) -> Sequence[Numbers]:
        self.position += len(item)
        return [Numbers(tuple(item), self.position)]

    def on_watermark(self, sample: int) -> Sequence[Any]:
        return []

    def on_eof(self) -> Sequence[Any]:
        return []

    def checkpoint(self) -> int:
        return self.position


@dataclass(frozen=True)
class RunningSum:
    """Buffers numbers and emits their running total at each watermark (like a batched model call),
    counting from ``start``."""

    start: int = 0

    input_types: ClassVar[tuple[type, ...]] = (Numbers,)
    output_types: ClassVar[tuple[type, ...]] = (Total,)

    def build(self, state: tuple[int, tuple[int, ...], int] | None, resources: Any) -> Any:
        return _RunningSum(*(state or (self.start, (), 0)), calls=resources)


class _RunningSum:
    def __init__(self, total: int, pending: tuple[int, ...], eofs: int, calls: list[str] | None) -> None:
        self.total, self.pending, self.eofs, self.calls = total, list(pending), eofs, calls

    def on_item(self, item: Numbers) -> Sequence[Total]:
        self.pending.extend(item.values)
        return []

    def on_watermark(self, sample: int) -> Sequence[Total]:
        if self.calls is not None:
            self.calls.append(f"wm{sample}")
        if not self.pending:
            return []
        self.total += sum(self.pending)
        self.pending = []
        return [Total(self.total, sample)]

    def on_eof(self) -> Sequence[Total]:
        self.eofs += 1
        return [Total(self.total + sum(self.pending), -1)]

    def checkpoint(self) -> tuple[int, tuple[int, ...], int]:
        return self.total, tuple(self.pending), self.eofs


def _graph() -> Any:
    return GraphBuilder().chain(("source", Source()), ("sum", RunningSum())).freeze()


def test_push_raises_watermark_to_source_end() -> None:
    calls: list[str] = []
    executor = Executor(_graph(), calls)
    assert executor.push((1, 2, 3)) == [Total(6, 3)]
    assert executor.push((4,)) == [Total(10, 4)]
    assert calls == ["wm3", "wm4"]
    assert executor.eof() == [Total(10, -1)]


def test_eof_is_called_once_and_run_ends() -> None:
    executor = Executor(_graph(), None)
    executor.eof()
    with pytest.raises(RuntimeError, match="eof was already|has ended"):
        executor.eof()
    with pytest.raises(RuntimeError, match="has ended"):
        executor.push((1,))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(-5, 5), min_size=1, max_size=4).map(tuple), min_size=1, max_size=12),
       st.data())
def test_resume_equals_uninterrupted(items: list[tuple[int, ...]], data: st.DataObject) -> None:
    graph = _graph()
    straight = StreamingSession(graph, None)
    expected = [m for item in items for m in straight.push(item)] + straight.close()
    cut = data.draw(st.integers(0, len(items)))
    first = StreamingSession(graph, None)
    got = [m for item in items[:cut] for m in first.push(item)]
    resumed = StreamingSession(graph, None, first.checkpoint())
    got += [m for item in items[cut:] for m in resumed.push(item)] + resumed.close()
    assert got == expected


def test_checkpoint_of_another_graph_is_refused() -> None:
    other = GraphBuilder().chain(("source", Source()), ("total", RunningSum())).freeze()
    checkpoint = StreamingSession(_graph(), None).checkpoint()
    assert other.digest != _graph().digest
    with pytest.raises(CheckpointMismatch):
        StreamingSession(other, None, checkpoint)


def test_offline_driver_equals_streaming_on_same_graph() -> None:
    graph = _graph()
    items = [(1, 2), (3,), (4, 5, 6)]
    session = StreamingSession(graph, None)
    streamed = [m for item in items for m in session.push(item)] + session.close()
    progress: list[int] = []
    assert run_offline(graph, None, items, on_progress=progress.append) == streamed
    assert progress == [1, 2, 3]


def test_type_mismatch_cycle_and_sources_are_rejected() -> None:
    with pytest.raises(GraphError, match="accepts"):
        GraphBuilder().chain(("a", RunningSum()), ("b", RunningSum())).freeze()
    builder = GraphBuilder().add("a", Source()).add("b", RunningSum()).add("c", RunningSum())
    with pytest.raises(GraphError, match="exactly one source"):
        builder.connect("a", "b").freeze()
    with pytest.raises(GraphError, match="defined twice"):
        GraphBuilder().add("a", Source()).add("a", Source())
    with pytest.raises(GraphError, match="not an operator config"):
        GraphBuilder().add("a", object())  # type: ignore[arg-type]
    cyclic = GraphBuilder().add("s", Source()).add("x", RunningSum()).add("y", RunningSum())
    cyclic.connect("s", "x")
    with pytest.raises(GraphError):
        cyclic.connect("x", "y").connect("y", "x").freeze()


def test_digest_changes_with_config_and_replace_keeps_wiring() -> None:
    graph = _graph()
    assert graph.digest == _graph().digest
    same = graph.replace("sum", RunningSum())
    assert same.edges == graph.edges and same.digest == graph.digest  # an equal config: the same graph
    changed = graph.replace("sum", RunningSum(start=100))
    assert changed.edges == graph.edges and changed.nodes.keys() == graph.nodes.keys()
    assert changed.digest != graph.digest
    assert StreamingSession(changed, None).push((1, 2)) == [Total(103, 2)]  # the new config is the one used
    session = StreamingSession(graph, None)
    session.push((1, 2))
    with pytest.raises(CheckpointMismatch):  # a checkpoint never resumes into a differently configured graph
        StreamingSession(changed, None, session.checkpoint())
    with pytest.raises(GraphError, match="no node named"):
        graph.replace("missing", RunningSum())



@dataclass(frozen=True)
class Collect:
    """Records every message it is given (a stand-in for a consumer of one of several message types)."""

    accepted: tuple[type, ...]

    @property
    def input_types(self) -> tuple[type, ...]:
        return self.accepted

    output_types: ClassVar[tuple[type, ...]] = (str,)

    def build(self, state: None, resources: Any) -> Any:
        return _Collect()


class _Collect:
    def on_item(self, item: Any) -> Sequence[str]:
        return [type(item).__name__]

    def on_watermark(self, sample: int) -> Sequence[Any]:
        return []

    def on_eof(self) -> Sequence[Any]:
        return []

    def checkpoint(self) -> None:
        return None


@dataclass(frozen=True)
class Both:
    """Emits the numbers and, at each watermark, their running total: two message types for two consumers."""

    input_types: ClassVar[tuple[type, ...]] = (Numbers,)
    output_types: ClassVar[tuple[type, ...]] = (Numbers, Total)

    def build(self, state: Any, resources: Any) -> Any:
        inner = _RunningSum(0, (), 0, None)

        class _Both:
            def on_item(self, item: Numbers) -> Sequence[Any]:
                inner.on_item(item)
                return [item]

            def on_watermark(self, sample: int) -> Sequence[Any]:
                return inner.on_watermark(sample)

            def on_eof(self) -> Sequence[Any]:
                return []

            def checkpoint(self) -> Any:
                return inner.checkpoint()

        return _Both()


def test_an_edge_carries_only_the_types_its_downstream_accepts() -> None:
    graph = (GraphBuilder().add("source", Source()).add("both", Both())
             .add("numbers", Collect((Numbers,))).add("totals", Collect((Total,)))
             .connect("source", "both").connect("both", "numbers").connect("both", "totals").freeze())
    out = Executor(graph, None).push((1, 2, 3))
    assert sorted(out) == ["Numbers", "Total"]  # each consumer saw only its own type
    assert graph.accepts("totals", Total(1, 0)) and not graph.accepts("totals", Numbers((1,), 1))
    with pytest.raises(GraphError, match="emits none of them"):
        GraphBuilder().add("source", Source()).add("totals", Collect((Total,))).connect("source", "totals").freeze()
