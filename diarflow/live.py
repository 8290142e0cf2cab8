"""Live sessions for the v1.1 protocol: the streaming driver plus what a session must keep to be resumed.

A :class:`LiveSession` owns one :class:`~diarflow.dataflow.StreamingSession` and the facts a client
relies on across a dropped connection or a server restart: how much audio it holds, how many frames
came, the last snapshot, and the people it was told to recognise. :meth:`LiveSession.checkpoint`
captures all of it between pushes; a session built from that checkpoint continues exactly where the
original stood (fresh start and resume are one path). Protocols and files are the caller's business;
:func:`dump_checkpoint` / :func:`write_atomic` only make persisting it cheap and crash-safe.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from diarflow.dataflow import Checkpoint, Graph, StreamingSession
from diarflow.operators.messages import PcmBytes, Snapshot
from diarflow.operators.pipeline import PipelineConfig, build_graph
from diarflow.voiceprints import DEFAULT_EXCLUSIVE, DEFAULT_THRESHOLD, decode_voiceprint, match_speakers

__all__ = ["KnownSpeaker", "LiveCheckpoint", "LiveOptions", "LiveSession", "MAX_KNOWN_SPEAKERS",
           "dump_checkpoint", "live_graph", "load_checkpoint", "write_atomic"]

MAX_KNOWN_SPEAKERS = 50
MAX_LABEL_CHARS = 64


@dataclass(frozen=True)
class KnownSpeaker:
    """A person the session should recognise: ``label`` and a voiceprint string (``POST /v1/voiceprint``).

    Raises
    ------
    ValueError
        An empty, too long or non-printable label, or a voiceprint this server did not make.
    """

    label: str
    voiceprint: str
    vector: np.ndarray = field(init=False, repr=False, compare=False)  # unit-norm (192,)

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not 1 <= len(self.label) <= MAX_LABEL_CHARS:
            raise ValueError(f"label must be a string of 1 to {MAX_LABEL_CHARS} characters, got {self.label!r}")
        if not self.label.isprintable():
            raise ValueError(f"label must be printable characters, got {self.label!r}")
        try:
            vector = decode_voiceprint(self.voiceprint)
        except ValueError as exc:
            raise ValueError(f"voiceprint of {self.label!r}: {exc}") from None
        object.__setattr__(self, "vector", vector)


@dataclass(frozen=True)
class LiveOptions:
    """What a session was started with (kept in its checkpoint, so a resumed session runs the same graph).

    Parameters
    ----------
    num_speakers, min_speakers, max_speakers
        Speaker-count constraints, whole numbers >= 1 (``num_speakers`` excludes the other two).
    merge_similarity
        Clustering sensitivity, a cosine in (-1, 1): two live speakers whose voices are more similar
        than this become one (lower merges more). ``None``: the engine's default. Same meaning and
        name as ``diarflow diarize --merge-similarity``; live, it sets the online clusterer's
        ``merge_threshold``.
    speakers
        At most 50 known people, labels unique.
    """

    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    merge_similarity: float | None = None
    speakers: tuple[KnownSpeaker, ...] = ()

    def __post_init__(self) -> None:
        if self.merge_similarity is not None and (
                isinstance(self.merge_similarity, bool) or not isinstance(self.merge_similarity, (int, float))
                or not -1.0 < self.merge_similarity < 1.0):
            raise ValueError(f"merge_similarity must be a number in (-1, 1), got {self.merge_similarity!r} "
                             "(lower merges more voices into one speaker)")
        if len(self.speakers) > MAX_KNOWN_SPEAKERS:
            raise ValueError(f"speakers: at most {MAX_KNOWN_SPEAKERS} known speakers, got {len(self.speakers)}")
        labels = [s.label for s in self.speakers]
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(f"speakers: labels must be unique, {duplicates[0]!r} appears more than once")
        live_graph(self.num_speakers, self.min_speakers, self.max_speakers, self.merge_similarity)  # validates


@lru_cache(maxsize=32)  # keyed by what clients send: bounded
def live_graph(num_speakers: int | None = None, min_speakers: int | None = None, max_speakers: int | None = None,
               merge_similarity: float | None = None) -> Graph:
    """The frozen streaming graph for these options (``ValueError`` if they are invalid)."""
    cfg = PipelineConfig().for_mode("stream")
    clustering = replace(cfg.clustering, num_speakers=num_speakers, min_speakers=min_speakers,
                         max_speakers=max_speakers)
    if merge_similarity is not None:
        clustering = replace(clustering, merge_threshold=float(merge_similarity))
    return build_graph(replace(cfg, clustering=clustering))


@dataclass(frozen=True)
class LiveCheckpoint:
    """Everything needed to continue a live session: the engine's checkpoint and the session's counters.

    ``meta`` is the caller's (e.g. the server's session id and team); it travels unchanged.
    """

    options: LiveOptions
    engine: Checkpoint
    samples_received: int
    frames_received: int
    last_snapshot: Snapshot | None
    meta: Mapping[str, Any] = field(default_factory=dict)


class LiveSession:
    """One live session. Not thread-safe: one call at a time (the server serialises them).

    Parameters
    ----------
    options
        What the session was started with.
    resources
        Loaded models (shared, read-only).
    checkpoint
        Continue from this state instead of starting fresh (its options win over ``options``).

    Examples
    --------
    >>> session = LiveSession(LiveOptions(num_speakers=2), resources)   # doctest: +SKIP
    >>> for snapshot in session.push(pcm_s16le_bytes): show(snapshot)  # doctest: +SKIP
    >>> saved = dump_checkpoint(session.checkpoint())                   # doctest: +SKIP
    """

    def __init__(self, options: LiveOptions, resources: Any, checkpoint: LiveCheckpoint | None = None) -> None:
        self.options = checkpoint.options if checkpoint is not None else options
        o = self.options
        graph = live_graph(o.num_speakers, o.min_speakers, o.max_speakers, o.merge_similarity)
        self._engine = StreamingSession(graph, resources, checkpoint.engine if checkpoint is not None else None)
        self.samples_received = checkpoint.samples_received if checkpoint is not None else 0
        self.frames_received = checkpoint.frames_received if checkpoint is not None else 0
        self.last_snapshot: Snapshot | None = checkpoint.last_snapshot if checkpoint is not None else None
        self.meta: Mapping[str, Any] = dict(checkpoint.meta) if checkpoint is not None else {}
        labels = [s.label for s in o.speakers]
        self._labels = labels
        self._prints = (np.stack([s.vector for s in o.speakers]) if o.speakers
                        else np.zeros((0, 192), np.float32))  # (known, 192)

    @property
    def closed(self) -> bool:
        return self._engine.closed

    def push(self, payload: bytes) -> list[Snapshot]:
        """Count one received frame and push its audio (s16le; may be empty, e.g. past a length limit)."""
        self.frames_received += 1
        if not payload:
            return []
        self.samples_received += len(payload) // 2
        return self._kept(self._engine.push(PcmBytes(payload)))

    def close(self) -> list[Snapshot]:
        """End of audio: the final snapshot (its settled horizon is the end of the audio)."""
        return self._kept(self._engine.close())

    def _kept(self, messages: list[Any]) -> list[Snapshot]:
        snapshots = [m for m in messages if isinstance(m, Snapshot)]
        if snapshots:
            self.last_snapshot = snapshots[-1]
        return snapshots

    def names(self, snapshot: Snapshot) -> dict[int, tuple[str, int]]:
        """Public speaker number -> (label, score 0-100) of the speakers matching a known voiceprint,
        by the identification policy of ``POST /v1/identify`` (one-to-one, its default threshold)."""
        if not self._labels:
            return {}
        embeddings = snapshot.speaker_embeddings()
        match, scores = match_speakers(embeddings, self._labels, self._prints, DEFAULT_EXCLUSIVE, DEFAULT_THRESHOLD)
        return {int(k): (label, scores[k][label]) for k, label in match.items()}

    def checkpoint(self, meta: Mapping[str, Any] | None = None) -> LiveCheckpoint:
        """The session's state between calls; ``meta`` replaces the caller's metadata when given."""
        if meta is not None:
            self.meta = dict(meta)
        return LiveCheckpoint(self.options, self._engine.checkpoint(), self.samples_received, self.frames_received,
                              self.last_snapshot, dict(self.meta))


def dump_checkpoint(checkpoint: LiveCheckpoint) -> bytes:
    """Serialise a checkpoint (pickle: only for files this process family writes and reads itself)."""
    return pickle.dumps(checkpoint, protocol=pickle.HIGHEST_PROTOCOL)


def load_checkpoint(data: bytes) -> LiveCheckpoint:
    """The checkpoint :func:`dump_checkpoint` wrote (``ValueError`` if it is not one)."""
    try:
        checkpoint = pickle.loads(data)
    except Exception as exc:  # a torn or foreign file: not a session to resume
        raise ValueError(f"not a live checkpoint: {type(exc).__name__}") from None
    if not isinstance(checkpoint, LiveCheckpoint):
        raise ValueError(f"not a live checkpoint: {type(checkpoint).__name__}")
    return checkpoint


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a reader (or a restart after kill -9) sees the old file or the
    new one, never a mix: write a temporary file in the same folder, then ``os.replace``."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
