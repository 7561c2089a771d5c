"""RepQuant (passes/repquant.py): per-tensor quantization of the reparameterized tensor gives the
per-channel codes; the log-sqrt(2) Softmax quantizer in ONNX ops matches its numpy reference and the
integer shift + parity form; on the real 2-layer MiniLM the reparameterized float graph equals the
original on real sentences and the compiled graph log-quantizes every attention probability."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from conftest import compile_quiet, config, max_rel_err, run
from qcc.passes import repquant as rq
from qcc.qparams import quantize_values
from qcc.qtypes import QType


def test_reparameterized_per_tensor_codes_equal_per_channel_codes():
    rng = np.random.default_rng(0)
    k = 32
    lo = -rng.uniform(0.1, 30.0, k)
    hi = rng.uniform(0.1, 30.0, k)
    x = rng.uniform(lo, hi, (400, k)).astype(np.float32)
    lo, hi = x.min(0), x.max(0)
    s, z = rq.channel_qparams(lo, hi)
    per_channel = np.clip(np.rint(x / s) + z, 0, 255)
    r, delta, s_t, z_t = rq.reparam_factors(lo, hi)
    xr = (x / r + delta).astype(np.float32)
    per_tensor = quantize_values(xr, np.float32(s_t), z_t, QType.UINT8).astype(np.float64)
    diff = np.abs(per_tensor - per_channel)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999      # equal up to float ties at .5
    assert (np.abs(per_tensor - z_t) * s_t).max() <= 256 * s_t
    # the undone reparameterization is the identity: X = r (X' - delta)
    np.testing.assert_allclose(r * (xr - delta), x, rtol=1e-4, atol=1e-4 * np.abs(x).max())


def _log_graph(bits):
    p = ir.Value(name="p", shape=ir.Shape([None, 16]), type=ir.TensorType(ir.DataType.FLOAT))
    graph = ir.Graph([p], [], nodes=[], opset_imports={"": 17}, name="g")
    nodes, p_hat = rq.log_quantizer(graph, p, bits)
    graph.extend(nodes)
    code = next(n.outputs[0] for n in nodes if n.outputs[0].name == "p_log2_quantized")
    graph.outputs.extend([code, p_hat])
    return ir.to_proto(ir.Model(graph, ir_version=8))


def test_log_sqrt2_quantizer_onnx_matches_numpy_and_integer_form():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((64, 16)).astype(np.float32) * 4
    logits[:4, 8:] = -1e30                                 # masked positions: probability exactly 0
    p = np.exp(logits - logits.max(1, keepdims=True))
    p = (p / p.sum(1, keepdims=True)).astype(np.float32)
    for bits in (8, 4):
        code, p_hat = run(_log_graph(bits), {"p": p})
        want = rq.log2_quantize(p, bits)
        assert code.dtype == np.uint8 and (code == want).mean() > 0.999
        assert code.max() == 2 ** bits - 1 and (code[:4, 8:] == 2 ** bits - 1).all()
        np.testing.assert_allclose(p_hat, rq.log2_dequantize(code), rtol=2e-6, atol=1e-37)  # Exp: ~1 ulp; denormals
        nz = p > 2.0 ** (-(2 ** bits - 1) / 2)               # inside the grid: relative error <= 2^(1/4) - 1
        assert (np.abs(p_hat[nz] / p[nz] - 1) <= 2 ** 0.25 - 1 + 1e-6).all()
    # integer targets: p^ @ v by shifts and a parity-selected multiply (181/256 ~ 1/sqrt 2)
    code = rq.log2_quantize(p, 8).reshape(4, 16, 16)
    v = rng.integers(-2000, 2000, (4, 16, 8)).astype(np.int32)
    exact = rq.log2_dequantize(code).astype(np.float64) @ v
    integer = rq.shift_parity_matmul(code, v)
    assert np.abs(integer - exact).max() <= 2.0 + np.abs(exact).max() * 1e-4


@pytest.fixture(scope="module")
def minilm2():
    from qcc import models

    return models.get("minilm-2layer", n_calib=8, n_eval=8)


def test_minilm_reparameterization_is_exact_and_compiles(minilm2):
    r = compile_quiet(str(minilm2.onnx_path), minilm2.calib, eval_data=minilm2.eval,
                      config=config(passes=["repquant", "repquant-softmax"]))
    repq = [n for n in r.float_model.graph.node if n.name.endswith("_repquant")]
    assert len(repq) == 4 and all(n.op_type == "LayerNormalization" for n in repq)
    ref, got = run(str(minilm2.onnx_path), minilm2.eval), run(r.float_model, minilm2.eval)
    assert max_rel_err(ref[0], got[0]) <= 1e-4
    logq = [n for n in r.qdq_model.graph.node if n.name.endswith("_log2q_QuantizeLog")]
    assert len(logq) == 2                                  # one Softmax per layer
    softmax_out = {n.output[0] for n in r.qdq_model.graph.node if n.op_type == "Softmax"}
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] in softmax_out for n in r.qdq_model.graph.node)
    assert r.report["fidelity"]["outputs"]["embedding"]["cosine"] >= 0.995
