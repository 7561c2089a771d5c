"""Analytic bias correction (passes/bias_correction.py: clipped_normal_mean, analytic_shift): the
clipped-normal mean against a numpy Monte Carlo, the analytic shift of a BN-folded Conv -> BN -> ReLU6 ->
Conv chain against the numpy mean of the quantized-weight error on data drawn from that model, and the
pipeline option on the Fashion-MNIST CNN against the empirical (measured) shift."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper as oh

from conftest import compile_quiet, config, make_model
from qcc import QuantConfig
from qcc.canonicalize import canonicalize
from qcc.passes import bias_correction as bc
from qcc.plan import build_plan


@pytest.mark.parametrize("hi", [np.inf, 6.0, 1.0])
def test_clipped_normal_mean_against_monte_carlo(hi):
    rng = np.random.default_rng(0)
    mu, sigma = np.array([-2.0, -0.3, 0.0, 0.7, 3.0, 5.5]), np.array([1.0, 0.5, 2.0, 1.5, 0.2, 3.0])
    y = rng.standard_normal((400_000, 1)) * sigma + mu
    np.testing.assert_allclose(bc.clipped_normal_mean(mu, sigma, hi), np.clip(y, 0, hi).mean(0), atol=6e-3)
    np.testing.assert_allclose(bc.clipped_normal_mean(mu, np.zeros(6), hi), np.clip(mu, 0, hi))


def test_analytic_shift_matches_numpy():
    """Conv1 -> BN -> Clip(0, 6) -> Conv2 (1x1, 16 -> 8). The data is built so the BN output is exactly
    N(beta, gamma^2) per channel; the analytic delta of Conv2 must match the numpy mean of
    (W2_hat - W2) x over that data."""
    rng = np.random.default_rng(1)
    n, c = 20_000, 16
    w1 = np.eye(c, dtype=np.float32).reshape(c, c, 1, 1)          # conv1 passes its input through
    mean, var = rng.standard_normal(c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 3, c).astype(np.float32), rng.uniform(-1, 4, c).astype(np.float32)
    w2 = rng.standard_normal((8, c, 1, 1)).astype(np.float32) * np.logspace(-1, 1, c, dtype=np.float32)[None, :, None, None]
    proto = make_model([oh.make_node("Conv", ["x", "w1"], ["y1"], name="c1"),
                        oh.make_node("BatchNormalization", ["y1", "g", "b", "m", "v"], ["bn"], epsilon=0.0),
                        oh.make_node("Clip", ["bn", "lo", "hi"], ["a"]),
                        oh.make_node("Conv", ["a", "w2", "b2"], ["out"], name="c2")],
                       [("x", [None, c, 1, 1])], [("out", [None, 8, 1, 1])],
                       {"w1": w1, "g": gamma, "b": beta, "m": mean, "v": var, "lo": np.float32(0),
                        "hi": np.float32(6), "w2": w2, "b2": np.zeros(8, np.float32)})
    model, canon = canonicalize(ir.serde.deserialize_model(proto))
    assert canon["batchnorms_folded"] == 1
    for scheme, granularity in (("int8", "per-tensor"), ("w4a8", "per-channel")):
        cfg = QuantConfig(scheme=scheme, granularity=granularity, passes=[])
        plan = build_plan(model, cfg)
        shifts = bc.analytic_shift(model, plan)
        assert list(shifts) == ["out"]
        # numpy: x_c = clip(beta + gamma z), eps = W2_hat - W2 with the emitter's rounding
        x = np.clip(beta + gamma * rng.standard_normal((n, c)), 0, 6)
        qmax = 127 if scheme == "int8" else 7
        w = w2.reshape(8, c).astype(np.float64)
        s = np.abs(w).max() / qmax if granularity == "per-tensor" else np.abs(w).max(1, keepdims=True) / qmax
        eps = np.clip(np.rint(w / s), -qmax, qmax) * s - w
        expect = (x @ eps.T).mean(0)
        np.testing.assert_allclose(shifts["out"], expect, atol=0.02 * np.abs(expect).max())
        assert np.abs(shifts["out"]).max() > 1e-4


def test_pipeline_option_agrees_with_empirical(fashion_paths, fashion_calib):
    """On the Fashion-MNIST CNN (BN-folded convs), the analytic shifts point the same way as the
    measured ones for the layers it covers, and the option changes exactly those biases."""
    from qcc import quantize as quantizing
    from qcc.calibrate import calibrate
    from qcc.loader import load_model
    from qcc.passes.bias_correction import bias_site, measure_shift

    cfg = config(scheme="w4a8")
    model, _ = canonicalize(load_model(str(fashion_paths[0])), min_opset=21)
    proto = ir.to_proto(model)
    plan = build_plan(model, cfg)
    analytic = bc.analytic_shift(model, plan)
    assert len(analytic) >= 2
    stats = calibrate(proto, sorted(plan.roots()), fashion_calib, progress=False)
    qmodel, qplan, _ = quantizing.quantize(proto, cfg, stats)
    sites = {s[1]: s[2] for node in qmodel.graph if (s := bias_site(node, qplan.roles)) is not None}
    measured = measure_shift(proto, ir.to_proto(qmodel), sites, fashion_calib)
    for name, delta in analytic.items():
        m = measured[name]
        assert np.corrcoef(delta, m)[0, 1] > 0.8, name
    on = compile_quiet(str(fashion_paths[0]), fashion_calib, config=config(scheme="w4a8", passes=["bias-correction-analytic"]))
    off = compile_quiet(str(fashion_paths[0]), fashion_calib, config=config(scheme="w4a8"))
    changed = [k for k, v in _int32_biases(on.qdq_model).items() if not np.array_equal(v, _int32_biases(off.qdq_model)[k])]
    assert len(changed) == len(analytic)


def _int32_biases(qdq):
    """Layer name -> its int32 bias as stored in a QDQ graph."""
    from conftest import initializers, producers

    inits, prod = initializers(qdq), producers(qdq)
    return {n.name: inits[prod[n.input[2]].input[0]] for n in qdq.graph.node
            if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[2] in prod}
