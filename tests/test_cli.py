"""The ``diarflow`` command as a person meets it: messages of one line naming the problem and the fix."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from diarflow.audio import AudioDecodeError, decode_chunks
from diarflow.cli import build_parser, main
from diarflow.testing.evaluation import DevItem


def _diarflow(*args: str, cwd: Path | None = None, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "diarflow.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, cwd=cwd)


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{stderr}"
    assert "Traceback" not in stderr and "usage:" not in stderr
    return lines[0]


def test_inputs_with_the_same_name_are_refused_before_any_work(tmp_path: Path) -> None:
    for name in ("meeting.wav", "meeting.mp3", "other.flac"):
        (tmp_path / name).write_bytes(b"not looked at")
    out = tmp_path / "results"
    proc = _diarflow("diarize", "meeting.wav", "other.flac", "meeting.mp3", "--out", str(out), cwd=tmp_path)
    line = _one_line(proc.stderr)
    assert proc.returncode == 2
    assert "meeting.wav" in line and "meeting.mp3" in line and "rename" in line
    assert not out.exists(), "nothing may be written when the run is refused"


def test_names_differing_only_in_case_collide_too(tmp_path: Path) -> None:
    proc = _diarflow("diarize", "Talk.wav", "talk.mp3", "--out", str(tmp_path))
    assert proc.returncode == 2 and "Talk.wav and talk.mp3" in _one_line(proc.stderr)


@pytest.mark.parametrize("value, shown", [("two", "'two'"), ("0", "0"), ("-3", "-3"), ("2.5", "'2.5'")])
def test_bad_speaker_counts_are_named_in_plain_words(value: str, shown: str) -> None:
    proc = _diarflow("diarize", "x.wav", "--num-speakers", value)
    line = _one_line(proc.stderr)
    assert proc.returncode == 2
    assert "--num-speakers" in line and "whole number of speakers" in line and shown in line
    assert "_speaker_count" not in line and "invalid" not in line


def test_bad_merge_similarity_is_one_line() -> None:
    proc = _diarflow("diarize", "x.wav", "--merge-similarity", "1.5")
    line = _one_line(proc.stderr)
    assert proc.returncode == 2 and "--merge-similarity" in line and "between -1 and 1" in line


def test_merge_similarity_is_the_clustering_sensitivity(speech_clips: dict[str, DevItem], tmp_path: Path) -> None:
    """The default keeps the two voices of the clip apart; a low enough value merges every speaker."""
    clip = str(speech_clips["two_speakers"].audio_path)
    counts = {}
    for value in ("0.7", "-0.9"):
        out = tmp_path / value
        proc = _diarflow("diarize", clip, "--out", str(out), "--merge-similarity", value)
        assert proc.returncode == 0, proc.stderr
        rttm = (out / "two_speakers.rttm").read_text().splitlines()
        counts[value] = len({line.split()[7] for line in rttm})
    assert counts == {"0.7": 2, "-0.9": 1}


def test_conflicting_speaker_options_are_one_line() -> None:
    proc = _diarflow("diarize", "x.wav", "--num-speakers", "2", "--max-speakers", "3")
    assert proc.returncode == 2 and "cannot be combined" in _one_line(proc.stderr)


def test_busy_port_is_one_line_naming_the_port_and_the_fix() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _diarflow("serve", "--host", "127.0.0.1", "--port", str(port), timeout_s=60)
    line = _one_line(proc.stderr)
    assert proc.returncode == 1
    assert f"port {port}" in line and "already in use" in line and "--port" in line


def test_decoding_errors_name_the_file_and_a_plain_reason(tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(AudioDecodeError) as caught:
        list(decode_chunks(broken))
    message = str(caught.value)
    assert message.startswith(f"{broken}: ") and "Errno" not in message and message.count(str(broken)) == 1
    with pytest.raises(AudioDecodeError, match=r"missing\.wav: no such file$"):
        list(decode_chunks(tmp_path / "missing.wav"))
    with pytest.raises(AudioDecodeError, match="is a folder"):
        list(decode_chunks(tmp_path))


def test_missing_input_is_one_line_and_the_run_goes_on(speech_clips: dict[str, DevItem], tmp_path: Path,
                                                       model_paths: object) -> None:
    """One speaker found reads "1 speaker"; results go to the current folder when --out is not given."""
    audio, rate = sf.read(speech_clips["two_speakers"].audio_path, dtype="int16", frames=16000 * 8)
    sf.write(tmp_path / "short.wav", audio, rate, subtype="PCM_16")
    proc = _diarflow("diarize", "nothere.wav", "short.wav", "--num-speakers", "1", cwd=tmp_path, timeout_s=300)
    assert proc.returncode == 1
    assert [line for line in proc.stderr.splitlines() if line.strip()] == ["diarflow: nothere.wav: no such file"]
    assert proc.stdout.startswith("short.wav: 1 speaker, ") and " 1 speakers" not in proc.stdout
    assert (tmp_path / "short.rttm").read_text().startswith("SPEAKER short 1 ")


def test_every_option_has_help() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {action.dest}" for name, sub in subparsers.choices.items() for action in sub._actions
               if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()]
    assert not missing, f"options without help: {missing}"
    diarize_help = subparsers.choices["diarize"].format_help()
    assert "--out DIR" in diarize_help and "current folder" in diarize_help


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["diarize", "--help"])
    assert done.value.code == 0 and "--num-speakers N" in capsys.readouterr().out
