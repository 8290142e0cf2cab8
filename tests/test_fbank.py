"""NumPy fbank against kaldi-native-fbank (the reference Kaldi implementation) and its framing rules."""

from __future__ import annotations

import kaldi_native_fbank as knf
import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from diarflow.testing.evaluation import DevItem
from diarflow.operators.fbank import Fbank, FbankConfig


def _kaldi(samples: np.ndarray) -> np.ndarray:
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = 80
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16000, samples.tolist())
    fbank.input_finished()
    if fbank.num_frames_ready == 0:
        return np.zeros((0, 80), np.float32)
    return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])


def test_matches_kaldi_on_real_speech(speech_clips: dict[str, DevItem]) -> None:
    audio, _ = sf.read(speech_clips["two_speakers"].audio_path, dtype="float32", frames=16000 * 8)
    ours, ref = Fbank().compute(audio), _kaldi(audio)
    assert ours.shape == ref.shape == (798, 80)
    np.testing.assert_allclose(ours, ref, atol=2e-3)


@settings(max_examples=25, deadline=None)
@given(num_samples=st.integers(0, 3000), seed=st.integers(0, 2**31 - 1))
def test_matches_kaldi_on_any_length(num_samples: int, seed: int) -> None:
    audio = (0.3 * np.random.default_rng(seed).standard_normal(num_samples)).astype(np.float32)
    ours, ref = Fbank().compute(audio), _kaldi(audio)
    assert ours.shape == ref.shape
    assert ours.shape[0] == FbankConfig().num_frames(num_samples)
    np.testing.assert_allclose(ours, ref, atol=2e-3)


def test_silence_is_floored_not_minus_infinity() -> None:
    feats = Fbank().compute(np.zeros(4000, np.float32))
    assert np.isfinite(feats).all()
    assert np.allclose(feats, np.log(np.finfo(np.float32).eps))


def test_normalised_features_have_zero_mean() -> None:
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    feats = Fbank().compute_normalised(audio)
    np.testing.assert_allclose(feats.mean(axis=0), 0, atol=1e-4)


def test_input_is_not_mutated() -> None:
    audio = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    before = audio.copy()
    Fbank().compute(audio)
    np.testing.assert_array_equal(audio, before)


@pytest.mark.parametrize("kwargs, match", [
    ({"frame_shift_samples": 0}, "frame_shift_samples"),
    ({"frame_shift_samples": 500}, "frame_shift_samples"),
    ({"low_freq_hz": 9000.0}, "low_freq_hz"),
    ({"num_mel_bins": 0}, "num_mel_bins"),
])
def test_config_validation(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FbankConfig(**kwargs)  # type: ignore[arg-type]


def test_two_dimensional_input_refused() -> None:
    with pytest.raises(ValueError, match="1-D"):
        Fbank().compute(np.zeros((2, 400), np.float32))
