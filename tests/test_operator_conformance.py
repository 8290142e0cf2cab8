"""The conformance checks of :mod:`diarflow.dataflow.testing` over every operator of the standard graph,
in both modes, on the real models and real speech, and on scripted models (fast, and exercising the same
logic on different numbers).

For each operator: declared message types are honoured, same input -> same output (determinism),
inputs never mutated, a checkpoint taken at event boundaries survives pickling and resumes to exactly
the uninterrupted output, and end of input alone flushes all pending work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest
import soundfile as sf

from diarflow.dataflow import Executor
from diarflow.dataflow.testing import (
    Event,
    check_checkpoint_round_trip,
    check_deterministic,
    check_eof_flushes,
    check_operator,
    check_protocol,
    record_inputs,
)
from diarflow.operators.messages import PcmBytes, PcmFrame, Snapshot
from diarflow.operators.models import Resources
from diarflow.operators.pipeline import PipelineConfig, build_graph
from diarflow.testing.evaluation import DevItem
from tests.fake_models import fake_resources

MODES = ["stream", "offline"]
MODELS = ["real", "fake"]
NODES = ["framer", "vad", "overlap_detector", "embedder", "clusterer", "overlaps", "snapshots"]


def _graph(mode: str) -> Any:
    return build_graph(PipelineConfig().for_mode(mode))  # type: ignore[arg-type]


def _events(speech_clips: dict[str, DevItem]) -> list[Event]:
    """25 s of two speakers in 200 ms s16le chunks, a watermark after each, then the end of input."""
    audio, _ = sf.read(speech_clips["two_speakers"].audio_path, dtype="int16", frames=16000 * 25)
    events: list[Event] = []
    for lo in range(0, len(audio), 3200):
        events += [("item", PcmBytes(audio[lo:lo + 3200].tobytes())), ("wm", min(lo + 3200, len(audio)))]
    return events + [("eof", None)]


@pytest.fixture(scope="module", params=[(mode, models) for mode in MODES for models in MODELS],
                ids=lambda p: f"{p[0]}-{p[1]}")
def setup(request: pytest.FixtureRequest, resources: Resources, speech_clips: dict[str, DevItem]) -> Any:
    """(mode, models, resources, the event stream each node of the standard graph sees)."""
    mode, models = request.param
    chosen = resources if models == "real" else fake_resources()
    return mode, models, chosen, record_inputs(_graph(mode), chosen, _events(speech_clips))


def test_every_node_gets_work_and_the_real_pipeline_finds_both_speakers(setup: Any) -> None:
    """The checks below are not vacuous: every node receives items and emits messages."""
    mode, models, resources, inputs = setup
    for node in NODES:
        assert any(kind == "item" for kind, _ in inputs[node]), f"{node} received no message"
    finals = [m for kind, m in inputs["_sinks"] if kind == "item" and isinstance(m, Snapshot)]
    assert finals and finals[-1].final
    if models == "real":
        assert finals[-1].num_speakers == 2


@pytest.mark.parametrize("node", NODES)
def test_protocol_and_determinism(node: str, setup: Any) -> None:
    mode, _, resources, inputs = setup
    config = _graph(mode).nodes[node]
    check_protocol(config, resources, inputs[node])
    check_deterministic(config, resources, inputs[node])


@pytest.mark.parametrize("node", NODES)
def test_checkpoint_round_trip_resumes_exactly(node: str, setup: Any) -> None:
    mode, _, resources, inputs = setup
    check_checkpoint_round_trip(_graph(mode).nodes[node], resources, inputs[node])


@pytest.mark.parametrize("node", NODES)
def test_eof_flushes_what_watermarks_would_have(node: str, setup: Any) -> None:
    """(The streaming embedder batches windows differently without watermarks, which moves its vectors
    by float rounding, ~3e-7: the check compares arrays to 1e-5.)"""
    mode, _, resources, inputs = setup
    check_eof_flushes(_graph(mode).nodes[node], resources, inputs[node])


# --- the checks catch what they claim to (an operator that breaks each rule) ---------------------

@dataclass(frozen=True)
class _CounterConfig:
    """Counts frames and reports the count at watermarks; ``flaw`` switches on one broken rule."""

    flaw: str = ""
    input_types: ClassVar[tuple[type, ...]] = (PcmFrame,)
    output_types: ClassVar[tuple[type, ...]] = (np.ndarray,)

    def build(self, state: tuple[int, int] | None, resources: Any) -> _Counter:
        return _Counter(self, state or (0, 0))


class _Counter:
    def __init__(self, config: _CounterConfig, state: tuple[int, int]) -> None:
        self.config = config
        self.count, self.pending = state

    def on_item(self, item: PcmFrame) -> list[np.ndarray]:
        if self.config.flaw == "mutates":
            item.samples[0] = -1.0
        self.count, self.pending = self.count + 1, self.pending + 1
        return []

    def on_watermark(self, sample: int) -> list[np.ndarray]:
        return self._flush()

    def on_eof(self) -> list[np.ndarray]:
        return [] if self.config.flaw == "drops_at_eof" else self._flush()

    def _flush(self) -> list[np.ndarray]:
        out = [np.array([self.count, self.pending])] if self.pending else []
        self.pending = 0
        return out

    def checkpoint(self) -> tuple[int, int]:
        return (0, 0) if self.config.flaw == "forgets" else (self.count, self.pending)


def _frames() -> list[Event]:
    return [("item", PcmFrame(i * 10, np.zeros(10, np.float32))) for i in range(6)] + [("wm", 30), ("eof", None)]


def test_a_sound_operator_passes_and_each_broken_rule_is_caught() -> None:
    check_operator(_CounterConfig(), None, _frames())
    with pytest.raises(AssertionError, match="resuming at event"):
        check_checkpoint_round_trip(_CounterConfig("forgets"), None, _frames())
    with pytest.raises(AssertionError, match="!="):
        check_eof_flushes(_CounterConfig("drops_at_eof"), None, _frames())
    with pytest.raises(AssertionError, match="mutated its input"):
        check_deterministic(_CounterConfig("mutates"), None, _frames())


def test_record_inputs_routes_like_the_executor(setup: Any) -> None:
    """What the recorded sinks emitted is what the engine's executor emits for the same events."""
    mode, _, resources, inputs = setup
    graph = _graph(mode)
    executor = Executor(graph, resources)
    emitted: list[Any] = []
    for kind, payload in inputs[graph.source]:
        if kind == "item":
            emitted += executor.push(payload)  # with its own watermark: the end of the frame
        elif kind == "wm":
            emitted += executor.watermark(payload)  # the same sample: nothing more
        else:
            emitted += executor.eof()
    recorded = [m for kind, m in inputs["_sinks"] if kind == "item"]
    assert len(emitted) == len(recorded)
    for got, want in zip(emitted, recorded):
        assert got.turns == want.turns and got.speaker_numbers == want.speaker_numbers
