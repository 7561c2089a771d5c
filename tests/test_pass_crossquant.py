"""CrossQuant (passes/crossquant.py): the numpy quantizer (a = 1 is per-token, a = 0 per-channel, codes
within int8, smaller quantization kernel than per-token on outlier channels); the run-time ONNX
quantizer reproduces the numpy codes and scales; on the real 2-layer MiniLM the rewritten float graph
equals the original on real sentences and the compiled QDQ graph carries the per-token quantizers."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest
from conftest import compile_quiet, config, max_rel_err, run
from qcc.passes import crossquant as cq

K = 24


def _outlier_rows(rng, rows=512):
    x = rng.standard_normal((rows, K)).astype(np.float32)
    x[:, [2, 17]] *= 40.0                                   # outlier channels
    x *= rng.uniform(0.2, 3.0, (rows, 1)).astype(np.float32)  # tokens of different magnitude
    return x


def test_numpy_quantizer_limits_and_kernel():
    rng = np.random.default_rng(0)
    x = _outlier_rows(rng)
    c = np.abs(x).max(0)
    for a in (0.0, 0.3, 1.0):
        q = cq.crossquantize(x, c, a).astype(np.int32)
        assert np.abs(q).max() <= 127
        # the largest |X_ij| / s_ij is exactly qmax somewhere (the scale is tight)
        assert np.abs(q).max() == 127
    t = np.abs(x).max(1, keepdims=True)
    np.testing.assert_array_equal(cq.crossquantize(x, c, 1.0), np.rint(x / (t / 127)).astype(np.int8))
    np.testing.assert_array_equal(cq.crossquantize(x, c, 0.0), np.rint(x / (c / 127)).astype(np.int8))
    kernel = cq.quant_kernel(x, c, 0.3)
    assert kernel["crossquant"] < 0.5 * kernel["per_token"] and kernel["per_token"] > 0.1
    # dequantized error is smaller than per-token's on these rows
    err = {a: np.square(cq.cross_dequantize(x, c, a) - x).sum() for a in (0.3, 1.0)}
    assert err[0.3] < err[1.0]
    w = (rng.standard_normal((K, 8)) * 0.2).astype(np.float32)
    a, losses = cq.choose_alpha(x, c, w)
    assert a in cq.ALPHAS and losses[a] < losses[1.0]


def test_runtime_quantizer_matches_numpy():
    rng = np.random.default_rng(1)
    x = _outlier_rows(rng, 96).reshape(4, 24, K)
    c = np.abs(x).reshape(-1, K).max(0) * 1.05
    a = 0.3
    f = (c ** (1 - a)).astype(np.float32)
    for opset in (17, 19):                                # ReduceMax axes: attribute, then input
        xin = ir.Value(name="xp", shape=ir.Shape([None, 24, K]), type=ir.TensorType(ir.DataType.FLOAT))
        graph = ir.Graph([xin], [], nodes=[], opset_imports={"": opset}, name="g")
        nodes, deq, d = cq.runtime_quantizer(graph, xin, f, a, opset)
        graph.extend(nodes)
        graph.outputs.extend([deq, d])
        proto = ir.to_proto(ir.Model(graph, ir_version=8 if opset < 19 else 9))
        got_q, got_d = run(proto, {"xp": (x / f).astype(np.float32)})
        want_d, _ = cq.cross_scales(x.reshape(-1, K), c, a)
        np.testing.assert_allclose(got_d.reshape(-1, 1), want_d, rtol=1e-5)
        want_q = cq.crossquantize(x.reshape(-1, K), c, a).astype(np.float32)
        diff = np.abs(got_q.reshape(-1, K) - want_q)
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999     # only float ties at .5 may differ


@pytest.fixture(scope="module")
def minilm2():
    from qcc import models

    return models.get("minilm-2layer", n_calib=8, n_eval=8)


def test_minilm_rewrite_is_exact_and_compiles(minilm2):
    r = compile_quiet(str(minilm2.onnx_path), minilm2.calib, eval_data=minilm2.eval,
                      config=config(passes=["crossquant"], calibration="mse"))
    meta = {p.key: p.value for p in r.float_model.metadata_props}
    sites = json.loads(meta[cq.METADATA_KEY])
    ops = {}
    for t in sites:                                       # 4 LayerNorm copies + the 2 GELU output Muls
        ops[t["tensor"].endswith("_crossquant")] = ops.get(t["tensor"].endswith("_crossquant"), 0) + 1
    assert ops == {True: 4, False: 2}
    kernel = json.loads(meta[cq.KERNEL_KEY])
    assert kernel["crossquant"] < kernel["per_token"] < kernel["per_tensor"]
    ref, got = run(str(minilm2.onnx_path), minilm2.eval), run(r.float_model, minilm2.eval)
    assert max_rel_err(ref[0], got[0]) <= 1e-4
    q_nodes = [n for n in r.qdq_model.graph.node if n.name.endswith("_crossquant_QuantizeLinear")]
    assert len(q_nodes) == 6
    assert sum(n.op_type == "Mul" and n.name.endswith("_per_token_scale") for n in r.qdq_model.graph.node) == 10
    assert r.report["fidelity"]["outputs"]["embedding"]["cosine"] >= 0.999
