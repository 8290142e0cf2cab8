"""Benchmark of the foundation: model build time and size, CAM++ throughput on one thread, dev-set EER.

Run with ``make bench`` (or ``python -m tools.bench_embeddings``); prints numbers, asserts nothing.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from diarflow.testing.evaluation import equal_error_rate, load_dev_items, speaker_cuts
from diarflow.provisioning import default_model_dir, verify_models
from diarflow.provisioning.campplus_onnx import build_campplus_onnx
from diarflow.provisioning.torch_zip import load_state_dict
from diarflow.operators.fbank import Fbank
from diarflow.operators.models import SpeakerEmbeddingModel
from diarflow.operators.constants import SAMPLE_RATE
from tools import exit_without_dev_corpus


def bench_build(model_dir: Path) -> None:
    import onnx

    started = time.perf_counter()
    weights = load_state_dict(model_dir / "campplus_cn_en_common.pt")
    loaded = time.perf_counter()
    model = build_campplus_onnx(weights)
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(model, f"{tmp}/m.onnx")
        built = time.perf_counter()
    print(f"CAM++ .pt read without torch: {loaded - started:.2f} s; ONNX build + save: {built - loaded:.2f} s")
    for status in verify_models(model_dir):
        print(f"  {status.spec.filename:<28} {status.size_bytes or 0:>11,d} bytes  sha256 {status.sha256}")


def bench_throughput(model: SpeakerEmbeddingModel, fbank: Fbank) -> None:
    rng = np.random.default_rng(0)
    print("CAM++ throughput, 1 intra-op thread (fbank included):")
    for window_s in (1.5, 3.0, 10.0):
        audio = (0.1 * rng.standard_normal(int(window_s * SAMPLE_RATE))).astype(np.float32)
        for batch in (1, 16):
            feats = np.stack([fbank.compute_normalised(audio)] * batch)
            model.embed(feats)  # warm-up
            repeats = max(2, int(24 / (window_s * batch)))
            started = time.perf_counter()
            for _ in range(repeats):
                feats = np.stack([fbank.compute_normalised(audio) for _ in range(batch)])
                model.embed(feats)
            elapsed = time.perf_counter() - started
            rate = repeats * batch / elapsed
            print(f"  {window_s:4.1f} s windows, batch {batch:2d}: {rate:7.1f} embeddings/s "
                  f"({rate * window_s:7.0f} s of audio per s)")


def bench_eer(model: SpeakerEmbeddingModel, fbank: Fbank) -> None:
    items = load_dev_items()
    print("Speaker verification on dev single-speaker cuts (all pairs, cosine):")
    for cut_s in (1.5, 3.0):
        cuts, speakers = speaker_cuts(items, cut_s)
        feats = np.stack([fbank.compute_normalised(c) for c in cuts])
        emb = np.concatenate([model.embed(feats[i:i + 32]) for i in range(0, len(feats), 32)])
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        upper = np.triu_indices(len(cuts), 1)
        labels = np.asarray(speakers)
        same = (labels[:, None] == labels[None, :])[upper]
        scores = (emb @ emb.T)[upper]
        eer, threshold = equal_error_rate(scores, same)
        print(f"  {cut_s:.1f} s cuts: {len(cuts)} cuts of {len(set(speakers))} speakers, "
              f"{same.sum()} target / {(~same).sum()} non-target trials: EER {eer * 100:.2f} % "
              f"at cosine {threshold:.3f}; mean cosine same {scores[same].mean():.3f}, "
              f"different {scores[~same].mean():.3f}")


def main() -> None:
    exit_without_dev_corpus("bench_embeddings")
    model_dir = default_model_dir()
    bench_build(model_dir)
    model = SpeakerEmbeddingModel(model_dir / "campplus.onnx", intra_op_threads=1)
    fbank = Fbank()
    bench_throughput(model, fbank)
    bench_eer(model, fbank)


if __name__ == "__main__":
    main()
