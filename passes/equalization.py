"""Cross-layer equalization (Nagel et al., 2019, "Data-free quantization through weight equalization
and bias correction", section 4.1).

For two convolutions joined by a positively homogeneous activation f (f(x / s) = f(x) / s, s > 0),

    y = W2 f(W1 x + b1) + b2,

any per-channel s > 0 on the channels between them gives the same function:

    W1'[c] = W1[c] / s_c,   b1'_c = b1_c / s_c,   W2'[:, c] = W2[:, c] * s_c.

With r1_c = max|W1[c]| (output channel c of the first conv) and r2_c = max|W2[:, c]| (input channel c
of the second), the paper's choice

    s_c = (1 / r2_c) * sqrt(r1_c * r2_c)

makes both ranges sqrt(r1_c * r2_c): per-TENSOR weight quantization no longer spends its grid on the
widest channel. Every conv of a chain sits in two pairs (as W2, then as W1), so the pairs are swept
a few times (the paper iterates to convergence).

The sqrt rule balances the WEIGHTS only; the activation between the convs is scaled by 1 / s_c too,
and with a per-tensor activation scale that can cost more than the weights gain (it did on
MobileNetV2: confident agreement 0.966 -> 0.946). So the compiler searches instead (`inputs` given):
one sweep in graph order, and for each pair the family

    s_c(alpha) = (r1_c / r2_c)^alpha,   alpha in {0, 1/8, 1/4, 3/8, 1/2, 3/4, 1}

(alpha = 0: unchanged, 1/2: the sqrt rule, 1: ranges swapped) is scored by the pair's quantized error
on a few calibration samples x,

    E(alpha) = || conv2(Qa(act(conv1(x; Qw(W1 / s)))); Qw(W2 * s)) - conv2(act(conv1(x; W1)); W2) ||^2

(Qw: int8 weights, per tensor or per channel as configured; Qa: uint8 over the activation's range),
and the alpha with the smallest E is applied. alpha = 0 is a candidate, so a pair is only changed when
that lowers its own error.

Activations:
- Relu: exact for every input. (No activation would be exact too, but is not matched: it amplifies
  an unbounded activation per channel, which hurt MobileNetV2 per-tensor in benchmarks/passes.py.)
- Clip(0, hi) (ReLU6) is NOT homogeneous: Clip(y / s) = Clip(y) / s only while y_c < hi and
  y_c / s_c < hi, i.e. where the clip acts as a Relu. ONNX Clip has one scalar bound, so it cannot be
  rescaled per channel. Channel c of such a pair is scaled only when the calibrated maximum m_c of
  the pre-activation satisfies m_c <= margin * hi AND m_c / s_c <= margin * hi (margin < 1 is head
  room for inputs beyond the calibration set); every other channel keeps s_c = 1. On those
  channels the clip never acts, before or after, so the rewrite is exact wherever the bound holds.
  m_c is tracked through the sweeps: m_c' = m_c / s_c.

Depthwise / grouped W2: input channel c of a conv with `group` g lives in weight rows
[k * C_out/g, (k+1) * C_out/g) with k = c // (C_in/g), column c % (C_in/g); for depthwise that is
row c, column 0.

Collection (`measure_preactivation_max`, only needed for Clip pairs) and application (`equalize`)
are separate.

Pattern: Conv (constant W1, optional constant b1) -> Relu | Clip(0, hi) -> Conv (constant W2),
every tensor with exactly one consumer and none a graph output.
Check: 4-D weights, channel counts consistent; Clip min exactly 0 and max constant.
Rewrite: new initializers for the weights and biases of every changed conv.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from ..initializers import add_initializer
from ..statistic_points import ChannelMax, FirstSamples, collect
from .registry import Pass, PassContext

ITERATIONS = 8
CLIP_MARGIN = 0.7        # scale a Clip channel only while its calibrated max stays below margin * hi
ALPHAS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0)   # s = (r1 / r2)^alpha candidates of the search
SEARCH_SAMPLES = 8       # calibration samples the per-pair search runs on
_EPS = 1e-12


@dataclass
class Pair:
    conv1: ir.Node
    act: ir.Node
    conv2: ir.Node
    clip_hi: float | None        # None: Relu / no activation (exact); else Clip(0, clip_hi)

    @property
    def preact(self) -> str:
        return self.conv1.outputs[0].name


def find_pairs(model: ir.Model) -> list[Pair]:
    """Conv -> Relu | Clip(0, hi) -> Conv chains, in graph order."""
    pairs = []
    for conv1 in model.graph:
        if conv1.op_type != "Conv" or not _const_weights(conv1):
            continue
        out = conv1.outputs[0]
        if out.is_graph_output() or len(out.uses()) != 1:
            continue
        nxt = out.uses()[0].node
        # Conv -> Conv with no activation is also exact, but it amplifies an unbounded activation
        # per channel; on MobileNetV2 per-tensor it cost 5 points of confident agreement: not matched.
        if nxt.op_type not in ("Relu", "Clip"):
            continue
        hi = None
        if nxt.op_type == "Clip":
            bounds = _clip_bounds(nxt)
            if bounds is None or bounds[0] != 0.0:
                continue
            hi = bounds[1] if np.isfinite(bounds[1]) else None
        act = nxt
        a_out = act.outputs[0]
        if a_out.is_graph_output() or len(a_out.uses()) != 1:
            continue
        nxt = a_out.uses()[0].node
        if nxt.op_type != "Conv" or not _const_weights(nxt) or nxt.inputs[0] is not a_out:
            continue
        w1, w2 = conv1.inputs[1].const_value.numpy(), nxt.inputs[1].const_value.numpy()
        group2 = nxt.attributes.get_int("group", 1)
        if w1.ndim != 4 or w2.ndim != 4 or w2.shape[1] * group2 != w1.shape[0] or w2.shape[0] % group2:
            continue
        pairs.append(Pair(conv1, act, nxt, hi))
    return pairs


def statistic_points(pairs: list[Pair], n_samples: int = SEARCH_SAMPLES) -> dict:
    """What the pass measures, as statistic points (compiler/statistic_points.py): the per-channel
    max of each Clip pair's pre-activation (conv1 output) over every sample and position, and the
    float input of every pair's first conv on `n_samples` calibration samples (the search's data)."""
    points = {("preact", n): (n, ChannelMax()) for n in sorted({p.preact for p in pairs if p.clip_hi is not None})}
    points.update({("input", n): (n, FirstSamples(n_samples)) for n in sorted({p.conv1.inputs[0].name for p in pairs})})
    return points


def _split(collected: dict) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(preact max by tensor, pair inputs by tensor) from collected statistic points."""
    preact = {n: v for (kind, n), v in collected.items() if kind == "preact"}
    inputs = {n: v for (kind, n), v in collected.items() if kind == "input"}
    return preact, inputs


def measure_preactivation_max(float_model: onnx.ModelProto, pairs: list[Pair], feeds: dict[str, np.ndarray],
                              batch_size: int = 16) -> dict[str, np.ndarray]:
    """Per-channel max over samples and positions of each Clip pair's pre-activation (conv1 output)."""
    points = {k: v for k, v in statistic_points(pairs).items() if k[0] == "preact"}
    return _split(collect(float_model, points, feeds, batch_size))[0]


def equalize(model: ir.Model, preact_max: dict[str, np.ndarray] | None = None, pairs: list[Pair] | None = None,
             iterations: int = ITERATIONS, clip_margin: float = CLIP_MARGIN,
             inputs: dict[str, np.ndarray] | None = None, per_channel: bool = False) -> dict:
    """Apply cross-layer equalization in place; returns a summary. Clip pairs without a measured
    `preact_max` entry are skipped.

    Without `inputs`: the sqrt rule, swept `iterations` times. With `inputs` (conv1 input of every pair,
    a few float calibration samples: `capture_pair_inputs`): one sweep in graph order, each pair's s from
    the family s_c = (r1_c / r2_c)^alpha, alpha in ALPHAS (alpha = 0: unchanged, 1/2: the sqrt rule),
    picking the alpha with the smallest quantized error of the pair (`pair_error`)."""
    preact_max = preact_max or {}
    pairs = find_pairs(model) if pairs is None else pairs
    weights: dict[int, np.ndarray] = {}
    biases: dict[int, np.ndarray | None] = {}
    nodes: dict[int, ir.Node] = {}
    for p in pairs:
        for conv in (p.conv1, p.conv2):
            if id(conv) not in nodes:
                nodes[id(conv)] = conv
                weights[id(conv)] = conv.inputs[1].const_value.numpy().astype(np.float64)
                b = conv.inputs[2] if len(conv.inputs) > 2 else None
                biases[id(conv)] = None if b is None else b.const_value.numpy().astype(np.float64)
    active = [p for p in pairs if p.clip_hi is None or p.preact in preact_max]
    if inputs is not None:
        active = [p for p in active if p.conv1.inputs[0].name in inputs]
        iterations = 1
    cur_max = {p.preact: preact_max[p.preact].astype(np.float64) for p in active if p.clip_hi is not None}
    scaled_channels = {id(p): np.zeros(weights[id(p.conv1)].shape[0], bool) for p in active}
    in_scale: dict[str, np.ndarray] = {}   # activation tensor -> per-channel factor it was divided by
    alphas: list[float] = []
    out_scale: dict[int, np.ndarray] = {}  # conv -> factor its output channels were divided by
    for _ in range(iterations):
        for p in active:
            w1, w2 = weights[id(p.conv1)], weights[id(p.conv2)]
            idx2 = _input_channel_index(w2, p.conv2.attributes.get_int("group", 1))
            r1 = np.abs(w1).reshape(w1.shape[0], -1).max(1)
            r2 = np.array([np.abs(w2[rows, col]).max() for rows, col in idx2])
            ok = (r1 > _EPS) & (r2 > _EPS)
            ratio = np.where(ok, r1 / np.where(ok, r2, 1.0), 1.0)

            def allowed(s):  # Clip pairs: scale only channels that stay below margin * hi
                if p.clip_hi is None:
                    return s
                m, limit = cur_max[p.preact], clip_margin * p.clip_hi
                return np.where((m <= limit) & (m / s <= limit), s, 1.0)

            if inputs is None:
                s = allowed(np.sqrt(ratio))
            else:
                x = inputs[p.conv1.inputs[0].name]
                if p.conv1.inputs[0].name in in_scale:
                    x = x / in_scale[p.conv1.inputs[0].name].reshape(1, -1, 1, 1)
                cands = [allowed(ratio ** a) for a in ALPHAS]
                errs = pair_error(p, x, w1, biases[id(p.conv1)], w2, biases[id(p.conv2)], idx2, cands,
                                  per_channel)
                best = int(np.argmin(errs))
                s = cands[best]
                alphas.append(ALPHAS[best])
                in_scale[p.act.outputs[0].name] = s
            if p.clip_hi is not None:
                cur_max[p.preact] = cur_max[p.preact] / s
            scaled_channels[id(p)] |= s != 1.0
            out_scale[id(p.conv1)] = out_scale.get(id(p.conv1), 1.0) * s
            w1, b1, w2 = _scaled(w1, biases[id(p.conv1)], w2, idx2, s)
            weights[id(p.conv1)], biases[id(p.conv1)], weights[id(p.conv2)] = w1, b1, w2
    changed = {k for p in active if scaled_channels[id(p)].any() for k in (id(p.conv1), id(p.conv2))}
    for key in changed:
        conv = nodes[key]
        base = conv.name or conv.outputs[0].name
        if "folded_bn" in conv.meta and key in out_scale:  # y_c / s_c ~ N(beta_c / s_c, (gamma_c / s_c)^2)
            bn = dict(conv.meta["folded_bn"])
            bn["beta"], bn["gamma"] = bn["beta"] / out_scale[key], bn["gamma"] / out_scale[key]
            conv.meta["folded_bn"] = bn
        conv.replace_input_with(1, add_initializer(model.graph, f"{base}.weight_equalized",
                                                weights[key].astype(np.float32)))
        if biases[key] is not None:
            conv.replace_input_with(2, add_initializer(model.graph, f"{base}.bias_equalized",
                                                    biases[key].astype(np.float32)))
    return {"pairs": len(pairs), "relu_pairs": sum(p.clip_hi is None for p in pairs),
            "clip_pairs": sum(p.clip_hi is not None for p in pairs),
            "channels_scaled": int(sum(v.sum() for v in scaled_channels.values())),
            "channels": int(sum(v.size for v in scaled_channels.values())), "convs_changed": len(changed),
            "alphas": alphas}


def _scaled(w1, b1, w2, idx2, s):
    """W1[c] / s_c, b1_c / s_c, W2[:, c] * s_c."""
    w1 = w1 / s.reshape((-1,) + (1,) * (w1.ndim - 1))
    b1 = None if b1 is None else b1 / s
    w2 = w2.copy()
    for c, (rows, col) in enumerate(idx2):
        w2[rows, col] *= s[c]
    return w1, b1, w2


def capture_pair_inputs(float_model: onnx.ModelProto, pairs: list[Pair], feeds: dict[str, np.ndarray],
                        n_samples: int = SEARCH_SAMPLES) -> dict[str, np.ndarray]:
    """The float input of every pair's first conv on `n_samples` calibration samples."""
    points = {k: v for k, v in statistic_points(pairs, n_samples).items() if k[0] == "input"}
    return _split(collect(float_model, points, feeds))[1]


def pair_error(p: Pair, x: np.ndarray, w1, b1, w2, b2, idx2, candidates: list[np.ndarray],
               per_channel: bool) -> list[float]:
    """For each candidate s: mean squared error of the pair's output conv2(act(conv1(x))) when W1 / s and
    W2 * s are quantized to int8 (symmetric, narrow; per channel or per tensor) and the activation
    between them to uint8 over its range, against the float pair (which every s leaves unchanged)."""
    import torch

    from . import layer_io

    def t(a):
        return None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    def act(y):
        return torch.relu(y) if p.clip_hi is None else torch.clamp(y, 0.0, p.clip_hi)

    axis = 0 if per_channel else None
    with torch.no_grad():
        xt = t(x)
        ref = layer_io.layer_forward(p.conv2, act(layer_io.layer_forward(p.conv1, xt, t(w1), t(b1))), t(w2), t(b2))
        errs = []
        for s in candidates:
            sw1, sb1, sw2 = _scaled(w1, b1, w2, idx2, s)
            a = act(layer_io.layer_forward(p.conv1, xt, layer_io.fake_quant_weight(t(sw1), 127, axis), t(sb1)))
            a = layer_io.fake_quant_act(a, 0.0, float(a.max()))
            y = layer_io.layer_forward(p.conv2, a, layer_io.fake_quant_weight(t(sw2), 127, axis), t(b2))
            errs.append(float(((y - ref) ** 2).mean()))
    return errs


def _input_channel_index(w2: np.ndarray, group: int) -> list[tuple[slice, int]]:
    """For each input channel c of a (grouped) conv weight [C_out, C_in/group, ...]: (rows, column)."""
    cin_g, cout_g = w2.shape[1], w2.shape[0] // group
    return [(slice((c // cin_g) * cout_g, (c // cin_g + 1) * cout_g), c % cin_g) for c in range(cin_g * group)]


def _const_weights(conv: ir.Node) -> bool:
    if len(conv.inputs) < 2 or conv.inputs[1] is None or conv.inputs[1].const_value is None:
        return False
    return not (len(conv.inputs) > 2 and conv.inputs[2] is not None and conv.inputs[2].const_value is None)


def _clip_bounds(clip: ir.Node) -> tuple[float, float] | None:
    """(min, max) of a Clip with constant bounds (attributes before opset 11, inputs after)."""
    if "min" in clip.attributes or "max" in clip.attributes:
        lo = clip.attributes.get_float("min", float("-inf"))
        hi = clip.attributes.get_float("max", float("inf"))
    else:
        vals = []
        for i in (1, 2):
            v = clip.inputs[i] if len(clip.inputs) > i else None
            if v is None:
                vals.append(float("-inf") if i == 1 else float("inf"))
            elif v.const_value is None:
                return None
            else:
                vals.append(float(v.const_value.numpy()))
        lo, hi = vals
    return (lo, hi) if np.isfinite(hi) else (lo, np.inf) if lo == 0.0 else None


# ---- registration -------------------------------------------------------------------------------
def _statistics(ctx: PassContext) -> dict:
    return statistic_points(find_pairs(ctx.model))


def _run(ctx: PassContext) -> dict:
    # scales chosen per pair by the pair's quantized error on a few calibration samples
    preact, inputs = _split(ctx.points)
    return equalize(ctx.model, preact, find_pairs(ctx.model), inputs=inputs, per_channel=ctx.config.per_channel)


PASS = Pass(
    name="equalization", phase="rewrite", order=20,
    summary="cross-layer equalization, per-pair exponent chosen by the pair's quantized error; depthwise included; through ReLU6 only channels that stay clear of the clip",
    where="conv → (relu) → conv chains",
    run=_run, statistics=_statistics, needs="torch",
    describe=lambda s: f"equalization: {s['channels_scaled']}/{s['channels']} channels in {s['pairs']} conv pairs",
    applies=lambda model: bool(find_pairs(model)),
    reference="Nagel et al. 2019, Data-free quantization through weight equalization and bias correction")
