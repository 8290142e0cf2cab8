"""The standard diarization graph, a DAG; its edges::

    framer           -> vad, embedder, overlap_detector     (audio frames)
    vad              -> embedder, overlap_detector          (speech starts and regions)
    vad              -> clusterer                           (offline only: probabilities, for frame confidence)
    embedder         -> clusterer -> overlaps -> snapshots
    overlap_detector -> overlaps

In ``"stream"`` mode the embedder is :class:`~.embedding.EmbeddingExtractor` and the clusterer
:class:`~.clustering.OnlineClusterer`; in ``"offline"`` mode they are
:class:`~.pooled_embedding.PooledEmbeddingExtractor` and :class:`~.global_clusterer.GlobalClusterer`. Without overlap detection
(``PipelineConfig.overlap_detection = None``) there are no overlap nodes (``clusterer -> snapshots``)
and every moment has at most one speaker.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from diarflow.dataflow import Graph, GraphBuilder

from .clustering import OnlineClustererConfig
from .embedding import EmbeddingExtractorConfig
from .global_clusterer import GlobalClustererConfig
from .pooled_embedding import PooledEmbeddingExtractorConfig
from .framing import PcmFramerConfig
from .overlap import OverlapAssignerConfig
from .segmentation import OverlapDetectorConfig
from .snapshots import SnapshotEmitterConfig
from .speaker_count import SpeakerCount
from .vad import SileroVadConfig

__all__ = ["PipelineConfig", "build_graph"]


@dataclass(frozen=True)
class PipelineConfig:
    """Configs of the standard operators; replace any of them to retune the pipeline.

    ``overlap_detection`` (pyannote segmentation-3.0 counting voices) and ``overlaps`` (who the second
    voice is) output overlapped speech; set ``overlap_detection=None`` for one speaker at a time
    (saves the segmentation model's ~0.003 real-time factor).

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
    overlap_detection: OverlapDetectorConfig | None = field(default_factory=OverlapDetectorConfig)
    overlaps: OverlapAssignerConfig = field(default_factory=OverlapAssignerConfig)
    snapshots: SnapshotEmitterConfig = field(default_factory=SnapshotEmitterConfig)
    mode: Literal["offline", "stream"] = "stream"

    def __post_init__(self) -> None:
        if self.mode not in ("offline", "stream"):
            raise ValueError(f"mode must be 'offline' or 'stream', got {self.mode!r}")
        settle = self.snapshots.settle_samples
        if settle is not None and settle >= self.clustering.retention_samples:
            raise ValueError(f"snapshots.settle_samples ({settle}) must be below clustering.retention_samples "
                             f"({self.clustering.retention_samples}): output settles before speech leaves the buffer")

    def with_speakers(self, count: SpeakerCount) -> PipelineConfig:
        """This config with the clusterer constrained to ``count`` speakers."""
        return replace(self, clustering=replace(self.clustering, num_speakers=count.num,
                                                min_speakers=count.min, max_speakers=count.max))

    def for_mode(self, mode: Literal["offline", "stream"]) -> PipelineConfig:
        """This config for a driver mode: ``"offline"`` pools window embeddings from shared passes over whole
        utterances (:class:`PooledEmbeddingExtractorConfig` on ``embedding``'s grid) and clusters all windows
        at end of input (:class:`GlobalClustererConfig` with ``clustering``'s knobs), and overlaps the overlap
        detector's chunks (:attr:`overlap_detector`); ``"stream"`` embeds
        each window as it completes and clusters online over the rolling buffer (results after every
        utterance)."""
        if mode not in ("offline", "stream"):
            raise ValueError(f"mode must be 'offline' or 'stream', got {mode!r}")
        return replace(self, mode=mode)

    @property
    def embedder(self) -> EmbeddingExtractorConfig | PooledEmbeddingExtractorConfig:
        """The embedder node of this mode: a model pass per window live, windows pooled from shared passes
        over whole utterances offline (on ``embedding``'s window grid)."""
        return self.embedding if self.mode == "stream" else PooledEmbeddingExtractorConfig.like(self.embedding)

    @property
    def overlap_detector(self) -> OverlapDetectorConfig | None:
        """The overlap detector node of this mode (``None`` without overlap detection): offline its chunks
        overlap (``offline_step_samples``), live they tile the audio (``step_samples``)."""
        detection = self.overlap_detection
        if detection is None or self.mode == "stream":
            return detection
        return replace(detection, step_samples=detection.offline_step_samples)

    @property
    def clusterer(self) -> OnlineClustererConfig | GlobalClustererConfig:
        """The clusterer node of this mode: online over the rolling buffer, or global at end of input."""
        return self.clustering if self.mode == "stream" else GlobalClustererConfig.like(self.clustering)


def build_graph(config: PipelineConfig | None = None) -> Graph:
    """The diarization graph; node names are ``framer, vad, embedder, clusterer, overlap_detector,
    overlaps, snapshots`` (the two overlap nodes only with ``overlap_detection``).

    Audio frames go from the framer to every operator that reads audio (VAD, embedder, overlap
    detector); the VAD's speech regions go to the embedder and to the overlap detector (which keeps its
    model calls off the step that closes an utterance) and, offline, its probabilities to the clusterer
    (frame confidence). Each edge carries the message types its downstream node accepts.
    """
    config = config or PipelineConfig()
    builder = (GraphBuilder()
               .add("framer", config.framing)
               .add("vad", config.vad)
               .add("embedder", config.embedder)
               .add("clusterer", config.clusterer)
               .add("snapshots", config.snapshots)
               .connect("framer", "vad")
               .connect("framer", "embedder")
               .connect("vad", "embedder")
               .connect("embedder", "clusterer"))
    if config.mode == "offline":
        builder.connect("vad", "clusterer")
    if config.overlap_detector is None:
        return builder.connect("clusterer", "snapshots").freeze()
    return (builder
            .add("overlap_detector", config.overlap_detector)
            .add("overlaps", config.overlaps)
            .connect("framer", "overlap_detector")
            .connect("vad", "overlap_detector")
            .connect("clusterer", "overlaps")
            .connect("overlap_detector", "overlaps")
            .connect("overlaps", "snapshots")
            .freeze())
