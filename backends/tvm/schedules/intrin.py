"""The VNNI tensor intrinsic the int8 kernels are tensorized with, and which CPUs have it.

One ``vpdpbusd`` (AVX-512 VNNI) computes, for 16 int32 lanes i,

    C[i] += sum_{k<4} A[k] * B[i, k]          A: 4 x uint8 (broadcast), B: 16 x 4 int8 (contiguous)

TVM 0.27 ships this intrinsic, but its implementation fails LLVM 22's verifier (it passes the
operands as <16 x i32> where LLVM 22 wants <64 x i8>), so it is registered again here with the
operand types LLVM 22 expects. The description (the loop nest the schedule must match) is the
same; B must be laid out as contiguous [16, 4] tiles (weights pre-packed to [.., N/16, .., K/4, 16, 4]):
tensorizing a strided B goes through but computes wrong sums.

The same instruction with both operands full vectors (no broadcast) is the lane-wise form

    C[i] += sum_{k<4} A[4i + k] * B[i, k]        A: 64 uint8, B: 16 x 4 int8 (both contiguous)

which the depthwise kernel uses with "diagonal" weights (B[i, k] = 0 for all k but one, so each
int32 lane accumulates a single channel's product; kernels.depthwise_nhwc_vnni).
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from .. import compat

VNNI_16x4 = "qcc_vnni_u8i8i32_16x4"


def _intrinsic():
    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vi, vk])

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            # one expression, no named temporaries: each named temporary becomes a workspace
            # allocation inside the parallel loop body in TVM 0.27
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16),
                              dtype="int8x64"),
                B.vload([0, 0], dtype="int8x64"),
                dtype="int32x16")
    return desc, impl


TensorIntrin.register(VNNI_16x4, *_intrinsic(), override=True)

VNNI_LANEWISE_16x4 = "qcc_vnni_u8i8i32_lanewise_16x4"


@T.prim_func(s_tir=True)
def _lanewise_desc(A: T.Buffer((64,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
                   C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:64], B[0:16, 0:4])
        T.writes(C[0:16])
        for i in T.serial(0, 16):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.Cast("int32", A[vi * 4 + vk]) * T.Cast("int32", B[vi, vk])


@T.prim_func(s_tir=True)
def _lanewise_impl(A: T.Buffer((64,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
                   C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:64], B[0:16, 0:4])
        T.writes(C[0:16])
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            C.vload([0], dtype="int32x16"), A.vload([0], dtype="uint8x64"), B.vload([0, 0], dtype="int8x64"),
            dtype="int32x16")


TensorIntrin.register(VNNI_LANEWISE_16x4, _lanewise_desc, _lanewise_impl, override=True)


def is_x86_llvm(target: dict) -> bool:
    """An x86 LLVM target (the only one these schedules are written for)."""
    if not isinstance(target, dict) or target.get("kind") != "llvm":
        return False
    triple = target.get("mtriple") or compat.system_triple()
    return triple.split("-")[0] in ("x86_64", "amd64", "i686")


def has_avx2(target: dict) -> bool:
    """AVX2 available on the target's mcpu (the packed int8 kernels without VNNI)."""
    return is_x86_llvm(target) and compat.cpu_has_features(target, ["avx2"])


def has_vnni(target: dict) -> bool:
    """AVX-512 VNNI (512-bit vpdpbusd) available on the target's mcpu."""
    return is_x86_llvm(target) and compat.cpu_has_features(target, ["avx512vnni", "avx512bw"])
