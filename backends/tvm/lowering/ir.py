"""The values a lowering plan is made of (views, affine sums, plans, quantize sites) and the small
numpy helpers the rules share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..fixedpoint import quantize_scalar
from .registry import NoMatch

QRANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-(2**15), 2**15 - 1)}
INT32_MAX = 2**31 - 1
SHAPE_ONLY_DTYPES = {"int64", "int32", "bool"}
# FP8 QDQ graphs: qcc's encode / decode calls (fp8.py); the ops between them compute in float
FP8_OP_PREFIX = "call_tir:qcc_fp8_"
FP8_FLOAT = "FP8 fake quantization: float compute between qcc's exact FP8 encode / decode"


@dataclass
class View:
    """A float tensor that equals dequantize(int tensor) exactly (scalar scale and zero point)."""
    var: object                   # the original Relax var holding the float value
    emit: Callable                # (emitter) -> integer Relax expr
    scale: float
    zp: int
    dtype: str
    sources: list                 # original int vars the emission reads
    ops: list = field(default_factory=list)   # layout ops applied on the way (for the op counts)


@dataclass
class Term:
    emit: Callable                # (emitter) -> integer Relax expr (int32 accumulator or a view)
    m: np.ndarray                 # real multiplier, broadcastable to the output (float64)
    k: np.ndarray                 # integer offset in term units, broadcastable (int64)
    sources: list
    kind: str                     # conv2d / matmul / view / mean / ...
    acc_dtype: str = "int32"      # what emit returns for a heavy op: int32, or int64 (int16 operands, see below)
    bound: int | None = None      # max |t| over every input (None: an int32 accumulator of int8 codes, unchecked)


@dataclass
class Affine:
    """real value = sum_i m_i * (t_i + k_i) + offset"""
    terms: list
    offset: np.ndarray | None     # real, broadcastable (float64)
    rank: int                     # output rank (for broadcasting the constant arrays)
    absorbed: list                # float vars this affine sum replaces


@dataclass
class Plan:
    var: object
    emit: Callable                # (emitter) -> Relax expr with the same type as var
    sources: list
    absorbed: list
    kinds: list                   # integer op kinds, for info["integer_ops"]


@dataclass
class Site:
    """A QuantizeLinear being planned: y = clamp(round(v / scale) + zp, lo, hi) -> dtype."""
    var: object
    scale: float
    zp: int
    dtype: str
    lo: int
    hi: int

    def q(self, value: float) -> int:
        """Q(value) in the output's full range (a clamp bound folded from Relu / Clip)."""
        return quantize_scalar(value, self.scale, self.zp, *QRANGE[self.dtype])

    @property
    def full_range(self) -> bool:
        return (self.lo, self.hi) == QRANGE[self.dtype]


def max_code(dtype: str) -> int:
    """max |q| of an integer dtype's codes (128 for int8, 32768 for int16)."""
    lo, hi = QRANGE[dtype]
    return max(-lo, hi)


def accumulator(bound: int) -> str:
    """The accumulator dtype a sum of products needs when |acc| <= bound is all we can prove: int32
    when bound < 2**31 (for an int16 x int8 layer: max|x| * max_o sum|w[o]| with the actual weight
    codes and the full int16 range), else int64."""
    return "int32" if bound <= INT32_MAX else "int64"


def view_term(v: View, kind: str = "view") -> Term:
    """A view as an affine term: s * (x - zp)."""
    return Term(lambda e, v=v: e.view_expr(v), np.array(v.scale, np.float64), np.array(-v.zp, np.int64),
                v.sources, kind, bound=max_code(v.dtype))


def rank_array(a, rank: int) -> np.ndarray:
    """Left-pad the shape of a constant with 1s to `rank` dims (numpy broadcasting from the right)."""
    a = np.asarray(a)
    if a.ndim > rank:
        squeezed = a.reshape(a.shape[a.ndim - rank:]) if all(d == 1 for d in a.shape[:a.ndim - rank]) else None
        if squeezed is None:
            raise NoMatch(f"constant of shape {a.shape} does not broadcast to rank {rank}")
        return squeezed
    return a.reshape((1,) * (rank - a.ndim) + a.shape)


def trim(a: np.ndarray) -> np.ndarray:
    """Drop leading broadcast dims of a constant (keeps the emitted constants small)."""
    a = np.asarray(a)
    while a.ndim > 0 and a.shape[0] == 1:
        a = a.reshape(a.shape[1:])
    return a


def scalar(a) -> float | None:
    """The single value of a constant (size 1, or all elements equal), else None."""
    a = np.asarray(a)
    if a.size == 1:
        return a.reshape(()).item()
    if a.size > 1 and np.all(a == a.reshape(-1)[0]):
        return a.reshape(-1)[0].item()
    return None


def qparam_broadcast(s, z, axis, ndim):
    """Scale / zero point of a (per-axis) dequantize, shaped to broadcast against its rank-`ndim` input."""
    s = np.asarray(s)
    z = np.asarray(z)
    if s.size > 1:
        axis = axis % ndim
        shape = [1] * ndim
        shape[axis] = -1
        s = s.reshape(shape)
        z = z.reshape(shape) if z.size > 1 else z.reshape(())
    else:
        s = s.reshape(())
        z = z.reshape(())
    return s, z


def int8_weight_problem(w: tuple, what: str, out_axis: int) -> str | None:
    """Why a constant dequantized weight (q, scale, zp) is not an int8 operand with zero point 0 and
    one scale per slice along `out_axis` (the layer's output channels), or None when it is."""
    wq, ws, wz = w
    if np.any(wz != 0):
        return f"{what} weight with a nonzero zero point"
    if wq.dtype != np.int8:
        return f"{what} weight dtype {wq.dtype}"
    sw = np.broadcast_to(ws, wq.shape)
    first = tuple(slice(None) if i == out_axis else slice(0, 1) for i in range(wq.ndim))
    if not np.all(sw == sw[first]):
        return f"{what} weight scale varies along a non-output axis"
    return None
