"""FP8 (E4M3FN, E5M2) encode / decode as integer bit manipulation, and FP8 QDQ graphs for TVM.

TVM 0.27's built-in float8 casts are wrong on llvm for zero, subnormals, overflow and inf, and its
ONNX frontend cannot import FP8 zero points. qcc therefore stores FP8 tensors as their uint8 bit
patterns and converts with its own elementwise TIR, which uses only integer shifts, masks and
selects (plus one exact power-of-two float multiply for subnormal decoding).

A format has E exponent bits, M mantissa bits and bias B = 2**(E-1) - 1 (E4M3FN: 4, 3, 7;
E5M2: 5, 2, 15). For a float32 x with sign s, biased exponent e32 and 24-bit significand
S = [e32 > 0] * 2**23 + mantissa (x = S * 2**(e32 - 150); e32 = 0 is read as e32 = 1):

    e   = e32 - 127 + B                      the FP8 biased exponent (may be <= 0: subnormal)
    k   = 23 - M + max(0, 1 - e)             bits dropped (a subnormal drops 1 - e more)
    r   = round_half_even(S / 2**k)          = (S + 2**(k-1) - 1 + ((S >> k) & 1)) >> k
    code = s | (max(e, 1) - 1) * 2**M + r    (r includes the implicit bit, so a carry out of the
                                              mantissa bumps the exponent, and a subnormal
                                              rounding up to 2**M becomes the smallest normal)

with ONNX QuantizeLinear's saturate=1 rules (onnx.ai Cast table): |x| >= max (incl. inf) ->
s | max_code, NaN -> s | nan_code. Decoding is the inverse: a normal code c = s|e|m is the float32
with bits s<<24 | (e - B + 127) << 23 | m << (23 - M); a subnormal is m * 2**(1 - B - M) (exact);
E4M3FN's 0x7F and E5M2's exponent 31 are NaN / inf.

FP8 QDQ graphs (schemes fp8-e4m3 / fp8-e5m2) import through `prepare_onnx` + the converters below (listed in onnx_converters.py):
QuantizeLinear / DequantizeLinear with an FP8 type become qcc's own ops on uint8 bits

    Q(x, s)  = encode(x / s)            (uint8 bits; zero point must be +0, as ONNX's FP8 QDQ uses)
    DQ(c, s) = decode(c) * s            (for a weight, TVM's FoldConstant makes this a float32 constant)

so on the CPU the computation between a Q and a DQ is fake-quantized float (there is no FP8
compute unit), but every value that crosses a Q/DQ pair is exactly what onnxruntime computes.
On GPUs with FP8 hardware `operands_to_fp8` (below) lets conv2d / matmul read the FP8 tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper
from qcc.errors import QccError

from . import compat
from .compat import relax, te, tirx


@dataclass(frozen=True)
class Fp8Format:
    name: str            # TVM dtype name
    exp_bits: int
    man_bits: int
    max_code: int        # largest finite magnitude
    nan_code: int        # the NaN ml_dtypes / onnxruntime produce (sign added)
    has_inf: bool

    @property
    def bias(self) -> int:
        return (1 << (self.exp_bits - 1)) - 1

    @property
    def max_value(self) -> float:
        e = (self.max_code >> self.man_bits) - self.bias
        return float((1 + (self.max_code & ((1 << self.man_bits) - 1)) / (1 << self.man_bits)) * 2.0**e)


E4M3FN = Fp8Format("float8_e4m3fn", 4, 3, 0x7E, 0x7F, False)
E5M2 = Fp8Format("float8_e5m2", 5, 2, 0x7B, 0x7E, True)
FORMATS = {"float8_e4m3fn": E4M3FN, "float8_e5m2": E5M2}
_ONNX_FORMAT = {onnx.TensorProto.FLOAT8E4M3FN: E4M3FN, onnx.TensorProto.FLOAT8E5M2: E5M2}
_FORMAT_BY_NAME = {"e4m3fn": E4M3FN, "e5m2": E5M2}


def _u32(v: int):
    return tirx.const(v, "uint32")


def _i32(v: int):
    return tirx.const(v, "int32")


def _let(name: str, dtype: str, value, body):
    """body(v) with v bound once to value: without the binding TIR would repeat `value` at every
    use, and a fused encode -> decode grows exponentially in CUDA source."""
    var = tirx.Var(name, dtype)
    return tirx.Let(var, value, body(var))


def encode_expr(x, fmt: Fp8Format):
    """TIR: float32 scalar -> uint8 FP8 bits (round half to even, ONNX saturate=1)."""
    max_bits = int(np.array(fmt.max_value, np.float32).view(np.uint32))

    def from_bits(bits):
        return _let("mag", "uint32", bits & _u32(0x7FFFFFFF), lambda mag: _let(
            "e32", "int32", (mag >> _u32(23)).astype("int32"), lambda e32: _let(
                "sig", "uint32", tirx.Select(e32 > _i32(0), (mag & _u32(0x7FFFFF)) | _u32(1 << 23), mag & _u32(0x7FFFFF)),
                lambda sig: _let("e", "int32", tirx.max(e32, _i32(1)) - _i32(127 - fmt.bias), lambda e: _let(
                    "k", "uint32", tirx.min(_i32(23 - fmt.man_bits) + tirx.max(_i32(1) - e, _i32(0)), _i32(31)).astype("uint32"),
                    lambda k: finish(bits, mag, sig, e, k))))))

    def finish(bits, mag, sig, e, k):
        half_m1 = (_u32(1) << (k - _u32(1))) - _u32(1)
        r = (sig + half_m1 + ((sig >> k) & _u32(1))) >> k
        code = (tirx.max(e, _i32(1)) - _i32(1)).astype("uint32") * _u32(1 << fmt.man_bits) + r
        code = tirx.Select(mag >= _u32(max_bits), _u32(fmt.max_code), code)
        code = tirx.Select(mag > _u32(0x7F800000), _u32(fmt.nan_code), code)
        return (code | ((bits >> _u32(24)) & _u32(0x80))).astype("uint8")

    return _let("bits", "uint32", tirx.reinterpret("uint32", x), from_bits)


def decode_expr(c, fmt: Fp8Format):
    """TIR: uint8 FP8 bits -> float32 scalar (exact for all 256 codes)."""
    m = fmt.man_bits
    top = _u32((1 << fmt.exp_bits) - 1)

    def from_code(c):
        sign = (c & _u32(0x80)) << _u32(24)
        ex = (c >> _u32(m)) & top
        man = c & _u32((1 << m) - 1)
        normal = ((ex + _u32(127 - fmt.bias)) << _u32(23)) | (man << _u32(23 - m))
        sub = tirx.reinterpret("uint32", man.astype("float32") * tirx.const(2.0 ** (1 - fmt.bias - m), "float32"))
        mag = tirx.Select(ex == _u32(0), sub, normal)
        if fmt.has_inf:
            special = tirx.Select(man == _u32(0), _u32(0x7F800000), _u32(0x7FC00000))
            mag = tirx.Select(ex == top, special, mag)
        else:
            mag = tirx.Select((c & _u32(0x7F)) == _u32(0x7F), _u32(0x7FC00000), mag)
        return tirx.reinterpret("float32", mag | sign)

    return _let("code", "uint32", c.astype("uint32"), from_code)


def encode_te(x: te.Tensor, fmt: Fp8Format) -> te.Tensor:
    return te.compute(x.shape, lambda *i: encode_expr(x(*i), fmt), name=f"qcc_fp8_{fmt.name[7:]}_encode",
                      tag="elemwise")


def decode_te(c: te.Tensor, fmt: Fp8Format) -> te.Tensor:
    return te.compute(c.shape, lambda *i: decode_expr(c(*i), fmt), name=f"qcc_fp8_{fmt.name[7:]}_decode",
                      tag="elemwise")


def encode(bb: relax.BlockBuilder, x, fmt: Fp8Format):
    """Relax: float32 tensor -> uint8 FP8 bits (a call_tir of qcc's encode)."""
    return bb.call_te(lambda t: encode_te(t, fmt), x, primfunc_name_hint=f"qcc_fp8_{fmt.name[7:]}_encode")


def decode(bb: relax.BlockBuilder, c, fmt: Fp8Format):
    """Relax: uint8 FP8 bits -> float32 tensor."""
    return bb.call_te(lambda t: decode_te(t, fmt), c, primfunc_name_hint=f"qcc_fp8_{fmt.name[7:]}_decode")


# ------------------------------------------------------------------------------------------------
# FP8 QDQ ONNX graphs
# ------------------------------------------------------------------------------------------------

OP_PREFIX = "call_tir:qcc_fp8_"   # compat.op_name of qcc's encode / decode calls
QUANTIZE_OP = "QccFp8Quantize"
DEQUANTIZE_OP = "QccFp8Dequantize"
DOMAIN = "ai.qcc.fp8"


def has_fp8(model: onnx.ModelProto) -> bool:
    """Whether the graph has FP8 initializers (qcc's QDQ emitter stores FP8 weights and zero points so)."""
    return any(t.data_type in _ONNX_FORMAT for t in model.graph.initializer)


def prepare_onnx(model: onnx.ModelProto) -> int:
    """In place (on the caller's copy): FP8 initializers -> uint8 bit patterns, FP8
    QuantizeLinear / DequantizeLinear -> qcc's ops on those bits (attribute `format`), with the
    +0 zero point dropped. Returns the number of rewritten Q/DQ nodes."""
    graph = model.graph
    formats: dict[str, Fp8Format] = {}
    for i, t in enumerate(graph.initializer):
        fmt = _ONNX_FORMAT.get(t.data_type)
        if fmt is None:
            continue
        bits = numpy_helper.to_array(t).view(np.uint8)
        graph.initializer[i].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(bits), t.name))
        formats[t.name] = fmt
    zero_points = {}
    count = 0
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3 or not node.input[2]:
            continue
        zp = node.input[2]
        fmt = formats.get(zp)
        if fmt is None:
            continue
        zero_points[zp] = fmt
        zp_bits = numpy_helper.to_array(next(t for t in graph.initializer if t.name == zp))
        if np.any(zp_bits != 0):
            raise QccError(f"{node.op_type} {node.name!r}: FP8 zero point must be +0 (got bit patterns "
                           f"{np.unique(zp_bits).tolist()})")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "QuantizeLinear" and attrs.get("saturate", 1) != 1:
            raise QccError(f"QuantizeLinear {node.name!r}: FP8 with saturate=0 is not supported")
        if attrs.get("block_size", 0):
            raise QccError(f"{node.op_type} {node.name!r}: blocked FP8 quantization is not supported")
        new = helper.make_node(QUANTIZE_OP if node.op_type == "QuantizeLinear" else DEQUANTIZE_OP,
                               list(node.input[:2]), list(node.output), name=node.name, domain=DOMAIN,
                               format=fmt.name, axis=int(attrs.get("axis", 1)))
        node.CopyFrom(new)
        count += 1
    # the FP8 tensors themselves are now uint8 bits: fix their declared types where present
    for vi in list(graph.value_info) + list(graph.output) + list(graph.input):
        if vi.type.tensor_type.elem_type in _ONNX_FORMAT:
            vi.type.tensor_type.elem_type = onnx.TensorProto.UINT8
    if count and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name in zero_points and t.name not in used]:
        graph.initializer.remove(t)
    return count


def _axis_scale(bb, x, scale, axis: int):
    """A per-axis (1-D) scale reshaped to broadcast along `axis` of x; a scalar as it is."""
    shape = compat.tensor_shape(scale)
    if not shape or int(np.prod([int(d) for d in shape])) == 1:
        return scale
    ndim = len(compat.tensor_shape(x))
    axis = axis % ndim
    target = [1] * ndim
    target[axis] = int(shape[0])
    return bb.normalize(relax.op.reshape(scale, target))


class Quantize:
    """Importer for QccFp8Quantize: encode(x / s)."""

    @classmethod
    def get_converter(cls, opset):
        return cls._impl

    @staticmethod
    def _impl(bb, inputs, attr, params):
        x, scale = inputs[0], inputs[1]
        fmt = FORMATS[_attr_str(attr["format"])]
        s = _axis_scale(bb, x, scale, int(attr.get("axis", 1)))
        return encode(bb, bb.normalize(relax.op.divide(x, s)), fmt)


class Dequantize:
    """Importer for QccFp8Dequantize: decode(c) * s."""

    @classmethod
    def get_converter(cls, opset):
        return cls._impl

    @staticmethod
    def _impl(bb, inputs, attr, params):
        c, scale = inputs[0], inputs[1]
        fmt = FORMATS[_attr_str(attr["format"])]
        s = _axis_scale(bb, c, scale, int(attr.get("axis", 1)))
        return relax.op.multiply(bb.normalize(decode(bb, c, fmt)), s)


def _attr_str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# ------------------------------------------------------------------------------------------------
# FP8 operands for conv2d / matmul (GPUs with FP8 hardware)
# ------------------------------------------------------------------------------------------------
#
# An imported FP8 layer reads DQ(c_a, s_a) and DQ(c_w, s_w) in float32. Since s_a is a scalar and
# s_w is per output channel (or a scalar),
#
#     conv2d(decode(c_a) * s_a, decode(c_w) * s_w) = conv2d(decode(c_a), decode(c_w)) * (s_a * s_w)
#     matmul(decode(c_a) * s_a, T(decode(c_w) * s_w)) = matmul(decode(c_a), T(decode(c_w))) * (s_a * T(s_w))
#
# (T: an optional transpose), so the heavy op can take the FP8 codes themselves as operands.
# `operands_to_fp8` makes that rewrite; `operand` says how the codes enter the op: "fp8" reinterprets
# them as TVM's FP8 dtype (a GPU converts in hardware), "decode" uses qcc's exact decode (the same
# rewrite on a CPU, where TVM's own FP8 conversions are wrong: this is how it is tested).

def _bits_te(c: te.Tensor, fmt: Fp8Format) -> te.Tensor:
    return te.compute(c.shape, lambda *i: tirx.reinterpret(fmt.name, c(*i)), name=f"qcc_fp8_{fmt.name[7:]}_bits")


def operands_to_fp8(mod, operand: str = "fp8"):
    """Rewrite main's conv2d / matmul on FP8-dequantized operands (see above). Returns (module, count)."""
    from .lowering import Lowering

    low = Lowering(mod)
    plans = {}
    for var in low.order:
        val = low.bindings[var]
        name = compat.op_name(val)
        if name not in ("relax.nn.conv2d", "relax.matmul") or compat.tensor_dtype(var) != "float32":
            continue
        plan = _plan_heavy(low, val, name)
        if plan is not None:
            plans[var] = plan
    if not plans:
        return mod, 0
    new_mod = _OperandRewriter(mod, plans, operand).transform()
    return compat.dead_code_elimination(new_mod), len(plans)


def _dequantized(low, expr):
    """(codes var, format, scale array) if expr = decode(c) * s with a constant s, else None."""
    val = low.value(expr)
    if compat.op_name(val) != "relax.multiply":
        return None
    for d, s in ((val.args[0], val.args[1]), (val.args[1], val.args[0])):
        dv = low.value(d)
        name = compat.op_name(dv) or ""
        scale = low.cval(s)
        if name.startswith(OP_PREFIX) and name.endswith("_decode") and scale is not None:
            fmt = FORMATS["float8_" + name[len(OP_PREFIX):-len("_decode")]]
            return compat.call_tir_args(dv)[0], fmt, np.asarray(scale, np.float64)
    return None


def _plan_heavy(low, val, name):
    a = _dequantized(low, val.args[0])
    if a is None or a[2].size != 1:
        return None
    transpose = False
    b_expr = val.args[1]
    if name == "relax.matmul" and compat.op_name(low.value(b_expr)) == "relax.permute_dims":
        pv = low.value(b_expr)
        if len(compat.tensor_shape(pv.args[0]) or []) != 2:
            return None
        transpose, b_expr = True, pv.args[0]
    b = _dequantized(low, b_expr)
    if b is None or b[1] is not a[1]:
        return None
    s_b = b[2]
    if name == "relax.nn.conv2d":
        if str(val.attrs.data_layout) != "NCHW" or str(val.attrs.kernel_layout) != "OIHW":
            return None
        if s_b.size > 1:
            if s_b.shape != (s_b.size, 1, 1, 1):
                return None
            s_b = s_b.reshape(1, -1, 1, 1)
    elif s_b.size > 1:
        if s_b.ndim != 2:
            return None
        s_b = s_b.T.reshape(-1) if transpose else s_b.reshape(-1)
        if s_b.size != int(compat.tensor_shape(val.args[1])[-1]):
            return None       # the scale is not per output column
    mult = (float(a[2].reshape(())) * s_b).astype(np.float32)
    return {"op": name, "attrs": val.attrs, "a": a[0], "b": b[0], "fmt": a[1], "transpose": transpose,
            "mult": mult}


@compat.mutator
class _OperandRewriter(compat.PyExprMutator):
    def __init__(self, mod, plans, operand):
        super().__init__(mod)
        self.mod_ = mod
        self.plans = plans
        self.operand = operand

    def _operand(self, codes, fmt):
        codes = self.visit_expr(codes)
        if self.operand == "decode":
            return self.builder_.emit(decode(self.builder_, codes, fmt))
        return self.builder_.emit(self.builder_.call_te(lambda t: _bits_te(t, fmt), codes,
                                                        primfunc_name_hint=f"qcc_fp8_{fmt.name[7:]}_bits"))

    def visit_var_binding_(self, binding):
        plan = self.plans.get(binding.var)
        if plan is None:
            return super().visit_var_binding_(binding)
        a = self._operand(plan["a"], plan["fmt"])
        b = self._operand(plan["b"], plan["fmt"])
        if plan["op"] == "relax.nn.conv2d":
            at = plan["attrs"]
            y = relax.op.nn.conv2d(a, b, strides=at.strides, padding=at.padding, dilation=at.dilation,
                                   groups=at.groups, data_layout="NCHW", kernel_layout="OIHW",
                                   out_dtype="float32")
        else:
            if plan["transpose"]:
                b = self.builder_.emit(relax.op.permute_dims(b, [1, 0]))
            y = relax.op.matmul(a, b, out_dtype="float32")
        y = relax.op.multiply(self.builder_.emit(y), compat.const(plan["mult"]))
        emit = self.builder_.emit if isinstance(binding.var, compat.DataflowVar) else self.builder_.emit_output
        self.set_var_remap(binding.var, emit(y, binding.var.name))

    def transform(self):
        for gv, func in self.mod_.functions_items():
            if gv.name_hint == "main" and isinstance(func, relax.Function):
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()


def fp8_ops(mod) -> dict[str, int]:
    """How many qcc FP8 encode / decode calls main makes (for the build report)."""
    out: dict[str, int] = {}
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            name = compat.op_name(b.value) or ""
            if name.startswith(OP_PREFIX):
                key = "fp8_" + name.rsplit("_", 1)[1]
                out[key] = out.get(key, 0) + 1
    return out


__all__ = ["E4M3FN", "E5M2", "FORMATS", "Fp8Format", "decode", "decode_expr", "decode_te", "encode",
           "encode_expr", "encode_te", "fp8_ops", "has_fp8", "operands_to_fp8", "prepare_onnx"]
