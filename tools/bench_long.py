"""Long inputs: real-time factor and peak memory of offline diarization for 1 h, 2 h and 4 h files.

    python -m tools.bench_long [--hours 1,2,4] [--workdir /tmp/diarflow-long]

Each input is the dev corpus concatenated (cycled) into one FLAC written chunk by chunk. Every run is
a fresh process (so peak RSS is that run's own): model loading is timed separately from diarization.
The child also samples its RSS every second while it diarizes (P10 / P90 after the first tenth of the
run): a longer run's peak catches more transient allocations, the percentiles show whether the memory
itself grows. Each result is also scored against the dev references shifted to where their files were
placed (DER at +-0.25 s collar, overlap scored; the cycled corpus repeats its readers, so the reference
speaker count is the number of distinct readers). Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from diarflow.operators.constants import SAMPLE_RATE
from diarflow.testing.evaluation import DevItem, Turn, diarization_error_rate, load_dev_items, read_rttm
from tools import exit_without_dev_corpus

_CHILD = r"""
import json, resource, sys, threading, time
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20
samples = []
def sample_every_second():
    while True:
        samples.append(rss_mb())
        time.sleep(1.0)
t0 = time.perf_counter()
from diarflow.api import default_resources, diarize
resources = default_resources()
t1 = time.perf_counter()
threading.Thread(target=sample_every_second, daemon=True).start()
result = diarize(sys.argv[1], resources=resources)
t2 = time.perf_counter()
during = sorted(samples[len(samples) // 10:]) or [rss_mb()]  # after the first tenth: the process has warmed up
print(json.dumps({"load_s": t1 - t0, "diarize_s": t2 - t1, "duration_s": result.duration_s,
                  "speakers": len(result.speakers), "segments": len(result.segments),
                  "turns": [[s.start_s, s.end_s, s.speaker] for s in result.segments],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_p10_mb": during[len(during) // 10], "rss_p90_mb": during[len(during) * 9 // 10]}))
"""


def _pieces(hours: float) -> list[tuple[DevItem, int, int]]:
    """The long input's plan: ``(dev item, samples taken from its start, offset in the long file)``."""
    target = int(hours * 3600 * SAMPLE_RATE)
    plan: list[tuple[DevItem, int, int]] = []
    written = 0
    items = [(item, sf.info(item.audio_path).frames) for item in load_dev_items()]
    while written < target:
        for item, frames in items:
            taken = min(frames, target - written)
            plan.append((item, taken, written))
            written += taken
            if written >= target:
                break
    return plan


def make_long_file(path: Path, hours: float) -> Path:
    if path.exists():
        return path
    with sf.SoundFile(path, "w", samplerate=SAMPLE_RATE, channels=1, subtype="PCM_16", format="FLAC") as out:
        for item, taken, _ in _pieces(hours):
            audio, _ = sf.read(item.audio_path, dtype="int16", frames=taken)
            out.write(audio)
    return path


def long_reference(hours: float) -> list[Turn]:
    """The dev references of the long input, shifted to where each file was placed and cut where it was."""
    turns: list[Turn] = []
    references: dict[str, list[Turn]] = {}
    for item, taken, offset in _pieces(hours):
        if item.uri not in references:
            references[item.uri] = read_rttm(item.rttm_path)[item.uri]
        end_s, offset_s = taken / SAMPLE_RATE, offset / SAMPLE_RATE
        turns += [Turn(t.start_s + offset_s, min(t.end_s, end_s) + offset_s, t.speaker)
                  for t in references[item.uri] if t.start_s < end_s]
    return turns


def main() -> None:
    exit_without_dev_corpus("bench_long")
    parser = argparse.ArgumentParser()
    parser.add_argument("--hours", default="1,2,4")
    parser.add_argument("--workdir", default="/tmp/diarflow-long")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for hours in [float(h) for h in args.hours.split(",")]:
        path = make_long_file(workdir / f"long_{hours:g}h.flac", hours)
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{hours:g} h: failed\n{proc.stderr[-2000:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        reference = long_reference(hours)
        score = diarization_error_rate(reference, [Turn(a, b, k) for a, b, k in r["turns"]], r["duration_s"], 0.25)
        print(f"{hours:g} h input: diarized in {r['diarize_s']:.1f} s (RTF {r['diarize_s'] / r['duration_s']:.4f}), "
              f"model loading {r['load_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(sampled each second while diarizing: P10 {r['rss_p10_mb']:.0f}, P90 {r['rss_p90_mb']:.0f} MB), "
              f"{r['speakers']} speakers ({len({t.speaker for t in reference})} readers), {r['segments']} segments, "
              f"DER {100 * score['der']:.2f} % at +-0.25 s", flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
