"""qcc's packed int8 CPU kernels (backends/tvm/schedules) against numpy on odd shapes.

Kernel level: each TE kernel with a requantize-like int64 epilogue, scheduled by the rule that the
build applies (tiling, VNNI tensorization, fused epilogue, parallel), built and compared bit for bit.
Module level: a small integer Relax network through schedules.compile_module (channels-last
rewrite, weight packing, fusion, schedules) against the same module built by TVM's default pipeline.

Which path a kernel took (VNNI tensorized, or the AVX2 16-lane multiply-adds) is read from the
scheduled TIR and the LLVM IR, never from the assembly: the instruction LLVM selects for the same IR
depends on the CPU (the AVX2 path's products become vpmaddwd on Intel CPUs but vpdpwssd under
-mcpu znver4, whose tuning has fast-dpwssd). The kernels are also built for znver4 on any x86-64
host, and run wherever the host has what that code needs (_runnable).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from qcc.backends.tvm import compat, schedules
from qcc.backends.tvm.compat import R, relax
from qcc.backends.tvm.schedules import kernels, schedule
from qcc.backends.tvm.schedules.intrin import has_vnni, is_x86_llvm
from qcc.backends.tvm.target import detect_target, host_cpu_flags
from tvm import te

TARGET = detect_target()
needs_vnni = pytest.mark.skipif(not has_vnni(TARGET), reason="this CPU has no AVX-512 VNNI")
RNG = np.random.default_rng(0)

# AMD Zen 4 (the CPU whose instruction choice broke mnemonic checks): compiled on any x86-64 host
ZNVER4 = {"kind": "llvm", "mcpu": "znver4"}
_X86_ZNVER4 = is_x86_llvm(TARGET) and compat.is_valid_cpu("znver4")
KERNEL_TARGETS = [pytest.param(TARGET, id="host"),
                  pytest.param(ZNVER4, id="znver4",
                               marks=pytest.mark.skipif(not _X86_ZNVER4, reason="x86-64 LLVM with znver4"))]

# LLVM features its instruction selection may use in ordinary code (no intrinsic asked for), with
# their /proc/cpuinfo flag. The others a CPU enables (clzero, mwaitx, rdpru, sha, rdrnd, ...) are
# reached only through their own intrinsics, which these kernels do not call.
_CODEGEN_FLAGS = {
    "cmov": "cmov", "cx16": "cx16", "sahf": "lahf_lm", "sse3": "pni", "ssse3": "ssse3", "sse4.1": "sse4_1",
    "sse4.2": "sse4_2", "sse4a": "sse4a", "popcnt": "popcnt", "lzcnt": "abm", "bmi": "bmi1", "bmi2": "bmi2",
    "tbm": "tbm", "movbe": "movbe", "adx": "adx", "f16c": "f16c", "fma": "fma", "fma4": "fma4", "xop": "xop",
    "pclmul": "pclmulqdq", "avx": "avx", "avx2": "avx2", "avxvnni": "avx_vnni", "avx512f": "avx512f",
    "avx512bw": "avx512bw", "avx512cd": "avx512cd", "avx512dq": "avx512dq", "avx512vl": "avx512vl",
    "avx512ifma": "avx512ifma", "avx512vbmi": "avx512vbmi", "avx512vbmi2": "avx512_vbmi2",
    "avx512vnni": "avx512_vnni", "avx512bitalg": "avx512_bitalg", "avx512vpopcntdq": "avx512_vpopcntdq",
    "avx512bf16": "avx512_bf16", "avx512fp16": "avx512_fp16", "gfni": "gfni", "vaes": "vaes",
    "vpclmulqdq": "vpclmulqdq",
}
# what the kernels' two paths rest on: a build without one of these is a different kernel
_PATH_FEATURES = {"avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512vnni"}


def _runnable(target):
    """A target whose code runs on this host, for `target`'s kernels: `target` itself when the host
    has every feature its code may use; else the same mcpu (same tuning, e.g. znver4's fast-dpwssd)
    with the features the host lacks switched off, when none of them is one the kernel paths need
    (znver4 on an Intel host: -sse4a); None when the code cannot run here (compile-only)."""
    if not is_x86_llvm(TARGET) or not is_x86_llvm(target):
        return target if target is TARGET else None
    _, flags = host_cpu_flags()
    missing = sorted(f for f, flag in _CODEGEN_FLAGS.items()
                     if flag not in flags and compat.cpu_has_features(target, [f]))
    if not missing:
        return target
    if set(missing) & _PATH_FEATURES:
        return None
    return dict(target, mattr=[*target.get("mattr", []), *(f"-{f}" for f in missing)])


def _functions(ll: str) -> list[dict[str, str]]:
    """Per function of an LLVM IR module: {SSA name: its defining instruction}."""
    bodies = re.split(r"^define ", ll, flags=re.M)[1:]
    return [dict(re.findall(r"^\s*(%[\w.]+) = (.+)$", body, re.M)) for body in bodies]


_VNNI_CALL = re.compile(r"call <16 x i32> @llvm\.x86\.avx512\.vpdpbusd\.512\(")


def widened_i8_macs(ll: str) -> int:
    """16-lane int32 multiply-adds of 8-bit operands widened to int32 in the LLVM IR,
    acc + ext(<16 x i8>) * ext(<16 x i8>): the AVX2 path's products (from the k-major layout, one
    broadcast input byte times 16 weights). Instruction selection makes these vpmaddwd, or vpdpwssd
    (znver4), or SSE2 pmaddwd on a plain x86-64: the IR is the same."""
    count = 0
    for defs in _functions(ll):
        def widened(v):
            return re.match(r"[sz]ext <16 x i8> %[\w.]+ to <16 x i32>", defs.get(v, "")) is not None
        muls = {name for name, ins in defs.items()
                if (m := re.match(r"mul(?: nsw| nuw)* <16 x i32> (%[\w.]+), (%[\w.]+)", ins))
                and widened(m[1]) and widened(m[2])}
        count += sum(1 for ins in defs.values()
                     if (m := re.match(r"add(?: nsw| nuw)* <16 x i32> (%[\w.]+), (%[\w.]+)", ins))
                     and (m[1] in muls or m[2] in muls))
    return count


def assert_vnni_path(tir: str, ll: str) -> None:
    """Tensorized with vpdpbusd: the intrinsic call in the scheduled TIR and in the LLVM IR, and no
    part of the reduction left as plain widened multiply-adds."""
    tensorized = '"llvm.x86.avx512.vpdpbusd.512"' in tir
    assert tensorized, "the schedule did not tensorize with vpdpbusd (scheduled TIR)"
    calls = len(_VNNI_CALL.findall(ll))
    assert calls >= 1, "no llvm.x86.avx512.vpdpbusd.512 call in the LLVM IR"
    macs = widened_i8_macs(ll)
    assert macs == 0, f"{macs} widened int8 multiply-adds beside the vpdpbusd calls in the LLVM IR"


def assert_avx2_path(tir: str, ll: str) -> None:
    """The k-major AVX2 path: no VNNI intrinsic; the 16 x 4 step as (at least) 4 unrolled 16-lane
    int32 multiply-adds of widened 8-bit operands."""
    vnni = "vpdpbusd" in tir or _VNNI_CALL.search(ll) is not None
    assert not vnni, "the AVX2 path uses the VNNI intrinsic"
    macs = widened_i8_macs(ll)
    assert macs >= 4, f"{macs} 16-lane widened int8 multiply-adds in the LLVM IR (want >= 4)"


def conv_ref(x, w, stride, pad, groups=1):
    """NCHW int64 reference convolution (x: [N, C, H, W], w: [O, C/groups, KH, KW])."""
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, o, ho, wo), np.int64)
    og = o // groups
    for g in range(groups):
        xs = xp[:, g * cg:(g + 1) * cg]
        for a in range(kh):
            for b in range(kw):
                patch = xs[:, :, a:a + stride * ho:stride, b:b + stride * wo:stride]
                out[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch,
                                                         w[g * og:(g + 1) * og, :, a, b].astype(np.int64))
    return out


def _epilogue(y, channels):
    """int64 fixed-point style epilogue: clamp(((y + b) * m + ((y + b) * m >> s & 1)) >> s, 0, 255)."""
    b = te.placeholder((channels,), "int32", name="b")
    m = te.placeholder((channels,), "int64", name="m")

    def f(*i):
        c = i[-1]
        v = (y(*i) + b[c]).astype("int64") * m[c]
        r = (v + ((v >> 7) & 1)) >> 7
        return te.min(te.max(r, 0), 255).astype("uint8")
    return b, m, te.compute(y.shape, f, name="epilogue")


def _epilogue_ref(acc, b, m):
    v = (acc + b.astype(np.int64)) * m
    return np.clip((v + ((v >> 7) & 1)) >> 7, 0, 255).astype(np.uint8)


def _run(args, out, arrays, expect_rule, target=TARGET):
    """Schedule and build for `target`; run on this host (a _runnable build). Returns (output, or
    None where this host cannot run the target's code; scheduled TIR; LLVM IR of the `target` build)."""
    func = te.create_prim_func(args + [out])
    scheduled, rule = schedule.schedule_function(func)
    assert rule == expect_rule
    mod = tvm.IRModule({"main": scheduled.with_attr("global_symbol", "main")})
    lib = tvm.tirx.build(mod, target=compat.make_target(target))
    run_target = _runnable(target)
    if run_target is None:
        return None, scheduled.script(), lib.inspect_source("ll")
    run_lib = lib if run_target is target else tvm.tirx.build(mod, target=compat.make_target(run_target))
    res = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], str(out.dtype)))
    run_lib(*[tvm.runtime.tensor(a) for a in arrays], res)
    return res.numpy(), scheduled.script(), lib.inspect_source("ll")


@pytest.mark.parametrize("target", KERNEL_TARGETS)
@pytest.mark.parametrize("kmajor", [False, True])   # VNNI layout (vpdpbusd) / AVX2 k-major (16-lane int32 products)
@pytest.mark.parametrize("c,o,k,stride,pad,hw", [(19, 37, 3, 2, 1, 13), (3, 20, 3, 2, 1, 15), (24, 40, 1, 1, 0, 9)])
def test_conv2d_vnni_packed(c, o, k, stride, pad, hw, kmajor, target):
    if not kmajor and not has_vnni(target):
        pytest.skip("no AVX-512 VNNI on this target")
    x = RNG.integers(0, 256, (1, c, hw, hw), dtype=np.uint8)
    w = RNG.integers(-128, 128, (o, c, k, k), dtype=np.int8)
    wp = kernels.pack_conv_weight(w, kmajor=kmajor)
    xt = te.placeholder((1, hw, hw, c), "uint8", name="x")
    wt = te.placeholder(wp.shape, "int8", name="w")
    y = kernels.conv2d_nhwc_packed(xt, wt, (stride, stride), (pad,) * 4, (1, 1))
    o16 = int(y.shape[3])
    b, m, out = _epilogue(y, o16)
    bn = RNG.integers(-5000, 5000, o16, dtype=np.int32)
    mn = RNG.integers(1, 8, o16).astype(np.int64)
    got, tir, ll = _run([xt, wt, b, m], out, [x.transpose(0, 2, 3, 1).copy(), wp, bn, mn], kernels.CONV_BLOCK,
                        target)
    (assert_avx2_path if kmajor else assert_vnni_path)(tir, ll)
    assert got is not None or target is not TARGET
    if got is not None:
        acc = conv_ref(x, w, stride, pad).transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(got[..., :o], _epilogue_ref(acc, bn[:o], mn[:o]))


@pytest.mark.parametrize("c,stride,pad,hw,dtype", [(37, 2, 1, 11, "uint8"), (32, 1, 1, 10, "int8")])
def test_depthwise_vectorized(c, stride, pad, hw, dtype):
    lo, hi = (0, 256) if dtype == "uint8" else (-128, 128)
    x = RNG.integers(lo, hi, (1, c, hw, hw)).astype(dtype)
    w = RNG.integers(-128, 128, (c, 1, 3, 3), dtype=np.int8)
    xt = te.placeholder((1, hw, hw, c), dtype, name="x")
    wt = te.placeholder((3, 3, c), "int8", name="w")
    y = kernels.depthwise_nhwc(xt, wt, (stride, stride), (pad,) * 4, (1, 1))
    b, m, out = _epilogue(y, c)
    bn = RNG.integers(-5000, 5000, c, dtype=np.int32)
    mn = RNG.integers(1, 8, c).astype(np.int64)
    got, _, _ = _run([xt, wt, b, m], out, [x.transpose(0, 2, 3, 1).copy(), kernels.pack_depthwise_weight(w), bn, mn],
                     kernels.DW_BLOCK)
    acc = conv_ref(x, w, stride, pad, groups=c).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(got, _epilogue_ref(acc, bn, mn))


@pytest.mark.parametrize("target", KERNEL_TARGETS)
@pytest.mark.parametrize("c,stride,hw", [(64, 1, 9), (128, 2, 11), (192, 1, 7)])
def test_depthwise_vnni_lane_order(c, stride, hw, target):
    """x arrives in lane order (kernels.lane_order), the output comes out in natural order."""
    if not has_vnni(target):
        pytest.skip("no AVX-512 VNNI on this target")
    x = RNG.integers(0, 256, (1, c, hw, hw), dtype=np.uint8)
    w = RNG.integers(-128, 128, (c, 1, 3, 3), dtype=np.int8)
    wv = kernels.pack_depthwise_weight_vnni(w)
    xt = te.placeholder((1, hw, hw, c), "uint8", name="x")
    wt = te.placeholder(wv.shape, "int8", name="w")
    y = kernels.depthwise_nhwc_vnni(xt, wt, (stride, stride), (1,) * 4, (1, 1))
    b, m, out = _epilogue(y, c)
    bn = RNG.integers(-5000, 5000, c, dtype=np.int32)
    mn = RNG.integers(1, 8, c).astype(np.int64)
    xl = kernels.to_lane_order(x.transpose(0, 2, 3, 1), 3)
    got, tir, ll = _run([xt, wt, b, m], out, [xl, wv, bn, mn], kernels.DW_VNNI_BLOCK, target)
    assert_vnni_path(tir, ll)
    assert got is not None or target is not TARGET
    if got is not None:
        acc = conv_ref(x, w, stride, 1, groups=c).transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(got, _epilogue_ref(acc, bn, mn))


def test_lane_order_is_a_permutation_per_64_channels():
    nat = kernels.lane_order(128)
    assert sorted(nat) == list(range(128)) and set(nat[:64]) == set(range(64))
    a = np.arange(3 * 128).reshape(3, 128)
    np.testing.assert_array_equal(kernels.to_lane_order(a, 1), a[:, nat])


@pytest.mark.parametrize("target", KERNEL_TARGETS)
@pytest.mark.parametrize("kmajor", [False, True])
@pytest.mark.parametrize("m_,k,n", [(5, 45, 37), (1, 64, 1000)])
def test_dense_vnni_packed(m_, k, n, kmajor, target):
    if not kmajor and not has_vnni(target):
        pytest.skip("no AVX-512 VNNI on this target")
    x = RNG.integers(0, 256, (m_, k), dtype=np.uint8)
    w = RNG.integers(-128, 128, (k, n), dtype=np.int8)
    wp = kernels.pack_dense_weight(w, kmajor=kmajor)
    xt = te.placeholder((m_, k), "uint8", name="x")
    wt = te.placeholder(wp.shape, "int8", name="w")
    y = kernels.dense_packed(xt, wt)
    n16 = int(y.shape[1])
    b, mm, out = _epilogue(y, n16)
    bn = RNG.integers(-5000, 5000, n16, dtype=np.int32)
    mn = RNG.integers(1, 8, n16).astype(np.int64)
    got, tir, ll = _run([xt, wt, b, mm], out, [x, wp, bn, mn], kernels.DENSE_BLOCK, target)
    (assert_avx2_path if kmajor else assert_vnni_path)(tir, ll)
    assert got is not None or target is not TARGET
    if got is not None:
        acc = x.astype(np.int64) @ w.astype(np.int64)
        np.testing.assert_array_equal(got[:, :n], _epilogue_ref(acc, bn[:n], mn[:n]))


def _requant(acc, c):
    """The integer lowering's requantize chain on an int32 NCHW accumulator (per-channel M, shift 20)."""
    mult = compat.const(RNG.integers(1 << 12, 1 << 14, (1, c, 1, 1)).astype(np.int64))
    v = R.multiply(R.astype(acc, "int64"), mult)
    r = R.right_shift(R.add(R.add(v, compat.const(np.int64((1 << 19) - 1))),
                            R.bitwise_and(R.right_shift(v, compat.const(np.int64(20))), compat.const(np.int64(1)))),
                      compat.const(np.int64(20)))
    return R.astype(R.clip(r, 0, 255), "uint8")


def _small_net():
    """conv 3x3 s2 (odd channels) -> requant -> depthwise -> requant -> grouped conv (groups 2) ->
    requant -> + residual -> global sum -> flatten -> matmul: every rule of the rewrite, NCHW."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 5, 17, 17), "uint8"))
    w1 = RNG.integers(-128, 128, (22, 5, 3, 3), dtype=np.int8)
    w2 = RNG.integers(-128, 128, (22, 1, 3, 3), dtype=np.int8)
    w3 = RNG.integers(-128, 128, (22, 11, 1, 1), dtype=np.int8)
    w4 = RNG.integers(-128, 128, (22, 13), dtype=np.int8)
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(R.nn.conv2d(x, compat.const(w1), strides=2, padding=1, out_dtype="int32"))
            a = bb.emit(_requant(R.add(a, compat.const(RNG.integers(-999, 999, (1, 22, 1, 1)).astype(np.int32))), 22))
            d = bb.emit(R.nn.conv2d(a, compat.const(w2), padding=1, groups=22, out_dtype="int32"))
            d = bb.emit(_requant(d, 22))
            g = bb.emit(R.nn.conv2d(d, compat.const(w3), groups=2, out_dtype="int32"))
            g = bb.emit(_requant(g, 22))
            s = bb.emit(R.astype(R.minimum(R.add(R.astype(g, "int32"), R.astype(a, "int32")), compat.const(np.int32(255))),
                                 "uint8"))
            p = bb.emit(R.sum(R.astype(s, "int32"), axis=[2, 3], keepdims=True))
            f = bb.emit(R.astype(R.clip(R.right_shift(p, compat.const(np.int32(6))), 0, 255), "uint8"))
            f = bb.emit(R.reshape(f, [1, 22]))
            out = bb.emit_output(R.matmul(f, compat.const(w4), out_dtype="int32"))
        bb.emit_func_output(out)
    return bb.get(), RNG.integers(0, 256, (1, 5, 17, 17), dtype=np.uint8)


@pytest.mark.skipif(not is_x86_llvm(TARGET), reason="x86 schedules")
@pytest.mark.parametrize("mcpu", [None, "haswell", "znver4"])   # this CPU (VNNI here), AVX2 without VNNI, Zen 4
def test_module_matches_default_build(mcpu):
    target = TARGET if mcpu is None else {"kind": "llvm", "mcpu": mcpu}
    mod, x = _small_net()
    ex, _, info = schedules.compile_module(mod, target)
    assert info["vnni"] == has_vnni(target)
    assert info["kernels"].get("depthwise") == 1
    isa = "vnni" if info["vnni"] else "avx2"     # AVX2: the same kernels with k-major weights
    assert info["kernels"].get(f"conv2d_{isa}") == 1 and info["kernels"].get(f"dense_{isa}") == 1
    assert info["functions"].get("failed", 0) == 0
    run_target = _runnable(target)
    if run_target is None:       # this host cannot run the target's code: built and checked only
        assert target is not TARGET
        return
    if run_target is not target:
        ex, _, again = schedules.compile_module(mod, run_target)
        assert again == info
    ex_ref, _ = compat.compile_module(mod, run_target)
    run = lambda e: relax.VirtualMachine(e, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(run(ex), run(ex_ref))


def _requant_f32(acc, c):
    """The float32 requantize the lowering emits: clip(round(float(acc) * M), 0, 255) as uint8."""
    m = compat.const((RNG.random((1, c, 1, 1)) * 0.02).astype(np.float32))
    return R.astype(R.clip(R.round(R.multiply(R.astype(acc, "float32"), m)), 0, 255), "uint8")


def _lane_net(shared: bool):
    """conv 3x3 (5 -> 64) -> requant -> depthwise 3x3 s2 (64) -> requant -> conv 1x1 (64 -> 13): the
    depthwise runs on VNNI in lane order. shared: the requantized conv output is also read by a
    global sum, so the chain must stay in natural order."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 5, 13, 13), "uint8"))
    w1 = RNG.integers(-128, 128, (64, 5, 3, 3), dtype=np.int8)
    w2 = RNG.integers(-128, 128, (64, 1, 3, 3), dtype=np.int8)
    w3 = RNG.integers(-128, 128, (13, 64, 1, 1), dtype=np.int8)
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(R.nn.conv2d(x, compat.const(w1), padding=1, out_dtype="int32"))
            a = bb.emit(_requant_f32(R.add(a, compat.const(RNG.integers(-999, 999, (1, 64, 1, 1)).astype(np.int32))),
                                     64))
            d = bb.emit(R.nn.conv2d(a, compat.const(w2), strides=2, padding=1, groups=64, out_dtype="int32"))
            d = bb.emit(_requant_f32(d, 64))
            out = R.nn.conv2d(d, compat.const(w3), out_dtype="int32")
            if shared:
                out = R.add(R.sum(out, axis=[2, 3], keepdims=True),
                            R.sum(R.astype(a, "int32"), axis=[1, 2, 3], keepdims=True))
            out = bb.emit_output(out)
        bb.emit_func_output(out)
    return bb.get(), RNG.integers(0, 256, (1, 5, 13, 13), dtype=np.uint8)


@needs_vnni
@pytest.mark.parametrize("shared", [False, True])
def test_lane_order_depthwise_matches_default_build(shared):
    mod, x = _lane_net(shared)
    ex_ref, _ = compat.compile_module(mod, TARGET)
    ex, _, info = schedules.compile_module(mod, TARGET)
    run = lambda e: relax.VirtualMachine(e, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(run(ex), run(ex_ref))
    kind = "depthwise" if shared else "depthwise_vnni"
    assert info["kernels"].get(kind) == 1 and info["functions"].get("failed", 0) == 0


def test_non_x86_target_is_left_alone():
    mod, _ = _small_net()
    same, info = schedules.optimize(mod, {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"})
    assert info == {"scheduled": False} and same is mod


@pytest.mark.skipif(not is_x86_llvm(TARGET), reason="x86 schedules")
@pytest.mark.parametrize("mcpu", [None, "haswell", "znver4"])   # this CPU (VNNI here), AVX2: the matmul rule, Zen 4
def test_activation_matmul_matches_default_build(mcpu):
    """Attention-style activation x activation matmul (odd sizes) with its requantize epilogue."""
    target = TARGET if mcpu is None else {"kind": "llvm", "mcpu": mcpu}
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((1, 3, 5, 7), "uint8"))
    b = relax.Var("b", relax.TensorType((1, 3, 7, 37), "uint8"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            y = bb.emit(R.matmul(a, b, out_dtype="int32"))
            y = bb.emit(R.astype(R.clip(R.right_shift(y, compat.const(np.int32(9))), 0, 255), "uint8"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()
    xa = RNG.integers(0, 256, (1, 3, 5, 7), dtype=np.uint8)
    xb = RNG.integers(0, 256, (1, 3, 7, 37), dtype=np.uint8)
    ex, _, info = schedules.compile_module(mod, target)
    # VNNI: packed at run time onto the dense kernel; otherwise the matmul rule
    rule = kernels.DENSE_BLOCK if has_vnni(target) else "matmul"
    assert info["functions"].get(rule) == 1
    run_target = _runnable(target)
    if run_target is None:       # this host cannot run the target's code: built and checked only
        assert target is not TARGET
        return
    if run_target is not target:
        ex, _, info = schedules.compile_module(mod, run_target)
        assert info["functions"].get(rule) == 1
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(xa), tvm.runtime.tensor(xb)).numpy()
    ref = np.clip((xa.astype(np.int64) @ xb.astype(np.int64)) >> 9, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.skipif(not is_x86_llvm(TARGET), reason="x86 schedules")
def test_activation_matmul_symbolic_sequence_exact():
    """QK^T at a dynamic sequence length: both i and j symbolic. The matmul rule (AVX2 path) takes
    it, not the generic one (the tail of the 16-lane j split is peeled), and every length, a multiple
    of 16 or not, equals numpy exactly."""
    target = {"kind": "llvm", "mcpu": "haswell"}
    n = compat.sym_var("n")
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((1, 3, n, 24), "uint8"))
    b = relax.Var("b", relax.TensorType((1, 3, 24, n), "int8"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            out = bb.emit_output(R.matmul(a, b, out_dtype="int32"))
        bb.emit_func_output(out)
    ex, _, info = schedules.compile_module(bb.get(), target)
    assert info["functions"].get("matmul") == 1 and "generic" not in info["functions"], info["functions"]
    if _runnable(target) is None:
        return
    vm = relax.VirtualMachine(ex, tvm.cpu())
    for length in (1, 7, 16, 37, 64):
        av = RNG.integers(0, 256, (1, 3, length, 24), dtype=np.uint8)
        bv = RNG.integers(-128, 128, (1, 3, 24, length)).astype(np.int8)
        got = vm["main"](tvm.runtime.tensor(av), tvm.runtime.tensor(bv)).numpy()
        np.testing.assert_array_equal(got, av.astype(np.int64) @ bv.astype(np.int64))


@pytest.mark.parametrize("zp", [0.0, 7.0])
def test_lrint_requantize_is_exact_on_ties(zp):
    """clip(round(v) + zp) as lrint(clip(v + zp)) (schedules/rounding.py): bit-exact, ties to even,
    values beyond int32 clamped first."""
    from qcc.backends.tvm.schedules.rounding import lrint_requantize

    v = relax.Var("v", relax.TensorType((4, 64), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [v]):
        with bb.dataflow():
            r = bb.emit(R.round(R.multiply(v, compat.const(np.float32(1.0)))))
            if zp:
                r = bb.emit(R.add(r, compat.const(np.float32(zp))))
            out = bb.emit_output(R.astype(R.clip(r, 0, 255), "uint8"))
        bb.emit_func_output(out)
    mod, n = lrint_requantize(bb.get())
    assert n == 1 and "round" not in mod["main"].script()
    x = (RNG.integers(-40, 560, (4, 64)) / 2).astype(np.float32)   # every other value a .5 tie
    x[0, :4] = [3e9, -3e9, 254.5, 255.5]
    ex, _ = compat.compile_module(mod, TARGET)
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, np.clip(np.round(x) + zp, 0, 255).astype(np.uint8))


@needs_vnni
@pytest.mark.parametrize("bdtype", ["uint8", "int8"])
def test_activation_matmul_runs_on_vnni_exactly(bdtype):
    """uint8 activation @ activation (attention's products): packed at run time and run on vpdpbusd,
    uint8 b shifted by 128 with the 128 * rowsum(a) term added back; K and N not multiples of 4 / 16."""
    a = relax.Var("a", relax.TensorType((1, 3, 9, 22), "uint8"))
    b = relax.Var("b", relax.TensorType((1, 3, 22, 37), bdtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [a, b]):
        with bb.dataflow():
            out = bb.emit_output(R.matmul(a, b, out_dtype="int32"))
        bb.emit_func_output(out)
    mod = bb.get()
    ex, _, info = schedules.compile_module(mod, TARGET)
    assert info["kernels"].get("dense_vnni") == 1 and info["functions"].get("failed", 0) == 0
    lo, hi = (0, 256) if bdtype == "uint8" else (-128, 128)
    av = RNG.integers(0, 256, (1, 3, 9, 22), dtype=np.uint8)
    bv = RNG.integers(lo, hi, (1, 3, 22, 37)).astype(bdtype)
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(av), tvm.runtime.tensor(bv)).numpy()
    np.testing.assert_array_equal(got, av.astype(np.int64) @ bv.astype(np.int64))


@pytest.mark.skipif(not is_x86_llvm(TARGET), reason="x86 schedules")
def test_row_rule_softmax_and_layer_norm_bit_identical():
    """Softmax and layer norm (reductions over the innermost axis) under the row rule: one parallel
    loop over row groups, each row's sums in their sequential order, so the results equal TVM's
    default build bit for bit."""
    x = relax.Var("x", relax.TensorType((2, 3, 24, 40), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            s = bb.emit(R.nn.softmax(x, axis=-1))
            q = bb.emit(R.astype(R.clip(R.round(R.multiply(s, compat.const(np.float32(255.0)))), 0, 255), "uint8"))
            ln = bb.emit(R.nn.layer_norm(x, compat.const(RNG.standard_normal(40).astype(np.float32)),
                                         compat.const(RNG.standard_normal(40).astype(np.float32)), axes=[-1]))
            out = bb.emit_output(relax.Tuple([q, ln]))
        bb.emit_func_output(out)
    mod = bb.get()
    ex_ref, _ = compat.compile_module(mod, TARGET)
    ex, _, info = schedules.compile_module(mod, TARGET)
    assert info["functions"].get("rows", 0) >= 2
    xv = tvm.runtime.tensor((RNG.standard_normal((2, 3, 24, 40)) * 4).astype(np.float32))
    got = [o.numpy() for o in relax.VirtualMachine(ex, tvm.cpu())["main"](xv)]
    ref = [o.numpy() for o in relax.VirtualMachine(ex_ref, tvm.cpu())["main"](xv)]
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g, r)
