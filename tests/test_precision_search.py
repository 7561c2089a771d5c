"""--max-loss: the precision search raises the most sensitive layers until the loss meets the budget.

On the bundled Fashion-MNIST CNN (real weights, real data): the all-int8 KL is about 2e-4; a budget
below it must be met by raising layers, the chosen graph's loss is what an independent onnxruntime
run of the written artifact gives, and an unmeetable budget keeps the best graph and says so."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import qcc
from qcc import loss_metrics, models
from qcc.backends import onnxruntime as ort_backend
from qcc.cli import main


@pytest.fixture(scope="module")
def fashion():
    return models.get("fashion-cnn", n_calib=128, n_eval=400)


def _kl_of(folder, entry):
    """KL(float || artifact's QDQ graph) on the evaluation set, computed here from the files."""
    q = onnx.load(str(folder / "model.qdq.onnx"))
    f = ort_backend.run_all(ort_backend.make_session(onnx.load(str(entry.onnx_path))), entry.eval)
    out = ort_backend.run_all(ort_backend.make_session(q), entry.eval)
    return loss_metrics.evaluate(loss_metrics.resolve("kl"), f, out)


def test_budget_below_int8_is_met_by_raising_the_most_sensitive_layers(fashion, tmp_path):
    out = tmp_path / "a"
    base = qcc.compile_model(str(fashion.onnx_path), fashion.calib, eval_data=fashion.eval, out_dir=tmp_path / "b",
                             progress=False, metrics=["kl"])
    int8 = base.report["fidelity"]["metrics"]["kl"]
    budget = int8 / 2   # all-w8a16 gives about int8 / 3 here
    res = qcc.compile_model(str(fashion.onnx_path), fashion.calib, eval_data=fashion.eval, out_dir=out,
                            progress=False, metrics=["kl"], max_loss=budget)
    p = res.report["precision"]
    assert p["metric"] == "kl" and p["met"] and p["loss"] <= budget
    assert p["int8_loss"] == pytest.approx(int8, rel=1e-6)
    assert 1 <= len(p["raised"]) < 10
    # the raised layers are those whose keeping float recovers the most output SQNR, best first
    gain = [r["recovered_db"] for r in p["raised"]]
    assert gain == sorted(gain, reverse=True) and gain[0] > 0
    ranked = res.report["sensitivity"]["layers"]
    assert all(r["node"] in {x["node"] for x in ranked} for r in p["raised"])
    # int8 is raised to int16 activations first (the cheaper rung): those layers read int16 in the written graph
    assert p["rung"] == "w8a16" and {r["to"] for r in p["raised"]} == {"w8a16"}
    qdq = onnx.load(str(out / "model.qdq.onnx"))
    producer = {o: n for n in qdq.graph.node for o in n.output}
    inits = {i.name: i for i in qdq.graph.initializer}

    def reads_int16(node):
        for i in node.input:
            dq = producer.get(i)
            if dq is not None and dq.op_type == "DequantizeLinear" and len(dq.input) > 2 and dq.input[2] in inits:
                if inits[dq.input[2]].data_type == onnx.TensorProto.INT16:
                    return True
        return False

    by_name = {n.name: n for n in qdq.graph.node}
    assert all(reads_int16(by_name[r["node"]]) for r in p["raised"])
    assert not res.report["float_nodes"]
    # the loss is what the artifact gives
    assert _kl_of(out, fashion) == pytest.approx(p["loss"], rel=1e-4)
    assert res.report["fidelity"]["metrics"]["kl"] == pytest.approx(p["loss"], rel=1e-6)
    # the smallest k: one layer fewer (the trial the bisection measured) is over the budget
    by_k = {t["k"]: t["loss"] for t in p["trials"] if t["rung"] == p["rung"]}
    k = len(p["raised"])
    assert k - 1 == 0 or by_k[k - 1] > budget
    assert 1.0 < p["modelled_cost"]["relative"] < 2.0
    html = (out / "report.html").read_text()
    assert "Precision search" in html and "precision-raised" in html


def test_budget_already_met_changes_nothing(fashion, tmp_path):
    res = qcc.compile_model(str(fashion.onnx_path), fashion.calib, eval_data=fashion.eval, progress=False,
                            metrics=["disagreement"], max_loss=50.0)
    p = res.report["precision"]
    assert p["met"] and p["raised"] == [] and len(p["trials"]) == 1
    assert not res.report["float_nodes"]


def test_unmeetable_budget_keeps_the_lowest_loss_and_says_so(fashion, tmp_path):
    metric = tmp_path / "always.py"   # a loss no assignment can bring under 0.5
    metric.write_text("import numpy as np\n"
                      "def loss(f, q, labels):\n"
                      "    return 1.0 + float(np.mean((f[0] - q[0]) ** 2))\n")
    logs = []
    res = qcc.compile_model(str(fashion.onnx_path), fashion.calib, eval_data=fashion.eval, out_dir=tmp_path / "o",
                            progress=False, metrics=[f"{metric}:loss"], max_loss=0.5, log=logs.append)
    p = res.report["precision"]
    assert not p["met"]
    assert p["loss"] == min(t["loss"] for t in p["trials"])
    assert any("no assignment met" in m for m in logs)
    assert (tmp_path / "o" / "model.qdq.onnx").exists()


def test_cli_max_loss(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["compile", "--metric", "kl", "--max-loss", "1.0", "-o", str(out), "--quiet"]) == 0
    assert json.loads((out / "report.json").read_text())["precision"]["met"]
    assert main(["compile", "--max-loss", "-1", "-o", str(tmp_path / "d"), "--quiet"]) == 2
    assert "--max-loss" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_float_rung_where_int16_does_not_apply(fashion, tmp_path):
    # int8-sym activations have no int16 rung (w8a16 replaces U8 asymmetric ones): layers go float
    config = qcc.QuantConfig(scheme="int8-sym")
    base = qcc.compile_model(str(fashion.onnx_path), fashion.calib, eval_data=fashion.eval, config=config,
                             progress=False, metrics=["kl"])
    budget = base.report["fidelity"]["metrics"]["kl"] / 3
    res = qcc.compile_model(str(fashion.onnx_path), fashion.calib, eval_data=fashion.eval, config=config,
                            progress=False, metrics=["kl"], max_loss=budget)
    p = res.report["precision"]
    assert p["met"] and p["rung"] == "float" and p["raised"]
    assert {r["node"] for r in p["raised"]} <= {n["node"] for n in res.report["float_nodes"]}
    assert all(r["node"] in res.manifest["config"]["exclude"] for r in p["raised"])


def test_llvm_build_of_a_mixed_int8_int16_graph(fashion, tmp_path):
    # the layers the search raised run as int16 x int8 kernels in the TVM build, checked against onnxruntime
    base = qcc.compile_model(str(fashion.onnx_path), fashion.calib, eval_data=fashion.eval, progress=False,
                             metrics=["kl"])
    res = qcc.compile_model(str(fashion.onnx_path), fashion.calib, eval_data=fashion.eval, progress=False,
                            metrics=["kl"], max_loss=base.report["fidelity"]["metrics"]["kl"] / 2,
                            target="llvm", out_dir=tmp_path / "l")
    p, backend = res.report["precision"], res.report["backend"]
    assert p["met"] and p["rung"] == "w8a16" and p["raised"]
    assert not backend["float_fallback"]
    # onnxruntime runs int16 layers as float between Q / DQ, so near-ties round apart and a few codes
    # downstream differ by more than a step; the mean error stays a small fraction of one step
    for e in backend["exactness"].values():
        assert e["within_step"] >= 0.98 and e["mean_abs"] <= 0.25 * e["step"]
    out = qcc.load(tmp_path / "l").run({k: v[:8] for k, v in fashion.eval.items()})
    logits = out["logits"] if isinstance(out, dict) else out[0]
    assert (np.argmax(logits, -1) == fashion.labels[:8]).mean() >= 0.75
