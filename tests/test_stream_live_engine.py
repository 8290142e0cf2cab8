"""Protocol v1.1 facts that the engine states about itself: the settled horizon, relabelling, live confidence.

Real models on real speech, through the streaming driver (no server): the horizon is the clusterer's, so a
short rolling buffer (20 s) makes turns freeze inside a one-minute clip.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from diarflow import live
from diarflow.live import CheckpointFile, LiveOptions, LiveSession
from diarflow.operators.messages import Snapshot
from diarflow.operators.models import Resources
from diarflow.operators.pipeline import PipelineConfig, build_graph
from diarflow.operators.snapshots import relabelled_samples
from diarflow.servers.stream_client import file_frames
from diarflow.testing.evaluation import DevItem

pytestmark = pytest.mark.timeout(120)


def test_relabelled_samples_counts_speech_that_changed_speaker() -> None:
    previous = np.array([[0, 100, 0], [100, 200, 1]])
    assert relabelled_samples(previous, previous) == 0
    assert relabelled_samples(previous, np.array([[0, 200, 0]])) == 100  # speaker 1 became speaker 0
    assert relabelled_samples(previous, np.array([[0, 50, 1], [50, 200, 1]])) == 100
    assert relabelled_samples(previous, np.zeros((0, 3), np.int64)) == 0  # dropped, not relabelled


@pytest.mark.parametrize("settle_samples", [None, 8 * 16000], ids=["clusterer horizon", "settled output 8 s"])
def test_settled_horizon_never_moves_back_and_nothing_before_it_changes(
        resources: Resources, speech_clips: dict[str, DevItem], settle_samples: int | None) -> None:
    cfg = PipelineConfig()
    graph = build_graph(replace(cfg, clustering=replace(cfg.clustering, retention_samples=20 * 16000),
                                snapshots=replace(cfg.snapshots, settle_samples=settle_samples)))
    session = LiveSession(LiveOptions(), resources, graph=graph)
    frames = file_frames(speech_clips["two_speakers"].audio_path)
    snapshots: list[Snapshot] = []
    for frame in frames:
        snapshots.extend(session.push(frame))
    snapshots.extend(session.close())
    horizons = [s.settled_until_sample for s in snapshots]
    assert horizons == sorted(horizons) and horizons[-2] > 0, "the 20 s buffer must freeze some turns"
    assert horizons[-1] == sum(len(f) for f in frames) // 2, "final: settled up to the end of the audio"
    later_views = [{(t.start_sample, t.end_sample, t.speaker) for t in s.turns} for s in snapshots]
    for k, snapshot in enumerate(snapshots):
        settled = {(t.start_sample, t.end_sample, t.speaker) for t in snapshot.turns
                   if t.end_sample <= snapshot.settled_until_sample}
        for later in later_views[k + 1:]:
            assert settled <= later, f"a settled turn of snapshot {k} changed later"
    assert all(s.relabelled_samples >= 0 for s in snapshots)
    assert all(0.0 <= t.confidence <= 1.0 for s in snapshots for t in s.turns)
    assert any(t.confidence < 1.0 for t in snapshots[3].turns), "live turns carry the engine's posterior"
    if settle_samples is not None:  # the horizon trails the edge by about the settle time, not the buffer
        behind = [(s.end_sample - s.settled_until_sample) / 16000 for s in snapshots[:-1] if s.end_sample > 20 * 16000]
        assert float(np.median(behind)) < 15.0


def test_checkpoint_file_resumes_exactly_with_settled_turns_in_its_journal(
        tmp_path: Path, resources: Resources, speech_clips: dict[str, DevItem], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "_MIN_JOURNALED", 1)  # journal every settled turn, even in a one-minute clip
    cfg = PipelineConfig().for_mode("stream")
    graph = build_graph(replace(cfg, clustering=replace(cfg.clustering, retention_samples=15 * 16000)))
    frames = file_frames(speech_clips["two_speakers"].audio_path)
    whole = LiveSession(LiveOptions(), resources, graph=graph)
    for frame in frames:
        whole.push(frame)
    want = [(t.start_sample, t.end_sample, t.speaker) for t in whole.close()[-1].turns]

    first = LiveSession(LiveOptions(), resources, graph=graph)
    saved = CheckpointFile(tmp_path / "s.ckpt")
    for frame in frames[:220]:  # 44 s, then the "process" dies
        if first.push(frame):
            saved.save(first, {"session_id": "x"})
    assert saved.turns_path.stat().st_size > 0, "settled turns go to the journal"
    reopened = CheckpointFile(tmp_path / "s.ckpt")  # a new process: only the files
    checkpoint = reopened.load()
    assert checkpoint.meta == {"session_id": "x"}
    resumed = LiveSession(LiveOptions(), resources, checkpoint, graph=graph)
    for frame in frames[resumed.samples_received // 3200:]:
        if resumed.push(frame):
            reopened.save(resumed)  # extends the journal it read
    got = [(t.start_sample, t.end_sample, t.speaker) for t in resumed.close()[-1].turns]
    assert got == want
    last = CheckpointFile(tmp_path / "s.ckpt").load()  # the last save, after the last utterance
    assert 220 * 3200 < last.samples_received <= resumed.samples_received
