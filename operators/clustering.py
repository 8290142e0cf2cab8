"""``OnlineClusterer``: incremental speaker clustering with bounded per-speaker summaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from .confidence import frame_confidence, turn_confidence, turn_posteriors, window_posteriors
from .global_clustering import cluster_embeddings
from .vectors import label_sums
from .messages import SpeakerTurn, UtteranceEmbeddings, VadProbabilities

__all__ = ["OnlineClusterer", "OnlineClustererConfig", "ClustererState", "SpeakerTurns", "windows_to_turns"]

_DIM = 192


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
    frame_confidence: np.ndarray | None = None  # uint8 per 20 ms, offline refinement only
    centroids: Mapping[int, np.ndarray] | None = None  # speaker -> L2-normalised mean embedding (192,)
    # no turn ending at or before this sample changes in a later view (the frozen horizon)
    settled_until_sample: int = 0

    @property
    def turns(self) -> tuple[SpeakerTurn, ...]:
        return tuple(self.frozen[: self.frozen_count]) + self.live


@dataclass(frozen=True)
class OnlineClustererConfig:
    """Online speaker clustering over a rolling buffer, with optional offline refinement at the end.

    Each new window joins the speaker whose centroid is most similar (cosine) if that similarity is
    at least ``assign_threshold``, otherwise it founds a new speaker (no cap unless asked). After each
    utterance the windows still inside the rolling buffer are re-assigned to the updated centroids
    and speakers that became indistinguishable (centroid cosine >= ``merge_threshold``) are merged,
    so labels inside the buffer may be revised. Windows leaving the buffer fold into their speaker's
    summary (a running sum) and their turns freeze with their last label.

    Parameters
    ----------
    assign_threshold
        Cosine similarity in (-1, 1) needed to join an existing speaker.
    merge_threshold
        Cosine similarity in (-1, 1) of two centroids above which the younger speaker is merged into
        the older (only if the younger has no frozen turns).
    retention_samples
        The rolling buffer (120 s at 16 kHz).
    num_speakers, min_speakers, max_speakers
        Speaker-count constraints (``num_speakers`` exact; it excludes the other two).
    refine
        Offline mode: keep every window and, at end of input, cluster them all globally and emit every
        turn. The online assignment is skipped (the global clustering would replace its labels), so
        nothing is emitted before the end of input.
    merge_similarity
        Offline: cosine similarity of two global speaker centroids above which they are merged after
        the spectral clustering (lower merges more; the sensitivity knob when counts come out high).
    prune_fraction
        Offline: fraction of nearest neighbours each window keeps in the spectral affinity graph.
    min_cluster_windows
        Global clusters with fewer windows are dissolved into their nearest neighbour (spurious
        speakers from noise or overlap), unless that would leave fewer than ``min_speakers``.
    """

    assign_threshold: float = 0.30
    merge_threshold: float = 0.55
    retention_samples: int = 120 * 16000
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    refine: bool = False
    merge_similarity: float = 0.7
    prune_fraction: float = 0.012
    min_cluster_windows: int = 5

    input_types: ClassVar[tuple[type, ...]] = (UtteranceEmbeddings, VadProbabilities)
    output_types: ClassVar[tuple[type, ...]] = (SpeakerTurns,)

    def __post_init__(self) -> None:
        for name in ("assign_threshold", "merge_threshold"):
            if not -1.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in (-1, 1), got {getattr(self, name)}")
        if not -1.0 < self.merge_similarity <= 1.0:
            raise ValueError(f"merge_similarity must lie in (-1, 1], got {self.merge_similarity}")
        if not 0.0 < self.prune_fraction <= 0.5:
            raise ValueError(f"prune_fraction must lie in (0, 0.5], got {self.prune_fraction}")
        if self.min_cluster_windows < 1:
            raise ValueError(f"min_cluster_windows must be >= 1, got {self.min_cluster_windows}")
        if self.retention_samples < 16000:
            raise ValueError(f"retention_samples must be >= 16000 (1 s), got {self.retention_samples}")
        for name in ("num_speakers", "min_speakers", "max_speakers"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 or None, got {value!r}")
        if self.num_speakers is not None and (self.min_speakers is not None or self.max_speakers is not None):
            raise ValueError("num_speakers cannot be combined with min_speakers / max_speakers")
        if self.min_speakers is not None and self.max_speakers is not None and self.min_speakers > self.max_speakers:
            raise ValueError(f"min_speakers ({self.min_speakers}) must be <= max_speakers ({self.max_speakers})")

    @property
    def speaker_cap(self) -> int | None:
        return self.num_speakers if self.num_speakers is not None else self.max_speakers

    def build(self, state: ClustererState | None, resources: Any = None) -> OnlineClusterer:
        return OnlineClusterer(self, state or ClustererState())


@dataclass(frozen=True)
class ClustererState:
    """Plain arrays: speaker summaries, the buffer's windows, frozen turns, and (refine) all windows."""

    frozen_sums: np.ndarray = field(default_factory=lambda: np.zeros((0, _DIM), np.float32))  # (speakers, 192)
    has_frozen: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # (speakers,)
    spans: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))  # buffer windows (n, 2)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, _DIM), np.float32))  # (n, 192)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (n,)
    utterance_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (n,)
    frozen_turns: tuple[SpeakerTurn, ...] = ()
    utterances: int = 0
    end_sample: int = 0
    history_spans: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))  # refine only, (N, 2)
    history_vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, _DIM), np.float32))  # (N, 192)
    history_utterance_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (N,)
    vad_probabilities: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # refine only


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

    def __len__(self) -> int:
        return self._size


def windows_to_turns(spans: np.ndarray, labels: np.ndarray, utterance_ids: np.ndarray) -> list[SpeakerTurn]:
    """Turns from labelled windows: inside an utterance each sample belongs to the window whose centre
    is nearest (boundaries at midpoints between centres); equal neighbours merge.

    Parameters
    ----------
    spans
        int ``(n, 2)`` window ``[start, end)`` sample spans, ordered by start within each utterance.
    labels, utterance_ids
        int ``(n,)``.
    """
    turns: list[SpeakerTurn] = []
    n = len(spans)
    i = 0
    while i < n:
        j = i
        while j + 1 < n and utterance_ids[j + 1] == utterance_ids[i]:
            j += 1
        u_start, u_end = int(spans[i:j + 1, 0].min()), int(spans[i:j + 1, 1].max())
        centres = spans[i:j + 1].sum(axis=1) // 2
        cuts = [u_start, *((centres[:-1] + centres[1:]) // 2).tolist(), u_end]
        for k in range(j - i + 1):
            a, b, label = cuts[k], cuts[k + 1], int(labels[i + k])
            if b <= a:
                continue
            if turns and turns[-1].speaker == label and turns[-1].end_sample == a:
                turns[-1] = SpeakerTurn(turns[-1].start_sample, b, label)
            else:
                turns.append(SpeakerTurn(a, b, label))
        i = j + 1
    return turns


def _unit(vector: np.ndarray) -> np.ndarray:
    return (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)


def _smooth(labels: np.ndarray) -> np.ndarray:
    """Majority of three inside an utterance: a lone window between two equal neighbours follows them."""
    out = labels.copy()
    for k in range(1, len(labels) - 1):
        if labels[k - 1] == labels[k + 1] != labels[k]:
            out[k] = labels[k - 1]
    return out


class OnlineClusterer:
    """See :class:`OnlineClustererConfig`. Memory: O(speakers + windows in the buffer + frozen turns),
    plus every window's embedding when ``refine`` is on (offline mode: 24 h is ~100k x 192 floats)."""

    def __init__(self, config: OnlineClustererConfig, state: ClustererState) -> None:
        self.config = config
        self._frozen_sums = state.frozen_sums
        self._has_frozen = state.has_frozen
        self._spans, self._vectors = state.spans, state.vectors
        self._labels, self._utterance_ids = state.labels, state.utterance_ids
        self._frozen_turns: list[SpeakerTurn] = list(state.frozen_turns)
        self._utterances, self._end_sample = state.utterances, state.end_sample
        self._history_spans = _GrowingArray(state.history_spans)
        self._history_vectors = _GrowingArray(state.history_vectors)
        self._history_utterances = _GrowingArray(state.history_utterance_ids)
        self._vad = _GrowingArray(state.vad_probabilities)

    @staticmethod
    def _centroids(frozen: np.ndarray, vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
        sums = frozen.astype(np.float64) + label_sums(labels, vectors, len(frozen))
        return sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)  # (speakers, 192)

    def on_item(self, item: UtteranceEmbeddings | VadProbabilities) -> Sequence[SpeakerTurns]:
        cfg = self.config
        if isinstance(item, VadProbabilities):
            if cfg.refine:  # kept for frame-level confidence (offline only: 24 h is ~11 MB)
                self._vad.append(item.probabilities)
            return []
        new_vectors = np.stack([w.vector for w in item.windows]).astype(np.float32)  # (m, 192)
        new_spans = np.array([[w.start_sample, w.end_sample] for w in item.windows], dtype=np.int64)
        utterance = np.full(len(new_vectors), self._utterances)
        self._utterances += 1
        self._end_sample = max(self._end_sample, item.region.end_sample)
        if cfg.refine:  # offline: the global re-clustering at the end replaces any online labels
            self._history_spans.append(new_spans)
            self._history_vectors.append(new_vectors)
            self._history_utterances.append(utterance)
            return []
        frozen, has_frozen = self._frozen_sums, self._has_frozen
        centroids = self._centroids(frozen, self._vectors, self._labels)
        new_labels = np.empty(len(new_vectors), dtype=np.int64)
        for k, vector in enumerate(new_vectors):
            sims = centroids @ vector
            best = int(np.argmax(sims)) if len(sims) else -1
            cap = cfg.speaker_cap
            if best >= 0 and (sims[best] >= cfg.assign_threshold or (cap is not None and len(centroids) >= cap)):
                new_labels[k] = best
            else:  # a new speaker
                new_labels[k] = len(centroids)
                frozen = np.vstack([frozen, np.zeros((1, _DIM), np.float32)])
                has_frozen = np.append(has_frozen, False)
                centroids = np.vstack([centroids, vector[None].astype(np.float64)])
        self._frozen_sums, self._has_frozen = frozen, has_frozen
        self._spans = np.vstack([self._spans, new_spans])
        self._vectors = np.vstack([self._vectors, new_vectors])
        self._utterance_ids = np.concatenate([self._utterance_ids, utterance])
        self._labels = self._revise(np.concatenate([self._labels, _smooth(new_labels)]))
        self._evict()
        return [self._view(final=False)]

    def _revise(self, labels: np.ndarray) -> np.ndarray:
        """Re-assign buffer windows to the updated centroids and merge look-alike speakers."""
        cfg, vectors, frozen = self.config, self._vectors, self._frozen_sums
        rows = np.arange(len(labels))
        for _ in range(2):
            centroids = self._centroids(frozen, vectors, labels)
            sims = vectors @ centroids.T.astype(np.float32)  # (n, speakers)
            alive = self._has_frozen | (np.bincount(labels, minlength=len(frozen)) > 0)
            sims[:, ~alive] = -np.inf
            proposed = np.argmax(sims, axis=1)
            # move a window only when clearly better (hysteresis against flicker)
            labels = np.where(sims[rows, proposed] - sims[rows, labels] > 0.05, proposed, labels)
            for u in np.unique(self._utterance_ids):
                mask = self._utterance_ids == u
                labels[mask] = _smooth(labels[mask])
        centroids = self._centroids(frozen, vectors, labels)
        alive = self._has_frozen | (np.bincount(labels, minlength=len(frozen)) > 0)
        while True:  # merge the most similar pair of live speakers while above the threshold
            ids = np.flatnonzero(alive)
            if len(ids) < 2:
                break
            sims = centroids[ids] @ centroids[ids].T
            np.fill_diagonal(sims, -np.inf)
            a, b = np.unravel_index(int(np.argmax(sims)), sims.shape)
            older, younger = sorted((int(ids[a]), int(ids[b])))
            if sims[a, b] < cfg.merge_threshold or self._has_frozen[younger]:
                break
            labels = np.where(labels == younger, older, labels)
            alive[younger] = False
            centroids = self._centroids(frozen, vectors, labels)
        return labels

    def _evict(self) -> None:
        """Whole utterances that ended before the buffer start leave: turns freeze, sums absorb them."""
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
        self._frozen_sums = (self._frozen_sums + label_sums(self._labels[leaving], self._vectors[leaving],
                                                           len(self._frozen_sums))).astype(np.float32)
        self._has_frozen = self._has_frozen.copy()
        self._has_frozen[np.unique(self._labels[leaving])] = True
        posteriors = window_posteriors(self._vectors, self._labels)  # (n, speakers): the live turn confidence
        self._frozen_turns.extend(turn_confidence(
            windows_to_turns(self._spans[leaving], self._labels[leaving], ids[leaving]),
            self._spans[leaving], posteriors[leaving]))
        keep = ~leaving
        self._spans, self._vectors = self._spans[keep], self._vectors[keep]
        self._labels, self._utterance_ids = self._labels[keep], ids[keep]

    def _view(self, final: bool) -> SpeakerTurns:
        live = tuple(turn_confidence(windows_to_turns(self._spans, self._labels, self._utterance_ids),
                                     self._spans, window_posteriors(self._vectors, self._labels)))
        means = self._centroids(self._frozen_sums, self._vectors, self._labels).astype(np.float32)
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
        cfg = self.config
        if not cfg.refine or not len(self._history_spans):
            return [self._view(final=True)]
        spans = self._history_spans.view()
        vectors = self._history_vectors.view()
        utterance_ids = self._history_utterances.view()
        min_speakers = cfg.num_speakers or cfg.min_speakers or 1
        max_speakers = cfg.num_speakers or cfg.max_speakers
        labels = cluster_embeddings(vectors, min_speakers, max_speakers, cfg.merge_similarity,
                                    cfg.prune_fraction, min_cluster_size=cfg.min_cluster_windows)
        found = int(labels.max()) + 1 if len(labels) else 0
        warnings: tuple[str, ...] = ()
        if cfg.num_speakers is not None and found != cfg.num_speakers:
            warnings = (f"asked for {cfg.num_speakers} speakers but the audio only supports {found}",)
        posteriors = window_posteriors(vectors, labels)  # (n, speakers)
        turns = turn_posteriors(windows_to_turns(spans, labels, utterance_ids), spans, posteriors)
        vad = self._vad.view()
        end = max(self._end_sample, len(vad) * 512)
        frames = frame_confidence(turns, spans, posteriors, labels, vad, end)
        sums = label_sums(labels, vectors, found)
        centroids = {k: _unit(sums[k]) for k in range(found)}
        return [SpeakerTurns((), 0, tuple(turns), self._utterances, self._end_sample, True, warnings, frames,
                             centroids)]

    def checkpoint(self) -> ClustererState:
        spans, vectors = self._history_spans.view().copy(), self._history_vectors.view().copy()
        utterance_ids, vad = self._history_utterances.view().copy(), self._vad.view().copy()
        return ClustererState(self._frozen_sums, self._has_frozen, self._spans, self._vectors, self._labels,
                              self._utterance_ids, tuple(self._frozen_turns), self._utterances,
                              self._end_sample, spans, vectors, utterance_ids, vad)
