"""Voiceprint strings and speaker identification scores (cosine of CAM++ centroids -> 0-100)."""

from __future__ import annotations

import base64
import math
from typing import Any, Mapping, Sequence

import numpy as np

from diarflow.operators.constants import EMBEDDING_DIM

__all__ = ["DEFAULT_EXCLUSIVE", "DEFAULT_THRESHOLD", "VOICEPRINT_PREFIX", "decode_voiceprint", "encode_voiceprint",
           "identify", "match_speakers", "similarity_score"]

VOICEPRINT_PREFIX = f"dfv1:campplus-{EMBEDDING_DIM}:"

# Logistic map cosine -> 0-100 calibrated on the dev corpus (3-4 s single-speaker voiceprints against
# conversation centroids of other files): 50 at cosine 0.45, the middle of the gap between the highest
# different-speaker cosine (0.43) and the lowest same-speaker one (0.50); slope such that the 5th
# percentile of same-speaker cosines (0.625) scores 95. Deliberately flatter (about 4x in log-odds)
# than a Gaussian fit of the dev scores, which shares turns across files and is optimistic.
SCORE_MIDPOINT_COSINE = 0.45
SCORE_SLOPE = 17.0
# the identification policy's defaults (``POST /v1/identify`` ``matching``, and live known speakers)
DEFAULT_EXCLUSIVE = True
DEFAULT_THRESHOLD = 0.0


def encode_voiceprint(embedding: np.ndarray) -> str:
    """``"dfv1:campplus-192:" + base64(float16 little-endian (192,))``: 530 characters."""
    vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
    if vector.shape != (EMBEDDING_DIM,):
        raise ValueError(f"expected a ({EMBEDDING_DIM},) embedding, got {vector.shape}")
    vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
    return VOICEPRINT_PREFIX + base64.b64encode(vector.astype("<f2").tobytes()).decode()


def decode_voiceprint(text: str) -> np.ndarray:
    """The unit-norm float32 ``(192,)`` embedding of a voiceprint string.

    Raises
    ------
    ValueError
        Not a voiceprint made by this server (wrong version/model tag, bad base64 or length).
    """
    if not isinstance(text, str) or not text.startswith(VOICEPRINT_PREFIX):
        raise ValueError(f"not a diarflow voiceprint (expected the prefix {VOICEPRINT_PREFIX!r})")
    try:
        raw = base64.b64decode(text[len(VOICEPRINT_PREFIX):], validate=True)
    except ValueError:
        raise ValueError("voiceprint is not valid base64") from None
    if len(raw) != EMBEDDING_DIM * 2:
        raise ValueError(f"voiceprint has {len(raw)} bytes, expected {EMBEDDING_DIM * 2}")
    vector = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError("voiceprint holds a zero or non-finite vector")
    return vector / norm


def similarity_score(cosine: float) -> int:
    """0-100 score of a cosine similarity: ~ the percent chance that both come from one speaker."""
    return int(round(100.0 / (1.0 + math.exp(-SCORE_SLOPE * (cosine - SCORE_MIDPOINT_COSINE)))))


def match_speakers(speaker_embeddings: Mapping[Any, np.ndarray], labels: Sequence[str], prints: np.ndarray,
                   exclusive: bool = DEFAULT_EXCLUSIVE, threshold: float = DEFAULT_THRESHOLD,
                   ) -> tuple[dict[Any, str], dict[Any, dict[str, int]]]:
    """The identification policy: which speakers match which labelled voiceprints.

    Pairs on raw cosines (integer scores tie near 0 and 100) and accepts a pair when its 0-100 score
    reaches ``threshold``. One implementation for ``POST /v1/identify`` and live sessions.

    Parameters
    ----------
    speaker_embeddings
        Speaker key -> ``(192,)`` centroid (any norm).
    labels
        One label per voiceprint.
    prints
        float32 ``(voiceprints, 192)`` unit-norm embeddings (:func:`decode_voiceprint`).
    exclusive
        One voiceprint per speaker and one speaker per voiceprint (best total cosine first).
    threshold
        Minimum score (0-100) of a match.

    Returns
    -------
    tuple
        Speaker -> matched label, and speaker -> {label: score 0-100} for every voiceprint.
    """
    speakers = sorted(speaker_embeddings)
    cosines = np.zeros((len(speakers), len(labels)), dtype=np.float64)  # (speakers, voiceprints)
    for i, speaker in enumerate(speakers):
        centroid = np.asarray(speaker_embeddings[speaker], dtype=np.float32)
        cosines[i] = prints @ (centroid / max(float(np.linalg.norm(centroid)), 1e-12))
    scores = np.vectorize(similarity_score, otypes=[np.int64])(cosines) if cosines.size else cosines.astype(np.int64)
    match: dict[Any, str] = {}
    if speakers and len(labels):
        if exclusive:
            from scipy.optimize import linear_sum_assignment

            rows, cols = linear_sum_assignment(-cosines)
            pairs = list(zip(rows.tolist(), cols.tolist()))
        else:
            pairs = [(i, int(np.argmax(cosines[i]))) for i in range(len(speakers))]
        for i, j in pairs:
            if scores[i, j] >= threshold:
                match[speakers[i]] = labels[j]
    per_speaker = {s: {label: int(scores[i, j]) for j, label in enumerate(labels)} for i, s in enumerate(speakers)}
    return match, per_speaker


def identify(diarization: Mapping[str, Any], speaker_embeddings: Mapping[str, np.ndarray],
             voiceprints: Sequence[Mapping[str, str]], exclusive: bool, threshold: float) -> dict[str, Any]:
    """Match diarization speakers to labelled voiceprints (:func:`match_speakers`) in the job's output.

    Parameters
    ----------
    diarization
        The job's diarization output (``{"diarization": [...], ...}``).
    speaker_embeddings
        Diarization label -> unit-norm ``(192,)`` centroid.
    voiceprints
        ``[{"label", "voiceprint"}]`` (already validated).
    exclusive, threshold
        As for :func:`match_speakers`.

    Returns
    -------
    dict
        ``diarization`` output plus ``identification`` and ``voiceprints`` as in the contract.
    """
    labels = [v["label"] for v in voiceprints]
    prints = np.stack([decode_voiceprint(v["voiceprint"]) for v in voiceprints])  # (voiceprints, 192)
    match, scores = match_speakers(speaker_embeddings, labels, prints, exclusive, threshold)
    identification = []
    for seg in diarization.get("diarization", []):
        label = match.get(seg["speaker"])
        identification.append({"speaker": label or seg["speaker"], "start": seg["start"], "end": seg["end"],
                               "diarizationSpeaker": seg["speaker"], "match": label})
    per_speaker = [{"speaker": s, "match": match.get(s), "confidence": scores[s]} for s in sorted(speaker_embeddings)]
    return {**diarization, "identification": identification, "voiceprints": per_speaker}
