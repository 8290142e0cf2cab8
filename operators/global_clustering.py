"""Offline clustering of all window embeddings in bounded memory (no N x N matrix for large N)."""

from __future__ import annotations

import numpy as np

from .merge_similarity import DEFAULT_MERGE_SIMILARITY
from .speaker_clustering import spectral_clusters
from .vectors import BLOCK_ROWS as _BLOCK_ROWS, kmeans as _kmeans, label_sums, normalise as _normalise

__all__ = ["ATYPICAL_FIT_PERCENTILE", "cluster_embeddings", "refine_clusters", "window_fit"]

ATYPICAL_FIT_PERCENTILE = 10
"""A window fits its speaker's centroid atypically badly below this percentile of the recording's own
window fits: the recording's yardstick, so it holds on any channel (noise lowers every fit, a telephone
band raises every similarity)."""


def cluster_embeddings(
    vectors: np.ndarray,
    min_speakers: int = 1,
    max_speakers: int | None = None,
    merge_similarity: float = DEFAULT_MERGE_SIMILARITY,
    prune_fraction: float = 0.012,
    max_direct: int = 2500,
    num_micro_clusters: int = 600,
    min_cluster_size: int = 3,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Cluster L2-normalised embeddings into speakers; the count is estimated per recording unless fixed.

    Spectral clustering (:func:`~diarflow.operators.speaker_clustering.spectral_clusters`): the count
    comes from the largest eigengap of the pruned affinity graph, so it adapts to how far apart the
    voices of *this* recording are (a telephone channel raises every cosine similarity; a fixed
    distance threshold then merges speakers). Up to ``max_direct`` windows it runs on the windows
    themselves; beyond that, spherical k-means first compresses them into ``num_micro_clusters``
    weighted micro-clusters (memory O(n x k), never O(n^2)). Clusters smaller than
    ``min_cluster_size`` windows are then dissolved into their nearest large cluster, every window is
    re-assigned to the nearest speaker centroid, and speakers whose centroids are more similar than
    ``merge_similarity`` are merged (unless that would go below ``min_speakers``).

    Parameters
    ----------
    vectors
        float32 ``(n, dim)``, L2-normalised.
    min_speakers, max_speakers
        Bounds on the number of speakers (``min == max`` fixes it).
    merge_similarity
        Cosine similarity in (-1, 1] of two speaker centroids above which they are one speaker
        (lower merges more: the clustering's sensitivity knob).
    prune_fraction
        Fraction of nearest neighbours each row of the affinity graph keeps (at least 6).
    weights
        Optional ``(n,)`` positive row weights: how many windows a row stands for (the live clusterer
        passes summaries of speakers that left its buffer as weighted rows). Sizes and centroids are
        weighted; the affinity graph is not.

    Returns
    -------
    numpy.ndarray
        int64 ``(n,)`` speaker labels 0..k-1.
    """
    n = len(vectors)
    if n == 0:
        return np.zeros(0, np.int64)
    if n == 1:
        return np.zeros(1, np.int64)
    row_weights = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    if n <= max_direct:
        members = np.arange(n)
        points, point_weights = vectors, row_weights.astype(np.float64)
    else:
        members = _kmeans(vectors, min(num_micro_clusters, n), iterations=8, weights=row_weights)
        sums = label_sums(members, vectors, int(members.max()) + 1, row_weights).astype(vectors.dtype)
        used = np.flatnonzero(np.linalg.norm(sums, axis=1) > 0)
        remap = np.full(len(sums), -1)
        remap[used] = np.arange(len(used))
        members = remap[members]
        points = _normalise(sums[used])
        point_weights = np.bincount(members, weights=row_weights, minlength=len(points)).astype(np.float64)
    upper = None if max_speakers is None else min(max_speakers, len(points))
    point_labels = spectral_clusters(points, min(min_speakers, len(points)), upper, weights=point_weights,
                                     keep_fraction=prune_fraction)
    return refine_clusters(vectors, point_labels[members], min_speakers, merge_similarity, min_cluster_size,
                           row_weights)


def refine_clusters(vectors: np.ndarray, labels: np.ndarray, min_speakers: int = 1,
                    merge_similarity: float = DEFAULT_MERGE_SIMILARITY, min_cluster_size: int = 3,
                    weights: np.ndarray | None = None, fit_percentile: float | None = None) -> np.ndarray:
    """Settle a first clustering against the whole recording: clusters smaller than ``min_cluster_size``
    windows are dissolved, every window moves to its nearest speaker centroid (twice), then speakers
    whose centroids are more similar than ``merge_similarity`` are merged (never below ``min_speakers``).

    With ``fit_percentile`` (the offline pass over a long recording), a speaker is then also merged into
    a larger one when its windows fit that speaker's centroid, on average, at least as well as this
    percentile of all the recording's windows fit their own speaker: one voice split in two by a
    sequential pass in noise or reverberation (its halves' centroids at cosine 0.55-0.79, below any
    fixed threshold a telephone channel allows) is joined again, while two voices, whose windows fit
    each other's centroid far worse than their own, stay apart.

    ``vectors (n, dim)`` L2-normalised, ``labels (n,)`` in [0, k), optional row ``weights (n,)``;
    returns int64 labels ``(n,)`` numbered 0..k'-1. Memory O(n x k).
    """
    row_weights = np.ones(len(vectors)) if weights is None else np.asarray(weights, np.float64)
    labels = _refine(vectors, np.asarray(labels, np.int64), min_cluster_size, min_speakers, row_weights)
    return _merge_similar(vectors, labels, merge_similarity, min_speakers, row_weights, fit_percentile)


def window_fit(vectors: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Cosine of each unit window ``(n, dim)`` to its own speaker's unit centroid ``centroids[labels]``:
    float ``(n,)``, computed in blocks (no ``(n, dim)`` temporary)."""
    fit = np.empty(len(vectors), np.float64)
    for lo in range(0, len(vectors), _BLOCK_ROWS):
        block = slice(lo, lo + _BLOCK_ROWS)
        fit[block] = np.sum(vectors[block] * centroids[labels[block]], axis=1)
    return fit


def _merge_similar(vectors: np.ndarray, labels: np.ndarray, similarity: float, min_speakers: int,
                   weights: np.ndarray, fit_percentile: float | None = None) -> np.ndarray:
    """Merge the most similar pair of speaker centroids while their cosine exceeds ``similarity``; with
    ``fit_percentile``, then the best-fitting pair while it passes :func:`_fitting_pair`'s test."""
    while True:
        count = int(labels.max()) + 1
        if count <= max(min_speakers, 1):
            return labels
        sums = label_sums(labels, vectors, count, weights)
        centroids = _normalise(sums)
        sims = centroids @ centroids.T
        np.fill_diagonal(sims, -np.inf)
        best = np.unravel_index(int(np.argmax(sims)), sims.shape)
        pair = (int(best[0]), int(best[1])) if sims[best] >= similarity else (
            None if fit_percentile is None else _fitting_pair(vectors, labels, sums, centroids, weights,
                                                              fit_percentile))
        if pair is None:
            return labels
        a, b = pair
        labels = np.where(labels == max(a, b), min(a, b), labels)
        _, labels = np.unique(labels, return_inverse=True)


def _fitting_pair(vectors: np.ndarray, labels: np.ndarray, sums: np.ndarray, centroids: np.ndarray,
                  weights: np.ndarray, fit_percentile: float) -> tuple[int, int] | None:
    """The pair ``(larger, smaller)`` whose smaller speaker's windows fit the larger one's centroid best
    on average, if that fit reaches the ``fit_percentile``-th percentile of every window's fit to its own
    speaker; else ``None``. ``sums (k, dim)``: weighted window sums per speaker, ``centroids`` the same
    rows normalised."""
    sizes = np.bincount(labels, weights=weights, minlength=len(sums))
    cross = (sums / np.maximum(sizes, 1e-12)[:, None]) @ centroids.T  # [j, i]: mean cosine of j's windows to i
    np.fill_diagonal(cross, -np.inf)
    cross[sizes[:, None] > sizes[None, :]] = -np.inf  # a pair is judged by its smaller speaker's windows
    smaller, larger = np.unravel_index(int(np.argmax(cross)), cross.shape)
    floor = np.percentile(window_fit(vectors, labels, centroids), fit_percentile)
    return (int(larger), int(smaller)) if cross[smaller, larger] >= floor else None


def _refine(vectors: np.ndarray, labels: np.ndarray, min_cluster_size: int, min_speakers: int,
            weights: np.ndarray) -> np.ndarray:
    """Dissolve tiny clusters (keeping at least ``min_speakers``), then reassign to nearest centroid."""
    for _ in range(2):
        counts = np.bincount(labels, weights=weights)
        order = np.argsort(-counts)
        keep = [c for c in order if counts[c] >= min_cluster_size]
        for c in order:  # honour min_speakers even with small clusters
            if len(keep) >= min_speakers:
                break
            if c not in keep and counts[c] > 0:
                keep.append(c)
        if not keep:
            keep = [int(order[0])]
        sums = label_sums(labels, vectors, int(labels.max()) + 1, weights).astype(vectors.dtype)
        centroids = _normalise(sums[keep])  # (k, dim)
        new = np.empty_like(labels)
        for lo in range(0, len(vectors), _BLOCK_ROWS):
            new[lo:lo + _BLOCK_ROWS] = np.argmax(vectors[lo:lo + _BLOCK_ROWS] @ centroids.T, axis=1)
        labels = new
    _, labels = np.unique(labels, return_inverse=True)
    return labels.astype(np.int64)
