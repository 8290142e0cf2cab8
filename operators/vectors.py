"""Shared vector helpers: L2 normalisation, per-label sums and spherical k-means, in bounded memory."""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix

__all__ = ["BLOCK_ROWS", "label_sums", "normalise", "unit", "kmeans"]

BLOCK_ROWS = 2048  # rows per similarity block: (2048, 600) float32 is 5 MB whatever the input length
_DENSE_ONE_HOT = 1 << 16  # label_sums uses a dense one-hot matrix up to this many cells
_SEED_SAMPLE = 4096  # k-means++ seeds from a sample of at most max(8 k, this) rows


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x (n, dim)`` scaled to unit L2 norm (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def unit(vector: np.ndarray) -> np.ndarray:
    """One vector ``(dim,)`` scaled to unit L2 norm, as float32."""
    return (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)


def label_sums(labels: np.ndarray, vectors: np.ndarray, count: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Sum of the (optionally weighted) rows of each label: float64 ``(count, dim)`` from ``labels (n,)``
    in [0, count) and ``vectors (n, dim)``. A sparse product: O(n) memory, far faster than ``ufunc.at``."""
    labels = np.asarray(labels, np.int64)
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, np.float64)
    if count * len(labels) <= _DENSE_ONE_HOT:  # small (an online buffer): dense is faster
        one_hot = np.zeros((count, len(labels)))
        one_hot[labels, np.arange(len(labels))] = w
        return one_hot @ np.asarray(vectors, np.float64)
    sums = np.zeros((count, vectors.shape[1]))
    for lo in range(0, len(labels), BLOCK_ROWS):  # float64 sums without a float64 copy of all rows
        block = labels[lo:lo + BLOCK_ROWS]
        one_hot = csr_matrix((w[lo:lo + BLOCK_ROWS], (block, np.arange(len(block)))), shape=(count, len(block)))
        sums += one_hot @ np.asarray(vectors[lo:lo + BLOCK_ROWS], np.float64)
    return sums


def kmeans(vectors: np.ndarray, k: int, iterations: int, seed: int = 0,
           weights: np.ndarray | None = None) -> np.ndarray:
    """Spherical k-means with deterministic k-means++ seeding on a subsample.

    Parameters
    ----------
    vectors
        ``(n, dim)`` L2-normalised rows.
    k
        Number of clusters (``<= n``).
    weights
        Optional ``(n,)`` row weights for the centroid updates.

    Returns
    -------
    numpy.ndarray
        int64 ``(n,)`` labels in [0, k).
    """
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
    fit = np.zeros(n, dtype=vectors.dtype)  # each row's similarity to its centroid
    for _ in range(iterations):
        for lo in range(0, n, BLOCK_ROWS):  # bounded working set: (rows, k) at a time
            sims = vectors[lo:lo + BLOCK_ROWS] @ centroids.T
            labels[lo:lo + BLOCK_ROWS] = np.argmax(sims, axis=1)
            fit[lo:lo + BLOCK_ROWS] = sims.max(axis=1)
        sums = label_sums(labels, vectors, len(centroids), weights).astype(centroids.dtype)
        empty = np.flatnonzero(np.linalg.norm(sums, axis=1) == 0)
        # an emptied cluster restarts at the rows that fit their own centroid worst
        for cluster, row in zip(empty, np.argsort(fit)[: len(empty)]):
            sums[cluster] = vectors[row]
            labels[row] = cluster
        centroids = normalise(sums)
    return labels
