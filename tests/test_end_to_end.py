"""The whole engine on real speech: API, CLI, formats, drivers agreeing, chunking invariance, isolation."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import diarflow
from diarflow.api import DiarizationResult
from diarflow.audio import to_s16le
from diarflow.audio import AudioDecodeError, decode_chunks
from diarflow.dataflow import StreamingSession
from diarflow.testing.evaluation import DevItem, Turn, diarization_error_rate, read_rttm
from diarflow.operators.messages import PcmBytes, Snapshot
from diarflow.operators.models import Resources
from diarflow.operators.pipeline import build_graph


def _der(result: DiarizationResult, item: DevItem, collar_s: float = 0.25) -> float:
    reference = read_rttm(item.rttm_path)[item.uri]
    hypothesis = [Turn(s.start_s, s.end_s, s.speaker) for s in result.segments]
    return diarization_error_rate(reference, hypothesis, item.duration_s, collar_s)["der"]


@pytest.fixture(scope="module")
def three_speakers(speech_clips: dict[str, DevItem]) -> DevItem:
    return speech_clips["three_speakers"]


@pytest.fixture(scope="module")
def two_speakers(speech_clips: dict[str, DevItem]) -> DevItem:
    return speech_clips["two_speakers"]


@pytest.fixture(scope="module")
def clip(two_speakers: DevItem) -> np.ndarray:
    """40 s of a two-speaker conversation, float32."""
    audio, _ = sf.read(two_speakers.audio_path, dtype="float32", frames=16000 * 40)
    return audio


@pytest.mark.parametrize("mode", ["offline", "stream"])
def test_real_speech_file_end_to_end(three_speakers: DevItem, resources: Resources, mode: str) -> None:
    result = diarflow.diarize(three_speakers.audio_path, mode=mode, resources=resources)  # type: ignore[arg-type]
    assert result.uri == "three_speakers"
    assert len(result.speakers) == 3
    assert _der(result, three_speakers) < 0.10  # loose: tight numbers live in tools/bench_diarization.py
    starts = [s.start_s for s in result.segments]
    assert starts == sorted(starts)
    assert result.segments[0].speaker == "SPEAKER_00"


def test_offline_recording_longer_than_the_buffer(speech_clips: dict[str, DevItem], resources: Resources) -> None:
    """Three clips back to back (169 s, ten readers, one of them in two clips): longer than the 120 s
    buffer, so the offline clusterer's sequential pass and whole-recording refinement decide the
    speakers. Every reader with at least 2 s of speech is found (the tenth speaks 1.25 s), once."""
    audio, reference, offset_s = [], [], 0.0
    for name in ("two_speakers", "three_speakers", "six_speakers"):
        item = speech_clips[name]
        samples, _ = sf.read(item.audio_path, dtype="float32")
        reference += [Turn(t.start_s + offset_s, t.end_s + offset_s, t.speaker)
                      for t in read_rttm(item.rttm_path)[name]]
        audio += [samples, np.zeros(16000, np.float32)]
        offset_s += len(samples) / 16000 + 1.0
    talk_s: dict[str, float] = {}
    for turn in reference:
        talk_s[turn.speaker] = talk_s.get(turn.speaker, 0.0) + turn.end_s - turn.start_s
    result = diarflow.diarize(np.concatenate(audio), resources=resources)
    assert len(result.speakers) == sum(s >= 2.0 for s in talk_s.values()) == 9
    hypothesis = [Turn(s.start_s, s.end_s, s.speaker) for s in result.segments]
    assert diarization_error_rate(reference, hypothesis, offset_s, 0.25)["der"] < 0.06  # measured 2.8 %


def test_num_speakers_is_honoured(two_speakers: DevItem, resources: Resources) -> None:
    """Offline, a fixed count is exactly that many speakers, even one more than the audio holds."""
    for count in (2, 3):
        result = diarflow.diarize(two_speakers.audio_path, num_speakers=count, resources=resources)
        assert len(result.speakers) == count
    one = diarflow.diarize(two_speakers.audio_path, max_speakers=1, resources=resources)
    assert one.speakers == ["SPEAKER_00"]


def test_outputs_rttm_json_arrow(clip: np.ndarray, resources: Resources) -> None:
    result = diarflow.diarize(clip, resources=resources, uri="clip")
    lines = result.to_rttm().splitlines()
    assert len(lines) == len(result.segments) > 0
    assert all(line.startswith("SPEAKER clip 1 ") and line.endswith("<NA> <NA>") for line in lines)
    body = result.to_json()
    assert [d["speaker"] for d in body["diarization"]] == [s.speaker for s in result.segments]
    table = result.to_arrow()
    assert table.column_names == ["uri", "start_s", "end_s", "speaker"] and table.num_rows == len(lines)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunk_bytes=st.lists(st.integers(1, 12_000).map(lambda n: 2 * n), min_size=1, max_size=20))
def test_random_chunkings_give_the_same_streaming_result(
    clip: np.ndarray, resources: Resources, chunk_bytes: list[int]
) -> None:
    payload = to_s16le(clip[: 16000 * 20])
    reference = _stream(payload, [6400], resources)
    assert _stream(payload, chunk_bytes, resources) == reference


def _stream(payload: bytes, sizes: list[int], resources: Resources) -> tuple[tuple[int, int, int], ...]:
    session = StreamingSession(build_graph(), resources)
    position, k = 0, 0
    while position < len(payload):
        size = sizes[k % len(sizes)]
        session.push(PcmBytes(payload[position:position + size]))
        position, k = position + size, k + 1
    final = [m for m in session.close() if isinstance(m, Snapshot)][-1]
    return tuple((t.start_sample, t.end_sample, t.speaker) for t in final.turns)


def test_resumed_session_equals_uninterrupted(clip: np.ndarray, resources: Resources) -> None:
    payload = to_s16le(clip[: 16000 * 30])
    chunks = [payload[i:i + 6400] for i in range(0, len(payload), 6400)]
    graph = build_graph()
    straight = StreamingSession(graph, resources)
    expected = [m.turns for c in chunks for m in straight.push(PcmBytes(c)) if isinstance(m, Snapshot)]
    expected += [m.turns for m in straight.close() if isinstance(m, Snapshot)]
    first = StreamingSession(graph, resources)
    got = [m.turns for c in chunks[:70] for m in first.push(PcmBytes(c)) if isinstance(m, Snapshot)]
    second = StreamingSession(graph, resources, first.checkpoint())
    got += [m.turns for c in chunks[70:] for m in second.push(PcmBytes(c)) if isinstance(m, Snapshot)]
    got += [m.turns for m in second.close() if isinstance(m, Snapshot)]
    assert got == expected and len(expected) > 3


def test_concurrent_sessions_stay_isolated(clip: np.ndarray, three_speakers: DevItem, resources: Resources) -> None:
    other, _ = sf.read(three_speakers.audio_path, dtype="float32", frames=16000 * 30)
    inputs = {"a": to_s16le(clip[: 16000 * 30]), "b": to_s16le(other)}
    alone = {k: _stream(v, [6400], resources) for k, v in inputs.items()}
    together: dict[str, tuple[tuple[int, int, int], ...]] = {}
    threads = [threading.Thread(target=lambda k=k: together.__setitem__(k, _stream(inputs[k], [6400], resources)))
               for k in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone and alone["a"] != alone["b"]


def _encode(source: np.ndarray, path: Path, codec: str, rate: int, layout: str, video: bool = False) -> Path:
    with av.open(str(path), "w") as container:
        if video:
            v = container.add_stream("mpeg4", rate=10)
            v.width, v.height, v.pix_fmt = 64, 64, "yuv420p"
        stream = container.add_stream(codec, rate=rate)
        stream.layout = layout
        frame_samples = 1024
        resampled = np.interp(np.arange(0, len(source), 16000 / rate), np.arange(len(source)), source)
        channels = 2 if layout == "stereo" else 1
        pts = 0
        for lo in range(0, len(resampled), frame_samples):
            piece = resampled[lo:lo + frame_samples].astype(np.float32)
            packed = np.repeat(piece, channels)[None]  # (1, samples * channels), interleaved
            frame = av.AudioFrame.from_ndarray(packed, format="flt", layout=layout)
            frame.sample_rate, frame.pts = rate, pts  # the encoder converts to its own sample format
            pts += len(piece)
            for packet in stream.encode(frame):
                container.mux(packet)
        if video:
            img = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            for packet in v.encode(img):
                container.mux(packet)
            for packet in v.encode():
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("name, codec, rate, layout, video", [
    ("clip.mp3", "libmp3lame", 44100, "stereo", False),
    ("clip.ogg", "libopus", 48000, "mono", False),
    ("clip.m4a", "aac", 22050, "stereo", False),
    ("clip.mp4", "aac", 44100, "stereo", True),
    ("clip.wav", "pcm_s16le", 8000, "mono", False),
])
def test_formats_decode_to_16k_mono(clip: np.ndarray, tmp_path: Path, name: str, codec: str, rate: int,
                                    layout: str, video: bool) -> None:
    source = clip[: 16000 * 5]
    path = _encode(source, tmp_path / name, codec, rate, layout, video)
    decoded = np.concatenate(list(decode_chunks(path, chunk_samples=16000)))
    assert abs(len(decoded) - len(source)) < 16000 * 0.2
    assert decoded.dtype == np.float32
    n = min(len(decoded), len(source))
    energy_in, energy_out = float(np.mean(source[:n] ** 2)), float(np.mean(decoded[:n] ** 2))
    assert 0.5 < energy_out / energy_in < 2.0


def test_unreadable_input_names_the_file(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.wav"
    bogus.write_text("this is not audio")
    with pytest.raises(AudioDecodeError, match="notes.wav"):
        list(decode_chunks(bogus))


def test_cli_writes_all_formats_and_reports_bad_files(speech_clips: dict[str, DevItem], tmp_path: Path,
                                                      model_paths: object) -> None:
    six = speech_clips["six_speakers"]
    bogus = tmp_path / "broken.mp3"
    bogus.write_bytes(b"\x00" * 100)
    proc = subprocess.run([sys.executable, "-m", "diarflow.cli", "diarize", str(six.audio_path), str(bogus),
                           "--out", str(tmp_path / "out"), "--format", "rttm,json,parquet", "--mode", "stream"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "broken.mp3" in proc.stderr and "Errno" not in proc.stderr
    rttm = (tmp_path / "out" / "six_speakers.rttm").read_text().splitlines()
    assert rttm and all(line.split()[1] == "six_speakers" for line in rttm)
    assert json.loads((tmp_path / "out" / "six_speakers.json").read_text())["diarization"]
    assert pq.read_table(tmp_path / "out" / "six_speakers.parquet").num_rows == len(rttm)
    bad = subprocess.run([sys.executable, "-m", "diarflow.cli", "diarize", "x.wav", "--out", str(tmp_path),
                          "--num-speakers", "2", "--max-speakers", "3"], capture_output=True, text=True)
    assert bad.returncode == 2 and "cannot be combined" in bad.stderr
