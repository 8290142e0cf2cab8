"""Confidence must be honest: lower where the diarization is wrong than where it is right."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

import diarflow
from diarflow.testing.evaluation import DevItem, read_rttm
from diarflow.operators.models import Resources

RESOLUTION_S = 0.02


def _frame_labels(turns: list[tuple[float, float, str]], speakers: list[str], frames: int) -> np.ndarray:
    active = np.zeros((len(speakers), frames), bool)
    for start, end, speaker in turns:
        active[speakers.index(speaker), int(start / RESOLUTION_S):int(end / RESOLUTION_S)] = True
    return active  # (speakers, frames)


def test_confidence_is_lower_on_errors_and_well_formed(speech_clips: dict[str, DevItem], resources: Resources) -> None:
    item = speech_clips["three_speakers"]  # ~200 wrong 20 ms frames (turn edges, an overlap), ~2000 right
    result = diarflow.diarize(item.audio_path, resources=resources)
    body = result.to_json(confidence=True, turn_level_confidence=True, exclusive=True)
    scores = np.asarray(body["confidence"]["score"])
    assert body["confidence"]["resolution"] == RESOLUTION_S
    assert scores.dtype.kind == "i" and scores.min() >= 0 and scores.max() <= 100
    frames = len(scores)
    assert abs(frames - item.duration_s / RESOLUTION_S) <= 1
    for row in body["diarization"]:
        assert row["speaker"] in row["confidence"] and all(0 <= v <= 100 for v in row["confidence"].values())
    ex = body["exclusiveDiarization"]
    assert all(a["end"] <= b["start"] for a, b in zip(ex, ex[1:]))

    reference = [(t.start_s, t.end_s, t.speaker) for t in read_rttm(item.rttm_path)[item.uri]]
    ref_speakers = sorted({t[2] for t in reference})
    hyp_speakers = result.speakers
    ref = _frame_labels(reference, ref_speakers, frames)
    hyp = _frame_labels([(s.start_s, s.end_s, s.speaker) for s in result.segments], hyp_speakers, frames)
    overlap = ref.astype(int) @ hyp.T.astype(int)  # (ref, hyp) co-occurrence
    rows, cols = linear_sum_assignment(-overlap)
    mapped = np.full((len(ref_speakers), frames), False)
    for r, c in zip(rows, cols):
        mapped[r] = hyp[c]
    scored = ref.any(axis=0) | hyp.any(axis=0)
    correct = scored & np.all(mapped == ref, axis=0)
    wrong = scored & ~correct
    assert wrong.sum() > 50 and correct.sum() > 1000
    assert scores[wrong].mean() < scores[correct].mean() - 10
