"""AdaRound (passes/adaround.py): im2col patches reproduce the conv (onnxruntime), the rounded weights lie on
the emitter's grid (floor or ceil of W / s, same scale), AdaRound is never worse than nearest rounding on
its objective (checked in numpy) and strictly better on a real layer, and the compiled QDQ graph carries
exactly the chosen integers."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper as oh

from conftest import compile_quiet, config, initializers, make_model, run

pytest.importorskip("torch")

from qcc import QuantConfig  # noqa: E402
from qcc.canonicalize import canonicalize  # noqa: E402
from qcc.loader import load_model  # noqa: E402
from qcc.passes import adaround as ar  # noqa: E402
from qcc.plan import build_plan  # noqa: E402


def test_patches_reproduce_conv():
    """Strided, padded, dilated, grouped conv: patches @ W^T == onnxruntime's conv at those positions."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    proto = make_model([oh.make_node("Conv", ["x", "w"], ["y"], name="c", group=2, pads=[1, 0, 2, 1],
                                     strides=[2, 1], dilations=[1, 2])],
                       [("x", [None, 4, 9, 8])], [("y", None)], {"w": w})
    x = rng.standard_normal((3, 4, 9, 8)).astype(np.float32)
    y = run(proto, {"x": x})[0]
    node = next(iter(ir.serde.deserialize_model(proto).graph))
    assert ar.output_hw(node, x.shape) == y.shape[2:]
    n, i, j = rng.integers(0, 3, 50), rng.integers(0, y.shape[2], 50), rng.integers(0, y.shape[3], 50)
    p = ar.patches_at(node, x, n, i, j)                                   # [rows, groups, fan_in]
    got = np.einsum("rgj,goj->rgo", p, ar.as_matrix(node, w)).reshape(50, 6)
    np.testing.assert_allclose(got, y[n, :, i, j], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def fashion_layer():
    from qcc import models

    e = models.get("fashion-cnn", n_calib=16, n_eval=1)
    model, _ = canonicalize(load_model(str(e.onnx_path)), min_opset=21)
    plan = build_plan(model, QuantConfig(scheme="w4a8"))
    node, spec = ar.layers(model, plan)[2]          # a 3x3 32 -> 32 conv
    data = ar.collect_patches(ir.to_proto(model), [node], e.calib, n_samples=8, rows=256)
    return node, spec, data[node.name]


def test_never_worse_than_nearest_and_on_grid(fashion_layer):
    node, spec, data = fashion_layer
    assert spec.qtype.qmax == 7
    w = node.inputs[1].const_value.numpy()
    w_hat, info = ar.round_layer(node, data, 7, 0, iterations=80)
    s = np.abs(w).reshape(w.shape[0], -1).max(1) / 7
    q = w_hat / s[:, None, None, None]
    # on the grid, every element rounded down or up, the per-channel maximum (so the scale) unchanged
    np.testing.assert_allclose(q, np.rint(q), atol=1e-4)
    lo = np.floor(w / s[:, None, None, None])
    assert np.all((np.rint(q) == lo) | (np.rint(q) == lo + 1))
    np.testing.assert_allclose(np.abs(w_hat).reshape(w.shape[0], -1).max(1), s * 7, rtol=1e-6)
    # objective in plain numpy: || P (W - W_hat)^T ||^2 / rows
    near = np.clip(np.rint(w / s[:, None, None, None]), -7, 7) * s[:, None, None, None]
    p = data.patches[:, 0, :].astype(np.float64)
    obj = lambda wh: float((((p @ (w - wh).reshape(w.shape[0], -1).T.astype(np.float64)) ** 2).sum()) / len(p))
    assert obj(w_hat) <= obj(near) * (1 + 1e-9)
    assert obj(w_hat) < 0.9 * obj(near), (obj(w_hat), obj(near))   # and a real gain on this layer
    assert info["kept"] and info["adaround"] == pytest.approx(obj(w_hat), rel=1e-6)


def test_compiled_weights_carry_the_choice(fashion_paths, fashion_calib, monkeypatch):
    """--passes adaround: the int4 weights in the QDQ graph are exactly the AdaRound grid points, the float
    reference keeps the original weights, and the output is closer to FP32 than round-to-nearest."""
    for name, value in (("ITERATIONS", 30), ("ROWS", 256), ("N_SAMPLES", 8)):
        monkeypatch.setattr(ar, name, value)
    model, calib = str(fashion_paths[0]), {"input": fashion_calib["input"][:32]}
    off = compile_quiet(model, calib, config=config(scheme="w4a8"), eval_data=calib)
    on = compile_quiet(model, calib, config=config(scheme="w4a8", passes=["adaround"]), eval_data=calib)
    a, b = initializers(off.qdq_model), initializers(on.qdq_model)
    qnames = [k for k in a if k.endswith("_quantized") and a[k].dtype.itemsize == 1 and k in b]
    changed = [k for k in qnames if not np.array_equal(a[k], b[k])]
    assert changed and all(np.abs(a[k].astype(int) - b[k].astype(int)).max() <= 1 for k in changed)
    assert initializers(on.float_model).keys() >= {k[: -len("_quantized")] for k in changed}
    for name in {k[: -len("_quantized")] for k in changed}:
        np.testing.assert_array_equal(initializers(on.float_model)[name], initializers(off.float_model)[name])
    sqnr = lambda r: r.report["fidelity"]["outputs"]["logits"]["sqnr_db"]
    assert sqnr(on) > sqnr(off) + 0.5, (sqnr(on), sqnr(off))
