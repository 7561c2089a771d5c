"""The rewrite: main's planned bindings replaced by their integer code, then dead-code elimination
of the float chains they absorbed."""

from __future__ import annotations

from .. import compat
from ..compat import relax
from . import registry
from .analysis import Lowering
from .ir import View


@compat.mutator
class _Rewriter(compat.PyExprMutator):
    def __init__(self, mod, lowering: Lowering):
        super().__init__(mod)
        self.mod_ = mod
        self.lowering = lowering
        self.cache: dict = {}

    # emitter interface used by the plans
    def emit(self, expr):
        if isinstance(expr, (compat.Var, compat.Constant)):
            return expr
        return self.builder_.emit(expr)

    def source(self, var):
        return self.visit_expr(var)

    def remap(self, expr):
        return self.visit_expr(expr)

    def view_expr(self, v: View):
        key = v.var
        if key not in self.cache:
            self.cache[key] = self.emit(v.emit(self))
        return self.cache[key]

    def visit_binding_block_(self, block):
        self.cache = {}
        return super().visit_binding_block_(block)

    def visit_dataflow_block_(self, block):
        self.cache = {}
        return super().visit_dataflow_block_(block)

    def visit_var_binding_(self, binding):
        plan = self.lowering.plans.get(binding.var)
        if plan is None:
            return super().visit_var_binding_(binding)
        new_value = plan.emit(self)
        name = binding.var.name
        if isinstance(binding.var, compat.DataflowVar):
            new_var = self.builder_.emit(new_value, name)
        else:
            new_var = self.builder_.emit_output(new_value, name)
        self.set_var_remap(binding.var, new_var)

    def transform(self):
        for gv, func in self.mod_.functions_items():
            if gv.name_hint == "main" and isinstance(func, relax.Function):
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()


def lower_to_integer(mod):
    """Rewrite main's quantized layers to integer code. Returns (new module, integer_ops, float_fallback)."""
    low = Lowering(mod)
    low.analyse()
    integer_ops, fallback = low.report()
    new_mod = _Rewriter(mod, low).transform()
    new_mod = compat.dead_code_elimination(new_mod)
    return new_mod, integer_ops, fallback


def heavy_ops(mod) -> list[dict]:
    """Every conv2d / conv2d_transpose / matmul in main with its operand and result dtypes
    (for checking that the lowered module really computes in integers)."""
    heavy = registry.ops(registry.AFFINE, float_sink=True)
    out = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            name = compat.op_name(b.value)
            if name in heavy:
                out.append({"op": name.replace("relax.", ""),
                            "inputs": [compat.tensor_dtype(a) for a in b.value.args[:2]],
                            "out": compat.tensor_dtype(b.var)})
    return out
