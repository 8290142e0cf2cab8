"""Scripted stand-ins for the three models, for unit tests of operator logic (never for the feature).

They follow the model Protocols of :mod:`diarflow.operators.models` and are deterministic functions of
the audio: loudness is speech, a window's "voice" is its mean filterbank, and very loud frames are two
voices at once. The standard graph runs on them end to end in milliseconds.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from diarflow.operators.constants import EMBEDDING_DIM
from diarflow.operators.models import (
    SEGMENTATION_CLASSES,
    SEGMENTATION_FRAMES,
    SEGMENTATION_FRAME_STEP_SAMPLES,
    Resources,
    VadState,
)

T = TypeVar("T")
R = TypeVar("R")


class FakeVad:
    """Speech probability from the window's RMS level (0.02 RMS and up is speech)."""

    def speech_probabilities(self, windows: np.ndarray, state: VadState) -> tuple[np.ndarray, VadState]:
        rms = np.sqrt(np.mean(np.square(windows, dtype=np.float64), axis=1))
        context = windows[-1, -len(state.context):].copy() if len(windows) else state.context.copy()
        return np.clip(rms * 40.0, 0.0, 1.0).astype(np.float32), VadState(state.lstm.copy(), context)


def _voice(mean_fbank: np.ndarray) -> np.ndarray:
    """``(n, 80)`` mean filterbank frames -> ``(n, 192)`` "embeddings" (not normalised, never zero)."""
    return (np.tile(mean_fbank, 3)[:, :EMBEDDING_DIM] + 1.0).astype(np.float32)


class FakeEmbedder:
    """A window's embedding is its mean filterbank frame; frame features are every other fbank frame."""

    def embed(self, fbank: np.ndarray) -> np.ndarray:
        return _voice(np.asarray(fbank, np.float32).mean(axis=1))

    def embed_many(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.embed(b) for b in batches]

    def frame_features(self, fbank: np.ndarray) -> np.ndarray:
        return np.tile(np.asarray(fbank, np.float32)[::2], 7)[:, :512]  # (ceil(frames / 2), 512)

    def pool(self, frames: np.ndarray, ranges: np.ndarray) -> np.ndarray:
        return _voice(np.stack([frames[a:b, :80].mean(axis=0) for a, b in np.asarray(ranges).reshape(-1, 2)]))

    def map(self, function: Callable[[T], R], items: Sequence[T]) -> list[R]:
        return [function(item) for item in items]


class FakeSegmentation:
    """Powerset log-probabilities: silence, one speaker, or two when a frame is very loud (RMS >= 0.3)."""

    def log_probs(self, chunks: np.ndarray) -> np.ndarray:
        starts = np.arange(SEGMENTATION_FRAMES) * SEGMENTATION_FRAME_STEP_SAMPLES
        frames = np.stack([chunks[:, s:s + 991] for s in starts], axis=1)  # (batch, 589, 991)
        rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=2))
        classes = np.where(rms >= 0.3, 4, np.where(rms >= 0.02, 1, 0))  # {0, 1} / {0} / {}
        out = np.full((*classes.shape, SEGMENTATION_CLASSES), -20.0, np.float32)
        np.put_along_axis(out, classes[..., None], 0.0, axis=2)
        return out


def fake_resources() -> Any:
    """A :class:`~diarflow.operators.models.Resources` of the three fakes."""
    return Resources(vad=FakeVad(), embedder=FakeEmbedder(), segmentation=FakeSegmentation())  # type: ignore[arg-type]
