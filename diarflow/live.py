"""Live sessions for the v1.1 protocol: the streaming driver plus what a session must keep to be resumed.

A :class:`LiveSession` owns one :class:`~diarflow.dataflow.StreamingSession` and the facts a client
relies on across a dropped connection or a server restart: how much audio it holds, how many frames
came, the last snapshot, and the people it was told to recognise. :meth:`LiveSession.checkpoint`
captures all of it between pushes; a session built from that checkpoint continues exactly where the
original stood (fresh start and resume are one path). Protocols and files are the caller's business;
:func:`dump_checkpoint` / :func:`write_atomic` only make persisting it cheap and crash-safe.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from diarflow.dataflow import Checkpoint, Graph, StreamingSession
from diarflow.operators.constants import SAMPLE_RATE
from diarflow.operators.merge_similarity import check_merge_similarity
from diarflow.operators.messages import PcmBytes, Snapshot, SpeakerTurn
from diarflow.operators.pipeline import PipelineConfig, build_graph
from diarflow.operators.speaker_count import SpeakerCount
from diarflow.slot_file import SlotFile, write_atomic
from diarflow.voiceprints import DEFAULT_EXCLUSIVE, DEFAULT_THRESHOLD, decode_voiceprint, match_speakers

__all__ = ["CheckpointFile", "KnownSpeaker", "LiveCheckpoint", "LiveOptions", "LiveSession", "MAX_KNOWN_SPEAKERS",
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
        Clustering sensitivity, a cosine in (-1, 1]: two live speakers whose voices are more similar
        than this become one (lower merges more). ``None``: the engine's default. Same meaning and
        name as ``diarflow diarize --merge-similarity`` (the clusterer's ``merge_similarity``).
    speakers
        At most 50 known people, labels unique.
    settle_samples
        ``None`` (default): labels may change until speech leaves the 120 s buffer (best final result).
        Otherwise the output settles this far behind the end of the latest utterance
        (:class:`~diarflow.operators.snapshots.SnapshotEmitterConfig`): ``final_until`` trails the live
        edge by about that much and far less speech changes speaker, for a less accurate final result
        (the trade-off is measured in the README). ``0 <= settle_samples < 120 s``.
    """

    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    merge_similarity: float | None = None
    speakers: tuple[KnownSpeaker, ...] = ()
    settle_samples: int | None = None

    def __post_init__(self) -> None:
        if self.merge_similarity is not None:
            check_merge_similarity(self.merge_similarity)
        if len(self.speakers) > MAX_KNOWN_SPEAKERS:
            raise ValueError(f"speakers: at most {MAX_KNOWN_SPEAKERS} known speakers, got {len(self.speakers)}")
        labels = [s.label for s in self.speakers]
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(f"speakers: labels must be unique, {duplicates[0]!r} appears more than once")
        retention = PipelineConfig().for_mode("stream").clustering.retention_samples
        if self.settle_samples is not None and (isinstance(self.settle_samples, bool)
                                                or not isinstance(self.settle_samples, int)
                                                or not 0 <= self.settle_samples < retention):
            raise ValueError(f"settle_s must be at least 0 and below {retention // SAMPLE_RATE} s (the rolling "
                             f"buffer), got {self.settle_samples / SAMPLE_RATE:g} s")
        self.graph()  # validates

    def graph(self) -> Graph:
        """The frozen streaming graph these options describe (``ValueError`` if they are invalid)."""
        return live_graph(self.num_speakers, self.min_speakers, self.max_speakers, self.merge_similarity,
                          self.settle_samples)


@lru_cache(maxsize=32)  # keyed by what clients send: bounded
def live_graph(num_speakers: int | None = None, min_speakers: int | None = None, max_speakers: int | None = None,
               merge_similarity: float | None = None, settle_samples: int | None = None) -> Graph:
    """The frozen streaming graph for these options (``ValueError`` if they are invalid)."""
    cfg = PipelineConfig().for_mode("stream").with_speakers(SpeakerCount(num_speakers, min_speakers, max_speakers))
    if merge_similarity is not None:
        cfg = replace(cfg, clustering=replace(cfg.clustering, merge_similarity=float(merge_similarity)))
    if settle_samples is not None:
        cfg = replace(cfg, snapshots=replace(cfg.snapshots, settle_samples=settle_samples))
    return build_graph(cfg)


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

    @property
    def resumable(self) -> bool:
        """Whether this engine can continue from it: its graph is the one its options describe now (a
        checkpoint written by an engine version whose graph differs cannot be restored)."""
        return self.engine.graph_digest == self.options.graph().digest


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
    graph
        Run this graph instead of the one ``options`` describe (tests and benchmarks; a resumed session
        needs the same one).

    Examples
    --------
    >>> session = LiveSession(LiveOptions(num_speakers=2), resources)   # doctest: +SKIP
    >>> for snapshot in session.push(pcm_s16le_bytes): show(snapshot)  # doctest: +SKIP
    >>> saved = dump_checkpoint(session.checkpoint())                   # doctest: +SKIP
    """

    def __init__(self, options: LiveOptions, resources: Any, checkpoint: LiveCheckpoint | None = None,
                 graph: Graph | None = None) -> None:
        self.options = checkpoint.options if checkpoint is not None else options
        o = self.options
        graph = graph or o.graph()
        self._engine = StreamingSession(graph, resources, checkpoint.engine if checkpoint is not None else None)
        self.samples_received = checkpoint.samples_received if checkpoint is not None else 0
        self.frames_received = checkpoint.frames_received if checkpoint is not None else 0
        self.last_snapshot: Snapshot | None = checkpoint.last_snapshot if checkpoint is not None else None
        self.meta: Mapping[str, Any] = dict(checkpoint.meta) if checkpoint is not None else {}
        self._closed = False
        labels = [s.label for s in o.speakers]
        self._labels = labels
        self._prints = (np.stack([s.vector for s in o.speakers]) if o.speakers
                        else np.zeros((0, 192), np.float32))  # (known, 192)

    @property
    def closed(self) -> bool:
        """End of audio was signalled (:meth:`close`): the session cannot take more."""
        return self._closed

    def push(self, payload: bytes) -> list[Snapshot]:
        """Count one received frame and push its audio (s16le; may be empty, e.g. past a length limit)."""
        self.frames_received += 1
        if not payload:
            return []
        self.samples_received += len(payload) // 2
        return self._kept(self._engine.push(PcmBytes(payload)))

    def close(self) -> list[Snapshot]:
        """End of audio: the final snapshot, settled up to the end of the audio received."""
        self._closed = True
        snapshots = [s if not s.final else replace(s, settled_until_sample=max(s.settled_until_sample,
                                                                               self.samples_received))
                     for s in self._kept(self._engine.close())]
        return self._kept(snapshots)

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


_TURN_ROW = np.dtype([("start", "<i8"), ("end", "<i8"), ("speaker", "<i8"), ("confidence", "<f8"),
                      ("overlapping", "<i8")])
_MIN_JOURNALED = 16  # shorter turn sequences are cheaper to pickle than to refer to


class CheckpointFile:
    """A live session persisted in two files, so that saving it costs the same at minute 1 and hour 2.

    ``<name>.ckpt`` holds the checkpoint, a :class:`~diarflow.slot_file.SlotFile`: every save overwrites
    the older of its two slots in place, so a kill at any moment leaves the previous checkpoint or the
    new one readable (and a save costs no file replacement; durability in the slot file's docstring).
    It stays bounded because the settled turns (append-only, the one part that grows with the
    session) go to ``<name>.turns``, 40 bytes per turn, appended once each. The checkpoint refers to
    them by count, and to a selection of them (the clusterer's own turns, which the settled turns
    interleave with overlaps) by their positions, 4 bytes each. A save appends the new turns before it
    writes the checkpoint, so a kill between the two leaves extra rows that the old checkpoint does
    not refer to (and :meth:`load` cuts them off).

    Parameters
    ----------
    path
        The ``.ckpt`` file; its folder must exist.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.turns_path = path.with_suffix(".turns")
        self._slots = SlotFile(path)
        self._journal: list[SpeakerTurn] = []  # the settled turns already in the journal, same objects
        self._positions: dict[int, int] = {}  # id() of each of them -> its row (they are alive: ids are unique)

    def save(self, session: LiveSession, meta: Mapping[str, Any] | None = None) -> int:
        """Persist ``session`` (between its calls); returns the checkpoint's size in bytes."""
        checkpoint = session.checkpoint(meta)
        self._extend_journal(checkpoint.last_snapshot)
        buffer = io.BytesIO()
        pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
        pickler.persistent_id = self._reference  # type: ignore[method-assign]
        pickler.dump(checkpoint)
        data = buffer.getvalue()
        self._slots.write(data)
        return len(data)

    def _extend_journal(self, snapshot: Snapshot | None) -> None:
        if snapshot is None:
            return
        settled, count, journal = snapshot.frozen, snapshot.frozen_count, self._journal
        if not journal or len(journal) > count or settled[len(journal) - 1] is not journal[-1]:
            journal.clear()  # none yet, or not an extension (a re-labelled history): start over
            self._positions.clear()
        new = [settled[i] for i in range(len(journal), count)]
        if not new:
            return
        if not journal:
            self.turns_path.write_bytes(b"")
        rows = np.array([(t.start_sample, t.end_sample, t.speaker, t.confidence, int(t.overlapping)) for t in new],
                        _TURN_ROW)
        with open(self.turns_path, "ab") as f:
            f.write(rows.tobytes())
        self._positions.update((id(turn), row) for row, turn in enumerate(new, len(journal)))
        journal.extend(new)

    def _reference(self, obj: Any) -> Any:
        """Pickle hook: a tuple or list that is a prefix of the journal is stored as its length, one made
        of journaled turns only (the clusterer's, without the overlaps) as their rows (int32 bytes)."""
        if type(obj) not in (tuple, list) or len(obj) < _MIN_JOURNALED or type(obj[0]) is not SpeakerTurn:
            return None
        kind, n, journal = "tuple" if type(obj) is tuple else "list", len(obj), self._journal
        if n <= len(journal) and obj[0] is journal[0] and obj[n - 1] is journal[n - 1] \
                and obj[n // 2] is journal[n // 2]:
            return (kind, n)
        positions = self._positions
        if id(obj[0]) not in positions:
            return None  # e.g. live turns: pickled as they are
        rows = [positions.get(id(turn), -1) for turn in obj]
        if min(rows) < 0:
            return None
        return (kind, np.array(rows, np.int32).tobytes())

    def load(self) -> LiveCheckpoint:
        """The saved checkpoint, its settled turns read back from the journal.

        Raises
        ------
        FileNotFoundError
            Nothing saved.
        ValueError
            The files are not a checkpoint (torn, foreign, or a journal shorter than it refers to).
        """
        data = self._slots.read()  # FileNotFoundError, or ValueError when neither slot is complete
        try:
            raw = self.turns_path.read_bytes()
        except FileNotFoundError:
            raw = b""
        rows = np.frombuffer(raw[: len(raw) // _TURN_ROW.itemsize * _TURN_ROW.itemsize], _TURN_ROW)
        turns = [SpeakerTurn(int(r["start"]), int(r["end"]), int(r["speaker"]), float(r["confidence"]),
                             overlapping=bool(r["overlapping"])) for r in rows]
        used = [0]

        def resolve(pid: Any) -> Any:
            kind, ref = pid
            if isinstance(ref, bytes):  # a selection, by rows
                rows = np.frombuffer(ref, np.int32).tolist()
                picked = [turns[i] for i in rows if 0 <= i < len(turns)]
                if kind not in ("tuple", "list") or len(picked) < len(rows):
                    raise pickle.UnpicklingError(f"checkpoint refers to settled turns up to row {max(rows)}, "
                                                 f"the journal has {len(turns)}")
                used[0] = max(used[0], max(rows, default=-1) + 1)
                return tuple(picked) if kind == "tuple" else picked
            if not isinstance(ref, int) or ref > len(turns) or kind not in ("tuple", "list"):
                raise pickle.UnpicklingError(f"checkpoint refers to {ref} settled turns, the journal has {len(turns)}")
            used[0] = max(used[0], ref)
            return tuple(turns[:ref]) if kind == "tuple" else list(turns[:ref])

        unpickler = pickle.Unpickler(io.BytesIO(data))
        unpickler.persistent_load = resolve  # type: ignore[method-assign]
        try:
            checkpoint = unpickler.load()
        except Exception as exc:  # a torn or foreign file: not a session to resume
            raise ValueError(f"not a live checkpoint: {type(exc).__name__}: {exc}") from None
        if not isinstance(checkpoint, LiveCheckpoint):
            raise ValueError(f"not a live checkpoint: {type(checkpoint).__name__}")
        self._journal = turns[: used[0]]  # rows past it belong to saves this checkpoint never saw
        self._positions = {id(turn): row for row, turn in enumerate(self._journal)}
        if len(rows) > used[0]:
            with open(self.turns_path, "r+b") as f:
                f.truncate(used[0] * _TURN_ROW.itemsize)
        return checkpoint

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.turns_path.unlink(missing_ok=True)
