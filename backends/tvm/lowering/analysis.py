"""The analysis of one Relax module: which bindings become integer code, and how.

It walks the quantize sites of ``main`` and asks the registered rules (registry.py, rules/*.py)
what the float value feeding each one is: a view of an integer tensor, an activation folded into
the clamp, an affine sum of integer terms, or a site-level plan (concat). What no rule covers keeps
TVM's float op between dequantize and quantize and is reported as a float fallback, with the reason
of the rule check that failed where a rule matched the op.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .. import compat
from ..compat import R, relax
from . import registry
from .index import UseIndex, read_vars
from .ir import (FP8_FLOAT, FP8_OP_PREFIX, QRANGE, SHAPE_ONLY_DTYPES, Affine, Plan, Site, View, qparam_broadcast,
                 scalar, view_term)
from .registry import AFFINE, CLAMP, SITE, VIEW, NoMatch
from .requantize import emit_float, requantizer

NOT_QUANTIZED = "operands are not quantized"
ITEM_OF = "item_of:"     # the pattern of a rule for one output of a tuple-valued op ("item_of:relax.split")
NO_LOWERING = "no integer lowering (runs in float between dequantize and quantize)"


class Lowering:
    """Analysis of one Relax module: which bindings become integer code, and how."""

    def __init__(self, mod):
        self.mod = mod
        self.func = mod["main"]
        self.index = UseIndex(self.func)
        self.bindings: dict = self.index.producer   # var -> bound value
        self.order: list = self.index.order         # vars in binding order
        self.uses: Counter = self.index.uses
        self._const_cache: dict = {}
        self._view_cache: dict = {}
        self.plans: dict = {}             # var -> Plan
        self.reasons: dict = {}           # var -> why its quantize (or the op feeding it) stays float
        self.absorbed: set = set()
        self.shared: dict = {}            # var -> View of a value several views read (a split's tuple)

    # ------------------------------------------------------------------ generic helpers
    def value(self, expr):
        """The bound value of a var (following var-to-var aliases), else the expr itself."""
        seen = 0
        while isinstance(expr, compat.Var) and expr in self.bindings and seen < 64:
            nxt = self.bindings[expr]
            if not isinstance(nxt, (compat.Var, compat.Call, relax.Tuple, compat.Constant)):
                break
            expr = nxt
            seen += 1
        return expr

    def op_of(self, expr) -> str | None:
        return compat.op_name(self.value(expr))

    def single_use(self, var) -> bool:
        return not isinstance(var, compat.Var) or self.uses[var] == 1

    def cval(self, expr, depth: int = 0) -> np.ndarray | None:
        """Evaluate a constant sub-expression with numpy (None if it is not constant)."""
        if depth > 32:
            return None
        key = expr if isinstance(expr, compat.Var) else None
        if key is not None and key in self._const_cache:
            return self._const_cache[key]
        out = self._cval(expr, depth)
        if key is not None:
            self._const_cache[key] = out
        return out

    def _cval(self, expr, depth):
        c = compat.const_numpy(expr)
        if c is not None:
            return c
        if isinstance(expr, compat.Var):
            if expr not in self.bindings:
                return None
            return self.cval(self.bindings[expr], depth + 1)
        if not isinstance(expr, compat.Call):
            return None
        name = compat.op_name(expr)
        args = list(expr.args)

        def arg(i):
            return self.cval(args[i], depth + 1)

        try:
            if name == "relax.dequantize":
                q, s, z = arg(0), arg(1), arg(2)
                if q is None or s is None or z is None:
                    return None
                s, z = qparam_broadcast(s, z, int(expr.attrs.axis), q.ndim)
                return (q.astype(np.float64) - z.astype(np.float64)) * s.astype(np.float64)
            if name == "relax.reshape":
                x = arg(0)
                shape = getattr(args[1], "values", None)
                if x is None or shape is None:
                    return None
                return x.reshape([int(v) for v in shape])
            if name == "relax.permute_dims":
                x = arg(0)
                axes = expr.attrs.axes
                return None if x is None else np.transpose(x, None if axes is None else compat.int_tuple(axes))
            if name == "relax.expand_dims":
                x = arg(0)
                return None if x is None else np.expand_dims(x, tuple(compat.int_tuple(expr.attrs.axis)))
            if name == "relax.squeeze":
                x = arg(0)
                ax = expr.attrs.axis
                return None if x is None else np.squeeze(x, None if ax is None else tuple(compat.int_tuple(ax)))
            if name == "relax.astype":
                x = arg(0)
                return None if x is None else x.astype(str(expr.attrs.dtype))
            if name == "relax.isnan":
                x = arg(0)
                return None if x is None else np.isnan(x)
            if name == "relax.negative":
                x = arg(0)
                return None if x is None else -x
            if name == "relax.where":
                c, a, b = arg(0), arg(1), arg(2)
                return None if c is None or a is None or b is None else np.where(c, a, b)
            if name in ("relax.add", "relax.subtract", "relax.multiply", "relax.divide"):
                a, b = arg(0), arg(1)
                if a is None or b is None:
                    return None
                fn = {"relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply,
                      "relax.divide": np.divide}[name]
                return fn(a, b)
        except (ValueError, TypeError):
            return None
        return None

    # ------------------------------------------------------------------ views and weights
    def view(self, expr) -> View | None:
        """The view a float var is (dequantize of an int tensor, through VIEW rules), else None."""
        if isinstance(expr, compat.Var) and expr in self._view_cache:
            return self._view_cache[expr]
        v = self._view(expr)
        if isinstance(expr, compat.Var):
            self._view_cache[expr] = v
        return v

    def _view(self, expr) -> View | None:
        if not isinstance(expr, compat.Var):
            return None
        val = self.bindings.get(expr)
        if val is None:
            return None
        if isinstance(val, relax.TupleGetItem):     # one output of a tuple op (Split): ITEM_OF + the op
            rule = registry.rule_for(ITEM_OF + (self.op_of(val.tuple_value) or ""), VIEW)
            if rule is None or rule.check(self, val, expr) is not None:
                return None
            return rule.rewrite(self, val, expr, self.view(self.value(val.tuple_value).args[0]))
        name = compat.op_name(val)
        if name == "relax.dequantize":
            src = val.args[0]
            dt = compat.tensor_dtype(src)
            if dt not in QRANGE or compat.const_numpy(src) is not None:
                return None
            s, z = self.cval(val.args[1]), self.cval(val.args[2])
            if s is None or z is None:
                return None
            s, z = scalar(s), scalar(z)
            if s is None or z is None or not s > 0:
                return None      # per-channel activation scales: no view
            return View(expr, lambda e, src=src: e.source(src), float(np.float32(s)), int(z), dt, [src])
        rule = registry.rule_for(name, VIEW)
        if rule is None or rule.check(self, val, expr) is not None:
            return None
        data = compat.call_tir_args(val)[0] if name.startswith("call_tir:") else val.args[0]
        return rule.rewrite(self, val, expr, self.view(data))

    def weight(self, expr):
        """A constant dequantized weight: (q int array, scale, zp) with scale / zp broadcastable to q."""
        val = self.value(expr)
        name = compat.op_name(val)
        if name == "relax.dequantize":
            q = self.cval(val.args[0])
            s, z = self.cval(val.args[1]), self.cval(val.args[2])
            if q is None or s is None or z is None or q.dtype.kind not in "iu":
                return None
            s, z = qparam_broadcast(s, z, int(val.attrs.axis), q.ndim)
            return q, s.astype(np.float64), z.astype(np.int64)
        if name == "relax.permute_dims":
            inner = self.weight(val.args[0])
            if inner is None:
                return None
            q, s, z = inner
            axes = val.attrs.axes
            axes = list(range(q.ndim))[::-1] if axes is None else compat.int_tuple(axes)
            t = lambda a: np.transpose(a, axes) if a.ndim == q.ndim else a  # noqa: E731
            return np.transpose(q, axes), t(s), t(z)
        return None

    # ------------------------------------------------------------------ affine sums
    def affine(self, expr, top: bool = True) -> Affine:
        """Parse a float expression into an integer affine sum (raises NoMatch with a reason)."""
        val = self.value(expr)
        name = compat.op_name(val)
        out_shape = compat.tensor_shape(expr)
        if out_shape is None:
            raise NoMatch("unknown output shape")
        rank = len(out_shape)
        v = self.view(expr) if isinstance(expr, compat.Var) else None
        if v is not None:
            return Affine([view_term(v)], None, rank, [])
        if not self.single_use(expr) and not top:
            raise NoMatch("intermediate result has several consumers")
        rule = registry.rule_for(name)
        if rule is not None and rule.role == AFFINE:
            return rule.apply(self, val, expr, rank)
        # a rule of another role matched the op, but not here: its failed check says why
        why = rule.check(self, val, expr) if rule is not None else None
        raise NoMatch(why or f"no integer lowering for {name or type(val).__name__}")

    # ------------------------------------------------------------------ quantize sites
    def plan_quantize(self, var, call) -> Plan:
        s_y, z_y = self.cval(call.args[1]), self.cval(call.args[2])
        dtype = str(call.attrs.out_dtype)
        if dtype not in QRANGE:
            raise NoMatch(f"quantize to {dtype}")
        if s_y is None or z_y is None or scalar(s_y) is None or scalar(z_y) is None:
            raise NoMatch("per-channel or non-constant output quantization parameters")
        site = Site(var, float(np.float32(scalar(s_y))), int(scalar(z_y)), dtype, *QRANGE[dtype])
        absorbed = []
        g = call.args[0]
        # fold Relu / Clip (and the frontend's maximum / minimum) into the output clamp
        while True:
            rule = registry.rule_for(self.op_of(g), CLAMP)
            if rule is None or not self.single_use(g):
                break
            val = self.value(g)
            if rule.check(self, val, g) is not None:
                break
            inner = rule.rewrite(self, val, g, site)
            absorbed.append(g)
            g = inner
        if site.lo > site.hi:
            site.hi = site.lo
        rule = registry.rule_for(self.op_of(g), SITE)
        if rule is not None:
            return rule.apply(self, self.value(g), g, site, absorbed)
        try:
            return self._plan_affine(var, g, site, absorbed)
        except NoMatch as exc:
            # a site rule that also covers this op (the pointwise table behind a non-affine Mul)
            for fb in registry.fallbacks(self.op_of(g)):
                if self.single_use(g) and fb.check(self, self.value(g), g) is None:
                    return fb.rewrite(self, self.value(g), g, site, absorbed)
            raise exc from None

    def _plan_affine(self, var, g, site: Site, absorbed: list) -> Plan:
        """The site's float value as an affine sum of integer terms, requantized."""
        dtype = site.dtype
        aff = self.affine(g, top=False)
        kinds = sorted({t.kind for t in aff.terms})
        v = self.view(g) if kinds == ["view"] and aff.offset is None else None
        if v is not None:
            kinds = v.ops or ["requantize"]
            if v.scale == site.scale and v.zp == site.zp and v.dtype == dtype:
                lo, hi, full = site.lo, site.hi, site.full_range

                def emit(e, v=v):
                    out = e.view_expr(v)
                    if not full:
                        out = R.clip(out, lo, hi)
                    return out
                return Plan(var, emit, list(v.sources), absorbed + [g],
                            v.ops or (["clamp"] if absorbed else ["identity"]))
        return Plan(var, requantizer(aff, site.scale, site.zp, dtype, site.lo, site.hi),
                    [s for t in aff.terms for s in t.sources], absorbed + aff.absorbed, kinds)

    # ------------------------------------------------------------------ float sinks
    def plan_float_sink(self, var) -> Plan:
        """A quantized linear layer whose output stays float (e.g. the logits Gemm): integer
        accumulate, then float(acc + k) * m + offset. Raises NoMatch with the reason if not."""
        try:
            aff = self.affine(var, top=True)
        except NoMatch as exc:
            raise NoMatch(NOT_QUANTIZED if exc.unquantized else str(exc)) from None
        if len(aff.terms) != 1 or aff.terms[0].kind in ("view", "add"):
            raise NoMatch(NOT_QUANTIZED)
        return Plan(var, lambda e: emit_float(e, aff), list(aff.terms[0].sources), aff.absorbed,
                    [aff.terms[0].kind])

    # ------------------------------------------------------------------ driver
    def analyse(self) -> None:
        absorbed: set = set()
        for var in self.order:
            val = self.bindings[var]
            if compat.op_name(val) != "relax.quantize":
                continue
            try:
                plan = self.plan_quantize(var, val)
            except NoMatch as exc:
                self.reasons[var] = str(exc)
                core = self._core(val.args[0])
                if core is not None:
                    self.reasons.setdefault(core, str(exc))
                continue
            self.plans[var] = plan
            absorbed.update(plan.absorbed)
        heavy = registry.ops(AFFINE, float_sink=True)
        for var in self.order:
            if var in absorbed or var in self.plans or compat.op_name(self.bindings[var]) not in heavy:
                continue
            top = var
            while True:   # climb constant Adds (a MatMul's bias) to the float consumer
                users = self.index.consumers(top)
                if len(users) != 1 or self.uses[top] != 1:
                    break
                u = users[0]
                val = self.bindings[u]
                if compat.op_name(val) != "relax.add" or u in absorbed or u in self.plans:
                    break
                if self.cval(val.args[0]) is None and self.cval(val.args[1]) is None:
                    break
                top = u
            try:
                plan = self.plan_float_sink(top)
            except NoMatch as exc:
                self.reasons.setdefault(var, str(exc))
                continue
            self.plans[top] = plan
            absorbed.update(plan.absorbed)
        self.absorbed = absorbed

    def _core(self, g):
        """The op under the activations a quantize site would have folded."""
        while registry.rule_for(self.op_of(g), CLAMP) is not None:
            val = self.value(g)
            args = compat.call_tir_args(val) if compat.op_name(val).startswith("call_tir:") else list(val.args)
            g = args[0]
        return g if isinstance(g, compat.Var) else None

    # ------------------------------------------------------------------ report
    def live_vars(self) -> set:
        """Original vars still computed after the rewrite (plans read their sources, not their inputs)."""
        live = set()
        stack = read_vars(self.func.body.body)
        while stack:
            v = stack.pop()
            if v in live or v not in self.bindings:
                continue
            live.add(v)
            if v in self.plans:
                stack.extend(self.plans[v].sources)
            else:
                stack.extend(read_vars(self.bindings[v]))
        return live

    def report(self) -> tuple[dict, list]:
        """(integer op kind -> count, float fallbacks [{"op", "reason", "count"}]) of the plan."""
        live = self.live_vars()
        integer_ops: Counter = Counter()
        for var, plan in self.plans.items():
            if var in live:
                for k in plan.kinds:
                    integer_ops[k] += 1
        fallback: Counter = Counter()
        has_fp8 = any((compat.op_name(self.bindings[v]) or "").startswith(FP8_OP_PREFIX) for v in live)
        for var in self.order:
            if var not in live or var in self.plans:
                continue
            val = self.bindings[var]
            name = compat.op_name(val)
            dt = compat.tensor_dtype(var)
            if name is not None and name.startswith(FP8_OP_PREFIX):
                # qcc's FP8 Q / DQ (fp8.py): exact integer bit code, reported as such
                integer_ops["fp8_" + name.rsplit("_", 1)[1]] += 1
                continue
            if name is None or dt is None or dt in SHAPE_ONLY_DTYPES or name in ("relax.dequantize", "relax.quantize"):
                continue
            if dt in QRANGE or self.cval(var) is not None:
                continue
            why = self.reasons.get(var, FP8_FLOAT if has_fp8 else NO_LOWERING)
            fallback[(name.replace("relax.", ""), why)] += 1
        fb = [{"op": op, "reason": why, "count": n} for (op, why), n in sorted(fallback.items())]
        return dict(sorted(integer_ops.items())), fb

