"""NoisyQuant (Liu et al., 2023, "NoisyQuant: Noisy Bias-Enhanced Post-Training Activation Quantization"):
a fixed bias N added to an activation before it is quantized, its effect removed after the layer.

For a linear layer y = W x + b whose input x is quantized by Q, adding a constant per-channel N_c
(broadcast over positions) and folding -W N into the bias,

    y = W x + b = W (x + N) + (b - W N)       (float: exact)
    y_hat = W Q(x + N) + (b - W N)             (quantized: the rounding error is that of x + N)

changes only where each channel's values fall relative to the quantization grid. For a Conv,
(W N)_o = sum_{c, k} W[o, c, k] N_c, which equals conv(x + N) - conv(x) only where the window never
reads padding: the pattern is restricted to Convs without padding (1x1 pointwise layers) and Gemm.

Noise search (per layer, on the float input X of a few calibration samples): with D the quantization
step of X over its calibrated range, each channel's N_c is chosen from the grid {j D / 8, j = -4..4}
(the paper's noise range U(-D/2, D/2)) to minimise that channel's rounding error
E[(Q(x_c + N_c) - x_c - N_c)^2]; with independent channel errors the layer output error
sum_o E[(W (Q(x + N) - x - N))_o^2] is then minimised channel by channel. The layer's noise is kept only
if its measured output error || W Q(x + N) - W N - W x || beats || W Q(x) - W x || on those samples
(each with its own min/max range).

Pattern: Conv (constant weight, all pads 0, auto_pad NOTSET) | Gemm (no transA, alpha = beta = 1) reading a
float activation. Rewrite: x -> Add(x, N) -> layer (only this layer reads the Add), bias b - W N
(created when absent). Collection (`search_noise`) is separate from application (`apply_noise`).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from ..initializers import add_initializer
from . import layer_io
from ..statistic_points import FirstSamples, collect
from .registry import Pass

N_SAMPLES = 8
GRID = np.arange(-4, 5) / 8.0      # N_c in units of the quantization step


def find_sites(model: ir.Model) -> list[ir.Node]:
    sites = []
    for node in model.graph:
        x = node.inputs[0] if node.inputs else None
        if x is None or x.const_value is not None or not layer_io.supported(node) or node.op_type == "MatMul":
            continue
        if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].const_value is None:
            continue
        if node.op_type == "Conv" and any(node.attributes.get_ints("pads", [0])):
            continue
        if node.op_type == "Gemm" and node.attributes.get_float("beta", 1.0) != 1.0:
            continue
        sites.append(node)
    return sites


def noise_shift(node: ir.Node, noise: np.ndarray) -> np.ndarray:
    """(W N)_o: the layer's output change when its input is x + N (per output channel)."""
    w = node.inputs[1].const_value.numpy().astype(np.float64)
    if node.op_type == "Conv":
        group = node.attributes.get_int("group", 1)
        cin_g, cout_g = w.shape[1], w.shape[0] // group
        n = noise.reshape(group, cin_g)[np.arange(w.shape[0]) // cout_g]      # [C_out, cin_g]
        return (w.reshape(w.shape[0], cin_g, -1).sum(-1) * n).sum(1)
    return noise @ (w.T if node.attributes.get_int("transB", 0) else w)


def _channel_view(node: ir.Node, x: np.ndarray) -> np.ndarray:
    """x as [positions, channels]."""
    return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1]) if node.op_type == "Conv" else x.reshape(-1, x.shape[-1])


def _quant(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    import torch
    return layer_io.fake_quant_act(torch.from_numpy(x), lo, hi).numpy()


def search_noise(node: ir.Node, x: np.ndarray) -> tuple[np.ndarray | None, dict]:
    """Per-channel N for one layer from its float input samples x, or None when noise does not help."""
    import torch
    xc = _channel_view(node, x).astype(np.float32)
    lo, hi = min(float(xc.min()), 0.0), max(float(xc.max()), 0.0)
    step = (hi - lo) / 255 if hi > lo else 0.0
    if step == 0.0:
        return None, {"node": node.name, "kept": False}
    errs = np.stack([((_quant(xc + g * step, lo, hi) - xc - g * step) ** 2).mean(0) for g in GRID])  # [grid, C]
    noise = (GRID[errs.argmin(0)] * step).astype(np.float32)
    w = torch.from_numpy(node.inputs[1].const_value.numpy().astype(np.float32))
    xt = torch.from_numpy(x.astype(np.float32))
    shape = (1, -1, 1, 1) if node.op_type == "Conv" else (1, -1)
    with torch.no_grad():
        ref = layer_io.layer_forward(node, xt, w, None)
        base = layer_io.layer_forward(node, layer_io.fake_quant_act(xt, lo, hi), w, None)
        xn = xt + torch.from_numpy(noise).reshape(shape)
        shift = torch.from_numpy(noise_shift(node, noise).astype(np.float32))
        shift = shift.reshape((1, -1, 1, 1) if node.op_type == "Conv" else (1, -1))
        noisy = layer_io.layer_forward(node, layer_io.fake_quant_act(xn, float(xn.min()), float(xn.max())), w, None)
        err_base = float(((base - ref) ** 2).mean())
        err_noisy = float(((noisy - shift - ref) ** 2).mean())
    kept = err_noisy < err_base
    return (noise if kept else None), {"node": node.name, "kept": bool(kept), "err_off": err_base, "err_on": err_noisy}


def statistic_points(sites: list[ir.Node], n_samples: int = N_SAMPLES) -> dict:
    """Every site's float input on the first `n_samples` calibration samples."""
    return {n: (n, FirstSamples(n_samples)) for n in sorted({node.inputs[0].name for node in sites})}


def collect_inputs(float_model: onnx.ModelProto, sites: list[ir.Node], feeds: dict[str, np.ndarray],
                   n_samples: int = N_SAMPLES) -> dict[str, np.ndarray]:
    return collect(float_model, statistic_points(sites, n_samples), feeds)


def apply_noise(model: ir.Model, node: ir.Node, noise: np.ndarray) -> None:
    """x -> Add(x, N) -> node, and the node's bias b - W N."""
    graph = model.graph
    base = node.name or node.outputs[0].name
    shape = (-1, 1, 1) if node.op_type == "Conv" else (-1,)
    n_val = add_initializer(graph, f"{base}.noise", noise.reshape(shape).astype(np.float32))
    add = ir.Node("", "Add", [node.inputs[0], n_val], name=f"{base}/noisy_input", num_outputs=1)
    add.outputs[0].name = f"{node.inputs[0].name}_noisy_{base}"
    add.outputs[0].type, add.outputs[0].shape = node.inputs[0].type, node.inputs[0].shape
    graph.insert_before(node, add)
    out_ch = node.inputs[1].const_value.shape[0 if node.op_type == "Conv" or node.attributes.get_int("transB", 0) else 1]
    has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
    b = node.inputs[2].const_value.numpy().astype(np.float64) if has_bias else np.zeros(out_ch)
    new_b = add_initializer(graph, f"{base}.bias_noisy", (b - noise_shift(node, noise)).astype(np.float32))
    node.replace_input_with(0, add.outputs[0])
    if not has_bias:
        node.resize_inputs(3)
    node.replace_input_with(2, new_b)


def noisyquant(model: ir.Model, float_model: onnx.ModelProto, feeds: dict[str, np.ndarray],
               n_samples: int = N_SAMPLES, inputs: dict[str, np.ndarray] | None = None) -> dict:
    """Search and apply NoisyQuant noise on every site (`inputs`: collect_inputs, measured here when
    not given); returns a summary."""
    sites = find_sites(model)
    if inputs is None:
        inputs = collect_inputs(float_model, sites, feeds, n_samples)
    rows = []
    for node in sites:
        noise, info = search_noise(node, inputs[node.inputs[0].name])
        rows.append(info)
        if noise is not None:
            apply_noise(model, node, noise)
    return {"sites": len(sites), "noised": sum(r["kept"] for r in rows), "per_site": rows}


# ---- registration -------------------------------------------------------------------------------
PASS = Pass(
    name="noisyquant", phase="rewrite", order=30,
    summary="a fixed per-channel noise N added before activation quantization, −W·N folded into the bias",
    where="convs without padding, gemm",
    run=lambda ctx: noisyquant(ctx.model, ctx.float_proto, ctx.calib, inputs=ctx.points), needs="torch",
    statistics=lambda ctx: statistic_points(find_sites(ctx.model)),
    describe=lambda s: f"noisyquant: noise on {s['noised']}/{s['sites']} layer inputs",
    reference="Liu et al. 2023, NoisyQuant")
