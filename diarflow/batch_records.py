"""What a batch hands around: its options, one input, one file's outcome, and their Arrow schemas.

Every engine ships outcomes as an :data:`OUTCOME_SCHEMA` table (:func:`outcomes_to_table`), and the
output folder's two datasets have the explicit schemas :data:`SEGMENTS_SCHEMA` and :data:`FILES_SCHEMA`
(explicit, so that all-null columns keep their type).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import pyarrow as pa

from diarflow.operators.merge_similarity import check_merge_similarity
from diarflow.operators.speaker_count import SpeakerCount

__all__ = ["FILES_SCHEMA", "FORMATS", "OUTCOME_SCHEMA", "SEGMENTS_SCHEMA", "WORKER_DIED", "BatchItem",
           "BatchOptions", "FileOutcome", "outcomes_from_table", "outcomes_to_table"]

FORMATS = ("rttm", "json", "parquet")
WORKER_DIED = "the worker processing this file died (tried twice)"

SEGMENTS_SCHEMA = pa.schema([
    pa.field("uri", pa.string(), nullable=False),
    pa.field("start_s", pa.float64(), nullable=False),
    pa.field("end_s", pa.float64(), nullable=False),
    pa.field("speaker", pa.string(), nullable=False),
    pa.field("confidence", pa.uint8()),  # the turn's 0-100 score for its own speaker (offline mode)
])
FILES_SCHEMA = pa.schema([
    pa.field("uri", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # "ok" or "error"
    pa.field("error", pa.string()),
    pa.field("duration_s", pa.float64()),
    pa.field("speakers", pa.int32()),
    pa.field("seconds_compute", pa.float64(), nullable=False),
])
# what a worker hands back per file (engines ship this table; explicit so all-null columns keep their type)
OUTCOME_SCHEMA = pa.schema(list(FILES_SCHEMA) + [
    pa.field("rttm", pa.string()),
    pa.field("json", pa.string()),
    pa.field("seg_start_s", pa.list_(pa.float64())),
    pa.field("seg_end_s", pa.list_(pa.float64())),
    pa.field("seg_speaker", pa.list_(pa.string())),
    pa.field("seg_confidence", pa.list_(pa.uint8())),
])


@dataclass(frozen=True)
class BatchOptions:
    """What to compute for every file (small and picklable: it is every worker's constructor argument).

    Parameters
    ----------
    num_speakers
        Exact number of speakers per file, if known (excludes ``min_speakers`` / ``max_speakers``).
    min_speakers, max_speakers
        Bounds on each file's estimated number of speakers (>= 1, min <= max).
    formats
        Outputs: any of ``rttm``, ``json`` (per file) and ``parquet`` (the segments dataset). The
        ``files`` table is always written: it is the resume record.
    model_dir
        Model cache on the workers; ``None``: their ``$DIARFLOW_MODEL_DIR`` or ``~/.cache/diarflow/models``.
    url_timeout_s
        Socket timeout for downloading an input URL, seconds (> 0).
    merge_similarity
        The clustering's sensitivity (``OnlineClustererConfig.merge_similarity``); ``None``: its default.
    """

    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    formats: tuple[str, ...] = FORMATS
    model_dir: str | None = None
    url_timeout_s: float = 60.0
    merge_similarity: float | None = None

    def __post_init__(self) -> None:
        SpeakerCount(self.num_speakers, self.min_speakers, self.max_speakers)  # SpeakerCountError if invalid
        if self.merge_similarity is not None:
            check_merge_similarity(self.merge_similarity)
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown or not self.formats:
            raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {self.formats}; "
                             "hint: --format rttm,json,parquet")
        if self.url_timeout_s <= 0:
            raise ValueError(f"url_timeout_s must be > 0, got {self.url_timeout_s}")


@dataclass(frozen=True)
class BatchItem:
    """One input to diarize: ``uri`` names its outputs, ``path`` is a local path or an http(s) URL."""

    uri: str
    path: str


@dataclass(frozen=True)
class FileOutcome:
    """One file's row of the ``files`` table, plus its per-file outputs when it succeeded.

    ``segments`` holds ``(start_s, end_s, speaker, confidence)`` tuples, sorted by start.
    """

    uri: str
    path: str
    status: Literal["ok", "error"]
    error: str | None = None
    duration_s: float | None = None
    speakers: int | None = None
    seconds_compute: float = 0.0
    rttm: str | None = None
    json: str | None = None
    segments: tuple[tuple[float, float, str, int | None], ...] = ()

    @classmethod
    def failed(cls, item: BatchItem, error: str, seconds_compute: float = 0.0) -> FileOutcome:
        return cls(item.uri, item.path, "error", error, seconds_compute=seconds_compute)


def outcomes_to_table(outcomes: Sequence[FileOutcome]) -> pa.Table:
    """Outcomes as an :data:`OUTCOME_SCHEMA` table (what an engine's workers hand back)."""
    return pa.table({
        "uri": [o.uri for o in outcomes], "path": [o.path for o in outcomes],
        "status": [o.status for o in outcomes], "error": [o.error for o in outcomes],
        "duration_s": [o.duration_s for o in outcomes], "speakers": [o.speakers for o in outcomes],
        "seconds_compute": [o.seconds_compute for o in outcomes],
        "rttm": [o.rttm for o in outcomes], "json": [o.json for o in outcomes],
        "seg_start_s": [[s[0] for s in o.segments] for o in outcomes],
        "seg_end_s": [[s[1] for s in o.segments] for o in outcomes],
        "seg_speaker": [[s[2] for s in o.segments] for o in outcomes],
        "seg_confidence": [[s[3] for s in o.segments] for o in outcomes],
    }, schema=OUTCOME_SCHEMA)


def outcomes_from_table(table: pa.Table) -> list[FileOutcome]:
    """Inverse of :func:`outcomes_to_table`."""
    out = []
    for row in table.to_pylist():
        segments = tuple(zip(row["seg_start_s"] or [], row["seg_end_s"] or [], row["seg_speaker"] or [],
                             row["seg_confidence"] or []))
        out.append(FileOutcome(row["uri"], row["path"], row["status"], row["error"], row["duration_s"],
                               row["speakers"], row["seconds_compute"], row["rttm"], row["json"], segments))
    return out
