"""LayerNorm fusion: a decomposed layer normalization -> one ONNX LayerNormalization (opset 17).

Over the normalized axes A (the last k axes of x), with n = |A| elements per row,

    mu = ReduceMean(x, A)                  d = x - mu
    v  = ReduceMean(d^2, A)                (d^2 written as Pow(d, 2) or Mul(d, d))
    y  = d / sqrt(v + eps)                 (Div(d, s), or Mul(d, Reciprocal(s)))
    LN(x) = gamma * y + beta               (Mul / Add with constants, both optional)

which is exactly  LayerNormalization(x, gamma, beta, axis=min(A), epsilon=eps)  (stash_type float).
torch's TorchScript exporter below opset 17, paddle2onnx and tf2onnx write the decomposed form;
smoothing, crossquant, AffineQuant and RepQuant only recognise the fused one.

Some exporters add epsilon after the square root, y = d / (sqrt(v) + eps). That is not quite the
same function; it is fused with epsilon' = eps^2, which agrees where it matters:

    (sqrt(v) + eps) / sqrt(v + eps^2) = 1 + eps / sqrt(v) + O(eps^2 / v)     (v >> eps^2)

and both give d / eps as v -> 0; the relative difference is at most about eps / std(x) (1e-5 for a
row with unit spread and eps = 1e-5, far below int8 resolution).

Pattern (rooted at each ReduceMean):

    ReduceMean(x) -> Sub(x, .) -> {Pow(., 2) | Mul(., .)} -> ReduceMean -> {Add(eps) -> Sqrt |
    Sqrt -> Add(eps)} -> {Div(d, .) | Mul(d, Reciprocal(.))} [-> Mul(gamma)] [-> Add(beta)]

Check (otherwise the graph is left as it is, and the reason counted):
  - both reductions keep dims and reduce the same axes, a contiguous run ending at the last axis
    (axes attribute below opset 18, axes input from 18);
  - the Sub's first operand is the very tensor the first ReduceMean reads (x - mean(x), not
    y - mean(x)); the square is of that difference and the division divides it;
  - epsilon is a constant scalar and x is float / double;
  - gamma and beta are constants broadcastable on the normalized axes only (size 1 on every other
    axis, no extra leading axes); they are expanded to the normalized shape (which must be static);
  - every intermediate value is read only inside the pattern and is not a graph output (an affine
    Mul / Add whose input has other readers is left outside the fused node).
Rewrite: one LayerNormalization(x, gamma', beta') with gamma' = broadcast(gamma) (ones when absent)
and beta' = broadcast(beta) (omitted when absent), taking over the last matched value's name; the
matched nodes are removed. The ONNX operator needs opset 17: `canonicalize` upgrades the model
when a match exists in a lower opset (onnxruntime and TVM 0.27's Relax ONNX frontend both import
LayerNormalization from opset 17; neither takes it in the default domain below).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from ..initializers import add_initializer

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.DOUBLE)
LN_OPSET = 17


@dataclass
class Match:
    x: ir.Value
    axis: int                        # first normalized axis (negative: counted from the end)
    norm_shape: tuple[int, ...]
    epsilon: float
    eps_after_sqrt: bool
    gamma: np.ndarray | None
    beta: np.ndarray | None
    nodes: list[ir.Node] = field(default_factory=list)   # matched nodes, in pattern order
    output: ir.Value | None = None                        # the value the fused node replaces


def find_layernorms(model: ir.Model) -> tuple[list[Match], dict]:
    """Decomposed LayerNorms in graph order, and how many near-misses failed which check."""
    matches, skipped = [], {}
    opset = model.opset_imports.get("", 0)
    for node in model.graph:
        if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx"):
            continue
        m = _match(node, opset)
        if isinstance(m, str):
            if m != "no pattern":
                skipped[m] = skipped.get(m, 0) + 1
        else:
            matches.append(m)
    return matches, skipped


def fuse_layernorms(model: ir.Model, matches: list[Match] | None = None) -> int:
    """Replace every match (found now unless given) with one LayerNormalization; returns the count.
    The model must be at opset >= 17."""
    if model.opset_imports.get("", 0) < LN_OPSET:
        raise ValueError(f"LayerNormalization needs opset {LN_OPSET}")
    if matches is None:
        matches, _ = find_layernorms(model)
    graph = model.graph
    for m in matches:
        out = m.output
        base = out.name or (m.nodes[-1].name or "layernorm")
        dtype = np.float64 if m.x.dtype == ir.DataType.DOUBLE else np.float32
        gamma = m.gamma if m.gamma is not None else np.ones(m.norm_shape, dtype)
        inputs = [m.x, add_initializer(graph, f"{base}.ln_scale", np.ascontiguousarray(gamma, dtype))]
        if m.beta is not None:
            inputs.append(add_initializer(graph, f"{base}.ln_bias", np.ascontiguousarray(m.beta, dtype)))
        ln = ir.Node("", "LayerNormalization", inputs, num_outputs=1,
                     attributes=[ir.AttrInt64("axis", m.axis), ir.AttrFloat32("epsilon", m.epsilon)],
                     name=f"{m.nodes[0].name or base}_layernorm")
        graph.insert_after(m.nodes[-1], ln)
        name = out.name
        out.replace_all_uses_with(ln.outputs[0], replace_graph_outputs=True)
        graph.remove(m.nodes, safe=True)
        ln.outputs[0].name = name
        ln.outputs[0].type, ln.outputs[0].shape = out.type, out.shape
    return len(matches)


# ---- matching -----------------------------------------------------------------------------------

def _match(mean1: ir.Node, opset: int) -> Match | str:
    x = mean1.inputs[0]
    mu = mean1.outputs[0]
    subs = [u.node for u in mu.uses() if u.node.op_type == "Sub"]
    if len(subs) != 1:
        return "no pattern"
    sub = subs[0]
    if sub.inputs[1] is not mu:
        return "no pattern"
    if sub.inputs[0] is not x:
        return "sub operand is not the reduced tensor"
    d = sub.outputs[0]
    # the square of d
    sq = _only_reader(d, ("Pow", "Mul"), lambda n: n.op_type == "Mul" and n.inputs[0] is d and n.inputs[1] is d
                      or n.op_type == "Pow" and n.inputs[0] is d and _scalar(n.inputs[1]) == 2.0)
    if sq is None:
        return "no pattern"
    mean2 = _single_use(sq.outputs[0], "ReduceMean")
    if mean2 is None:
        return "no pattern"
    # epsilon inside or after the square root
    first = _single_use(mean2.outputs[0], ("Add", "Sqrt"))
    if first is None:
        return "no pattern"
    if first.op_type == "Add":
        eps_v, after = _other(first, mean2.outputs[0]), False
        sqrt = _single_use(first.outputs[0], "Sqrt")
        if sqrt is None:
            return "no pattern"
        chain, std = [first, sqrt], sqrt.outputs[0]
    else:
        add = _single_use(first.outputs[0], "Add")
        if add is None:
            return "no pattern"
        eps_v, after = _other(add, first.outputs[0]), True
        chain, std = [first, add], add.outputs[0]
    # d / std   or   d * Reciprocal(std)
    div = _single_use(std, ("Div", "Reciprocal"))
    if div is None:
        return "no pattern"
    if div.op_type == "Div":
        if div.inputs[0] is not d or div.inputs[1] is not std:
            return "no pattern"
        norm_nodes = [div]
    else:
        mul = _single_use(div.outputs[0], "Mul")
        if mul is None or _other(mul, div.outputs[0]) is not d:
            return "no pattern"
        norm_nodes = [div, mul]
    # d is read by the square and the division only
    readers = {id(u.node) for u in d.uses()}
    if readers != {id(sq), id(norm_nodes[-1])} or d.is_graph_output():
        return "intermediate read outside the pattern"
    for v in [mu, sq.outputs[0], mean2.outputs[0]] + [n.outputs[0] for n in chain] + \
            [n.outputs[0] for n in norm_nodes[:-1]]:
        if v.is_graph_output():
            return "intermediate read outside the pattern"

    # checks
    if x.dtype is not None and x.dtype not in FLOAT_TYPES:
        return "not a float tensor"
    rank = x.shape.rank() if x.shape is not None else None
    ax1, ax2 = _axes(mean1, opset), _axes(mean2, opset)
    if ax1 is None or ax2 is None:
        return "axes not constant or keepdims=0"
    axes = _trailing_axes(ax1, rank)
    if axes is None or _trailing_axes(ax2, rank) != axes:
        return "not the same trailing axes"
    eps = _scalar(eps_v)
    if eps is None:
        return "epsilon not a constant scalar"
    k = len(axes)
    norm_shape = None
    if x.shape is not None and all(isinstance(s, int) for s in x.shape.dims[-k:]):
        norm_shape = tuple(int(s) for s in x.shape.dims[-k:])

    # optional affine: Mul(gamma) then Add(beta)
    nodes = [mean1, sub, sq, mean2, *chain, *norm_nodes]
    out = norm_nodes[-1].outputs[0]
    gamma = beta = None
    step = _single_use(out, "Mul")
    if step is not None and not out.is_graph_output():
        g = _const(_other(step, out))
        if g is not None:
            gamma, nodes, out = g, nodes + [step], step.outputs[0]
    step = _single_use(out, "Add")
    if step is not None and not out.is_graph_output():
        b = _const(_other(step, out))
        if b is not None:
            beta, nodes, out = b, nodes + [step], step.outputs[0]
    if norm_shape is None:   # gamma / beta may carry the full normalized shape
        for c in (gamma, beta):
            if c is not None and c.ndim >= k and all(s > 1 for s in c.shape[-k:]):
                norm_shape = tuple(c.shape[-k:])
    if norm_shape is None:
        return "normalized shape not static"
    try:
        if gamma is not None:
            gamma = _expand(gamma, norm_shape, rank)
        if beta is not None:
            beta = _expand(beta, norm_shape, rank)
    except ValueError:
        return "gamma / beta not broadcastable on the normalized axes"
    return Match(x=x, axis=-k, norm_shape=norm_shape, epsilon=float(eps * eps if after else eps),
                 eps_after_sqrt=after, gamma=gamma, beta=beta, nodes=nodes, output=out)


def _axes(node: ir.Node, opset: int) -> tuple[int, ...] | None:
    """A ReduceMean's axes (attribute below opset 18, input from 18), None unless keepdims=1 and
    the axes are given and constant."""
    if node.attributes.get_int("keepdims", 1) != 1:
        return None
    attr = node.attributes.get("axes")
    if attr is not None:
        return tuple(int(a) for a in attr.as_ints())
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        c = _const(node.inputs[1])
        return None if c is None else tuple(int(a) for a in c.reshape(-1))
    return None            # all axes (noop_with_empty_axes aside): not a per-row normalization


def _trailing_axes(axes: tuple[int, ...], rank: int | None) -> tuple[int, ...] | None:
    """The axes as negative indices when they are a contiguous run ending at the last axis."""
    if not axes:
        return None
    if any(a >= 0 for a in axes):
        if rank is None:
            return None
        axes = tuple(a - rank if a >= 0 else a for a in axes)
    neg = tuple(sorted(set(axes)))
    if len(neg) != len(axes) or neg != tuple(range(-len(neg), 0)) or (rank is not None and len(neg) > rank):
        return None
    return neg


def _expand(c: np.ndarray, norm_shape: tuple[int, ...], rank: int | None) -> np.ndarray:
    """c broadcast to norm_shape, when c varies along the normalized axes only and adds no axes."""
    k = len(norm_shape)
    if c.ndim > (rank if rank is not None else k):
        raise ValueError("extra leading axes (the output would gain a dimension)")
    lead = c.shape[:-k] if c.ndim > k else ()
    if any(s != 1 for s in lead):
        raise ValueError("varies along a non-normalized axis")
    tail = c.reshape(c.shape[-k:] if c.ndim >= k else c.shape)
    return np.broadcast_to(tail, norm_shape).copy()


def _single_use(v: ir.Value, ops) -> ir.Node | None:
    ops = (ops,) if isinstance(ops, str) else ops
    uses = v.uses()
    if len(uses) != 1 or v.is_graph_output():
        return None
    node = uses[0].node
    return node if node.op_type in ops and node.domain in ("", "ai.onnx") else None


def _only_reader(d: ir.Value, ops, ok) -> ir.Node | None:
    """The one node among d's readers that is in `ops` and passes `ok` (the square of d)."""
    found = [u.node for u in d.uses() if u.node.op_type in ops and u.node.domain in ("", "ai.onnx") and ok(u.node)]
    found = list({id(n): n for n in found}.values())
    return found[0] if len(found) == 1 else None


def _other(node: ir.Node, v: ir.Value) -> ir.Value | None:
    """The other input of a binary node one of whose inputs is v."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if a is v:
        return b
    if b is v:
        return a
    return None


def _const(v: ir.Value | None) -> np.ndarray | None:
    if v is None:
        return None
    if v.const_value is not None:
        return v.const_value.numpy()
    p = v.producer()
    if p is not None and p.op_type == "Constant" and "value" in p.attributes:
        return p.attributes["value"].as_tensor().numpy()
    return None


def _scalar(v: ir.Value | None) -> float | None:
    c = _const(v)
    if c is None or c.size != 1 or c.dtype.kind != "f" and c.dtype.kind not in "iu":
        return None
    return float(c.reshape(()))
