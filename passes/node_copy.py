"""A rewritten copy of one node for some of its consumers, the original kept for the rest.

Used where a pass folds a per-channel factor into a producer (LayerNorm's gamma / beta, a Mul
constant) that another consumer - typically the residual Add - must keep reading unscaled:

    y = P(x; theta)            -> y = P(x; theta)           (read by the other consumers)
    z_k = MatMul(y, W_k)       -> y' = P(x; theta')         (a copy with rewritten inputs)
                                  z_k = MatMul(y', W_k')
"""

from __future__ import annotations

import onnx_ir as ir


def copy_for_consumers(graph: ir.Graph, node: ir.Node, inputs: list, suffix: str, consumers) -> ir.Value:
    """Insert after `node` a copy of it reading `inputs`, named with `suffix`, and make each of
    `consumers` read the copy's output at input 0. Returns the copy's output."""
    copy = ir.Node(node.domain, node.op_type, inputs, list(node.attributes.values()), num_outputs=1,
                   name=f"{node.name or node.outputs[0].name}_{suffix}", version=node.version)
    out = copy.outputs[0]
    out.name = f"{node.outputs[0].name}_{suffix}"
    out.type = node.outputs[0].type
    out.shape = node.outputs[0].shape
    graph.insert_after(node, copy)
    for consumer in consumers:
        consumer.replace_input_with(0, out)
    return out
