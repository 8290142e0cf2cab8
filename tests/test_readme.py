"""Every code block of the README runs as written, so the README cannot rot.

```python blocks are executed in-process, each in a fresh namespace, in a folder holding the files the
examples name (``meeting.m4a``, ``call.wav``, ``a.wav``, ``b.mp3``), made from the shipped speech clips.
```bash blocks are run line by line with the project's ``diarflow`` on ``PATH``, except the commands in
``SKIPPED``, each with the reason it is not run here. A command the harness does not know is run, not
skipped: a new README example is tested the day it is written.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from diarflow.testing.evaluation import DevItem

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```(python|bash)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)

# command prefix -> why the harness does not run it
SKIPPED = {
    "make serve": "starts a server that runs until stopped (tests/test_server_health.py starts one)",
    "make test": "the test suite itself",
    "make notebooks": "starts JupyterLab, which runs until stopped (tests/test_notebooks.py runs the notebooks)",
    "make bench": "benchmarks on the dev corpus, minutes long",
    "make dist": "tests/test_packaging.py builds the wheel and the sdist",
    "pip install": "tests/test_packaging.py installs the wheel into a fresh virtualenv",
    "diarflow serve": "runs until stopped (tests/test_cli.py checks its start-up errors)",
}

# example file name -> (shipped clip, seconds from its start, container written with PyAV)
EXAMPLE_FILES = {
    "meeting.m4a": ("three_speakers", 30.0, "aac"),
    "call.wav": ("phone_two_speakers", 20.0, "pcm_s16le"),
    "a.wav": ("two_speakers", 20.0, "pcm_s16le"),
    "b.mp3": ("six_speakers", 20.0, "libmp3lame"),
}


def _blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README.read_text()) if lang == language]


def _commands(block: str) -> list[str]:
    """Shell commands of a block: comments dropped, ``\\`` continuations joined."""
    commands, pending = [], ""
    for raw in block.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            commands.append(line)
    return commands


def _skip_reason(command: str) -> str | None:
    return next((why for prefix, why in SKIPPED.items() if command == prefix or command.startswith(prefix + " ")),
                None)


def _write(samples: np.ndarray, path: Path, codec: str) -> None:
    """16 kHz mono float32 samples into ``path`` with ``codec`` (PyAV converts to the codec's format)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=16000)
        assert isinstance(stream, av.AudioStream)
        stream.layout = "mono"
        for lo in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, lo:lo + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts = 16000, lo
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def example_dir(speech_clips: dict[str, DevItem], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("readme")
    for name, (clip, seconds, codec) in EXAMPLE_FILES.items():
        audio, rate = sf.read(speech_clips[clip].audio_path, dtype="float32", frames=int(seconds * 16000))
        assert rate == 16000
        _write(np.ascontiguousarray(audio), folder / name, codec)
    return folder


def test_the_readme_has_examples_of_both_kinds() -> None:
    assert len(_blocks("python")) >= 2 and len(_blocks("bash")) >= 2
    runnable = [c for b in _blocks("bash") for c in _commands(b) if _skip_reason(c) is None]
    assert any(c.startswith("diarflow diarize") for c in runnable)


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_block_runs(index: int, example_dir: Path, model_paths: object,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    source = _blocks("python")[index]
    monkeypatch.chdir(example_dir)
    exec(compile(source, f"README.md python block {index + 1}", "exec"), {"__name__": "__readme__"})


@pytest.mark.parametrize("command", [c for b in _blocks("bash") for c in _commands(b)])
def test_bash_command_runs(command: str, example_dir: Path, tmp_path: Path, model_paths: object) -> None:
    reason = _skip_reason(command)
    if reason is not None:
        pytest.skip(reason)
    workdir = tmp_path / "work"
    workdir.mkdir()
    for example in example_dir.iterdir():
        (workdir / example.name).symlink_to(example)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", "-c", command], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    words = shlex.split(command)
    if words[:2] == ["diarflow", "diarize"]:  # each input's results are really there
        out = Path(workdir, words[words.index("--out") + 1]) if "--out" in words else workdir
        formats = words[words.index("--format") + 1].split(",") if "--format" in words else ["rttm"]
        inputs = [w for w in words[2:] if w in EXAMPLE_FILES]
        assert inputs
        for name in inputs:
            for fmt in formats:
                assert (out / f"{Path(name).stem}.{fmt}").stat().st_size > 0, (name, fmt)
