"""Evaluation helpers for tests, benchmarks and notebooks: RTTM I/O, the dev corpus, shipped clips, DER, EER."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diarflow.operators.constants import SAMPLE_RATE

__all__ = [
    "PooledDer",
    "DevItem",
    "Turn",
    "default_dev_dir",
    "dev_dir_or_clips",
    "shipped_clips_dir",
    "diarization_error_rate",
    "equal_error_rate",
    "load_dev_items",
    "read_rttm",
    "single_speaker_regions",
    "speaker_cuts",
]


@dataclass(frozen=True)
class Turn:
    """One reference or hypothesis speech turn, in seconds (edges of the engine only)."""

    start_s: float
    end_s: float
    speaker: str


@dataclass(frozen=True)
class DevItem:
    """One conversation of the dev corpus (see its README)."""

    uri: str
    audio_path: Path
    rttm_path: Path
    num_speakers: int
    duration_s: float
    variant: str


_CHECKOUT = Path(__file__).resolve().parents[2]  # diarflow/testing/evaluation.py -> the repository root


def default_dev_dir() -> Path:
    """``$DIARFLOW_DEV_DIR``, else ``shared/eval/dev`` beside the repository checkout (may not exist)."""
    explicit = os.environ.get("DIARFLOW_DEV_DIR")
    if explicit:
        return Path(explicit)
    return _CHECKOUT.parent / "shared" / "eval" / "dev"


def shipped_clips_dir() -> Path:
    """``tests/data/speech`` of the checkout: short real-speech clips with exact references (see its README).

    They travel with the repository, so the tests and notebooks run on a clone with no dev corpus beside
    it. Same layout as the dev corpus (``manifest.json``, FLAC, RTTM), so :func:`load_dev_items` reads it.
    """
    return _CHECKOUT / "tests" / "data" / "speech"


def dev_dir_or_clips() -> Path:
    """The dev corpus when it is there (:func:`default_dev_dir`), else the shipped clips."""
    dev_dir = default_dev_dir()
    return dev_dir if (dev_dir / "manifest.json").is_file() else shipped_clips_dir()


def load_dev_items(dev_dir: Path | None = None) -> list[DevItem]:
    """Items of the dev corpus's ``manifest.json``, in manifest order."""
    dev_dir = dev_dir or default_dev_dir()
    manifest = json.loads((dev_dir / "manifest.json").read_text())
    entries = manifest["items"] if isinstance(manifest, dict) else manifest
    return [
        DevItem(
            uri=e["uri"],
            audio_path=dev_dir / Path(e["wav"]).name,
            rttm_path=dev_dir / Path(e["rttm"]).name,
            num_speakers=int(e["num_speakers"]),
            duration_s=float(e["duration"]),
            variant=str(e.get("variant", "")),
        )
        for e in entries
    ]


def read_rttm(path: Path) -> dict[str, list[Turn]]:
    """``SPEAKER <uri> <chan> <start> <dur> ... <speaker> ...`` lines, grouped by uri, sorted by start."""
    turns: dict[str, list[Turn]] = {}
    for line_no, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] != "SPEAKER":
            continue
        if len(fields) < 8:
            raise ValueError(f"{path}:{line_no}: expected at least 8 RTTM fields, got {len(fields)}")
        start_s, duration_s = float(fields[3]), float(fields[4])
        turns.setdefault(fields[1], []).append(Turn(start_s, start_s + duration_s, fields[7]))
    for uri_turns in turns.values():
        uri_turns.sort(key=lambda t: (t.start_s, t.end_s))
    return turns


def single_speaker_regions(turns: list[Turn], resolution_s: float = 0.01) -> list[Turn]:
    """Maximal stretches where exactly one reference speaker talks (overlaps and gaps removed)."""
    if not turns:
        return []
    end_frame = int(np.ceil(max(t.end_s for t in turns) / resolution_s)) + 1
    speakers = sorted({t.speaker for t in turns})
    active = np.zeros((len(speakers), end_frame), dtype=bool)  # (speakers, frames)
    for t in turns:
        active[speakers.index(t.speaker), round(t.start_s / resolution_s):round(t.end_s / resolution_s)] = True
    solo = active.sum(axis=0) == 1
    who = np.argmax(active, axis=0)
    regions: list[Turn] = []
    start = None
    for i in range(end_frame + 1):
        same = i < end_frame and solo[i] and start is not None and who[i] == who[start]
        if start is not None and not same:
            regions.append(Turn(start * resolution_s, i * resolution_s, speakers[who[start]]))
            start = None
        if start is None and i < end_frame and solo[i]:
            start = i
    return regions


def equal_error_rate(scores: np.ndarray, same_speaker: np.ndarray) -> tuple[float, float]:
    """Equal error rate of verification trials and the threshold where it occurs.

    Parameters
    ----------
    scores
        float ``(trials,)``: higher means "same speaker" (e.g. cosine similarity).
    same_speaker
        bool ``(trials,)``: the truth of each trial; both classes must occur.

    Returns
    -------
    eer, threshold
        EER in [0, 1] (mean of miss and false-alarm rates at the crossing) and the score threshold.
    """
    scores = np.asarray(scores, dtype=np.float64)
    same_speaker = np.asarray(same_speaker, dtype=bool)
    if same_speaker.all() or not same_speaker.any():
        raise ValueError("equal_error_rate needs both same-speaker and different-speaker trials")
    order = np.argsort(-scores, kind="stable")
    labels = same_speaker[order]
    # accepting the top k trials: misses = targets below, false alarms = non-targets above
    false_alarm = np.concatenate([[0], np.cumsum(~labels)]) / (~labels).sum()
    miss = 1 - np.concatenate([[0], np.cumsum(labels)]) / labels.sum()
    k = int(np.argmin(np.abs(false_alarm - miss)))
    thresholds = np.concatenate([[np.inf], scores[order]])
    return float((false_alarm[k] + miss[k]) / 2), float(thresholds[k])


def speaker_cuts(
    items: list[DevItem], cut_s: float, max_per_speaker: int = 12, sample_rate: int = SAMPLE_RATE
) -> tuple[list[np.ndarray], list[str]]:
    """Single-speaker audio cuts of exactly ``cut_s`` seconds for verification trials.

    One cut per single-speaker region long enough (taken from the region's middle), at most
    ``max_per_speaker`` per speaker, spread over the items in order. Speaker labels are the RTTM's
    (the dev corpus uses the same label for the same person across files).

    Returns
    -------
    cuts, speakers
        float32 arrays of ``round(cut_s * sample_rate)`` samples each, and their speaker labels.
    """
    import soundfile as sf

    num_samples = round(cut_s * sample_rate)
    cuts: list[np.ndarray] = []
    speakers: list[str] = []
    counts: dict[str, int] = {}
    for item in items:
        audio, rate = sf.read(item.audio_path, dtype="float32", always_2d=True)
        if rate != sample_rate:
            raise ValueError(f"{item.audio_path}: expected {sample_rate} Hz, got {rate}")
        audio = audio.mean(axis=1)
        for uri_turns in read_rttm(item.rttm_path).values():
            for region in single_speaker_regions(uri_turns):
                if region.end_s - region.start_s < cut_s or counts.get(region.speaker, 0) >= max_per_speaker:
                    continue
                middle = round((region.start_s + region.end_s) / 2 * sample_rate)
                start = max(0, middle - num_samples // 2)
                cut = audio[start:start + num_samples]
                if len(cut) == num_samples:
                    cuts.append(np.ascontiguousarray(cut))
                    speakers.append(region.speaker)
                    counts[region.speaker] = counts.get(region.speaker, 0) + 1
    return cuts, speakers


def diarization_error_rate(
    reference: list[Turn], hypothesis: list[Turn], duration_s: float, collar_s: float = 0.25
) -> dict[str, float]:
    """DER with overlap scored, optimal mapping, over ``[0, duration_s]`` (needs ``pyannote.metrics``).

    ``collar_s`` is the forgiveness on each side of reference boundaries (pyannote's ``collar`` is
    the total width, so it receives ``2 * collar_s``). Returns the rate and its components in seconds.
    """
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    def annotation(turns: list[Turn]) -> Annotation:
        ann = Annotation()
        for i, t in enumerate(turns):
            ann[Segment(t.start_s, t.end_s), i] = t.speaker
        return ann

    metric = DiarizationErrorRate(collar=2 * collar_s, skip_overlap=False)
    details = metric(annotation(reference), annotation(hypothesis), uem=Timeline([Segment(0, duration_s)]),
                     detailed=True)
    return {
        "der": float(details["diarization error rate"]),
        "missed_s": float(details["missed detection"]),
        "false_alarm_s": float(details["false alarm"]),
        "confusion_s": float(details["confusion"]),
        "total_s": float(details["total"]),
    }


class PooledDer:
    """DER pooled over files (total error seconds over total reference speech) at several collars."""

    def __init__(self, collars_s: tuple[float, ...] = (0.25, 0.0)) -> None:
        self.error_s = dict.fromkeys(collars_s, 0.0)
        self.total_s = dict.fromkeys(collars_s, 0.0)

    def add(self, reference: list[Turn], hypothesis: list[Turn], duration_s: float) -> dict[float, dict[str, float]]:
        """Score one file at every collar (:func:`diarization_error_rate`), pool it, return its scores."""
        scores = {c: diarization_error_rate(reference, hypothesis, duration_s, c) for c in self.error_s}
        for c, s in scores.items():
            self.error_s[c] += s["missed_s"] + s["false_alarm_s"] + s["confusion_s"]
            self.total_s[c] += s["total_s"]
        return scores

    def rate(self, collar_s: float) -> float:
        """The pooled DER at ``collar_s`` (0 before any speech was scored)."""
        return self.error_s[collar_s] / self.total_s[collar_s] if self.total_s[collar_s] else 0.0


def overlap_seconds(reference: list[Turn], hypothesis: list[Turn], duration_s: float,
                    resolution_s: float = 0.01) -> dict[str, float]:
    """How much overlapped speech (two or more different speakers at once) each side has, and how much
    of it they share, on a ``resolution_s`` grid over ``[0, duration_s]``.

    Returns ``{"reference_s", "hypothesis_s", "hit_s"}``: recall is ``hit_s / reference_s``, precision
    ``hit_s / hypothesis_s``.
    """
    frames = int(np.ceil(duration_s / resolution_s))

    def overlapped(turns: list[Turn]) -> np.ndarray:
        speakers = sorted({t.speaker for t in turns})
        active = np.zeros((len(speakers), frames), bool)
        for t in turns:
            active[speakers.index(t.speaker), round(t.start_s / resolution_s):round(t.end_s / resolution_s)] = True
        return active.sum(axis=0) >= 2

    ref, hyp = overlapped(reference), overlapped(hypothesis)
    return {"reference_s": float(ref.sum() * resolution_s), "hypothesis_s": float(hyp.sum() * resolution_s),
            "hit_s": float((ref & hyp).sum() * resolution_s)}
