"""Turns from labelled windows and back: where one speaker's stretch ends and the next begins.

Embedding windows (1.5 s on a 0.75 s grid) overlap by half, so a speaker change between two
neighbouring windows lies between their centres; :func:`windows_to_turns` places it there (at the
midpoint, or where the two windows' embeddings put it), and :func:`speakers_at` reads a window's
speaker back from the turns.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .messages import SpeakerTurn

__all__ = ["speakers_at", "windows_to_turns"]


def windows_to_turns(spans: np.ndarray, labels: np.ndarray, utterance_ids: np.ndarray,
                     vectors: np.ndarray | None = None, centroids: np.ndarray | None = None) -> list[SpeakerTurn]:
    """Turns from labelled windows: inside an utterance each sample belongs to the window whose centre
    is nearest (boundaries at midpoints between centres); equal neighbours merge.

    With ``vectors`` and ``centroids``, a boundary between two neighbouring windows of different
    speakers is placed where their embeddings put it instead (:func:`_change_sample`).

    Parameters
    ----------
    spans
        int ``(n, 2)`` window ``[start, end)`` sample spans, ordered by start within each utterance.
    labels, utterance_ids
        int ``(n,)``.
    vectors
        Optional ``(n, dim)`` window embeddings, L2-normalised.
    centroids
        Optional ``(speakers, dim)`` unit speaker centroids, indexed by label.
    """
    if (vectors is None) != (centroids is None):
        raise ValueError("windows_to_turns places changes from embeddings only with both vectors and centroids")
    turns: list[SpeakerTurn] = []
    n = len(spans)
    i = 0
    while i < n:
        j = i
        while j + 1 < n and utterance_ids[j + 1] == utterance_ids[i]:
            j += 1
        u_start, u_end = int(spans[i:j + 1, 0].min()), int(spans[i:j + 1, 1].max())
        centres = spans[i:j + 1].sum(axis=1) // 2
        cuts = [u_start, *((centres[:-1] + centres[1:]) // 2).tolist(), u_end]
        if vectors is not None and centroids is not None:  # both or neither (checked above)
            for k in np.flatnonzero(labels[i:j] != labels[i + 1:j + 1]).tolist():
                cuts[k + 1] = _change_sample(spans[i + k:i + k + 2], vectors[i + k:i + k + 2],
                                             centroids[labels[i + k]], centroids[labels[i + k + 1]])
        for k in range(j - i + 1):
            a, b, label = cuts[k], cuts[k + 1], int(labels[i + k])
            if b <= a:
                continue
            if turns and turns[-1].speaker == label and turns[-1].end_sample == a:
                turns[-1] = SpeakerTurn(turns[-1].start_sample, b, label)
            else:
                turns.append(SpeakerTurn(a, b, label))
        i = j + 1
    return turns


_SHARES = np.linspace(0.0, 1.0, 21)  # candidate shares of the first speaker in a window, 5 % apart


def _change_sample(spans: np.ndarray, vectors: np.ndarray, first: np.ndarray, second: np.ndarray) -> int:
    """Where speech changes from speaker ``first`` to ``second`` between two neighbouring windows.

    Each window ``spans (2, 2)`` / ``vectors (2, dim)`` is read as a mix of the two voices: the share
    ``p`` of ``first`` whose mix ``p * first + (1 - p) * second`` (unit centroids ``(dim,)``) points
    closest to the window's embedding puts the change ``p`` of the way through the window. The two
    windows' estimates are averaged and kept in ``(centre 0, centre 1]`` (the midpoint rule's range,
    so each window's centre stays in its own stretch).

    Against the midpoint rule on the dev sets: offline DER 3.03 → 2.49 % (no collar 12.18 → 11.32 %),
    telephone 3.39 → 2.92 % (11.69 → 10.94 %); streaming 4.87 → 4.48 % and 3.53 → 2.83 %.
    """
    mixes = _SHARES[:, None] * first[None] + (1.0 - _SHARES[:, None]) * second[None]  # (21, dim)
    mixes /= np.maximum(np.linalg.norm(mixes, axis=1, keepdims=True), 1e-12)
    shares = _SHARES[np.argmax(np.asarray(vectors, np.float64) @ mixes.T, axis=1)]  # (2,)
    estimates = spans[:, 0] + shares * (spans[:, 1] - spans[:, 0])
    centres = spans.sum(axis=1) // 2
    return int(np.clip(round(float(estimates.mean())), centres[0] + 1, centres[1]))


def speakers_at(turns: Sequence[SpeakerTurn], samples: np.ndarray) -> np.ndarray:
    """The speaker of the turn holding each sample: int64 ``(n,)`` from non-overlapping ``turns`` sorted
    by start and ``samples (n,)``. Given window centres and the turns :func:`windows_to_turns` made from
    those windows, it is each window's label (a window's centre always lies in its own stretch)."""
    starts = np.array([t.start_sample for t in turns], np.int64)
    speakers = np.array([t.speaker for t in turns], np.int64)
    return speakers[np.clip(np.searchsorted(starts, samples, side="right") - 1, 0, None)]
