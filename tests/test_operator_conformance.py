"""One conformance suite over every standard operator, on real models and real speech.

For each operator: same input -> same output (determinism), inputs never mutated, a checkpoint taken
at any event boundary resumes to exactly the uninterrupted output, and end of input alone flushes
all pending work (the same messages as with watermarks).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from diarflow.testing.evaluation import DevItem
from diarflow.operators.messages import PcmBytes
from diarflow.operators.models import Resources
from diarflow.operators.pipeline import PipelineConfig, build_graph

Event = tuple[str, Any]  # ("item", message) | ("wm", sample) | ("eof", None)


def _canonical(value: Any) -> Any:
    """A comparable form of messages holding arrays, tuples, dataclasses."""
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if hasattr(value, "turns"):
            fields["turns"] = _canonical(value.turns)
        return (type(value).__name__, tuple(sorted(fields.items())))
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _canonical(v)) for k, v in value.items()))
    return value


def _replay(op: Any, events: list[Event]) -> list[Event]:
    out: list[Event] = []
    for kind, payload in events:
        if kind == "item":
            produced = op.on_item(payload)
        elif kind == "wm":
            produced = op.on_watermark(payload)
        else:
            produced = op.on_eof()
        out.extend(("item", m) for m in produced)
        if kind != "item":
            out.append((kind, payload))
    return out


MODES = ["stream", "offline"]  # the two drivers' configs: offline adds shared passes and re-clustering


def _graph(mode: str) -> Any:
    return build_graph(PipelineConfig().for_mode(mode))  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def operator_inputs(resources: Resources, speech_clips: dict[str, DevItem], mode: str) -> dict[str, list[Event]]:
    """The event stream each node of the standard graph sees on 25 s of two speakers in 200 ms chunks."""
    audio, _ = sf.read(speech_clips["two_speakers"].audio_path, dtype="int16", frames=16000 * 25)
    events: list[Event] = []
    for lo in range(0, len(audio), 3200):
        events += [("item", PcmBytes(audio[lo:lo + 3200].tobytes())), ("wm", min(lo + 3200, len(audio)))]
    events.append(("eof", None))
    graph = _graph(mode)
    ops = {name: config.build(None, resources) for name, config in graph.nodes.items()}
    inputs: dict[str, list[Event]] = {name: [] for name in graph.nodes}
    final: list[Event] = []
    for kind, payload in events:  # route like the executor: upstream first, outputs to the nodes accepting them
        inbox: dict[str, list[Any]] = {name: [] for name in graph.nodes}
        if kind == "item":
            inbox[graph.source].append(payload)
        for name, op in ops.items():
            produced: list[Any] = []
            for message in inbox[name]:
                inputs[name].append(("item", message))
                produced.extend(op.on_item(message))
            if kind != "item":
                inputs[name].append((kind, payload))
                produced.extend(op.on_watermark(payload) if kind == "wm" else op.on_eof())
            for downstream in graph.edges[name]:
                inbox[downstream].extend(m for m in produced if graph.accepts(downstream, m))
            if name in graph.sinks:
                final.extend(("item", m) for m in produced)
    inputs["_final"] = final
    return inputs


NODES = ["framer", "vad", "overlap_detector", "embedder", "clusterer", "overlaps", "snapshots"]


def test_pipeline_finds_both_speakers(operator_inputs: dict[str, list[Event]]) -> None:
    finals = [m for kind, m in operator_inputs["_final"] if kind == "item"]
    assert finals and finals[-1].final
    assert finals[-1].num_speakers == 2


@pytest.mark.parametrize("node", NODES)
def test_deterministic_and_inputs_not_mutated(node: str, mode: str, operator_inputs: dict[str, list[Event]],
                                               resources: Resources) -> None:
    config = _graph(mode).nodes[node]
    events = operator_inputs[node]
    before = _canonical(copy.deepcopy(events))
    first = _canonical(_replay(config.build(None, resources), events))
    assert _canonical(events) == before, "an operator mutated its input"
    assert _canonical(_replay(config.build(None, resources), events)) == first


@pytest.mark.parametrize("node", NODES)
def test_checkpoint_round_trip_resumes_exactly(node: str, mode: str, operator_inputs: dict[str, list[Event]],
                                                resources: Resources) -> None:
    config = _graph(mode).nodes[node]
    events = operator_inputs[node]
    expected = _canonical(_replay(config.build(None, resources), events))
    for cut in np.linspace(1, len(events) - 1, 5).astype(int):
        op = config.build(None, resources)
        head = _replay(op, events[:cut])
        state = op.checkpoint()
        frozen_state = _canonical(state)
        resumed = config.build(state, resources)
        tail = _replay(resumed, events[cut:])
        assert _canonical(head + tail) == expected, f"resume at event {cut} differs"
        op.checkpoint()
        assert _canonical(state) == frozen_state, "a checkpoint changed after it was taken"


def _assert_close(got: Any, expected: Any, where: str) -> None:
    """Structural equality of messages, arrays to float rounding (1e-5)."""
    if isinstance(expected, np.ndarray):
        assert isinstance(got, np.ndarray) and got.shape == expected.shape and got.dtype == expected.dtype, where
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5, err_msg=where)
    elif dataclasses.is_dataclass(expected) and not isinstance(expected, type):
        assert type(got) is type(expected), where
        names = [f.name for f in dataclasses.fields(expected)] + (["turns"] if hasattr(expected, "turns") else [])
        for name in names:
            _assert_close(getattr(got, name), getattr(expected, name), f"{where}.{name}")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(expected), f"{where}: length"
        for i, (g, e) in enumerate(zip(got, expected)):
            _assert_close(g, e, f"{where}[{i}]")
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), where
        for key in expected:
            _assert_close(got[key], expected[key], f"{where}[{key!r}]")
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"


def _messages_by_type(events: list[Event]) -> dict[str, list[Any]]:
    by_type: dict[str, list[Any]] = {}
    for kind, message in events:
        if kind == "item":
            by_type.setdefault(type(message).__name__, []).append(message)
    return by_type


@pytest.mark.parametrize("node", NODES)
def test_eof_flushes_what_watermarks_would_have(node: str, mode: str, operator_inputs: dict[str, list[Event]],
                                               resources: Resources) -> None:
    """Fed the same items with no watermark at all, a node's ``on_eof`` must flush everything it held
    back: the same messages of each type, in the same order. (Between types the order may differ:
    watermarks release embeddings earlier. The streaming embedder batches windows differently without
    them, which moves its vectors by float rounding, ~3e-7.)"""
    config = _graph(mode).nodes[node]
    events = operator_inputs[node]
    expected = _messages_by_type(_replay(config.build(None, resources), events))
    got = _messages_by_type(_replay(config.build(None, resources), [e for e in events if e[0] != "wm"]))
    assert expected, f"{node} produced nothing"
    assert got.keys() == expected.keys()
    for name in expected:
        _assert_close(got[name], expected[name], f"{node} {name}")
