"""Requantize rounding as one instruction: cast(clip(round(v), lo, hi)) -> cast(lrint(clip(v, lo, hi))).

The lowering ends every requantize with

    q = astype(clip(round(v), lo, hi), int8 | uint8 | int32)      v float32, lo and hi integers

or with an integer zero point z added after the rounding,

    clip(round(v) + z, lo, hi) = round(clip(v, lo - z, hi - z)) + z      (z added in int32)

(not round(v + z): half-to-even ties flip with an odd z).

round (half to even) then clip costs vrndscaleps, vminps, vmaxps, vcvttps2dq. Since lo and hi are
integers, clipping commutes with rounding, clip(round(v)) = round(clip(v)), and after the clip
the value fits int32, so round + convert is lrint under the default rounding mode (to nearest
even): one vcvtps2dq. The rewrite replaces such a chain (each intermediate read once) by one
elementwise TE op, which FuseOps folds into the kernel's epilogue like the ops it replaces.
Bit-exact: ties go to even either way.
"""

from __future__ import annotations

from tvm import te, tirx

from .. import compat
from ..compat import R, relax

INT_DTYPES = {"int8", "uint8", "int16", "int32"}


def _lrint_clip(v, lo: float, hi: float, dtype: str, zero_point: float = 0.0):
    z = int(zero_point)

    def f(*i):
        c = te.max(te.min(v(*i), te.const(hi - z, "float32")), te.const(lo - z, "float32"))
        q = tirx.call_llvm_pure_intrin("int32", "llvm.lrint", c)
        return (q + z if z else q).astype(dtype)
    return te.compute(v.shape, f, name="qcc_lrint_clip")


def _bound(x) -> float | None:
    v = getattr(x, "value", x)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if v == int(v) and abs(v) < 2 ** 31 else None


@compat.mutator
class _Rounding(compat.PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.mod_ = mod
        self.values: dict = {}
        self.uses: dict = {}
        self.rewrites = 0

    def _single(self, var, op: str):
        """The call bound to `var` if it is an `op` call read only once, else None."""
        value = self.values.get(var)
        if value is None or compat.op_name(value) != op or self.uses.get(var, 0) != 1:
            return None
        return value

    def visit_var_binding_(self, binding):
        value = binding.value
        if compat.op_name(value) == "relax.astype" and str(value.attrs.dtype) in INT_DTYPES:
            clip = self._single(value.args[0], "relax.clip")
            inner = clip.args[0] if clip is not None else None
            zp = 0.0
            add = self._single(inner, "relax.add") if inner is not None else None
            if add is not None and isinstance(add.args[1], compat.Constant):
                z = compat.const_numpy(add.args[1])
                if z is not None and z.size == 1 and _bound(z.reshape(())) is not None:
                    zp, inner = float(z.reshape(())), add.args[0]
            rnd = self._single(inner, "relax.round") if inner is not None else None
            src = rnd.args[0] if rnd is not None else None
            lo, hi = (_bound(clip.args[1]), _bound(clip.args[2])) if clip is not None else (None, None)
            if src is not None and compat.tensor_dtype(src) == "float32" and lo is not None and hi is not None \
                    and compat.tensor_shape(src) is not None:
                new = self.builder_.emit_te(_lrint_clip, self.visit_expr(src), lo, hi, str(value.attrs.dtype), zp,
                                            primfunc_name_hint="qcc_lrint_clip")
                if not isinstance(binding.var, compat.DataflowVar):   # a block output stays one
                    new = self.builder_.emit_output(new, binding.var.name)
                self.rewrites += 1
                self.set_var_remap(binding.var, new)
                return
        super().visit_var_binding_(binding)

    def transform(self):
        for gv, func in self.mod_.functions_items():
            if gv.name_hint != "main" or not isinstance(func, relax.Function):
                continue
            self.values, self.uses = compat.bindings_and_uses(func)
            self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()


def lrint_requantize(mod):
    """Returns (module, number of chains rewritten)."""
    rw = _Rounding(mod)
    return compat.dead_code_elimination(rw.transform()), rw.rewrites
