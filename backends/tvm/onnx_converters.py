"""qcc's converters in TVM's ONNX frontend: the FP8 Q/DQ ops (fp8.py) and a Range that keeps its length.

TVM 0.27 has no custom-converter hook, so `patched()` wraps the frontend's module-level converter
table for the duration of one import; `CONVERTERS` is the one place qcc's converters are listed.

Range with a symbolic limit. ONNX Range(start, limit, delta) has

    n = max(ceil((limit - start) / delta), 0),   out[i] = start + i * delta   (i < n).

TVM's converter always computes n as a tensor and reads it back as a fresh shape variable
(`range_len`), even where limit is a shape expression such as Shape(x)[1] = `sequence`. The fresh
variable is unrelated to `sequence`, so every tensor built from the positions (BERT's position ids
and attention-mask rows) gets a shape the graph cannot reconcile with the input's, and the build falls
back to static. Where start and delta are integer constants and limit is a symbolic integer
expression, this converter emits arange(start, limit, delta), whose length is the expression above
over `limit` itself (for start = 0, delta = 1: n = limit). Everything else goes to TVM's converter.
"""

from __future__ import annotations

import contextlib

import tvm

from . import fp8
from .compat import relax


def _int_constant(x):
    """The Python int of a scalar integer constant, else None."""
    if isinstance(x, tvm.ir.GenericConst) and x.value.numpy().size == 1 and x.value.numpy().dtype.kind in "iu":
        return int(x.value.numpy().reshape(()))
    return None


def _prim_dtype(x) -> str:
    return str(getattr(x, "dtype", None) or x.ty)   # 0.27: a tirx.Var's dtype raises, its .ty answers


def _range_converter(frontend):
    class Range(frontend.Range):
        @classmethod
        def _impl_v12(cls, bb, inputs, attr, params):
            start, limit, delta = (frontend.get_constant(x, params) for x in inputs[:3])
            s, d = _int_constant(start), _int_constant(delta)
            if s is None or not d or not tvm.ir.is_prim_expr(limit) or "int" not in _prim_dtype(limit):
                return super()._impl_v12(bb, inputs, attr, params)
            dtype = str(start.ty.dtype)
            return relax.op.arange(s, limit.astype("int64"), d, dtype)

    return Range


def _table(frontend) -> dict:
    """op type -> converter class, added to (or replacing) TVM's."""
    return {fp8.QUANTIZE_OP: fp8.Quantize, fp8.DEQUANTIZE_OP: fp8.Dequantize, "Range": _range_converter(frontend)}


@contextlib.contextmanager
def patched():
    """TVM's ONNX frontend with `_table`'s converters, for one import."""
    from tvm.relax.frontend.onnx import onnx_frontend as frontend

    original = frontend._get_convert_map

    def table():
        return {**original(), **_table(frontend)}

    frontend._get_convert_map = table
    try:
        yield
    finally:
        frontend._get_convert_map = original
