"""NoisyQuant (passes/noisyquant.py): the rewritten float graph (x + N into the layer, b - W N) computes the
same outputs (onnxruntime), padded convs are not matched, the search keeps noise only where it lowers the
layer's quantized output error (recomputed here in numpy), and the pipeline hook runs."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper as oh

from conftest import compile_quiet, config, make_model, max_rel_err, run

pytest.importorskip("torch")

from qcc.passes import noisyquant as nq  # noqa: E402


def _model(rng):
    """x -> Conv 1x1 (8 -> 12, grouped by 2) -> Relu -> Conv 3x3 pad 1 -> GlobalAveragePool -> Flatten -> Gemm."""
    inits = {"w1": rng.standard_normal((12, 4, 1, 1)).astype(np.float32), "b1": rng.standard_normal(12).astype(np.float32),
             "w2": rng.standard_normal((6, 12, 3, 3)).astype(np.float32) * 0.2,
             "w3": rng.standard_normal((5, 6)).astype(np.float32), "b3": rng.standard_normal(5).astype(np.float32)}
    nodes = [oh.make_node("Conv", ["x", "w1", "b1"], ["y1"], name="pw", group=2), oh.make_node("Relu", ["y1"], ["a1"]),
             oh.make_node("Conv", ["a1", "w2"], ["y2"], name="k3", pads=[1, 1, 1, 1]),
             oh.make_node("GlobalAveragePool", ["y2"], ["g"]), oh.make_node("Flatten", ["g"], ["f"]),
             oh.make_node("Gemm", ["f", "w3", "b3"], ["out"], name="fc", transB=1)]
    return make_model(nodes, [("x", [None, 8, 5, 5])], [("out", [None, 5])], inits)


def test_float_rewrite_exact_with_noise():
    rng = np.random.default_rng(0)
    proto = _model(rng)
    model = ir.serde.deserialize_model(proto)
    sites = nq.find_sites(model)
    assert [n.name for n in sites] == ["pw", "fc"]          # the padded 3x3 conv is not matched
    for node in sites:
        cin = 8 if node.name == "pw" else 6
        nq.apply_noise(model, node, rng.uniform(-0.5, 0.5, cin).astype(np.float32))
    new = ir.to_proto(model)
    assert sum(n.op_type == "Add" for n in new.graph.node) == 2
    x = rng.standard_normal((6, 8, 5, 5)).astype(np.float32)
    assert max_rel_err(run(proto, {"x": x})[0], run(new, {"x": x})[0]) <= 1e-5


def test_search_keeps_noise_only_when_it_helps():
    """A channel of values sitting at 0.4 quantization steps gains from noise -0.4 steps (lands on the grid);
    the kept noise lowers the layer output error, recomputed in numpy."""
    rng = np.random.default_rng(1)
    proto = _model(rng)
    node = next(n for n in ir.serde.deserialize_model(proto).graph if n.name == "fc")
    x = rng.uniform(0, 1, (64, 6)).astype(np.float32)
    x[:, 0] = 1.0                                        # sets the range [0, 1]: step 1/255
    x[:, 2] = (np.rint(x[:, 2] * 255 / 4) * 4 + 0.4) / 255   # on-grid + 0.4 step: noise -0.4 fixes it
    noise, info = nq.search_noise(node, x)
    assert noise is not None and info["kept"] and info["err_on"] < info["err_off"]
    assert noise[2] == pytest.approx(-0.375 / 255, rel=1e-5)

    def q(v, lo, hi):
        s = (hi - lo) / 255
        z = np.rint(-lo / s)
        return (np.clip(np.rint(v / s) + z, 0, 255) - z) * s

    w = node.inputs[1].const_value.numpy().T.astype(np.float64)
    ref = x @ w
    xn = x + noise
    err_on = (((q(xn, min(xn.min(), 0), xn.max()) @ w) - noise @ w - ref) ** 2).mean()
    err_off = (((q(x, 0, x.max()) @ w) - ref) ** 2).mean()
    assert err_on == pytest.approx(info["err_on"], rel=1e-3) and err_off == pytest.approx(info["err_off"], rel=1e-3)
    assert err_on < 0.8 * err_off
    # an activation already on the grid: every channel picks N = 0 and the layer is left alone
    on_grid = np.rint(rng.uniform(0, 255, (64, 6))).astype(np.float32) / 255
    on_grid[:, 0] = 1.0
    assert nq.search_noise(node, on_grid)[0] is None


def test_pipeline_hook(fashion_paths, fashion_calib):
    r = compile_quiet(str(fashion_paths[0]), fashion_calib, config=config(passes=["noisyquant"]),
                      eval_data=fashion_calib)
    assert "noisyquant_s" in r.report["timings"]
    ref = run(str(fashion_paths[0]), fashion_calib)[0]
    assert max_rel_err(ref, run(r.float_model, fashion_calib)[0]) <= 1e-4
