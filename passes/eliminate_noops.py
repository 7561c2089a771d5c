"""No-op elimination for inference graphs.

    Identity(x) = x            Dropout(x, ratio, training=False) = (x, mask unused)

Pattern: Identity, or Dropout whose mask output has no consumer.
Check: the node's output is not needed under its own name (graph outputs keep their names).
Rewrite: every use of the output reads x instead; the node is removed.
"""

from __future__ import annotations

import onnx_ir as ir


def eliminate_noops(model: ir.Model) -> int:
    graph = model.graph
    removed = 0
    for node in list(graph):
        if node.op_type not in ("Identity", "Dropout") or node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Dropout" and len(node.outputs) > 1 and (
                node.outputs[1].uses() or node.outputs[1].is_graph_output()):
            continue
        src, out = node.inputs[0], node.outputs[0]
        if out.is_graph_output():
            if src.is_graph_input() or src.is_graph_output() or src.const_value is not None:
                continue  # keep the name-carrying node: renaming a graph input/output would break callers
            # The graph output takes its name from the removed node's output.
            name = out.name
            out.replace_all_uses_with(src, replace_graph_outputs=True)
            out.name = None
            src.name = name
            src.type = src.type or out.type
            src.shape = src.shape or out.shape
        else:
            out.replace_all_uses_with(src)
        graph.remove(node, safe=True)
        removed += 1
    return removed
