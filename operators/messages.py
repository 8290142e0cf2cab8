"""Typed messages between diarization operators. Times are integer sample indices, spans half-open."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "PcmBytes",
    "PcmSamples",
    "PcmFrame",
    "VadProbabilities",
    "SpeechStart",
    "SpeechPause",
    "SpeechRegion",
    "SpeakerEmbedding",
    "UtteranceEmbeddings",
    "SpeakerTurn",
    "OverlapRegions",
    "Snapshot",
]


@dataclass(frozen=True)
class PcmBytes:
    """Raw little-endian signed 16-bit mono PCM as received from a client (any even length)."""

    payload: bytes


@dataclass(frozen=True, eq=False)
class PcmSamples:
    """Decoded float32 mono samples in [-1, 1] (from a file decoder), ``(num_samples,)``."""

    samples: np.ndarray


@dataclass(frozen=True, eq=False)
class PcmFrame:
    """A contiguous run of float32 samples ``(num_samples,)`` starting at ``start_sample``."""

    start_sample: int
    samples: np.ndarray

    @property
    def end_sample(self) -> int:
        return self.start_sample + int(self.samples.shape[0])


@dataclass(frozen=True, eq=False)
class VadProbabilities:
    """Speech probability of consecutive 512-sample windows starting at ``start_sample``, ``(n,)``."""

    start_sample: int
    probabilities: np.ndarray


@dataclass(frozen=True)
class SpeechStart:
    """The VAD opened an utterance at ``start_sample`` (padding included); it is still open."""

    start_sample: int


@dataclass(frozen=True)
class SpeechPause:
    """The open utterance that started at ``start_sample`` has fallen silent: if no speech resumes, the
    VAD will close it as ``[start_sample, end_sample)``. A hint for work that can start early (the
    embedder's last window); the utterance is closed only by a :class:`SpeechRegion`."""

    start_sample: int
    end_sample: int


@dataclass(frozen=True)
class SpeechRegion:
    """A closed utterance ``[start_sample, end_sample)`` with its mean VAD speech probability."""

    start_sample: int
    end_sample: int
    mean_probability: float = 1.0


@dataclass(frozen=True, eq=False)
class SpeakerEmbedding:
    """One window's CAM++ embedding ``(192,)``, L2-normalised."""

    start_sample: int
    end_sample: int
    vector: np.ndarray


@dataclass(frozen=True, eq=False)
class UtteranceEmbeddings:
    """All windows of one closed utterance, in time order."""

    region: SpeechRegion
    windows: tuple[SpeakerEmbedding, ...]


@dataclass(frozen=True)
class SpeakerTurn:
    """``[start_sample, end_sample)`` spoken by ``speaker`` (an internal, stable cluster id)."""

    start_sample: int
    end_sample: int
    speaker: int
    confidence: float = 1.0  # posterior of ``speaker`` over the turn, in [0, 1]
    posteriors: tuple[tuple[int, float], ...] = ()  # (speaker, posterior) pairs, offline refinement only
    overlapping: bool = False  # a second voice over another speaker's turn; exclusive output drops it


@dataclass(frozen=True, eq=False)
class OverlapRegions:
    """Spans where at least two people speak at once, and spans where nobody does, decided for all audio
    before ``until_sample``.

    ``spans`` is int64 ``(k, 2)`` half-open ``[start, end)`` sample spans in time order, each after the
    previous message's; ``scores`` float32 ``(k,)`` the mean estimated number of extra voices in
    each span (in (0, 1]), used as the confidence of the turns added there. ``silent_spans`` int64
    ``(j, 2)``: the same for no speech at all (a silence that crosses a message edge comes as two
    spans that touch).
    """

    spans: np.ndarray
    scores: np.ndarray
    until_sample: int
    silent_spans: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))


@dataclass(frozen=True, eq=False)
class Snapshot:
    """The full diarization so far: turns sorted by start, speakers numbered 0, 1, ... by first appearance.

    ``utterances`` counts closed utterances; ``end_sample`` is the end of the latest one; ``final``
    marks the snapshot emitted at end of input. Turns are materialised on access (``turns``) from
    shared, append-only storage, so emitting a snapshot after each utterance stays cheap however long
    the session is.
    """

    frozen: Sequence[SpeakerTurn]
    frozen_count: int
    live: tuple[SpeakerTurn, ...]
    speaker_numbers: Mapping[int, int]
    utterances: int
    end_sample: int
    final: bool = False
    warnings: tuple[str, ...] = field(default=())
    frame_confidence: np.ndarray | None = None  # uint8 (frames,), 0-100 per 20 ms from sample 0; offline only
    centroids: Mapping[int, np.ndarray] | None = None  # internal speaker id -> unit mean embedding (192,)
    settled_until_sample: int = 0  # non-decreasing; no turn ending at or before it ever changes (final: audio end)
    relabelled_samples: int = 0  # speech of the previous snapshot whose public speaker number changed in this one

    def speaker_embeddings(self) -> dict[int, np.ndarray]:
        """Public speaker number -> L2-normalised mean embedding (empty if the engine gave none)."""
        if not self.centroids:
            return {}
        return {self.speaker_numbers[k]: v for k, v in self.centroids.items() if k in self.speaker_numbers}

    @property
    def turns(self) -> tuple[SpeakerTurn, ...]:
        number = self.speaker_numbers
        return tuple(
            SpeakerTurn(t.start_sample, t.end_sample, number[t.speaker], t.confidence,
                        tuple((number[k], p) for k, p in t.posteriors if k in number), t.overlapping)
            for t in (*self.frozen[: self.frozen_count], *self.live)
        )

    @property
    def num_speakers(self) -> int:
        return len(set(self.speaker_numbers.values()))
