"""``OverlapDetector``: where two people speak at once (and where nobody does), from pyannote
segmentation-3.0's speaker count.

The model labels each ~17 ms frame of a 10 s chunk with one of 7 powerset classes of up to three
local speakers (no speech, one of three alone, one of three pairs). Only the *number* of speakers
is used here: the expected count per frame (class probabilities times class sizes), averaged over
the chunks that cover the frame. Frames whose count reaches ``min_count`` form overlap regions; frames
whose count stays below ``max_silent_count`` form silent spans (the overlap assigner trims turn edges
the VAD left in them).
*Who* the second voice is comes later, from the speaker clustering (:mod:`.overlap`): this model's
local speakers are not reliable enough on conversational audio to carry identities (measured: only
about a third of its (chunk, local speaker) tracks are one person on the dev conversations).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Sequence

import numpy as np

from .messages import OverlapRegions, PcmFrame, SpeechRegion
from .models import (
    SEGMENTATION_FRAME_STEP_SAMPLES as _STEP,
    SEGMENTATION_FRAMES as _FRAMES,
    SEGMENTATION_RECEPTIVE_FIELD_SAMPLES as _FIELD,
    SEGMENTATION_WINDOW_SAMPLES as _WINDOW,
)

__all__ = ["OverlapDetector", "OverlapDetectorConfig", "OverlapDetectorState", "expected_count"]

# speakers in each powerset class, in the model's order: {}, {0}, {1}, {2}, {0,1}, {0,2}, {1,2}
_CLASS_SIZES = np.array([0, 1, 1, 1, 2, 2, 2], np.float32)


class SegmentationRuntime(Protocol):
    def log_probs(self, chunks: np.ndarray) -> np.ndarray: ...


def expected_count(log_probs: np.ndarray) -> np.ndarray:
    """Expected number of simultaneous speakers per frame: float32 ``(chunks, frames)`` from powerset
    log-probabilities ``(chunks, frames, 7)``."""
    return (np.exp(log_probs) @ _CLASS_SIZES).astype(np.float32)


def _frame_start(frame: int | np.ndarray) -> np.ndarray:
    """First sample a global frame stands for: frames tile the time line at their centres, each
    ``_STEP`` samples wide (frame 0 also takes the first half receptive field)."""
    frame = np.asarray(frame)
    return np.where(frame > 0, frame * _STEP + (_FIELD - _STEP) // 2, 0)


@dataclass(frozen=True)
class OverlapDetectorConfig:
    """Slide segmentation-3.0 over the audio and report overlapped speech.

    Chunks run at a watermark, off the utterance path: when an utterance closed since the last
    watermark (a :class:`SpeechRegion` came in from the VAD), its result is being awaited downstream, so
    ready chunks wait for the next watermark (never longer). Live, a ~100 ms model call then never
    lands on the frame whose snapshot a client is waiting for; the regions are only needed seconds
    later (the overlap assigner settles a region once the clustering has moved past it).

    Parameters
    ----------
    step_samples
        Hop between 10 s chunks in the live graph: a multiple of the model's 270-sample frame step (so
        every chunk's frames fall on one global grid) and at most the 589 frames a chunk reports
        (159 030, the default: chunks just tile the audio, RTF ~0.003 on one core). Every 5 s live
        lowered streaming DER a little (4.87 → 4.79 % dev, 3.53 → 3.31 % telephone) but raised the
        16-session P99 latency from 232-261 to 298-359 ms, past the 280 ms target.
    offline_step_samples
        The same hop in the offline graph (:meth:`~.pipeline.PipelineConfig.for_mode`): 79 650 (about
        5 s), so every frame is seen by two chunks and their counts are averaged (a frame near one
        chunk's edge sits mid-way in the other). On the dev sets, against tiling: overlap recall 77 → 79 %
        and 59 → 65 % on telephone audio at higher precision, DER 3.14 → 3.03 % and 3.61 → 3.39 %, for
        +16 % offline wall time (a 2.5 s hop: 80 / 70 % recall, DER 2.98 / 3.16 %, +45 %).
    min_count
        Expected speaker count at or above which a frame is overlapped speech (1.5: more likely two
        than one).
    min_region_samples
        Shorter overlap regions are dropped (50 ms).
    max_silent_count
        Expected speaker count below which a frame is silent (0.5: more likely nobody than someone).
    """

    step_samples: int = _FRAMES * _STEP
    offline_step_samples: int = 295 * _STEP
    min_count: float = 1.5
    min_region_samples: int = 800
    max_silent_count: float = 0.5

    input_types: ClassVar[tuple[type, ...]] = (PcmFrame, SpeechRegion)
    output_types: ClassVar[tuple[type, ...]] = (OverlapRegions,)

    def __post_init__(self) -> None:
        for name in ("step_samples", "offline_step_samples"):
            step = getattr(self, name)
            if not 0 < step <= _FRAMES * _STEP or step % _STEP:
                raise ValueError(f"{name} must be a multiple of {_STEP} in (0, {_FRAMES * _STEP}], got {step}")
        if not 1.0 < self.min_count <= 2.0:
            raise ValueError(f"min_count must lie in (1, 2], got {self.min_count}")
        if self.min_region_samples < 0:
            raise ValueError(f"min_region_samples must be >= 0, got {self.min_region_samples}")
        if not 0.0 <= self.max_silent_count < 1.0:
            raise ValueError(f"max_silent_count must lie in [0, 1), got {self.max_silent_count}")

    def build(self, state: OverlapDetectorState | None, resources: Any) -> OverlapDetector:
        return OverlapDetector(self, resources.segmentation, state or OverlapDetectorState())


@dataclass(frozen=True)
class OverlapDetectorState:
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # samples from ``chunk_start`` on, (n,)
    chunk_start: int = 0  # start sample of the next chunk to run
    sums: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))  # summed counts of undecided frames from ``first_frame``
    hits: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))  # chunks covering each of them
    first_frame: int = 0  # global index of sums[0]
    open_start: int = -1  # start sample of an overlap region still running at the decided edge
    open_sum: float = 0.0  # its summed (count - 1) and frames, for the region's score
    open_frames: int = 0
    utterance_closed: bool = False  # a SpeechRegion came in since the last watermark
    deferred: bool = False  # the last watermark left ready chunks for this one


class OverlapDetector:
    """Runs the chunks whose audio is in at each watermark (all of them in one model call; one watermark
    later if an utterance just closed), then reports the frames no later chunk can cover. Memory: one
    chunk of audio and counts; O(1) in session length.
    """

    def __init__(self, config: OverlapDetectorConfig, model: SegmentationRuntime, state: OverlapDetectorState) -> None:
        self.config, self._model = config, model
        self._audio, self._chunk_start = state.audio, state.chunk_start
        self._sums, self._hits, self._first_frame = state.sums, state.hits, state.first_frame
        self._open_start, self._open_sum, self._open_frames = state.open_start, state.open_sum, state.open_frames
        self._utterance_closed, self._deferred = state.utterance_closed, state.deferred

    def on_item(self, item: PcmFrame | SpeechRegion) -> Sequence[OverlapRegions]:
        if isinstance(item, SpeechRegion):
            self._utterance_closed = True
            return []
        end = self._chunk_start + len(self._audio)
        if item.start_sample != end:
            raise ValueError(f"audio must be contiguous: expected sample {end}, got {item.start_sample}")
        self._audio = np.concatenate([self._audio, np.asarray(item.samples, np.float32)])
        return []

    def on_watermark(self, sample: int) -> Sequence[OverlapRegions]:
        if self._utterance_closed and not self._deferred:  # an utterance's result is awaited: next time
            self._utterance_closed, self._deferred = False, True
            return []
        self._utterance_closed = self._deferred = False
        return self._run_ready()

    def _run_ready(self) -> list[OverlapRegions]:
        """Run every chunk whose audio is in (one model call); report the frames each settles, one message
        per chunk, so the messages do not depend on how chunks were grouped into calls."""
        ready = (len(self._audio) - _WINDOW) // self.config.step_samples + 1 if len(self._audio) >= _WINDOW else 0
        if ready <= 0:
            return []
        step = self.config.step_samples
        offsets = np.arange(ready) * step
        chunks = np.stack([self._audio[o:o + _WINDOW] for o in offsets])  # (ready, 160000)
        self._add(self._model.log_probs(chunks), self._chunk_start + offsets)
        # no later chunk reaches the frames before the next chunk's start: those are decided
        decided = [m for o in offsets for m in self._decide((self._chunk_start + int(o) + step) // _STEP)]
        self._chunk_start += ready * step
        self._audio = self._audio[ready * step:]
        return decided

    def _add(self, log_probs: np.ndarray, starts: np.ndarray) -> None:
        """Accumulate the counts of chunks starting at ``starts (c,)`` on the global frame grid."""
        counts = expected_count(log_probs)  # (c, frames)
        frames = counts.shape[1]
        last = int(starts[-1]) // _STEP + frames - self._first_frame
        if last > len(self._sums):
            self._sums = np.concatenate([self._sums, np.zeros(last - len(self._sums))])
            self._hits = np.concatenate([self._hits, np.zeros(last - len(self._hits))])
        for start, row in zip(starts, counts):
            lo = int(start) // _STEP - self._first_frame
            self._sums[lo:lo + frames] += row
            self._hits[lo:lo + frames] += 1.0

    def _decide(self, until_frame: int) -> list[OverlapRegions]:
        """Turn frames before global frame ``until_frame`` into regions and drop them."""
        cut = max(0, min(until_frame - self._first_frame, len(self._sums)))
        if cut == 0:
            return []
        count = self._sums[:cut] / np.maximum(self._hits[:cut], 1.0)
        self._sums, self._hits = self._sums[cut:], self._hits[cut:]
        first, self._first_frame = self._first_frame, self._first_frame + cut
        spans: list[tuple[int, int]] = []
        scores: list[float] = []
        above = count >= self.config.min_count
        if self._open_start >= 0 and not above[0]:  # the open region ended at the previous edge
            self._close(int(_frame_start(first)), spans, scores)
        edges = np.flatnonzero(np.diff(np.r_[False, above, False].astype(np.int8)))
        for a, b in zip(edges[0::2], edges[1::2]):
            if self._open_start < 0:
                self._open_start = int(_frame_start(first + a))
            self._open_sum += float(np.sum(count[a:b] - 1.0))
            self._open_frames += int(b - a)
            if b < cut:  # the region ends inside the decided frames
                self._close(int(_frame_start(first + b)), spans, scores)
        quiet = np.flatnonzero(np.diff(np.r_[False, count < self.config.max_silent_count, False].astype(np.int8)))
        silent = _frame_start(first + quiet).reshape(-1, 2)
        return [self._message(spans, scores, int(_frame_start(self._first_frame)), silent)]

    @staticmethod
    def _message(spans: list[tuple[int, int]], scores: list[float], until: int, silent: np.ndarray) -> OverlapRegions:
        return OverlapRegions(np.array(spans, np.int64).reshape(-1, 2), np.array(scores, np.float32), until,
                              silent.astype(np.int64))

    def _close(self, end: int, spans: list[tuple[int, int]], scores: list[float]) -> None:
        if end - self._open_start >= self.config.min_region_samples:
            spans.append((self._open_start, end))
            scores.append(min(1.0, self._open_sum / max(self._open_frames, 1)))
        self._open_start, self._open_sum, self._open_frames = -1, 0.0, 0

    def on_eof(self) -> Sequence[OverlapRegions]:
        out = self._run_ready()
        end = self._chunk_start + len(self._audio)
        if len(self._audio):  # the rest of the audio, zero-padded to one chunk
            chunk = np.zeros((1, _WINDOW), np.float32)
            chunk[0, :len(self._audio)] = self._audio
            self._add(self._model.log_probs(chunk), np.array([self._chunk_start]))
            self._audio = self._audio[:0]
        decided = self._decide(-(-end // _STEP))
        spans = [(int(a), min(int(b), end)) for r in decided for a, b in r.spans.tolist()]
        scores = [float(x) for r in decided for x in r.scores]
        silent = np.minimum(np.vstack([np.zeros((0, 2), np.int64), *(r.silent_spans for r in decided)]), end)
        if self._open_start >= 0:
            self._close(end, spans, scores)
        self._sums, self._hits = self._sums[:0], self._hits[:0]
        return [*out, self._message(spans, scores, end, silent[silent[:, 1] > silent[:, 0]])]

    def checkpoint(self) -> OverlapDetectorState:
        return OverlapDetectorState(self._audio.copy(), self._chunk_start, self._sums.copy(), self._hits.copy(),
                                    self._first_frame, self._open_start, self._open_sum, self._open_frames,
                                    self._utterance_closed, self._deferred)
