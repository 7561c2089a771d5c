"""Weight clipping (passes/weight_clipping.py): each channel's ratio is the grid's MSE optimum (brute
force), the QDQ graph holds exactly that quantization (dequantized weights rebuilt in numpy), it lowers
the weight error and raises W4A8 fidelity on the bundled CNN, and it refuses to share the weights
with AdaRound."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import qcc
from conftest import compile_quiet, config, initializers
from qcc.passes import weight_clipping as wc
from qcc.qtypes import QType


def _fake_quant(w, qtype, axis, alpha):
    amax = np.abs(w).max(axis=tuple(i for i in range(w.ndim) if i != axis), keepdims=True)
    s = alpha * amax / qtype.qmax
    return np.clip(np.rint(w / s), -qtype.qmax, qtype.qmax) * s


@pytest.mark.parametrize("qtype", [QType.INT4, QType.INT8])
def test_each_channel_gets_the_grid_optimum(qtype):
    rng = np.random.default_rng(0)
    w = rng.standard_t(3, size=(6, 4, 3, 3)).astype(np.float32)     # heavy tails, as folded convs have
    w_hat, before, after = wc.clip_weight(w, qtype, axis=0)
    alphas = np.linspace(wc.ALPHA_MIN, 1.0, wc.STEPS)
    for c in range(w.shape[0]):
        errs = [float(((w[c:c + 1] - _fake_quant(w[c:c + 1], qtype, 0, a)) ** 2).sum()) for a in alphas]
        best = alphas[int(np.argmin(errs))]
        assert np.allclose(w_hat[c], np.clip(w[c], -best * np.abs(w[c]).max(), best * np.abs(w[c]).max()))
    assert after < before if qtype is QType.INT4 else after <= before
    assert after == pytest.approx(float(((w - _fake_quant(w_hat, qtype, 0, 1.0)) ** 2).sum()), rel=1e-5)


def _dequantized_weights(qdq: onnx.ModelProto) -> dict[str, np.ndarray]:
    """node name -> its dequantized weight, read from the QDQ graph."""
    init = initializers(qdq)
    dq = {n.output[0]: n for n in qdq.graph.node if n.op_type == "DequantizeLinear"}
    out = {}
    for node in qdq.graph.node:
        if node.op_type in ("Conv", "Gemm") and node.input[1] in dq:
            d = dq[node.input[1]]
            q, s = init[d.input[0]].astype(np.float32), init[d.input[1]]
            axis = next((a.i for a in d.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            shape[axis] = -1
            out[node.name] = q * (s.reshape(shape) if s.size > 1 else s)
    return out


def test_qdq_holds_the_chosen_quantization_and_w4a8_gains(fashion_paths, fashion_calib):
    plain = compile_quiet(str(fashion_paths[0]), fashion_calib, config=config(scheme="w4a8"))
    clipped = compile_quiet(str(fashion_paths[0]), fashion_calib, config=config(scheme="w4a8", passes=["weight-clipping"]))
    float_model = clipped.float_model     # canonicalized: BatchNorm folded into the weights
    init = initializers(float_model)
    weights = {n.name: init[n.input[1]] for n in float_model.graph.node if n.op_type in ("Conv", "Gemm")}
    got, base = _dequantized_weights(clipped.qdq_model), _dequantized_weights(plain.qdq_model)
    assert set(got) == set(weights) and len(got) >= 4
    for name, w in weights.items():
        axis = 0 if w.ndim == 4 else next(  # Gemm: the output channel axis the plan chose
            s.axis for s in clipped.plan.weights if s.node.name == name)
        w_hat, before, after = wc.clip_weight(w, QType.INT4, axis)
        want = _fake_quant(w_hat, QType.INT4, axis, 1.0) if after < before else _fake_quant(w, QType.INT4, axis, 1.0)
        np.testing.assert_allclose(got[name], want, rtol=1e-6, atol=1e-7)
        assert ((got[name] - w) ** 2).sum() <= ((base[name] - w) ** 2).sum() * (1 + 1e-6)
    fid = lambda r: r.report["fidelity"]["outputs"]["logits"]
    assert fid(clipped)["sqnr_db"] > fid(plain)["sqnr_db"] + 1.0, (fid(clipped), fid(plain))
    assert fid(clipped)["kl"] < fid(plain)["kl"]
    run = next(p for p in clipped.report["passes"] if p["name"] == "weight-clipping")
    assert run["summary"]["clipped"] >= 1 and run["summary"]["mse_ratio"] < 1.0


def test_refuses_to_share_the_weights_with_adaround(fashion_paths, fashion_calib, tmp_path):
    with pytest.raises(qcc.QccError, match="weight-clipping and adaround both choose the quantized weights"):
        qcc.compile_model(str(fashion_paths[0]), fashion_calib, out_dir=tmp_path / "x", progress=False,
                          config=qcc.QuantConfig(scheme="w4a8", passes=["weight-clipping", "adaround"]))
    assert not (tmp_path / "x").exists()
