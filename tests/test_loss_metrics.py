"""Loss metrics (compiler/loss_metrics.py): each built-in against a hand-computed reference, user
MODULE:FUNCTION metrics and their errors, `qcc tune --loss` and `qcc compile --metric` end to end."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from onnx import helper as oh
from onnx import numpy_helper as nh

from qcc import QccError
from qcc import loss_metrics as L
from qcc.cli import main


def _ev(name, f, q, labels=None):
    return L.evaluate(L.resolve(name), [np.asarray(a, np.float32) for a in f],
                      [np.asarray(a, np.float32) for a in q], labels)


# ---- class scores --------------------------------------------------------------------------------
# 4 samples, 3 classes. FP32 argmax: 0, 1, 2, 0; quantized argmax: 0, 2, 2, 1.
F = np.array([[5, 0, 0], [0, 0.2, 0.1], [0, 0, 6], [0.3, 0.2, 0.1]])
Q = np.array([[4, 0, 0], [0, 0.1, 0.2], [0, 0, 5], [0.1, 0.3, 0.1]])
Y = np.array([0, 1, 1, 0])


def test_class_score_metrics_by_hand():
    # accuracy: FP32 right on samples 0, 1, 3 (3/4); quantized on 0 only (1/4): 50 points lost
    assert _ev("accuracy", [F], [Q], Y) == pytest.approx(50.0)
    # top-1: 2 of 4 agree
    assert _ev("disagreement", [F], [Q]) == pytest.approx(50.0)
    # confident (max softmax >= 0.5): samples 0 and 2 only, both agree
    p = np.exp(F) / np.exp(F).sum(1, keepdims=True)
    assert list(p.max(1) >= 0.5) == [True, False, True, False]
    assert _ev("confident-disagreement", [F], [Q]) == pytest.approx(0.0)
    # no confident sample: falls back to all samples
    flat = np.zeros((2, 3)) + [[0.1, 0, 0], [0, 0.1, 0]]
    assert _ev("confident-disagreement", [flat], [flat[::-1]]) == pytest.approx(100.0)
    r = np.exp(Q) / np.exp(Q).sum(1, keepdims=True)
    assert _ev("kl", [F], [Q]) == pytest.approx(np.mean(np.sum(p * np.log(p / r), 1)), rel=1e-5)
    cos = np.mean(np.sum(F * Q, 1) / np.linalg.norm(F, axis=1) / np.linalg.norm(Q, axis=1))
    assert _ev("cosine", [F], [Q]) == pytest.approx(100 * (1 - cos), rel=1e-5)
    # cosine: the worst of several float outputs; integer outputs are not read
    assert _ev("cosine", [F, F], [F, -F]) == pytest.approx(200.0)


def test_auto_and_applicability():
    f = [np.zeros((2, 3), np.float32)]
    assert L.auto(f, np.array([0, 1])) == "accuracy"
    assert L.auto(f, None) == "confident-disagreement"
    assert L.auto([np.zeros((2, 8, 3), np.float32)], None) == "cosine"   # sequences: auto unchanged
    with pytest.raises(QccError, match="needs labels"):
        _ev("accuracy", [F], [Q])
    with pytest.raises(QccError, match=r"\[N, T, C\]"):
        _ev("ctc-line-exact", [F], [Q])
    with pytest.raises(QccError, match="YOLO"):
        _ev("box-f1", [F], [Q])
    with pytest.raises(QccError, match="labels have 3 entries"):
        _ev("accuracy", [F], [Q], Y[:3])
    with pytest.raises(QccError, match="unknown metric 'nope'"):
        L.resolve("nope")
    assert L.parse_list(["kl,cosine", "kl", " accuracy "]) == ["kl", "cosine", "accuracy"]


# ---- CTC line-exact ----------------------------------------------------------------------------
def _frames(ids, c=4):
    """[T, C] one-hot-ish scores whose per-frame argmax is ids."""
    x = np.zeros((len(ids), c), np.float32)
    x[np.arange(len(ids)), ids] = 1.0
    return x


def test_ctc_greedy_decode_by_hand():
    seqs = [[1, 1, 0, 1, 2, 2, 0, 0], [0, 3, 3, 3, 0, 3, 0, 0], [0] * 8, [2, 0, 2, 2, 1, 0, 1, 1]]
    assert L.ctc_greedy_decode(np.stack([_frames(s) for s in seqs])) == [(1, 1, 2), (3, 3), (), (2, 2, 1, 1)]
    # quantized: sample 0 the same text through other frames, sample 1 loses a repeat, 2 and 3 equal
    qseqs = [[1, 0, 1, 1, 2, 0, 0, 0], [0, 3, 3, 3, 3, 3, 0, 0], [0] * 8, [2, 0, 2, 2, 1, 0, 1, 1]]
    f = np.stack([_frames(s) for s in seqs])
    q = np.stack([_frames(s) for s in qseqs])
    assert _ev("ctc-line-exact", [f], [q]) == pytest.approx(25.0)   # 3 of 4 lines equal
    assert _ev("ctc-line-exact", [f], [f]) == 0.0


# ---- box F1 ------------------------------------------------------------------------------------
def _head(rows, k=8, c=2):
    """A YOLO-style head [K, 4 + C]: rows (cx, cy, w, h, class, score); the rest below threshold."""
    h = np.zeros((k, 4 + c), np.float32)
    for i, (cx, cy, w, hh, cls, s) in enumerate(rows):
        h[i, :4] = (cx, cy, w, hh)
        h[i, 4 + cls] = s
    return h


def test_box_iou_and_nms_by_hand():
    a = np.array([[0, 0, 2, 2]], float)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]], float)
    assert L.box_iou(a, b) == pytest.approx(np.array([[1 / 7, 1.0, 0.0]]))
    # two same-class boxes overlapping at IoU 95/105 (> 0.5): NMS keeps the higher score; another class stays
    boxes, scores, classes = L.detections(_head([(10, 10, 10, 10, 0, 0.6), (10.5, 10, 10, 10, 0, 0.9),
                                                 (10, 10, 10, 10, 1, 0.5), (50, 50, 4, 4, 0, 0.2)]))
    assert scores.tolist() == pytest.approx([0.9, 0.5]) and classes.tolist() == [0, 1]
    assert boxes[0].tolist() == pytest.approx([5.5, 5, 15.5, 15])


def test_box_f1_by_hand():
    # sample 0: FP32 finds A (class 0) and B (class 1); quantized finds A shifted by 1 (IoU 9*10/(110) ~ 0.82),
    #           and B with the wrong class. sample 1: FP32 finds C, quantized finds C far off (IoU 0) and nothing else.
    f0 = _head([(10, 10, 10, 10, 0, 0.9), (40, 40, 10, 10, 1, 0.8)])
    q0 = _head([(11, 10, 10, 10, 0, 0.85), (40, 40, 10, 10, 0, 0.7)])
    f1 = _head([(20, 20, 8, 8, 1, 0.6)])
    q1 = _head([(60, 60, 8, 8, 1, 0.6), (0, 0, 0, 0, 0, 0.1)])
    f, q = np.stack([f0, f1]), np.stack([q0, q1])
    # TP = 1 (A); |D_f| = 3, |D_q| = 3: F1 = 2/6
    want = 100 * (1 - 2 * 1 / 6)
    assert _ev("box-f1", [f], [q]) == pytest.approx(want)
    # the [N, 4 + C, K] layout (YOLOv8's) gives the same
    assert _ev("box-f1", [f.transpose(0, 2, 1)], [q.transpose(0, 2, 1)]) == pytest.approx(want)
    assert _ev("box-f1", [f], [f]) == 0.0
    empty = np.zeros_like(f)
    assert _ev("box-f1", [empty], [empty]) == 0.0           # both see nothing: they agree
    assert _ev("box-f1", [f], [empty]) == 100.0


# ---- user metrics ------------------------------------------------------------------------------
USER = '''
import numpy as np
CALLS = []
def mean_abs(f, q, labels):
    CALLS.append(labels is not None)
    return float(np.mean(np.abs(f[0] - q[0])))
def nan(f, q, labels):
    return float("nan")
def text(f, q, labels):
    return "0.5"
def boom(f, q, labels):
    raise ValueError("bad shapes")
def mutate(f, q, labels):
    f[0][...] = 0
    return 0.0
class Holder:
    @staticmethod
    def loss(f, q, labels):
        return np.float32(2.5)
NOT_CALLABLE = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "qcc_test_user_metric.py").write_text(USER)
    (tmp_path / "broken_metric.py").write_text("import numpy as np\nimport not_a_real_package_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("qcc_test_user_metric", "broken_metric"):
        sys.modules.pop(name, None)


def test_user_metric_module_and_file(user_module):
    f, q = [F.astype(np.float32)], [Q.astype(np.float32)]
    m = L.resolve("qcc_test_user_metric:mean_abs")
    assert m.user and L.evaluate(m, f, q, Y) == pytest.approx(np.mean(np.abs(F - Q)), rel=1e-6)
    by_file = L.resolve(f"{user_module / 'qcc_test_user_metric.py'}:mean_abs")
    assert L.evaluate(by_file, f, q) == pytest.approx(np.mean(np.abs(F - Q)), rel=1e-6)
    assert L.evaluate(L.resolve("qcc_test_user_metric:Holder.loss"), f, q) == 2.5   # numpy scalar, dotted name


@pytest.mark.parametrize("spec, words", [
    ("no_such_module_qcc:f", "no module named 'no_such_module_qcc'"),
    ("broken_metric:f", "needs 'not_a_real_package_xyz'"),
    ("qcc_test_user_metric:missing", "has no attribute 'missing'"),
    ("qcc_test_user_metric:NOT_CALLABLE", "not a callable"),
    ("qcc_test_user_metric:nan", "not a finite number"),
    ("qcc_test_user_metric:text", "not a number"),
    ("qcc_test_user_metric:boom", "raised ValueError: bad shapes"),
    ("qcc_test_user_metric:mutate", "read-only"),
    ("nowhere/metric.py:f", "no such file"),
    (":f", "expected MODULE:FUNCTION"),
])
def test_user_metric_errors(user_module, spec, words):
    with pytest.raises(QccError, match=words):
        L.evaluate(L.resolve(spec), [F.astype(np.float32)], [Q.astype(np.float32)])


# ---- qcc compile --metric ----------------------------------------------------------------------
def test_compile_metric_in_report(tmp_path, user_module, capsys):
    """The bundled model, no arguments but -o: the chosen metrics land in report.json and report.html."""
    out = tmp_path / "art"
    assert main(["compile", "-o", str(out), "--quiet", "--metric", "disagreement,kl",
                 "--metric", "qcc_test_user_metric:mean_abs", "--metric", "accuracy"]) == 0
    report = json.loads((out / "report.json").read_text())
    fid = report["fidelity"]
    m, logits = fid["metrics"], fid["outputs"]["logits"]
    assert list(m) == ["disagreement", "kl", "qcc_test_user_metric:mean_abs", "accuracy"]
    assert m["disagreement"] == pytest.approx(100 * (1 - logits["agreement"]))
    assert m["kl"] == pytest.approx(logits["kl"], rel=1e-9)
    assert m["accuracy"] == pytest.approx(logits["accuracy_drop_points"])
    assert m["qcc_test_user_metric:mean_abs"] > 0
    assert "id='fidelity-metrics'" in (out / "report.html").read_text()


def test_compile_metric_errors_exit_2(tmp_path, user_module, fashion_paths, capsys):
    model, calib = fashion_paths
    base = ["compile", str(model), "--calib", str(calib), "--quiet"]
    # an import error: before any work, nothing written
    assert main(base + ["-o", str(tmp_path / "a"), "--metric", "no_such_module_qcc:f"]) == 2
    assert "no module named 'no_such_module_qcc'" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main(base + ["-o", str(tmp_path / "b"), "--metric", "ctc-line-exact"]) == 2
    assert "needs a model output of [N, T, C]" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert main(base + ["-o", str(tmp_path / "c"), "--metric", "qcc_test_user_metric:nan"]) == 2
    assert "not a finite number" in capsys.readouterr().err


# ---- qcc tune --loss ---------------------------------------------------------------------------
def _recogniser(path, t=8, d=6, c=5):
    """A toy sequence recogniser: x [N, T, D] -> softmax(x W + b) [N, T, C] per-frame class scores."""
    rng = np.random.default_rng(0)
    w = nh.from_array(rng.standard_normal((d, c)).astype(np.float32) * 2, "w")
    b = nh.from_array(rng.standard_normal(c).astype(np.float32), "b")
    g = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                       oh.make_node("Add", ["h", "b"], ["z"], name="add"),
                       oh.make_node("Softmax", ["z"], ["probs"], name="softmax", axis=-1)], "rec",
                      [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", t, d])],
                      [oh.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, ["N", t, c])], [w, b])
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)]), path)
    x = rng.standard_normal((64, t, d)).astype(np.float32)
    np.savez(path.with_suffix(".npz"), x=x)
    return path, path.with_suffix(".npz")


def test_tune_loss_ctc_line_exact_and_user(tmp_path, user_module, capsys):
    from qcc.autotune.evaluate import LOSSES
    from qcc.autotune.journal import read

    assert set(L.names()) < set(LOSSES) and LOSSES[0] == "auto"
    model, data = _recogniser(tmp_path / "rec.onnx")
    from qcc.passes import registry

    space = ["scheme=int8", "calibration=minmax,mse", "granularity=per-tensor", "int4=", "float_layers=",
             "power_of_two="] + [f"pass:{p}=" for p in registry.names()]
    for loss in ("ctc-line-exact", "qcc_test_user_metric:mean_abs"):
        out = tmp_path / loss.replace(":", "_")
        assert main(["tune", str(model), "--calib", str(data), "--loss", loss, "--budget", "2", "--quiet",
                     "-o", str(out), "--space", *space]) == 0, capsys.readouterr().err
        header, trials = read(out / "journal.jsonl")
        assert header["loss"] == loss and len(trials) == 2
        assert all(0 <= t["metrics"]["loss"] < 100 for t in trials)
        best = json.loads((out / "best" / "report.json").read_text())
        assert best["fidelity"]["metrics"][loss] == pytest.approx(min(t["metrics"]["loss"] for t in trials))
    # a built-in that does not fit the model, a user metric that returns NaN: exit 2 before any trial
    for loss, words in (("kl", "needs a model output of [N, C] class scores"),
                        ("qcc_test_user_metric:nan", "not a finite number"),
                        ("nonsense", "unknown loss 'nonsense'")):
        assert main(["tune", str(model), "--calib", str(data), "--loss", loss, "--budget", "1", "--quiet",
                     "-o", str(tmp_path / "x"), "--space", *space]) == 2
        assert words in capsys.readouterr().err and not (tmp_path / "x").exists()
