"""Conformance checks for operators, in the spirit of river's ``check_estimator``: run them on any
operator config (the standard ones, or your own) with the event stream it sees in a graph.

>>> from diarflow.dataflow.testing import check_operator, record_inputs   # doctest: +SKIP
>>> inputs = record_inputs(graph, resources, events)                    # doctest: +SKIP
>>> for name, config in graph.nodes.items():                            # doctest: +SKIP
...     check_operator(config, resources, inputs[name])

An event is ``("item", message)``, ``("wm", sample)`` (a watermark) or ``("eof", None)``. Every check
raises ``AssertionError`` naming what broke; none needs a model, a file or a socket.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import Any, Sequence

import numpy as np

from .executor import Executor
from .graph import Graph

__all__ = ["Event", "canonical", "replay", "record_inputs", "check_operator", "check_protocol", "check_deterministic",
           "check_checkpoint_round_trip", "check_eof_flushes"]

Event = tuple[str, Any]


def canonical(value: Any) -> Any:
    """A comparable, hashable form of messages and states that hold arrays, tuples, dataclasses."""
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if hasattr(value, "turns"):  # views whose fields are a shared prefix: compare what they show
            fields["turns"] = canonical(value.turns)
        return (type(value).__name__, tuple(sorted(fields.items())))
    if isinstance(value, (list, tuple)):
        return tuple(canonical(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, canonical(v)) for k, v in value.items()))
    return value


def replay(op: Any, events: Sequence[Event]) -> list[Event]:
    """Feed ``events`` to a built operator; returns what it emitted, with the watermarks and the end of
    input kept in place (so that *when* a message came out is part of the result)."""
    out: list[Event] = []
    for kind, payload in events:
        if kind == "item":
            produced = op.on_item(payload)
        elif kind == "wm":
            produced = op.on_watermark(payload)
        elif kind == "eof":
            produced = op.on_eof()
        else:
            raise ValueError(f"unknown event kind {kind!r}")
        out.extend(("item", m) for m in produced)
        if kind != "item":
            out.append((kind, payload))
    return out


class _Recorded:
    """A node config whose operator logs every event it is given, then delegates to the real one."""

    def __init__(self, inner: Any, log: list[Event]) -> None:
        self.inner, self.log = inner, log
        self.input_types, self.output_types = inner.input_types, inner.output_types

    def __repr__(self) -> str:
        return f"_Recorded({self.inner!r})"

    def build(self, state: Any, resources: Any) -> _Recording:
        return _Recording(self.inner.build(state, resources), self.log)


class _Recording:
    def __init__(self, op: Any, log: list[Event]) -> None:
        self.op, self.log = op, log

    def on_item(self, item: Any) -> Sequence[Any]:
        self.log.append(("item", item))
        return self.op.on_item(item)

    def on_watermark(self, sample: int) -> Sequence[Any]:
        self.log.append(("wm", sample))
        return self.op.on_watermark(sample)

    def on_eof(self) -> Sequence[Any]:
        self.log.append(("eof", None))
        return self.op.on_eof()

    def checkpoint(self) -> Any:
        return self.op.checkpoint()


def record_inputs(graph: Graph, resources: Any, events: Sequence[Event]) -> dict[str, list[Event]]:
    """Run ``graph`` on the :class:`~.executor.Executor` with ``events`` (items go to its source, which
    adds its own watermark after each; a ``"wm"`` event advances event time further) and record the
    events every node receives.

    Returns node name -> its events, plus ``"_sinks"``: what the sinks emitted.
    """
    logs: dict[str, list[Event]] = {name: [] for name in graph.nodes}
    recorded = graph
    for name, config in graph.nodes.items():
        recorded = recorded.replace(name, _Recorded(config, logs[name]))  # type: ignore[arg-type]
    executor = Executor(recorded, resources)
    sinks: list[Event] = []
    for kind, payload in events:
        if kind == "item":
            out = executor.push(payload)
        elif kind == "wm":
            out = executor.watermark(payload)
        else:
            out = executor.eof()
        sinks.extend(("item", m) for m in out)
    return {**logs, "_sinks": sinks}


def check_protocol(config: Any, resources: Any, events: Sequence[Event]) -> None:
    """The config is a frozen dataclass declaring message types; what the operator emits is of its
    declared ``output_types``, and it accepts every item of ``events`` (of its ``input_types``)."""
    params = getattr(type(config), "__dataclass_params__", None)
    assert params is not None and params.frozen, f"{type(config).__name__} must be a frozen dataclass"
    for name in ("input_types", "output_types"):
        types = getattr(config, name, None)
        assert isinstance(types, tuple) and types and all(isinstance(t, type) for t in types), \
            f"{type(config).__name__}.{name} must be a non-empty tuple of message classes"
    op = config.build(None, resources)
    for method in ("on_item", "on_watermark", "on_eof", "checkpoint"):
        assert callable(getattr(op, method, None)), f"{type(op).__name__} has no {method}()"
    for kind, payload in events:
        if kind == "item":
            assert isinstance(payload, config.input_types), \
                f"{type(config).__name__} was fed a {type(payload).__name__}, not one of its input_types"
    for _, message in (e for e in replay(op, events) if e[0] == "item"):
        assert isinstance(message, config.output_types), \
            f"{type(op).__name__} emitted a {type(message).__name__}, not one of its output_types"


def check_deterministic(config: Any, resources: Any, events: Sequence[Event]) -> None:
    """Same events, same output (messages and their timing); the operator never mutates its input."""
    before = canonical(copy.deepcopy(list(events)))
    first = canonical(replay(config.build(None, resources), events))
    assert canonical(list(events)) == before, f"{type(config).__name__}: the operator mutated its input"
    assert canonical(replay(config.build(None, resources), events)) == first, \
        f"{type(config).__name__}: two runs over the same events differ"


def check_checkpoint_round_trip(config: Any, resources: Any, events: Sequence[Event], cuts: int = 5) -> None:
    """At ``cuts`` event boundaries: the checkpoint survives pickling, taking it changes nothing, and an
    operator built from it continues exactly as the uninterrupted one (messages and their timing)."""
    expected = canonical(replay(config.build(None, resources), events))
    for cut in np.unique(np.linspace(1, max(len(events) - 1, 1), cuts).astype(int)).tolist():
        op = config.build(None, resources)
        head = replay(op, events[:cut])
        state = op.checkpoint()
        frozen = canonical(state)
        restored = pickle.loads(pickle.dumps(state))  # what a server writes to disk and reads back
        tail = replay(config.build(restored, resources), events[cut:])
        assert canonical(head + tail) == expected, f"{type(config).__name__}: resuming at event {cut} differs"
        op.checkpoint()
        assert canonical(state) == frozen, f"{type(config).__name__}: a checkpoint changed after it was taken"


def _by_type(events: Sequence[Event]) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = {}
    for kind, message in events:
        if kind == "item":
            grouped.setdefault(type(message).__name__, []).append(message)
    return grouped


def _assert_close(got: Any, expected: Any, where: str, atol: float) -> None:
    if isinstance(expected, np.ndarray):
        assert isinstance(got, np.ndarray) and got.shape == expected.shape and got.dtype == expected.dtype, where
        np.testing.assert_allclose(got, expected, rtol=0, atol=atol, err_msg=where)
    elif dataclasses.is_dataclass(expected) and not isinstance(expected, type):
        assert type(got) is type(expected), where
        names = [f.name for f in dataclasses.fields(expected)] + (["turns"] if hasattr(expected, "turns") else [])
        for name in names:
            _assert_close(getattr(got, name), getattr(expected, name), f"{where}.{name}", atol)
    elif isinstance(expected, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(expected), f"{where}: length"
        for i, (g, e) in enumerate(zip(got, expected)):
            _assert_close(g, e, f"{where}[{i}]", atol)
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), where
        for key in expected:
            _assert_close(got[key], expected[key], f"{where}[{key!r}]", atol)
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"


def check_eof_flushes(config: Any, resources: Any, events: Sequence[Event], atol: float = 1e-5) -> None:
    """Fed the same items with no watermark at all, ``on_eof`` flushes everything held back: the same
    messages of each type in the same order, arrays to ``atol`` (work batched differently without
    watermarks may move floats by rounding). Between types the order may differ."""
    expected = _by_type(replay(config.build(None, resources), events))
    got = _by_type(replay(config.build(None, resources), [e for e in events if e[0] != "wm"]))
    assert got.keys() == expected.keys(), f"{type(config).__name__}: {sorted(got)} != {sorted(expected)}"
    for name in expected:
        _assert_close(got[name], expected[name], f"{type(config).__name__} {name}", atol)


def check_operator(config: Any, resources: Any, events: Sequence[Event], cuts: int = 5) -> None:
    """Every check above, on one operator config and the events it sees."""
    check_protocol(config, resources, events)
    check_deterministic(config, resources, events)
    check_checkpoint_round_trip(config, resources, events, cuts)
    check_eof_flushes(config, resources, events)
