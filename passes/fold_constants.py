"""Constant folding.

For a node f with inputs x_1..x_k that are all compile-time constants,

    y = f(x_1, ..., x_k)      becomes the initializer   y := eval(f, x_1, ..., x_k)

and `Shape(t)` becomes a constant whenever t's shape is fully static after shape inference. Exports
carry foldable subgraphs (padding arithmetic built from Shape/Gather/Concat, weight transposes,
paddle2onnx's Constant-node weights); folding them leaves only the ops that touch data, which is
what the quantizer and the integer backends must see.

Pattern: any node in the default domain without subgraphs, not random, whose inputs are constants.
Check: the folded outputs stay under `max_elements` (folding must not inflate the file).
Rewrite: evaluate with onnx's reference evaluator, replace the outputs by initializers, drop the node.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator

from ..initializers import add_initializer

_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                     "Bernoulli", "Dropout"}


def fold_constants(model: ir.Model, max_elements: int = 1 << 22) -> int:
    """Fold constant subgraphs in place; returns the number of nodes removed."""
    graph = model.graph
    opset = model.opset_imports.get("", 17)
    folded = 0
    for node in list(graph):
        if node.domain not in ("", "ai.onnx") or node.op_type in _NONDETERMINISTIC:
            continue
        if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
            continue
        if node.op_type == "Constant":
            values = [_constant_node_value(node)]
        elif node.op_type == "Shape":
            values = [_static_shape(node)]
        elif all(v is None or v.const_value is not None for v in node.inputs):
            values = _evaluate(node, opset)
        else:
            continue
        if values is None or any(v is None for v in values):
            continue
        if sum(int(np.asarray(v).size) for v in values) > max_elements:
            continue
        for out, value in zip(node.outputs, values):
            value = np.asarray(value)
            name = out.name
            out.name = f"{name}__folded"  # frees the name for the initializer that replaces it
            out.replace_all_uses_with(add_initializer(graph, name, value), replace_graph_outputs=True)
        graph.remove(node, safe=True)
        folded += 1
    return folded


def _constant_node_value(node: ir.Node):
    attr = next(iter(node.attributes.values()), None)
    if attr is None:
        return None
    if attr.type == ir.AttributeType.TENSOR:
        return attr.as_tensor().numpy()
    if attr.name in ("value_float", "value_int"):
        return np.array(attr.value, dtype=np.float32 if attr.name == "value_float" else np.int64)
    if attr.name in ("value_floats", "value_ints"):
        return np.array(list(attr.value), dtype=np.float32 if attr.name == "value_floats" else np.int64)
    return None


def _static_shape(node: ir.Node):
    shape = node.inputs[0].shape
    # paddle2onnx writes dynamic dims as -1: only non-negative ints are static sizes
    if shape is None or not all(isinstance(d, int) and d >= 0 for d in shape):
        return None
    dims = np.array(list(shape), dtype=np.int64)
    start = node.attributes.get_int("start", 0)
    end = node.attributes.get_int("end", len(dims))
    return dims[start:end]


def _evaluate(node: ir.Node, opset: int):
    names = [f"i{i}" if v is not None else "" for i, v in enumerate(node.inputs)]
    proto = ir.serde.serialize_node(node)
    del proto.input[:]
    proto.input.extend(names)
    del proto.output[:]
    proto.output.extend(f"o{i}" for i in range(len(node.outputs)))
    feeds = {n: v.const_value.numpy() for n, v in zip(names, node.inputs) if v is not None}
    try:
        graph = onnx.helper.make_graph([proto], "fold", [], [onnx.helper.make_empty_tensor_value_info(o) for o in proto.output])
        evaluator = ReferenceEvaluator(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)]))
        return [np.asarray(r) for r in evaluator.run(None, feeds)]
    except Exception:  # an op the reference evaluator can't run stays in the graph, unfolded
        return None
