"""``OnlineClusterer``: incremental speaker clustering with bounded per-speaker summaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from .constants import EMBEDDING_DIM, SAMPLE_RATE
from .confidence import turn_confidence, window_posteriors
from .global_clustering import ATYPICAL_FIT_PERCENTILE, cluster_embeddings, window_fit
from .vectors import label_sums, normalise
from .messages import SpeakerTurn, UtteranceEmbeddings
from .merge_similarity import DEFAULT_MERGE_SIMILARITY, check_merge_similarity
from .speaker_count import SpeakerCount
from .turns import windows_to_turns

__all__ = ["OnlineClusterer", "OnlineClustererConfig", "ClustererState", "SpeakerTurns"]


@dataclass(frozen=True, eq=False)
class SpeakerTurns:
    """The clusterer's full current view: frozen turns (older than the buffer) then live ones.

    ``frozen`` is the clusterer's append-only list, shared rather than copied so that a message costs
    O(live turns) however long the session; only its first ``frozen_count`` items belong to this view.
    """

    frozen: Sequence[SpeakerTurn]
    frozen_count: int
    live: tuple[SpeakerTurn, ...]
    utterances: int
    end_sample: int
    final: bool = False
    warnings: tuple[str, ...] = ()
    frame_confidence: np.ndarray | None = None  # uint8 per 20 ms, offline (GlobalClusterer) only
    centroids: Mapping[int, np.ndarray] | None = None  # speaker -> L2-normalised mean embedding (192,)
    # no turn ending at or before this sample changes in a later view (the frozen horizon)
    settled_until_sample: int = 0

    @property
    def turns(self) -> tuple[SpeakerTurn, ...]:
        return tuple(self.frozen[: self.frozen_count]) + self.live


@dataclass(frozen=True)
class OnlineClustererConfig:
    """Online speaker clustering over a rolling buffer (the offline pass: :mod:`.global_clusterer`).

    Live, after each utterance the windows of the rolling buffer are clustered again together with
    the summaries of the speakers heard before the buffer (a few weighted prototypes per speaker),
    by the same spectral clustering as the offline pass (count from the eigengap, so it adapts to
    the channel instead of relying on fixed cosine thresholds). The clusters are then matched to the
    speaker ids already given out (the one-to-one matching that keeps the most windows and prototypes
    under their id), so ids persist; an unmatched cluster is a new speaker. Windows leaving the buffer
    fold into their speaker's prototypes and their turns freeze with their last label.

    Parameters
    ----------
    retention_samples
        The rolling buffer (120 s at 16 kHz).
    num_speakers, min_speakers, max_speakers
        Speaker-count constraints (``num_speakers`` exact; it excludes the other two).
    merge_similarity
        Cosine similarity of two speaker centroids above which they are merged after the spectral
        clustering (lower merges more; the sensitivity knob when counts come out high).
    prune_fraction
        Fraction of nearest neighbours each window keeps in the spectral affinity graph.
    reclustering_samples
        Live: the buffer is clustered again once this much speech (5 s) has come in since the last
        time, or sooner when a new window fits no known speaker; in between, new windows join their
        nearest speaker (a re-clustering costs ~10-20 ms, an assignment well under 1 ms).
    prototypes_per_speaker
        Live: weighted prototypes kept per speaker for windows that left the buffer (memory
        O(speakers x prototypes) however long the session).
    min_cluster_windows
        Global clusters with fewer windows are dissolved into their nearest neighbour (spurious
        speakers from noise or overlap), unless that would leave fewer than ``min_speakers``.
    stable_labels
        Live: a window already shown under one speaker moves to another (or to a new speaker) only when
        two re-clusterings in a row propose it. A count that wavers for one re-clustering then no
        longer relabels reported speech back and forth; a real correction shows one re-clustering
        later. At end of input the buffer is clustered once more with nothing held back: the final
        result takes the clusterer's last word. Off for the offline sequential pass, which shows
        nothing before the end.
    """

    retention_samples: int = 120 * SAMPLE_RATE
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    merge_similarity: float = DEFAULT_MERGE_SIMILARITY
    prune_fraction: float = 0.012
    min_cluster_windows: int = 5
    prototypes_per_speaker: int = 8
    reclustering_samples: int = 5 * SAMPLE_RATE
    stable_labels: bool = True

    input_types: ClassVar[tuple[type, ...]] = (UtteranceEmbeddings,)
    output_types: ClassVar[tuple[type, ...]] = (SpeakerTurns,)

    def __post_init__(self) -> None:
        check_merge_similarity(self.merge_similarity)
        if not 0.0 < self.prune_fraction <= 0.5:
            raise ValueError(f"prune_fraction must lie in (0, 0.5], got {self.prune_fraction}")
        if self.reclustering_samples < 0:
            raise ValueError(f"reclustering_samples must be >= 0, got {self.reclustering_samples}")
        if self.prototypes_per_speaker < 1:
            raise ValueError(f"prototypes_per_speaker must be >= 1, got {self.prototypes_per_speaker}")
        if self.min_cluster_windows < 1:
            raise ValueError(f"min_cluster_windows must be >= 1, got {self.min_cluster_windows}")
        if self.retention_samples < SAMPLE_RATE:
            raise ValueError(f"retention_samples must be >= {SAMPLE_RATE} (1 s), got {self.retention_samples}")
        SpeakerCount(self.num_speakers, self.min_speakers, self.max_speakers)  # SpeakerCountError if invalid

    @property
    def speakers(self) -> SpeakerCount:
        """The speaker-count constraints as one validated value."""
        return SpeakerCount(self.num_speakers, self.min_speakers, self.max_speakers)

    def build(self, state: ClustererState | None, resources: Any = None) -> OnlineClusterer:
        return OnlineClusterer(self, state or ClustererState())


@dataclass(frozen=True)
class ClustererState:
    """Plain arrays: speaker prototypes, the buffer's windows and the frozen turns."""

    prototype_sums: np.ndarray = field(default_factory=lambda: np.zeros((0, EMBEDDING_DIM), np.float32))  # (m, 192)
    prototype_weights: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))  # (m,) windows each
    prototype_speakers: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (m,)
    speakers: int = 0  # ids given out so far: 0 .. speakers - 1
    since_reclustering: int = 0  # samples of speech since the buffer was last clustered again
    spans: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))  # buffer windows (n, 2)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, EMBEDDING_DIM), np.float32))  # (n, 192)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (n,)
    # per buffer window, the move the last re-clustering proposed and held back: a speaker id, _NEW_SPEAKER, or -1
    proposed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (n,)
    utterance_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (n,)
    frozen_turns: tuple[SpeakerTurn, ...] = ()
    utterances: int = 0
    end_sample: int = 0


_NEW_SPEAKER = -2  # ClustererState.proposed: a move to a speaker that did not exist yet
_MIN_WINDOWS_TO_ASSIGN = 24  # fewer buffer windows (~18 s of speech): always cluster again (cheap, and the spread is unsure)


def _smooth(labels: np.ndarray) -> np.ndarray:
    """Majority of three inside an utterance: a lone window between two equal neighbours follows them."""
    out = labels.copy()
    for k in range(1, len(labels) - 1):
        if labels[k - 1] == labels[k + 1] != labels[k]:
            out[k] = labels[k - 1]
    return out


class OnlineClusterer:
    """See :class:`OnlineClustererConfig`. Memory: O(speakers x prototypes + windows in the buffer + frozen
    turns)."""

    def __init__(self, config: OnlineClustererConfig, state: ClustererState) -> None:
        self.config = config
        self._prototype_sums, self._prototype_weights = state.prototype_sums, state.prototype_weights
        self._prototype_speakers, self._speakers = state.prototype_speakers, state.speakers
        self._since_reclustering = state.since_reclustering
        self._spans, self._vectors = state.spans, state.vectors
        self._labels, self._utterance_ids = state.labels, state.utterance_ids
        proposed = getattr(state, "proposed", None)  # None: a checkpoint from before the field existed
        self._proposed = proposed if proposed is not None else np.full(len(state.labels), -1)
        self._frozen_turns: list[SpeakerTurn] = list(state.frozen_turns)
        self._utterances, self._end_sample = state.utterances, state.end_sample

    def on_item(self, item: UtteranceEmbeddings) -> Sequence[SpeakerTurns]:
        self.update(item)
        return [self._view(final=False)]

    def update(self, item: UtteranceEmbeddings) -> None:
        """Take one utterance's windows (cluster or assign them, let old windows leave the buffer)
        without building a view: what :meth:`on_item` does, for a caller that only needs
        :meth:`turns` at the end (the offline clusterer's sequential pass)."""
        cfg = self.config
        new_vectors = np.stack([w.vector for w in item.windows]).astype(np.float32)  # (m, 192)
        new_spans = np.array([[w.start_sample, w.end_sample] for w in item.windows], dtype=np.int64)
        utterance = np.full(len(new_vectors), self._utterances)
        self._utterances += 1
        self._end_sample = max(self._end_sample, item.region.end_sample)
        assigned = self._assign(new_vectors)
        self._since_reclustering += int(new_spans[-1, 1] - new_spans[0, 0])
        self._spans = np.vstack([self._spans, new_spans])
        self._vectors = np.vstack([self._vectors, new_vectors])
        self._utterance_ids = np.concatenate([self._utterance_ids, utterance])
        self._proposed = np.concatenate([self._proposed, np.full(len(new_vectors), -1)])
        if assigned is None or self._since_reclustering >= cfg.reclustering_samples:
            self._labels = self._relabel(np.concatenate([self._labels, np.full(len(new_vectors), -1)]))
            self._since_reclustering = 0
        else:
            self._labels = np.concatenate([self._labels, _smooth(assigned)])
        self._evict()

    def _assign(self, vectors: np.ndarray) -> np.ndarray | None:
        """The cheap path between re-clusterings: each new window ``(m, 192)`` joins its most similar
        speaker centroid, unless one of them fits it worse than the ``ATYPICAL_FIT_PERCENTILE``-th
        percentile of the buffer windows' fit to their own speaker (a possible new voice: then ``None``,
        and the caller re-clusters). The yardstick is this session's own spread, so it holds on any
        channel."""
        if not self._speakers or len(self._labels) < _MIN_WINDOWS_TO_ASSIGN:
            return None
        centroids = self._centroids()  # (speakers, 192)
        fit = window_fit(normalise(self._vectors), self._labels, centroids)  # buffer windows, own speaker
        sims = normalise(vectors) @ centroids.T  # (m, speakers)
        if sims.max(axis=1).min() < np.percentile(fit, ATYPICAL_FIT_PERCENTILE):
            return None
        return np.argmax(sims, axis=1).astype(np.int64)

    def _relabel(self, previous: np.ndarray, final: bool = False) -> np.ndarray:
        """Cluster buffer windows and prototypes together; give each cluster a speaker id.

        ``previous (n,)`` holds the buffer windows' current ids (-1 for new windows). Returns the new
        ids ``(n,)``, smoothed inside each utterance; with ``stable_labels``, moves of shown windows
        are held back as that knob describes, except in the ``final`` re-clustering at end of input.
        """
        cfg = self.config
        hold_back = cfg.stable_labels and not final
        n = len(self._vectors)
        rows = normalise(np.vstack([self._vectors, self._prototype_sums]).astype(np.float32))
        weights = np.concatenate([np.ones(n), self._prototype_weights])
        clusters = cluster_embeddings(rows, cfg.speakers.floor, cfg.speakers.cap, cfg.merge_similarity,
                                      cfg.prune_fraction, min_cluster_size=cfg.min_cluster_windows,
                                      weights=weights)
        owners = np.concatenate([previous, self._prototype_speakers])  # id each row holds now (-1: none)
        count = int(clusters.max()) + 1
        overlap = np.zeros((count, max(self._speakers, 1)))
        held = owners >= 0
        np.add.at(overlap, (clusters[held], owners[held]), weights[held])
        chosen, ids = linear_sum_assignment(overlap, maximize=True)
        mapping = np.full(count, -1)
        for cluster, speaker in zip(chosen, ids):
            if overlap[cluster, speaker] > 0:
                mapping[cluster] = speaker
        cap = cfg.speakers.cap
        known = self._speakers
        for cluster in np.flatnonzero(mapping < 0):  # clusters no existing speaker holds: new speakers
            if cap is not None and known >= cap:  # unless the count is capped: the closest one
                sums = label_sums(owners[held], rows[held], known, weights[held])
                mapping[cluster] = int(np.argmax(normalise(sums) @ rows[clusters == cluster].sum(axis=0)))
                continue
            mapping[cluster] = known
            known += 1
        labels = mapping[clusters[:n]]
        if hold_back:
            labels = self._confirmed(previous, labels)
        # ids go only to new clusters still holding windows, in order; a held-back move to a cluster that
        # became a speaker now waits for that id, one to a cluster that did not for any new speaker
        used = np.unique(labels[labels >= self._speakers])
        given = np.concatenate([np.arange(self._speakers), np.full(known - self._speakers, _NEW_SPEAKER)])
        given[used] = self._speakers + np.arange(len(used))
        labels = given[labels]
        proposed = self._proposed >= 0
        self._proposed[proposed] = given[self._proposed[proposed]]
        self._speakers += len(used)
        labels = self._keep_established(previous, labels, rows, weights)
        moved = (previous >= 0) & (labels != previous)
        if moved.any():  # a window already shown keeps its speaker unless the new one's centroid is closer
            ids = np.concatenate([labels, self._prototype_speakers])
            centroids = normalise(label_sums(ids, rows, self._speakers, weights))  # (speakers, 192)
            gain = np.sum(rows[:n] * (centroids[labels] - centroids[np.maximum(previous, 0)]), axis=1)
            labels = np.where(moved & (gain < 0.0), previous, labels)
        for u in np.unique(self._utterance_ids):
            mask = self._utterance_ids == u
            labels[mask] = _smooth(labels[mask])
        return labels

    def _confirmed(self, previous: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Hold back moves of shown windows that the last re-clustering did not also propose.

        ``previous``, ``labels``: buffer windows' ids before / proposed now ``(n,)`` (ids from
        ``self._speakers`` on are new clusters). Returns the ids ``(n,)`` and records the held-back
        proposals for the next re-clustering (:meth:`_relabel` maps a new cluster's id once it is given out).
        """
        again = np.where(labels >= self._speakers, self._proposed == _NEW_SPEAKER, self._proposed == labels)
        held_back = (previous >= 0) & (labels != previous) & ~again
        self._proposed = np.where(held_back, labels, -1)
        return np.where(held_back, previous, labels)

    def _keep_established(self, previous: np.ndarray, labels: np.ndarray, rows: np.ndarray,
                          weights: np.ndarray) -> np.ndarray:
        """A speaker who held at least ``min_cluster_windows`` buffer windows and gets none in the new
        clustering keeps them, unless their centroid is as similar to another speaker's as the merge
        criterion (``merge_similarity``) asks: the eigengap's count may waver from one re-clustering to the
        next, and an established voice should not vanish and come back with it.

        ``previous``, ``labels``: buffer windows' ids before / after ``(n,)``; ``rows (n + m, 192)``, unit
        buffer windows then prototypes, with ``weights (n + m,)``. Returns the ids ``(n,)``.
        """
        held = np.bincount(previous[previous >= 0], minlength=self._speakers)
        gone = np.flatnonzero((held >= self.config.min_cluster_windows)
                              & (np.bincount(labels, minlength=self._speakers) == 0))
        if not len(gone):
            return labels
        before = np.concatenate([previous, self._prototype_speakers])
        shown = before >= 0
        old = normalise(label_sums(before[shown], rows[shown], self._speakers, weights[shown]))  # (speakers, 192)
        new = normalise(label_sums(np.concatenate([labels, self._prototype_speakers]), rows, self._speakers,
                                   weights))
        for speaker in gone.tolist():
            others = np.delete(new, speaker, axis=0)
            if not len(others) or float(np.max(others @ old[speaker])) < self.config.merge_similarity:
                labels = np.where(previous == speaker, speaker, labels)
        return labels

    def _evict(self) -> None:
        """Whole utterances that ended before the buffer start leave: turns freeze, prototypes absorb them."""
        cutoff = self._end_sample - self.config.retention_samples
        if not len(self._spans) or cutoff <= 0:
            return
        ids = self._utterance_ids
        # utterance ids are increasing; an utterance leaves when its last window ends before the cutoff
        last_end = np.maximum.reduceat(self._spans[:, 1], np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]))
        leaving_ids = np.unique(ids)[last_end <= cutoff]
        leaving = np.isin(ids, leaving_ids)
        if not leaving.any():
            return
        centroids = self._centroids()
        self._absorb(self._vectors[leaving], self._labels[leaving])
        posteriors = window_posteriors(self._vectors, self._labels)  # (n, speakers): the live turn confidence
        self._frozen_turns.extend(turn_confidence(
            windows_to_turns(self._spans[leaving], self._labels[leaving], ids[leaving], self._vectors[leaving],
                             centroids),
            self._spans[leaving], posteriors[leaving]))
        keep = ~leaving
        self._spans, self._vectors = self._spans[keep], self._vectors[keep]
        self._labels, self._utterance_ids = self._labels[keep], ids[keep]
        self._proposed = self._proposed[keep]

    def _absorb(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        """Add windows ``(k, 192)`` with ids ``(k,)`` to the prototypes; merge the most similar
        prototypes of a speaker until it has at most ``prototypes_per_speaker``."""
        sums = np.vstack([self._prototype_sums, vectors]).astype(np.float32)
        weights = np.concatenate([self._prototype_weights, np.ones(len(vectors))])
        speakers = np.concatenate([self._prototype_speakers, labels])
        keep = np.ones(len(sums), bool)
        limit = self.config.prototypes_per_speaker
        for speaker in np.unique(labels):
            own = np.flatnonzero(speakers == speaker)
            while len(own) > limit:
                unit_rows = normalise(sums[own])
                sims = unit_rows @ unit_rows.T
                np.fill_diagonal(sims, -np.inf)
                a, b = np.unravel_index(int(np.argmax(sims)), sims.shape)
                sums[own[a]] += sums[own[b]]
                weights[own[a]] += weights[own[b]]
                keep[own[b]] = False
                own = np.delete(own, b)
        self._prototype_sums, self._prototype_weights = sums[keep], weights[keep]
        self._prototype_speakers = speakers[keep]

    def _centroids(self) -> np.ndarray:
        """Unit mean embedding per speaker id over prototypes and buffer windows: float32 ``(speakers, 192)``."""
        vectors = np.vstack([self._prototype_sums, self._vectors])
        labels = np.concatenate([self._prototype_speakers, self._labels])
        return normalise(label_sums(labels, vectors, self._speakers)).astype(np.float32)

    def turns(self) -> list[SpeakerTurn]:
        """Every turn so far, frozen then live, without confidences (:func:`windows_to_turns`): each
        window's centre lies in a turn of its own speaker."""
        return [*self._frozen_turns, *windows_to_turns(self._spans, self._labels, self._utterance_ids)]

    def _view(self, final: bool) -> SpeakerTurns:
        means = self._centroids()
        live = tuple(turn_confidence(windows_to_turns(self._spans, self._labels, self._utterance_ids,
                                                      self._vectors, means),
                                     self._spans, window_posteriors(self._vectors, self._labels)))
        return SpeakerTurns(self._frozen_turns, len(self._frozen_turns), live, self._utterances,
                            self._end_sample, final, centroids={k: means[k] for k in range(len(means))},
                            settled_until_sample=self.settled_until_sample(live))

    def settled_until_sample(self, live: Sequence[SpeakerTurn]) -> int:
        """The frozen horizon: windows ending at or before ``end - retention`` have left the buffer (their
        turns are frozen), no live turn starts before the earliest live one, and later utterances start
        near the live edge; so nothing ending at or before the smaller of the two changes any more."""
        horizon = max(0, self._end_sample - self.config.retention_samples)
        return min([horizon, *(t.start_sample for t in live)])

    def on_watermark(self, sample: int) -> Sequence[SpeakerTurns]:
        return []

    def on_eof(self) -> Sequence[SpeakerTurns]:
        if self.config.stable_labels and len(self._labels):  # the final result: nothing held back any more
            self._labels = self._relabel(self._labels, final=True)
        return [self._view(final=True)]

    def checkpoint(self) -> ClustererState:
        return ClustererState(self._prototype_sums, self._prototype_weights, self._prototype_speakers,
                              self._speakers, self._since_reclustering, self._spans, self._vectors, self._labels,
                              self._proposed, self._utterance_ids, tuple(self._frozen_turns),
                              self._utterances, self._end_sample)
