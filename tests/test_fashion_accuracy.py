"""The bundled Fashion-MNIST CNN: int8 per-channel accuracy on the full 10k test set, float vs QDQ, both run by
onnxruntime; FP8 on a subset (the graph semantics, and the artifact run through qcc)."""

from __future__ import annotations

import numpy as np
import pytest

import qcc
from conftest import session


@pytest.fixture(scope="module")
def test_set():
    from qcc.models import datasets

    x, y = datasets.load_fashion_mnist("test")
    assert x.shape == (10000, 1, 28, 28)
    return x, y


def _accuracy(model, x, y, batch=1000, optimize=True):
    sess = session(model, optimize=optimize)
    name = sess.get_inputs()[0].name
    correct = 0
    for i in range(0, len(x), batch):
        (logits,) = sess.run(None, {name: x[i:i + batch]})
        correct += int((logits.argmax(1) == y[i:i + batch]).sum())
    return correct / len(x)


@pytest.fixture(scope="module")
def float_accuracy(test_set, fashion_paths):
    return _accuracy(fashion_paths[0], *test_set)


# entropy (KL) calibration clips harder by design (e.g. the stem ReLU range 4.4 -> 1.3); it gets a looser
# bound that still catches a broken range (clipping the input to its background spike cost 43 points)
@pytest.mark.parametrize("calibration,max_drop", [(None, 0.3), ("percentile", 0.3), ("minmax", 0.3), ("mse", 0.3),
                                                  ("entropy", 1.0)])
def test_int8_per_channel_accuracy_drop(test_set, fashion_paths, float_accuracy, calibration, max_drop):
    model_path, calib_path = fashion_paths
    with np.load(calib_path) as z:
        calib = {"input": z["input"]}
    kw = {"scheme": "int8", "granularity": "per-channel"}
    if calibration:
        kw["calibration"] = calibration
    res = qcc.compile_model(str(model_path), calib, config=qcc.QuantConfig(**kw), progress=False)
    ops = {n.op_type for n in res.qdq_model.graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    q_acc = _accuracy(res.qdq_model, *test_set)
    drop = 100 * (float_accuracy - q_acc)
    assert float_accuracy > 0.88
    assert drop <= max_drop, f"fp32 {float_accuracy:.4f} -> int8 {q_acc:.4f}: drop {drop:.2f} points"


FP8_EVAL = 3000


def _accuracy_unoptimized(model, x, y):
    return _accuracy(model, x, y, optimize=False)


@pytest.mark.parametrize("scheme", ["fp8-e4m3", "fp8-e5m2"])
def test_fp8_graph_accuracy(test_set, fashion_paths, scheme):
    """The emitted FP8 QDQ graph itself (onnxruntime without graph rewrites, i.e. the ONNX semantics)."""
    model_path, calib_path = fashion_paths
    with np.load(calib_path) as z:
        calib = {"input": z["input"]}
    res = qcc.compile_model(str(model_path), calib, config=qcc.QuantConfig(scheme=scheme), progress=False)
    x, y = test_set[0][:FP8_EVAL], test_set[1][:FP8_EVAL]  # un-fused FP8 graphs are slow on CPU: a subset
    fp = _accuracy(model_path, x, y)
    q_acc = _accuracy_unoptimized(res.qdq_model, x, y)
    assert 100 * (fp - q_acc) <= 1.0, (fp, q_acc)


def test_fp8_artifact_accuracy_through_qcc(test_set, fashion_paths, tmp_path):
    model_path, calib_path = fashion_paths
    with np.load(calib_path) as z:
        calib = {"input": z["input"]}
    qcc.compile_model(str(model_path), calib, config=qcc.QuantConfig(scheme="fp8-e4m3"), progress=False,
                      out_dir=tmp_path / "art")
    art = qcc.load(tmp_path / "art")
    x, y = test_set[0][:FP8_EVAL], test_set[1][:FP8_EVAL]
    correct = sum(int((art.run({"input": x[i:i + 1000]})[0].argmax(1) == y[i:i + 1000]).sum())
                  for i in range(0, len(x), 1000))
    assert 100 * (_accuracy(model_path, x, y) - correct / len(x)) <= 1.0
