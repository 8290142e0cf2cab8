"""CAM++ rebuilt from NumPy weights: parity with PyTorch goldens, batching, and real-speech separation."""

from __future__ import annotations

import numpy as np
import pytest

from diarflow.testing.evaluation import DevItem, equal_error_rate, speaker_cuts
from diarflow.provisioning import ModelPaths
from diarflow.operators.fbank import Fbank
from diarflow.operators.models import SpeakerEmbeddingModel

from .conftest import DATA_DIR


@pytest.fixture(scope="module")
def embedder(model_paths: ModelPaths) -> SpeakerEmbeddingModel:
    return SpeakerEmbeddingModel(model_paths.campplus)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_onnx_reproduces_pytorch_goldens(embedder: SpeakerEmbeddingModel) -> None:
    golden = np.load(DATA_DIR / "campplus_golden.npz")
    names = list(golden["names"])
    assert len(names) >= 4
    for i, name in enumerate(names):
        feats, expected = golden[f"feats_{i}"], golden[f"emb_{i}"]
        got = embedder.embed(feats[None])[0]
        assert got.shape == (192,)
        assert _cosine(got, expected) > 0.9999, name
        np.testing.assert_allclose(got, expected, atol=1e-3, err_msg=name)


def test_golden_features_match_our_fbank(speech_clips: dict[str, DevItem]) -> None:
    """The goldens were computed from dev01 with kaldi-native-fbank; our NumPy fbank must give the same.

    The ``two_speakers`` clip is dev01's first minute, sample for sample, so the golden cut is in it."""
    import soundfile as sf

    golden = np.load(DATA_DIR / "campplus_golden.npz")
    audio, _ = sf.read(speech_clips["two_speakers"].audio_path, dtype="float32")
    name = str(golden["names"][0])  # dev01_<start>s_<dur>s_<speaker>
    start_s, duration_s = (float(x.rstrip("s")) for x in name.split("_")[1:3])
    cut = audio[round(start_s * 16000):round(start_s * 16000) + round(duration_s * 16000)]
    np.testing.assert_allclose(Fbank().compute_normalised(cut), golden["feats_0"], atol=2e-3)


def test_batch_equals_single(embedder: SpeakerEmbeddingModel) -> None:
    feats = np.random.default_rng(1).standard_normal((5, 150, 80)).astype(np.float32)
    batched = embedder.embed(feats)
    for i in range(5):
        np.testing.assert_allclose(batched[i], embedder.embed(feats[i:i + 1])[0], atol=1e-4)


@pytest.mark.parametrize("frames", [3, 99, 201, 250, 1001])
def test_any_length_gives_finite_embedding(embedder: SpeakerEmbeddingModel, frames: int) -> None:
    feats = np.random.default_rng(frames).standard_normal((2, frames, 80)).astype(np.float32)
    out = embedder.embed(feats)
    assert out.shape == (2, 192) and np.isfinite(out).all()


def test_bad_shapes_are_refused(embedder: SpeakerEmbeddingModel) -> None:
    with pytest.raises(ValueError, match="expected fbank of shape"):
        embedder.embed(np.zeros((1, 100, 40), np.float32))
    with pytest.raises(ValueError, match="expected fbank of shape"):
        embedder.embed(np.zeros((100, 80), np.float32))


@pytest.mark.parametrize("cut_s, max_eer", [(1.5, 0.05), (3.0, 0.03)])
def test_same_speaker_scores_clearly_above_different(
    embedder: SpeakerEmbeddingModel, speech_clips: dict[str, DevItem], cut_s: float, max_eer: float
) -> None:
    clean = [i for i in speech_clips.values() if i.variant == "clean"]  # 10 distinct speakers
    cuts, speakers = speaker_cuts(clean, cut_s, max_per_speaker=6)
    assert len(set(speakers)) >= 8
    fbank = Fbank()
    emb = embedder.embed(np.stack([fbank.compute_normalised(c) for c in cuts]))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    upper = np.triu_indices(len(cuts), 1)
    labels = np.asarray(speakers)
    same = (labels[:, None] == labels[None, :])[upper]
    scores = (emb @ emb.T)[upper]
    assert scores[same].mean() > scores[~same].mean() + 0.3
    eer, _ = equal_error_rate(scores, same)
    assert eer < max_eer


def test_too_few_frames_refused(embedder: SpeakerEmbeddingModel) -> None:
    with pytest.raises(ValueError, match="frames>=3"):
        embedder.embed(np.zeros((1, 2, 80), np.float32))


def test_channels_first_and_last_builds_agree(model_paths: ModelPaths, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import onnx

    from diarflow.provisioning.campplus_onnx import build_campplus_onnx
    from diarflow.provisioning.torch_zip import load_state_dict

    weights = load_state_dict(model_paths.campplus.parent / "campplus_cn_en_common.pt")
    onnx.save(build_campplus_onnx(weights, channels_last=False), str(tmp_path / "first.onnx"))
    first = SpeakerEmbeddingModel(tmp_path / "first.onnx")
    last = SpeakerEmbeddingModel(model_paths.campplus)
    feats = np.random.default_rng(3).standard_normal((3, 260, 80)).astype(np.float32)  # 3 pooling segments
    np.testing.assert_allclose(first.embed(feats), last.embed(feats), atol=2e-4)


def test_pooling_all_frames_equals_the_embedding(embedder: SpeakerEmbeddingModel) -> None:
    """``embedding = [mean, std](frames) @ W + b``: pooling a whole pass reproduces the model's output."""
    for frames in (3, 150, 233):
        feats = np.random.default_rng(frames).standard_normal((frames, 80)).astype(np.float32)
        features = embedder.frame_features(feats)
        assert features.shape == ((frames + 1) // 2, 512)
        pooled = embedder.pool(features, np.array([[0, len(features)]]))[0]
        np.testing.assert_allclose(pooled, embedder.embed(feats[None])[0], atol=1e-4)


def test_pooled_windows_match_window_passes_on_speech(embedder: SpeakerEmbeddingModel,
                                                      speech_clips: dict[str, DevItem]) -> None:
    """Windows pooled from one pass over 2 s pieces stay close to passes over each window alone, and
    still tell two speakers apart (the approximation the offline shared passes rely on)."""
    fbank = Fbank()
    cuts, speakers = speaker_cuts([i for i in speech_clips.values() if i.variant == "clean"], 3.0,
                                    max_per_speaker=4)  # 9 speakers, two of them twice
    assert len(set(speakers)) >= 3
    pooled, alone = [], []
    for samples in cuts:  # 3 s of one speaker each
        feats = fbank.compute(samples)  # (frames, 80)
        half = len(feats) // 2 // 2 * 2
        pieces = [feats[:half], feats[half:]]
        frames = np.concatenate([embedder.frame_features(p - p.mean(axis=0)) for p in pieces])
        window = fbank.config.num_frames(24_000)  # a 1.5 s window straddling the two pieces
        f0 = half - window // 2 // 2 * 2
        pooled.append(embedder.pool(frames, np.array([[f0 // 2, (f0 + window + 1) // 2]]))[0])
        alone.append(embedder.embed(fbank.compute_normalised(samples[f0 * 160: f0 * 160 + 24_000])[None])[0])
    agreement = [_cosine(a, b) for a, b in zip(pooled, alone)]
    assert np.median(agreement) > 0.85, agreement
    same = [_cosine(pooled[i], pooled[j]) for i in range(len(cuts)) for j in range(i) if speakers[i] == speakers[j]]
    other = [_cosine(pooled[i], pooled[j]) for i in range(len(cuts)) for j in range(i) if speakers[i] != speakers[j]]
    assert np.mean(same) > np.mean(other) + 0.2


def test_pooling_refuses_bad_ranges(embedder: SpeakerEmbeddingModel) -> None:
    features = embedder.frame_features(np.zeros((20, 80), np.float32))
    for bad in ([[0, 1]], [[-1, 5]], [[0, 11]]):
        with pytest.raises(ValueError, match="ranges"):
            embedder.pool(features, np.array(bad))
