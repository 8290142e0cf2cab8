"""Load the shared, read-only models from the verified cache (provisioning them on first use)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from diarflow.operators.models import Resources, SegmentationModel, SileroVadModel, SpeakerEmbeddingModel
from diarflow.provisioning import ensure_models

__all__ = ["load_resources"]


def load_resources(model_dir: Path | None = None, parallel_calls: int = 1) -> Resources:
    """Verify (installing on first use) and load the models from the cache.

    Parameters
    ----------
    model_dir
        Model cache; default ``$DIARFLOW_MODEL_DIR`` or ``~/.cache/diarflow/models``.
    parallel_calls
        Model calls one batch may spread over (threads, >= 1; onnxruntime releases the GIL). Use the
        core count for a single offline run; 1 where many sessions already share the cores.

    Returns
    -------
    Resources
        Silero VAD, CAM++ and segmentation-3.0 runtimes, sharing one thread pool when
        ``parallel_calls > 1``.

    Examples
    --------
    >>> resources = load_resources(parallel_calls=2)  # doctest: +SKIP
    """
    if parallel_calls < 1:
        raise ValueError(f"parallel_calls must be >= 1, got {parallel_calls}")
    paths = ensure_models(model_dir)
    pool = ThreadPoolExecutor(parallel_calls, thread_name_prefix="diarflow-model") if parallel_calls > 1 else None
    return Resources(
        vad=SileroVadModel(paths.silero_vad, pool=pool),
        embedder=SpeakerEmbeddingModel(paths.campplus, pool=pool),
        segmentation=SegmentationModel(paths.segmentation, pool=pool),
    )
