"""``EmbeddingExtractor``: live CAM++ embeddings of sliding windows inside each utterance, and the utterance audio
buffer it shares with the offline :mod:`.pooled_embedding`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from .constants import EMBEDDING_DIM
from .fbank import Fbank
from .messages import (
    PcmFrame,
    SpeakerEmbedding,
    SpeechPause,
    SpeechRegion,
    SpeechStart,
    UtteranceEmbeddings,
)
from .models import SpeakerEmbedder

__all__ = ["EmbeddingExtractor", "EmbeddingExtractorConfig", "EmbeddingExtractorState", "UtteranceAudio", "window_spans"]

_MIN_WINDOW_SAMPLES = 720  # 3 fbank frames: the least CAM++ can pool
_SUB_BATCH = 4  # windows per model call: small batches on every core beat one large batch


def window_spans(start: int, end: int, window: int, step: int, min_window: int) -> list[tuple[int, int]]:
    """Windows covering ``[start, end)``: full windows every ``step``, plus one ending at ``end``.

    An utterance shorter than ``window`` gets one window: itself, widened symmetrically to
    ``min_window`` if needed (the caller clips it to the audio it has).
    """
    length = end - start
    if length <= window:
        if length >= min_window:
            return [(start, end)]
        grow = min_window - length
        return [(start - grow // 2, end + grow - grow // 2)]
    spans = [(s, s + window) for s in range(start, end - window + 1, step)]
    if spans[-1][1] < end:
        spans.append((end - window, end))
    return spans


@dataclass(frozen=True)
class EmbeddingExtractorConfig:
    """Sliding-window speaker embeddings, so speaker changes inside one utterance are found; live, each
    window is embedded by its own model pass as soon as its audio is in (the offline counterpart,
    which pools windows from shared passes over whole utterances: :mod:`.pooled_embedding`).

    Parameters
    ----------
    window_samples
        Window length (1.5 s). Longer windows give cleaner embeddings, shorter ones finer changes.
    step_samples
        Hop between windows (0.75 s), ``<= window_samples``.
    min_window_samples
        Utterances shorter than this are embedded from a window widened to this length (0.5 s).
    history_samples
        Audio kept before the open utterance (2 s): the VAD opens utterances after the fact.
    skip_similarity
        Adaptive stepping. Windows on even steps (and the one ending the utterance) are always
        embedded; a window on an odd step is embedded only when its two neighbours disagree (their
        cosine similarity is below this value), i.e. near a possible speaker change. ``None`` embeds
        every step. With the default 0.6 about a quarter of the odd windows are needed on
        conversational speech, so the model runs on roughly 1.2x the speech instead of 2x.
    """

    window_samples: int = 24_000
    step_samples: int = 12_000
    min_window_samples: int = 8_000
    history_samples: int = 32_000
    skip_similarity: float | None = 0.6

    input_types: ClassVar[tuple[type, ...]] = (PcmFrame, SpeechStart, SpeechPause, SpeechRegion)
    output_types: ClassVar[tuple[type, ...]] = (UtteranceEmbeddings,)

    def __post_init__(self) -> None:
        if self.window_samples < _MIN_WINDOW_SAMPLES:
            raise ValueError(f"window_samples must be >= {_MIN_WINDOW_SAMPLES}, got {self.window_samples}")
        if not 0 < self.step_samples <= self.window_samples:
            raise ValueError(f"step_samples must lie in (0, window_samples], got {self.step_samples}")
        if not _MIN_WINDOW_SAMPLES <= self.min_window_samples <= self.window_samples:
            raise ValueError(f"min_window_samples must lie in [{_MIN_WINDOW_SAMPLES}, window_samples], "
                             f"got {self.min_window_samples}")
        if self.skip_similarity is not None and not -1.0 <= self.skip_similarity <= 1.0:
            raise ValueError(f"skip_similarity must lie in [-1, 1] or be None, got {self.skip_similarity}")
        if self.history_samples < self.min_window_samples:
            raise ValueError("history_samples must be >= min_window_samples, "
                             f"got {self.history_samples} < {self.min_window_samples}")

    def build(self, state: EmbeddingExtractorState | None, resources: Any) -> EmbeddingExtractor:
        return EmbeddingExtractor(self, resources.embedder, state)


@dataclass(frozen=True)
class EmbeddingExtractorState:
    audio: np.ndarray  # retained samples, (n,)
    audio_start: int  # sample index of audio[0]
    open_start: int  # -1 when no utterance is open
    cached_spans: np.ndarray  # windows of the open utterance already embedded, (k, 2) [start, end)
    cached_vectors: np.ndarray  # their embeddings, (k, 192)
    closed: tuple[SpeechRegion, ...]  # utterances closed but not yet emitted (flushed on watermark)
    pause: SpeechPause | None = None  # the open utterance's announced end, its last windows not embedded yet


class UtteranceAudio:
    """The audio an embedder needs and the utterances it has to embed: frames kept while an utterance
    may still need them (``history_samples`` before it), speech starts and closed regions. The two
    embedders share it and differ in how they turn windows into embeddings."""

    def __init__(self, window_samples: int, step_samples: int, min_window_samples: int, history_samples: int,
                 audio: np.ndarray, audio_start: int, open_start: int, closed: Sequence[SpeechRegion]) -> None:
        self._window, self._step, self._min_window = window_samples, step_samples, min_window_samples
        self._history = history_samples
        self._audio = [audio] if len(audio) else []
        self._audio_start = audio_start
        self._audio_len = len(audio)
        self._open_start = open_start
        self._closed: list[SpeechRegion] = list(closed)

    @property
    def _audio_end(self) -> int:
        return self._audio_start + self._audio_len

    def _samples(self, start: int, end: int) -> np.ndarray:
        if len(self._audio) > 1:
            self._audio = [np.concatenate(self._audio)]
        lo, hi = max(start, self._audio_start), min(end, self._audio_end)
        if lo >= hi:
            return np.zeros(0, np.float32)
        return self._audio[0][lo - self._audio_start: hi - self._audio_start]

    def _trim(self) -> None:
        """Keep ``history_samples`` of audio, and everything an open utterance may still need."""
        keep_from = self._audio_end - self._history
        if self._open_start >= 0:
            keep_from = min(keep_from, self._open_start - self._min_window)
        drop = min(keep_from - self._audio_start, self._audio_len)
        if drop > 0:
            merged = self._samples(self._audio_start, self._audio_end)
            self._audio = [merged[drop:].copy()] if drop < len(merged) else []
            self._audio_start += drop
            self._audio_len -= drop

    def on_item(self, item: PcmFrame | SpeechStart | SpeechRegion) -> Sequence[UtteranceEmbeddings]:
        if isinstance(item, PcmFrame):
            if self._audio_len and item.start_sample != self._audio_end:
                raise ValueError(f"audio gap: expected sample {self._audio_end}, got {item.start_sample}")
            if not self._audio_len:
                self._audio_start = item.start_sample
            self._audio.append(item.samples)
            self._audio_len += len(item.samples)
        elif isinstance(item, SpeechStart):
            self._open_start = item.start_sample
        elif isinstance(item, SpeechRegion):
            self._closed.append(item)
            if item.start_sample == self._open_start:
                self._open_start = -1
        return []

    def _region_spans(self, region: SpeechRegion) -> list[tuple[int, int]]:
        """The grid windows of a closed utterance, clipped to the audio held."""
        return [(max(a, self._audio_start), min(b, self._audio_end)) for a, b in window_spans(
            region.start_sample, region.end_sample, self._window, self._step, self._min_window)]

    def _flush(self) -> list[UtteranceEmbeddings]:
        """Embed what is due (each embedder's own algorithm)."""
        raise NotImplementedError

    def on_watermark(self, sample: int) -> Sequence[UtteranceEmbeddings]:
        return self._flush()

    def on_eof(self) -> Sequence[UtteranceEmbeddings]:
        return self._flush()


class EmbeddingExtractor(UtteranceAudio):
    """Embeds full windows of the open utterance as audio arrives (so little is left when it closes)
    and the rest when it closes; all windows pending at a watermark go to the model together.

    When the VAD announces a pause (:class:`SpeechPause`), the windows that end the utterance there are
    embedded at the next watermark whose audio covers them, during the VAD's hangover: if the
    utterance does close there, nothing is left to embed when it closes (the snapshot a live client
    waits for no longer waits for CAM++); if speech resumes, those windows are never emitted."""

    def __init__(self, config: EmbeddingExtractorConfig, embedder: SpeakerEmbedder,
                 state: EmbeddingExtractorState | None) -> None:
        if state is None:
            state = EmbeddingExtractorState(np.zeros(0, np.float32), 0, -1, np.zeros((0, 2), np.int64),
                                            np.zeros((0, EMBEDDING_DIM), np.float32), ())
        super().__init__(config.window_samples, config.step_samples, config.min_window_samples,
                         config.history_samples, state.audio, state.audio_start, state.open_start, state.closed)
        self.config = config
        self._embedder = embedder
        self._fbank = Fbank()
        self._cache: dict[tuple[int, int], np.ndarray] = {
            (int(a), int(b)): v for (a, b), v in zip(state.cached_spans, state.cached_vectors)}
        self._pause = state.pause

    def on_item(self, item: PcmFrame | SpeechStart | SpeechPause | SpeechRegion) -> Sequence[UtteranceEmbeddings]:
        if isinstance(item, SpeechPause):
            self._pause = item
            return []
        return super().on_item(item)

    def _embed(self, spans: list[tuple[int, int]]) -> list[np.ndarray]:
        """L2-normalised embeddings of windows. Equal lengths are batched together (padding would
        change CAM++ embeddings) in small sub-batches that the model may run in parallel."""
        feats = [self._fbank.compute_normalised(self._samples(a, b)) for a, b in spans]
        vectors = [np.zeros(EMBEDDING_DIM, np.float32) for _ in spans]  # stays zero only for < 3 frames of audio
        by_frames: dict[int, list[int]] = {}
        for i, f in enumerate(feats):
            if len(f) >= 3:
                by_frames.setdefault(len(f), []).append(i)
        batches = [indices[lo:lo + _SUB_BATCH] for indices in by_frames.values()
                   for lo in range(0, len(indices), _SUB_BATCH)]
        outputs = self._embedder.embed_many([np.stack([feats[i] for i in batch]) for batch in batches])
        for batch, out in zip(batches, outputs):  # out: (len(batch), 192)
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
            for i, v in zip(batch, out):
                vectors[i] = v
        return vectors

    def _needs(self, spans: list[tuple[int, int]], final: bool) -> tuple[list[int], list[int]]:
        """Indices of always-needed windows (even steps and the one ending a closed utterance), and
        of odd-step windows to embed only where their neighbours disagree."""
        n = len(spans)
        if self.config.skip_similarity is None:
            return list(range(n)), []
        always = [i for i in range(n) if i % 2 == 0 or (final and i == n - 1)]
        maybe = [i for i in range(1, n - 1) if i % 2 == 1]
        return always, maybe

    def _disagree(self, a: tuple[int, int], b: tuple[int, int]) -> bool:
        threshold = self.config.skip_similarity
        if threshold is None or a not in self._cache or b not in self._cache:
            return False
        return float(self._cache[a] @ self._cache[b]) < threshold

    def _compute(self, spans: list[tuple[int, int]]) -> None:
        jobs = [span for span in dict.fromkeys(spans) if span not in self._cache]
        self._cache.update(zip(jobs, self._embed(jobs)))

    def _flush(self) -> list[UtteranceEmbeddings]:
        cfg = self.config
        closed = [(region, self._region_spans(region)) for region in self._closed]  # to emit now
        work = [(spans, self._needs(spans, final=True)) for _, spans in closed]
        if self._open_start >= 0:  # incremental work: full windows of the utterance still open
            last = self._audio_end - cfg.window_samples
            open_spans = [(a, a + cfg.window_samples) for a in range(self._open_start, last + 1, cfg.step_samples)]
            work.append((open_spans, self._needs(open_spans, final=False)))
            ending = self._pause_spans()
            if ending is not None:  # the windows that end it if the announced pause closes it
                work.append((ending, self._needs(ending, final=True)))
        self._compute([spans[i] for spans, (always, _) in work for i in always])
        self._compute([spans[i] for spans, (_, maybe) in work for i in maybe
                       if self._disagree(spans[i - 1], spans[i + 1])])
        out = [UtteranceEmbeddings(region, tuple(SpeakerEmbedding(a, b, self._cache[(a, b)])
                                                 for a, b in spans if (a, b) in self._cache))
               for region, spans in closed]
        self._closed = []
        self._cache = {span: v for span, v in self._cache.items()
                       if self._open_start >= 0 and span[0] >= self._open_start}
        self._trim()
        return out

    def _pause_spans(self) -> list[tuple[int, int]] | None:
        """The windows of the open utterance as if it closed at the announced pause, once the audio
        covers them all (so they are exactly the windows its close would need); ``None`` otherwise,
        and the pause is forgotten once they are planned, or if it belongs to another utterance."""
        pause = self._pause
        if pause is None or pause.start_sample != self._open_start:
            self._pause = None
            return None
        spans = window_spans(pause.start_sample, pause.end_sample, self._window, self._step, self._min_window)
        if max(b for _, b in spans) > self._audio_end:
            return None
        self._pause = None
        return [(max(a, self._audio_start), b) for a, b in spans]

    def checkpoint(self) -> EmbeddingExtractorState:
        spans = sorted(self._cache)
        return EmbeddingExtractorState(
            audio=self._samples(self._audio_start, self._audio_end).copy(),
            audio_start=self._audio_start,
            open_start=self._open_start,
            cached_spans=np.array(spans, dtype=np.int64).reshape(-1, 2),
            cached_vectors=(np.stack([self._cache[s] for s in spans]) if spans
                            else np.zeros((0, EMBEDDING_DIM), np.float32)),
            closed=tuple(self._closed),
            pause=self._pause,
        )
