"""Split Silero VAD into a batched encoder and a sequence recurrence, exact to float rounding.

The shipped ONNX file runs one 32 ms window per call: a short-time Fourier transform and four
convolutions (the encoder, stateless), then an LSTM cell carrying the state and a 1x1 convolution
with a sigmoid (the decoder). Called window by window, the fixed cost of each call dominates. Split:

- ``encoder``: ``input [windows, 576]`` (64 samples of context + the 512-sample window) ->
  ``features [windows, 128]``; any number of windows in one call, from any streams;
- ``recurrence``: ``features [steps, 1, 128]`` with ``h0, c0 [1, 1, 128]`` -> ``probability [steps]``,
  ``h [1, 1, 128]``, ``c [1, 1, 128]``; one ONNX ``LSTM`` over the whole sequence, then the decoder.

The encoder nodes are taken verbatim from the 16 kHz branch of the file; the recurrence is rebuilt from
the file's LSTM-cell and decoder weights (PyTorch gate order i, f, g, o becomes ONNX's i, o, f, c).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["split_silero_vad", "ENCODER_OUTPUT_CHANNELS"]

ENCODER_OUTPUT_CHANNELS = 128
_ENCODER_OUTPUT = "/encoder/3/activation/Relu_output_0"  # suffix of the last encoder node's output
_WEIGHTS = ("decoder.rnn.weight_ih", "decoder.rnn.weight_hh", "decoder.rnn.bias_ih", "decoder.rnn.bias_hh",
            "decoder.decoder.2.weight", "decoder.decoder.2.bias")


def _branch_16k(model: object) -> object:
    """The graph of the ``sr == 16000`` branch (the file switches on the sample rate input)."""
    graph = model.graph  # type: ignore[attr-defined]
    nodes = [n for n in graph.node if n.op_type == "If"]
    if len(nodes) != 1:
        raise ValueError("unexpected Silero VAD graph: expected one top-level If on the sample rate")
    return next(a.g for a in nodes[0].attribute if a.name == "then_branch")


def split_silero_vad(path: Path | str) -> tuple[bytes, bytes]:
    """Serialized ``(encoder, recurrence)`` ONNX models built from the Silero VAD v5/v6 file at ``path``.

    Raises
    ------
    ValueError
        The file is not the expected Silero graph (a missing encoder output or decoder weight).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    branch = _branch_16k(model)
    initializers = {t.name: t for t in list(model.graph.initializer) + list(branch.initializer)}  # type: ignore[attr-defined]
    for node in branch.node:  # type: ignore[attr-defined]  # the export stores weights as Constant nodes
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                initializers[node.output[0]] = value
    # --- encoder: every node up to the last encoder activation, in the file's (topological) order
    encoder_nodes = []
    output = None
    for node in branch.node:  # type: ignore[attr-defined]
        encoder_nodes.append(node)
        if any(o.endswith(_ENCODER_OUTPUT) for o in node.output):
            output = next(o for o in node.output if o.endswith(_ENCODER_OUTPUT))
            break
    if output is None:
        raise ValueError(f"unexpected Silero VAD graph: no node output ending in {_ENCODER_OUTPUT}")
    used = {i for n in encoder_nodes for i in n.input}
    squeezed = helper.make_node("Squeeze", [output, "squeeze_axis"], ["features"])
    encoder = helper.make_graph(
        encoder_nodes + [squeezed], "silero_encoder",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["windows", 576])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["windows", ENCODER_OUTPUT_CHANNELS])],
        initializer=[numpy_helper.from_array(numpy_helper.to_array(t), name) for name, t in initializers.items()
                     if name in used and not any(name in n.output for n in encoder_nodes)]
        + [numpy_helper.from_array(np.array([2], np.int64), "squeeze_axis")],
    )
    # --- recurrence: the LSTM cell over a whole sequence, then ReLU, 1x1 conv and sigmoid per step
    weights = {}
    for key in _WEIGHTS:
        name = next((n for n in initializers if n.endswith(key)), None)
        if name is None:
            raise ValueError(f"unexpected Silero VAD graph: no weight named like {key!r}")
        weights[key] = numpy_helper.to_array(initializers[name]).astype(np.float32)
    hidden = weights["decoder.rnn.weight_hh"].shape[1]

    def onnx_gates(matrix: np.ndarray) -> np.ndarray:  # PyTorch (i, f, g, o) -> ONNX (i, o, f, c)
        i, f, g, o = np.split(matrix, 4, axis=0)
        return np.concatenate([i, o, f, g], axis=0)

    w = onnx_gates(weights["decoder.rnn.weight_ih"])[None]  # (1, 4H, 128)
    r = onnx_gates(weights["decoder.rnn.weight_hh"])[None]  # (1, 4H, H)
    b = np.concatenate([onnx_gates(weights["decoder.rnn.bias_ih"]), onnx_gates(weights["decoder.rnn.bias_hh"])])[None]
    decoder_w = weights["decoder.decoder.2.weight"].reshape(1, hidden).T.copy()  # (H, 1)
    decoder_b = weights["decoder.decoder.2.bias"].reshape(1)
    nodes = [
        helper.make_node("LSTM", ["features", "W", "R", "B", "", "h0", "c0"], ["y", "h", "c"], hidden_size=hidden),
        helper.make_node("Squeeze", ["y", "y_axes"], ["y_steps"]),  # (steps, 1, H)
        helper.make_node("Relu", ["y_steps"], ["y_relu"]),
        helper.make_node("MatMul", ["y_relu", "decoder_w"], ["logit_no_bias"]),  # (steps, 1, 1)
        helper.make_node("Add", ["logit_no_bias", "decoder_b"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["sigmoid"]),
        helper.make_node("Reshape", ["sigmoid", "flat"], ["probability"]),
    ]
    consts = {"W": w, "R": r, "B": b.astype(np.float32), "decoder_w": decoder_w, "decoder_b": decoder_b,
              "y_axes": np.array([1], np.int64), "flat": np.array([-1], np.int64)}
    recurrence = helper.make_graph(
        nodes, "silero_recurrence",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["steps", 1, ENCODER_OUTPUT_CHANNELS]),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 1, hidden]),
         helper.make_tensor_value_info("c0", TensorProto.FLOAT, [1, 1, hidden])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["steps"]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 1, hidden]),
         helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 1, hidden])],
        initializer=[numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    out = []
    for graph in (encoder, recurrence):
        built = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="diarflow")
        built.ir_version = model.ir_version
        onnx.checker.check_model(built)
        out.append(built.SerializeToString())
    return out[0], out[1]
