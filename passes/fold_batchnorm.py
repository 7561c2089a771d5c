"""BatchNorm folding into the preceding Conv / ConvTranspose / Gemm.

Inference BatchNorm is a per-channel affine map. With k_c = gamma_c / sqrt(var_c + eps):

    BN(y)_c = k_c * (y_c - mean_c) + beta_c
    y = conv(x, W) + b    =>    BN(y) = conv(x, W') + b'
    W'[c, ...] = k_c * W[c, ...]              (Conv: output channel axis 0)
    W'[:, c, ...] = k_c * W[:, c, ...]        (ConvTranspose, group 1: output channel axis 1)
    b'_c = k_c * (b_c - mean_c) + beta_c

Pattern: Conv / ConvTranspose -> BatchNormalization (inference form, one output), where the
conv's output has no other consumer and W, b, gamma, beta, mean, var are constants.
Check: constants present; ConvTranspose only with group == 1.
Rewrite: a new Conv with W', b'; the folded statistics (gamma, beta, mean, var, eps) are kept in
`node.meta["folded_bn"]` so analytic bias correction can use E[y_c] = beta_c and
std[y_c] = |gamma_c| after folding.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..initializers import add_initializer


def fold_batchnorm(model: ir.Model) -> int:
    graph = model.graph
    folded = 0
    for bn in list(graph):
        if bn.op_type != "BatchNormalization" or len([o for o in bn.outputs if o.uses() or o.is_graph_output()]) > 1:
            continue
        conv = bn.inputs[0].producer()
        if conv is None or conv.op_type not in ("Conv", "ConvTranspose"):
            continue
        if len(bn.inputs[0].uses()) != 1 or bn.inputs[0].is_graph_output():
            continue
        consts = [_const(v) for v in bn.inputs[1:5]]
        weight = _const(conv.inputs[1])
        if weight is None or any(c is None for c in consts):
            continue
        axis = 0
        if conv.op_type == "ConvTranspose":
            if conv.attributes.get_int("group", 1) != 1:
                continue
            axis = 1
        gamma, beta, mean, var = (c.astype(np.float64) for c in consts)
        eps = bn.attributes.get_float("epsilon", 1e-5)
        k = gamma / np.sqrt(var + eps)
        bias = _const(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] is not None else np.zeros_like(k)
        shape = [1] * weight.ndim
        shape[axis] = -1
        new_w = (weight.astype(np.float64) * k.reshape(shape)).astype(np.float32)
        new_b = (k * (bias.astype(np.float64) - mean) + beta).astype(np.float32)

        w_val = add_initializer(graph, f"{conv.name or conv.outputs[0].name}.weight_bnfolded", new_w)
        b_val = add_initializer(graph, f"{conv.name or conv.outputs[0].name}.bias_bnfolded", new_b)
        new_conv = ir.Node(conv.domain, conv.op_type, [conv.inputs[0], w_val, b_val],
                           attributes=list(conv.attributes.values()), name=conv.name, num_outputs=1)
        new_conv.meta["folded_bn"] = {"gamma": gamma, "beta": beta, "mean": mean, "var": var, "eps": eps}
        graph.insert_before(conv, new_conv)
        out = bn.outputs[0]
        name = out.name
        out.replace_all_uses_with(new_conv.outputs[0], replace_graph_outputs=True)
        graph.remove([bn, conv], safe=True)
        new_conv.outputs[0].name = name
        new_conv.outputs[0].type, new_conv.outputs[0].shape = out.type, out.shape
        folded += 1
    return folded


def _const(value: ir.Value | None):
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()
