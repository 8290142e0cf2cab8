"""In-process streaming compute: time per 200 ms chunk and per closed utterance (P50 / P99).

    python -m tools.bench_stream_compute [--parallel-calls 1]

Streams every dev recording through a :class:`StreamingSession` in 200 ms s16le chunks (``FRAME_BYTES``) as fast
as possible and times each ``push``. Pushes that close an utterance (a snapshot comes out) are the
per-utterance figure; the others are the per-chunk figure. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import soundfile as sf

from diarflow.audio import to_s16le
from diarflow.dataflow import StreamingSession
from diarflow.testing.evaluation import load_dev_items
from diarflow.operators.messages import PcmBytes, Snapshot
from diarflow.operators.pipeline import build_graph
from diarflow.resources import load_resources
from diarflow.servers.stream_client import FRAME_BYTES
from tools import exit_without_dev_corpus


def main() -> None:
    exit_without_dev_corpus("bench_stream_compute")
    parser = argparse.ArgumentParser()
    parser.add_argument("--parallel-calls", type=int, default=1)
    args = parser.parse_args()
    resources = load_resources(parallel_calls=args.parallel_calls)
    graph = build_graph()
    chunk_ms: list[float] = []
    utterance_ms: list[float] = []
    for item in load_dev_items():
        audio, _ = sf.read(item.audio_path, dtype="float32")
        payload = to_s16le(audio)
        session = StreamingSession(graph, resources)
        for lo in range(0, len(payload), FRAME_BYTES):
            started = time.perf_counter()
            out = session.push(PcmBytes(payload[lo:lo + FRAME_BYTES]))
            elapsed = (time.perf_counter() - started) * 1000
            (utterance_ms if any(isinstance(m, Snapshot) for m in out) else chunk_ms).append(elapsed)
        session.close()
    for name, values in (("200 ms chunk (no utterance closed)", chunk_ms), ("chunk closing an utterance", utterance_ms)):
        v = np.asarray(values)
        print(f"{name}: n={len(v)}  P50 {np.percentile(v, 50):.1f} ms  P90 {np.percentile(v, 90):.1f} ms  "
              f"P99 {np.percentile(v, 99):.1f} ms  max {v.max():.1f} ms")
    total_audio_s = sum(i.duration_s for i in load_dev_items())
    print(f"compute per second of audio: {(sum(chunk_ms) + sum(utterance_ms)) / total_audio_s:.1f} ms "
          f"(one core could carry ~{1000 / ((sum(chunk_ms) + sum(utterance_ms)) / total_audio_s):.0f} real-time sessions)")


if __name__ == "__main__":
    main()
