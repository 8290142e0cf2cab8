"""The standard diarization graph: framing -> VAD -> embeddings -> clustering -> snapshots."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from diarflow.dataflow import Graph, GraphBuilder

from .clustering import OnlineClustererConfig
from .embedding import EmbeddingExtractorConfig
from .framing import PcmFramerConfig
from .snapshots import SnapshotEmitterConfig
from .vad import SileroVadConfig

__all__ = ["PipelineConfig", "build_graph"]


@dataclass(frozen=True)
class PipelineConfig:
    """Configs of the five standard operators; replace any of them to retune the pipeline.

    Examples
    --------
    >>> from dataclasses import replace
    >>> cfg = PipelineConfig()
    >>> tuned = replace(cfg, clustering=replace(cfg.clustering, merge_similarity=0.6))
    >>> graph = build_graph(tuned)
    """

    framing: PcmFramerConfig = field(default_factory=PcmFramerConfig)
    vad: SileroVadConfig = field(default_factory=SileroVadConfig)
    embedding: EmbeddingExtractorConfig = field(default_factory=EmbeddingExtractorConfig)
    clustering: OnlineClustererConfig = field(default_factory=OnlineClustererConfig)
    snapshots: SnapshotEmitterConfig = field(default_factory=SnapshotEmitterConfig)

    def __post_init__(self) -> None:
        settle = self.snapshots.settle_samples
        if settle is not None and settle >= self.clustering.retention_samples:
            raise ValueError(f"snapshots.settle_samples ({settle}) must be below clustering.retention_samples "
                             f"({self.clustering.retention_samples}): output settles before speech leaves the buffer")

    def for_mode(self, mode: Literal["offline", "stream"]) -> PipelineConfig:
        """This config with the switches of a driver mode set: ``"offline"`` turns on shared embedding
        passes over whole utterances and the global re-clustering at end of input; ``"stream"``
        turns both off (results after every utterance)."""
        if mode not in ("offline", "stream"):
            raise ValueError(f"mode must be 'offline' or 'stream', got {mode!r}")
        offline = mode == "offline"
        return replace(self, embedding=replace(self.embedding, shared_passes=offline),
                       clustering=replace(self.clustering, refine=offline))


def build_graph(config: PipelineConfig | None = None) -> Graph:
    """The linear diarization graph; node names are ``framer, vad, embedder, clusterer, snapshots``."""
    config = config or PipelineConfig()
    return GraphBuilder().chain(
        ("framer", config.framing),
        ("vad", config.vad),
        ("embedder", config.embedding),
        ("clusterer", config.clustering),
        ("snapshots", config.snapshots),
    ).freeze()
