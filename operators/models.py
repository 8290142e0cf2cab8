"""Read-only model runtimes shared by every session: Silero VAD and CAM++ on onnxruntime.

Both wrappers hold only an ``onnxruntime.InferenceSession`` (thread-safe for concurrent ``run`` calls)
and constants. Recurrent VAD state lives in the caller's :class:`VadState`, so one loaded model serves
any number of sessions without them seeing each other.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import onnxruntime as ort

__all__ = [
    "EMBEDDING_DIM",
    "VAD_WINDOW_SAMPLES",
    "Resources",
    "SileroVadModel",
    "SpeakerEmbedder",
    "SpeakerEmbeddingModel",
    "VadModel",
    "VadState",
    "make_session",
]

SAMPLE_RATE = 16000
VAD_WINDOW_SAMPLES = 512  # 32 ms at 16 kHz: the window Silero v5+ is trained on
_VAD_CONTEXT_SAMPLES = 64  # tail of the previous window prepended to each call
EMBEDDING_DIM = 192


def make_session(path: Path | str, intra_op_threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session; one intra-op thread without spinning suits many concurrent callers."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass
class VadState:
    """Per-stream recurrent state of Silero VAD: LSTM state and the last 64 samples seen."""

    lstm: np.ndarray = field(default_factory=lambda: np.zeros((2, 1, 128), np.float32))  # (2, 1, 128)
    context: np.ndarray = field(default_factory=lambda: np.zeros(_VAD_CONTEXT_SAMPLES, np.float32))  # (64,)

    def copy(self) -> VadState:
        return VadState(self.lstm.copy(), self.context.copy())


class VadModel(Protocol):
    """What VAD operators need from a model (fakes implement this in unit tests)."""

    def speech_probabilities(self, windows: np.ndarray, state: VadState) -> tuple[np.ndarray, VadState]: ...

    def speech_probabilities_many(
        self, streams: Sequence[tuple[np.ndarray, VadState]]
    ) -> list[tuple[np.ndarray, VadState]]: ...


class SpeakerEmbedder(Protocol):
    """What embedding operators need from a model (fakes implement this in unit tests)."""

    def embed(self, fbank: np.ndarray) -> np.ndarray: ...

    def embed_many(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class SileroVadModel:
    """Silero VAD v6 (ONNX) at 16 kHz, one 512-sample window per call, state carried by the caller."""

    def __init__(self, path: Path | str, intra_op_threads: int = 1, pool: ThreadPoolExecutor | None = None) -> None:
        self._session = make_session(path, intra_op_threads)
        self._sample_rate = np.array(SAMPLE_RATE, dtype=np.int64)
        self._pool = pool

    def speech_probabilities(self, windows: np.ndarray, state: VadState) -> tuple[np.ndarray, VadState]:
        """Speech probability of consecutive windows of one stream.

        Parameters
        ----------
        windows
            float32 ``(num_windows, 512)``: consecutive, non-overlapping windows in [-1, 1].
        state
            The stream's state after the previous window (not modified).

        Returns
        -------
        probabilities, state
            float32 ``(num_windows,)`` in [0, 1], and the state after the last window.
        """
        windows = np.asarray(windows, dtype=np.float32)
        if windows.ndim != 2 or windows.shape[1] != VAD_WINDOW_SAMPLES:
            raise ValueError(f"expected windows of shape (n, {VAD_WINDOW_SAMPLES}), got {windows.shape}")
        probabilities = np.empty(len(windows), dtype=np.float32)
        lstm, context = state.lstm, state.context
        buffer = np.empty((1, _VAD_CONTEXT_SAMPLES + VAD_WINDOW_SAMPLES), dtype=np.float32)
        for i, window in enumerate(windows):
            buffer[0, :_VAD_CONTEXT_SAMPLES] = context
            buffer[0, _VAD_CONTEXT_SAMPLES:] = window
            out, lstm = self._session.run(None, {"input": buffer, "state": lstm, "sr": self._sample_rate})
            probabilities[i] = out[0, 0]
            context = window[-_VAD_CONTEXT_SAMPLES:]
        return probabilities, VadState(lstm, context.copy())

    def speech_probabilities_many(
        self, streams: Sequence[tuple[np.ndarray, VadState]]
    ) -> list[tuple[np.ndarray, VadState]]:
        """:meth:`speech_probabilities` of independent streams, batched (one model call per step).

        Parameters
        ----------
        streams
            ``(windows (n_i, 512), state)`` per stream; lengths may differ.

        Returns
        -------
        list
            ``(probabilities (n_i,), state after the stream's last window)`` per stream, in order.
        """
        if len(streams) <= 1 or self._pool is None:
            return self._batched(streams)
        halves = [list(streams[: len(streams) // 2]), list(streams[len(streams) // 2:])]
        first, second = self._pool.map(self._batched, halves)
        return first + second

    def _batched(self, streams: Sequence[tuple[np.ndarray, VadState]]) -> list[tuple[np.ndarray, VadState]]:
        if not streams:
            return []
        count = len(streams)
        lengths = [len(w) for w, _ in streams]
        steps = max(lengths)
        lstm = np.concatenate([st.lstm for _, st in streams], axis=1)  # (2, count, 128)
        buffer = np.zeros((count, _VAD_CONTEXT_SAMPLES + VAD_WINDOW_SAMPLES), np.float32)
        buffer[:, :_VAD_CONTEXT_SAMPLES] = np.stack([st.context for _, st in streams])
        padded = np.zeros((count, steps, VAD_WINDOW_SAMPLES), np.float32)  # (streams, steps, 512)
        for i, (windows, _) in enumerate(streams):
            padded[i, : len(windows)] = windows
        probabilities = np.empty((count, steps), np.float32)
        final_lstm = np.empty_like(lstm)
        for t in range(steps):
            buffer[:, _VAD_CONTEXT_SAMPLES:] = padded[:, t]
            out, lstm = self._session.run(None, {"input": buffer, "state": lstm, "sr": self._sample_rate})
            probabilities[:, t] = out[:, 0]
            buffer[:, :_VAD_CONTEXT_SAMPLES] = padded[:, t, -_VAD_CONTEXT_SAMPLES:]
            for i in np.flatnonzero(np.asarray(lengths) == t + 1).tolist():
                final_lstm[:, i] = lstm[:, i]
        results = []
        for i, (windows, state) in enumerate(streams):
            if len(windows) == 0:
                results.append((np.zeros(0, np.float32), state))
                continue
            context = windows[-1, -_VAD_CONTEXT_SAMPLES:].copy()
            results.append((probabilities[i, : len(windows)].copy(),
                            VadState(final_lstm[:, i:i + 1].copy(), context)))
        return results


class SpeakerEmbeddingModel:
    """CAM++ speaker embeddings from mean-normalised Kaldi fbank features.

    Inputs in one call must share their number of frames: zero-padding changes CAM++ embeddings
    (its pooling and context masks see the padding), so callers batch equal-length windows only.
    """

    def __init__(self, path: Path | str, intra_op_threads: int = 1, pool: ThreadPoolExecutor | None = None) -> None:
        self._session = make_session(path, intra_op_threads)
        self._pool = pool

    def embed(self, fbank: np.ndarray) -> np.ndarray:
        """Embed a batch of equal-length feature windows.

        Parameters
        ----------
        fbank
            float32 ``(batch, frames, 80)``, each window mean-normalised over its frames; frames >= 3
            (the unbiased standard deviation of the pooling needs two frames after the stride-2 layer).

        Returns
        -------
        numpy.ndarray
            float32 ``(batch, 192)``, not length-normalised.
        """
        fbank = np.ascontiguousarray(fbank, dtype=np.float32)
        if fbank.ndim != 3 or fbank.shape[2] != 80 or fbank.shape[1] < 3:
            raise ValueError(f"expected fbank of shape (batch, frames>=3, 80), got {fbank.shape}")
        if fbank.shape[0] == 0:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        (embeddings,) = self._session.run(None, {"fbank": fbank})
        return embeddings

    def embed_many(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        """:meth:`embed` of several batches (lengths may differ between batches), in parallel when
        the model was given a thread pool. Returns one ``(batch_i, 192)`` array per batch."""
        if self._pool is None or len(batches) <= 1:
            return [self.embed(b) for b in batches]
        return list(self._pool.map(self.embed, batches))


@dataclass(frozen=True)
class Resources:
    """Models loaded once per process and shared read-only by all sessions and jobs."""

    vad: VadModel
    embedder: SpeakerEmbedder

    @classmethod
    def load(cls, model_dir: Path | None = None, parallel_calls: int = 1) -> Resources:
        """Verify (installing on first use) and load the models from the cache.

        Parameters
        ----------
        model_dir
            Model cache; default ``$DIARFLOW_MODEL_DIR`` or ``~/.cache/diarflow/models``.
        parallel_calls
            Model calls one batch may spread over (threads; onnxruntime releases the GIL). Use the
            core count for a single offline run; 1 where many sessions already share the cores.
        """
        from diarflow.models import ensure_models

        paths = ensure_models(model_dir)
        pool = ThreadPoolExecutor(parallel_calls, thread_name_prefix="diarflow-model") if parallel_calls > 1 else None
        return cls(
            vad=SileroVadModel(paths.silero_vad, pool=pool),
            embedder=SpeakerEmbeddingModel(paths.campplus, pool=pool),
        )
