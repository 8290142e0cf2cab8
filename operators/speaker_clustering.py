"""Spectral clustering of speaker embeddings whose speaker count adapts to the recording.

The affinity graph keeps each embedding's nearest neighbours only (pruning), and the number of
speakers is the position of the largest gap among the smallest eigenvalues of its Laplacian: a
relative criterion, so it holds when a channel (telephone band, far-field microphone) raises or
lowers every cosine similarity at once, where a fixed similarity threshold merges or splits speakers.
The recipe follows H. Ning et al., "A spectral clustering approach to speaker diarization"
(Interspeech 2006) and the pruned-affinity variant of Q. Wang et al. (ICASSP 2018) / 3D-Speaker.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import eigh

from .vectors import kmeans, normalise

__all__ = ["spectral_clusters"]

_MIN_NEIGHBOURS = 6  # a row of the pruned affinity keeps at least this many neighbours
_MAX_ESTIMATED_SPEAKERS = 20  # the eigengap search stops here unless max_speakers says otherwise


def pruned_affinity(vectors: np.ndarray, keep_fraction: float) -> np.ndarray:
    """Symmetric 0 / 0.5 / 1 affinity: each row keeps its ``max(6, keep_fraction * n)`` most similar
    rows (cosine), then ``(B + B.T) / 2``. ``vectors (n, dim)`` L2-normalised -> ``(n, n)`` float64."""
    n = len(vectors)
    keep = int(np.clip(max(_MIN_NEIGHBOURS, round(keep_fraction * n)), 1, n - 1))
    similarity = np.asarray(vectors, np.float64) @ np.asarray(vectors, np.float64).T
    np.fill_diagonal(similarity, np.inf)  # every row keeps itself
    top = np.argpartition(-similarity, kth=keep, axis=1)[:, : keep + 1]
    binary = np.zeros((n, n))
    np.put_along_axis(binary, top, 1.0, axis=1)
    return (binary + binary.T) / 2.0


def spectral_clusters(vectors: np.ndarray, min_speakers: int = 1, max_speakers: int | None = None,
                      weights: np.ndarray | None = None, keep_fraction: float = 0.012,
                      seed: int = 0) -> np.ndarray:
    """Cluster L2-normalised embeddings; the count is estimated by the eigengap unless fixed.

    Parameters
    ----------
    vectors
        float ``(n, dim)``, L2-normalised.
    min_speakers, max_speakers
        Bounds on the count; ``min_speakers == max_speakers`` fixes it. The estimate never exceeds
        20 unless ``max_speakers`` allows more.
    weights
        Optional ``(n,)`` positive weights (e.g. how many windows a micro-cluster stands for), used
        by the k-means on the spectral embedding.
    keep_fraction
        Fraction of neighbours each row of the affinity keeps (at least 6). Around 1 % suits
        0.75 s embedding steps: a speaker's own windows then fill each row.

    Returns
    -------
    numpy.ndarray
        int64 ``(n,)`` labels 0..k-1 (numbered by first appearance).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> centres = normalise(rng.normal(size=(2, 16)))
    >>> x = normalise(np.repeat(centres, 30, axis=0) + 0.1 * rng.normal(size=(60, 16)))
    >>> int(spectral_clusters(x).max()) + 1
    2
    """
    n = len(vectors)
    upper = min(max_speakers if max_speakers is not None else _MAX_ESTIMATED_SPEAKERS, n)
    lower = min(max(min_speakers, 1), upper)
    if n <= 2 or upper <= 1:
        return np.zeros(n, np.int64)
    affinity = pruned_affinity(vectors, keep_fraction)
    laplacian = np.diag(affinity.sum(axis=1)) - affinity
    values, embedding = eigh(laplacian, subset_by_index=[0, min(upper, n - 1)])  # ascending
    gaps = np.diff(values)  # gaps[i]: between the (i+1)-th and (i+2)-th smallest eigenvalues
    count = int(np.argmax(gaps[lower - 1: upper])) + lower
    if count == 1:
        return np.zeros(n, np.int64)
    labels = kmeans(normalise(embedding[:, :count]), count, iterations=20, seed=seed, weights=weights)
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(np.argsort(first))
    return order[np.unique(labels, return_inverse=True)[1]].astype(np.int64)
