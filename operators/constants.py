"""The facts every layer shares: sample rate, the VAD window, the embedding width, the confidence frame."""

from __future__ import annotations

__all__ = [
    "CONFIDENCE_FRAME_S",
    "CONFIDENCE_FRAME_SAMPLES",
    "EMBEDDING_DIM",
    "SAMPLE_RATE",
    "VAD_WINDOW_SAMPLES",
]

SAMPLE_RATE = 16_000
"""Hz. Every model runs on 16 kHz mono; audio is resampled once, at the edges (decoding, the page)."""

VAD_WINDOW_SAMPLES = 512
"""32 ms: the window Silero VAD v5+ is trained on; one speech probability per window."""

EMBEDDING_DIM = 192
"""Width of a CAM++ speaker embedding (and of a voiceprint)."""

CONFIDENCE_FRAME_SAMPLES = 320
"""20 ms: the resolution of frame-level confidence (``Snapshot.frame_confidence``)."""

CONFIDENCE_FRAME_S = CONFIDENCE_FRAME_SAMPLES / SAMPLE_RATE
"""The same frame in seconds, as the JSON outputs state it (0.02)."""
