"""Protocol v1.1 known speakers and the session options through real sockets: enrolled voices are named
live; ``merge_similarity`` and ``settle_s`` (extension fields) are honoured or refused with 1008.

Voiceprints are made as ``POST /v1/voiceprint`` makes them (the one-speaker diarization's centroid),
from parts of the recordings that are not streamed: ``LS1688`` from later in ``three_speakers``,
``LS2033`` from another recording (``two_speakers``). ``LS8629`` is not enrolled.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pytest

from diarflow.api import voiceprint as make_voiceprint
from diarflow.audio import decode_chunks
from diarflow.provisioning import ModelPaths
from diarflow.operators.models import Resources
from diarflow.servers.state import ServerSettings
from diarflow.servers.stream_client import file_frames, stream_frames
from diarflow.testing import ServerThread
from diarflow.testing.evaluation import DevItem, read_rttm
from diarflow.voiceprints import encode_voiceprint

pytestmark = pytest.mark.timeout(120)

STREAMED_S = 29.0  # three_speakers 0-29 s: all three speakers; LS1688's voiceprint comes from 29.2-35.9 s


@pytest.fixture(scope="module")
def server(model_paths: ModelPaths) -> Iterator[ServerThread]:
    server = ServerThread(ServerSettings(port=0, model_dir=model_paths.campplus.parent)).start()
    try:
        yield server
    finally:
        server.stop()


def voiceprint(item: DevItem, start_s: float, end_s: float, resources: Resources) -> str:
    samples = np.concatenate(list(decode_chunks(item.audio_path, 60 * 16000)))
    return make_voiceprint(samples[int(start_s * 16000):int(end_s * 16000)], resources=resources)


def reference_talk(item: DevItem, start_s: float, end_s: float) -> dict[str, float]:
    """Seconds each reference speaker talks inside ``[start_s, end_s)``."""
    talk: dict[str, float] = {}
    for turn in read_rttm(item.rttm_path)[item.uri]:
        overlap = min(end_s, turn.end_s) - max(start_s, turn.start_s)
        if overlap > 0:
            talk[turn.speaker] = talk.get(turn.speaker, 0.0) + overlap
    return talk


async def test_enrolled_speakers_carry_their_labels_live(server: ServerThread, speech_clips: dict[str, DevItem],
                                                        resources: Resources) -> None:
    three, two = speech_clips["three_speakers"], speech_clips["two_speakers"]
    speakers = [{"label": "Ann (LS1688)", "voiceprint": voiceprint(three, 29.23, 35.92, resources)},
                {"label": "Bob (LS2033)", "voiceprint": voiceprint(two, 4.86, 7.76, resources)}]
    expected = {"LS1688": "Ann (LS1688)", "LS2033": "Bob (LS2033)", "LS8629": None}
    frames = file_frames(three.audio_path)[: int(STREAMED_S / 0.2)]
    outcome = await stream_frames(server.url, frames, start={"speakers": speakers})
    assert outcome.final is not None and outcome.close_code == 1000
    data = outcome.final["data"]
    by_id = {s["speaker_id"]: s for s in data["speakers"]}
    talk_by_id: dict[int, dict[str, float]] = {}
    for segment in data["segments"]:
        talk = reference_talk(three, segment["start_time"], segment["end_time"])
        # a segment's label, if any, is that of someone speaking then (overlapped speech has two)
        assert segment.get("label") in {expected[who] for who in talk} | {None}, segment
        assert segment.get("label") == by_id[segment["speaker_id"]]["label"]
        totals = talk_by_id.setdefault(segment["speaker_id"], {})
        for who, seconds in talk.items():
            totals[who] = totals.get(who, 0.0) + seconds
    truth = {k: max(v, key=v.__getitem__) for k, v in talk_by_id.items()}  # speaker id -> who it mostly is
    assert sorted(truth.values()) == sorted(expected), f"live speakers {truth}"
    for speaker_id, who in truth.items():
        assert by_id[speaker_id]["label"] == expected[who], f"speaker {speaker_id} is {who}"
        assert (by_id[speaker_id]["score"] is None) == (expected[who] is None)
    assert any(s["score"] is not None and s["score"] >= 50 for s in data["speakers"])


BAD_STARTS: list[tuple[str, dict[str, Any], str]] = [
    ("not a list", {"speakers": {"label": "a"}}, "speakers must be a list"),
    ("bad voiceprint", {"speakers": [{"label": "a", "voiceprint": "dfv1:nope"}]}, "not a diarflow voiceprint"),
    ("empty label", {"speakers": [{"label": "", "voiceprint": "x"}]}, "label must be a string of 1 to 64"),
    ("merge_similarity out of range", {"merge_similarity": 1.5}, "merge_similarity must be a number in (-1, 1]"),
    ("merge_similarity not a number", {"merge_similarity": "high"}, "merge_similarity must be a number"),
    ("settle_s not a number", {"settle_s": "soon"}, "settle_s must be a number of seconds"),
    ("settle_s negative", {"settle_s": -1}, "settle_s must be at least 0 and below 120 s"),
    ("settle_s past the buffer", {"settle_s": 120}, "settle_s must be at least 0 and below 120 s"),
    ("settle_s huge", {"settle_s": 10 ** 400}, "settle_s must be a number of seconds"),
]


@pytest.mark.parametrize("name,fields,detail", BAD_STARTS, ids=[b[0] for b in BAD_STARTS])
async def test_invalid_known_speakers_or_sensitivity_are_1008(server: ServerThread, name: str,
                                                              fields: dict[str, Any], detail: str) -> None:
    outcome = await stream_frames(server.url, [b"\0\0" * 3200], start=fields)
    assert outcome.close_code == 1008 and outcome.error is not None
    assert detail in outcome.error["detail"] and outcome.error["detail"].startswith("start: ")


async def test_too_many_or_duplicate_known_speakers_are_1008(server: ServerThread, speech_clips: dict[str, DevItem],
                                                            resources: Resources) -> None:
    vp = encode_voiceprint(np.ones(192, np.float32))
    duplicate = [{"label": "a", "voiceprint": vp}, {"label": "a", "voiceprint": vp}]
    crowd = [{"label": f"p{i}", "voiceprint": vp} for i in range(51)]
    for speakers, detail in ((duplicate, "labels must be unique"), (crowd, "at most 50")):
        outcome = await stream_frames(server.url, [b"\0\0" * 3200], start={"speakers": speakers})
        assert outcome.close_code == 1008 and outcome.error is not None and detail in outcome.error["detail"]


async def test_merge_similarity_is_accepted(server: ServerThread) -> None:
    outcome = await stream_frames(server.url, [b"\0\0" * 3200], start={"merge_similarity": 0.4})
    assert outcome.close_code == 1000 and outcome.final is not None


async def test_settle_s_keeps_final_until_near_the_edge_and_nothing_before_it_moves(
        server: ServerThread, speech_clips: dict[str, DevItem]) -> None:
    frames = file_frames(speech_clips["three_speakers"].audio_path)
    settled = await stream_frames(server.url, frames, start={"settle_s": 5})
    default = await stream_frames(server.url, frames)
    assert settled.close_code == default.close_code == 1000 and settled.final is not None
    audio_s = len(b"".join(frames)) / 32000
    assert audio_s > 30  # long enough for a settled horizon to move while the 120 s buffer holds everything

    def lags(partials: list[dict[str, Any]]) -> list[float]:
        return [p["data"]["segments"][-1]["end_time"] - p["data"]["final_until"] for p in partials
                if p["data"]["segments"] and p["data"]["segments"][-1]["end_time"] > 15]

    assert max(p["data"]["final_until"] for p in default.partials) == 0.0  # the buffer's horizon: nothing left it
    assert float(np.median(lags(settled.partials))) <= 5 + 3, lags(settled.partials)
    messages = [*settled.partials, settled.final]
    for i, body in enumerate(messages):
        horizon = body["data"]["final_until"]
        frozen = [(s["start_time"], s["end_time"], s["speaker_id"]) for s in body["data"]["segments"]
                  if s["end_time"] <= horizon]
        for later in messages[i + 1:]:
            assert later["data"]["final_until"] >= horizon
            kept = {(s["start_time"], s["end_time"], s["speaker_id"]) for s in later["data"]["segments"]}
            assert set(frozen) <= kept, f"a segment before final_until={horizon} changed"
