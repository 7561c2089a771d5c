"""GELU normal form: every exporter's decomposed GELU -> one operand order, (x * (1 + f(x))) * 0.5.

    GELU(x)      = 0.5 x (1 + erf(x / sqrt 2))                                  (exact)
    GELU_tanh(x) = 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))            (the tanh approximation)

Exporters write the three factors x, (1 + f) and 0.5 in any association: TorchScript
(x * (1 + f)) * 0.5, paddle2onnx / tf2onnx (x * 0.5) * (1 + f) or x * (0.5 * (1 + f)). Only the first
ends in a Mul by a constant, which is the site crossquant folds its channel factor into (and the
form a per-channel scale can be moved through); the others end in a product of two tensors. All
three are the same float function bit for bit: multiplying by 0.5 is exact in binary floating point
(away from underflow), so round(round(0.5 x) b) = 0.5 round(x b) = round(x round(0.5 b)).

GELU is not fused into one operator: ONNX Gelu is standard only from opset 20, and a model below it
would need com.microsoft's contrib Gelu (onnxruntime and TVM 0.27's Relax frontend both import it,
but it is outside the standard QDQ contract every backend reads); the decomposed chain is also what
crossquant's GELU site and the pointwise tables (plan.py) work on.

Pattern: f = Erf(x / c) with c = sqrt 2 (Div) or Erf(x * c) with c = 1 / sqrt 2 (Mul), or
Tanh(c1 * (x + c2 * x^3)) with c1 = sqrt(2 / pi), c2 = 0.044715 (x^3 as Pow(x, 3) or x * x * x, any
operand order); then a = Add(f, 1); then the product of x, a and 0.5 in one of the
non-normal associations above.
Check: the constants are scalars within 1e-4 (relative) of their values; the x of the inner
function is the x of the product; every intermediate (a, x * 0.5, 0.5 * a) has one reader and is
not a graph output.
Rewrite: Mul(x, a) -> Mul(., 0.5), the second taking over the product's output name; the replaced
Mul nodes are removed.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from ..initializers import add_initializer
from .fuse_layernorm import _other, _scalar

_SQRT2 = math.sqrt(2.0)
_C1 = math.sqrt(2.0 / math.pi)
_C2 = 0.044715


def normalize_gelus(model: ir.Model) -> dict:
    """Rewrite every decomposed GELU into (x * (1 + f)) * 0.5; returns {"gelus": found (Erf and tanh
    forms), "gelus_reordered": rewritten}."""
    graph = model.graph
    found = reordered = 0
    for node in list(graph):
        if node.op_type not in ("Erf", "Tanh") or node.domain not in ("", "ai.onnx"):
            continue
        x = _erf_input(node) if node.op_type == "Erf" else _tanh_input(node)
        if x is None:
            continue
        add = _one_reader(node.outputs[0], "Add")
        if add is None or not _is(_other(add, node.outputs[0]), 1.0):
            continue
        a = add.outputs[0]
        shape = _product(x, a)
        if shape is None:
            continue
        found += 1
        kind, old, out = shape
        if kind == "normal":
            continue
        _rewrite(graph, x, a, old, out)
        reordered += 1
    return {"gelus": found, "gelus_reordered": reordered}


def _erf_input(erf: ir.Node) -> ir.Value | None:
    p = erf.inputs[0].producer()
    if p is None or p.op_type not in ("Div", "Mul") or len(erf.inputs[0].uses()) != 1:
        return None
    x, c = p.inputs
    if p.op_type == "Div":
        return x if _is(c, _SQRT2) else None
    if _is(c, 1 / _SQRT2):
        return x
    return c if _is(x, 1 / _SQRT2) else None


def _tanh_input(tanh: ir.Node) -> ir.Value | None:
    outer = tanh.inputs[0].producer()
    if outer is None or outer.op_type != "Mul":
        return None
    inner = _non_const(outer, _C1)
    p = inner.producer() if inner is not None else None
    if p is None or p.op_type != "Add":
        return None
    for x, cube_term in (p.inputs, p.inputs[::-1]):
        m = cube_term.producer()
        if m is None or m.op_type != "Mul":
            continue
        cube = _non_const(m, _C2)
        if cube is not None and _is_cube(cube, x):
            return x
    return None


def _is_cube(v: ir.Value, x: ir.Value) -> bool:
    p = v.producer()
    if p is None:
        return False
    if p.op_type == "Pow":
        return p.inputs[0] is x and _is(p.inputs[1], 3.0)
    if p.op_type == "Mul":
        a, b = p.inputs
        for sq, lin in ((a, b), (b, a)):
            q = sq.producer()
            if lin is x and q is not None and q.op_type == "Mul" and q.inputs[0] is x and q.inputs[1] is x:
                return True
    return False


def _product(x: ir.Value, a: ir.Value):
    """How x, a = 1 + f and 0.5 are multiplied: ("normal", ...) for (x * a) * 0.5, else
    (kind, nodes to replace, output value); None when it is no GELU product."""
    m = _one_reader(a, "Mul")
    if m is None:
        return None
    other = _other(m, a)
    if other is x:                                       # (x * a) * 0.5 ?
        h = _one_reader(m.outputs[0], "Mul")
        if h is not None and _is(_other(h, m.outputs[0]), 0.5):
            return "normal", [m, h], h.outputs[0]
        return None
    if _is(other, 0.5):                                  # x * (0.5 * a) ?
        g = _one_reader(m.outputs[0], "Mul")
        if g is not None and _other(g, m.outputs[0]) is x:
            return "x*(0.5*a)", [m, g], g.outputs[0]
        return None
    p = other.producer() if other is not None else None  # (x * 0.5) * a ?
    if p is not None and p.op_type == "Mul" and _other(p, x) is not None and _is(_other(p, x), 0.5) \
            and len(other.uses()) == 1 and not other.is_graph_output():
        return "(x*0.5)*a", [p, m], m.outputs[0]
    return None


def _rewrite(graph: ir.Graph, x: ir.Value, a: ir.Value, old: list[ir.Node], out: ir.Value) -> None:
    base = out.name or old[-1].name
    dtype = np.float64 if x.dtype == ir.DataType.DOUBLE else np.float32
    half = add_initializer(graph, f"{base}.gelu_half", np.array(0.5, dtype))
    prod = ir.Node("", "Mul", [x, a], name=f"{base}_gelu_mul")
    scaled = ir.Node("", "Mul", [prod.outputs[0], half], name=f"{base}_gelu_half")
    prod.outputs[0].name = f"{base}.gelu_x_1pf"
    prod.outputs[0].type, prod.outputs[0].shape = out.type, out.shape
    last = max(old, key=lambda n: list(graph).index(n))
    graph.insert_after(last, [prod, scaled])
    name = out.name
    out.replace_all_uses_with(scaled.outputs[0], replace_graph_outputs=True)
    graph.remove(old, safe=True)
    scaled.outputs[0].name = name
    scaled.outputs[0].type, scaled.outputs[0].shape = out.type, out.shape


def _one_reader(v: ir.Value, op: str) -> ir.Node | None:
    uses = v.uses()
    if len(uses) != 1 or v.is_graph_output():
        return None
    n = uses[0].node
    return n if n.op_type == op and n.domain in ("", "ai.onnx") else None


def _non_const(node: ir.Node, value: float) -> ir.Value | None:
    """The non-constant operand of a binary Mul whose other operand is the scalar `value`."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if _is(b, value):
        return a
    if _is(a, value):
        return b
    return None


def _is(v: ir.Value | None, value: float) -> bool:
    s = _scalar(v)
    return s is not None and abs(s - value) <= 1e-4 * abs(value)
