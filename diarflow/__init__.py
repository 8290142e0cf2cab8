"""diarflow: streaming and offline speaker diarization on a plain CPU."""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["DiarizationResult", "Segment", "diarize", "__version__"]

if TYPE_CHECKING:
    from .api import DiarizationResult, Segment, diarize


def __getattr__(name: str) -> Any:
    # the API pulls in onnxruntime and the models' NumPy code; keep `import diarflow` itself light
    if name in {"diarize", "DiarizationResult", "Segment"}:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'diarflow' has no attribute {name!r}")
