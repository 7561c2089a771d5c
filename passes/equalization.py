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

from ..backends import onnxruntime as ort_backend

ITERATIONS = 8
CLIP_MARGIN = 0.5        # scale a Clip channel only while its calibrated max stays below margin * hi
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


def measure_preactivation_max(float_model: onnx.ModelProto, pairs: list[Pair], feeds: dict[str, np.ndarray],
                              batch_size: int = 16) -> dict[str, np.ndarray]:
    """Per-channel max over samples and positions of each Clip pair's pre-activation (conv1 output)."""
    names = sorted({p.preact for p in pairs if p.clip_hi is not None})
    if not names:
        return {}
    session = ort_backend.make_session(ort_backend.with_outputs(float_model, names))
    maxes: dict[str, np.ndarray] = {}
    for batch in ort_backend.batches(feeds, ort_backend.batch_size_for(float_model, batch_size)):
        for name, out in zip(names, session.run(names, batch)):
            m = out.max(axis=(0, 2, 3)) if out.ndim == 4 else out.reshape(out.shape[0], out.shape[1], -1).max((0, 2))
            maxes[name] = np.maximum(maxes[name], m) if name in maxes else m
    return maxes


def equalize(model: ir.Model, preact_max: dict[str, np.ndarray] | None = None, pairs: list[Pair] | None = None,
             iterations: int = ITERATIONS, clip_margin: float = CLIP_MARGIN) -> dict:
    """Apply cross-layer equalization in place; returns a summary. Clip pairs without a measured
    `preact_max` entry are skipped."""
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
    cur_max = {p.preact: preact_max[p.preact].astype(np.float64) for p in active if p.clip_hi is not None}
    scaled_channels = {id(p): np.zeros(weights[id(p.conv1)].shape[0], bool) for p in active}
    for _ in range(iterations):
        for p in active:
            w1, w2 = weights[id(p.conv1)], weights[id(p.conv2)]
            idx2 = _input_channel_index(w2, p.conv2.attributes.get_int("group", 1))
            r1 = np.abs(w1).reshape(w1.shape[0], -1).max(1)
            r2 = np.array([np.abs(w2[rows, col]).max() for rows, col in idx2])
            s = np.ones_like(r1)
            ok = (r1 > _EPS) & (r2 > _EPS)
            s[ok] = np.sqrt(r1[ok] * r2[ok]) / r2[ok]
            if p.clip_hi is not None:
                m, limit = cur_max[p.preact], clip_margin * p.clip_hi
                s = np.where((m <= limit) & (m / s <= limit), s, 1.0)
                cur_max[p.preact] = m / s
            scaled_channels[id(p)] |= s != 1.0
            shape = (-1,) + (1,) * (w1.ndim - 1)
            weights[id(p.conv1)] = w1 / s.reshape(shape)
            if biases[id(p.conv1)] is not None:
                biases[id(p.conv1)] = biases[id(p.conv1)] / s
            w2 = w2.copy()
            for c, (rows, col) in enumerate(idx2):
                w2[rows, col] *= s[c]
            weights[id(p.conv2)] = w2
    changed = {k for p in active if scaled_channels[id(p)].any() for k in (id(p.conv1), id(p.conv2))}
    for key in changed:
        conv = nodes[key]
        base = conv.name or conv.outputs[0].name
        conv.replace_input_with(1, add_initializer(model.graph, f"{base}.weight_equalized",
                                                weights[key].astype(np.float32)))
        if biases[key] is not None:
            conv.replace_input_with(2, add_initializer(model.graph, f"{base}.bias_equalized",
                                                    biases[key].astype(np.float32)))
    return {"pairs": len(pairs), "relu_pairs": sum(p.clip_hi is None for p in pairs),
            "clip_pairs": sum(p.clip_hi is not None for p in pairs),
            "channels_scaled": int(sum(v.sum() for v in scaled_channels.values())),
            "channels": int(sum(v.size for v in scaled_channels.values())), "convs_changed": len(changed)}


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
