"""Fast length checks of a job's input before it is decoded (a small file can hide hours of audio)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["demuxed_duration_s", "too_long_message"]


def too_long_message(limit_s: float) -> str:
    """``"Audio is longer than 24 h"`` / ``"... than 30 s"``: the limit as a person would say it."""
    if limit_s >= 3600 and limit_s % 3600 == 0:
        return f"Audio is longer than {int(limit_s // 3600)} h"
    if limit_s >= 60 and limit_s % 60 == 0:
        return f"Audio is longer than {int(limit_s // 60)} min"
    return f"Audio is longer than {limit_s:g} s"


def demuxed_duration_s(path: str | Path, stop_after_s: float) -> float | None:
    """The input's true length from its packets' timestamps, without decoding any audio.

    Containers may declare no duration, or a false one; packet timestamps come from the stream
    itself. Reading stops as soon as the length passes ``stop_after_s`` (so a 25 h "bomb" costs
    a fraction of a second, not a decode of 24 h).

    Returns
    -------
    float or None
        End of the last packet in seconds (at least ``stop_after_s`` when stopped early), or
        ``None`` when the file cannot be demuxed or its packets carry no timestamps.
    """
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            if stream.time_base is None:
                return None
            base = float(stream.time_base)
            origin = stream.start_time or 0
            end_s: float | None = None
            for packet in container.demux(stream):
                if packet.pts is None:
                    continue
                packet_end_s = (packet.pts - origin + (packet.duration or 0)) * base
                end_s = packet_end_s if end_s is None else max(end_s, packet_end_s)
                if end_s > stop_after_s:
                    break
            return end_s
    except (av.error.FFmpegError, OSError):
        return None
