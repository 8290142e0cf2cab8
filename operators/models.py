"""Read-only model runtimes shared by every session: Silero VAD, CAM++ and pyannote segmentation-3.0 on onnxruntime.

The wrappers hold only ``onnxruntime.InferenceSession`` objects (thread-safe for concurrent ``run``
calls) and constants. Recurrent VAD state lives in the caller's :class:`VadState`, so one loaded model serves
any number of sessions without them seeing each other.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence, TypeVar

import numpy as np
import onnxruntime as ort

from .constants import EMBEDDING_DIM, VAD_WINDOW_SAMPLES
from .silero_split import split_silero_vad

__all__ = [
    "Resources",
    "SEGMENTATION_CLASSES",
    "SEGMENTATION_FRAMES",
    "SEGMENTATION_FRAME_STEP_SAMPLES",
    "SEGMENTATION_RECEPTIVE_FIELD_SAMPLES",
    "SEGMENTATION_WINDOW_SAMPLES",
    "SegmentationModel",
    "SileroVadModel",
    "SpeakerEmbedder",
    "SpeakerEmbeddingModel",
    "VadModel",
    "VadState",
    "make_session",
]

_T = TypeVar("_T")
_R = TypeVar("_R")
_VAD_CONTEXT_SAMPLES = 64  # tail of the previous window prepended to each window
_MIN_PARALLEL_WINDOWS = 256  # below this, one encoder call beats splitting it over threads
_ENCODER_BLOCK_WINDOWS = 1024  # 33 s of audio per encoder call
SEGMENTATION_WINDOW_SAMPLES = 160_000  # 10 s at 16 kHz: the chunk segmentation-3.0 is trained on
SEGMENTATION_FRAMES = 589  # output frames per chunk
# SincNet (conv 251 / stride 10, then three max-pools of 3 around two convs of 5): output frame k sees
# exactly the samples [k * 270, k * 270 + 991) of its chunk (before the LSTM mixes frames)
SEGMENTATION_FRAME_STEP_SAMPLES = 270
SEGMENTATION_RECEPTIVE_FIELD_SAMPLES = 991
SEGMENTATION_CLASSES = 7  # powerset: {}, {0}, {1}, {2}, {0, 1}, {0, 2}, {1, 2}
_SEGMENTATION_BATCH = 2  # chunks per onnxruntime call (two fixed shapes, 1 and 2): 27.8 -> 22.7 ms per chunk on
# 2 cores, offline RTF 0.016 -> 0.0145, outputs bitwise equal, ~+45 MB peak RSS; 4: 20.8 ms but ~+110 MB, 8 slower


def make_session(path: Path | str | bytes, intra_op_threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session; one intra-op thread without spinning suits many concurrent callers."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


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


class SpeakerEmbedder(Protocol):
    """What embedding operators need from a model (fakes implement this in unit tests)."""

    def embed(self, fbank: np.ndarray) -> np.ndarray: ...

    def embed_many(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]: ...

    def frame_features(self, fbank: np.ndarray) -> np.ndarray: ...

    def pool(self, frames: np.ndarray, ranges: np.ndarray) -> np.ndarray: ...

    def map(self, function: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]: ...


class SileroVadModel:
    """Silero VAD v6 (ONNX) at 16 kHz, split in two (see :mod:`.silero_split`): the
    stateless encoder runs on all windows of a call in one batch (in parallel when given a pool), then
    one sequence LSTM carries the caller's state through them. Exactly the per-window model, faster."""

    def __init__(self, path: Path | str, intra_op_threads: int = 1, pool: ThreadPoolExecutor | None = None) -> None:
        encoder, recurrence = split_silero_vad(path)
        self._encoder = make_session(encoder, intra_op_threads)
        self._recurrence = make_session(recurrence, intra_op_threads)
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
        if len(windows) == 0:
            return np.zeros(0, np.float32), state
        rows = np.empty((len(windows), _VAD_CONTEXT_SAMPLES + VAD_WINDOW_SAMPLES), np.float32)
        rows[:, _VAD_CONTEXT_SAMPLES:] = windows  # each row: the previous window's tail, then the window
        rows[0, :_VAD_CONTEXT_SAMPLES] = state.context
        rows[1:, :_VAD_CONTEXT_SAMPLES] = windows[:-1, -_VAD_CONTEXT_SAMPLES:]
        # blocks: large enough to batch well, small enough that onnxruntime's arena stays small
        blocks = [rows[lo:lo + _ENCODER_BLOCK_WINDOWS] for lo in range(0, len(rows), _ENCODER_BLOCK_WINDOWS)]
        if self._pool is not None and len(rows) >= 2 * _MIN_PARALLEL_WINDOWS:
            if len(blocks) == 1:
                blocks = np.array_split(rows, 2)
            features = np.concatenate(list(self._pool.map(self._encode, blocks)))
        else:
            features = np.concatenate([self._encode(block) for block in blocks])
        probabilities, h, c = self._recurrence.run(
            None, {"features": features[:, None, :], "h0": state.lstm[0:1], "c0": state.lstm[1:2]})
        return probabilities, VadState(np.concatenate([h, c]), windows[-1, -_VAD_CONTEXT_SAMPLES:].copy())

    def _encode(self, rows: np.ndarray) -> np.ndarray:
        (features,) = self._encoder.run(None, {"input": rows})
        return features  # (n, 128)


class SpeakerEmbeddingModel:
    """CAM++ speaker embeddings from mean-normalised Kaldi fbank features.

    Inputs in one call must share their number of frames: zero-padding changes CAM++ embeddings
    (its pooling and context masks see the padding), so callers batch equal-length windows only.
    """

    def __init__(self, path: Path | str, intra_op_threads: int = 1, pool: ThreadPoolExecutor | None = None) -> None:
        self._session = make_session(path, intra_op_threads)
        self._pool = pool
        weight, bias = self._session.run(["pooling_weight", "pooling_bias"],
                                         {"fbank": np.zeros((1, 3, 80), np.float32)})
        self._pooling_weight = weight.astype(np.float64)  # (1024, 192)
        self._pooling_bias = bias.astype(np.float64)  # (192,)

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
        (embeddings,) = self._session.run(["embedding"], {"fbank": fbank})
        return embeddings

    def embed_many(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        """:meth:`embed` of several batches (lengths may differ between batches), in parallel when
        the model was given a thread pool. Returns one ``(batch_i, 192)`` array per batch."""
        return self.map(self.embed, batches)

    def frame_features(self, fbank: np.ndarray) -> np.ndarray:
        """The frame features that statistics pooling averages, for one mean-normalised piece.

        Parameters
        ----------
        fbank
            float32 ``(frames, 80)``, frames >= 3.

        Returns
        -------
        numpy.ndarray
            float32 ``(ceil(frames / 2), 512)``; row ``t`` is centred on input frame ``2 t``.
        """
        fbank = np.ascontiguousarray(fbank, dtype=np.float32)
        if fbank.ndim != 2 or fbank.shape[1] != 80 or fbank.shape[0] < 3:
            raise ValueError(f"expected fbank of shape (frames>=3, 80), got {fbank.shape}")
        (frames,) = self._session.run(["frames"], {"fbank": fbank[None]})
        return frames[0]

    def pool(self, frames: np.ndarray, ranges: np.ndarray) -> np.ndarray:
        """Embeddings of frame ranges: mean and unbiased standard deviation over each range, then the
        network's final affine layer (``embed`` of a window equals ``pool`` over all its frames).

        Parameters
        ----------
        frames
            float32 ``(T, 512)`` from :meth:`frame_features` (pieces may be concatenated).
        ranges
            int ``(n, 2)``: half-open ``[t0, t1)`` rows of ``frames``, ``t1 - t0 >= 2``.

        Returns
        -------
        numpy.ndarray
            float32 ``(n, 192)``, not length-normalised.
        """
        ranges = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
        if len(ranges) and (ranges[:, 0].min() < 0 or ranges[:, 1].max() > len(frames)
                            or (ranges[:, 1] - ranges[:, 0]).min() < 2):
            raise ValueError(f"ranges must lie in [0, {len(frames)}] and span >= 2 frames")
        x = frames.astype(np.float64)
        sums = np.zeros((len(x) + 1, x.shape[1]))  # running sums: any range's moments in O(1)
        squares = np.zeros_like(sums)
        np.cumsum(x, axis=0, out=sums[1:])
        np.cumsum(x * x, axis=0, out=squares[1:])
        t0, t1 = ranges[:, 0], ranges[:, 1]
        count = (t1 - t0)[:, None].astype(np.float64)
        mean = (sums[t1] - sums[t0]) / count
        variance = np.maximum((squares[t1] - squares[t0]) - count * mean * mean, 0.0) / (count - 1)
        stats = np.concatenate([mean, np.sqrt(variance)], axis=1)  # (n, 1024)
        return (stats @ self._pooling_weight + self._pooling_bias).astype(np.float32)

    def map(self, function: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
        """``[function(item) for item in items]``, on the model's threads when it was given a pool
        (for work that wraps model calls in NumPy: features before, pooling after)."""
        if self._pool is None or len(items) <= 1:
            return [function(item) for item in items]
        return list(self._pool.map(function, items))


class SegmentationModel:
    """pyannote segmentation-3.0 (ONNX): for each 10 s chunk, per ~17 ms frame, the log-probabilities of
    the 7 powerset classes of up to three local speakers: no speech, {0}, {1}, {2}, {0, 1}, {0, 2}, {1, 2}.

    Speaker indices are local to a chunk (the model is permutation-invariant): speaker 0 of one chunk
    and speaker 0 of the next need not be the same person.

    Parameters
    ----------
    path
        ``segmentation-3.0.onnx`` from the model cache.
    intra_op_threads
        onnxruntime threads per call.
    pool
        Optional thread pool: batches of more than 32 chunks run as parallel calls.

    Examples
    --------
    >>> model = SegmentationModel(paths.segmentation)  # doctest: +SKIP
    >>> model.log_probs(np.zeros((2, SEGMENTATION_WINDOW_SAMPLES), np.float32)).shape  # doctest: +SKIP
    (2, 589, 7)
    """

    def __init__(self, path: Path | str, intra_op_threads: int = 1, pool: ThreadPoolExecutor | None = None) -> None:
        self._session = make_session(path, intra_op_threads)
        self._pool = pool

    def log_probs(self, chunks: np.ndarray) -> np.ndarray:
        """Powerset log-probabilities of each frame of each chunk.

        Parameters
        ----------
        chunks
            float32 ``(batch, 160000)``: 10 s chunks at 16 kHz in [-1, 1]; any batch size (run one
            chunk per call, spread over the thread pool when there is one).

        Returns
        -------
        numpy.ndarray
            float32 ``(batch, 589, 7)``: natural-log probabilities over the 7 classes (each frame's
            ``exp`` sums to 1). Frame ``k`` is computed from samples
            ``[270 k, 270 k + 991)`` of its chunk and the LSTM context of the whole chunk.
        """
        chunks = np.asarray(chunks, dtype=np.float32)
        if chunks.ndim != 2 or chunks.shape[1] != SEGMENTATION_WINDOW_SAMPLES:
            raise ValueError(f"expected chunks of shape (batch, {SEGMENTATION_WINDOW_SAMPLES}), got {chunks.shape}")
        if len(chunks) == 0:
            return np.zeros((0, SEGMENTATION_FRAMES, SEGMENTATION_CLASSES), np.float32)
        batches = [chunks[lo:lo + _SEGMENTATION_BATCH] for lo in range(0, len(chunks), _SEGMENTATION_BATCH)]
        if self._pool is not None and len(batches) > 1:
            return np.concatenate(list(self._pool.map(self._run, batches)))
        return np.concatenate([self._run(batch) for batch in batches])

    def _run(self, chunks: np.ndarray) -> np.ndarray:
        (log_probs,) = self._session.run(None, {"input": chunks[:, None, :]})
        return log_probs  # (batch, 589, 7)


@dataclass(frozen=True)
class Resources:
    """Models loaded once per process and shared read-only by all sessions and jobs.

    Built by :func:`diarflow.resources.load_resources` from the verified model cache, or by hand
    around fakes of the Protocols in tests.
    """

    vad: VadModel
    embedder: SpeakerEmbedder
    segmentation: SegmentationModel
