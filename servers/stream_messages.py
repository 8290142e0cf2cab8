"""The messages of ``WS /diarize/stream``: parse and validate what clients send, render what the engine says.

Pure functions of their inputs (no sockets, no session state): the JSON shapes of protocol v1.1.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Mapping

from aiohttp import WSCloseCode

from diarflow.live import KnownSpeaker, LiveOptions, LiveSession
from diarflow.operators.constants import SAMPLE_RATE
from diarflow.operators.messages import Snapshot
from diarflow.operators.speaker_count import PYTHON_NAMES, SpeakerCount

__all__ = ["MAX_CLOSE_REASON_BYTES", "ProtocolError", "close_reason", "parse_text", "repeat_message",
           "snapshot_message", "start_options", "step_and_render"]

MAX_CLOSE_REASON_BYTES = 123  # RFC 6455 5.5: a control frame carries at most 125 bytes, 2 of them the code


class ProtocolError(Exception):
    """A client broke the contract: ``detail`` goes into the ``error`` message, ``code`` closes the socket."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _seconds(sample: int) -> float:
    return round(sample / SAMPLE_RATE, 2)


def _seconds_floor(sample: int) -> float:
    """Seconds rounded down to 10 ms: a horizon must never move past the sample it stands for."""
    return (sample // (SAMPLE_RATE // 100)) / 100


def snapshot_message(kind: str, session_id: str, snapshot: Snapshot, chunks: int, pipeline_ms: float,
                     names: Mapping[int, tuple[str, int]] | None = None) -> dict[str, Any]:
    """The ``partial_result`` / ``final_result`` body for one engine snapshot (a full snapshot, not a delta).

    Parameters
    ----------
    kind
        ``"partial_result"`` or ``"final_result"``.
    session_id
        32 lowercase hex digits.
    snapshot
        The engine's snapshot; its speakers are already numbered by first appearance.
    chunks
        Binary frames received up to and including the one that produced ``snapshot``.
    pipeline_ms
        Compute time of the push (or close) that produced ``snapshot``, in milliseconds.
    names
        Public speaker number -> (label, score 0-100) of the speakers matched to known voiceprints.
    """
    names = names or {}
    turns = sorted(snapshot.turns, key=lambda t: (t.start_sample, t.end_sample))
    segments = []
    for t in turns:
        segment: dict[str, Any] = {"start_time": _seconds(t.start_sample), "end_time": _seconds(t.end_sample),
                                   "speaker_id": int(t.speaker), "text": "",
                                   "confidence": int(round(100 * t.confidence))}
        if t.speaker in names:
            segment["label"] = names[t.speaker][0]
        segments.append(segment)
    speakers = [{"speaker_id": k, "label": names[k][0] if k in names else None,
                 "score": names[k][1] if k in names else None}
                for k in sorted({int(t.speaker) for t in turns})]
    return {"type": kind, "session_id": session_id,
            "data": {"segments": segments, "speakers": speakers,
                     "final_until": _seconds_floor(snapshot.settled_until_sample)},
            "stats": {"utterances": int(snapshot.utterances), "chunks": chunks,
                      "pipeline_ms": round(pipeline_ms, 1),
                      "relabelled_s": round(snapshot.relabelled_samples / SAMPLE_RATE, 2)}}


def step_and_render(session: LiveSession, step: Callable[[], list[Snapshot]], kind: str,
                     session_id: str) -> list[str]:
    """Run one engine step and serialise the snapshots it emitted (on a worker thread).

    ``pipeline_ms`` is the step's own compute time (no queueing). Rendering happens here too, so a long
    session's large snapshots never hold up the event loop that serves every other connection.
    """
    started = time.perf_counter()
    snapshots = step()
    ms = (time.perf_counter() - started) * 1000.0
    return [json.dumps(snapshot_message(kind, session_id, m, session.frames_received, ms, session.names(m)),
                       separators=(",", ":")) for m in snapshots]


def repeat_message(session: LiveSession, session_id: str) -> str:
    """The first message after a resume: the current snapshot again, as a ``partial_result``."""
    snapshot = session.last_snapshot
    if snapshot is None:
        body: dict[str, Any] = {
            "type": "partial_result", "session_id": session_id,
            "data": {"segments": [], "speakers": [], "final_until": 0.0},
            "stats": {"utterances": 0, "chunks": session.frames_received, "pipeline_ms": 0.0, "relabelled_s": 0.0}}
    else:
        body = snapshot_message("partial_result", session_id, snapshot, session.frames_received, 0.0,
                                session.names(snapshot))
        body["stats"]["relabelled_s"] = 0.0  # nothing moved since the client last saw it
    return json.dumps(body, separators=(",", ":"))


def _known_speakers(value: Any) -> tuple[KnownSpeaker, ...]:
    """``start.speakers``: a list of ``{"label", "voiceprint"}`` (validated by :class:`KnownSpeaker`)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError("speakers must be a list of {label, voiceprint} objects")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("label"), str) \
                or not isinstance(item.get("voiceprint"), str):
            raise ValueError(f"speakers[{i}] must be an object with string fields label and voiceprint")
        try:
            out.append(KnownSpeaker(item["label"], item["voiceprint"]))
        except ValueError as exc:
            raise ValueError(f"speakers[{i}]: {exc}") from None
    return tuple(out)


def _settle_samples(value: Any) -> int | None:
    """``start.settle_s`` (seconds, an extension field) as samples; its range is checked by :class:`LiveOptions`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1e9 < value < 1e9:  # NaN fails too
        raise ValueError(f"settle_s must be a number of seconds, got {value!r:.40}")
    return round(value * SAMPLE_RATE)


def start_options(body: Mapping[str, Any]) -> LiveOptions:
    """The engine options a ``start`` message asks for; ``ProtocolError`` 1008 when they are invalid."""
    try:
        count = SpeakerCount.parse(*(body.get(name) for name in PYTHON_NAMES))
        return LiveOptions(count.num, count.min, count.max, merge_similarity=body.get("merge_similarity"),
                           speakers=_known_speakers(body.get("speakers")),
                           settle_samples=_settle_samples(body.get("settle_s")))
    except ValueError as exc:
        raise ProtocolError(WSCloseCode.POLICY_VIOLATION, f"start: {exc}") from None


def close_reason(text: str) -> bytes:
    """``text`` as a close reason: UTF-8, cut at a character boundary within the 123-byte limit.

    Examples
    --------
    >>> close_reason("é" * 100) == ("é" * 61).encode()
    True
    """
    return text.encode("utf-8", "replace")[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore").encode()


def parse_text(data: str) -> dict[str, Any]:
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise ProtocolError(WSCloseCode.POLICY_VIOLATION, "text frame is not valid JSON (or nested too deeply)") from None
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise ProtocolError(WSCloseCode.POLICY_VIOLATION, 'expected a JSON object with a string "type"')
    return body
