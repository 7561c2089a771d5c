"""SmoothQuant-style activation smoothing (Xiao et al., 2023, "SmoothQuant: accurate and efficient
post-training quantization for large language models").

A linear layer reading an activation X [tokens, K] with a constant weight W [K, N] computes, for any
per-input-channel s > 0,

    X W = (X diag(s)^-1) (diag(s) W).

Outlier channels of X (a few channels 10-100x wider than the rest, typical after LayerNorm in
transformers) waste the per-TENSOR activation grid; dividing them by s_j moves that range into row
j of W, which per-CHANNEL (per output column) weight quantization absorbs more cheaply. With
a_j = max|X_j| (calibrated) and w_j = max|W_j| (row j, over the columns of EVERY MatMul reading X -
Q, K and V share one s)

    s_j = a_j^alpha / w_j^(1 - alpha).

diag(s)^-1 is folded exactly into the producer, an ONNX LayerNormalization over the last axis:

    LN(x) = gamma * xhat + beta   ->   gamma'_j = gamma_j / s_j,  beta'_j = beta_j / s_j

and diag(s) into each weight: W'[j, :] = s_j W[j, :].

alpha is chosen per site on calibration rows X (a bounded random sample of token rows) by

    alpha* = argmin_alpha  sum_i || X W_i - Q_a(X / s) Q_w(s W_i) ||^2,   alpha in ALPHAS,

with Q_a uint8 asymmetric per-tensor (min / max range of the sample) and Q_w int8 symmetric per
output channel (qcc.qparams). If no alpha beats s = 1 the site is left alone.

Pattern: LayerNormalization (axis = last, constant 1-D scale and optional constant 1-D bias of
length K) whose output is not a graph output and whose every consumer is either a MatMul reading
it as input 0 with a constant 2-D [K, N] weight, or a Shape (reads only the shape, which smoothing
keeps). Any other consumer - in a post-LN BERT the residual Add reads every LN output - rules the
site out: dividing the LN output would change the residual stream.
Opt-in `duplicate=True` handles such sites exactly anyway: a copy of the LN with gamma' / beta'
feeds the MatMuls, the original keeps feeding the rest (one extra LayerNormalization per site).

Collection (`collect_stats`: streaming max|X_j| plus the row sample, from onnxruntime) and
application (`smooth`: alpha search, then rewrite) are separate.
Rewrite: new initializers for gamma, beta and every weight; with `duplicate`, a new LN node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

from ..initializers import add_initializer
from .node_copy import copy_for_consumers

from ..statistic_points import AbsMaxRows, collect
from .registry import Pass, PassContext
from ..qparams import (
    dequantize_values,
    quantize_values,
    range_to_qparams,
    weight_scales,
)
from ..qtypes import QType

ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
MAX_ROWS = 4096          # calibration token rows kept per site for the alpha search
_EPS = 1e-5


@dataclass
class Site:
    ln: ir.Node
    matmuls: list[ir.Node]
    others: list[ir.Node] = field(default_factory=list)   # non-MatMul readers (need `duplicate`)

    @property
    def tensor(self) -> str:
        return self.ln.outputs[0].name


def find_sites(model: ir.Model, duplicate: bool = False) -> tuple[list[Site], dict]:
    """LayerNormalization -> MatMul(const W) sites in graph order, plus a count of what was skipped."""
    sites, skipped = [], {"not_last_axis_or_const": 0, "other_consumers": 0, "no_matmul": 0}
    for ln in model.graph:
        if ln.op_type != "LayerNormalization" or ln.domain not in ("", "ai.onnx"):
            continue
        out = ln.outputs[0]
        k = _ln_width(ln)
        if k is None:
            skipped["not_last_axis_or_const"] += 1
            continue
        matmuls, others = [], []
        for use in out.uses():
            node = use.node
            if node.op_type == "MatMul" and use.idx == 0 and _const_weight(node, k):
                if node not in matmuls:
                    matmuls.append(node)
            elif node.op_type != "Shape":
                others.append(node)
        if not matmuls:
            skipped["no_matmul"] += 1
            continue
        if (others or out.is_graph_output()) and not duplicate:
            skipped["other_consumers"] += 1
            continue
        sites.append(Site(ln, matmuls, others))
    return sites, skipped


def statistic_points(sites: list[Site], max_rows: int = MAX_ROWS, seed: int = 0) -> dict:
    """tensor -> (tensor, AbsMaxRows): max|X_j| over all calibration rows and a random sample of at
    most `max_rows` rows [R, K], for every site's X (one generator, drawn in tensor order)."""
    rng = np.random.default_rng(seed)
    return {n: (n, AbsMaxRows(max_rows, rng)) for n in sorted({s.tensor for s in sites})}


def collect_stats(float_model: onnx.ModelProto, sites: list[Site], feeds: dict[str, np.ndarray],
                  batch_size: int = 16, max_rows: int = MAX_ROWS,
                  seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """tensor -> (max|X_j| over all calibration rows, a random sample of at most `max_rows` rows [R, K])."""
    return collect(float_model, statistic_points(sites, max_rows, seed), feeds, batch_size)


def smoothing_scale(act_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    s = np.maximum(act_max, _EPS) ** alpha / np.maximum(w_max, _EPS) ** (1.0 - alpha)
    return np.where((act_max > 0) & (w_max > 0), s, 1.0).astype(np.float32)


def quant_loss(x: np.ndarray, w: np.ndarray, s: np.ndarray, ref: np.ndarray | None = None) -> float:
    """|| X W - Q_a(X / s) Q_w(s W) ||^2 (uint8 asymmetric per-tensor X, int8 symmetric per-column W)."""
    ref = x @ w if ref is None else ref
    xs = (x / s).astype(np.float32)
    scale, zp = range_to_qparams(float(xs.min()), float(xs.max()), QType.UINT8, symmetric=False)
    xq = dequantize_values(quantize_values(xs, scale, zp, QType.UINT8), scale, zp)
    ws = (w * s[:, None]).astype(np.float32)
    wsc = weight_scales(ws, QType.INT8, axis=1)
    wq = dequantize_values(quantize_values(ws, wsc, 0, QType.INT8, axis=1, narrow=True), wsc, 0, axis=1)
    return float(np.square(ref - xq @ wq, dtype=np.float64).sum())


def choose_alpha(x: np.ndarray, act_max: np.ndarray, w: np.ndarray,
                 alphas=ALPHAS) -> tuple[float | None, dict]:
    """Best alpha on the sampled rows, or None when no alpha beats leaving the site alone."""
    ref = x @ w
    losses = {"none": quant_loss(x, w, np.ones(w.shape[0], np.float32), ref)}
    w_max = np.abs(w).max(axis=1)
    for a in alphas:
        losses[a] = quant_loss(x, w, smoothing_scale(act_max, w_max, a), ref)
    best = min(alphas, key=lambda a: losses[a])
    return (best if losses[best] < losses["none"] else None), losses


def smooth(model: ir.Model, stats: dict[str, tuple[np.ndarray, np.ndarray]], sites: list[Site],
           alphas=ALPHAS, alpha: float | None = None) -> dict:
    """Apply smoothing in place on every site with statistics; `alpha` fixes it instead of searching.
    Returns a summary with the chosen alpha and the loss reduction per site."""
    per_site = []
    for site in sites:
        if site.tensor not in stats:
            continue
        act_max, x = stats[site.tensor]
        weights = [mm.inputs[1].const_value.numpy().astype(np.float32) for mm in site.matmuls]
        w = np.concatenate(weights, axis=1)
        if alpha is None:
            chosen, losses = choose_alpha(x, act_max, w, alphas)
        else:
            chosen, losses = alpha, {}
        entry = {"ln": site.ln.name, "matmuls": len(site.matmuls), "duplicated": bool(site.others),
                 "alpha": chosen, "loss_none": losses.get("none"),
                 "loss": losses.get(chosen) if chosen is not None else losses.get("none")}
        per_site.append(entry)
        if chosen is None:
            continue
        s = smoothing_scale(act_max, np.abs(w).max(axis=1), chosen)
        _rewrite(model.graph, site, s, weights)
    applied = [e for e in per_site if e["alpha"] is not None]
    return {"sites": len(per_site), "smoothed": len(applied),
            "duplicated": sum(e["duplicated"] for e in applied), "per_site": per_site}


def _rewrite(graph: ir.Graph, site: Site, s: np.ndarray, weights: list[np.ndarray]) -> None:
    ln = site.ln
    base = ln.name or ln.outputs[0].name
    gamma = ln.inputs[1].const_value.numpy().astype(np.float32)
    new_inputs = [ln.inputs[0], add_initializer(graph, f"{base}.scale_smoothed", (gamma / s).astype(np.float32))]
    if len(ln.inputs) > 2 and ln.inputs[2] is not None:
        beta = ln.inputs[2].const_value.numpy().astype(np.float32)
        new_inputs.append(add_initializer(graph, f"{base}.bias_smoothed", (beta / s).astype(np.float32)))
    if site.others or ln.outputs[0].is_graph_output():
        # the residual path keeps the original LN; the MatMuls read a smoothed copy
        copy_for_consumers(graph, ln, new_inputs, "smoothed", site.matmuls)
    else:
        for i, v in enumerate(new_inputs[1:], start=1):
            ln.replace_input_with(i, v)
    for mm, w in zip(site.matmuls, weights):
        name = f"{mm.name or mm.outputs[0].name}.weight_smoothed"
        mm.replace_input_with(1, add_initializer(graph, name, (w * s[:, None]).astype(np.float32)))


def _ln_width(ln: ir.Node) -> int | None:
    """K when the LN normalizes the last axis with a constant 1-D scale (and bias) of length K."""
    if len(ln.inputs) < 2 or ln.inputs[1] is None or ln.inputs[1].const_value is None:
        return None
    gamma_shape = tuple(ln.inputs[1].const_value.shape)
    if len(gamma_shape) != 1:
        return None
    axis = ln.attributes.get_int("axis", -1)
    rank = ln.inputs[0].shape.rank() if ln.inputs[0].shape is not None else None
    if axis != -1 and (rank is None or axis != rank - 1):
        return None
    beta = ln.inputs[2] if len(ln.inputs) > 2 else None
    if beta is not None and (beta.const_value is None or tuple(beta.const_value.shape) != gamma_shape):
        return None
    if len(ln.outputs) > 1 and any(o.uses() or o.is_graph_output() for o in ln.outputs[1:]):
        return None            # Mean / InvStdDev outputs are read: leave it alone
    return gamma_shape[0]


def _const_weight(mm: ir.Node, k: int) -> bool:
    w = mm.inputs[1] if len(mm.inputs) > 1 else None
    return w is not None and w.const_value is not None and tuple(w.const_value.shape)[:1] == (k,) \
        and len(w.const_value.shape) == 2


# ---- registration -------------------------------------------------------------------------------
# duplicate=True: in a post-LN BERT the residual Add reads every LN output, so the MatMuls get a
# smoothed copy of the LN and the residual keeps the original - exact, one extra LN a site
def _statistics(ctx: PassContext) -> dict:
    return statistic_points(find_sites(ctx.model, duplicate=True)[0])


def _run(ctx: PassContext) -> dict:
    return smooth(ctx.model, ctx.points, find_sites(ctx.model, duplicate=True)[0])


PASS = Pass(
    name="smoothing", phase="rewrite", order=60,
    summary="SmoothQuant: per-channel scale moved from activations into the weights, folded into the LayerNorm",
    where="LayerNorm → MatMul",
    run=_run, statistics=_statistics,
    describe=lambda s: (f"smoothing: {s['smoothed']}/{s['sites']} LayerNorm sites "
                        f"({s['duplicated']} through a LayerNorm copy)"),
    applies=lambda model: bool(find_sites(model, duplicate=True)[0]),
    reference="Xiao et al. 2023, SmoothQuant")
