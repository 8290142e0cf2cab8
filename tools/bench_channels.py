"""Accuracy on recording conditions nobody tuned on: the dev corpus through simulated channels; prints
numbers, asserts nothing.

    python -m tools.bench_channels [--channels quiet,farfield] [--mode offline|stream] [--keep DIR]

Each channel is a deterministic transformation of every dev conversation (fixed seeds), written as
16-bit WAV next to a copy of the references, then diarized like ``tools.bench_diarization`` does:

- ``quiet``: 30 dB quieter (a far-away or badly set microphone; still 16-bit, so quantisation noise
  rises with it);
- ``reverb``: a room with RT60 0.5 s (exponentially decaying noise impulse response, direct path 3 dB
  above the reverberation);
- ``farfield``: RT60 0.8 s with the reverberation 8 dB below the direct path, plus pink noise at
  12 dB SNR (a microphone across a meeting room);
- ``pink5``: pink noise at 5 dB SNR;
- ``babble10``: babble at 10 dB SNR (six time-reversed, shifted copies of the conversation itself);
- ``band8k``: resampled to 8 kHz and back (a narrow-band broadcast, without the telephone codec of
  ``dev-channels``).

The telephone channel of ``../shared/eval/dev-channels`` is measured by ``tools.bench_diarization``.
These simulations are a robustness check, not a substitute for real recordings.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import tempfile
import wave
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import signal

from diarflow.audio import decode_chunks
from diarflow.operators.constants import SAMPLE_RATE
from diarflow.testing.evaluation import default_dev_dir, load_dev_items
from tools import exit_without_dev_corpus

_Channel = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _room_response(rng: np.random.Generator, rt60_s: float, reverb_to_direct_db: float) -> np.ndarray:
    """A synthetic room impulse response ``(taps,)``: a unit direct path, then 3 ms later exponentially
    decaying noise (-60 dB after ``rt60_s``), low-passed at 5 kHz like air absorption."""
    taps = int(1.2 * rt60_s * SAMPLE_RATE)
    t_s = np.arange(taps) / SAMPLE_RATE
    tail = rng.standard_normal(taps) * np.exp(-6.9 * t_s / rt60_s)
    tail[: int(0.003 * SAMPLE_RATE)] = 0.0
    b, a = signal.butter(2, 5000 / (SAMPLE_RATE / 2))
    tail = signal.lfilter(b, a, tail)
    response = tail / np.sqrt(np.sum(tail**2)) * 10 ** (reverb_to_direct_db / 20)
    response[0] = 1.0
    return response


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    """Pink (1/f) noise ``(n,)`` from white noise through Kellet's 3-pole filter."""
    b = [0.049922035, -0.095993537, 0.050612699, -0.004408786]
    a = [1.0, -2.494956002, 2.017265875, -0.522189400]
    return signal.lfilter(b, a, rng.standard_normal(n))


def _mix(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    scale = np.sqrt(np.mean(speech**2) / max(np.mean(noise**2), 1e-20) / 10 ** (snr_db / 10))
    return speech + scale * noise


def _reverberate(x: np.ndarray, rng: np.random.Generator, rt60_s: float, reverb_to_direct_db: float) -> np.ndarray:
    return signal.fftconvolve(x, _room_response(rng, rt60_s, reverb_to_direct_db))[: len(x)]


def _babble(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.sum([np.roll(x[::-1], int(rng.integers(len(x)))) for _ in range(6)], axis=0)


CHANNELS: dict[str, _Channel] = {
    "quiet": lambda x, rng: x * 10 ** (-30 / 20),
    "reverb": lambda x, rng: _reverberate(x, rng, 0.5, -3.0),
    "farfield": lambda x, rng: _mix(_reverberate(x, rng, 0.8, -8.0), _pink(rng, len(x)), 12.0),
    "pink5": lambda x, rng: _mix(x, _pink(rng, len(x)), 5.0),
    "babble10": lambda x, rng: _mix(x, _babble(x, rng), 10.0),
    "band8k": lambda x, rng: signal.resample_poly(signal.resample_poly(x, 1, 2), 2, 1),
}


def make_channel(name: str, source_dir: Path, out_dir: Path) -> Path:
    """Write the dev corpus of ``source_dir`` through channel ``name`` into ``out_dir`` (WAV, RTTM and
    a manifest in the same format); returns ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, item in enumerate(load_dev_items(source_dir)):
        rng = np.random.default_rng([index, len(name)])
        audio = np.concatenate(list(decode_chunks(item.audio_path))).astype(np.float64)
        changed = CHANNELS[name](audio, rng)
        if name != "quiet":  # keep every channel but the quiet one at the source's peak level, unclipped
            changed *= min(1.0, 0.99 / max(float(np.abs(changed).max()), 1e-9))
        with wave.open(str(out_dir / f"{item.uri}.wav"), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(SAMPLE_RATE)
            out.writeframes((np.clip(changed, -1.0, 1.0) * 32767).round().astype("<i2").tobytes())
        shutil.copy(item.rttm_path, out_dir / item.rttm_path.name)
        entries.append({"uri": item.uri, "wav": f"{item.uri}.wav", "rttm": item.rttm_path.name,
                        "num_speakers": item.num_speakers, "duration": item.duration_s, "variant": item.variant})
    (out_dir / "manifest.json").write_text(json.dumps({"items": entries}, indent=1))
    return out_dir


def main() -> None:
    exit_without_dev_corpus("bench_channels")
    parser = argparse.ArgumentParser()
    parser.add_argument("--channels", default=",".join(CHANNELS), help="comma-separated, of: " + ", ".join(CHANNELS))
    parser.add_argument("--mode", choices=["offline", "stream"], default="offline")
    parser.add_argument("--keep", type=Path, default=None, help="write the channels here and keep them")
    args = parser.parse_args()
    names = [n for n in args.channels.split(",") if n]
    unknown = sorted(set(names) - set(CHANNELS))
    if unknown:
        parser.error(f"unknown channels {unknown}; choose from {sorted(CHANNELS)}")

    from diarflow.resources import load_resources
    from tools.bench_diarization import run

    resources = load_resources(parallel_calls=os.cpu_count() or 1)
    source = default_dev_dir()
    root = args.keep or Path(tempfile.mkdtemp(prefix="diarflow-channels-"))
    # the channels are made in a child process, so that the peak RSS printed is the diarization's own
    maker = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        for name in names:
            directory = maker.submit(make_channel, name, source, root / name).result()
            print(f"\n#### channel {name} ({directory})")
            os.environ["DIARFLOW_DEV_DIR"] = str(directory)  # read by load_dev_items() in run()
            run(args.mode, None, resources)
    finally:
        maker.shutdown()
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
