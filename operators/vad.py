"""``SileroVad``: streaming voice activity detection that opens and closes utterances."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Sequence

import numpy as np

from .messages import PcmFrame, SpeechPause, SpeechRegion, SpeechStart, VadProbabilities
from .constants import VAD_WINDOW_SAMPLES
from .models import VadModel, VadState

__all__ = ["SileroVad", "SileroVadConfig", "SileroVadState"]


@dataclass(frozen=True)
class SileroVadConfig:
    """Hysteresis VAD on Silero speech probabilities (16 kHz, 32 ms windows).

    Parameters
    ----------
    threshold
        Probability in (0, 1) at or above which a window is speech (0.5).
    negative_threshold
        Probability below which a window is silence; between the two the current state holds.
        Default ``threshold - 0.15``.
    min_speech_samples
        Speech must last this long (in windows at or above ``negative_threshold``) before an
        utterance opens; shorter blips are dropped (250 ms).
    min_silence_samples
        Silence needed to close an utterance (250 ms). This hangover is audio, not latency.
    pad_samples
        Added before the start and after the end of each utterance (30 ms), never overlapping
        the previous utterance.
    pause_samples
        After this much silence inside an utterance (64 ms) the VAD announces where the utterance will
        end if no speech resumes (:class:`SpeechPause`), so that the live embedder can embed its last
        window during the rest of the hangover instead of after it closes. Shorter announces more
        pauses that speech then resumes (each costs a wasted window: at 64 ms, +20 % live compute on
        the dev set), longer leaves less time before the close. At most ``min_silence_samples``,
        which turns the announcements off.
    max_utterance_samples
        An utterance is cut and a new one opened at this length (15 s), so that results keep
        flowing while someone talks on.

    Frames of any size give the same probabilities: a 200 ms streaming frame and a 4 min offline
    chunk both run the model over their windows in one sequence carrying the same state.
    """

    threshold: float = 0.5
    negative_threshold: float | None = None
    min_speech_samples: int = 4000
    min_silence_samples: int = 4000
    pad_samples: int = 480
    max_utterance_samples: int = 240_000
    pause_samples: int = 1024

    input_types: ClassVar[tuple[type, ...]] = (PcmFrame,)
    output_types: ClassVar[tuple[type, ...]] = (SpeechStart, SpeechPause, SpeechRegion, VadProbabilities)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}")
        if not 0.0 < self.low < self.threshold + 1e-12:
            raise ValueError(f"negative_threshold must lie in (0, threshold], got {self.negative_threshold}")
        for name in ("min_speech_samples", "min_silence_samples", "pad_samples", "pause_samples"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_utterance_samples < max(self.min_speech_samples, 2 * VAD_WINDOW_SAMPLES):
            raise ValueError(f"max_utterance_samples must be >= min_speech_samples and >= 1024, "
                             f"got {self.max_utterance_samples}")
        if self.pause_samples > self.min_silence_samples:
            raise ValueError(f"pause_samples must not exceed min_silence_samples, got {self.pause_samples} > "
                             f"{self.min_silence_samples}")
        if self.pad_samples > self.min_silence_samples:
            raise ValueError("pad_samples must not exceed min_silence_samples (the padded end must be "
                             f"audio already seen), got {self.pad_samples} > {self.min_silence_samples}")

    @property
    def low(self) -> float:
        return self.threshold - 0.15 if self.negative_threshold is None else self.negative_threshold

    def build(self, state: SileroVadState | None, resources: Any) -> SileroVad:
        return SileroVad(self, resources.vad, state or SileroVadState.initial())


@dataclass(frozen=True)
class SileroVadState:
    """Everything a resumed VAD needs (plain arrays and scalars)."""

    leftover: np.ndarray  # samples not yet forming a whole window, (n < 512,)
    next_window_sample: int  # first sample of the next window
    lstm: np.ndarray  # (2, 1, 128)
    context: np.ndarray  # (64,)
    candidate_start: int  # -1: none; first sample of speech not yet long enough to open
    open_start: int  # -1: no open utterance; else its (padded) start
    silence_start: int  # -1: none; first sample of the silence that may close the utterance
    last_end: int  # end of the previous utterance (padding never overlaps it)
    probability_sum: float
    window_count: int

    @classmethod
    def initial(cls) -> SileroVadState:
        fresh = VadState()
        return cls(np.zeros(0, np.float32), 0, fresh.lstm, fresh.context, -1, -1, -1, 0, 0.0, 0)


class SileroVad:
    """Runs Silero on whole 512-sample windows and applies the hysteresis state machine.

    Emits, for each input frame: the window probabilities, then any :class:`SpeechStart` /
    :class:`SpeechPause` / :class:`SpeechRegion` it decided (operators that need the audio read it from
    the framer).
    """

    def __init__(self, config: SileroVadConfig, model: VadModel, state: SileroVadState) -> None:
        self.config = config
        self._model = model
        self._s = state

    def on_item(self, item: PcmFrame) -> Sequence[Any]:
        s = self._s
        if item.start_sample != s.next_window_sample + len(s.leftover):
            raise ValueError(f"audio gap: expected a frame at sample {s.next_window_sample + len(s.leftover)}, "
                             f"got {item.start_sample}")
        audio = np.concatenate([s.leftover, item.samples]) if len(s.leftover) else item.samples
        num_windows = len(audio) // VAD_WINDOW_SAMPLES
        out: list[Any] = []
        if num_windows:
            windows = audio[: num_windows * VAD_WINDOW_SAMPLES].reshape(num_windows, VAD_WINDOW_SAMPLES)
            probabilities, vad_state = self._model.speech_probabilities(windows, VadState(s.lstm, s.context))
            self._s = replace(s, lstm=vad_state.lstm, context=vad_state.context)
            out.append(VadProbabilities(s.next_window_sample, probabilities))
            out.extend(self._decide(probabilities))
        self._s = replace(self._s, leftover=audio[num_windows * VAD_WINDOW_SAMPLES:].copy())
        return out

    def _decide(self, probabilities: np.ndarray) -> list[Any]:
        cfg, s = self.config, self._s
        cand, open_start, silence, last_end = s.candidate_start, s.open_start, s.silence_start, s.last_end
        prob_sum, count = s.probability_sum, s.window_count
        out: list[Any] = []
        window_start = s.next_window_sample
        for p in probabilities.tolist():
            window_end = window_start + VAD_WINDOW_SAMPLES
            if open_start < 0:
                if p >= cfg.threshold and cand < 0:
                    cand = window_start
                elif p < cfg.low:
                    cand = -1
                if cand >= 0 and window_end - cand >= cfg.min_speech_samples:
                    open_start = max(last_end, cand - cfg.pad_samples, 0)
                    cand, silence, prob_sum, count = -1, -1, 0.0, 0
                    out.append(SpeechStart(open_start))
            else:
                prob_sum, count = prob_sum + p, count + 1
                if p >= cfg.threshold:
                    silence = -1
                elif p < cfg.low and silence < 0:
                    silence = window_start
                if silence >= 0 and window_end - silence >= cfg.min_silence_samples:
                    end = silence + cfg.pad_samples
                    out.append(SpeechRegion(open_start, end, prob_sum / max(count, 1)))
                    open_start, last_end, silence = -1, end, -1
                elif window_end - open_start >= cfg.max_utterance_samples:
                    out.append(SpeechRegion(open_start, window_end, prob_sum / max(count, 1)))
                    out.append(SpeechStart(window_end))
                    open_start, last_end, silence, prob_sum, count = window_end, window_end, -1, 0.0, 0
                elif silence >= 0 and window_end - silence >= cfg.pause_samples and (
                        window_start == silence or window_start - silence < cfg.pause_samples):
                    # the first window of this silence to reach pause_samples: announce once
                    out.append(SpeechPause(open_start, silence + cfg.pad_samples))
            window_start = window_end
        self._s = replace(s, next_window_sample=window_start, candidate_start=cand, open_start=open_start,
                          silence_start=silence, last_end=last_end, probability_sum=prob_sum, window_count=count)
        return out

    def on_watermark(self, sample: int) -> Sequence[Any]:
        return []

    def on_eof(self) -> Sequence[Any]:
        s = self._s
        if s.open_start < 0:
            return []
        audio_end = s.next_window_sample + len(s.leftover)
        end = min(s.silence_start + self.config.pad_samples, audio_end) if s.silence_start >= 0 else audio_end
        self._s = replace(s, open_start=-1, last_end=end)
        return [SpeechRegion(s.open_start, end, s.probability_sum / max(s.window_count, 1))]

    def checkpoint(self) -> SileroVadState:
        return self._s
