"""SmoothQuant-style smoothing (passes/smoothing.py): LayerNorm -> MatMul sites are found only when
every reader of the LN output is a constant-weight MatMul (or a Shape); Q / K / V share one s; the
smoothed float graph computes the same function (synthetic graphs and the real 2-layer MiniLM on real
sentences); the calibrated alpha search beats no smoothing on an outlier channel; the pipeline hook
runs it before calibration."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from conftest import compile_quiet, config, initializers, make_model, max_rel_err, run
from onnx import helper as oh
from qcc.passes import smoothing as sm

K, N = 16, 8


def _attention_input(rng, residual: bool):
    """x -> LayerNormalization (gamma with two outlier channels) -> Q, K, V MatMuls (+ a Shape);
    with `residual` the LN output is also added to the V projection's output, as in a post-LN BERT."""
    gamma = np.ones(K, np.float32)
    gamma[[3, 11]] = [20.0, -35.0]                      # outlier channels of the LN output
    inits = {"gamma": gamma, "beta": (rng.standard_normal(K) * 0.2).astype(np.float32)}
    nodes = [oh.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1, epsilon=1e-5),
             oh.make_node("Shape", ["h"], ["hs"], name="shape")]
    outs = []
    for p in ("q", "k", "v"):
        inits[f"w{p}"] = (rng.standard_normal((K, N if p != "v" or not residual else K)) * 0.3).astype(np.float32)
        nodes.append(oh.make_node("MatMul", ["h", f"w{p}"], [p], name=f"mm_{p}"))
        outs.append(p)
    if residual:
        nodes.append(oh.make_node("Add", ["v", "h"], ["r"], name="residual"))
        outs[-1] = "r"
    nodes.append(oh.make_node("Concat", outs, ["out"], name="cat", axis=-1))
    width = 2 * N + (K if residual else N)
    return make_model(nodes, [("x", [None, 6, K])], [("out", [None, 6, width]), ("hs", [3], 7)], inits)


def _smooth(proto, feeds, duplicate=False, **kw):
    model = ir.serde.deserialize_model(proto)
    sites, skipped = sm.find_sites(model, duplicate=duplicate)
    summary = sm.smooth(model, sm.collect_stats(proto, sites, feeds), sites, **kw)
    return ir.to_proto(model), sites, skipped, summary


def test_qkv_site_shares_one_scale_and_is_exact():
    rng = np.random.default_rng(0)
    proto = _attention_input(rng, residual=False)
    x = (rng.standard_normal((8, 6, K)) * 2 + 1).astype(np.float32)
    new, sites, _, summary = _smooth(proto, {"x": x}, alpha=0.5)
    assert len(sites) == 1 and len(sites[0].matmuls) == 3 and summary["smoothed"] == 1
    before, after = initializers(proto), initializers(new)
    gamma_new = after[next(n.input[1] for n in new.graph.node if n.op_type == "LayerNormalization")]
    s = before["gamma"] / gamma_new
    for p in ("q", "k", "v"):                            # one s for Q, K and V: W'[j] = s_j W[j]
        w_new = after[next(n.input[1] for n in new.graph.node if n.name == f"mm_{p}")]
        np.testing.assert_allclose(w_new, before[f"w{p}"] * s[:, None], rtol=1e-6)
    assert s[3] > 3 and s[11] > 3                        # outlier channels are divided down
    assert sum(n.op_type == "LayerNormalization" for n in new.graph.node) == 1
    ref, got = run(proto, {"x": x}), run(new, {"x": x})
    assert max_rel_err(ref[0], got[0]) <= 1e-5 and (ref[1] == got[1]).all()


def test_residual_reader_is_skipped_unless_duplicated():
    rng = np.random.default_rng(1)
    proto = _attention_input(rng, residual=True)
    x = rng.standard_normal((8, 6, K)).astype(np.float32)
    new, sites, skipped, summary = _smooth(proto, {"x": x})
    assert sites == [] and skipped["other_consumers"] == 1 and summary["smoothed"] == 0
    new, sites, _, summary = _smooth(proto, {"x": x}, duplicate=True, alpha=0.5)
    assert summary["duplicated"] == 1
    lns = [n for n in new.graph.node if n.op_type == "LayerNormalization"]
    assert len(lns) == 2
    residual = next(n for n in new.graph.node if n.name == "residual")
    original = next(n for n in lns if n.name == "ln")
    assert original.output[0] in residual.input and original.input[1] == "gamma"   # residual path untouched
    assert max_rel_err(run(proto, {"x": x})[0], run(new, {"x": x})[0]) <= 1e-5


def test_alpha_search_beats_no_smoothing_on_outliers():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2048, K)).astype(np.float32)
    x[:, 5] *= 60.0
    w = (rng.standard_normal((K, 3 * N)) * 0.2).astype(np.float32)
    alpha, losses = sm.choose_alpha(x, np.abs(x).max(0), w)
    assert alpha in sm.ALPHAS and losses[alpha] < 0.5 * losses["none"]
    # without outliers per-tensor quantization is already fine: s = 1 may win, never an error
    alpha, losses = sm.choose_alpha(rng.standard_normal((512, K)).astype(np.float32), np.full(K, 4.0), w)
    assert alpha is None or losses[alpha] < losses["none"]


def test_pipeline_hook_runs_before_calibration():
    rng = np.random.default_rng(3)
    proto = _attention_input(rng, residual=False)
    calib = {"x": (rng.standard_normal((16, 6, K)) * 2).astype(np.float32)}
    r = compile_quiet(proto, calib, config=config(passes=["smoothing"]))
    assert any(t.name.endswith("scale_smoothed") for t in r.float_model.graph.initializer)
    assert "smoothing_s" in r.report["timings"]
    x = calib["x"][:4]
    assert max_rel_err(run(proto, {"x": x})[0], run(r.float_model, {"x": x})[0]) <= 1e-5


@pytest.fixture(scope="module")
def minilm2():
    from qcc import models

    return models.get("minilm-2layer", n_calib=16, n_eval=16)


def test_minilm_sites_and_real_sentence_equivalence(minilm2):
    from qcc.canonicalize import canonicalize
    from qcc.loader import load_model

    model, _ = canonicalize(load_model(str(minilm2.onnx_path), None))
    proto = ir.to_proto(model)
    # post-LN BERT: the residual Add reads every LN output that feeds a MatMul -> no strict site
    sites, skipped = sm.find_sites(model)
    assert sites == [] and skipped == {"not_last_axis_or_const": 0, "other_consumers": 4, "no_matmul": 1}
    sites, _ = sm.find_sites(model, duplicate=True)
    assert [len(s.matmuls) for s in sites] == [3, 1, 3, 1]
    summary = sm.smooth(model, sm.collect_stats(proto, sites, minilm2.calib, max_rows=1024), sites)
    assert summary["smoothed"] >= 1
    new = ir.to_proto(model)
    ref, got = run(proto, minilm2.eval), run(new, minilm2.eval)
    for a, b in zip(ref, got):
        assert max_rel_err(a, b) <= 1e-4
