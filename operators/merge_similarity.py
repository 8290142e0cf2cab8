"""The clustering's sensitivity (``merge_similarity``): its default and its one validation for every interface."""

from __future__ import annotations

import json
import math
from numbers import Real
from typing import Any

__all__ = ["DEFAULT_MERGE_SIMILARITY", "check_merge_similarity"]

DEFAULT_MERGE_SIMILARITY = 0.8
"""Cosine similarity of two speaker centroids above which the clusterer merges them into one speaker."""


def _shown(value: Any) -> str:
    """The rejected value as the caller typed it (JSON quoting for text), cut short: clients choose it."""
    text = json.dumps(value) if isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_merge_similarity(value: Any, name: str = "merge_similarity") -> float:
    """Validate a clustering sensitivity: a real number in (-1, 1].

    Parameters
    ----------
    value
        What the caller gave (Python API, request body, command line after ``float()``). Integers and
        NumPy scalars are accepted; booleans, text, NaN and infinities are not.
    name
        The caller's name of the field (``merge_similarity``, ``mergeSimilarity``, ...), used in the message.

    Returns
    -------
    float
        ``value`` as a ``float``.

    Raises
    ------
    ValueError
        With the expected range, what was given and which way to move it. Each interface turns it into
        its own error (HTTP 400 entry, WebSocket close, ``argparse`` error).

    Examples
    --------
    >>> check_merge_similarity(1)
    1.0
    >>> try:
    ...     check_merge_similarity("0.5", "mergeSimilarity")
    ... except ValueError as exc:
    ...     print(exc)
    mergeSimilarity must be a number in (-1, 1] (lower merges more speakers; default 0.8), got "0.5"
    """
    number = float(value) if isinstance(value, Real) and not isinstance(value, bool) else math.nan
    if not -1.0 < number <= 1.0:  # also false for NaN (every comparison with it is) and both infinities
        raise ValueError(f"{name} must be a number in (-1, 1] (lower merges more speakers; default "
                         f"{DEFAULT_MERGE_SIMILARITY}), got {_shown(value)}")
    return number
