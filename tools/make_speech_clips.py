"""Cut the short speech clips shipped in ``tests/data/speech/`` from the dev corpus (run once, by hand).

The clips let a clone without ``../shared`` run the tests and the notebooks. Each clip is a slice of one
dev conversation taken between two turns (no reference turn is cut through), written losslessly as
16 kHz mono 16-bit FLAC with its reference re-timed to the slice::

    python -m tools.make_speech_clips            # reads ../shared/eval, writes tests/data/speech/

The result is deterministic: the same corpus gives byte-identical FLAC, RTTM and manifest files.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from diarflow.operators.constants import SAMPLE_RATE
from diarflow.testing.evaluation import Turn, read_rttm

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ClipSpec:
    """One clip: ``[start_s, end_s)`` of ``source`` (a uri of ``corpus``), both snapped into a pause."""

    uri: str
    corpus: str  # "dev" or "dev-channels", folders of ../shared/eval
    source: str
    start_s: float
    end_s: float
    description: str


CLIPS = [
    ClipSpec("two_speakers", "dev", "dev01", 0.0, 60.0,
             "2 speakers (F, M), 4 overlapped turn changes; the first minute of dev01"),
    ClipSpec("three_speakers", "dev", "dev03", 38.0, 85.0,
             "3 speakers (M, M, M), 2 overlaps; dev03 from 38 s"),
    ClipSpec("six_speakers", "dev", "dev06", 0.0, 58.558,
             "6 speakers (3 F, 3 M), 1 overlap; all of dev06 but its trailing silence"),
    ClipSpec("phone_two_speakers", "dev-channels", "dev02_phone", 0.0, 30.0,
             "2 speakers (F, F) through a narrowband telephone channel, 2 overlaps; dev02_phone"),
]


def _pause_near(turns: list[Turn], time_s: float, duration_s: float) -> float:
    """The point closest to ``time_s`` that lies outside every reference turn (a pause), in [0, duration_s]."""
    if time_s <= 0.0 or time_s >= duration_s:
        return min(max(time_s, 0.0), duration_s)
    busy = sorted((t.start_s, t.end_s) for t in turns)
    gaps: list[tuple[float, float]] = []
    position = 0.0
    for start_s, end_s in busy:
        if start_s > position:
            gaps.append((position, start_s))
        position = max(position, end_s)
    gaps.append((position, duration_s))
    # the middle of the nearest gap, rounded to 10 ms (the references' resolution)
    middle = min(((a + b) / 2 for a, b in gaps if b - a >= 0.1), key=lambda m: abs(m - time_s))
    return round(middle, 2)


def cut(spec: ClipSpec, eval_dir: Path, out_dir: Path) -> dict[str, object]:
    """Write ``<uri>.flac`` and ``<uri>.rttm`` for one clip; returns its manifest entry."""
    corpus = eval_dir / spec.corpus
    manifest = {e["uri"]: e for e in json.loads((corpus / "manifest.json").read_text())}
    entry = manifest[spec.source]
    audio, rate = sf.read(corpus / entry["wav"], dtype="int16")
    if rate != SAMPLE_RATE or audio.ndim != 1:
        raise ValueError(f"{spec.source}: expected 16 kHz mono, got {rate} Hz, shape {audio.shape}")
    duration_s = len(audio) / rate
    turns = read_rttm(corpus / entry["rttm"])[spec.source]
    start_s = _pause_near(turns, spec.start_s, duration_s)
    end_s = _pause_near(turns, spec.end_s, duration_s)
    start_sample, end_sample = round(start_s * rate), min(round(end_s * rate), len(audio))
    kept = [t for t in turns if t.start_s >= start_s and t.end_s <= end_s]
    if any(t.start_s < end_s and t.end_s > start_s for t in turns if t not in kept):
        raise AssertionError(f"{spec.uri}: the cut goes through a reference turn")
    sf.write(out_dir / f"{spec.uri}.flac", audio[start_sample:end_sample], rate, format="FLAC", subtype="PCM_16")
    lines = [f"SPEAKER {spec.uri} 1 {t.start_s - start_s:.3f} {t.end_s - t.start_s:.3f} <NA> <NA> {t.speaker} <NA> <NA>"
             for t in kept]
    (out_dir / f"{spec.uri}.rttm").write_text("\n".join(lines) + "\n")
    return {
        "uri": spec.uri,
        "wav": f"{spec.uri}.flac",
        "rttm": f"{spec.uri}.rttm",
        "num_speakers": len({t.speaker for t in kept}),
        "duration": round((end_sample - start_sample) / rate, 3),
        "variant": entry.get("variant", ""),
        "source": f"{spec.corpus}/{spec.source} [{start_s:.2f} s, {end_sample / rate:.2f} s)",
        "description": spec.description,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-dir", type=Path, default=REPO.parent / "shared" / "eval",
                        help="folder holding dev/ and dev-channels/ (default: ../shared/eval)")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "speech",
                        help="where the clips go (default: tests/data/speech)")
    args = parser.parse_args(argv)
    if not (args.eval_dir / "dev" / "manifest.json").is_file():
        print(f"make_speech_clips: no dev corpus at {args.eval_dir}/dev; nothing to do")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    entries = [cut(spec, args.eval_dir, args.out) for spec in CLIPS]
    (args.out / "manifest.json").write_text(json.dumps(entries, indent=1) + "\n")
    for e in entries:
        size_kb = (args.out / str(e["wav"])).stat().st_size / 1024
        print(f"{e['uri']:20s} {e['duration']:6.2f} s  {e['num_speakers']} speakers  {size_kb:5.0f} kB  {e['source']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
