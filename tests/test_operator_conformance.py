"""One conformance suite over every standard operator, on real models and real speech.

For each operator: same input -> same output (determinism), inputs never mutated, a checkpoint taken
at any event boundary resumes to exactly the uninterrupted output, and end of input flushes once.
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
    for kind, payload in events:  # route like the executor: upstream first, outputs to every downstream
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
                inbox[downstream].extend(produced)
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


@pytest.mark.parametrize("node", NODES)
def test_eof_flushes_pending_work(node: str, mode: str, operator_inputs: dict[str, list[Event]],
                                  resources: Resources) -> None:
    config = _graph(mode).nodes[node]
    events = [e for e in operator_inputs[node] if e[0] != "wm"]  # no watermarks: all work waits for eof
    out = _replay(config.build(None, resources), events)
    produced = [m for kind, m in out if kind == "item"]
    upstream_items = [m for kind, m in operator_inputs[node] if kind == "item"]
    assert upstream_items and produced, f"{node} produced nothing before end of input"
