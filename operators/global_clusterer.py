"""``GlobalClusterer``: offline speaker clustering of every window of the recording at end of input."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np

from .clustering import ClustererState, OnlineClustererConfig, SpeakerTurns
from .confidence import frame_confidence, turn_posteriors, window_posteriors
from .constants import EMBEDDING_DIM, VAD_WINDOW_SAMPLES
from .global_clustering import ATYPICAL_FIT_PERCENTILE, cluster_embeddings, refine_clusters
from .messages import UtteranceEmbeddings, VadProbabilities
from .speaker_count import SpeakerCount
from .turns import speakers_at, windows_to_turns
from .vectors import label_sums, normalise

__all__ = ["GlobalClusterer", "GlobalClustererConfig", "GlobalClustererState"]

_ONLINE = OnlineClustererConfig  # the live clusterer: the shared knobs take their defaults from it (one place)


@dataclass(frozen=True)
class GlobalClustererConfig:
    """Keep every window; at end of input settle every window's speaker against the whole recording and
    emit every turn, with per-turn posteriors and a confidence score per 20 ms frame. Nothing is
    emitted before the end of input.

    The first clustering is a sequential pass of the live algorithm
    (:class:`~diarflow.operators.clustering.OnlineClusterer`: spectral clustering of a 120 s buffer plus
    the prototypes of earlier speakers, ids matched from one re-clustering to the next) over the
    windows in time order, as they arrive. Its count comes from eigengaps of a few minutes of speech
    at a time, where they are reliable; one eigengap over a whole long recording with many voices
    undercounts (8 of 13 speakers on the 20-minute dev file, 12 with the pass). At end of input
    :func:`~.global_clustering.refine_clusters` moves every window to its nearest speaker centroid of
    the whole recording and merges speakers by ``merge_similarity``, then those whose windows fit another
    speaker as well as the recording's own windows typically fit theirs (the pass splits a voice in noise
    or reverberation: 15-24 speakers for 13 on the simulated channels). When the pass's count breaks the
    ``num_speakers`` / ``min_speakers`` / ``max_speakers`` constraints, one spectral clustering of all
    windows with those bounds is used instead (:func:`~.global_clustering.cluster_embeddings`; a
    fixed count is honoured exactly), as it is when all the speech fits in one buffer. The standard
    graph derives this config from the live one with :meth:`like`, so a knob set once applies to both
    modes.

    Parameters
    ----------
    num_speakers, min_speakers, max_speakers
        Speaker-count constraints (``num_speakers`` exact; it excludes the other two).
    merge_similarity, prune_fraction, min_cluster_windows
        As in :class:`~diarflow.operators.clustering.OnlineClustererConfig`.
    """

    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    merge_similarity: float = _ONLINE.merge_similarity
    prune_fraction: float = _ONLINE.prune_fraction
    min_cluster_windows: int = _ONLINE.min_cluster_windows

    input_types: ClassVar[tuple[type, ...]] = (UtteranceEmbeddings, VadProbabilities)
    output_types: ClassVar[tuple[type, ...]] = (SpeakerTurns,)

    def __post_init__(self) -> None:
        # the same rules as the live clusterer's, stated once there
        OnlineClustererConfig(num_speakers=self.num_speakers, min_speakers=self.min_speakers,
                              max_speakers=self.max_speakers, merge_similarity=self.merge_similarity,
                              prune_fraction=self.prune_fraction, min_cluster_windows=self.min_cluster_windows)

    @classmethod
    def like(cls, online: OnlineClustererConfig) -> GlobalClustererConfig:
        """The offline clusterer with ``online``'s speaker constraints and clustering knobs."""
        return cls(online.num_speakers, online.min_speakers, online.max_speakers, online.merge_similarity,
                   online.prune_fraction, online.min_cluster_windows)

    @property
    def speakers(self) -> SpeakerCount:
        """The speaker-count constraints as one validated value."""
        return SpeakerCount(self.num_speakers, self.min_speakers, self.max_speakers)

    @property
    def sequential(self) -> OnlineClustererConfig:
        """The first, sequential pass: the live clusterer with these knobs and no count constraints
        (they apply to the whole recording, not to each 120 s buffer)."""
        return OnlineClustererConfig(merge_similarity=self.merge_similarity, prune_fraction=self.prune_fraction,
                                     min_cluster_windows=self.min_cluster_windows, stable_labels=False)

    def build(self, state: GlobalClustererState | None, resources: Any = None) -> GlobalClusterer:
        return GlobalClusterer(self, state or GlobalClustererState())


@dataclass(frozen=True)
class GlobalClustererState:
    """Every window so far, the VAD probabilities (for frame confidence) and the sequential pass's state."""

    spans: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))  # (N, 2)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, EMBEDDING_DIM), np.float32))  # (N, 192)
    utterance_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (N,)
    vad_probabilities: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (windows,)
    utterances: int = 0
    end_sample: int = 0
    sequential: ClustererState = field(default_factory=ClustererState)


class _GrowingArray:
    """Rows appended into one buffer that doubles when full: O(1) amortised appends and no heap of
    small arrays (which fragments memory over a 24 h run)."""

    def __init__(self, initial: np.ndarray) -> None:
        self._data = initial.copy()
        self._size = len(initial)

    def append(self, rows: np.ndarray) -> None:
        needed = self._size + len(rows)
        if needed > len(self._data):
            grown = np.empty((max(needed, 2 * len(self._data), 64), *self._data.shape[1:]), self._data.dtype)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size:needed] = rows
        self._size = needed

    def view(self) -> np.ndarray:
        return self._data[: self._size]


class GlobalClusterer:
    """See :class:`GlobalClustererConfig`. Memory: every window's embedding (24 h is ~100k x 192 floats)
    plus the VAD probabilities (~11 MB for 24 h) and the sequential pass's buffer and prototypes."""

    def __init__(self, config: GlobalClustererConfig, state: GlobalClustererState) -> None:
        self.config = config
        self._spans = _GrowingArray(state.spans)
        self._vectors = _GrowingArray(state.vectors)
        self._utterance_ids = _GrowingArray(state.utterance_ids)
        self._vad = _GrowingArray(state.vad_probabilities)
        self._utterances, self._end_sample = state.utterances, state.end_sample
        self._sequential = config.sequential.build(state.sequential)

    def on_item(self, item: UtteranceEmbeddings | VadProbabilities) -> Sequence[SpeakerTurns]:
        if isinstance(item, VadProbabilities):
            self._vad.append(item.probabilities)
            return []
        self._vectors.append(np.stack([w.vector for w in item.windows]).astype(np.float32))
        self._spans.append(np.array([[w.start_sample, w.end_sample] for w in item.windows], dtype=np.int64))
        self._utterance_ids.append(np.full(len(item.windows), self._utterances, np.int64))
        self._utterances += 1
        self._end_sample = max(self._end_sample, item.region.end_sample)
        self._sequential.update(item)
        return []

    def on_watermark(self, sample: int) -> Sequence[SpeakerTurns]:
        return []

    def on_eof(self) -> Sequence[SpeakerTurns]:
        cfg = self.config
        spans, vectors, utterance_ids = self._spans.view(), self._vectors.view(), self._utterance_ids.view()
        if not len(spans):
            return [SpeakerTurns((), 0, (), self._utterances, self._end_sample, True, centroids={})]
        labels = self._settled_labels(spans, vectors)
        found = int(labels.max()) + 1
        warnings: tuple[str, ...] = ()
        if cfg.num_speakers is not None and found != cfg.num_speakers:
            warnings = (f"asked for {cfg.num_speakers} speakers but the audio only supports {found}",)
        posteriors = window_posteriors(vectors, labels)  # (n, speakers)
        centroids = normalise(label_sums(labels, vectors, found)).astype(np.float32)  # (speakers, 192)
        turns = turn_posteriors(windows_to_turns(spans, labels, utterance_ids, vectors, centroids), spans,
                                posteriors)
        vad = self._vad.view()
        end = max(self._end_sample, len(vad) * VAD_WINDOW_SAMPLES)
        frames = frame_confidence(turns, spans, posteriors, labels, vad, end)
        return [SpeakerTurns((), 0, tuple(turns), self._utterances, self._end_sample, True, warnings, frames,
                             {k: centroids[k] for k in range(found)})]

    def _settled_labels(self, spans: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Every window's speaker ``(n,)``: the sequential pass's, refined over the whole recording; or
        one spectral clustering of all windows when the speech spans at most one buffer (the pass then
        sees the same windows, with the live path's stability rules) or when the pass's count breaks
        the speaker constraints."""
        cfg = self.config
        floor, cap = cfg.speakers.floor, cfg.speakers.cap
        if spans[-1, 1] - spans[0, 0] > cfg.sequential.retention_samples:  # longer than one buffer
            first = speakers_at(self._sequential.turns(), spans.sum(axis=1) // 2)
            _, first = np.unique(first, return_inverse=True)
            labels = refine_clusters(vectors, first, floor, cfg.merge_similarity, cfg.min_cluster_windows,
                                     fit_percentile=ATYPICAL_FIT_PERCENTILE)
            found = int(labels.max()) + 1
            if floor <= found and (cap is None or found <= cap):
                return labels
        return cluster_embeddings(vectors, floor, cap, cfg.merge_similarity, cfg.prune_fraction,
                                  min_cluster_size=cfg.min_cluster_windows)

    def checkpoint(self) -> GlobalClustererState:
        return GlobalClustererState(self._spans.view().copy(), self._vectors.view().copy(),
                                    self._utterance_ids.view().copy(), self._vad.view().copy(),
                                    self._utterances, self._end_sample, self._sequential.checkpoint())

