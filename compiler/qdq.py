"""Emit a standard QDQ ONNX graph from a finalized plan.

For an activation tensor t with (s, z):   t -> QuantizeLinear(s, z) -> DequantizeLinear(s, z) -> t'
  consumers read t' when t's producer is quantized (on integer code t exists only as q); when t comes
  from a float op or a graph input, only the quantized consumers read t' and float ones keep t.
For a weight W:   W is stored as q = quantize(W) (int8 / int4 / fp8) and read through
  DequantizeLinear(q, s_w, 0, axis) - the file shrinks by 4x (8x for int4).
For a bias b of a quantized linear op:   b_q = round(b / (s_x * s_w)) as int32, read through
  DequantizeLinear(b_q, s_x * s_w, 0) - exactly what the integer accumulator adds.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .initializers import add_initializer
from .plan import QuantPlan
from .qparams import quantize_values, weight_scales
from .qtypes import QType


def emit_qdq(model: ir.Model, plan: QuantPlan, power_of_two: bool = False) -> dict[str, dict]:
    """Insert Q/DQ into `model` in place. Returns per-weight encodings for the manifest."""
    graph = model.graph
    values = _value_map(model)
    encodings: dict[str, dict] = {}
    weight_scale: dict[int, np.ndarray] = {}
    weight_dq: dict[tuple[str, str, int | None], ir.Value] = {}

    for spec in plan.weights:
        w = spec.node.inputs[spec.index]
        key = (w.name, spec.qtype.value, spec.axis)
        if key not in weight_dq:
            array = w.const_value.numpy().astype(np.float32)
            scale = weight_scales(array, spec.qtype, spec.axis, power_of_two)
            q = quantize_values(array, scale, 0, spec.qtype, spec.axis, narrow=not spec.qtype.is_float)
            zp = np.zeros(scale.shape, dtype=spec.qtype.numpy_dtype)
            q_val = add_initializer(graph, f"{w.name}_quantized", q, spec.qtype.ir_dtype)
            weight_dq[key] = _dequantize(graph, q_val, scale, zp, spec.qtype, spec.axis, before=spec.node,
                                         name=f"{w.name}_dq")
            encodings[w.name] = {"kind": "weight", "dtype": spec.qtype.value, "axis": spec.axis,
                                 "scale": scale.tolist()}
        weight_scale[id(spec)] = np.asarray(encodings[w.name]["scale"], dtype=np.float32)
        spec.node.replace_input_with(spec.index, weight_dq[key])

    for spec in plan.biases:
        b = spec.node.inputs[spec.index]
        act = plan.activations[spec.activation]
        s_w = weight_scale[id(spec.weight)]
        scale = (np.float32(act.scale) * s_w).astype(np.float32)
        bias = b.const_value.numpy().astype(np.float32)
        q = quantize_values(bias, scale, 0, QType.INT32, 0 if scale.ndim else None)
        q_val = add_initializer(graph, f"{b.name}_quantized", q, ir.DataType.INT32)
        dq = _dequantize(graph, q_val, scale, np.zeros(scale.shape, np.int32), QType.INT32,
                         0 if scale.ndim else None, before=spec.node, name=f"{b.name}_dq")
        spec.node.replace_input_with(spec.index, dq)
        encodings[b.name] = {"kind": "bias", "dtype": "int32", "scale": scale.tolist()}

    quantized_nodes = set(plan.roles)
    for name, spec in plan.activations.items():
        value = values[name]
        producer = value.producer()
        producer_quantized = producer is not None and producer.name in quantized_nodes
        uses = [u for u in value.uses()
                if producer_quantized or u.node.name in quantized_nodes]
        if not uses:
            continue
        qtype = spec.qtype
        scale = np.array(spec.scale, dtype=np.float32)
        zp = np.array(spec.zero_point, dtype=qtype.numpy_dtype)
        s_val = add_initializer(graph, f"{name}_scale", scale, ir.DataType.FLOAT)
        z_val = add_initializer(graph, f"{name}_zero_point", zp, qtype.ir_dtype)
        q_node = ir.Node("", "QuantizeLinear", [value, s_val, z_val], name=f"{name}_QuantizeLinear")
        q_node.outputs[0].name = f"{name}_quantized"
        dq_node = ir.Node("", "DequantizeLinear", [q_node.outputs[0], s_val, z_val], name=f"{name}_DequantizeLinear")
        dq_node.outputs[0].name = f"{name}_dequantized"
        _insert_after_producer(graph, value, [q_node, dq_node])
        for use in uses:
            use.node.replace_input_with(use.idx, dq_node.outputs[0])
        encodings[name] = {"kind": "activation", "dtype": qtype.value, "scale": float(scale),
                           "zero_point": float(spec.zero_point), "root": spec.root}
    graph.sort()
    return encodings


def _value_map(model: ir.Model) -> dict[str, ir.Value]:
    values = {v.name: v for v in model.graph.inputs}
    for node in model.graph:
        for o in node.outputs:
            values[o.name] = o
    return values




def _dequantize(graph: ir.Graph, q_val: ir.Value, scale: np.ndarray, zp: np.ndarray, qtype: QType,
                axis: int | None, before: ir.Node, name: str) -> ir.Value:
    s_val = add_initializer(graph, f"{name}_scale", np.asarray(scale, np.float32), ir.DataType.FLOAT)
    z_val = add_initializer(graph, f"{name}_zero_point", zp, qtype.ir_dtype)
    attrs = {"axis": ir.AttrInt64("axis", axis)} if axis is not None and np.ndim(scale) > 0 else {}
    node = ir.Node("", "DequantizeLinear", [q_val, s_val, z_val], attributes=attrs, name=f"{name}_DequantizeLinear")
    node.outputs[0].name = name
    graph.insert_before(before, node)
    return node.outputs[0]


def _insert_after_producer(graph: ir.Graph, value: ir.Value, nodes: list[ir.Node]) -> None:
    producer = value.producer()
    if producer is None:
        graph.insert_before(next(iter(graph)), nodes)
    else:
        graph.insert_after(producer, nodes)
