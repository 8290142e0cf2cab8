"""Silero VAD split into a batched encoder and a sequence LSTM: exact, and independent of frame size."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import soundfile as sf

from diarflow.testing.evaluation import DevItem
from diarflow.provisioning import ModelPaths
from diarflow.operators.messages import PcmFrame, SpeechPause, SpeechRegion, SpeechStart, VadProbabilities
from diarflow.operators.models import SileroVadModel, VadState
from diarflow.operators.vad import SileroVadConfig


@pytest.fixture(scope="module")
def speech(speech_clips: dict[str, DevItem]) -> np.ndarray:
    audio, _ = sf.read(speech_clips["two_speakers"].audio_path, dtype="float32",
                       frames=16000 * 40)
    return audio  # (n,) 40 s of a two-speaker conversation


def _file_model_probabilities(path: str, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The shipped ONNX file, one window per call, exactly as Silero documents its use."""
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros(64, np.float32)
    out = []
    for window in windows:
        x = np.concatenate([context, window])[None]
        probability, state = session.run(None, {"input": x, "state": state, "sr": np.array(16000, np.int64)})
        out.append(float(probability[0, 0]))
        context = window[-64:]
    return np.array(out, np.float32), state


def test_split_model_equals_the_shipped_file(model_paths: ModelPaths, speech: np.ndarray) -> None:
    windows = speech[: 512 * 600].reshape(600, 512)
    expected, expected_state = _file_model_probabilities(str(model_paths.silero_vad), windows)
    got, state = SileroVadModel(model_paths.silero_vad).speech_probabilities(windows, VadState())
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(state.lstm, expected_state, atol=1e-5)
    assert 0.2 < float((got > 0.5).mean()) < 0.95  # real speech with pauses: the model does decide


def test_state_carries_across_calls(resources, speech: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    windows = speech[: 512 * 900].reshape(900, 512)
    whole, whole_state = resources.vad.speech_probabilities(windows, VadState())
    parts, state = [], VadState()
    for lo, hi in [(0, 1), (1, 7), (7, 400), (400, 900)]:
        probabilities, state = resources.vad.speech_probabilities(windows[lo:hi], state)
        parts.append(probabilities)
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-6)
    np.testing.assert_allclose(state.lstm, whole_state.lstm, atol=1e-6)
    np.testing.assert_array_equal(state.context, whole_state.context)


def _vad_events(resources, audio: np.ndarray, frame_samples: int) -> tuple[list, np.ndarray]:  # type: ignore[no-untyped-def]
    vad = SileroVadConfig().build(None, resources)
    decisions, probabilities = [], []
    for lo in range(0, len(audio), frame_samples):
        for message in vad.on_item(PcmFrame(lo, audio[lo:lo + frame_samples])):
            if isinstance(message, (SpeechStart, SpeechPause, SpeechRegion)):
                decisions.append(message)
            elif isinstance(message, VadProbabilities):
                probabilities.append(message.probabilities)
    decisions += list(vad.on_eof())
    return decisions, np.concatenate(probabilities)


def test_offline_chunks_decide_exactly_like_streaming_frames(resources, speech: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    streamed, streamed_p = _vad_events(resources, speech, 3200)  # 200 ms frames, as the live endpoint
    offline, offline_p = _vad_events(resources, speech, 16000 * 30)  # large offline chunks
    np.testing.assert_allclose(offline_p, streamed_p, atol=1e-5)
    assert offline == streamed
    regions = [d for d in streamed if isinstance(d, SpeechRegion)]
    assert len(regions) >= 3 and sum(r.end_sample - r.start_sample for r in regions) > 16000 * 15
    # every utterance that silence closed was announced first, with the same end (a cut at the length
    # limit is followed by an utterance starting where it ends, and has no pause)
    pauses = {(d.start_sample, d.end_sample): i for i, d in enumerate(streamed) if isinstance(d, SpeechPause)}
    for earlier, later in zip(regions, regions[1:]):
        if later.start_sample != earlier.end_sample:
            assert pauses.get((earlier.start_sample, earlier.end_sample), len(streamed)) < streamed.index(earlier)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="pause_samples must not exceed min_silence_samples"):
        SileroVadConfig(pause_samples=5000)
    with pytest.raises(ValueError, match="pause_samples must be >= 0"):
        SileroVadConfig(pause_samples=-1)
    with pytest.raises(ValueError, match="threshold"):
        SileroVadConfig(threshold=1.5)
