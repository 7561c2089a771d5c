"""Per-layer sensitivity (compiler/sensitivity.py): the sweep ranks a deliberately fragile layer first,
its numbers equal an independent numpy reference, report.json / report.html carry it, and it is
cheap on the bundled model."""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest
from onnx import numpy_helper as nh
from onnx import helper as oh

from conftest import make_model

RNG = np.random.default_rng(0)
C = 6


def fragile_model() -> onnx.ModelProto:
    """conv1 -> Relu -> conv2 -> Relu -> conv3 -> GlobalAveragePool. conv1's output channel 0 is always 0
    (zero weights, bias -1, then Relu), and conv2 reads that channel with weight 400: a weight range no
    8-bit scale spans, per tensor or per output channel, so conv2's useful weights (~0.1) round to 0
    while every other layer quantizes well."""
    w1 = RNG.normal(0, 0.3, (C, 3, 3, 3)).astype(np.float32)
    b1 = RNG.normal(0, 0.1, C).astype(np.float32)
    w1[0], b1[0] = 0.0, -1.0
    w2 = RNG.normal(0, 0.1, (C, C, 3, 3)).astype(np.float32)
    w2[:, 0, 1, 1] = 400.0
    b2 = RNG.normal(0, 0.1, C).astype(np.float32)
    w3 = RNG.normal(0, 0.2, (4, C, 1, 1)).astype(np.float32)
    b3 = np.zeros(4, np.float32)
    nodes = [oh.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             oh.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             oh.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3"),
             oh.make_node("GlobalAveragePool", ["c3"], ["y"], name="gap")]
    return make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", ["N", 4, 1, 1])],
                      {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3, "b3": b3})


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    import qcc

    out = tmp_path_factory.mktemp("sens") / "art"
    calib = {"x": RNG.normal(0, 1, (32, 3, 8, 8)).astype(np.float32)}
    res = qcc.compile_model(fragile_model(), calib, out_dir=out, target="onnx", progress=False)
    return res, calib, out


def _db(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2)))


def _conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Conv, 3x3, stride 1, pad 1, in float64 numpy."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h, wd = x.shape[2:]
    out = sum(np.einsum("nchw,oc->nohw", p[:, :, i:i + h, j:j + wd], w[:, :, i, j]) for i in range(3) for j in range(3))
    return out + b.astype(np.float64)[None, :, None, None]


def test_fragile_layer_ranked_first(compiled):
    res, _, _ = compiled
    sens = res.report["sensitivity"]
    rows = sens["layers"]
    assert rows[0]["node"] == "conv2" and rows[0]["fused"] == ["relu2"], rows
    assert rows[0]["sqnr_db"] < 10 and rows[0]["weight_sqnr_db"] < 10 < rows[0]["input_sqnr_db"]
    assert all(r["sqnr_db"] > 25 for r in rows[1:]), rows
    assert [r["sqnr_db"] for r in rows] == sorted(r["sqnr_db"] for r in rows)
    # the layer rows carry it; fused Relus are part of their conv's layer
    by_node = {r["node"]: r for r in res.report["layers"]}
    assert by_node["conv2"]["sensitivity_db"] == rows[0]["sqnr_db"]
    assert "sensitivity_db" not in by_node["relu2"]
    json.dumps(sens)


def test_inspect_column(compiled, capsys):
    from qcc.cli import main

    res, _, out = compiled
    assert main(["inspect", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[-4:] == ["alone", "dB", "SQNR", "dB"]
    conv2 = next(ln for ln in lines if ln.startswith("conv2 "))
    assert float(conv2.split()[-2]) == pytest.approx(res.report["sensitivity"]["layers"][0]["sqnr_db"], abs=0.01)
    assert next(ln for ln in lines if ln.startswith("relu2 ")).split()[-2] == "-"


def test_matches_numpy_reference(compiled):
    """conv2 alone: its input quantized with the manifest's (scale, zero point), its weights and bias
    dequantized from the QDQ graph's initializers, the conv in float64 numpy, vs the float graph."""
    import onnxruntime as ort

    from qcc.backends.onnxruntime import with_outputs
    from qcc.sensitivity import sweep

    res, calib, _ = compiled
    data = {"x": calib["x"][:8]}
    sess = ort.InferenceSession(with_outputs(res.float_model, ["r1", "r2"]).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    r1, r2 = sess.run(["r1", "r2"], data)
    enc = res.manifest["encodings"]["r1"]
    s, z = enc["scale"], enc["zero_point"]
    lo, hi = (0, 255) if enc["dtype"] == "uint8" else (-128, 127)
    x_q = (np.clip(np.round(r1 / np.float32(s)) + z, lo, hi) - z) * np.float32(s)
    q = {t.name: nh.to_array(t) for t in res.qdq_model.graph.initializer}
    (conv2,) = [n for n in res.qdq_model.graph.node if n.name == "conv2"]
    producer = {o: n for n in res.qdq_model.graph.node for o in n.output}

    def dequant(name):
        dq = producer[name]
        v, sc = q[dq.input[0]].astype(np.float64), q[dq.input[1]].astype(np.float64)
        return v * (sc.reshape(-1, *([1] * (v.ndim - 1))) if sc.ndim else sc)

    w_q, b_q = dequant(conv2.input[1]), dequant(conv2.input[2])
    f = {t.name: nh.to_array(t) for t in res.float_model.graph.initializer}
    expect = {"sqnr_db": _db(r2, np.maximum(_conv3x3(x_q, w_q, b_q), 0)),
              "input_sqnr_db": _db(r2, np.maximum(_conv3x3(x_q, f["w2"], f["b2"]), 0)),
              "weight_sqnr_db": _db(r2, np.maximum(_conv3x3(r1, w_q, b_q), 0))}
    got = next(r for r in sweep(res.float_model, res.qdq_model, res.plan.roles, data)["layers"] if r["node"] == "conv2")
    for key, value in expect.items():
        assert got[key] == pytest.approx(value, abs=2e-3), (key, got[key], value)


def test_end_to_end_recovery(compiled):
    """Kept float alone (the rest quantized), conv2 recovers most of the output SQNR."""
    from qcc.sensitivity import sweep

    res, calib, _ = compiled
    out = sweep(res.float_model, res.qdq_model, res.plan.roles, calib, samples=16, recover_top=2)
    e2e = out["end_to_end"]
    assert set(e2e["recovered_db"]) == {r["node"] for r in out["layers"][:2]}
    assert out["layers"][0]["recovered_db"] > 10 and e2e["output_sqnr_db"] < 15
    assert "recovered_db" not in out["layers"][2]


def test_report_html_chart(compiled):
    from test_report_html import assert_charts, assert_self_contained

    _, _, out = compiled
    report = json.loads((out / "report.json").read_text())
    assert report["sensitivity"]["layers"][0]["node"] == "conv2"
    text = (out / "report.html").read_text(encoding="utf-8")
    assert_charts(assert_self_contained(text), {"sensitivity-chart", "sqnr-chart"})
    section = text.split("id='sensitivity'")[1].split("</section>")[0]
    assert "id='sensitivity-table'" in section and "conv2" in section
    assert "could not be drawn" not in text


def test_report_html_without_or_failed_sweep(tmp_path):
    from qcc.report_html import render_compile_report

    assert "id='sensitivity'" not in render_compile_report({"layers": []}, {})   # a report from before it
    text = render_compile_report({"sensitivity": {"error": "ValueError: <odd>", "layers": []}}, {})
    assert "did not run: ValueError: &lt;odd&gt;" in text


def test_bundled_model_quick():
    import qcc
    from qcc.models import bundled_calib_path, bundled_model_path
    from qcc.sensitivity import sweep

    with np.load(bundled_calib_path()) as z:
        calib = {"input": z["input"][:64]}
    res = qcc.compile_model(str(bundled_model_path()), calib, target="onnx", progress=False)
    t = time.perf_counter()
    out = sweep(res.float_model, res.qdq_model, res.plan.roles, calib, samples=32)
    assert time.perf_counter() - t < 5
    assert len(out["layers"]) >= 8 and out["samples"] == 32
    # the first conv reads the graph input: nothing accumulates before it, so its local figure is the
    # report's float-vs-QDQ SQNR of its (Relu) output, measured there on the same 32 samples
    first = next(r for r in out["layers"] if r["node"] == "/stem/stem.0/stem.0.0/Conv")
    (relu,) = [r for r in res.report["layers"] if r["node"] == first["fused"][0]]
    assert first["sqnr_db"] == pytest.approx(relu["sqnr_db"], abs=0.01)
    assert all(np.isfinite(r["sqnr_db"]) and r["sqnr_db"] > 20 for r in out["layers"])
    assert {r["node"] for r in out["layers"]} <= {r["node"] for r in res.report["layers"]}
    assert res.report["sensitivity"]["samples"] == 8
