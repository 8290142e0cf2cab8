"""Decode any audio or video file to 16 kHz mono float32, chunk by chunk (never the whole file)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from diarflow.operators.constants import SAMPLE_RATE

__all__ = ["AudioDecodeError", "decode_chunks", "probe_duration_s", "to_s16le"]


class AudioDecodeError(ValueError):
    """The input could not be read as audio; the message names the file and a plain reason."""


def _plain_reason(exc: BaseException) -> str:
    """FFmpeg's or the OS's reason without its error number and repeated path.

    ``[Errno 1094995529] Invalid data found when processing input: 'x.mp3'`` becomes
    ``invalid data found when processing input``.
    """
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    reason = reason.strip().rstrip(".")
    return reason[:1].lower() + reason[1:]


def decode_chunks(path: str | Path, chunk_samples: int = 30 * SAMPLE_RATE) -> Iterator[np.ndarray]:
    """Yield float32 ``(n,)`` chunks of at most ``chunk_samples`` at 16 kHz mono, in order.

    Any container and codec FFmpeg (through PyAV) reads: WAV, FLAC, MP3, OGG/Opus, M4A/AAC, and the
    first audio track of video files. Channels are averaged; resampling is done by FFmpeg's resampler.

    Raises
    ------
    AudioDecodeError
        The file is missing, not a media file, or has no audio track.
    """
    import av

    path = Path(path)
    if not path.exists():
        raise AudioDecodeError(f"{path}: no such file")
    if path.is_dir():
        raise AudioDecodeError(f"{path}: is a folder, not an audio file")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise AudioDecodeError(f"{path}: not an audio or video file FFmpeg can read ({_plain_reason(exc)})") from None
    with container:
        if not container.streams.audio:
            raise AudioDecodeError(f"{path}: has no audio track")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        pending: list[np.ndarray] = []
        pending_len = 0
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    pending.append(out.to_ndarray().reshape(-1))
                    pending_len += pending[-1].shape[0]
                while pending_len >= chunk_samples:
                    merged = np.concatenate(pending)
                    yield merged[:chunk_samples]
                    pending, pending_len = [merged[chunk_samples:]], pending_len - chunk_samples
            for out in resampler.resample(None):
                pending.append(out.to_ndarray().reshape(-1))
                pending_len += pending[-1].shape[0]
        except av.error.FFmpegError as exc:
            raise AudioDecodeError(f"{path}: the audio is damaged and could not be decoded "
                                   f"({_plain_reason(exc)})") from None
        if pending_len:
            merged = np.concatenate(pending)
            for lo in range(0, len(merged), chunk_samples):
                yield merged[lo:lo + chunk_samples]


def probe_duration_s(path: str | Path) -> float | None:
    """The container's declared duration in seconds, if it declares one."""
    import av

    try:
        with av.open(str(path)) as container:
            if container.duration is not None:
                return float(container.duration) / 1_000_000
            stream = container.streams.audio[0] if container.streams.audio else None
            if stream is not None and stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
    except (av.error.FFmpegError, OSError):
        return None
    return None


def to_s16le(samples: np.ndarray) -> bytes:
    """float32 ``(n,)`` samples in [-1, 1] to little-endian signed 16-bit PCM bytes (clipped)."""
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()
