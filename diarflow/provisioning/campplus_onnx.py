"""Build the CAM++ speaker-embedding network as an ONNX graph from NumPy weights (no torch).

The network is the original 3D-Speaker CAM++ (``speech_campplus_sv_zh_en_16k-common_advanced``):
a 2-D convolutional front end (FCM) followed by a densely connected TDNN with context-aware masking,
statistics pooling and a dense layer ending in a non-affine BatchNorm (no final ReLU).

Inference-time rewrites, all exact up to float rounding:

- every BatchNorm that directly follows a convolution is folded into that convolution;
- the BatchNorm + ReLU that *precede* a 1x1 convolution (dense-TDNN and transit layers) cannot be
  folded across the ReLU; they stay as one ``BatchNormalization`` node with its statistics folded in;
- the context-aware mask is computed once per 100-frame segment instead of once per frame: its input
  (utterance mean + segment mean) is constant inside a segment and the two 1x1 convolutions, ReLU and
  sigmoid act frame by frame, so the mask is evaluated on ``[B, C, segments]`` and gathered back to frames;
- the final dense layer and its BatchNorm become one ``Gemm``;
- the dense TDNN runs channels-last with MatMuls: a dilated kernel-3 convolution is one MatMul to its
  three taps' outputs, shifted and summed; each layer's context (segment + utterance mean) is one
  MatMul with a ``(segments, frames)`` weight matrix built once per call; the scale of a BatchNorm
  before a ReLU is folded into the next linear layer when it is positive (``relu(s x + b) =
  s relu(x + b / s)``). Fewer, larger ops: a call costs less fixed overhead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from diarflow.operators.constants import EMBEDDING_DIM

from .registry import CAMPPLUS_BUILDER_VERSION

__all__ = ["build_campplus_onnx", "NUM_MEL_BINS", "POOLED_CHANNELS", "BUILDER_VERSION"]

NUM_MEL_BINS = 80
POOLED_CHANNELS = 512
BUILDER_VERSION = CAMPPLUS_BUILDER_VERSION
_BN_EPS = 1e-5
_SEGMENT_FRAMES = 100
_OPSET = 17
_DENSE_BLOCKS = (("block1", 12, 1), ("block2", 24, 2), ("block3", 16, 2))


class _GraphBuilder:
    """Accumulates nodes and initialisers with unique names."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self.used: set[str] = set()

    def w(self, key: str) -> np.ndarray:
        try:
            value = self.weights[key]
        except KeyError:
            raise KeyError(f"CAM++ checkpoint lacks parameter {key!r}") from None
        self.used.add(key)
        return value.astype(np.float64)

    def const(self, value: np.ndarray | list[int] | int, dtype: Any = np.float32) -> str:
        self._count += 1
        name = f"c{self._count}"
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        self._count += 1
        out = f"{op_type.lower()}{self._count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def bn_affine(self, prefix: str) -> tuple[np.ndarray, np.ndarray]:
        """Return (scale, shift) of an inference BatchNorm: ``y = x * scale + shift``."""
        inv_std = 1.0 / np.sqrt(self.w(f"{prefix}.running_var") + _BN_EPS)
        mean = self.w(f"{prefix}.running_mean")
        gamma_key, beta_key = f"{prefix}.weight", f"{prefix}.bias"
        gamma = self.w(gamma_key) if gamma_key in self.weights else np.ones_like(mean)
        beta = self.w(beta_key) if beta_key in self.weights else np.zeros_like(mean)
        self.used.add(f"{prefix}.num_batches_tracked")
        scale = gamma * inv_std
        return scale, beta - mean * scale

    def conv_bn(self, x: str, conv_key: str, bn_prefix: str | None, **attrs: Any) -> str:
        """Convolution (1-D or 2-D, no bias in the checkpoint) with an optional folded BatchNorm."""
        weight = self.w(conv_key)
        bias = np.zeros(weight.shape[0])
        if bn_prefix is not None:
            scale, shift = self.bn_affine(bn_prefix)
            weight = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
            bias = shift
        return self.op("Conv", [x, self.const(weight), self.const(bias)], **attrs)

    def bn_relu(self, x: str, bn_prefix: str) -> str:
        """Inference BatchNorm then ReLU on ``(B, C, T)``: one ``BatchNormalization`` node, stats folded."""
        scale, shift = self.bn_affine(bn_prefix)
        channels = len(scale)
        y = self.op("BatchNormalization", [x, self.const(scale), self.const(shift),
                                           self.const(np.zeros(channels)), self.const(np.ones(channels))],
                    epsilon=0.0)
        return self.op("Relu", [y])


def _affine_relu_btc(g: _GraphBuilder, x: str, bn_prefix: str, fold_scale: bool = False) -> tuple[str, np.ndarray | None]:
    """Inference BatchNorm + ReLU on ``(B, T, C)`` (channels last).

    With ``fold_scale`` and every scale positive, ``relu(x * s + b) = s * relu(x + b / s)``: the node
    computes ``relu(x + b / s)`` and returns ``s`` for the caller to fold into the next linear layer
    (one pass over the growing dense-block input saved). Otherwise returns ``None`` as the scale.
    """
    scale, shift = g.bn_affine(bn_prefix)
    if fold_scale and bool((scale > 0).all()):
        return g.op("Relu", [g.op("Add", [x, g.const(shift / scale)])]), scale
    return g.op("Relu", [g.op("Add", [g.op("Mul", [x, g.const(scale)]), g.const(shift)])]), None


def _linear_btc(g: _GraphBuilder, x: str, weight: np.ndarray, bias: np.ndarray | None,
                bn_prefix: str | None = None, input_scale: np.ndarray | None = None) -> str:
    """``(x * input_scale) @ W.T (+ bias)`` on ``(B, T, C_in)`` with ``weight (C_out, C_in)``; a
    following BN and the optional per-input-channel scale are folded into the weights."""
    if input_scale is not None:
        weight = weight * input_scale[None, :]
    if bn_prefix is not None:
        scale, shift = g.bn_affine(bn_prefix)
        weight = weight * scale[:, None]
        bias = shift + (scale * bias if bias is not None else 0.0)
    y = g.op("MatMul", [x, g.const(np.ascontiguousarray(weight.T))])
    return g.op("Add", [y, g.const(bias)]) if bias is not None else y


def _context_weights(g: _GraphBuilder, num_frames: str, segment_of_frame: str) -> str:
    """``(S, T')`` weights with ``weights @ x = segment mean + utterance mean`` for ``x (B, T', C)``:
    the CAM context of every layer in one MatMul (instead of pooling, transposes and a reduction)."""
    frames = g.op("Cast", [num_frames], to=TensorProto.FLOAT)  # (1,)
    segments = g.op("Div", [g.op("Add", [num_frames, g.const([_SEGMENT_FRAMES - 1], np.int64)]),
                            g.const(_SEGMENT_FRAMES, np.int64)])  # (1,) = ceil(T' / 100)
    segment_index = g.op("Range", [g.const(0, np.int64), g.op("Squeeze", [segments]), g.const(1, np.int64)])
    member = g.op("Cast", [g.op("Equal", [g.op("Unsqueeze", [segment_index, g.const([1], np.int64)]),
                                           g.op("Unsqueeze", [segment_of_frame, g.const([0], np.int64)])])],
                  to=TensorProto.FLOAT)  # (S, T'): 1 where frame t lies in segment s
    counts = g.op("ReduceSum", [member, g.const([1], np.int64)], keepdims=1)  # (S, 1); the last may be partial
    return g.op("Add", [g.op("Div", [member, counts]), g.op("Reciprocal", [frames])])


def _cam_layer_btc(g: _GraphBuilder, x: str, prefix: str, dilation: int, segment_of_frame: str,
                   context_weights: str) -> str:
    """:func:`_cam_layer` with channels last. The dilated kernel-3 convolution is one MatMul to the
    three taps' outputs side by side, ``[y0 | y1 | y2]`` with ``yk = x @ Wk.T``, then shifted and
    summed: ``local(t) = y0(t - d) + y1(t) + y2(t + d)`` (zero outside the input). Shifting the
    32-channel outputs moves far less memory than stacking shifted copies of the 128-channel input."""
    d = dilation
    kernel = g.w(f"{prefix}.linear_local.weight")  # (C_out, C_in, 3)
    growth = kernel.shape[0]
    taps = _linear_btc(g, x, np.concatenate([kernel[:, :, k] for k in range(3)], axis=0), None)  # (B, T, 3 C_out)
    padded = g.op("Pad", [taps, g.const([0, d, 0, 0, d, 0], np.int64)])  # (B, T + 2d, 3 C_out)
    axes = g.const([1, 2], np.int64)
    past = g.op("Slice", [padded, g.const([0, 0], np.int64), g.const([-2 * d, growth], np.int64), axes])
    now = g.op("Slice", [taps, g.const([growth], np.int64), g.const([2 * growth], np.int64), g.const([2], np.int64)])
    future = g.op("Slice", [padded, g.const([2 * d, 2 * growth], np.int64),
                            g.const([np.iinfo(np.int64).max, 3 * growth], np.int64), axes])
    local = g.op("Add", [g.op("Add", [past, now]), future])  # (B, T, C_out)
    context = g.op("MatMul", [context_weights, x])  # (B, S, C): segment mean + utterance mean
    hidden = g.op("Relu", [_linear_btc(g, context, g.w(f"{prefix}.linear1.weight")[:, :, 0],
                                       g.w(f"{prefix}.linear1.bias"))])
    mask = g.op("Sigmoid", [_linear_btc(g, hidden, g.w(f"{prefix}.linear2.weight")[:, :, 0],
                                        g.w(f"{prefix}.linear2.bias"))])  # (B, S, C')
    mask = g.op("Gather", [mask, segment_of_frame], axis=1)  # (B, T, C')
    return g.op("Mul", [local, mask])


def _dense_tdnn_btc(g: _GraphBuilder, x: str, num_frames: str, segment_of_frame: str) -> str:
    """The dense TDNN blocks, transits and output BN+ReLU with channels last; returns (B, T', 512)."""
    context_weights = _context_weights(g, num_frames, segment_of_frame)
    for block, num_layers, dilation in _DENSE_BLOCKS:
        for i in range(1, num_layers + 1):
            prefix = f"xvector.{block}.tdnnd{i}"
            y, scale = _affine_relu_btc(g, x, f"{prefix}.nonlinear1.batchnorm", fold_scale=True)
            y = _linear_btc(g, y, g.w(f"{prefix}.linear1.weight")[:, :, 0], None, f"{prefix}.nonlinear2.batchnorm",
                            input_scale=scale)
            y = _cam_layer_btc(g, g.op("Relu", [y]), f"{prefix}.cam_layer", dilation, segment_of_frame,
                               context_weights)
            x = g.op("Concat", [x, y], axis=2)
        transit = f"xvector.transit{block[-1]}"
        x, scale = _affine_relu_btc(g, x, f"{transit}.nonlinear.batchnorm", fold_scale=True)
        x = _linear_btc(g, x, g.w(f"{transit}.linear.weight")[:, :, 0], None, input_scale=scale)
    return _affine_relu_btc(g, x, "xvector.out_nonlinear.batchnorm")[0]


def _res_block(g: _GraphBuilder, x: str, prefix: str, stride: int) -> str:
    y = g.conv_bn(x, f"{prefix}.conv1.weight", f"{prefix}.bn1", kernel_shape=[3, 3],
                  strides=[stride, 1], pads=[1, 1, 1, 1])
    y = g.op("Relu", [y])
    y = g.conv_bn(y, f"{prefix}.conv2.weight", f"{prefix}.bn2", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    if f"{prefix}.shortcut.0.weight" in g.weights:
        shortcut = g.conv_bn(x, f"{prefix}.shortcut.0.weight", f"{prefix}.shortcut.1",
                             kernel_shape=[1, 1], strides=[stride, 1])
    else:
        shortcut = x
    return g.op("Relu", [g.op("Add", [y, shortcut])])


def _cam_layer(g: _GraphBuilder, x: str, prefix: str, dilation: int, segment_of_frame: str) -> str:
    """Context-aware masking: local conv times a sigmoid mask from utterance + segment context."""
    local = g.conv_bn(x, f"{prefix}.linear_local.weight", None, kernel_shape=[3], pads=[dilation, dilation],
                      dilations=[dilation])
    utterance_mean = g.op("ReduceMean", [x], axes=[2], keepdims=1)  # (B, C, 1)
    segment_mean = g.op("AveragePool", [x], kernel_shape=[_SEGMENT_FRAMES], strides=[_SEGMENT_FRAMES],
                        ceil_mode=1)  # (B, C, S); the last partial segment averages its real frames
    context = g.op("Add", [segment_mean, utterance_mean])
    hidden = g.op("Relu", [g.op("Conv", [context, g.const(g.w(f"{prefix}.linear1.weight")),
                                         g.const(g.w(f"{prefix}.linear1.bias"))])])
    mask = g.op("Sigmoid", [g.op("Conv", [hidden, g.const(g.w(f"{prefix}.linear2.weight")),
                                          g.const(g.w(f"{prefix}.linear2.bias"))])])  # (B, C', S)
    mask = g.op("Gather", [mask, segment_of_frame], axis=2)  # (B, C', T): each frame takes its segment's mask
    return g.op("Mul", [local, mask])


def build_campplus_onnx(weights: dict[str, np.ndarray], channels_last: bool = True) -> onnx.ModelProto:
    """Assemble the CAM++ inference graph.

    Parameters
    ----------
    weights
        The checkpoint's state dict as NumPy arrays (see :func:`diarflow.provisioning.torch_zip.load_state_dict`).
    channels_last
        Build the dense TDNN in ``(B, T, C)`` layout where every 1x1 and dilated convolution is a
        ``MatMul`` (default: ~10 % faster on this CPU than channels-first convolutions, same numbers).
        Per-channel dynamic int8 quantisation of these MatMuls was measured too: cosine 0.997 to fp32
        but only ~2 % faster (the per-call activation quantisation eats the gain), so it is not used.

    Returns
    -------
    onnx.ModelProto
        Input ``fbank``: float32 ``[batch, frames, 80]`` mean-normalised Kaldi log-mel filterbanks
        (at least 3 frames). Outputs:

        - ``embedding``: float32 ``[batch, 192]`` (not length-normalised);
        - ``frames``: float32 ``[batch, ceil(frames / 2), 512]``, the features that statistics pooling
          averages (output frame ``t`` is centred on input frame ``2 t``);
        - ``pooling_weight`` ``[1024, 192]`` and ``pooling_bias`` ``[192]``: constants of the final
          affine layer, ``embedding = [mean, std](frames) @ pooling_weight + pooling_bias``, so that
          callers can pool any range of ``frames`` (several windows from one pass).

    Raises
    ------
    KeyError
        A parameter the architecture needs is missing.
    ValueError
        The checkpoint has parameters this architecture does not use.
    """
    g = _GraphBuilder(weights)
    x = g.op("Transpose", ["fbank"], perm=[0, 2, 1])  # (B, 80, T)
    x = g.op("Unsqueeze", [x, g.const([1], np.int64)])  # (B, 1, 80, T)
    x = g.op("Relu", [g.conv_bn(x, "head.conv1.weight", "head.bn1", kernel_shape=[3, 3], pads=[1, 1, 1, 1])])
    for layer in ("layer1", "layer2"):
        x = _res_block(g, x, f"head.{layer}.0", stride=2)
        x = _res_block(g, x, f"head.{layer}.1", stride=1)
    x = g.conv_bn(x, "head.conv2.weight", "head.bn2", kernel_shape=[3, 3], strides=[2, 1], pads=[1, 1, 1, 1])
    x = g.op("Relu", [x])  # (B, 32, 10, T)
    x = g.op("Reshape", [x, g.const([0, 320, -1], np.int64)])  # (B, 320, T), channel-major

    x = g.conv_bn(x, "xvector.tdnn.linear.weight", "xvector.tdnn.nonlinear.batchnorm", kernel_shape=[5],
                  strides=[2], pads=[2, 2])
    x = g.op("Relu", [x])  # (B, 128, T'), T' = ceil(T / 2)
    shape = g.op("Shape", [x])
    num_frames = g.op("Slice", [shape, g.const([2], np.int64), g.const([3], np.int64), g.const([0], np.int64)])
    frame_index = g.op("Range", [g.const(0, np.int64), g.op("Squeeze", [num_frames]), g.const(1, np.int64)])
    segment_of_frame = g.op("Div", [frame_index, g.const(_SEGMENT_FRAMES, np.int64)])  # (T',) integer division

    time_axis = 1 if channels_last else 2
    if channels_last:
        x = _dense_tdnn_btc(g, g.op("Transpose", [x], perm=[0, 2, 1]), num_frames, segment_of_frame)  # (B, T', 512)
    else:
        for block, num_layers, dilation in _DENSE_BLOCKS:
            for i in range(1, num_layers + 1):
                prefix = f"xvector.{block}.tdnnd{i}"
                y = g.bn_relu(x, f"{prefix}.nonlinear1.batchnorm")
                y = g.conv_bn(y, f"{prefix}.linear1.weight", f"{prefix}.nonlinear2.batchnorm", kernel_shape=[1])
                y = g.op("Relu", [y])
                y = _cam_layer(g, y, f"{prefix}.cam_layer", dilation, segment_of_frame)
                x = g.op("Concat", [x, y], axis=1)
            transit = f"xvector.transit{block[-1]}"
            x = g.bn_relu(x, f"{transit}.nonlinear.batchnorm")
            x = g.conv_bn(x, f"{transit}.linear.weight", None, kernel_shape=[1])
        x = g.bn_relu(x, "xvector.out_nonlinear.batchnorm")  # (B, 512, T')

    # statistics pooling: mean and unbiased standard deviation over frames
    mean = g.op("ReduceMean", [x], axes=[time_axis], keepdims=1)
    centred = g.op("Sub", [x, mean])
    sum_sq = g.op("ReduceSum", [g.op("Mul", [centred, centred]), g.const([time_axis], np.int64)], keepdims=0)
    count = g.op("Cast", [num_frames], to=TensorProto.FLOAT)
    dof = g.op("Sub", [count, g.const(np.array([1.0]))])
    std = g.op("Sqrt", [g.op("Div", [sum_sq, dof])])
    mean = g.op("Squeeze", [mean, g.const([time_axis], np.int64)])
    stats = g.op("Concat", [mean, std], axis=1)  # (B, 1024)

    weight = g.w("xvector.dense.linear.weight")[:, :, 0]  # (192, 1024)
    scale, shift = g.bn_affine("xvector.dense.nonlinear.batchnorm")
    dense_weight, dense_bias = g.const((weight * scale[:, None]).T), g.const(shift)
    g.nodes.append(helper.make_node("Gemm", [stats, dense_weight, dense_bias], ["embedding"]))
    # frame features and the pooling layer, for embeddings of many windows from one pass
    frames = x if channels_last else g.op("Transpose", [x], perm=[0, 2, 1])
    g.nodes.append(helper.make_node("Identity", [frames], ["frames"]))
    g.nodes.append(helper.make_node("Identity", [dense_weight], ["pooling_weight"]))
    g.nodes.append(helper.make_node("Identity", [dense_bias], ["pooling_bias"]))

    unused = sorted(set(weights) - g.used)
    if unused:
        raise ValueError(f"CAM++ checkpoint has parameters the graph does not use: {unused[:5]}")
    graph = helper.make_graph(
        g.nodes, "campplus",
        [helper.make_tensor_value_info("fbank", TensorProto.FLOAT, ["batch", "frames", NUM_MEL_BINS])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", EMBEDDING_DIM]),
         helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["batch", "pooled_frames", POOLED_CHANNELS]),
         helper.make_tensor_value_info("pooling_weight", TensorProto.FLOAT, [2 * POOLED_CHANNELS, EMBEDDING_DIM]),
         helper.make_tensor_value_info("pooling_bias", TensorProto.FLOAT, [EMBEDDING_DIM])],
        initializer=g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)],
                              producer_name="diarflow", producer_version=str(BUILDER_VERSION))
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
