"""Confidence from the models: speaker posteriors from embedding similarities, VAD certainty, changes.

Nothing here is a constant painted on the output: every score comes from the models' own evidence.

- **Speaker posterior** of a window: a softmax over its cosine similarities to every final speaker
  centroid, with temperature ``temperature`` (0.05: a similarity margin of 0.1 between the best and
  the second-best speaker gives ~88 %). Near-ties (unsure windows) score low, clear wins high.
- **Turn level**: the mean posterior of the windows whose centres fall inside the turn, per speaker.
- **Frame level** (20 ms): inside speech, the posterior of the turn's speaker from the nearest window,
  times the VAD certainty ``|2p - 1|`` mapped to [0.5, 1], times a change-point factor that falls to
  0.5 at a boundary between two different speakers and recovers over ``change_span_samples``; short
  turns (< 1 s) are capped at 0.7 of that. Outside speech, the VAD's certainty that it is silence.
"""

from __future__ import annotations

import numpy as np

from .constants import CONFIDENCE_FRAME_SAMPLES, SAMPLE_RATE, VAD_WINDOW_SAMPLES
from .messages import SpeakerTurn
from .vectors import label_sums

__all__ = ["frame_confidence", "turn_confidence", "turn_posteriors", "window_posteriors"]

_BLOCK_FRAMES = 1 << 16  # ~22 min of 20 ms frames per block


def window_posteriors(vectors: np.ndarray, labels: np.ndarray, temperature: float = 0.05) -> np.ndarray:
    """Posterior over speakers of each window, ``(n, speakers)``, from similarities to centroids.

    Parameters
    ----------
    vectors
        float32 ``(n, dim)`` L2-normalised window embeddings.
    labels
        int ``(n,)`` final speaker of each window (0..k-1); defines the centroids.
    """
    k = int(labels.max()) + 1 if len(labels) else 0
    if k == 0:
        return np.zeros((len(vectors), 0), np.float32)
    sums = label_sums(labels, vectors, k)
    centroids = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    logits = (vectors @ centroids.T.astype(vectors.dtype)) / temperature  # (n, k), no float64 copy of vectors
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def _window_centres(spans: np.ndarray) -> np.ndarray:
    return spans.sum(axis=1) // 2


def turn_posteriors(turns: list[SpeakerTurn], spans: np.ndarray, posteriors: np.ndarray) -> list[SpeakerTurn]:
    """Attach to each turn its speakers' mean window posterior (``confidence`` = its own speaker's)."""
    centres = _window_centres(spans)
    order = np.argsort(centres, kind="stable")
    sorted_centres = centres[order]
    out = []
    for turn in turns:
        lo, hi = np.searchsorted(sorted_centres, [turn.start_sample, turn.end_sample])
        inside = order[lo:hi]
        if len(inside) == 0:  # a turn too short to hold a window centre: use the nearest window
            inside = order[[min(max(lo - 1, 0), len(order) - 1)]] if len(order) else inside
        mean = posteriors[inside].mean(axis=0) if len(inside) else np.zeros(posteriors.shape[1])
        pairs = tuple((k, float(mean[k])) for k in np.argsort(-mean) if mean[k] >= 0.005)
        out.append(SpeakerTurn(turn.start_sample, turn.end_sample, turn.speaker, float(mean[turn.speaker]),
                               pairs))
    return out


def turn_confidence(turns: list[SpeakerTurn], spans: np.ndarray, posteriors: np.ndarray) -> list[SpeakerTurn]:
    """Turns with ``confidence`` set by :func:`turn_posteriors` (the same per-turn rule as offline), but
    without the per-speaker ``posteriors`` pairs: the live path reports one score per turn.

    Parameters
    ----------
    turns
        Turns whose windows are among ``spans``.
    spans, posteriors
        Windows ``(n, 2)`` and their posteriors ``(n, k)`` (:func:`window_posteriors`).
    """
    if not len(spans):
        return list(turns)
    return [SpeakerTurn(t.start_sample, t.end_sample, t.speaker, t.confidence)
            for t in turn_posteriors(turns, spans, posteriors)]


def frame_confidence(
    turns: list[SpeakerTurn],
    spans: np.ndarray,
    posteriors: np.ndarray,
    labels: np.ndarray,
    vad_probabilities: np.ndarray,
    end_sample: int,
    change_span_samples: int = 8000,
) -> np.ndarray:
    """Per-20-ms confidence in [0, 100] over ``[0, end_sample)``.

    Parameters
    ----------
    turns
        Final, non-overlapping turns sorted by start.
    spans, posteriors, labels
        Windows ``(n, 2)``, their posteriors ``(n, k)`` and final labels ``(n,)``.
    vad_probabilities
        float32 ``(m,)`` Silero speech probability of consecutive 512-sample windows from sample 0.

    Returns
    -------
    numpy.ndarray
        uint8 ``(ceil(end_sample / 320),)``.
    """
    num_frames = -(-end_sample // CONFIDENCE_FRAME_SAMPLES)
    out = np.empty(num_frames, np.uint8)
    has_turns = bool(len(turns) and len(spans))
    if has_turns:
        centres = _window_centres(spans)
        order = np.argsort(centres, kind="stable")
        sorted_centres = centres[order]
        own = posteriors[np.arange(len(labels)), labels][order].astype(np.float32)  # own-label posterior
        starts = np.array([t.start_sample for t in turns], np.int64)
        ends = np.array([t.end_sample for t in turns], np.int64)
        short = (ends - starts) < SAMPLE_RATE  # turns under 1 s
        changes = np.array([t.start_sample for prev, t in zip(turns, turns[1:])
                            if prev.speaker != t.speaker and t.start_sample - prev.end_sample < change_span_samples],
                           np.int64)
    for lo in range(0, num_frames, _BLOCK_FRAMES):  # blocks: memory stays flat for 24 h inputs
        centre = (np.arange(lo, min(lo + _BLOCK_FRAMES, num_frames), dtype=np.int64) * CONFIDENCE_FRAME_SAMPLES
                  + CONFIDENCE_FRAME_SAMPLES // 2)
        if len(vad_probabilities):
            vad = vad_probabilities[np.minimum(centre // VAD_WINDOW_SAMPLES, len(vad_probabilities) - 1)]
        else:
            vad = np.zeros(len(centre), np.float32)
        vad_certainty = np.abs(2.0 * vad.astype(np.float32) - 1.0)
        score = vad_certainty.copy()  # outside speech: how sure the VAD is that this is not speech
        if has_turns:
            turn = np.searchsorted(starts, centre, side="right") - 1
            frames = np.flatnonzero((turn >= 0) & (centre < ends[np.maximum(turn, 0)]))
            fc = centre[frames]
            nearest = np.clip(np.searchsorted(sorted_centres, fc), 0, len(sorted_centres) - 1)
            change_factor = np.ones(len(frames), np.float32)
            if len(changes):
                k = np.clip(np.searchsorted(changes, fc), 1, len(changes)) - 1
                distance = np.minimum(np.abs(fc - changes[k]), np.abs(fc - changes[np.minimum(k + 1, len(changes) - 1)]))
                change_factor = 0.5 + 0.5 * np.minimum(distance / change_span_samples, 1.0).astype(np.float32)
            score[frames] = (own[nearest] * (0.5 + 0.5 * vad_certainty[frames]) * change_factor
                             * np.where(short[turn[frames]], 0.7, 1.0).astype(np.float32))
        out[lo:lo + len(centre)] = np.clip(np.rint(score * 100), 0, 100).astype(np.uint8)
    return out
