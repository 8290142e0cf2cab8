"""diarflow: streaming and offline speaker diarization on a plain CPU."""

__version__ = "0.1.0"
