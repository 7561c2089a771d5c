"""Empirical bias correction (Nagel et al., 2019, "Data-free quantization ...", section 4.2, measured
instead of derived).

A quantized linear layer computes  y_hat = W_hat x_hat + b  instead of  y = W x + b. Its error has a
per-output-channel mean over the calibration data

    delta_c = E[y_hat_c - y_c]          (expectation over samples and spatial / token positions)

which later layers and the softmax read as a systematic shift. Subtracting it from the bias,

    b'_c = b_c - delta_c,

removes that mean error while leaving the variance unchanged; the int32 bias absorbs it for free.

Collection (`measure_shift`) and application (`apply_shift`) are separate. Collection measures each
layer's LOCAL error (NNCF's fast bias correction does the same): a quantized copy of the layer reads
the float input, so delta_c excludes error from upstream layers and all layers are corrected from
one pass without overshoot; outputs are reduced to per-channel means one batch at a time.
Application edits biases of the float graph before it is quantized again.

Pattern: Conv / ConvTranspose (bias input 2, created when absent), Gemm with a 1-D bias, and the
bias Add after a MatMul. Check: the layer's output is a float tensor with a known channel axis.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from ..backends import onnxruntime as ort_backend
from ..initializers import add_initializer


def bias_site(node: ir.Node, roles: dict[str, str]) -> tuple[ir.Node, str, int] | None:
    """(node whose output carries the layer result, that output's name, channel axis) or None."""
    if roles.get(node.name) != "compute":
        return None
    if node.op_type in ("Conv", "ConvTranspose"):
        return node, node.outputs[0].name, 1
    if node.op_type == "Gemm":
        if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].const_value is not None \
                and len(node.inputs[2].const_value.shape) != 1:
            return None
        return node, node.outputs[0].name, -1
    if node.op_type == "MatMul":
        uses = node.outputs[0].uses()
        if len(uses) == 1 and roles.get(uses[0].node.name) == "bias-add":
            add = uses[0].node
            return add, add.outputs[0].name, -1
    return None


def shadow_model(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto,
                 sites: dict[str, int]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The float graph plus, for every site, a quantized copy of its layer that reads the FLOAT
    input: its output minus the float output is the layer's own (local) error, independent of the
    error upstream - so every bias is corrected from one run, with no overshoot down the network."""
    producer = {o: n for n in qdq_model.graph.node for o in n.output}
    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    present = {i.name for i in model.graph.initializer}
    model.graph.initializer.extend(i for i in qdq_model.graph.initializer if i.name not in present)
    shadow: dict[str, str] = {}

    def copy(node: onnx.NodeProto, inputs: list[str]) -> onnx.NodeProto:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = node.name + "__shadow"
        del new.input[:]
        new.input.extend(inputs)
        del new.output[:]
        new.output.extend(o + "__shadow" for o in node.output)
        model.graph.node.append(new)
        return new

    copied: dict[str, str] = {}

    def shadow_input(name: str) -> str:
        if name not in copied:
            copied[name] = _shadow_input(name)
        return copied[name]

    def _shadow_input(name: str) -> str:
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            return name
        q = producer.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            q_copy = copy(q, list(q.input))        # reads the float tensor of the float graph
            return copy(dq, [q_copy.output[0]] + list(dq.input[1:])).output[0]
        return copy(dq, list(dq.input)).output[0]  # weight / bias from initializers

    for out in sites:
        node = producer[out]
        if node.op_type == "Add":  # the bias Add of a MatMul: shadow the MatMul first
            mm = next(producer[i] for i in node.input if i in producer and producer[i].op_type == "MatMul")
            mm_copy = copy(mm, [shadow_input(i) for i in mm.input])
            inputs = [mm_copy.output[0] if i == mm.output[0] else shadow_input(i) for i in node.input]
            shadow[out] = copy(node, inputs).output[0]
        else:
            shadow[out] = copy(node, [shadow_input(i) for i in node.input]).output[0]
    return model, shadow


def measure_shift(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, sites: dict[str, int],
                  feeds: dict[str, np.ndarray], batch_size: int = 16) -> dict[str, np.ndarray]:
    """delta = E[local quantized output - float output] per channel, for each site
    (tensor name -> channel axis), streamed over `feeds`."""
    model, shadow = shadow_model(float_model, qdq_model, sites)
    names = [n for pair in shadow.items() for n in pair]
    session = ort_backend.make_session(ort_backend.with_outputs(model, names))
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = dict.fromkeys(shadow, 0)
    for batch in ort_backend.batches(feeds, ort_backend.batch_size_for(float_model, batch_size)):
        outs = dict(zip(names, session.run(names, batch)))
        for name, shadow_name in shadow.items():
            r, q = outs[name], outs[shadow_name]
            axis = sites[name] % r.ndim
            diff = (q.astype(np.float64) - r).swapaxes(axis, -1).reshape(-1, r.shape[axis])
            sums[name] = sums.get(name, 0) + diff.sum(axis=0)
            counts[name] += diff.shape[0]
    return {n: (sums[n] / counts[n]).astype(np.float32) for n in shadow if counts[n]}


def apply_shift(model: ir.Model, roles: dict[str, str], shifts: dict[str, np.ndarray]) -> int:
    """b' = b - delta on every layer whose output tensor has a measured shift; returns layers changed."""
    changed = 0
    for node in list(model.graph):
        site = bias_site(node, roles)
        if site is None or site[1] not in shifts:
            continue
        holder, _, _ = site
        delta = shifts[site[1]]
        index = 2 if holder is node else (0 if holder.inputs[0].const_value is not None else 1)
        if holder is node and (len(node.inputs) < 3 or node.inputs[2] is None):
            bias = np.zeros(delta.shape, np.float32)
        else:
            bias = holder.inputs[index].const_value.numpy().astype(np.float32)
        if bias.shape != delta.shape:
            continue
        value = add_initializer(model.graph, f"{holder.name}.bias_corrected", (bias - delta).astype(np.float32))
        if holder is node and len(node.inputs) < 3:
            node.resize_inputs(3)
        holder.replace_input_with(index, value)
        changed += 1
    return changed
