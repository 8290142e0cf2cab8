"""Kaldi-compatible log-mel filterbank features in vectorised NumPy (the CAM++ front end)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .constants import SAMPLE_RATE

__all__ = ["FbankConfig", "Fbank"]

_FLT_EPSILON = float(np.finfo(np.float32).eps)


def _mel(freq_hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(freq_hz, dtype=np.float64) / 700.0)


@dataclass(frozen=True)
class FbankConfig:
    """Kaldi ``compute-fbank-feats`` options that CAM++ was trained with.

    Parameters
    ----------
    sample_rate
        Input sample rate in Hz (16000).
    num_mel_bins
        Number of triangular mel filters (80).
    frame_length_samples, frame_shift_samples
        25 ms and 10 ms at 16 kHz. Frames are taken with ``snip_edges``: only whole frames.
    low_freq_hz
        Lowest filter edge (20 Hz); the highest is the Nyquist frequency.
    preemphasis
        Pre-emphasis coefficient (0.97), applied after removing each frame's DC offset.
    """

    sample_rate: int = SAMPLE_RATE
    num_mel_bins: int = 80
    frame_length_samples: int = 400
    frame_shift_samples: int = 160
    low_freq_hz: float = 20.0
    preemphasis: float = 0.97

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        if not 0 < self.frame_shift_samples <= self.frame_length_samples:
            raise ValueError(
                "expected 0 < frame_shift_samples <= frame_length_samples, got "
                f"{self.frame_shift_samples} and {self.frame_length_samples}"
            )
        if not 0 <= self.low_freq_hz < self.sample_rate / 2:
            raise ValueError(f"low_freq_hz must lie in [0, Nyquist), got {self.low_freq_hz}")
        if self.num_mel_bins < 1:
            raise ValueError(f"num_mel_bins must be >= 1, got {self.num_mel_bins}")

    def num_frames(self, num_samples: int) -> int:
        """Whole frames in ``num_samples`` samples (Kaldi ``snip_edges=true``)."""
        if num_samples < self.frame_length_samples:
            return 0
        return 1 + (num_samples - self.frame_length_samples) // self.frame_shift_samples


class Fbank:
    """Log-mel filterbank energies, bit-for-bit the recipe of Kaldi with ``dither=0``.

    Per frame: remove the DC offset, pre-emphasise, apply the Povey window, zero-pad to a power of two,
    take the power spectrum, weight it with triangular mel filters and take ``log(max(e, FLT_EPSILON))``.
    Samples are floats in [-1, 1], not scaled to the 16-bit range. Stateless and thread-safe.

    Examples
    --------
    >>> feats = Fbank().compute(np.zeros(16000, np.float32))
    >>> feats.shape
    (98, 80)
    """

    def __init__(self, config: FbankConfig | None = None) -> None:
        self.config = config or FbankConfig()

    @cached_property
    def _fft_size(self) -> int:
        return 1 << (self.config.frame_length_samples - 1).bit_length()

    @cached_property
    def _window(self) -> np.ndarray:
        n = self.config.frame_length_samples
        hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / (n - 1))
        return (hann**0.85).astype(np.float32)  # (frame_length,)

    @cached_property
    def _mel_banks(self) -> np.ndarray:
        cfg = self.config
        num_fft_bins = self._fft_size // 2
        bin_hz = cfg.sample_rate / self._fft_size
        mel_low, mel_high = _mel(cfg.low_freq_hz), _mel(cfg.sample_rate / 2)
        delta = (mel_high - mel_low) / (cfg.num_mel_bins + 1)
        edges = mel_low + delta * np.arange(cfg.num_mel_bins + 2)
        left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
        mel = _mel(bin_hz * np.arange(num_fft_bins))[None, :]
        up = (mel - left) / (centre - left)
        down = (right - mel) / (right - centre)
        weights = np.where((mel > left) & (mel < right), np.where(mel <= centre, up, down), 0.0)
        # the Nyquist bin never carries weight in Kaldi; keep a zero column so shapes match rfft
        weights = np.concatenate([weights, np.zeros((cfg.num_mel_bins, 1))], axis=1)
        return weights.T.astype(np.float32)  # (fft_size // 2 + 1, num_mel_bins)

    def compute(self, samples: np.ndarray) -> np.ndarray:
        """Features of one contiguous signal.

        Parameters
        ----------
        samples
            float32 ``(num_samples,)`` in [-1, 1] at ``config.sample_rate``.

        Returns
        -------
        numpy.ndarray
            float32 ``(num_frames, num_mel_bins)``; ``num_frames = config.num_frames(num_samples)``.
        """
        cfg = self.config
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"expected a 1-D signal, got shape {samples.shape}")
        num_frames = cfg.num_frames(samples.shape[0])
        if num_frames == 0:
            return np.zeros((0, cfg.num_mel_bins), dtype=np.float32)
        frames = np.lib.stride_tricks.as_strided(
            samples,
            shape=(num_frames, cfg.frame_length_samples),
            strides=(cfg.frame_shift_samples * samples.strides[0], samples.strides[0]),
            writeable=False,
        )  # (frames, frame_length), a view
        frames = frames - frames.mean(axis=1, keepdims=True)
        emphasised = np.empty_like(frames)
        emphasised[:, 1:] = frames[:, 1:] - cfg.preemphasis * frames[:, :-1]
        emphasised[:, 0] = frames[:, 0] * (1.0 - cfg.preemphasis)
        emphasised *= self._window
        spectrum = np.fft.rfft(emphasised, n=self._fft_size, axis=1)  # (frames, fft/2 + 1)
        power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
        energies = power @ self._mel_banks
        return np.log(np.maximum(energies, _FLT_EPSILON)).astype(np.float32)

    def compute_normalised(self, samples: np.ndarray) -> np.ndarray:
        """:meth:`compute` minus its mean over frames (the CAM++ input for one segment)."""
        feats = self.compute(samples)
        return feats - feats.mean(axis=0, keepdims=True) if len(feats) else feats
