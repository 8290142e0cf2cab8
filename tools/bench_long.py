"""Long inputs: real-time factor and peak memory of offline diarization for 1 h, 2 h and 4 h files.

    python -m tools.bench_long [--hours 1,2,4] [--workdir /tmp/diarflow-long]

Each input is the dev corpus concatenated (cycled) into one FLAC written chunk by chunk. Every run is
a fresh process (so peak RSS is that run's own): model loading is timed separately from diarization.
The child also samples its RSS every second while it diarizes (P10 / P90 after the first tenth of the
run): a longer run's peak catches more transient allocations, the percentiles show whether the memory
itself grows. Prints numbers; asserts nothing.
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
from diarflow.testing.evaluation import load_dev_items
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
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_p10_mb": during[len(during) // 10], "rss_p90_mb": during[len(during) * 9 // 10]}))
"""


def make_long_file(path: Path, hours: float) -> Path:
    if path.exists():
        return path
    target = int(hours * 3600 * SAMPLE_RATE)
    written = 0
    items = load_dev_items()
    with sf.SoundFile(path, "w", samplerate=SAMPLE_RATE, channels=1, subtype="PCM_16", format="FLAC") as out:
        while written < target:
            for item in items:
                audio, _ = sf.read(item.audio_path, dtype="int16")
                piece = audio[: target - written]
                out.write(piece)
                written += len(piece)
                if written >= target:
                    break
    return path


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
        print(f"{hours:g} h input: diarized in {r['diarize_s']:.1f} s (RTF {r['diarize_s'] / r['duration_s']:.4f}), "
              f"model loading {r['load_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(sampled each second while diarizing: P10 {r['rss_p10_mb']:.0f}, P90 {r['rss_p90_mb']:.0f} MB), "
              f"{r['speakers']} speakers, {r['segments']} segments", flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
