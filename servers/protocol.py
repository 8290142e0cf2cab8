"""The live stream's wire contract, shared by the server and the client: the audio format of ``start``."""

from __future__ import annotations

from typing import Mapping

from diarflow.operators.constants import SAMPLE_RATE

__all__ = ["BYTES_PER_SECOND", "SAMPLE_WIDTH_BYTES", "START_FIELDS"]

SAMPLE_WIDTH_BYTES = 2  # s16le
BYTES_PER_SECOND = SAMPLE_RATE * SAMPLE_WIDTH_BYTES
START_FIELDS: Mapping[str, object] = {
    "sample_rate": SAMPLE_RATE, "channels": 1, "sample_width": SAMPLE_WIDTH_BYTES, "format": "pcm_s16le",
}
"""Every field a ``start`` message must carry, with the only value the server accepts (docs/stream-protocol.md)."""
