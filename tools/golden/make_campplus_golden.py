#!/usr/bin/env python3
"""Produce golden CAM++ speaker embeddings with PyTorch.

Throwaway tool: it runs in a separate virtualenv that has torch installed
(see README.md next to this file). torch is NOT a dependency of diarflow;
the resulting ``tests/data/campplus_golden.npz`` lets the torch-free ONNX
rebuild of CAM++ be checked against a straightforward PyTorch forward pass.

Usage:
    python make_campplus_golden.py /path/to/campplus_cn_en_common.pt [out.npz]

The network below is written from the published CAM++ architecture
description (3D-Speaker, speech_campplus_sv_zh_en_16k-common_advanced);
module names follow the checkpoint's keys so that ``load_state_dict`` can
run with ``strict=True``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[2]
AUDIO = REPO_ROOT.parent / "shared" / "eval" / "dev" / "dev01.flac"
RTTM = AUDIO.with_suffix(".rttm")
DEFAULT_OUT = REPO_ROOT / "tests" / "data" / "campplus_golden.npz"

SAMPLE_RATE = 16000
BN_EPS = 1e-5

# Cuts saved in the golden file: (start seconds, duration seconds).
# Each lies inside a single-speaker, non-overlapped stretch of dev01.rttm
# (checked at run time); two per speaker so the sanity check is meaningful.
SAVED_CUTS = [
    (45.45, 1.5),   # LS2033, region 45.42-47.04
    (13.40, 2.03),  # LS2033, region 13.16-15.75
    (0.35, 3.0),    # LS3080, region  0.32- 3.39
    (88.90, 4.2),   # LS3080, region 88.84-93.72
]
# Extra cuts only used for the printed similarity matrix (not saved).
EXTRA_CUTS = [
    (52.40, 3.0),   # LS2033, region 52.37-55.57
    (65.50, 2.0),   # LS2033, region 65.39-67.73
    (94.20, 4.2),   # LS3080, region 94.10-99.01
    (10.40, 2.0),   # LS3080, region 10.30-12.82
]


# --------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------


class BNReLU(nn.Module):
    """BatchNorm1d followed by ReLU; registered as ``<name>.batchnorm``."""

    def __init__(self, channels: int, affine: bool = True, relu: bool = True):
        super().__init__()
        self.batchnorm = nn.BatchNorm1d(channels, eps=BN_EPS, affine=affine)
        self.use_relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.batchnorm(x)
        return F.relu(x) if self.use_relu else x


class ResBlock2d(nn.Module):
    """Basic 2-D residual block; the stride acts on the frequency axis only."""

    def __init__(self, channels: int, freq_stride: int):
        super().__init__()
        stride = (freq_stride, 1)
        self.conv1 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)
        if freq_stride != 1:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels, eps=BN_EPS),
            )
        else:
            self.shortcut = nn.Sequential()  # identity, no parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class FCMHead(nn.Module):
    """2-D convolutional front end: [B,1,80,T] -> [B,320,T]."""

    def __init__(self, channels: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.layer1 = nn.Sequential(ResBlock2d(channels, 2), ResBlock2d(channels, 1))
        self.layer2 = nn.Sequential(ResBlock2d(channels, 2), ResBlock2d(channels, 1))
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.layer1(y)
        y = self.layer2(y)
        y = F.relu(self.bn2(self.conv2(y)))
        b, c, f, t = y.shape
        return y.reshape(b, c * f, t)  # channel-major: index = c * F + f


class FirstTDNN(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.linear = nn.Conv1d(in_ch, out_ch, 5, stride=2, padding=2, bias=False)
        self.nonlinear = BNReLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


def segment_pool(y: torch.Tensor, seg: int = 100) -> torch.Tensor:
    """Average over consecutive segments of ``seg`` frames, broadcast back.

    The last (partial) segment averages only the frames it really has.
    """
    t = y.shape[-1]
    pooled = F.avg_pool1d(y, kernel_size=seg, stride=seg, ceil_mode=True)
    expanded = pooled.repeat_interleave(seg, dim=-1)
    return expanded[..., :t]


def segment_pool_reference(y: torch.Tensor, seg: int = 100) -> torch.Tensor:
    """Loop version of :func:`segment_pool`, used as a self-check."""
    out = torch.empty_like(y)
    t = y.shape[-1]
    for s in range(0, t, seg):
        e = min(s + seg, t)
        out[..., s:e] = y[..., s:e].mean(dim=-1, keepdim=True)
    return out


class CAMLayer(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, dilation: int):
        super().__init__()
        self.linear_local = nn.Conv1d(
            in_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=False
        )
        self.linear1 = nn.Conv1d(in_ch, in_ch // 2, 1, bias=True)
        self.linear2 = nn.Conv1d(in_ch // 2, out_ch, 1, bias=True)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        local = self.linear_local(y)
        context = y.mean(dim=-1, keepdim=True) + segment_pool(y)
        mask = torch.sigmoid(self.linear2(F.relu(self.linear1(context))))
        return local * mask


class DenseTDNNLayer(nn.Module):
    def __init__(self, in_ch: int, growth: int, bottleneck: int, dilation: int):
        super().__init__()
        self.nonlinear1 = BNReLU(in_ch)
        self.linear1 = nn.Conv1d(in_ch, bottleneck, 1, bias=False)
        self.nonlinear2 = BNReLU(bottleneck)
        self.cam_layer = CAMLayer(bottleneck, growth, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear1(self.nonlinear1(x))
        return self.cam_layer(self.nonlinear2(y))


class DenseBlock(nn.Module):
    def __init__(self, num_layers: int, in_ch: int, growth: int, bottleneck: int, dilation: int):
        super().__init__()
        self.num_layers = num_layers
        for i in range(num_layers):
            layer = DenseTDNNLayer(in_ch + i * growth, growth, bottleneck, dilation)
            self.add_module(f"tdnnd{i + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_layers):
            new = getattr(self, f"tdnnd{i + 1}")(x)
            x = torch.cat([x, new], dim=1)
        return x


class Transit(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.nonlinear = BNReLU(in_ch)
        self.linear = nn.Conv1d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class EmbeddingDense(nn.Module):
    """1x1 conv then BatchNorm without affine parameters; no ReLU."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.linear = nn.Conv1d(in_ch, out_ch, 1, bias=False)
        self.nonlinear = BNReLU(out_ch, affine=False, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C] -> [B, C, 1] for the conv/BN, back to [B, out]
        return self.nonlinear(self.linear(x.unsqueeze(-1))).squeeze(-1)


class XVector(nn.Module):
    def __init__(
        self,
        in_ch: int = 320,
        init_ch: int = 128,
        growth: int = 32,
        bottleneck: int = 128,
        emb_dim: int = 192,
        blocks=((12, 1), (24, 2), (16, 2)),
    ):
        super().__init__()
        self.tdnn = FirstTDNN(in_ch, init_ch)
        ch = init_ch
        self.num_blocks = len(blocks)
        for i, (n, d) in enumerate(blocks, start=1):
            self.add_module(f"block{i}", DenseBlock(n, ch, growth, bottleneck, d))
            ch = ch + n * growth
            self.add_module(f"transit{i}", Transit(ch, ch // 2))
            ch = ch // 2
        self.out_nonlinear = BNReLU(ch)
        self.dense = EmbeddingDense(ch * 2, emb_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tdnn(x)
        for i in range(1, self.num_blocks + 1):
            x = getattr(self, f"block{i}")(x)
            x = getattr(self, f"transit{i}")(x)
        x = self.out_nonlinear(x)
        mean = x.mean(dim=-1)
        std = x.std(dim=-1, unbiased=True)
        return self.dense(torch.cat([mean, std], dim=1))


class CAMPPlus(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = FCMHead(32)
        self.xvector = XVector()

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        # feats: [B, T, 80]
        x = feats.permute(0, 2, 1).unsqueeze(1)  # [B, 1, 80, T]
        return self.xvector(self.head(x))


# --------------------------------------------------------------------------
# Features and data
# --------------------------------------------------------------------------


def kaldi_fbank(samples: np.ndarray) -> np.ndarray:
    """80-dim Kaldi log-mel fbank of float samples in [-1, 1], CMN applied."""
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.frame_opts.dither = 0.0
    opts.frame_opts.frame_length_ms = 25.0
    opts.frame_opts.frame_shift_ms = 10.0
    opts.frame_opts.window_type = "povey"
    opts.frame_opts.preemph_coeff = 0.97
    opts.frame_opts.remove_dc_offset = True
    opts.frame_opts.snip_edges = True
    opts.frame_opts.round_to_power_of_two = True
    opts.mel_opts.num_bins = 80
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0
    opts.mel_opts.is_librosa = False
    opts.use_energy = False
    opts.use_log_fbank = True
    opts.use_power = True

    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(SAMPLE_RATE, samples.astype(np.float32).tolist())
    fb.input_finished()
    n = fb.num_frames_ready
    feats = np.stack([np.asarray(fb.get_frame(i), dtype=np.float32) for i in range(n)])
    expected = 1 + (len(samples) - 400) // 160
    assert feats.shape == (expected, 80), (feats.shape, expected)
    feats = feats - feats.mean(axis=0, keepdims=True)
    return feats.astype(np.float32)


def load_rttm(path: Path):
    turns = []
    for line in path.read_text().splitlines():
        p = line.split()
        if p and p[0] == "SPEAKER":
            start, dur = float(p[3]), float(p[4])
            turns.append((start, start + dur, p[7]))
    return turns


def speaker_of(turns, start: float, end: float) -> str:
    """Single speaker fully covering [start, end] with no other speaker overlapping."""
    covering = {s for a, b, s in turns if a <= start and b >= end}
    overlapping = {s for a, b, s in turns if a < end and b > start}
    if len(covering) != 1 or overlapping != covering:
        raise SystemExit(
            f"cut {start:.2f}-{end:.2f}s is not single-speaker speech: "
            f"covering={covering} overlapping={overlapping}"
        )
    return covering.pop()


def cut(audio: np.ndarray, start: float, dur: float) -> np.ndarray:
    s = int(round(start * SAMPLE_RATE))
    n = int(round(dur * SAMPLE_RATE))
    assert s + n <= len(audio)
    return audio[s : s + n]


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def build_model(ckpt: Path) -> CAMPPlus:
    sd = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    model = CAMPPlus()
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad_shape = sorted(
        k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape)
    )
    if missing or unexpected or bad_shape:
        print("missing:", missing)
        print("unexpected:", unexpected)
        print("shape mismatch:", [(k, own[k].shape, sd[k].shape) for k in bad_shape])
        raise SystemExit("state dict does not match the network")
    model.load_state_dict(sd, strict=True)
    model.eval()
    print(f"checkpoint keys: {len(sd)} (all matched, strict=True)")
    return model


def main(argv) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    if not AUDIO.is_file():
        print(f"make_campplus_golden: skipped, no dev corpus at {AUDIO.parent}")
        return 0
    ckpt = Path(argv[1])
    out = Path(argv[2]) if len(argv) > 2 else DEFAULT_OUT

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, numpy {np.__version__}, "
          f"kaldi_native_fbank {getattr(knf, '__version__', '?')}")

    # self-check of the segment pooling against a plain loop
    probe = torch.randn(2, 5, 257, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(segment_pool(probe), segment_pool_reference(probe), atol=1e-6)

    model = build_model(ckpt)
    n_params = sum(p.numel() for p in model.parameters())
    n_buffers = sum(b.numel() for b in model.buffers())
    print(f"parameters: {n_params:,} (+ {n_buffers:,} buffer elements)")

    audio, sr = sf.read(str(AUDIO), dtype="float32", always_2d=False)
    assert sr == SAMPLE_RATE and audio.ndim == 1, (sr, audio.shape)
    turns = load_rttm(RTTM)

    names, feats_list, speakers = [], [], []
    for start, dur in SAVED_CUTS + EXTRA_CUTS:
        spk = speaker_of(turns, start, start + dur)
        names.append(f"dev01_{start:.2f}s_{dur:.2f}s_{spk}")
        feats_list.append(kaldi_fbank(cut(audio, start, dur)))
        speakers.append(spk)
    n_saved_speech = len(SAVED_CUTS)

    rnd = np.random.default_rng(0).standard_normal((120, 80)).astype(np.float32)

    def embed(f: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            e = model(torch.from_numpy(f).unsqueeze(0))  # [1, frames, 80]
        assert e.shape == (1, 192), e.shape
        return e[0].numpy().astype(np.float32)

    embs = [embed(f) for f in feats_list]
    rnd_emb = embed(rnd)

    # determinism / batch-independence check: a batch of identical-length
    # inputs must give the same rows as running them one at a time.
    with torch.inference_mode():
        b = model(torch.from_numpy(np.stack([feats_list[0], feats_list[0]])))
    assert np.allclose(b[0].numpy(), embs[0], atol=1e-5)

    # ---- sanity check: cosine similarity matrix ----
    E = np.stack(embs)
    U = E / np.linalg.norm(E, axis=1, keepdims=True)
    S = U @ U.T
    short = [f"{n.split('_')[1]}/{n.split('_')[3]}" for n in names]
    print("\ncosine similarity (speech cuts; first %d are saved):" % n_saved_speech)
    print(" " * 16 + " ".join(f"{i:>6d}" for i in range(len(short))))
    for i, row in enumerate(S):
        print(f"{i:2d} {short[i]:>13s} " + " ".join(f"{v:6.3f}" for v in row))
    same = [S[i, j] for i in range(len(E)) for j in range(i + 1, len(E)) if speakers[i] == speakers[j]]
    diff = [S[i, j] for i in range(len(E)) for j in range(i + 1, len(E)) if speakers[i] != speakers[j]]
    print(f"same-speaker mean cos {np.mean(same):.3f} (min {np.min(same):.3f}); "
          f"different-speaker mean cos {np.mean(diff):.3f} (max {np.max(diff):.3f})")
    if not np.mean(same) > np.mean(diff):
        raise SystemExit("sanity check failed: same-speaker similarity not higher")

    # ---- save ----
    saved_names = names[:n_saved_speech] + ["random_normal_seed0_120x80"]
    saved_feats = feats_list[:n_saved_speech] + [rnd]
    saved_embs = embs[:n_saved_speech] + [rnd_emb]
    arrays = {"names": np.array(saved_names)}
    for i, (f, e) in enumerate(zip(saved_feats, saved_embs)):
        arrays[f"feats_{i}"] = np.ascontiguousarray(f, dtype=np.float32)
        arrays[f"emb_{i}"] = np.ascontiguousarray(e, dtype=np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)

    print("\nsaved:")
    for i, (n, f, e) in enumerate(zip(saved_names, saved_feats, saved_embs)):
        print(f"  [{i}] {n:32s} feats {str(f.shape):10s} |emb| = {np.linalg.norm(e):.4f}")
    print(f"wrote {out} ({out.stat().st_size / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
