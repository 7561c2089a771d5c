"""RepQuant (Li et al., 2024, "RepQuant: towards accurate post-training quantization of large
transformer models via scale reparameterization"): per-channel quantization of post-LayerNorm
activations reparameterized into one per-tensor quantizer, and a log-sqrt(2) quantizer for Softmax.

1. LayerNorm reparameterization (float-equivalent rewrite, before calibration). The post-LN
activation X [tokens, K] has wildly different channel ranges [lo_j, hi_j]; per-channel asymmetric
quantization (uint8: s_j = (hi_j - lo_j) / 255, z_j = round(-lo_j / s_j)) fits each, but no integer
GEMM takes a per-INPUT-channel activation scale. With one tensor scale and zero point

    s~ = mean_j s_j,   r_j = s_j / s~,   z~ = round(mean_j z_j)

and X'_j = X_j / r_j + s~ (z_j - z~),  per-tensor quantization of X' with (s~, z~) gives exactly the
per-channel codes of X:  round(X'_j / s~) + z~ = round(X_j / s_j) + z_j  (z_j - z~ is an integer).
Both sides fold exactly into the graph:

    LN:      gamma'_j = gamma_j / r_j,   beta'_j = beta_j / r_j + s~ (z_j - z~)
    linear:  X W + b = (X' - delta) diag(r) W + b,   delta_j = s~ (z_j - z~)
             W' = diag(r) W,   b' = b - delta W'

(a copy of the LN where the residual also reads its output, as passes/smoothing.py does). The
pipeline's own calibration then picks the per-tensor range of X', whose channels now share one
range [-z~ s~, (255 - z~) s~]. Symmetric activation schemes use z_j = z~ = 0 (scale part only).
Pattern: LayerNormalization -> MatMul(const W [K, N]) (-> Add(const b [N])) sites of
passes/smoothing.find_sites; a site whose MatMuls lack a bias Add gets the scale part only.

2. log-sqrt(2) quantizer for Softmax outputs p in [0, 1] (b bits):

    q = clamp(round(-2 log2 p), 0, 2^b - 1),      p^ = 2^(-q / 2)

(p = 0 -> q = 2^b - 1, p^ = 2^-((2^b - 1) / 2), ~0). Its steps are relative (a factor sqrt(2)), so
the many tiny attention probabilities keep their resolution. In the QDQ graph (onnxruntime) it is

    q = Cast(Clip(Round(Log(p) * (-2 / ln 2)), 0, 2^b - 1), uint8)
    p^ = Exp(Cast(q, float) * (-ln 2 / 2))

and an integer target computes p^ V without multiplies of p^: with q = 2m + e (e in {0, 1}),

    p^ * v = (v >> m) * (e ? 1/sqrt(2) : 1)    - a right shift by m and a parity-selected
                                                 fixed-point multiply (181 / 256 ~ 1/sqrt(2)).

The Softmax output leaves the static plan (`LogSoftmaxSites.take`) and gets this quantizer after
QDQ emission (`LogSoftmaxSites.emit`) when all its readers are MatMuls.
Collection (`collect_channel_ranges`: streaming per-channel min / max from onnxruntime) and
application (`reparameterize`) are separate.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from ..statistic_points import LastAxisMinMax, collect
from .registry import Pass, PassContext
from ..initializers import add_initializer
from .node_copy import copy_for_consumers
from ..plan import QuantPlan
from . import smoothing

_LN2 = float(np.log(2.0))


# ---- 1. LayerNorm reparameterization ---------------------------------------------------------
def find_sites(model: ir.Model) -> list[smoothing.Site]:
    return smoothing.find_sites(model, duplicate=True)[0]


def statistic_points(tensors: list[str]) -> dict:
    """tensor -> (tensor, per-channel min / max over every calibration row, last axis = channel)."""
    return {n: (n, LastAxisMinMax()) for n in sorted(set(tensors))}


def collect_channel_ranges(float_model: onnx.ModelProto, tensors: list[str], feeds,
                           batch_size: int = 16) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """tensor -> (per-channel min, per-channel max) over every calibration row (last axis = channel)."""
    return collect(float_model, statistic_points(tensors), feeds, batch_size)


def channel_qparams(lo: np.ndarray, hi: np.ndarray, levels: int = 255,
                    symmetric: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (s_j, z_j): asymmetric min / max uint8, or symmetric (z = 0)."""
    lo, hi = np.minimum(lo, 0.0).astype(np.float64), np.maximum(hi, 0.0).astype(np.float64)
    if symmetric:
        s = np.maximum(-lo, hi) / (levels / 2.0)
        return np.maximum(s, 1e-12), np.zeros_like(s)
    s = np.maximum((hi - lo) / levels, 1e-12)
    return s, np.clip(np.rint(-lo / s), 0, levels)


def reparam_factors(lo: np.ndarray, hi: np.ndarray, symmetric: bool = False,
                    levels: int = 255) -> tuple[np.ndarray, np.ndarray, float, int]:
    """(r, delta, s~, z~):  X' = X / r + delta,  delta_j = s~ (z_j - z~)."""
    s, z = channel_qparams(lo, hi, levels, symmetric)
    s_t = float(s.mean())
    z_t = int(np.rint(z.mean()))
    r = (s / s_t).astype(np.float32)
    delta = (s_t * (z - z_t)).astype(np.float32)
    return r, delta, s_t, z_t


def _bias_add(mm: ir.Node) -> tuple[ir.Node, int] | None:
    uses = mm.outputs[0].uses()
    if len(uses) != 1 or mm.outputs[0].is_graph_output():
        return None
    add = uses[0].node
    if add.op_type != "Add":
        return None
    i = 1 - uses[0].idx
    b = add.inputs[i]
    n = mm.inputs[1].const_value.shape[1]
    if b is None or b.const_value is None or tuple(b.const_value.shape) != (n,):
        return None
    return add, i


def reparameterize(model: ir.Model, ranges: dict[str, tuple[np.ndarray, np.ndarray]],
                   sites: list[smoothing.Site], symmetric: bool = False) -> dict:
    """Apply the LN reparameterization in place on every site with ranges; returns a summary."""
    per_site = []
    graph = model.graph
    for site in sites:
        if site.tensor not in ranges:
            continue
        biases = [_bias_add(mm) for mm in site.matmuls]
        zero_shift = not symmetric and all(b is not None for b in biases)
        r, delta, s_t, z_t = reparam_factors(*ranges[site.tensor], symmetric=not zero_shift)
        ln = site.ln
        base = ln.name or ln.outputs[0].name
        gamma = ln.inputs[1].const_value.numpy().astype(np.float32)
        beta = (ln.inputs[2].const_value.numpy().astype(np.float32) if len(ln.inputs) > 2 and ln.inputs[2]
                is not None else np.zeros_like(gamma))
        inputs = [ln.inputs[0], add_initializer(graph, f"{base}.scale_repquant", gamma / r),
                  add_initializer(graph, f"{base}.bias_repquant", (beta / r + delta).astype(np.float32))]
        if site.others or ln.outputs[0].is_graph_output():
            copy_for_consumers(graph, ln, inputs, "repquant", site.matmuls)
        else:
            if len(ln.inputs) < 3:
                ln.resize_inputs(3)
            for i in (1, 2):
                ln.replace_input_with(i, inputs[i])
        for mm, bias in zip(site.matmuls, biases):
            w = mm.inputs[1].const_value.numpy().astype(np.float32)
            w_new = (w * r[:, None]).astype(np.float32)
            mm.replace_input_with(1, add_initializer(graph, f"{mm.name}.weight_repquant", w_new))
            if zero_shift:
                add, i = bias
                b = add.inputs[i].const_value.numpy().astype(np.float32)
                b_new = (b - delta.astype(np.float64) @ w_new.astype(np.float64)).astype(np.float32)
                add.replace_input_with(i, add_initializer(graph, f"{add.name}.bias_repquant", b_new))
        per_site.append({"ln": ln.name, "matmuls": len(site.matmuls), "zero_shift": zero_shift,
                         "r_max": float(r.max()), "r_min": float(r.min()), "scale": s_t, "zero_point": z_t})
    return {"sites": len(per_site), "per_site": per_site}


# ---- 2. log-sqrt(2) quantizer for Softmax outputs --------------------------------------------
def log2_quantize(p: np.ndarray, bits: int = 8) -> np.ndarray:
    """q = clamp(round(-2 log2 p), 0, 2^b - 1) (round half to even, as ONNX Round)."""
    with np.errstate(divide="ignore"):
        code = np.rint(-2.0 * np.log2(np.asarray(p, np.float32)))
    return np.clip(code, 0, 2 ** bits - 1).astype(np.uint8 if bits <= 8 else np.uint16)


def log2_dequantize(q: np.ndarray) -> np.ndarray:
    """p^ = 2^(-q/2) = 2^-m * (1/sqrt 2)^e for q = 2m + e."""
    q = np.asarray(q).astype(np.int64)
    m, e = q >> 1, q & 1
    return (np.ldexp(1.0, -m) * np.where(e == 1, np.sqrt(0.5), 1.0)).astype(np.float32)


class LogSoftmaxSites:
    """Softmax outputs read only by MatMuls: out of the static plan, log-sqrt(2) quantized instead."""

    def __init__(self, model: ir.Model, bits: int = 8):
        self.bits = bits
        self.softmax_outputs = {n.outputs[0].name for n in model.graph
                                if n.op_type == "Softmax" and n.domain in ("", "ai.onnx")
                                and n.outputs[0].uses() and not n.outputs[0].is_graph_output()
                                and all(u.node.op_type == "MatMul" for u in n.outputs[0].uses())}
        self.taken: list[str] = []

    def take(self, plan: QuantPlan) -> list[str]:
        self.taken = []
        for name in self.softmax_outputs:
            spec = plan.activations.get(name)
            if spec is None or spec.root != name or any(s.root == name and s.tensor != name
                                                        for s in plan.activations.values()):
                continue
            self.taken.append(name)
        for name in self.taken:
            del plan.activations[name]
        plan.biases = [b for b in plan.biases if b.activation not in self.taken]
        return self.taken

    def emit(self, model: ir.Model) -> dict[str, dict]:
        graph = model.graph
        values = {o.name: o for node in graph for o in node.outputs}
        encodings = {}
        for name in self.taken:
            p = values[name]
            uses = [u for u in p.uses() if u.node.op_type == "MatMul"]
            if not uses:
                continue
            nodes, p_hat = log_quantizer(graph, p, self.bits)
            graph.insert_after(p.producer(), nodes)
            for u in uses:
                u.node.replace_input_with(u.idx, p_hat)
            encodings[name] = {"kind": "log-activation", "dtype": "uint8", "scheme": "log-sqrt2",
                               "bits": self.bits}
        graph.sort()
        return encodings


def log_quantizer(graph: ir.Graph, p: ir.Value, bits: int = 8) -> tuple[list[ir.Node], ir.Value]:
    """Nodes for q = Cast(Clip(Round(Log(p) * (-2 / ln 2)), 0, 2^b - 1), uint8) and
    p^ = Exp(Cast(q, float) * (-ln 2 / 2)); returns (nodes, p^). The codes are named <p>_log2_quantized."""
    name = p.name
    c = lambda tag, v: add_initializer(graph, f"{name}.log2q_{tag}", np.array(v, np.float32))
    log = ir.Node("", "Log", [p], name=f"{name}_log2q_log")
    mul = ir.Node("", "Mul", [log.outputs[0], c("neg2_over_ln2", -2.0 / _LN2)], name=f"{name}_log2q_scale")
    rnd = ir.Node("", "Round", [mul.outputs[0]], name=f"{name}_log2q_round")
    clip = ir.Node("", "Clip", [rnd.outputs[0], c("zero", 0.0), c("qmax", float(2 ** bits - 1))],
                   name=f"{name}_log2q_clip")
    code = ir.Node("", "Cast", [clip.outputs[0]], attributes=[ir.AttrInt64("to", int(ir.DataType.UINT8))],
                   name=f"{name}_log2q_QuantizeLog")
    code.outputs[0].name = f"{name}_log2_quantized"
    back = ir.Node("", "Cast", [code.outputs[0]], attributes=[ir.AttrInt64("to", int(ir.DataType.FLOAT))],
                   name=f"{name}_log2q_cast")
    half = ir.Node("", "Mul", [back.outputs[0], c("neg_ln2_over_2", -_LN2 / 2.0)], name=f"{name}_log2q_exponent")
    exp = ir.Node("", "Exp", [half.outputs[0]], name=f"{name}_log2q_DequantizeLog")
    exp.outputs[0].name = f"{name}_log2_dequantized"
    return [log, mul, rnd, clip, code, back, half, exp], exp.outputs[0]


def shift_parity_matmul(q: np.ndarray, v: np.ndarray, frac_bits: int = 8) -> np.ndarray:
    """The integer-target form of p^ @ v for int32 v:  (sum_t ((v_t << F) >> m_t) * (e_t ? 181 : 256)) >> 2F
    with q = 2m + e, 181 / 256 ~ 1/sqrt(2) and F = frac_bits fraction bits (shifts round down)."""
    q = np.asarray(q).astype(np.int64)
    m, e = np.minimum(q >> 1, 62), q & 1        # a shift past the word width leaves 0 (or -1)
    mult = np.where(e == 1, int(np.rint(2 ** frac_bits / np.sqrt(2.0))), 2 ** frac_bits)
    v = np.asarray(v).astype(np.int64) << frac_bits
    # [.., S, T] codes times [.., T, D] values: shift each term, sum over T
    terms = (v[..., None, :, :] >> m[..., :, :, None]) * mult[..., :, :, None]
    return terms.sum(axis=-2) >> (2 * frac_bits)


# ---- registration -------------------------------------------------------------------------------
def _statistics(ctx: PassContext) -> dict:
    return statistic_points([site.tensor for site in find_sites(ctx.model)])


def _run(ctx: PassContext) -> dict:
    return reparameterize(ctx.model, ctx.points, find_sites(ctx.model), symmetric=ctx.config.activation_symmetric)


PASS = (Pass(
    name="repquant", phase="rewrite", order=80,
    summary="per-channel post-LayerNorm quantization reparameterized into one per-tensor scale via γ/β and the next weights",
    where="LayerNorm → MatMul",
    run=_run, statistics=_statistics,
    describe=lambda s: f"repquant: {s['sites']} LayerNorm sites reparameterized to one per-tensor scale",
    applies=lambda model: bool(find_sites(model)),
    reference="Li et al. 2024, RepQuant"), Pass(
    name="repquant-softmax", phase="quantizer", order=90,
    summary="log-√2 quantizer for Softmax outputs",
    where="Softmax",
    quantizer=LogSoftmaxSites, after=("crossquant",),   # emission order: artifacts stay byte-identical
    applies=lambda model: any(node.op_type == "Softmax" for node in model.graph),
    reference="Li et al. 2024, RepQuant"))
