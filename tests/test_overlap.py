"""Overlap detection and second-speaker assignment: logic with a scripted segmentation model, then the
real model on real speech."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from diarflow.operators.clustering import SpeakerTurns
from diarflow.operators.messages import OverlapRegions, PcmFrame, SpeakerTurn, SpeechRegion
from diarflow.operators.models import SEGMENTATION_FRAME_STEP_SAMPLES as STEP, SEGMENTATION_FRAMES as FRAMES
from diarflow.operators.overlap import OverlapAssignerConfig, join_spans, second_speakers, trim_to_speech
from diarflow.operators.segmentation import OverlapDetectorConfig

RATE = 16000


class _ScriptedSegmentation:
    """A stand-in for segmentation-3.0: two voices wherever the input sample is > 0.5, nobody where it is
    < -0.5, else one."""

    def __init__(self) -> None:
        self.calls = 0

    def log_probs(self, chunks: np.ndarray) -> np.ndarray:
        self.calls += 1
        out = np.full((len(chunks), FRAMES, 7), -20.0, np.float32)
        centres = np.arange(FRAMES) * STEP + 495
        two = chunks[:, centres] > 0.5  # (chunks, frames)
        silent = chunks[:, centres] < -0.5
        out[..., 1] = np.where(two | silent, -20.0, 0.0)
        out[..., 4] = np.where(two, 0.0, -20.0)
        out[..., 0] = np.where(silent, 0.0, -20.0)
        return out


class _Resources:
    def __init__(self) -> None:
        self.segmentation = _ScriptedSegmentation()


def _signal(seconds: float, overlaps_s: list[tuple[float, float]],
            silences_s: list[tuple[float, float]] = ()) -> np.ndarray:  # type: ignore[assignment]
    audio = np.zeros(int(seconds * RATE), np.float32)
    for a, b in overlaps_s:
        audio[int(a * RATE):int(b * RATE)] = 1.0
    for a, b in silences_s:
        audio[int(a * RATE):int(b * RATE)] = -1.0
    return audio


def _merged(spans: np.ndarray) -> list[tuple[int, int]]:
    return [(a, b) for a, b in join_spans(spans[np.argsort(spans[:, 0], kind="stable")]).tolist()]


def _detect(audio: np.ndarray, cuts: list[int], config: OverlapDetectorConfig | None = None,
            restore_at: int | None = None, closing: frozenset[int] = frozenset(),
            silent: bool = False) -> np.ndarray:
    """Feed ``audio`` in frames cut at ``cuts``, a watermark after each frame as the drivers do; an
    utterance closes (a speech region arrives) with the frames whose index is in ``closing``."""
    config = config or OverlapDetectorConfig()
    resources = _Resources()
    detector = config.build(None, resources)
    messages: list[OverlapRegions] = []
    edges = [0, *sorted(set(c for c in cuts if 0 < c < len(audio))), len(audio)]
    for k, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        if restore_at is not None and k == restore_at:  # resume from a checkpoint in a fresh operator
            detector = config.build(detector.checkpoint(), resources)
        messages += detector.on_item(PcmFrame(a, audio[a:b]))
        if k in closing:
            messages += detector.on_item(SpeechRegion(max(0, b - RATE), b))
        messages += detector.on_watermark(b)
    messages += detector.on_eof()
    spans = [m.silent_spans if silent else m.spans for m in messages]
    return np.vstack(spans) if spans else np.zeros((0, 2), np.int64)


def test_regions_follow_the_overlapped_audio_within_one_frame() -> None:
    truth = [(3.0, 4.5), (9.8, 10.6), (24.0, 31.0)]  # the second crosses a chunk edge
    found = _detect(_signal(35.0, truth), cuts=[])
    assert len(found) == len(truth)
    for (a, b), (start, end) in zip(truth, found.tolist()):
        assert abs(start - a * RATE) <= STEP and abs(end - b * RATE) <= STEP


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, 35 * RATE - 1), max_size=12), restore=st.integers(0, 12),
       closing=st.frozensets(st.integers(0, 12)))
def test_chunking_checkpoints_and_deferred_chunks_do_not_change_the_regions(
        cuts: list[int], restore: int, closing: frozenset[int]) -> None:
    audio = _signal(35.0, [(3.0, 4.5), (9.8, 10.6), (24.0, 31.0), (34.5, 35.0)])
    whole = _detect(audio, cuts=[])
    assert np.array_equal(_detect(audio, cuts=cuts, restore_at=restore, closing=closing), whole)
    audio = _signal(35.0, [(3.0, 4.5)], [(0.0, 1.0), (9.0, 11.0), (20.0, 20.5), (34.0, 35.0)])
    quiet = _merged(_detect(audio, cuts=[], silent=True))
    assert _merged(_detect(audio, cuts=cuts, restore_at=restore, closing=closing, silent=True)) == quiet


def test_silent_spans_follow_the_silent_audio_within_one_frame() -> None:
    truth = [(0.0, 1.0), (9.0, 11.0), (20.0, 20.5)]  # the second crosses a chunk edge
    found = _merged(_detect(_signal(30.0, [(3.0, 4.5)], truth), cuts=[], silent=True))
    assert len(found) == len(truth)
    for (a, b), (start, end) in zip(truth, found):
        assert abs(start - a * RATE) <= STEP and abs(end - b * RATE) <= STEP


def test_the_model_waits_one_step_when_an_utterance_closes() -> None:
    """A step that closes an utterance is the one a live client waits on: a chunk that became ready in it
    runs at the next watermark instead, and never later than that, even if that step closes one too."""
    audio = _signal(31.0, [(3.0, 4.5)])
    resources = _Resources()
    detector = OverlapDetectorConfig().build(None, resources)
    ten_s = 10 * RATE
    assert not detector.on_item(PcmFrame(0, audio[:ten_s]))  # the first chunk's audio is in
    assert not detector.on_item(SpeechRegion(2 * RATE, 5 * RATE))
    assert not detector.on_watermark(ten_s) and resources.segmentation.calls == 0
    detector.on_item(PcmFrame(ten_s, audio[ten_s:ten_s + 3200]))
    ran = detector.on_watermark(ten_s + 3200)  # nothing closed in this step: the chunk runs
    assert resources.segmentation.calls == 1 and np.vstack([m.spans for m in ran]).shape == (1, 2)
    start = ten_s + 3200
    end = start + 2 * ten_s  # two more chunks' audio, and an utterance closes in this step and the next
    detector.on_item(PcmFrame(start, audio[start:end]))
    detector.on_item(SpeechRegion(end - RATE, end))
    assert not detector.on_watermark(end) and resources.segmentation.calls == 1
    detector.on_item(PcmFrame(end, audio[end:end + 3200]))
    detector.on_item(SpeechRegion(end, end + 3200))
    assert len(detector.on_watermark(end + 3200)) == 2  # one message per chunk, from one model call
    assert resources.segmentation.calls == 2


def test_short_regions_are_dropped_and_short_inputs_still_run() -> None:
    found = _detect(_signal(2.0, [(0.5, 0.52), (1.0, 1.5)]), cuts=[RATE])
    assert found.tolist() and len(found) == 1 and abs(found[0, 0] - RATE) <= STEP


def test_detector_config_is_validated() -> None:
    with pytest.raises(ValueError, match="step_samples"):
        OverlapDetectorConfig(step_samples=160_000)
    with pytest.raises(ValueError, match="min_count"):
        OverlapDetectorConfig(min_count=0.5)


def _turn(a_s: float, b_s: float, speaker: int) -> SpeakerTurn:
    return SpeakerTurn(int(a_s * RATE), int(b_s * RATE), speaker)


def test_second_speaker_is_the_nearest_other_speaker() -> None:
    turns = [_turn(0, 5, 0), _turn(5, 9, 1), _turn(9, 20, 0), _turn(40, 45, 2)]
    spans = np.array([[int(12 * RATE), int(13 * RATE)], [int(30 * RATE), int(31 * RATE)]])
    added = second_speakers(spans, np.array([0.9, 0.9], np.float32), turns, 10 * RATE)
    assert [(t.start_sample, t.end_sample, t.speaker, t.overlapping) for t in added] == [
        (12 * RATE, 13 * RATE, 1, True)]  # the region at 30 s has no speech under it


def test_a_change_inside_an_overlap_extends_both_speakers_over_it() -> None:
    turns = [_turn(0, 10, 0), _turn(10, 20, 1)]
    added = second_speakers(np.array([[9 * RATE, 11 * RATE]]), np.array([1.0], np.float32), turns, 10 * RATE)
    assert sorted((t.start_sample, t.end_sample, t.speaker) for t in added) == [
        (9 * RATE, 10 * RATE, 1), (10 * RATE, 11 * RATE, 0)]


def test_far_speakers_are_not_used() -> None:
    turns = [_turn(0, 10, 0), _turn(30, 40, 1)]
    assert second_speakers(np.array([[2 * RATE, 3 * RATE]]), np.array([1.0], np.float32), turns, 10 * RATE) == []


def _view(frozen: list[SpeakerTurn], live: list[SpeakerTurn], final: bool = False) -> SpeakerTurns:
    end = max(t.end_sample for t in frozen + live)
    return SpeakerTurns(frozen, len(frozen), tuple(live), len(frozen) + len(live), end, final)


def test_assigner_freezes_settled_overlaps_and_keeps_live_ones_live() -> None:
    assigner = OverlapAssignerConfig(max_distance_samples=5 * RATE).build(None)
    frozen = [_turn(0, 10, 0), _turn(10, 20, 1)]
    live = [_turn(40, 50, 0), _turn(50, 60, 1)]
    assigner.on_item(OverlapRegions(np.array([[7 * RATE, 8 * RATE], [47 * RATE, 48 * RATE]]),
                                    np.array([1.0, 1.0], np.float32), 60 * RATE))
    (out,) = assigner.on_item(_view(frozen, live))
    frozen_added = [t for t in out.frozen[: out.frozen_count] if t.overlapping]
    live_added = [t for t in out.live if t.overlapping]
    assert [(t.start_sample, t.speaker) for t in frozen_added] == [(7 * RATE, 1)]
    assert [(t.start_sample, t.speaker) for t in live_added] == [(47 * RATE, 1)]
    assert assigner.on_item(_view(frozen, live, final=True)) == []  # the final view waits for end of input
    (final,) = assigner.on_eof()
    assert final.final and sum(t.overlapping for t in final.turns) == 2


def test_offline_final_view_keeps_speakers_in_order_of_first_appearance() -> None:
    from diarflow.operators.snapshots import SnapshotEmitterConfig

    assigner = OverlapAssignerConfig().build(None)
    assigner.on_item(OverlapRegions(np.array([[1 * RATE, 2 * RATE]]), np.array([1.0], np.float32), 30 * RATE))
    assigner.on_item(SpeakerTurns((), 0, (_turn(0, 5, 7), _turn(5, 9, 3)), 2, 9 * RATE, True))
    (final,) = assigner.on_eof()
    (snapshot,) = SnapshotEmitterConfig().build(None).on_item(final)
    turns = sorted(snapshot.turns, key=lambda t: (t.start_sample, t.overlapping))
    assert [(t.speaker, t.overlapping) for t in turns] == [(0, False), (1, True), (1, False)]


def test_turn_edges_move_out_of_silence_by_at_most_the_limit() -> None:
    silences = np.array([[0, 2 * RATE], [int(9.9 * RATE), 10 * RATE], [10 * RATE, 12 * RATE],  # touching: one
                         [int(14.5 * RATE), int(14.52 * RATE)]])
    turns = [_turn(1.9, 10.1, 0), _turn(13, 14.51, 1), _turn(20, 21, 2), _turn(0.5, 0.6, 3)]
    out = trim_to_speech(turns, join_spans(silences), int(0.25 * RATE))
    assert [(t.start_sample, t.end_sample) for t in out] == [
        (2 * RATE, int(9.9 * RATE)),  # start to the silence's end; end back to where the joined silence begins
        (13 * RATE, int(14.5 * RATE)),
        (20 * RATE, 21 * RATE),  # no silence at its edges
        (int(0.5 * RATE), int(0.6 * RATE))]  # inside a silence: trimmed away it would vanish, so it stays
    far = trim_to_speech([_turn(1, 8, 0)], np.array([[5 * RATE, 9 * RATE]]), int(0.25 * RATE))
    assert (far[0].start_sample, far[0].end_sample) == (RATE, int(7.75 * RATE))  # at most the limit


def test_assigner_trims_live_and_frozen_turns_at_silences() -> None:
    assigner = OverlapAssignerConfig(max_trim_samples=int(0.25 * RATE)).build(None)
    assigner.on_item(OverlapRegions(np.zeros((0, 2), np.int64), np.zeros(0, np.float32), 60 * RATE,
                                    np.array([[int(9.8 * RATE), 11 * RATE], [int(49.9 * RATE), 51 * RATE]])))
    (out,) = assigner.on_item(_view([_turn(0, 10, 0)], [_turn(40, 50, 1)]))
    assert [(t.start_sample, t.end_sample) for t in out.turns] == [(0, int(9.8 * RATE)), (40 * RATE, int(49.9 * RATE))]
    untrimmed = OverlapAssignerConfig(max_trim_samples=0).build(None)
    untrimmed.on_item(OverlapRegions(np.zeros((0, 2), np.int64), np.zeros(0, np.float32), 60 * RATE,
                                     np.array([[int(9.8 * RATE), 11 * RATE]])))
    (out,) = untrimmed.on_item(_view([_turn(0, 10, 0)], [_turn(40, 50, 1)]))
    assert [(t.start_sample, t.end_sample) for t in out.turns] == [(0, 10 * RATE), (40 * RATE, 50 * RATE)]
