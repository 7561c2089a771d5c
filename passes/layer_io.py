"""Layer-level helpers shared by the calibration-driven passes (equalization's scale search, NoisyQuant,
AdaRound, mixed precision): run one Conv / Gemm / MatMul layer in torch, and fake-quantize tensors
the way the QDQ emitter does.

    weights:      w_hat = s * clip(round(w / s), -qmax, qmax),  s = max|w| / qmax  (per tensor or channel)
    activations:  x_hat = s * (clip(round(x / s) + z, 0, 255) - z),  (s, z) from the range [lo, hi]
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def const(value: ir.Value | None) -> np.ndarray | None:
    return None if value is None or value.const_value is None else value.const_value.numpy()


def layer_forward(node: ir.Node, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """One Conv (2-D) / Gemm / MatMul with the node's attributes, in torch."""
    import torch
    import torch.nn.functional as F
    if node.op_type == "Conv":
        pads = list(node.attributes.get_ints("pads", [0] * 4))
        strides = list(node.attributes.get_ints("strides", [1, 1]))
        dil = list(node.attributes.get_ints("dilations", [1, 1]))
        if pads[0] != pads[2] or pads[1] != pads[3]:
            x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
            pads = [0, 0]
        return F.conv2d(x, w, b, strides, pads[:2], dil, node.attributes.get_int("group", 1))
    if node.op_type == "Gemm":
        if node.attributes.get_int("transB", 0):
            w = w.t()
        y = x @ w
        return y if b is None else y + node.attributes.get_float("beta", 1.0) * b
    y = x @ w
    return y if b is None else y + b


def supported(node: ir.Node) -> bool:
    """A layer layer_forward can run: 2-D Conv with auto_pad NOTSET, Gemm without transA / alpha, MatMul."""
    w = const(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None:
        return False
    if node.op_type == "Conv":
        return w.ndim == 4 and node.attributes.get_string("auto_pad", "NOTSET") == "NOTSET"
    if node.op_type == "Gemm":
        return not node.attributes.get_int("transA", 0) and node.attributes.get_float("alpha", 1.0) == 1.0
    return node.op_type == "MatMul" and w.ndim == 2


def weight_scale(w: torch.Tensor, qmax: int, axis: int | None) -> torch.Tensor:
    """s = max|w| / qmax per tensor (axis None) or per channel along `axis`, broadcastable to w."""
    import torch
    if axis is None:
        amax = w.abs().max()
    else:
        dims = [d for d in range(w.ndim) if d != axis % w.ndim]
        amax = w.abs().amax(dim=dims, keepdim=True)
    return torch.where(amax > 0, amax / qmax, torch.ones_like(amax))


def fake_quant_weight(w: torch.Tensor, qmax: int, axis: int | None) -> torch.Tensor:
    import torch
    s = weight_scale(w, qmax, axis)
    return torch.round(w / s).clamp_(-qmax, qmax).mul_(s)


def fake_quant_act(x: torch.Tensor, lo: float, hi: float, levels: int = 255) -> torch.Tensor:
    """Asymmetric uint8-style fake quantization of x over [min(lo, 0), max(hi, 0)]."""
    import torch
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0:
        return x
    s = (hi - lo) / levels
    z = round(-lo / s)
    q = torch.round(x / s)  # then in place, the same operations in the same order: no temporaries
    return q.add_(z).clamp_(0, levels).sub_(z).mul_(s)


def weight_axis(node: ir.Node) -> int:
    """Output-channel axis of a layer's weight (as compiler/plan.py quantizes it per channel)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if node.attributes.get_int("transB", 0) else 1
    return -1
