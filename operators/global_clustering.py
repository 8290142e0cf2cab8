"""Offline re-clustering of all window embeddings in bounded memory (no N x N matrix for large N)."""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse import csr_matrix

__all__ = ["cluster_embeddings", "count_constrained_cut", "label_sums"]

_BLOCK_ROWS = 2048  # rows per similarity block: (2048, 600) float32 is 5 MB whatever the input length
_DENSE_ONE_HOT = 1 << 16  # label_sums uses a dense one-hot matrix up to this many cells
_SEED_SAMPLE = 4096  # k-means++ seeds from a sample of at most max(8 k, this) windows


def label_sums(labels: np.ndarray, vectors: np.ndarray, count: int) -> np.ndarray:
    """Sum of the rows of each label: float64 ``(count, dim)`` from ``labels (n,)`` in [0, count) and
    ``vectors (n, dim)``. A sparse product: O(n) memory, and far faster than ``ufunc.at`` on rows."""
    labels = np.asarray(labels, np.int64)
    if count * len(labels) <= _DENSE_ONE_HOT:  # small (the online clusterer's buffer): dense is faster
        one_hot = np.zeros((count, len(labels)))
        one_hot[labels, np.arange(len(labels))] = 1.0
        return one_hot @ np.asarray(vectors, np.float64)
    sums = np.zeros((count, vectors.shape[1]))
    for lo in range(0, len(labels), _BLOCK_ROWS):  # float64 sums without a float64 copy of all rows
        block = labels[lo:lo + _BLOCK_ROWS]
        one_hot = csr_matrix((np.ones(len(block)), (block, np.arange(len(block)))), shape=(count, len(block)))
        sums += one_hot @ np.asarray(vectors[lo:lo + _BLOCK_ROWS], np.float64)
    return sums


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _kmeans(vectors: np.ndarray, k: int, iterations: int, seed: int = 0) -> np.ndarray:
    """Spherical k-means with deterministic k-means++ seeding on a subsample; returns labels (n,)."""
    rng = np.random.default_rng(seed)
    n = len(vectors)
    sample = vectors[rng.choice(n, size=min(n, max(8 * k, _SEED_SAMPLE)), replace=False)]
    centres = [sample[0]]
    best = 1.0 - sample @ sample[0]
    for _ in range(1, k):
        probs = np.maximum(best, 0) ** 2
        idx = int(rng.choice(len(sample), p=probs / probs.sum())) if probs.sum() > 0 else int(rng.integers(len(sample)))
        centres.append(sample[idx])
        best = np.minimum(best, 1.0 - sample @ sample[idx])
    centroids = np.stack(centres)  # (k, dim)
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iterations):
        for lo in range(0, n, _BLOCK_ROWS):  # bounded working set: (rows, k) at a time
            labels[lo:lo + _BLOCK_ROWS] = np.argmax(vectors[lo:lo + _BLOCK_ROWS] @ centroids.T, axis=1)
        sums = label_sums(labels, vectors, len(centroids)).astype(centroids.dtype)
        empty = np.linalg.norm(sums, axis=1) == 0
        sums[empty] = centroids[empty]
        centroids = _normalise(sums)
    return labels


def count_constrained_cut(tree: np.ndarray, threshold: float, min_count: int, max_count: int) -> np.ndarray:
    """Flat clusters from a linkage tree: cut at ``threshold`` unless that gives a count outside
    ``[min_count, max_count]``, in which case cut at the nearest allowed count. Labels from 0."""
    labels = fcluster(tree, t=threshold, criterion="distance")
    count = int(labels.max())
    if count < min_count or count > max_count:
        labels = fcluster(tree, t=min(max(count, min_count), max_count), criterion="maxclust")
    return labels - 1


def cluster_embeddings(
    vectors: np.ndarray,
    threshold: float,
    min_speakers: int = 1,
    max_speakers: int | None = None,
    max_direct: int = 2500,
    num_micro_clusters: int = 600,
    min_cluster_size: int = 3,
) -> np.ndarray:
    """Cluster L2-normalised embeddings into speakers; the count is estimated unless fixed.

    Average-linkage agglomerative clustering on cosine distance, cut at ``threshold``. Up to
    ``max_direct`` windows it runs on the windows themselves; beyond that, spherical k-means first
    compresses them into ``num_micro_clusters`` micro-clusters (memory O(n x k), never O(n^2)) and the
    agglomeration runs on their centroids. Clusters smaller than ``min_cluster_size`` windows are then
    dissolved into their nearest large cluster, and every window is finally assigned to the nearest
    speaker centroid (two refinement passes).

    Parameters
    ----------
    vectors
        float32 ``(n, dim)``, L2-normalised.
    threshold
        Cosine distance in (0, 2) at which agglomeration stops when the count is free.
    min_speakers, max_speakers
        Bounds on the number of speakers (``min == max`` fixes it).

    Returns
    -------
    numpy.ndarray
        int64 ``(n,)`` speaker labels 0..k-1.
    """
    n = len(vectors)
    if n == 0:
        return np.zeros(0, np.int64)
    max_speakers = n if max_speakers is None else max_speakers
    if n == 1:
        return np.zeros(1, np.int64)
    if n <= max_direct:
        members = np.arange(n)
        points = vectors
    else:
        members = _kmeans(vectors, min(num_micro_clusters, n), iterations=8)
        sums = label_sums(members, vectors, int(members.max()) + 1).astype(vectors.dtype)
        used = np.flatnonzero(np.linalg.norm(sums, axis=1) > 0)
        remap = np.full(len(sums), -1)
        remap[used] = np.arange(len(used))
        members = remap[members]
        points = _normalise(sums[used])
    if len(points) == 1:
        point_labels = np.zeros(1, np.int64)
    else:
        tree = linkage(points.astype(np.float64), method="average", metric="cosine")
        point_labels = count_constrained_cut(tree, threshold, min_speakers, min(max_speakers, len(points)))
    labels = point_labels[members]
    return _refine(vectors, labels, min_cluster_size, min_speakers)


def _refine(vectors: np.ndarray, labels: np.ndarray, min_cluster_size: int, min_speakers: int) -> np.ndarray:
    """Dissolve tiny clusters (keeping at least ``min_speakers``), then reassign to nearest centroid."""
    for _ in range(2):
        counts = np.bincount(labels)
        order = np.argsort(-counts)
        keep = [c for c in order if counts[c] >= min_cluster_size]
        for c in order:  # honour min_speakers even with small clusters
            if len(keep) >= min_speakers:
                break
            if c not in keep and counts[c] > 0:
                keep.append(c)
        if not keep:
            keep = [int(order[0])]
        sums = label_sums(labels, vectors, int(labels.max()) + 1).astype(vectors.dtype)
        centroids = _normalise(sums[keep])  # (k, dim)
        new = np.empty_like(labels)
        for lo in range(0, len(vectors), _BLOCK_ROWS):
            new[lo:lo + _BLOCK_ROWS] = np.argmax(vectors[lo:lo + _BLOCK_ROWS] @ centroids.T, axis=1)
        labels = new
    _, labels = np.unique(labels, return_inverse=True)
    return labels.astype(np.int64)
