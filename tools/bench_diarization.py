"""Accuracy and speed of the engine on the dev corpus; prints numbers, asserts nothing.

    python -m tools.bench_diarization [--mode offline|stream|both] [--only dev01,dev02]

DER (pyannote.metrics, overlap scored, whole file) at a +-0.25 s collar and without collar, pooled
over the files (total error / total reference speech), overlapped-speech recall and precision (10 ms
frames where two or more speakers talk), speaker-count accuracy, real-time factor with model loading
reported separately, and the peak RSS of this process.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

from diarflow.api import diarize
from diarflow.testing.evaluation import PooledDer, Turn, load_dev_items, overlap_seconds, read_rttm
from diarflow.operators.models import Resources
from diarflow.resources import load_resources
from tools import exit_without_dev_corpus


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(mode: str, only: set[str] | None, resources: Resources) -> None:
    pooled = PooledDer()
    audio_s = compute_s = 0.0
    right = total = 0
    overlap = {"reference_s": 0.0, "hypothesis_s": 0.0, "hit_s": 0.0}
    print(f"\n== mode {mode} ==")
    print(f"{'uri':<12} {'spk':>6} {'DER@0.25':>9} {'miss':>6} {'FA':>6} {'conf':>6} {'DER@0':>7} {'RTF':>7}")
    for item in load_dev_items():
        if only and item.uri not in only:
            continue
        started = time.perf_counter()
        result = diarize(item.audio_path, mode=mode, resources=resources)  # type: ignore[arg-type]
        elapsed = time.perf_counter() - started
        reference = read_rttm(item.rttm_path)[item.uri]
        hypothesis = [Turn(s.start_s, s.end_s, s.speaker) for s in result.segments]
        scores = pooled.add(reference, hypothesis, item.duration_s)
        for key, value in overlap_seconds(reference, hypothesis, item.duration_s).items():
            overlap[key] += value
        found = len(result.speakers)
        right += found == item.num_speakers
        total += 1
        audio_s += item.duration_s
        compute_s += elapsed
        s25 = scores[0.25]
        print(f"{item.uri:<12} {found:>2}/{item.num_speakers:<3} {s25['der'] * 100:8.2f}% {s25['missed_s']:6.1f} "
              f"{s25['false_alarm_s']:6.1f} {s25['confusion_s']:6.1f} {scores[0.0]['der'] * 100:6.2f}% "
              f"{elapsed / item.duration_s:7.4f}", flush=True)
    print(f"POOLED {mode}: DER {pooled.rate(0.25) * 100:.2f} % at +-0.25 s collar, "
          f"{pooled.rate(0.0) * 100:.2f} % without collar; speaker count right "
          f"{right}/{total}; RTF {compute_s / audio_s:.4f} ({audio_s / 60:.1f} min in {compute_s:.1f} s); "
          f"peak RSS {_peak_rss_mb():.0f} MB")
    print(f"OVERLAP {mode}: {overlap['reference_s']:.1f} s in the references; recall "
          f"{overlap['hit_s'] / max(overlap['reference_s'], 1e-9) * 100:.1f} %, precision "
          f"{overlap['hit_s'] / max(overlap['hypothesis_s'], 1e-9) * 100:.1f} %")


def main() -> None:
    exit_without_dev_corpus("bench_diarization")
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["offline", "stream", "both"], default="both")
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    started = time.perf_counter()
    resources = load_resources(parallel_calls=os.cpu_count() or 1)  # what diarize() uses by default
    print(f"model loading: {time.perf_counter() - started:.2f} s")
    only = {u for u in args.only.split(",") if u} or None
    for mode in (["offline", "stream"] if args.mode == "both" else [args.mode]):
        run(mode, only, resources)


if __name__ == "__main__":
    main()
