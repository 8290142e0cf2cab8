"""The clustering sensitivity is validated once (``operators/merge_similarity.py``), for every interface."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diarflow.operators.merge_similarity import DEFAULT_MERGE_SIMILARITY, check_merge_similarity


@pytest.mark.parametrize("value, accepted", [
    (0.8, True), (1, True), (1.0, True), (0, True), (-0.999, True), (np.float32(0.5), True),
    (DEFAULT_MERGE_SIMILARITY, True),
    (-1, False), (-1.0, False), (1.0001, False), (math.nan, False), (math.inf, False), (-math.inf, False),
    (True, False), (False, False), ("0.5", False), ("high", False), (None, False), ([0.5], False),
])
def test_check_merge_similarity(value: object, accepted: bool) -> None:
    if accepted:
        result = check_merge_similarity(value)
        assert type(result) is float and result == pytest.approx(float(value))  # type: ignore[arg-type]
    else:
        with pytest.raises(ValueError, match=r"^mergeSimilarity must be a number in \(-1, 1\] .*, got "):
            check_merge_similarity(value, "mergeSimilarity")
