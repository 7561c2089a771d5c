"""CrossQuant (Liu et al., 2024, "CrossQuant: a post-training quantization method with smaller
quantization kernel for precise large language model compression").

An activation X [tokens, K] read by linear layers with constant weights W [K, N] is quantized with
one scale per ELEMENT built from its row (token) abs-max t_i = max_j |X_ij| and its column (channel)
abs-max c_j = max_i |X_ij| (calibrated):

    s_ij = t_i^a * c_j^(1-a) / qmax,     q_ij = round(X_ij / s_ij),   0 <= a <= 1, qmax = 127.

|X_ij| = |X_ij|^a |X_ij|^(1-a) <= t_i^a c_j^(1-a), so |q_ij| <= qmax. The scale factorizes, and so
does the product with W:

    Xhat W = sum_j q_ij (t_i^a / qmax) c_j^(1-a) W_jn = d_i * (q (diag(f) W))_in,
    d_i = t_i^a / qmax,   f_j = c_j^(1-a).

The static channel part f folds into the graph exactly (float-equivalent, before calibration):

    X' = X diag(f)^-1   into the producer:  LayerNormalization  gamma' = gamma / f, beta' = beta / f
                        (a copy of the LN when the residual also reads it, as passes/smoothing.py does),
                        or Mul(h, k) with a constant k (BERT's GELU ends in  * 0.5):  k' = k / f;
    W' = diag(f) W      for every MatMul reading X.

The per-token part is computed at run time from X' (t_i = max_j |X'_ij f_j|, the row abs-max of the
original X) in standard ONNX ops that onnxruntime runs and an integer backend can lower as a
dynamically quantized GEMM with a per-row output scale:

    r = ReduceMax(Abs(X' * f), axis=-1, keepdims)      d = Pow(Max(r, eps), a) / qmax
    q = QuantizeLinear(X' / d, scale 1, zero point int8 0)            (int8, |q| <= 127)
    Y = Mul(MatMul(DequantizeLinear(q, 1, 0), DequantizeLinear(W'_q, s_w)), d)      (+ bias, float)

i.e. an int8 x int8 -> int32 GEMM whose accumulator is scaled by d_i s_w,n per (row, column) - the
dequantize-after-GEMM form of per-token dynamic quantization. The bias of such a layer stays float
(its int32 scale would depend on the row).

a is chosen per site on calibration rows by  argmin_a || X W - Xhat_a Q_w(diag(f_a) W) ||^2  (Q_w int8
symmetric per output column); a = 1 is plain per-token quantization, a = 0 static per-channel.
The "quantization kernel" - the fraction of activations that round to zero - is reported for the
static per-tensor quantizer, per-token quantization, and CrossQuant at the chosen a.

Pattern: LayerNormalization -> MatMul(const W) sites (passes/smoothing.find_sites, LN copy where the
residual reads the LN output) and Mul(h, const k broadcast over the last axis) whose every reader is
a MatMul(const W [K, N]). Collection (`collect_stats`, shared with smoothing: channel abs-max plus a
row sample) and application (`crossquant` rewrites the float graph; `RuntimeSites.emit` inserts the
run-time quantizers into the QDQ graph) are separate. The sites travel from the float rewrite to the
quantizer in model.metadata_props["qcc.crossquant"] (JSON: tensor, a, f).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from ..initializers import add_initializer
from .node_copy import copy_for_consumers
from ..plan import QuantPlan
from ..qparams import (
    dequantize_values,
    quantize_values,
    range_to_qparams,
    weight_scales,
)
from ..qtypes import QType
from . import smoothing
from .registry import Pass, PassContext

ALPHAS = (0.0, 0.15, 0.3, 0.45, 0.6, 0.8, 1.0)
QMAX = 127.0
METADATA_KEY = "qcc.crossquant"
KERNEL_KEY = "qcc.crossquant.kernel"
MAX_ROWS = 1024
_EPS = 1e-6


@dataclass
class Site:
    producer: ir.Node              # LayerNormalization or Mul(h, const)
    matmuls: list[ir.Node]
    duplicate: bool = False        # LN whose output the residual also reads: rewrite a copy

    @property
    def tensor(self) -> str:
        return self.producer.outputs[0].name


def find_sites(model: ir.Model) -> list[Site]:
    sites = [Site(s.ln, s.matmuls, bool(s.others) or s.ln.outputs[0].is_graph_output())
             for s in smoothing.find_sites(model, duplicate=True)[0]]
    for node in model.graph:
        if node.op_type != "Mul" or node.domain not in ("", "ai.onnx"):
            continue
        consts = [i for i, v in enumerate(node.inputs) if v is not None and v.const_value is not None]
        out = node.outputs[0]
        if len(consts) != 1 or out.is_graph_output() or not out.uses():
            continue
        if not all(u.node.op_type == "MatMul" and u.idx == 0 for u in out.uses()):
            continue
        matmuls = [u.node for u in out.uses()]
        k = _weight_rows(matmuls)
        kshape = tuple(node.inputs[consts[0]].const_value.shape)
        if k is None or int(np.prod(kshape)) not in (1, k) or (kshape and kshape[-1] not in (1, k)):
            continue
        sites.append(Site(node, list(dict.fromkeys(matmuls))))
    return sites


def _weight_rows(matmuls: list[ir.Node]) -> int | None:
    ks = set()
    for mm in matmuls:
        w = mm.inputs[1]
        if w is None or w.const_value is None or len(w.const_value.shape) != 2:
            return None
        ks.add(w.const_value.shape[0])
    return ks.pop() if len(ks) == 1 else None


# ---- the quantizer, in numpy (the reference for the run-time graph) -----------------------------
def cross_scales(x: np.ndarray, c: np.ndarray, a: float) -> tuple[np.ndarray, np.ndarray]:
    """(d [R, 1], f [K]) with s_ij = d_i f_j = t_i^a c_j^(1-a) / qmax."""
    t = np.abs(x).max(axis=-1, keepdims=True)
    d = (np.maximum(t, _EPS) ** a / QMAX).astype(np.float32)
    f = (np.maximum(c, _EPS) ** (1.0 - a)).astype(np.float32)
    return d, f


def crossquantize(x: np.ndarray, c: np.ndarray, a: float) -> np.ndarray:
    """int8 codes of X under CrossQuant (ONNX QuantizeLinear rounding: half to even, saturating)."""
    d, f = cross_scales(x, c, a)
    return np.clip(np.rint((x / f) / d), -128, 127).astype(np.int8)


def cross_dequantize(x: np.ndarray, c: np.ndarray, a: float) -> np.ndarray:
    d, f = cross_scales(x, c, a)
    return crossquantize(x, c, a).astype(np.float32) * d * f


def quant_kernel(x: np.ndarray, c: np.ndarray, a: float | None) -> dict[str, float]:
    """Fraction of the non-zero activations that round to zero: static per-tensor (uint8 min/max of
    the sample), per-token int8 (a = 1) and CrossQuant at `a`."""
    nz = x != 0
    n = max(int(nz.sum()), 1)
    scale, zp = range_to_qparams(float(x.min()), float(x.max()), QType.UINT8, symmetric=False)
    static = quantize_values(x, scale, zp, QType.UINT8).astype(np.int32) == zp
    out = {"per_tensor": float((static & nz).sum() / n),
           "per_token": float(((crossquantize(x, c, 1.0) == 0) & nz).sum() / n)}
    if a is not None:
        out["crossquant"] = float(((crossquantize(x, c, a) == 0) & nz).sum() / n)
    return out


def quant_loss(x: np.ndarray, c: np.ndarray, w: np.ndarray, a: float, ref: np.ndarray) -> float:
    """|| X W - Xhat_a Q_w(diag(f) W) ||^2, computed as the graph does: d * (q @ Q_w(diag(f) W))."""
    d, f = cross_scales(x, c, a)
    q = crossquantize(x, c, a).astype(np.float32)
    wf = (w * f[:, None]).astype(np.float32)
    s = weight_scales(wf, QType.INT8, axis=1)
    wq = dequantize_values(quantize_values(wf, s, 0, QType.INT8, axis=1, narrow=True), s, 0, axis=1)
    return float(np.square(ref - d * (q @ wq), dtype=np.float64).sum())


def choose_alpha(x: np.ndarray, c: np.ndarray, w: np.ndarray, alphas=ALPHAS) -> tuple[float, dict]:
    ref = x @ w
    losses = {a: quant_loss(x, c, w, a, ref) for a in alphas}
    return min(alphas, key=lambda a: losses[a]), losses


# ---- float rewrite ----------------------------------------------------------------------------
def crossquant(model: ir.Model, stats: dict, sites: list[Site], alphas=ALPHAS,
               alpha: float | None = None) -> dict:
    """Fold f = c^(1-a) into every site with statistics (a searched, or fixed by `alpha`) and record
    the site in model.metadata_props for the run-time quantizer. Returns a summary with the
    quantization kernel before / after."""
    records = json.loads(model.metadata_props.get(METADATA_KEY, "[]"))
    per_site, kernel_sum, kernel_n = [], {}, 0
    for site in sites:
        if site.tensor not in stats:
            continue
        c, x = stats[site.tensor]
        weights = [mm.inputs[1].const_value.numpy().astype(np.float32) for mm in site.matmuls]
        if alpha is None:
            a, losses = choose_alpha(x, c, np.concatenate(weights, axis=1), alphas)
        else:
            a, losses = alpha, {}
        kernel = quant_kernel(x, c, a)
        for k, v in kernel.items():
            kernel_sum[k] = kernel_sum.get(k, 0.0) + v * x.size
        kernel_n += x.size
        f = (np.maximum(c, _EPS) ** (1.0 - a)).astype(np.float32)
        tensor = _rewrite(model.graph, site, f, weights)
        records.append({"tensor": tensor, "alpha": float(a), "f": f.tolist()})
        per_site.append({"producer": site.producer.name, "op": site.producer.op_type, "alpha": float(a),
                         "matmuls": len(site.matmuls), "kernel": kernel,
                         "loss": losses.get(a), "loss_per_token": losses.get(1.0)})
    kernel = {k: v / kernel_n for k, v in kernel_sum.items()} if kernel_n else {}
    model.metadata_props[METADATA_KEY] = json.dumps(records)
    model.metadata_props[KERNEL_KEY] = json.dumps(kernel)   # for the report / benchmarks
    return {"sites": len(per_site), "per_site": per_site, "kernel": kernel}


def _rewrite(graph: ir.Graph, site: Site, f: np.ndarray, weights: list[np.ndarray]) -> str:
    """X' = X / f in the producer, W' = diag(f) W; returns the name of X'."""
    node = site.producer
    base = node.name or node.outputs[0].name
    if node.op_type == "LayerNormalization":
        inputs = [node.inputs[0], add_initializer(
            graph, f"{base}.scale_crossquant", (node.inputs[1].const_value.numpy() / f).astype(np.float32))]
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            inputs.append(add_initializer(
                graph, f"{base}.bias_crossquant", (node.inputs[2].const_value.numpy() / f).astype(np.float32)))
    else:  # Mul(h, k): k' = k / f (broadcast over the last axis)
        i = next(i for i, v in enumerate(node.inputs) if v.const_value is not None)
        k = node.inputs[i].const_value.numpy().astype(np.float32)
        inputs = list(node.inputs)
        inputs[i] = add_initializer(graph, f"{base}.const_crossquant", (k / f).astype(np.float32))
    if site.duplicate:
        out = copy_for_consumers(graph, node, inputs, "crossquant", site.matmuls)
    else:
        for i, v in enumerate(inputs):
            if v is not node.inputs[i]:
                node.replace_input_with(i, v)
        out = node.outputs[0]
    for mm, w in zip(site.matmuls, weights):
        mm.replace_input_with(1, add_initializer(graph, f"{mm.name or mm.outputs[0].name}.weight_crossquant",
                                                 (w * f[:, None]).astype(np.float32)))
    return out.name


# ---- run-time quantizer (QDQ graph) -------------------------------------------------------------
class RuntimeSites:
    """The CrossQuant sites of a float graph (from its metadata), taken out of the static plan and
    given their run-time per-token quantizers after QDQ emission."""

    def __init__(self, model: ir.Model):
        self.records = {r["tensor"]: r for r in json.loads(model.metadata_props.get(METADATA_KEY, "[]"))}
        self.taken: list[str] = []

    def take(self, plan: QuantPlan) -> list[str]:
        """Remove the site tensors (and the int32 biases scaled by them) from the static plan."""
        taken = [t for t in self.records if t in plan.activations
                 and all(s.root != t or s.tensor == t for s in plan.activations.values())]
        for t in taken:
            del plan.activations[t]
        plan.biases = [b for b in plan.biases if b.activation not in taken]
        self.taken = taken
        return taken

    def emit(self, model: ir.Model) -> dict[str, dict]:
        graph = model.graph
        opset = model.opset_imports.get("", 17)
        values = {o.name: o for node in graph for o in node.outputs}
        encodings = {}
        for name in self.taken:
            rec = self.records[name]
            x = values[name]
            readers = [u for u in x.uses() if u.node.op_type == "MatMul" and u.idx == 0]
            nodes, q_out, d = runtime_quantizer(graph, x, np.asarray(rec["f"], np.float32), rec["alpha"], opset)
            graph.insert_after(x.producer(), nodes)
            for use in readers:
                mm = use.node
                mm.replace_input_with(0, q_out)
                y = mm.outputs[0]
                uses = list(y.uses())
                # the MatMul's output name keeps its meaning (d * accumulator) for the report's
                # per-layer comparison; the unscaled accumulator gets a new name
                name_y = y.name
                y.name = f"{name_y}_unscaled"
                mul = ir.Node("", "Mul", [y, d], name=f"{mm.name}_per_token_scale")
                mul.outputs[0].name = name_y
                graph.insert_after(mm, mul)
                for u in uses:
                    u.node.replace_input_with(u.idx, mul.outputs[0])
            encodings[name] = {"kind": "dynamic-activation", "dtype": "int8", "scheme": "crossquant-per-token",
                               "alpha": rec["alpha"], "qmax": QMAX}
        graph.sort()
        return encodings


def runtime_quantizer(graph: ir.Graph, x: ir.Value, f: np.ndarray, a: float,
                      opset: int) -> tuple[list[ir.Node], ir.Value, ir.Value]:
    """Nodes computing d = max_j|x f|^a / qmax and DequantizeLinear(QuantizeLinear(x / d, 1, 0), 1, 0);
    returns (nodes, dequantized codes, d)."""
    base = x.name
    f_val = add_initializer(graph, f"{base}.crossquant_f", f.astype(np.float32))
    nodes = [ir.Node("", "Mul", [x, f_val], name=f"{base}_crossquant_unfold"),
             ]
    nodes.append(ir.Node("", "Abs", [nodes[-1].outputs[0]], name=f"{base}_crossquant_abs"))
    if opset >= 18:
        axes = add_initializer(graph, f"{base}.crossquant_axes", np.array([-1], np.int64))
        nodes.append(ir.Node("", "ReduceMax", [nodes[-1].outputs[0], axes], attributes=[ir.AttrInt64("keepdims", 1)],
                             name=f"{base}_crossquant_token_max"))
    else:
        nodes.append(ir.Node("", "ReduceMax", [nodes[-1].outputs[0]], attributes=[ir.AttrInt64s("axes", [-1]), ir.AttrInt64("keepdims", 1)],
                             name=f"{base}_crossquant_token_max"))
    eps = add_initializer(graph, f"{base}.crossquant_eps", np.array(_EPS, np.float32))
    nodes.append(ir.Node("", "Max", [nodes[-1].outputs[0], eps], name=f"{base}_crossquant_floor"))
    expo = add_initializer(graph, f"{base}.crossquant_alpha", np.array(a, np.float32))
    nodes.append(ir.Node("", "Pow", [nodes[-1].outputs[0], expo], name=f"{base}_crossquant_pow"))
    inv_q = add_initializer(graph, f"{base}.crossquant_inv_qmax", np.array(1.0 / QMAX, np.float32))
    nodes.append(ir.Node("", "Mul", [nodes[-1].outputs[0], inv_q], name=f"{base}_crossquant_d"))
    d = nodes[-1].outputs[0]
    d.name = f"{base}_crossquant_d"
    nodes.append(ir.Node("", "Div", [x, d], name=f"{base}_crossquant_div"))
    one = add_initializer(graph, f"{base}.crossquant_unit_scale", np.array(1.0, np.float32))
    zp = add_initializer(graph, f"{base}.crossquant_zero_point", np.array(0, np.int8))
    q = ir.Node("", "QuantizeLinear", [nodes[-1].outputs[0], one, zp], name=f"{base}_crossquant_QuantizeLinear")
    q.outputs[0].name = f"{base}_crossquant_quantized"
    dq = ir.Node("", "DequantizeLinear", [q.outputs[0], one, zp], name=f"{base}_crossquant_DequantizeLinear")
    dq.outputs[0].name = f"{base}_crossquant_dequantized"
    nodes += [q, dq]
    return nodes, dq.outputs[0], d


# ---- registration -------------------------------------------------------------------------------
def _statistics(ctx: PassContext) -> dict:
    return smoothing.statistic_points(find_sites(ctx.model), MAX_ROWS)


def _run(ctx: PassContext) -> dict:
    return crossquant(ctx.model, ctx.points, find_sites(ctx.model))


def _check(config) -> str | None:
    if config.activation_type.is_float:
        return (f"crossquant quantizes activations to int8 per token; scheme {config.scheme!r} "
                "has float activations")
    return None


PASS = Pass(
    name="crossquant", phase="rewrite", order=100,
    summary="activation scale t_iᵃ·c_j¹⁻ᵃ/qmax: the channel part folded into the producer, the per-token part computed at run time",
    where="LayerNorm → MatMul, GELU → MatMul",
    run=_run, statistics=_statistics, check=_check, quantizer=RuntimeSites,
    describe=lambda s: f"crossquant: {s['sites']} sites, quantization kernel {s['kernel']}",
    applies=lambda model: bool(find_sites(model)),
    reference="Liu et al. 2024, CrossQuant")
