"""The Python API: ``diarflow.diarize(path_or_array, ...)`` and its serialisable result."""

from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Literal, Mapping

import numpy as np
from threadpoolctl import threadpool_limits

from diarflow.audio import decode_chunks, to_s16le
from diarflow.dataflow import StreamingSession, iter_offline
from diarflow.operators.constants import CONFIDENCE_FRAME_S, CONFIDENCE_FRAME_SAMPLES, SAMPLE_RATE
from diarflow.operators.messages import PcmBytes, PcmSamples, Snapshot, SpeakerTurn
from diarflow.operators.models import Resources
from diarflow.operators.pipeline import PipelineConfig, build_graph
from diarflow.operators.speaker_count import SpeakerCount
from diarflow.resources import load_resources

__all__ = ["DiarizationResult", "Segment", "diarize", "default_resources", "voiceprint", "STREAM_CHUNK_SAMPLES"]

STREAM_CHUNK_SAMPLES = 3200  # 200 ms: the live endpoint's recommended frame
_OFFLINE_CHUNK_SAMPLES = 60 * SAMPLE_RATE  # large chunks: model calls batch, utterances spread over threads
_resources: Resources | None = None  # loaded on first use, shared by every call in this process
_resources_lock = threading.Lock()


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


_malloc_trim = _load_malloc_trim()


def _release_free_memory() -> None:
    """Hand memory freed by the last chunk back to the OS (glibc keeps it in per-thread arenas, where
    hours of chunk-sized buffers fragment it): peak memory then stays flat with input length."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def default_resources() -> Resources:
    """Models loaded once per process (installed on first use)."""
    global _resources
    with _resources_lock:
        if _resources is None:
            _resources = load_resources(parallel_calls=os.cpu_count() or 1)
        return _resources


@dataclass(frozen=True)
class Segment:
    """One speaker turn at the edges of the engine: seconds and a ``SPEAKER_xx`` label.

    ``confidence`` maps speakers to a 0-100 score for this turn (offline mode; empty otherwise).
    ``overlapping`` marks a second voice over another speaker's turn (overlapped speech); the
    exclusive variant leaves these out.
    """

    start_s: float
    end_s: float
    speaker: str
    confidence: Mapping[str, int] = field(default_factory=dict)
    overlapping: bool = False


@dataclass(frozen=True)
class DiarizationResult:
    """Final diarization of one input.

    Attributes
    ----------
    uri
        Name used in RTTM output (the file stem for files).
    segments
        Turns sorted by start; speakers ``SPEAKER_00, SPEAKER_01, ...`` by first appearance.
    duration_s
        Length of the decoded audio in seconds.
    warnings
        Human-readable notes (e.g. a requested speaker count that could not be honoured).
    frame_confidence
        uint8 ``(frames,)`` 0-100 confidence per 20 ms from the start (offline mode), else ``None``.
    speaker_embeddings
        Label -> L2-normalised mean CAM++ embedding ``(192,)`` of that speaker (for voiceprints).
    """

    uri: str
    segments: tuple[Segment, ...]
    duration_s: float
    warnings: tuple[str, ...] = ()
    frame_confidence: np.ndarray | None = None
    speaker_embeddings: Mapping[str, np.ndarray] = field(default_factory=dict)

    CONFIDENCE_RESOLUTION_S: ClassVar[float] = CONFIDENCE_FRAME_S

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot, uri: str, duration_samples: int) -> DiarizationResult:
        def scores(t: SpeakerTurn) -> dict[str, int]:
            if t.overlapping:  # a second voice: how sure the segmentation is that two people speak
                return {f"SPEAKER_{t.speaker:02d}": int(round(t.confidence * 100))}
            return {f"SPEAKER_{k:02d}": int(round(p * 100)) for k, p in t.posteriors}

        segments = tuple(
            Segment(t.start_sample / SAMPLE_RATE, t.end_sample / SAMPLE_RATE, f"SPEAKER_{t.speaker:02d}",
                    scores(t), t.overlapping)
            for t in sorted(snapshot.turns, key=lambda t: (t.start_sample, t.end_sample))
        )
        frames = snapshot.frame_confidence
        if frames is not None:  # cover the whole input, silence at the end included
            total = -(-duration_samples // CONFIDENCE_FRAME_SAMPLES)
            frames = np.concatenate([frames[:total], np.full(max(0, total - len(frames)), 100, np.uint8)])
        embeddings = {f"SPEAKER_{k:02d}": v for k, v in snapshot.speaker_embeddings().items()}
        return cls(uri, segments, duration_samples / SAMPLE_RATE, snapshot.warnings, frames, embeddings)

    @property
    def exclusive_segments(self) -> tuple[Segment, ...]:
        """One speaker at a time (for aligning words to speakers): the second voices of overlapped
        speech are left out; where other turns still overlap, the later-starting one wins from its start."""
        out: list[Segment] = []
        for seg in (s for s in self.segments if not s.overlapping):
            if out and out[-1].end_s > seg.start_s:
                prev = out.pop()
                if seg.start_s > prev.start_s:
                    out.append(replace(prev, end_s=seg.start_s))
            out.append(seg)
        return tuple(out)

    @property
    def speakers(self) -> list[str]:
        return sorted({s.speaker for s in self.segments})

    def to_rttm(self) -> str:
        """RTTM lines ``SPEAKER <uri> 1 <start> <duration> <NA> <NA> <speaker> <NA> <NA>``."""
        return "".join(
            f"SPEAKER {self.uri} 1 {s.start_s:.3f} {s.end_s - s.start_s:.3f} <NA> <NA> {s.speaker} <NA> <NA>\n"
            for s in self.segments
        )

    def to_json(self, confidence: bool = False, turn_level_confidence: bool = False,
                exclusive: bool = False) -> dict[str, Any]:
        """The job API's output object.

        ``{"diarization": [{"speaker", "start", "end"(, "confidence": {speaker: 0-100})}],
        "exclusiveDiarization": [...], "confidence": {"score": [...], "resolution": 0.02}, "warning"}``,
        the optional parts as asked.
        """
        def rows(segments: tuple[Segment, ...]) -> list[dict[str, Any]]:
            out = []
            for s in segments:
                row: dict[str, Any] = {"speaker": s.speaker, "start": round(s.start_s, 3), "end": round(s.end_s, 3)}
                if turn_level_confidence:
                    row["confidence"] = dict(s.confidence) or {s.speaker: 100}
                out.append(row)
            return out

        body: dict[str, Any] = {"diarization": rows(self.segments)}
        if exclusive:
            body["exclusiveDiarization"] = rows(self.exclusive_segments)
        if confidence:
            scores = self.frame_confidence if self.frame_confidence is not None else np.zeros(0, np.uint8)
            body["confidence"] = {"score": scores.tolist(), "resolution": self.CONFIDENCE_RESOLUTION_S}
        if self.warnings:
            body["warning"] = "; ".join(self.warnings)
        return body

    def to_arrow(self) -> Any:
        """A ``pyarrow.Table`` with columns ``uri, start_s, end_s, speaker``."""
        import pyarrow as pa

        return pa.table({
            "uri": pa.array([self.uri] * len(self.segments), pa.string()),
            "start_s": pa.array([s.start_s for s in self.segments], pa.float64()),
            "end_s": pa.array([s.end_s for s in self.segments], pa.float64()),
            "speaker": pa.array([s.speaker for s in self.segments], pa.string()),
        })


def _chunks_of(source: str | Path | np.ndarray, chunk_samples: int) -> Iterator[np.ndarray]:
    if isinstance(source, np.ndarray):
        if source.ndim != 1:
            raise ValueError(f"expected mono 16 kHz samples of shape (n,), got {source.shape}")
        for lo in range(0, len(source), chunk_samples):
            yield source[lo:lo + chunk_samples]
    else:
        yield from decode_chunks(source, chunk_samples)


def _prefetched(chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """The same chunks, each decoded on a background thread while the previous one is processed
    (decoding is otherwise the one stage that leaves a core idle offline). Errors surface in order."""
    with ThreadPoolExecutor(1, thread_name_prefix="diarflow-decode") as pool:
        pending = pool.submit(next, chunks, None)
        while (chunk := pending.result()) is not None:
            pending = pool.submit(next, chunks, None)
            yield chunk


def _streamed(session: StreamingSession, chunks: Iterable[np.ndarray]) -> Iterator[Any]:
    for chunk in chunks:
        yield from session.push(PcmBytes(to_s16le(chunk)))
    yield from session.close()


def diarize(
    source: str | Path | np.ndarray,
    num_speakers: int | None = None,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    *,
    mode: Literal["offline", "stream"] = "offline",
    config: PipelineConfig | None = None,
    resources: Resources | None = None,
    uri: str | None = None,
    on_progress: Callable[[float], None] | None = None,
    merge_similarity: float | None = None,
) -> DiarizationResult:
    """Diarize a file (any audio/video format) or a float32 16 kHz mono array.

    Parameters
    ----------
    source
        A path, or samples ``(n,)`` in [-1, 1] at 16 kHz.
    num_speakers
        Exact number of speakers, if known (excludes ``min_speakers`` / ``max_speakers``).
    min_speakers, max_speakers
        Bounds on the estimated number of speakers.
    mode
        ``"offline"``: large chunks and a global re-clustering at the end (best accuracy).
        ``"stream"``: the live endpoint's path, 200 ms s16le chunks, no re-clustering.
    config
        Operator configs to use instead of the defaults (see :class:`PipelineConfig`).
    resources
        Loaded models; default: loaded once per process.
    uri
        Name for RTTM output; default the file stem, or ``"audio"`` for arrays.
    on_progress
        Called with the seconds of audio processed so far.
    merge_similarity
        Offline clustering's sensitivity: cosine similarity in (-1, 1] of two speakers' centroids above
        which they are merged (lower: fewer speakers). ``None``: the config's value (``OnlineClustererConfig.merge_similarity``).
        No effect in ``"stream"`` mode.

    Examples
    --------
    >>> result = diarize("meeting.wav", max_speakers=4)  # doctest: +SKIP
    >>> print(result.to_rttm())  # doctest: +SKIP
    """
    if mode not in ("offline", "stream"):
        raise ValueError(f"mode must be 'offline' or 'stream', got {mode!r}")
    speakers = SpeakerCount(num_speakers, min_speakers, max_speakers)  # SpeakerCountError if invalid
    config = (config or PipelineConfig()).for_mode(mode).with_speakers(speakers)
    if merge_similarity is not None:
        config = replace(config, clustering=replace(config.clustering, merge_similarity=merge_similarity))
    graph = build_graph(config)
    resources = resources or default_resources()
    uri = uri or (Path(source).stem if not isinstance(source, np.ndarray) else "audio")
    total = 0
    final: Snapshot | None = None

    def counted(chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        nonlocal total
        for chunk in chunks:
            total += len(chunk)
            yield chunk
            if mode == "offline":
                _release_free_memory()
            if on_progress is not None:
                on_progress(total / SAMPLE_RATE)

    if mode == "offline":
        items = (PcmSamples(c) for c in counted(_prefetched(_chunks_of(source, _OFFLINE_CHUNK_SAMPLES))))
        outputs: Iterable[Any] = iter_offline(graph, resources, items)
    else:
        outputs = _streamed(StreamingSession(graph, resources), counted(_chunks_of(source, STREAM_CHUNK_SAMPLES)))
    # the models' threads are the parallelism: a multi-threaded BLAS would spin on the same cores
    with threadpool_limits(limits=1, user_api="blas"):
        for message in outputs:  # keep only the latest snapshot: memory stays flat however long the input
            if isinstance(message, Snapshot):
                final = message
    assert final is not None and final.final, "the graph emitted no final snapshot"
    return DiarizationResult.from_snapshot(final, uri, total)


def voiceprint(source: str | Path | np.ndarray, *, resources: Resources | None = None,
               on_progress: Callable[[float], None] | None = None) -> str:
    """The voiceprint of one person's recording, as ``POST /v1/voiceprint`` makes it: the recording
    diarized as one speaker, that speaker's mean CAM++ embedding as a ``dfv1:`` string.

    Raises
    ------
    ValueError
        The recording has no speech.
    """
    from diarflow.voiceprints import encode_voiceprint

    result = diarize(source, num_speakers=1, resources=resources, on_progress=on_progress)
    if not result.speaker_embeddings:
        raise ValueError("No speech found in the voiceprint audio")
    return encode_voiceprint(next(iter(result.speaker_embeddings.values())))
