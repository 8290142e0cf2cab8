"""Offline clustering of all window embeddings in bounded memory (no N x N matrix for large N)."""

from __future__ import annotations

import numpy as np

from .merge_similarity import DEFAULT_MERGE_SIMILARITY
from .speaker_clustering import spectral_clusters
from .vectors import BLOCK_ROWS as _BLOCK_ROWS, kmeans as _kmeans, label_sums, normalise as _normalise

__all__ = ["cluster_embeddings", "refine_clusters"]

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
                    weights: np.ndarray | None = None) -> np.ndarray:
    """Settle a first clustering against the whole recording: clusters smaller than ``min_cluster_size``
    windows are dissolved, every window moves to its nearest speaker centroid (twice), then speakers
    whose centroids are more similar than ``merge_similarity`` are merged (never below ``min_speakers``).

    ``vectors (n, dim)`` L2-normalised, ``labels (n,)`` in [0, k), optional row ``weights (n,)``;
    returns int64 labels ``(n,)`` numbered 0..k'-1. Memory O(n x k).
    """
    row_weights = np.ones(len(vectors)) if weights is None else np.asarray(weights, np.float64)
    labels = _refine(vectors, np.asarray(labels, np.int64), min_cluster_size, min_speakers, row_weights)
    return _merge_similar(vectors, labels, merge_similarity, min_speakers, row_weights)


def _merge_similar(vectors: np.ndarray, labels: np.ndarray, similarity: float, min_speakers: int,
                   weights: np.ndarray) -> np.ndarray:
    """Merge the most similar pair of speaker centroids while their cosine exceeds ``similarity``."""
    while True:
        count = int(labels.max()) + 1
        if count <= max(min_speakers, 1):
            return labels
        centroids = _normalise(label_sums(labels, vectors, count, weights))
        sims = centroids @ centroids.T
        np.fill_diagonal(sims, -np.inf)
        a, b = np.unravel_index(int(np.argmax(sims)), sims.shape)
        if sims[a, b] < similarity:
            return labels
        labels = np.where(labels == max(a, b), min(a, b), labels)
        _, labels = np.unique(labels, return_inverse=True)


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
