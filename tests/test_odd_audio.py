"""Audio people actually send: silence, noise, tones, clipping, DC offset, a blip, many channels, and
speech with overlap. The engine answers each with a final result (possibly empty), in both modes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import diarflow
from diarflow.operators.models import Resources
from diarflow.testing.evaluation import DevItem, Turn, overlap_seconds, read_rttm

RATE = 16000
_rng = np.random.default_rng(7)


def _odd_inputs(speech: np.ndarray) -> dict[str, np.ndarray]:
    t = np.arange(12 * RATE) / RATE
    return {
        "silence": np.zeros(8 * RATE, np.float32),
        "a 0.1 s blip": 0.3 * _rng.standard_normal(RATE // 10).astype(np.float32),
        "white noise": 0.3 * _rng.standard_normal(10 * RATE).astype(np.float32),
        "a chord (music-like)": (0.2 * (np.sin(2 * np.pi * 220 * t) + np.sin(2 * np.pi * 277 * t)
                                        + np.sin(2 * np.pi * 330 * t))).astype(np.float32),
        "clipped speech": np.clip(speech * 20.0, -1.0, 1.0).astype(np.float32),
        "speech on a DC offset": (0.5 + 0.5 * speech).astype(np.float32),
    }


@pytest.mark.parametrize("mode", ["offline", "stream"])
def test_odd_audio_gets_a_final_result_in_both_modes(speech_clips: dict[str, DevItem], resources: Resources,
                                                     mode: str) -> None:
    speech, _ = sf.read(speech_clips["two_speakers"].audio_path, dtype="float32", frames=20 * RATE)
    for name, audio in _odd_inputs(speech).items():
        result = diarflow.diarize(audio, mode=mode, resources=resources)  # type: ignore[arg-type]
        assert abs(result.duration_s - len(audio) / RATE) < 1e-6, name
        assert all(0.0 <= s.start_s < s.end_s <= result.duration_s + 1e-6 for s in result.segments), name
        if name == "silence":
            assert result.segments == (), "speakers found in digital silence"
        if name in ("clipped speech", "speech on a DC offset"):
            assert len(result.speakers) >= 1, f"{name}: no speech found"


def test_eight_channel_file_is_mixed_down(speech_clips: dict[str, DevItem], resources: Resources,
                                         tmp_path: Path) -> None:
    speech, _ = sf.read(speech_clips["two_speakers"].audio_path, dtype="float32", frames=20 * RATE)
    channels = np.stack([speech * (0.5 + 0.05 * k) for k in range(8)], axis=1)  # (n, 8)
    path = tmp_path / "eight.wav"
    sf.write(path, channels, RATE)
    mono = diarflow.diarize(speech, resources=resources)
    eight = diarflow.diarize(path, resources=resources)
    assert abs(eight.duration_s - mono.duration_s) < 0.01
    assert len(eight.speakers) == len(mono.speakers) >= 1


def test_overlapped_speech_comes_out_with_both_speakers(speech_clips: dict[str, DevItem],
                                                        resources: Resources) -> None:
    """The shipped clips hold 5-7 s of real overlap between them: most of it must be output as two
    speakers at once, and the exclusive variant must have none."""
    totals = {"reference_s": 0.0, "hypothesis_s": 0.0, "hit_s": 0.0}
    for item in speech_clips.values():
        result = diarflow.diarize(item.audio_path, resources=resources)
        reference = read_rttm(item.rttm_path)[item.uri]
        hypothesis = [Turn(s.start_s, s.end_s, s.speaker) for s in result.segments]
        for key, value in overlap_seconds(reference, hypothesis, item.duration_s).items():
            totals[key] += value
        exclusive = result.exclusive_segments
        assert all(a.end_s <= b.start_s for a, b in zip(exclusive, exclusive[1:])), "exclusive output overlaps"
        assert not any(s.overlapping for s in exclusive) and any(s.overlapping for s in result.segments)
    assert totals["reference_s"] > 4.0
    assert totals["hit_s"] / totals["reference_s"] >= 0.6, totals  # recall (measured 0.78)
    assert totals["hit_s"] / totals["hypothesis_s"] >= 0.7, totals  # precision (measured 0.82)
