"""``PcmFramer``: s16le bytes (or decoded float samples) to timed float32 frames."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from .constants import VAD_WINDOW_SAMPLES
from .messages import PcmBytes, PcmFrame, PcmSamples

__all__ = ["PcmFramer", "PcmFramerConfig", "PcmFramerState"]


@dataclass(frozen=True)
class PcmFramerState:
    next_sample: int


@dataclass(frozen=True)
class PcmFramerConfig:
    """Turn raw audio into :class:`PcmFrame` messages stamped with their first sample index.

    Parameters
    ----------
    max_frame_samples
        Larger inputs are split into frames of at most this many samples (default 60 s at 16 kHz),
        so that a huge offline chunk never becomes one huge model batch.
    """

    max_frame_samples: int = 960_000

    input_types: ClassVar[tuple[type, ...]] = (PcmBytes, PcmSamples)
    output_types: ClassVar[tuple[type, ...]] = (PcmFrame,)

    def __post_init__(self) -> None:
        if self.max_frame_samples < VAD_WINDOW_SAMPLES:
            raise ValueError(f"max_frame_samples must be >= {VAD_WINDOW_SAMPLES}, got {self.max_frame_samples}")

    def build(self, state: PcmFramerState | None, resources: Any = None) -> PcmFramer:
        return PcmFramer(self, state or PcmFramerState(next_sample=0))


class PcmFramer:
    """Stateless but for the running sample counter; rejects malformed audio with a clear error."""

    def __init__(self, config: PcmFramerConfig, state: PcmFramerState) -> None:
        self.config = config
        self._next_sample = state.next_sample

    def on_item(self, item: PcmBytes | PcmSamples) -> Sequence[PcmFrame]:
        if isinstance(item, PcmBytes):
            size = len(item.payload)
            if size == 0:
                raise ValueError("empty audio frame: expected s16le PCM, 2 bytes per sample")
            if size % 2:
                raise ValueError(f"odd byte count {size}: s16le PCM needs 2 bytes per sample")
            samples = np.frombuffer(item.payload, dtype="<i2").astype(np.float32) / 32768.0
        elif isinstance(item, PcmSamples):
            raw = item.samples
            if not isinstance(raw, np.ndarray) or raw.ndim != 1 or raw.dtype.kind != "f":
                got = f"{raw.dtype}{raw.shape}" if isinstance(raw, np.ndarray) else type(raw).__name__
                raise ValueError(f"expected mono float samples of shape (n,), got {got}; "
                                 "downmix and convert before framing")
            if len(raw) == 0:
                return []
            if not np.isfinite(raw).all():
                raise ValueError("audio contains NaN or infinite samples")
            samples = raw.astype(np.float32)  # a copy: the caller's array is never aliased
        else:
            raise TypeError(f"PcmFramer accepts PcmBytes or PcmSamples, got {type(item).__name__}")
        frames = []
        for offset in range(0, len(samples), self.config.max_frame_samples):
            piece = samples[offset:offset + self.config.max_frame_samples]
            frames.append(PcmFrame(self._next_sample, piece))
            self._next_sample += len(piece)
        return frames

    def on_watermark(self, sample: int) -> Sequence[PcmFrame]:
        return []

    def on_eof(self) -> Sequence[PcmFrame]:
        return []

    def checkpoint(self) -> PcmFramerState:
        return PcmFramerState(next_sample=self._next_sample)
