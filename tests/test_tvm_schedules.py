"""qcc's packed int8 CPU kernels (backends/tvm/schedules) against numpy on odd shapes.

Kernel level: each TE kernel with a requantize-like int64 epilogue, scheduled by the rule that the
build applies (tiling, VNNI tensorization, fused epilogue, parallel), built and compared bit for bit.
Module level: a small integer Relax network through schedules.compile_module (channels-last
rewrite, weight packing, fusion, schedules) against the same module built by TVM's default pipeline.
"""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from qcc.backends.tvm import compat, schedules
from qcc.backends.tvm.compat import R, relax
from qcc.backends.tvm.schedules import kernels, schedule
from qcc.backends.tvm.schedules.intrin import has_vnni, is_x86_llvm
from qcc.backends.tvm.target import detect_target
from tvm import te

TARGET = detect_target()
needs_vnni = pytest.mark.skipif(not has_vnni(TARGET), reason="this CPU has no AVX-512 VNNI")
RNG = np.random.default_rng(0)


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


def _run(args, out, arrays, expect_rule):
    func = te.create_prim_func(args + [out])
    scheduled, rule = schedule.schedule_function(func)
    assert rule == expect_rule
    lib = tvm.tirx.build(tvm.IRModule({"main": scheduled.with_attr("global_symbol", "main")}),
                         target=compat.make_target(TARGET))
    res = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], str(out.dtype)))
    lib(*[tvm.runtime.tensor(a) for a in arrays], res)
    return res.numpy(), lib.inspect_source("asm")


@pytest.mark.parametrize("kmajor", [False, True])   # VNNI layout (vpdpbusd) / AVX2 k-major (vpmaddwd)
@pytest.mark.parametrize("c,o,k,stride,pad,hw", [(19, 37, 3, 2, 1, 13), (3, 20, 3, 2, 1, 15), (24, 40, 1, 1, 0, 9)])
def test_conv2d_vnni_packed(c, o, k, stride, pad, hw, kmajor):
    if not kmajor and not has_vnni(TARGET):
        pytest.skip("this CPU has no AVX-512 VNNI")
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
    got, asm = _run([xt, wt, b, m], out, [x.transpose(0, 2, 3, 1).copy(), wp, bn, mn], kernels.CONV_BLOCK)
    acc = conv_ref(x, w, stride, pad).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(got[..., :o], _epilogue_ref(acc, bn[:o], mn[:o]))
    assert ("vpmaddwd" if kmajor else "vpdpbusd") in asm


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
    got, _ = _run([xt, wt, b, m], out, [x.transpose(0, 2, 3, 1).copy(), kernels.pack_depthwise_weight(w), bn, mn],
                  kernels.DW_BLOCK)
    acc = conv_ref(x, w, stride, pad, groups=c).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(got, _epilogue_ref(acc, bn, mn))


@needs_vnni
@pytest.mark.parametrize("c,stride,hw", [(64, 1, 9), (128, 2, 11), (192, 1, 7)])
def test_depthwise_vnni_lane_order(c, stride, hw):
    """x arrives in lane order (kernels.lane_order), the output comes out in natural order."""
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
    got, asm = _run([xt, wt, b, m], out, [xl, wv, bn, mn], kernels.DW_VNNI_BLOCK)
    acc = conv_ref(x, w, stride, 1, groups=c).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(got, _epilogue_ref(acc, bn, mn))
    assert "vpdpbusd" in asm


def test_lane_order_is_a_permutation_per_64_channels():
    nat = kernels.lane_order(128)
    assert sorted(nat) == list(range(128)) and set(nat[:64]) == set(range(64))
    a = np.arange(3 * 128).reshape(3, 128)
    np.testing.assert_array_equal(kernels.to_lane_order(a, 1), a[:, nat])


@pytest.mark.parametrize("kmajor", [False, True])
@pytest.mark.parametrize("m_,k,n", [(5, 45, 37), (1, 64, 1000)])
def test_dense_vnni_packed(m_, k, n, kmajor):
    if not kmajor and not has_vnni(TARGET):
        pytest.skip("this CPU has no AVX-512 VNNI")
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
    got, asm = _run([xt, wt, b, mm], out, [x, wp, bn, mn], kernels.DENSE_BLOCK)
    acc = x.astype(np.int64) @ w.astype(np.int64)
    np.testing.assert_array_equal(got[:, :n], _epilogue_ref(acc, bn[:n], mn[:n]))
    assert ("vpmaddwd" if kmajor else "vpdpbusd") in asm


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
@pytest.mark.parametrize("mcpu", [None, "haswell"])   # this CPU (VNNI here), and AVX2 without VNNI
def test_module_matches_default_build(mcpu):
    target = TARGET if mcpu is None else {"kind": "llvm", "mcpu": mcpu}
    mod, x = _small_net()
    ex_ref, _ = compat.compile_module(mod, target)
    ex, _ = schedules.compile_module(mod, target)
    info = dict(schedules.LAST_INFO)
    run = lambda e: relax.VirtualMachine(e, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(run(ex), run(ex_ref))
    assert info["kernels"].get("depthwise") == 1
    isa = "vnni" if info["vnni"] else "avx2"     # AVX2: the same kernels with k-major weights
    assert info["kernels"].get(f"conv2d_{isa}") == 1 and info["kernels"].get(f"dense_{isa}") == 1
    assert info["functions"].get("failed", 0) == 0


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
    ex, _ = schedules.compile_module(mod, TARGET)
    info = dict(schedules.LAST_INFO)
    run = lambda e: relax.VirtualMachine(e, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(run(ex), run(ex_ref))
    kind = "depthwise" if shared else "depthwise_vnni"
    assert info["kernels"].get(kind) == 1 and info["functions"].get("failed", 0) == 0


def test_non_x86_target_is_left_alone():
    mod, _ = _small_net()
    same, info = schedules.optimize(mod, {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"})
    assert info == {"scheduled": False} and same is mod


@pytest.mark.skipif(not is_x86_llvm(TARGET), reason="x86 schedules")
@pytest.mark.parametrize("mcpu", [None, "haswell"])   # this CPU (VNNI here), and AVX2: the matmul rule
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
    ex, _ = schedules.compile_module(mod, target)
    # VNNI: packed at run time onto the dense kernel; otherwise the matmul rule
    rule = kernels.DENSE_BLOCK if has_vnni(target) else "matmul"
    assert schedules.LAST_INFO["functions"].get(rule) == 1
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(xa), tvm.runtime.tensor(xb)).numpy()
    ref = np.clip((xa.astype(np.int64) @ xb.astype(np.int64)) >> 9, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(got, ref)


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
    ex, _ = schedules.compile_module(mod, TARGET)
    info = dict(schedules.LAST_INFO)
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
    ex, _ = schedules.compile_module(mod, TARGET)
    assert schedules.LAST_INFO["functions"].get("rows", 0) >= 2
    xv = tvm.runtime.tensor((RNG.standard_normal((2, 3, 24, 40)) * 4).astype(np.float32))
    got = [o.numpy() for o in relax.VirtualMachine(ex, tvm.cpu())["main"](xv)]
    ref = [o.numpy() for o in relax.VirtualMachine(ex_ref, tvm.cpu())["main"](xv)]
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g, r)
