"""Clustering operators with hand-built embeddings: online behaviour, constraints, long sessions."""

from __future__ import annotations

import numpy as np
import pytest

from diarflow.operators.clustering import OnlineClustererConfig
from diarflow.operators.global_clusterer import GlobalClustererConfig
from diarflow.operators.messages import SpeakerEmbedding, SpeechRegion, UtteranceEmbeddings
from diarflow.operators.snapshots import SnapshotEmitterConfig
from diarflow.operators.turns import windows_to_turns
from diarflow.operators.vectors import label_sums

RATE = 16000


def _speakers(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((count, 192))
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


def _utterance(start_s: float, centre: np.ndarray, windows: int = 2, noise: float = 0.05,
               seed: int = 0) -> UtteranceEmbeddings:
    rng = np.random.default_rng(seed)
    spans = []
    for k in range(windows):
        a = int((start_s + 0.75 * k) * RATE)
        v = centre + noise * rng.standard_normal(192)
        spans.append(SpeakerEmbedding(a, a + 24000, (v / np.linalg.norm(v)).astype(np.float32)))
    region = SpeechRegion(spans[0].start_sample, spans[-1].end_sample)
    return UtteranceEmbeddings(region, tuple(spans))


def _run(config: OnlineClustererConfig | GlobalClustererConfig, utterances: list[UtteranceEmbeddings]):  # type: ignore[no-untyped-def]
    clusterer = config.build(None)
    emitter = SnapshotEmitterConfig().build(None)
    snapshots = []
    for u in utterances:
        for view in clusterer.on_item(u):
            snapshots.extend(emitter.on_item(view))
    for view in clusterer.on_eof():
        snapshots.extend(emitter.on_item(view))
    return snapshots


def test_no_hard_cap_on_speakers() -> None:
    """Twelve voices, each heard for 3.75 s a minute: enough windows in the buffer to be a cluster of its
    own (speakers with fewer than ``min_cluster_windows`` windows are folded into their nearest one)."""
    centres = _speakers(12)
    utterances = [_utterance(5.0 * i, centres[i % 12], windows=4, seed=i) for i in range(36)]  # 3.75 s turns
    final = _run(OnlineClustererConfig(), utterances)[-1]
    assert final.num_speakers == 12
    assert [t.speaker for t in final.turns][:12] == list(range(12))  # numbered by first appearance


def test_num_speakers_caps_the_snapshot() -> None:
    centres = _speakers(5)
    utterances = [_utterance(5.0 * i, centres[i % 5], seed=i) for i in range(15)]
    for snapshot in _run(OnlineClustererConfig(num_speakers=3), utterances):
        assert snapshot.num_speakers <= 3


def test_labels_stay_stable_after_leaving_the_buffer() -> None:
    """Two speakers alternate for 30 minutes with a 20 s buffer: ids never change once frozen."""
    a, b = _speakers(2, seed=4)
    utterances = [_utterance(4.0 * i, a if i % 2 == 0 else b, seed=i) for i in range(450)]
    snapshots = _run(OnlineClustererConfig(retention_samples=20 * RATE), utterances)
    final = snapshots[-1]
    assert final.num_speakers == 2
    turns = final.turns
    assert all(t.speaker == (i % 2) for i, t in enumerate(turns))
    earlier = {(t.start_sample, t.end_sample): t.speaker for t in snapshots[len(snapshots) // 2].turns}
    for t in turns:
        if (t.start_sample, t.end_sample) in earlier and t.end_sample < 20 * 60 * RATE:
            assert earlier[(t.start_sample, t.end_sample)] == t.speaker


def test_buffer_memory_is_bounded() -> None:
    a, b = _speakers(2, seed=5)
    clusterer = OnlineClustererConfig(retention_samples=20 * RATE).build(None)
    for i in range(300):
        clusterer.on_item(_utterance(4.0 * i, a if i % 2 else b, seed=i))
    state = clusterer.checkpoint()
    assert len(state.vectors) <= 20 // 4 * 2 + 4  # windows of the last ~20 s only
    assert len(state.prototype_sums) <= 2 * OnlineClustererConfig().prototypes_per_speaker
    assert state.prototype_weights.sum() == 300 * 2 - len(state.vectors)  # every evicted window counted once


def test_live_count_adapts_when_a_channel_lifts_every_similarity() -> None:
    """Three voices behind a channel that adds one shared component (cross-speaker cosine ~0.6):
    the live clusterer must still find three, where a fixed join threshold of 0.3 found one."""
    centres = _speakers(3, seed=11)
    channel = _speakers(1, seed=12)[0]
    lifted = centres * 0.65 + channel * 0.76
    lifted /= np.linalg.norm(lifted, axis=1, keepdims=True)
    assert (lifted @ lifted.T)[np.triu_indices(3, 1)].min() > 0.55
    utterances = [_utterance(4.0 * i, lifted[i % 3], windows=3, noise=0.02, seed=i) for i in range(60)]
    snapshots = _run(OnlineClustererConfig(retention_samples=40 * RATE), utterances)
    final = snapshots[-1]
    assert final.num_speakers == 3
    assert [t.speaker for t in final.turns][:6] == [0, 1, 2, 0, 1, 2]


def test_global_clusterer_emits_every_turn_once_at_end_of_input() -> None:
    centres = _speakers(3, seed=9)
    utterances = [_utterance(4.0 * i, centres[i % 3], windows=3, seed=i) for i in range(30)]
    snapshots = _run(GlobalClustererConfig(), utterances)
    assert len(snapshots) == 1  # nothing before the end of input
    final = snapshots[-1]
    assert final.final and final.num_speakers == 3
    assert [t.speaker for t in final.turns][:6] == [0, 1, 2, 0, 1, 2]
    assert all(0.0 <= t.confidence <= 1.0 for t in final.turns)
    assert all(t.posteriors and t.posteriors[0][0] == t.speaker for t in final.turns)
    assert final.frame_confidence is not None and len(final.frame_confidence) > 0
    assert all(0.0 <= t.confidence <= 1.0 for t in final.turns)
    assert all(t.posteriors and t.posteriors[0][0] == t.speaker for t in final.turns)


def test_global_clusterer_counts_voices_met_a_few_at_a_time() -> None:
    """A 20-minute recording of 10 voices, three at a time in 2-minute scenes, each voice back in later
    scenes: the sequential pass clusters a few voices per buffer and the refinement settles all windows."""
    centres = _speakers(10, seed=31)
    utterances, truth = [], []
    for scene in range(10):
        cast = [scene, (scene + 3) % 10, (scene + 7) % 10]
        for i in range(24):  # 24 utterances of 3 windows, 5 s apart: 120 s
            speaker = cast[i % 3]
            utterances.append(_utterance(120.0 * scene + 5.0 * i, centres[speaker], windows=3, noise=0.06,
                                         seed=100 * scene + i))
            truth.append(speaker)
    final = _run(GlobalClustererConfig(), utterances)[-1]
    assert final.num_speakers == 10
    found = [t.speaker for t in final.turns]
    assert len(found) == len(truth)  # one turn per utterance: no window changed speaker inside one
    assert all(len({f for f, t in zip(found, truth) if t == voice}) == 1 for voice in range(10))


@pytest.mark.parametrize("voices, asked", [(5, 2), (3, 6)])
def test_global_clusterer_honours_a_fixed_count_the_voices_do_not_suggest(voices: int, asked: int) -> None:
    centres = _speakers(voices, seed=41)
    utterances = [_utterance(4.0 * i, centres[i % voices], windows=3, seed=i) for i in range(10 * voices)]
    final = _run(GlobalClustererConfig(num_speakers=asked), utterances)[-1]
    assert final.num_speakers == asked


@pytest.mark.parametrize("kwargs, match", [
    ({"num_speakers": 2, "max_speakers": 3}, "cannot be combined"),
    ({"min_speakers": 4, "max_speakers": 3}, "must not be greater"),
    ({"num_speakers": 0}, ">= 1"),
    ({"prototypes_per_speaker": 0}, "prototypes_per_speaker"),
    ({"merge_similarity": 1.5}, "merge_similarity"),
    ({"retention_samples": 10}, "retention_samples"),
])
def test_config_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        OnlineClustererConfig(**kwargs)  # type: ignore[arg-type]


def test_windows_to_turns_splits_at_centre_midpoints() -> None:
    spans = np.array([[0, 24000], [12000, 36000], [24000, 48000]])
    turns = windows_to_turns(spans, np.array([0, 0, 1]), np.array([0, 0, 0]))
    assert [(t.start_sample, t.end_sample, t.speaker) for t in turns] == [(0, 30000, 0), (30000, 48000, 1)]


def test_a_speaker_change_is_placed_where_the_two_windows_mix_the_voices() -> None:
    a, b = np.eye(192)[0], np.eye(192)[1]
    centroids = np.stack([a, b])
    spans = np.array([[0, 24000], [12000, 36000]])

    def mix(share: float) -> np.ndarray:
        v = share * a + (1 - share) * b
        return v / np.linalg.norm(v)

    def cut(first_share: float, second_share: float) -> int:
        turns = windows_to_turns(spans, np.array([0, 1]), np.array([0, 0]),
                                 np.stack([mix(first_share), mix(second_share)]), centroids)
        assert [(t.speaker, t.end_sample) for t in turns][1:] == [(1, 36000)] and turns[0].start_sample == 0
        return turns[0].end_sample

    assert cut(0.8, 0.3) == 19200  # both windows put the change 19 200 samples in; the midpoint rule says 18 000
    assert cut(1.0, 0.0) == 18000  # pure windows: the estimates meet at the midpoint
    assert cut(0.0, 0.0) == 12001  # both mostly the second voice: kept after the first window's centre
    assert cut(1.0, 1.0) == 24000  # both mostly the first: at most the second window's centre


def test_global_clustering_scales_without_a_dense_matrix() -> None:
    """Beyond ``max_direct`` windows the micro-cluster path runs; it must still find the speakers."""
    import numpy as np

    from diarflow.operators.global_clustering import cluster_embeddings

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((7, 192))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = rng.integers(0, 7, 12_000)
    vectors = centres[truth] + 0.07 * rng.standard_normal((12_000, 192))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    labels = cluster_embeddings(vectors, max_direct=2000, num_micro_clusters=300)
    assert labels.max() + 1 == 7
    for k in range(7):  # every true speaker maps to one cluster
        assert len(np.unique(labels[truth == k])) == 1
    fixed = cluster_embeddings(vectors, min_speakers=3, max_speakers=3, max_direct=2000)
    assert fixed.max() + 1 == 3


@pytest.mark.parametrize("rows", [500, 20_000])  # the dense path and the blocked sparse path
def test_label_sums_equal_a_plain_loop(rows: int) -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((rows, 192)).astype(np.float32)
    labels = rng.integers(0, 7, rows)
    expected = np.zeros((9, 192))
    for label in range(7):
        expected[label] = vectors[labels == label].astype(np.float64).sum(axis=0)
    got = label_sums(labels, vectors, 9)
    assert got.shape == (9, 192) and not got[7:].any()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


def _voices(rng: np.random.Generator, speakers: int, per_speaker: int, channel_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings of ``speakers`` voices sharing a channel component of ``channel_weight``."""
    channel = rng.standard_normal(192)
    centres = rng.standard_normal((speakers, 192))
    truth = np.repeat(np.arange(speakers), per_speaker)
    raw = (channel_weight * channel / np.linalg.norm(channel)
           + centres[truth] / np.linalg.norm(centres, axis=1)[truth, None]
           + 0.045 * rng.standard_normal((len(truth), 192)))
    return (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32), truth


@pytest.mark.parametrize("channel_weight", [0.0, 1.5])  # 1.5: every cross-speaker cosine is ~0.7
def test_speaker_count_holds_when_a_channel_raises_every_similarity(channel_weight: float) -> None:
    from diarflow.operators.global_clustering import cluster_embeddings

    rng = np.random.default_rng(7)
    vectors, truth = _voices(rng, 4, 60, channel_weight)
    cross = (vectors[truth == 0] @ vectors[truth == 1].T).mean()
    assert cross > 0.6 if channel_weight else cross < 0.2  # the premise: a channel that lifts all cosines
    labels = cluster_embeddings(vectors, merge_similarity=0.9)
    assert labels.max() + 1 == 4
    for k in range(4):
        assert len(np.unique(labels[truth == k])) == 1


@pytest.mark.parametrize("count", [1, 2, 3, 5, 6])
def test_a_fixed_speaker_count_is_honoured_exactly(count: int) -> None:
    """``num_speakers`` means exactly that many labels, whether the data suggest fewer or more."""
    from diarflow.operators.global_clustering import cluster_embeddings

    vectors, _ = _voices(np.random.default_rng(count), 4, 40, 0.5)
    labels = cluster_embeddings(vectors, min_speakers=count, max_speakers=count)
    assert len(np.unique(labels)) == count


def test_live_ids_never_exceed_a_fixed_count() -> None:
    """Five voices but num_speakers=2: every window is labelled, with at most two ids ever given out."""
    centres = _speakers(5, seed=21)
    utterances = [_utterance(4.0 * i, centres[i % 5], windows=3, seed=i) for i in range(40)]
    snapshots = _run(OnlineClustererConfig(num_speakers=2, retention_samples=30 * RATE), utterances)
    assert all(s.num_speakers <= 2 for s in snapshots)
    assert {t.speaker for t in snapshots[-1].turns} == {0, 1}


@pytest.mark.parametrize("similar, kept", [(False, True), (True, False)])
def test_an_established_voice_survives_a_wavering_count_unless_the_merge_criterion_holds(
        monkeypatch: pytest.MonkeyPatch, similar: bool, kept: bool) -> None:
    """Two voices of 8 windows each in the buffer; a re-clustering (scripted: the spectral count is what
    wavers) then finds a single speaker. Distinct voices keep their ids; voices whose centroids are as
    similar as ``merge_similarity`` asks do merge."""
    import diarflow.operators.clustering as clustering

    a, b = _speakers(2, seed=3)
    if similar:  # centroids at cosine ~0.9: above the 0.8 merge criterion
        b = 0.9 * a + np.sqrt(1 - 0.81) * b
    found = {"count": 2}

    def scripted(rows: np.ndarray, *args: object, **kwargs: object) -> np.ndarray:
        nearer_b = (rows @ b > rows @ a).astype(np.int64)
        return nearer_b if found["count"] == 2 else np.zeros(len(rows), np.int64)

    monkeypatch.setattr(clustering, "cluster_embeddings", scripted)
    clusterer = OnlineClustererConfig(reclustering_samples=0, stable_labels=False).build(None)
    for i in range(4):
        clusterer.on_item(_utterance(8.0 * i, a if i % 2 == 0 else b, windows=4, noise=0.01, seed=i))
    assert set(clusterer.checkpoint().labels.tolist()) == {0, 1}
    found["count"] = 1
    view = clusterer.on_item(_utterance(40.0, a, windows=4, noise=0.01, seed=9))[-1]
    assert ({t.speaker for t in view.live} == {0, 1}) is kept, view.live


def _scripted_clusterer(monkeypatch: pytest.MonkeyPatch, script: dict[str, object]):  # type: ignore[no-untyped-def]
    """An online clusterer whose spectral clustering is scripted: ``script["cluster"](rows)`` gives the
    cluster of every row (buffer windows then prototypes), so a test decides what each re-clustering
    proposes and checks what the clusterer shows."""
    import diarflow.operators.clustering as clustering

    monkeypatch.setattr(clustering, "cluster_embeddings", lambda rows, *a, **k: script["cluster"](rows))
    return OnlineClustererConfig(reclustering_samples=0).build(None)


def test_a_move_proposed_by_one_reclustering_only_is_held_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two voices; one re-clustering wrongly splits voice a's shown windows off as a new speaker, the next
    one does not: nothing already shown changes. A split proposed twice in a row is shown."""
    a, b, c = _speakers(3, seed=31)
    split = {"on": False}

    def cluster(rows: np.ndarray) -> np.ndarray:
        labels = (rows @ b > rows @ a).astype(np.int64)
        if split["on"]:
            labels[(labels == 0) & (rows @ c > 0.0)] = 2  # part of voice a, told apart by noise alone
        return labels

    script = {"cluster": cluster}
    clusterer = _scripted_clusterer(monkeypatch, script)
    for i in range(4):
        clusterer.on_item(_utterance(8.0 * i, a if i % 2 == 0 else b, windows=6, noise=0.3, seed=i))
    shown = clusterer.checkpoint().labels.copy()
    assert set(shown.tolist()) == {0, 1}
    split["on"] = True
    clusterer.on_item(_utterance(40.0, b, windows=4, noise=0.01, seed=7))
    assert np.array_equal(clusterer.checkpoint().labels[: len(shown)], shown)  # proposed once: held back
    split["on"] = False
    clusterer.on_item(_utterance(48.0, b, windows=4, noise=0.01, seed=8))
    assert np.array_equal(clusterer.checkpoint().labels[: len(shown)], shown)
    split["on"] = True
    clusterer.on_item(_utterance(56.0, b, windows=4, noise=0.01, seed=9))
    split["on"] = True
    clusterer.on_item(_utterance(64.0, b, windows=4, noise=0.01, seed=10))
    labels = clusterer.checkpoint().labels[: len(shown)]
    assert 2 in labels.tolist() and set(labels[shown == 1].tolist()) == {1}  # proposed twice: shown



def test_the_final_result_takes_a_move_held_back_live(monkeypatch: pytest.MonkeyPatch) -> None:
    """A split proposed by the last live re-clustering only is held back, but the end of input clusters
    once more with nothing held back: the final result shows it."""
    a, b, c = _speakers(3, seed=33)
    split = {"on": False}

    def cluster(rows: np.ndarray) -> np.ndarray:
        labels = (rows @ b > rows @ a).astype(np.int64)
        if split["on"]:
            labels[(labels == 0) & (rows @ c > 0.0)] = 2
        return labels

    clusterer = _scripted_clusterer(monkeypatch, {"cluster": cluster})
    for i in range(4):
        clusterer.on_item(_utterance(8.0 * i, a if i % 2 == 0 else b, windows=6, noise=0.3, seed=i))
    split["on"] = True
    live = clusterer.on_item(_utterance(40.0, b, windows=4, noise=0.01, seed=7))[-1]
    final = clusterer.on_eof()[-1]
    assert {t.speaker for t in live.turns} == {0, 1}
    assert {t.speaker for t in final.turns} == {0, 1, 2}


def _voice(direction: np.ndarray, count: int, noise: np.ndarray | float, rng: np.random.Generator) -> np.ndarray:
    """``count`` unit windows around ``direction``; ``noise``: one level for all or one per window."""
    levels = np.broadcast_to(np.asarray(noise, float), (count,))[:, None]
    rows = direction + levels * rng.standard_normal((count, 192))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_refinement_joins_a_voice_split_in_noise() -> None:
    """One noisy voice (window fits 0.5-0.8) whose later turns drifted off (their centroid at cosine 0.78,
    below ``merge_similarity``) and a second voice: the split halves' windows fit the voice's centroid as
    well as its own windows typically do, so with ``fit_percentile`` they are one speaker again."""
    from diarflow.operators.global_clustering import ATYPICAL_FIT_PERCENTILE, refine_clusters

    rng = np.random.default_rng(5)
    a, drift, b = _speakers(3, seed=9)
    main = _voice(a, 200, rng.uniform(0.05, 0.12, 200), rng)
    drifted = _voice(a + 0.8 * drift, 40, 0.05, rng)
    other = _voice(b, 150, rng.uniform(0.05, 0.12, 150), rng)
    vectors = np.vstack([main, drifted, other])
    first = np.repeat([0, 1, 2], [200, 40, 150])
    centroids = np.stack([v.mean(axis=0) / np.linalg.norm(v.mean(axis=0)) for v in (main, drifted)])
    assert float(centroids[0] @ centroids[1]) < 0.8  # the fixed criterion cannot join them

    assert len(np.unique(refine_clusters(vectors, first))) == 3
    joined = refine_clusters(vectors, first, fit_percentile=ATYPICAL_FIT_PERCENTILE)
    assert len(np.unique(joined)) == 2
    assert len(np.unique(joined[:240])) == 1 and joined[0] != joined[-1]


def test_refinement_keeps_two_close_voices_of_a_clean_channel_apart() -> None:
    """Two voices at centroid cosine ~0.7 (a telephone band raises every similarity) with consistent
    windows: each one's windows fit the other's centroid far worse than their own, so they stay apart."""
    from diarflow.operators.global_clustering import ATYPICAL_FIT_PERCENTILE, refine_clusters

    rng = np.random.default_rng(6)
    a, d = _speakers(2, seed=11)
    b = 0.7 * a + np.sqrt(1 - 0.7**2) * (d - (d @ a) * a) / np.linalg.norm(d - (d @ a) * a)
    vectors = np.vstack([_voice(a, 150, 0.04, rng), _voice(b, 60, 0.04, rng)])
    first = np.repeat([0, 1], [150, 60])
    kept = refine_clusters(vectors, first, fit_percentile=ATYPICAL_FIT_PERCENTILE)
    assert len(np.unique(kept)) == 2
    assert (kept[:150] == kept[0]).all() and (kept[150:] == kept[-1]).all()
