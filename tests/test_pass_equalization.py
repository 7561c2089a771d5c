"""Cross-layer equalization (passes/equalization.py): the equalized float graph computes the same
function (Relu chains exactly; Clip(0, 6) chains on the channels it scales), ranges are balanced,
depthwise pairs are handled, and the pipeline hook runs it before calibration."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper as oh

from conftest import compile_quiet, config, make_model, max_rel_err, run
from qcc.passes import equalization as eq


def _chain(act: str, rng, hi: float = 6.0):
    """x -> Conv 1x1 (8->16) -> act -> depthwise 3x3 (16) -> act -> Conv 1x1 (16->4), with per-channel
    weight scales spread over three decades so per-tensor ranges are badly unbalanced."""
    spread = lambda n: np.logspace(-1.5, 1.5, n).astype(np.float32)[rng.permutation(n)]
    w1 = (rng.standard_normal((16, 8, 1, 1)) * spread(16)[:, None, None, None] * 0.1).astype(np.float32)
    b1 = (rng.standard_normal(16) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((16, 1, 3, 3)) * spread(16)[:, None, None, None] * 0.1).astype(np.float32)
    b2 = (rng.standard_normal(16) * 0.1).astype(np.float32)
    w3 = (rng.standard_normal((4, 16, 1, 1)) * 0.3).astype(np.float32)
    inits = {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3, "lo": np.float32(0), "hi": np.float32(hi)}

    def act_node(i, o):
        return oh.make_node("Relu", [i], [o]) if act == "Relu" else oh.make_node("Clip", [i, "lo", "hi"], [o])

    nodes = [oh.make_node("Conv", ["x", "w1", "b1"], ["y1"], name="c1"), act_node("y1", "a1"),
             oh.make_node("Conv", ["a1", "w2", "b2"], ["y2"], name="dw", group=16, pads=[1, 1, 1, 1]),
             act_node("y2", "a2"), oh.make_node("Conv", ["a2", "w3"], ["out"], name="c3")]
    return make_model(nodes, [("x", [None, 8, 6, 6])], [("out", [None, 4, 6, 6])], inits)


def _equalize(proto, feeds=None, **kw):
    model = ir.serde.deserialize_model(proto)
    pairs = eq.find_pairs(model)
    maxes = eq.measure_preactivation_max(proto, pairs, feeds) if feeds is not None else None
    summary = eq.equalize(model, maxes, pairs, **kw)
    return ir.to_proto(model), summary


def _weights(proto):
    from onnx import numpy_helper as nh
    inits = {t.name: nh.to_array(t) for t in proto.graph.initializer}
    return {n.name: inits[n.input[1]] for n in proto.graph.node if n.op_type == "Conv"}


def test_relu_chain_exact_and_balanced():
    rng = np.random.default_rng(0)
    proto = _chain("Relu", rng)
    new, summary = _equalize(proto, iterations=50)
    assert summary["pairs"] == 2 and summary["relu_pairs"] == 2 and summary["convs_changed"] == 3
    x = rng.standard_normal((4, 8, 6, 6)).astype(np.float32) * 3
    assert max_rel_err(run(proto, {"x": x})[0], run(new, {"x": x})[0]) <= 1e-5
    before, after = _weights(proto), _weights(new)
    # per-output-channel range spread (decades) shrinks
    spread = lambda w: np.ptp(np.log10(np.abs(w).reshape(w.shape[0], -1).max(1)))
    assert spread(after["dw"]) < spread(before["dw"]) / 1.5
    assert spread(after["c1"]) < spread(before["c1"]) / 1.5
    # at convergence the paper's fixed point: for the last pair, r1_c == r2_c per channel
    r1 = np.abs(after["dw"]).reshape(16, -1).max(1)
    r2 = np.abs(after["c3"]).max(axis=(0, 2, 3))
    np.testing.assert_allclose(r1, r2, rtol=1e-3)


def test_single_pair_closed_form():
    """One Relu pair, one sweep: W1'[c] = W1[c] / s_c, W2'[:, c] = W2[:, c] * s_c, s_c = sqrt(r1 r2) / r2."""
    rng = np.random.default_rng(1)
    w1 = rng.standard_normal((5, 3, 1, 1)).astype(np.float32) * np.float32([[[[0.01]]], [[[1]]], [[[10]]], [[[2]]], [[[0.3]]]])
    w2 = rng.standard_normal((2, 5, 1, 1)).astype(np.float32)
    b1 = rng.standard_normal(5).astype(np.float32)
    proto = make_model([oh.make_node("Conv", ["x", "w1", "b1"], ["y"], name="a"), oh.make_node("Relu", ["y"], ["r"]),
                        oh.make_node("Conv", ["r", "w2"], ["out"], name="b")],
                       [("x", [1, 3, 2, 2])], [("out", [1, 2, 2, 2])], {"w1": w1, "b1": b1, "w2": w2})
    new, _ = _equalize(proto, iterations=1)
    r1 = np.abs(w1).reshape(5, -1).max(1).astype(np.float64)
    r2 = np.abs(w2).max(axis=(0, 2, 3)).astype(np.float64)
    s = np.sqrt(r1 * r2) / r2
    w = _weights(new)
    np.testing.assert_allclose(w["a"], w1 / s[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(w["b"], w2 * s[None, :, None, None], rtol=1e-6)


def test_clip_chain_scales_only_unclipped_channels():
    rng = np.random.default_rng(2)
    proto = _chain("Clip", rng, hi=6.0)
    x = rng.standard_normal((32, 8, 6, 6)).astype(np.float32) * 4
    # without measured maxima, Clip pairs are not touched
    _, untouched = _equalize(proto)
    assert untouched["clip_pairs"] == 2 and untouched["convs_changed"] == 0
    new, summary = _equalize(proto, {"x": x})
    assert 0 < summary["channels_scaled"] < summary["channels"]  # some channels reach the clip
    assert max_rel_err(run(proto, {"x": x})[0], run(new, {"x": x})[0]) <= 1e-5
    # fresh inputs from the same distribution
    x2 = rng.standard_normal((32, 8, 6, 6)).astype(np.float32) * 4
    assert max_rel_err(run(proto, {"x": x2})[0], run(new, {"x": x2})[0]) <= 1e-4


def test_ignores_non_chains():
    """A pre-activation with two consumers, or a non-zero Clip minimum, is left alone."""
    w = np.ones((2, 2, 1, 1), np.float32)
    proto = make_model([oh.make_node("Conv", ["x", "w"], ["y"]), oh.make_node("Clip", ["y", "lo", "hi"], ["a"]),
                        oh.make_node("Conv", ["a", "w"], ["o1"]), oh.make_node("Conv", ["x", "w"], ["z"]),
                        oh.make_node("Relu", ["z"], ["r"]), oh.make_node("Conv", ["r", "w"], ["o2"]),
                        oh.make_node("Add", ["z", "o2"], ["o3"])],
                       [("x", [1, 2, 2, 2])], [("o1", [1, 2, 2, 2]), ("o3", [1, 2, 2, 2])],
                       {"w": w, "lo": np.float32(-1), "hi": np.float32(6)})
    assert eq.find_pairs(ir.serde.deserialize_model(proto)) == []


def test_pipeline_hook_and_config():
    rng = np.random.default_rng(3)
    proto = _chain("Relu", rng)
    calib = {"x": rng.standard_normal((16, 8, 6, 6)).astype(np.float32)}
    on = compile_quiet(proto, calib, config=config(granularity="per-tensor", passes=["equalization", "bias-correction"]),
                       eval_data=calib)
    off = compile_quiet(proto, calib, config=config(granularity="per-tensor", passes=["bias-correction"]),
                        eval_data=calib)
    assert "equalization_s" in on.report["timings"] and "equalization_s" not in off.report["timings"]
    # the float graph the compiler quantized is the equalized one, and computes the same function
    assert max_rel_err(run(proto, calib)[0], run(on.float_model, calib)[0]) <= 1e-5
    sqnr = lambda r: r.report["fidelity"]["outputs"]["out"]["sqnr_db"]
    assert sqnr(on) > sqnr(off) + 3, (sqnr(on), sqnr(off))


@pytest.mark.slow
def test_mobilenetv2_equivalent_on_real_crops():
    """The required proof for the Clip(0, 6) handling: the equalized MobileNetV2 (statistics from
    calibration crops) matches the original on different evaluation crops."""
    pytest.importorskip("torch")
    from qcc import models
    from qcc.canonicalize import canonicalize
    from qcc.loader import load_model

    e = models.get("mobilenetv2", n_calib=32, n_eval=32)
    model, _ = canonicalize(load_model(str(e.onnx_path)))
    proto = ir.to_proto(model)
    pairs = eq.find_pairs(model)
    summary = eq.equalize(model, eq.measure_preactivation_max(proto, pairs, e.calib), pairs)
    assert summary["clip_pairs"] >= 30 and summary["channels_scaled"] > summary["channels"] // 2, summary
    ref = run(proto, e.eval)[0]
    assert max_rel_err(ref, run(ir.to_proto(model), e.eval)[0]) <= 1e-4


def test_search_exact_and_never_worse_than_unchanged():
    """Scale search (the compiler's mode): the float graph stays exact, each pair's chosen alpha has the
    smallest quantized pair error (alpha = 0, unchanged, among the candidates), and on this unbalanced chain
    it moves away from the identity."""
    rng = np.random.default_rng(4)
    proto = _chain("Clip", rng, hi=6.0)
    x = rng.standard_normal((16, 8, 6, 6)).astype(np.float32)
    model = ir.serde.deserialize_model(proto)
    pairs = eq.find_pairs(model)
    maxes = eq.measure_preactivation_max(proto, pairs, {"x": x})
    inputs = eq.capture_pair_inputs(proto, pairs, {"x": x}, n_samples=8)
    first = pairs[0]
    w1, w2 = (c.inputs[1].const_value.numpy().astype(np.float64) for c in (first.conv1, first.conv2))
    b1, b2 = (c.inputs[2].const_value.numpy().astype(np.float64) for c in (first.conv1, first.conv2))
    idx2 = eq._input_channel_index(w2, 16)
    r1, r2 = np.abs(w1).reshape(16, -1).max(1), np.abs(w2).reshape(16, -1).max(1)
    allowed = lambda s: np.where((maxes[first.preact] <= 0.7 * 6) & (maxes[first.preact] / s <= 0.7 * 6), s, 1.0)
    errs = eq.pair_error(first, inputs["x"], w1, b1, w2, b2, idx2, [allowed((r1 / r2) ** a) for a in eq.ALPHAS], False)
    summary = eq.equalize(model, maxes, pairs, inputs=inputs)
    assert summary["alphas"][0] == eq.ALPHAS[int(np.argmin(errs))] and min(errs) < errs[0]
    assert summary["alphas"][0] != 0.0 and summary["convs_changed"] >= 2
    new = ir.to_proto(model)
    x2 = rng.standard_normal((16, 8, 6, 6)).astype(np.float32)
    assert max_rel_err(run(proto, {"x": x2})[0], run(new, {"x": x2})[0]) <= 1e-5


def test_folded_bn_statistics_follow_the_scale():
    """Analytic bias correction reads the folded BN statistics: equalization divides beta, gamma by s."""
    rng = np.random.default_rng(5)
    proto = _chain("Relu", rng)
    model = ir.serde.deserialize_model(proto)
    c1 = next(n for n in model.graph if n.name == "c1")
    beta, gamma = rng.standard_normal(16), rng.uniform(0.5, 2, 16)
    c1.meta["folded_bn"] = {"beta": beta, "gamma": gamma, "mean": np.zeros(16), "var": np.ones(16), "eps": 1e-5}
    w_before = c1.inputs[1].const_value.numpy().copy()
    eq.equalize(model, iterations=1)
    s = np.abs(w_before).reshape(16, -1).max(1) / np.abs(c1.inputs[1].const_value.numpy()).reshape(16, -1).max(1)
    np.testing.assert_allclose(c1.meta["folded_bn"]["beta"], beta / s, rtol=1e-5)
    np.testing.assert_allclose(c1.meta["folded_bn"]["gamma"], gamma / s, rtol=1e-5)
