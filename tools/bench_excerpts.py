"""Short excerpts with several speakers: speaker counts and DER; prints numbers, asserts nothing.

    python -m tools.bench_excerpts [--mode offline|stream] [--seconds 30] [--min-speakers 3]

Real meetings are often diarized in short pieces (the issue's failure mode: one speaker found in
30 s meeting excerpts with three). Each dev conversation is cut into consecutive excerpts of
``--seconds``; excerpts where at least ``--min-speakers`` reference speakers talk are diarized on their
own. Reported: how often the count is exact, counting every reference speaker and counting only those
who speak at least 2 s (about three embedding windows: less is not a voice any clustering can tell
apart), how often it is under (fewer than those with 2 s) or over (more than every reference speaker),
and the DER pooled over the excerpts (overlap scored, at a +-0.25 s collar and without collar).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from diarflow.api import diarize
from diarflow.audio import decode_chunks
from diarflow.operators.constants import SAMPLE_RATE
from diarflow.resources import load_resources
from diarflow.testing.evaluation import PooledDer, Turn, load_dev_items, read_rttm
from tools import exit_without_dev_corpus

_AUDIBLE_S = 2.0  # a reference speaker with less speech in an excerpt is not expected to be found


def excerpt_reference(reference: list[Turn], start_s: float, end_s: float) -> list[Turn]:
    """The reference turns inside ``[start_s, end_s)``, clipped and shifted to start at 0."""
    return [Turn(max(t.start_s, start_s) - start_s, min(t.end_s, end_s) - start_s, t.speaker)
            for t in reference if t.end_s > start_s and t.start_s < end_s]


def main() -> None:
    exit_without_dev_corpus("bench_excerpts")
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["offline", "stream"], default="offline")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--min-speakers", type=int, default=3)
    args = parser.parse_args()
    resources = load_resources(parallel_calls=os.cpu_count() or 1)
    pooled = PooledDer()
    exact_all = exact_audible = under = over = excerpts = 0
    print(f"{'uri':<12} {'from':>6} {'found':>5} {'all':>4} {'>=2s':>5} {'DER@0.25':>9} {'DER@0':>7}")
    for item in load_dev_items():
        audio = np.concatenate(list(decode_chunks(item.audio_path)))
        reference = read_rttm(item.rttm_path)[item.uri]
        for start_s in np.arange(0.0, item.duration_s - args.seconds + 1e-9, args.seconds):
            end_s = start_s + args.seconds
            turns = excerpt_reference(reference, start_s, end_s)
            speech: dict[str, float] = {}
            for t in turns:
                speech[t.speaker] = speech.get(t.speaker, 0.0) + t.end_s - t.start_s
            if len(speech) < args.min_speakers:
                continue
            audible = sum(s >= _AUDIBLE_S for s in speech.values())
            piece = audio[int(start_s * SAMPLE_RATE): int(end_s * SAMPLE_RATE)]
            result = diarize(piece, mode=args.mode, resources=resources)  # type: ignore[arg-type]
            hypothesis = [Turn(s.start_s, s.end_s, s.speaker) for s in result.segments]
            scores = pooled.add(turns, hypothesis, args.seconds)
            found = len(result.speakers)
            excerpts += 1
            exact_all += found == len(speech)
            exact_audible += found == audible
            under += found < audible
            over += found > len(speech)
            print(f"{item.uri:<12} {start_s:6.0f} {found:>5} {len(speech):>4} {audible:>5} "
                  f"{scores[0.25]['der'] * 100:8.2f}% {scores[0.0]['der'] * 100:6.2f}%", flush=True)
    if not excerpts:
        print("no excerpt has enough speakers")
        return
    print(f"EXCERPTS {args.mode}, {args.seconds:g} s, >= {args.min_speakers} speakers: {excerpts} excerpts; count exact "
          f"{exact_all}/{excerpts} (every speaker), {exact_audible}/{excerpts} (speakers with >= {_AUDIBLE_S:g} s); "
          f"under {under}, over {over}; DER {pooled.rate(0.25) * 100:.2f} % at +-0.25 s collar, "
          f"{pooled.rate(0.0) * 100:.2f} % without collar")


if __name__ == "__main__":
    main()
