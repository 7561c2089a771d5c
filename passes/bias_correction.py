"""Empirical bias correction (Nagel et al., 2019, "Data-free quantization ...", section 4.2, measured
instead of derived).

A quantized linear layer computes  y_hat = W_hat x_hat + b  instead of  y = W x + b. Its error has a
per-output-channel mean over the calibration data

    delta_c = E[y_hat_c - y_c]          (expectation over samples and spatial / token positions)

which later layers and the softmax read as a systematic shift. Subtracting it from the bias,

    b'_c = b_c - delta_c,

removes that mean error while leaving the variance unchanged; the int32 bias absorbs it for free.

Collection (`measure_shift`) and application (`apply_shift`) are separate. Collection measures each
layer's LOCAL error (NNCF's fast bias correction does the same): a quantized copy of the layer reads
the float input, so delta_c excludes error from upstream layers and all layers are corrected from
one pass without overshoot; outputs are reduced to per-channel means one batch at a time.
Application edits biases of the float graph before it is quantized again.

Pattern: Conv / ConvTranspose (bias input 2, created when absent), Gemm with a 1-D bias, and the
bias Add after a MatMul. Check: the layer's output is a float tensor with a known channel axis.

Analytic variant for BN-folded producers (the paper's section 4.2 proper, `analytic_shift`): with
eps = W_hat - W the weight quantization error, the mean output error of a layer is

    delta_o = E[(eps x)_o] = sum_{c, k} eps[o, c, k] E[x_c]     (zero padding ignored)

and E[x_c] follows from the BatchNorm folded into the conv producing x: its pre-activation is modelled
as y_c ~ N(beta_c, gamma_c^2) (folded_bn statistics, kept in node.meta by passes/fold_batchnorm.py and
rescaled by equalization). With a = -beta_c / |gamma_c|, b = (hi - beta_c) / |gamma_c|, phi / Phi the
standard normal pdf / cdf, a clipped normal x_c = clip(y_c, 0, hi) has

    E[x_c] = beta_c (Phi(b) - Phi(a)) + |gamma_c| (phi(a) - phi(b)) + hi (1 - Phi(b))

(hi = inf: Relu, E = beta Phi(-a) + |gamma| phi(a); no activation: E = beta). Pattern: a Conv / Gemm
whose input is [Relu | Clip(0, hi)] of a BN-folded Conv (Gemm via Flatten is not matched: the
GlobalAveragePool between changes the distribution). No data is read.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from ..backends import onnxruntime as ort_backend
from ..initializers import add_initializer
from .registry import Pass, PassContext


def bias_site(node: ir.Node, roles: dict[str, str]) -> tuple[ir.Node, str, int] | None:
    """(node whose output carries the layer result, that output's name, channel axis) or None."""
    if roles.get(node.name) != "compute":
        return None
    if node.op_type in ("Conv", "ConvTranspose"):
        return node, node.outputs[0].name, 1
    if node.op_type == "Gemm":
        if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].const_value is not None \
                and len(node.inputs[2].const_value.shape) != 1:
            return None
        return node, node.outputs[0].name, -1
    if node.op_type == "MatMul":
        uses = node.outputs[0].uses()
        if len(uses) == 1 and roles.get(uses[0].node.name) == "bias-add":
            add = uses[0].node
            return add, add.outputs[0].name, -1
    return None


def shadow_model(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto,
                 sites: dict[str, int]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The float graph plus, for every site, a quantized copy of its layer that reads the FLOAT
    input: its output minus the float output is the layer's own (local) error, independent of the
    error upstream - so every bias is corrected from one run, with no overshoot down the network."""
    producer = {o: n for n in qdq_model.graph.node for o in n.output}
    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    present = {i.name for i in model.graph.initializer}
    model.graph.initializer.extend(i for i in qdq_model.graph.initializer if i.name not in present)
    shadow: dict[str, str] = {}

    def copy(node: onnx.NodeProto, inputs: list[str]) -> onnx.NodeProto:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = node.name + "__shadow"
        del new.input[:]
        new.input.extend(inputs)
        del new.output[:]
        new.output.extend(o + "__shadow" for o in node.output)
        model.graph.node.append(new)
        return new

    copied: dict[str, str] = {}

    def shadow_input(name: str) -> str:
        if name not in copied:
            copied[name] = _shadow_input(name)
        return copied[name]

    def _shadow_input(name: str) -> str:
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            return name
        q = producer.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            q_copy = copy(q, list(q.input))        # reads the float tensor of the float graph
            return copy(dq, [q_copy.output[0]] + list(dq.input[1:])).output[0]
        return copy(dq, list(dq.input)).output[0]  # weight / bias from initializers

    for out in sites:
        node = producer[out]
        if node.op_type == "Add":  # the bias Add of a MatMul: shadow the MatMul first
            mm = next(producer[i] for i in node.input if i in producer and producer[i].op_type == "MatMul")
            mm_copy = copy(mm, [shadow_input(i) for i in mm.input])
            inputs = [mm_copy.output[0] if i == mm.output[0] else shadow_input(i) for i in node.input]
            shadow[out] = copy(node, inputs).output[0]
        else:
            shadow[out] = copy(node, [shadow_input(i) for i in node.input]).output[0]
    return model, shadow


def measure_shift(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, sites: dict[str, int],
                  feeds: dict[str, np.ndarray], batch_size: int = 16) -> dict[str, np.ndarray]:
    """delta = E[local quantized output - float output] per channel, for each site
    (tensor name -> channel axis), streamed over `feeds`."""
    model, shadow = shadow_model(float_model, qdq_model, sites)
    names = [n for pair in shadow.items() for n in pair]
    session = ort_backend.make_session(ort_backend.with_outputs(model, names), few_runs=True)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = dict.fromkeys(shadow, 0)
    for batch in ort_backend.batches(feeds, ort_backend.batch_size_for(float_model, batch_size)):
        outs = dict(zip(names, session.run(names, batch)))
        for name, shadow_name in shadow.items():
            r, q = outs[name], outs[shadow_name]
            axis = sites[name] % r.ndim
            others = tuple(i for i in range(r.ndim) if i != axis)
            # reduced in place over the other axes: no transposed copy of the batch
            diff = np.subtract(q, r, dtype=np.float64)
            sums[name] = sums.get(name, 0) + diff.sum(axis=others)
            counts[name] += diff.size // r.shape[axis]
    return {n: (sums[n] / counts[n]).astype(np.float32) for n in shadow if counts[n]}


def apply_shift(model: ir.Model, roles: dict[str, str], shifts: dict[str, np.ndarray]) -> int:
    """b' = b - delta on every layer whose output tensor has a measured shift; returns layers changed."""
    changed = 0
    for node in list(model.graph):
        site = bias_site(node, roles)
        if site is None or site[1] not in shifts:
            continue
        holder, _, _ = site
        delta = shifts[site[1]]
        index = 2 if holder is node else (0 if holder.inputs[0].const_value is not None else 1)
        if holder is node and (len(node.inputs) < 3 or node.inputs[2] is None):
            bias = np.zeros(delta.shape, np.float32)
        else:
            bias = holder.inputs[index].const_value.numpy().astype(np.float32)
        if bias.shape != delta.shape:
            continue
        value = add_initializer(model.graph, f"{holder.name}.bias_corrected", (bias - delta).astype(np.float32))
        if holder is node and len(node.inputs) < 3:
            node.resize_inputs(3)
        holder.replace_input_with(index, value)
        changed += 1
    return changed


def clipped_normal_mean(mu: np.ndarray, sigma: np.ndarray, hi: float = np.inf) -> np.ndarray:
    """E[clip(y, 0, hi)] for y ~ N(mu, sigma^2), elementwise; sigma = 0 gives clip(mu, 0, hi)."""
    from math import erf, sqrt

    mu, sigma = np.asarray(mu, np.float64), np.abs(np.asarray(sigma, np.float64))
    cdf = np.vectorize(lambda z: 0.5 * (1.0 + erf(z / sqrt(2.0))), otypes=[np.float64])
    pdf = lambda z: np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)
    safe = np.where(sigma > 0, sigma, 1.0)
    a = -mu / safe
    mean = mu * (1.0 - cdf(a)) + sigma * pdf(a)
    if np.isfinite(hi):
        b = (hi - mu) / safe
        mean = mu * (cdf(b) - cdf(a)) + sigma * (pdf(a) - pdf(b)) + hi * (1.0 - cdf(b))
    return np.where(sigma > 0, mean, np.clip(mu, 0.0, hi))


def input_mean(node: ir.Node) -> np.ndarray | None:
    """E[x_c] of a layer's input x under the folded-BN model, or None when x is not [act of] a BN-folded Conv."""
    from .equalization import _clip_bounds

    src = node.inputs[0].producer()
    hi = None
    if src is not None and src.op_type in ("Relu", "Clip"):
        if src.op_type == "Clip":
            bounds = _clip_bounds(src)
            if bounds is None or bounds[0] != 0.0:
                return None
            hi = bounds[1]
        else:
            hi = np.inf
        src = src.inputs[0].producer()
    if src is None or src.op_type != "Conv" or "folded_bn" not in src.meta:
        return None
    bn = src.meta["folded_bn"]
    if hi is None:
        return np.asarray(bn["beta"], np.float64)
    return clipped_normal_mean(bn["beta"], bn["gamma"], hi)


def analytic_shift(model: ir.Model, plan, power_of_two: bool = False) -> dict[str, np.ndarray]:
    """delta_o = sum eps[o, c, k] E[x_c] for every quantized Conv / Gemm whose input mean is known
    (`input_mean`); eps from the weights exactly as compiler/qdq.py will quantize them."""
    from ..qparams import dequantize_values, quantize_values, weight_scales

    shifts: dict[str, np.ndarray] = {}
    for spec in plan.weights:
        node = spec.node
        if node.op_type not in ("Conv", "Gemm") or spec.qtype.is_float or bias_site(node, plan.roles) is None:
            continue
        mean = input_mean(node)
        if mean is None:
            continue
        w = node.inputs[spec.index].const_value.numpy().astype(np.float32)
        scale = weight_scales(w, spec.qtype, spec.axis, power_of_two)
        w_hat = dequantize_values(quantize_values(w, scale, 0, spec.qtype, spec.axis, narrow=True), scale, 0, spec.axis)
        eps = (w_hat.astype(np.float64) - w)
        if node.op_type == "Conv":
            group = node.attributes.get_int("group", 1)
            cin_g, cout_g = w.shape[1], w.shape[0] // group
            if mean.shape[0] != cin_g * group:
                continue
            # input channel of weight [o, j] is (o // cout_g) * cin_g + j
            m = mean.reshape(group, cin_g)[np.arange(w.shape[0]) // cout_g]          # [C_out, cin_g]
            delta = (eps.reshape(w.shape[0], cin_g, -1).sum(-1) * m).sum(1)
        else:
            e = eps.T if node.attributes.get_int("transB", 0) else eps                # [K, N]
            if mean.shape[0] != e.shape[0]:
                continue
            delta = mean @ e
        shifts[node.outputs[0].name] = delta.astype(np.float32)
    return shifts


# ---- registration -------------------------------------------------------------------------------
def _analytic(ctx: PassContext) -> dict:
    from ..plan import build_plan

    model = ctx.model
    if ctx.weights:  # the shifts must see the weights the emitter will round
        from . import adaround

        model = ir.serde.deserialize_model(ctx.float_proto)
        adaround.apply_weights(model, ctx.weights)
        folded = {n.outputs[0].name: n.meta["folded_bn"] for n in ctx.model.graph if "folded_bn" in n.meta}
        for node in model.graph:
            if node.outputs and node.outputs[0].name in folded:
                node.meta["folded_bn"] = folded[node.outputs[0].name]
    ctx.analytic = analytic_shift(model, build_plan(model, ctx.config, ctx.stats), ctx.config.power_of_two)
    return {"layers": len(ctx.analytic)}


def _empirical(ctx: PassContext) -> dict:
    """Measure each quantized linear layer's local per-channel mean output error, fold it into its
    bias, and quantize again; an analytic shift already in the graph gets the measured residual added."""
    model, plan, _ = ctx.quantized
    sites = {}
    for node in model.graph:
        site = bias_site(node, plan.roles)
        if site is not None:
            sites[site[1]] = site[2]
    if not sites:
        return {"layers": 0}
    shift = measure_shift(ctx.float_proto, ir.to_proto(model), sites, ctx.calib)
    for name, delta in (ctx.analytic or {}).items():
        shift[name] = shift[name] + delta if name in shift else delta
    ctx.quantized = ctx.requantize(shift)
    return {"layers": len(shift)}


PASS = (Pass(
    name="bias-correction-analytic", phase="weights", order=10,
    summary="the same shift from folded BatchNorm statistics: E[x] of a clipped normal N(β, γ²) after ReLU / ReLU6",
    where="layers fed directly by a BN-folded conv",
    run=_analytic, describe=lambda s: f"analytic bias correction: {s['layers']} layers",
    after=("mixed-precision", "adaround"),   # the shifts see the weights as they will be rounded
    reference="Nagel et al. 2019, Data-free quantization, section 4.2"), Pass(
    name="bias-correction", phase="correct", order=0,
    summary="each quantized layer's mean output error, measured in a shadow graph, folded into its bias",
    where="every conv / gemm / matmul with a bias",
    run=_empirical, describe=lambda s: f"bias correction: {s['layers']} layers",
    reference="Nagel et al. 2019, Data-free quantization, section 4.2 (empirical)"))
