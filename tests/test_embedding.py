"""The live embedder's early last window: logic with a scripted CAM++ stand-in (the real model on real
speech runs in the conformance suite and the end-to-end tests)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from diarflow.operators.embedding import EmbeddingExtractorConfig
from diarflow.operators.messages import PcmFrame, SpeechPause, SpeechRegion, SpeechStart, UtteranceEmbeddings

FRAME = 3200  # 200 ms, as the live endpoint pushes


class _ScriptedEmbedder:
    """Embeds a window as its mean filterbank frame (tiled to 192 values); counts the windows it embeds."""

    def __init__(self) -> None:
        self.windows = 0

    def embed_many(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        self.windows += sum(len(b) for b in batches)
        return [np.tile(b.mean(axis=1), 3)[:, :192] + 1.0 for b in batches]


class _Resources:
    def __init__(self) -> None:
        self.embedder = _ScriptedEmbedder()


def _run(audio: np.ndarray, events: dict[int, list[Any]]) -> tuple[list[UtteranceEmbeddings], list[int]]:
    """Push ``audio`` in 200 ms frames, each followed by the VAD messages ``events[frame index]`` and a
    watermark, as the graph delivers them. Returns the embeddings and the windows embedded per frame."""
    resources = _Resources()
    embedder = EmbeddingExtractorConfig().build(None, resources)
    out: list[UtteranceEmbeddings] = []
    per_frame = []
    for k, lo in enumerate(range(0, len(audio), FRAME)):
        before = resources.embedder.windows
        out += embedder.on_item(PcmFrame(lo, audio[lo:lo + FRAME]))
        for message in events.get(k, []):
            out += embedder.on_item(message)
        out += embedder.on_watermark(lo + FRAME)
        per_frame.append(resources.embedder.windows - before)
    out += embedder.on_eof()
    return out, per_frame


def _same(got: UtteranceEmbeddings, want: UtteranceEmbeddings) -> None:
    assert got.region == want.region
    assert [(w.start_sample, w.end_sample) for w in got.windows] == [(w.start_sample, w.end_sample)
                                                                     for w in want.windows]
    np.testing.assert_allclose(np.stack([w.vector for w in got.windows]),
                               np.stack([w.vector for w in want.windows]), atol=1e-6)


def test_a_pause_that_closes_the_utterance_leaves_nothing_to_embed_at_the_close() -> None:
    audio = np.random.default_rng(0).normal(0, 0.1, 16000 * 5).astype(np.float32)
    region = SpeechRegion(0, 40_000)  # 2.5 s: windows (0, 24000), (12000, 36000) and the last (16000, 40000)
    plain, plain_work = _run(audio, {0: [SpeechStart(0)], 13: [region]})
    early, early_work = _run(audio, {0: [SpeechStart(0)], 12: [SpeechPause(0, 40_000)], 13: [region]})
    assert plain_work[13] >= 1 and early_work[13] == 0  # the close no longer waits for the model
    assert sum(early_work) == sum(plain_work)  # the same windows, embedded one frame earlier
    assert len(plain) == len(early) == 1
    _same(early[0], plain[0])


def test_speech_that_resumes_after_a_pause_keeps_the_windows_of_the_real_close() -> None:
    audio = np.random.default_rng(1).normal(0, 0.1, 16000 * 6).astype(np.float32)
    region = SpeechRegion(0, 60_000)
    plain, _ = _run(audio, {0: [SpeechStart(0)], 19: [region]})
    resumed, work = _run(audio, {0: [SpeechStart(0)], 12: [SpeechPause(0, 40_000)], 19: [region]})
    assert work[12] >= 1  # the early window was embedded ...
    assert len(resumed) == 1
    _same(resumed[0], plain[0])  # ... and never emitted: only the close's own windows are


def test_a_pause_waits_for_its_audio_and_survives_a_checkpoint() -> None:
    audio = np.random.default_rng(2).normal(0, 0.1, 16000 * 5).astype(np.float32)
    resources = _Resources()
    config = EmbeddingExtractorConfig()
    embedder = config.build(None, resources)
    embedder.on_item(SpeechStart(0))
    embedder.on_item(PcmFrame(0, audio[:38_400]))
    embedder.on_item(SpeechPause(0, 40_000))  # its last window ends past the audio held
    embedder.on_watermark(38_400)
    done = resources.embedder.windows
    embedder = config.build(embedder.checkpoint(), resources)  # the pause is part of the state
    embedder.on_item(PcmFrame(38_400, audio[38_400:41_600]))
    embedder.on_watermark(41_600)
    assert resources.embedder.windows > done  # now the audio covers it: embedded before the close
    embedded = resources.embedder.windows
    embedder.on_item(SpeechRegion(0, 40_000))
    (out,) = embedder.on_watermark(41_600 + 1)
    assert resources.embedder.windows == embedded and out.windows[-1].end_sample == 40_000
