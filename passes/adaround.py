"""AdaRound: layer-wise rounding optimisation for low-bit weights (Nagel et al., 2020, "Up or Down?
Adaptive Rounding for Post-Training Quantization").

Round-to-nearest picks q = round(W / s) element by element. AdaRound picks, per element, floor or ceil
to minimise the layer's OUTPUT error on calibration inputs X instead:

    W_soft(V) = s * clip(floor(W / s) + h(V), -qmax, qmax),   h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)
    min_V  || X W^T - X W_soft(V)^T ||_F^2 / rows  +  lambda * sum (1 - |2 h(V) - 1|^beta)

(zeta = 1.1, gamma = -0.1; beta annealed from 20 to 2 so h is driven to 0 or 1), then
W_hat = s * clip(floor(W / s) + [h(V) >= 1/2], -qmax, qmax). The scale s is the emitter's
(max|W| / qmax per channel or per tensor), which W_hat keeps: max|W| is on the grid. The result is
kept only if its objective (the reconstruction term on all cached rows) is no worse than nearest
rounding's, so the pass never loses on its own objective.

The layer's input X is the FLOAT model's input to it on a few calibration samples; for a Conv, rows are
im2col patches at randomly sampled output positions (per group), so every layer is a small matrix
problem: Y[r, o] = sum_j P[r, g(o), j] W[o, j]. torch on the CPU, a few hundred Adam steps per layer.

Collection (`collect_patches`) is separate from optimisation (`round_layer`) and from application
(`apply_weights`: the float weight is replaced by W_hat, which the emitter then rounds exactly onto
the chosen grid points). This edits the graph the quantizer reads, not the float reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from ..backends import onnxruntime as ort_backend
from . import layer_io
from .registry import Pass, PassContext

ZETA, GAMMA = 1.1, -0.1
ITERATIONS = 200
LAMBDA = 0.01
LR = 3e-2
N_SAMPLES = 16          # calibration samples whose inputs are cached
ROWS = 1024             # patches per conv layer


@dataclass
class LayerData:
    node: ir.Node
    patches: np.ndarray     # [rows, groups, cin_g * k]  (Gemm / MatMul: [rows, 1, K])


def layers(model: ir.Model, plan) -> list[tuple[ir.Node, object]]:
    """(node, weight spec) of every quantized integer-weight Conv / Gemm / MatMul layer_io can run."""
    out = []
    for spec in plan.weights:
        if spec.qtype.is_float or spec.index != 1 or not layer_io.supported(spec.node):
            continue
        out.append((spec.node, spec))
    return out


def collect_patches(float_model: onnx.ModelProto, nodes: list[ir.Node], feeds: dict[str, np.ndarray],
                    n_samples: int = N_SAMPLES, rows: int = ROWS, seed: int = 0) -> dict[str, LayerData]:
    """Per layer (keyed by node name): input patches of the float model on `n_samples` samples."""
    rng = np.random.default_rng(seed)
    names = sorted({n.inputs[0].name for n in nodes})
    sub = {k: v[:n_samples] for k, v in feeds.items()}
    session = ort_backend.make_session(ort_backend.with_outputs(float_model, names))
    parts: dict[str, list[np.ndarray]] = {n.name: [] for n in nodes}
    batches = list(ort_backend.batches(sub, ort_backend.batch_size_for(float_model, 4)))
    for batch in batches:
        outs = dict(zip(names, session.run(names, batch)))
        for node in nodes:
            x = outs[node.inputs[0].name]
            parts[node.name].append(_patches(node, x, max(1, rows // len(batches)), rng))
    return {n.name: LayerData(n, np.concatenate(parts[n.name])) for n in nodes}


def _patches(node: ir.Node, x: np.ndarray, rows: int, rng) -> np.ndarray:
    if node.op_type != "Conv":
        x = x.reshape(-1, x.shape[-1])
        return x[:, None, :].astype(np.float32)
    oh, ow = output_hw(node, x.shape)
    return patches_at(node, x, rng.integers(0, x.shape[0], rows), rng.integers(0, oh, rows),
                      rng.integers(0, ow, rows))


def output_hw(node: ir.Node, shape) -> tuple[int, int]:
    kh, kw = node.inputs[1].const_value.shape[2:]
    p = list(node.attributes.get_ints("pads", [0] * 4))
    sh, sw = node.attributes.get_ints("strides", [1, 1])
    dh, dw = node.attributes.get_ints("dilations", [1, 1])
    return ((shape[2] + p[0] + p[2] - dh * (kh - 1) - 1) // sh + 1,
            (shape[3] + p[1] + p[3] - dw * (kw - 1) - 1) // sw + 1)


def patches_at(node: ir.Node, x: np.ndarray, n: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """im2col rows of a Conv at output positions (n, i, j): [rows, groups, cin_g * kh * kw]."""
    group = node.attributes.get_int("group", 1)
    kh, kw = node.inputs[1].const_value.shape[2:]
    p = list(node.attributes.get_ints("pads", [0] * 4))
    sh, sw = node.attributes.get_ints("strides", [1, 1])
    dh, dw = node.attributes.get_ints("dilations", [1, 1])
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
    hh = i[:, None, None] * sh + np.arange(kh)[None, :, None] * dh            # [rows, kh, 1]
    ww = j[:, None, None] * sw + np.arange(kw)[None, None, :] * dw            # [rows, 1, kw]
    patch = xp[n[:, None, None], :, hh, ww]                                   # [rows, kh, kw, C]
    patch = np.moveaxis(patch, -1, 1)                                         # [rows, C, kh, kw]
    return patch.reshape(len(n), group, -1).astype(np.float32)


def as_matrix(node: ir.Node, w: np.ndarray) -> np.ndarray:
    """Weight as [groups, cout_g, fan_in] matching the patches' [rows, groups, fan_in]."""
    if node.op_type == "Conv":
        group = node.attributes.get_int("group", 1)
        return w.reshape(group, w.shape[0] // group, -1)
    if node.op_type == "Gemm" and node.attributes.get_int("transB", 0):
        return w[None]
    return w.T[None]


def from_matrix(node: ir.Node, m: np.ndarray, shape) -> np.ndarray:
    if node.op_type == "Conv" or (node.op_type == "Gemm" and node.attributes.get_int("transB", 0)):
        return m.reshape(shape)
    return m[0].T.reshape(shape)


def layer_output(patches: torch.Tensor, wm: torch.Tensor) -> torch.Tensor:
    """Y[g, r, o] = sum_j P[g, r, j] W[g, o, j]  (patches given group-major: [groups, rows, fan_in])."""
    import torch
    return torch.bmm(patches, wm.transpose(1, 2))


def objective(patches: np.ndarray, wm: np.ndarray, wm_hat: np.ndarray) -> float:
    """|| X W^T - X W_hat^T ||_F^2 / rows (the reconstruction term)."""
    import torch
    with torch.no_grad():
        p = torch.from_numpy(patches).double().transpose(0, 1)
        d = layer_output(p, torch.from_numpy(wm_hat - wm).double())
        return float((d ** 2).sum() / patches.shape[0])


def round_layer(node: ir.Node, data: LayerData, qmax: int, axis: int | None, iterations: int = ITERATIONS,
                seed: int = 0) -> tuple[np.ndarray, dict]:
    """AdaRound one layer; returns (W_hat in the weight's own layout, summary)."""
    import torch
    torch.manual_seed(seed)
    w = node.inputs[1].const_value.numpy().astype(np.float32)
    scale = layer_io.weight_scale(torch.from_numpy(w), qmax, axis).numpy()
    scale = np.broadcast_to(scale, w.shape)
    wm, sm = as_matrix(node, w), as_matrix(node, np.ascontiguousarray(scale))
    floor = np.floor(wm / sm)
    nearest = np.clip(np.rint(wm / sm), -qmax, qmax) * sm
    rest = wm / sm - floor
    patches = torch.from_numpy(data.patches).transpose(0, 1).contiguous()
    target = layer_output(patches, torch.from_numpy(wm))
    floor_t, s_t = torch.from_numpy(floor), torch.from_numpy(sm)
    # h(V0) = rest: V0 = -log((zeta - gamma) / (rest - gamma) - 1)
    v = torch.from_numpy(-np.log((ZETA - GAMMA) / (np.clip(rest, 1e-3, 1 - 1e-3) - GAMMA) - 1)).float()
    v.requires_grad_(True)
    opt = torch.optim.Adam([v], lr=LR)
    warmup = iterations // 5
    for it in range(iterations):
        h = torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)
        w_soft = torch.clamp(floor_t + h, -qmax, qmax) * s_t
        rec = ((layer_output(patches, w_soft) - target) ** 2).sum() / patches.shape[1]
        if it < warmup:
            loss = rec
        else:
            beta = 20 + (2 - 20) * (it - warmup) / max(1, iterations - warmup - 1)
            loss = rec + LAMBDA * (1 - torch.abs(2 * h - 1) ** beta).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        up = (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA >= 0.5).numpy()
    rounded = np.clip(floor + up, -qmax, qmax) * sm
    obj_near, obj_ada = objective(data.patches, wm, nearest), objective(data.patches, wm, rounded)
    best = rounded if obj_ada <= obj_near else nearest
    return (from_matrix(node, best.astype(np.float32), w.shape),
            {"node": node.name, "nearest": obj_near, "adaround": obj_ada, "kept": bool(obj_ada <= obj_near),
             "flipped": float(np.mean(np.abs(rounded - nearest) > 1e-12 * np.abs(sm)))})


def optimize(float_model: onnx.ModelProto, model: ir.Model, plan, feeds: dict[str, np.ndarray],
             per_channel: bool, iterations: int | None = None, n_samples: int | None = None,
             rows: int | None = None) -> tuple[dict[str, np.ndarray], list[dict]]:
    """AdaRound every integer-weight layer of `plan` (on `model`, the graph `float_model` serializes);
    returns (weight tensor name -> W_hat, per-layer summaries)."""
    todo = layers(model, plan)
    data = collect_patches(float_model, [n for n, _ in todo], feeds, n_samples or N_SAMPLES, rows or ROWS)
    weights, summary = {}, []
    for node, spec in todo:
        axis = layer_io.weight_axis(node) if per_channel and spec.axis is not None else None
        w_hat, info = round_layer(node, data[node.name], int(spec.qtype.qmax), axis, iterations or ITERATIONS)
        weights[node.inputs[1].name] = w_hat
        summary.append(info)
    return weights, summary


def apply_weights(model: ir.Model, weights: dict[str, np.ndarray]) -> int:
    """Set the named weight initializers' values to W_hat, in place: the names stay, so per-tensor
    overrides (mixed precision) still find them. Returns the number of tensors replaced."""
    done = 0
    for name, array in weights.items():
        value = model.graph.initializers.get(name)
        if value is None or value.const_value is None or tuple(value.const_value.shape) != array.shape:
            continue
        value.const_value = ir.tensor(array.astype(np.float32), name=name)
        done += 1
    return done


# ---- registration -------------------------------------------------------------------------------
def _run(ctx: PassContext) -> dict:
    from ..plan import build_plan

    ctx.weights, summary = optimize(ctx.float_proto, ctx.model, build_plan(ctx.model, ctx.config, ctx.stats),
                                    ctx.calib, ctx.config.per_channel)
    return {"layers": len(summary), "improved": sum(r["kept"] for r in summary)}


PASS = Pass(
    name="adaround", phase="weights", order=40,
    summary="learned up/down rounding of 4-bit weights on cached calibration inputs",
    where="every conv / gemm (kept only where it beats nearest rounding)",
    run=_run, needs="torch", after=("mixed-precision",),   # rounds to the bits mixed precision chose
    describe=lambda s: f"adaround: {s['improved']}/{s['layers']} layers improved on nearest rounding",
    reference="Nagel et al. 2020, Up or down? Adaptive rounding for post-training quantization")
