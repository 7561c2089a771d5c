"""qcc.autotune: trial evaluation (cached stages == compile_model), space, journal, cost model,
searchers, the `qcc tune` driver with kill -9 and resume, local processes and Ray."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import qcc
from qcc.autotune import features
from qcc.autotune.cost_model import CostModel
from qcc.autotune.evaluate import TrialEvaluator
from qcc.autotune.journal import Journal, read
from qcc.autotune.objective import Goal
from qcc.autotune.searchers import make_searcher
from qcc.config import QuantConfig
from qcc.passes import registry

N_EVAL = 200
# a small, fast space for the driver tests: expensive passes out, the base config decides them
FAST = ["scheme=int8,int8-sym", "calibration=minmax,percentile-99.99,mse", "granularity=per-channel,per-tensor",
        "int4=0,0.5", "float_layers=0,1", "power_of_two="] + [f"pass:{p}=" for p in registry.names() if p != "bias-correction"]


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    from qcc import models

    e = models.get("fashion-cnn", n_calib=64, n_eval=N_EVAL)
    if e.labels is None:
        pytest.skip("Fashion-MNIST test set not installed")
    d = tmp_path_factory.mktemp("fashion")
    np.savez(d / "calib.npz", **e.calib)
    np.savez(d / "eval.npz", **e.eval)
    np.save(d / "labels.npy", e.labels)
    return e, d


@pytest.fixture(scope="module")
def evaluator(fashion):
    e, _ = fashion
    return TrialEvaluator(e.onnx_path, e.calib, e.eval, e.labels)


@pytest.fixture(scope="module")
def prepared(evaluator):
    from qcc.autotune.tune import prepare

    return prepare(evaluator, "onnx", {"pass:adaround": [False], "pass:noisyquant": [False]})


def test_trial_equals_compile(fashion, evaluator, prepared):
    """A trial on cached statistics measures exactly what `qcc compile` builds for the same config."""
    e, _ = fashion
    stats, space, points, _ = prepared
    point = {**points[0], "scheme": "int8-sym", "calibration": "entropy", "granularity": "per-tensor",
             "int4": 0.5, "float_layers": 1, "pass:bias-correction": True}
    for cfg in (QuantConfig(passes=[]), space.to_config(point)):
        m = evaluator(cfg)
        r = qcc.compile_model(str(e.onnx_path), e.calib, config=evaluator.with_batch(cfg), eval_data=e.eval,
                              labels=e.labels, progress=False)
        ref = r.report["fidelity"]["outputs"]["logits"]
        got = m["fidelity"]["logits"]
        assert got["kl"] == pytest.approx(ref["kl"], rel=1e-9, abs=1e-12)
        assert got["accuracy_quantized"] == ref["accuracy_quantized"]
        assert m["loss"] == pytest.approx(ref["accuracy_drop_points"])
        assert m["size_bytes"] == r.qdq_model.ByteSize()
    # the second config really is mixed precision: int4 weights, one float layer
    assert any(v == "w4a8" for v in cfg.overrides.values()) and len(cfg.exclude) == 1


def test_space_mapping(prepared):
    stats, space, points, X = prepared
    assert X.shape == (len(points), len(features.feature_names(space)))
    assert np.isfinite(X).all()
    # every registered pass that can change this CNN is a dimension (smoothing cannot)
    assert "pass:smoothing" not in space.dims and "pass:bias-correction" in space.dims
    assert space.to_config(space.base_point()).to_dict() == QuantConfig().to_dict()
    p = {**space.base_point(), "int4": 0.5, "float_layers": 2}
    cfg = space.to_config(p)
    sens = stats.sensitivity()
    floats = {stats.layers[i].node for i in np.argsort(sens)[:2]}
    assert set(cfg.exclude) == floats           # the two lowest-SQNR layers stay float
    int4 = {w for w, s in cfg.overrides.items() if s == "w4a8"}
    n4 = round(0.5 * len(stats.layers))
    assert len(int4) == n4 and not int4 & {stats.layers[i].weight for i in np.argsort(sens)[:2]}
    # a pass parameter plugs in through its registry record's params / to_config
    assert {"weight_budget": 0.4} in space.dims.get("pass:mixed-precision", [{"weight_budget": 0.4}])
    if "pass:mixed-precision" in space.dims:
        assert space.to_config({**space.base_point(), "pass:mixed-precision": {"weight_budget": 0.4}}).weight_budget == 0.4
    assert all(p.params for p in registry.registry().values() if p.to_config is not None)


def test_weight_sqnr_proxy_matches_numpy(prepared):
    """The per-layer int8 weight SQNR proxy against a direct numpy computation."""
    stats = prepared[0]
    layer = stats.layers[0]
    w = layer.array.astype(np.float64)
    axes = tuple(i for i in range(w.ndim) if i != layer.axis)
    s = np.abs(w).max(axis=axes, keepdims=True) / 127
    q = np.clip(np.round(w / s), -127, 127) * s
    want = 10 * np.log10(np.sum(w**2) / np.sum((w - q) ** 2))
    assert stats.weight_sqnr(qcc.config.SCHEMES["int8"][2], True)[0] == pytest.approx(want, abs=0.05)
    assert stats.weight_sqnr(qcc.config.SCHEMES["w4a8"][2], True)[0] < want - 15  # 4 bits: ~24 dB less


def test_journal_tolerates_torn_line(tmp_path):
    j = Journal(tmp_path / "journal.jsonl")
    j.start({"model_sha256": "a", "loss": "kl"})
    for i in range(3):
        j.append({"trial": i, "key": f"k{i}", "metrics": {"loss": float(i)}})
    with open(j.path, "ab") as f:          # a kill -9 in the middle of a write
        f.write(b'{"type": "trial", "trial": 3, "key": "k3", "metr')
    header, trials = read(j.path)
    assert header["loss"] == "kl" and [t["key"] for t in trials] == ["k0", "k1", "k2"]
    j2 = Journal(j.path)
    j2.append({"trial": 3, "key": "k3", "metrics": {"loss": 3.0}})
    lines = j.path.read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line) for line in lines)
    with pytest.raises(qcc.QccError, match="another tuning run"):
        Journal(j.path).start({"model_sha256": "b", "loss": "kl"})
    # a journal written before the loss definitions changed (no loss_definitions): not resumed
    with pytest.raises(qcc.QccError, match="loss_definitions differs"):
        Journal(j.path).start({"model_sha256": "a", "loss": "kl", "loss_definitions": 2})


def test_cost_model_ranks_held_out_configs():
    """Ensemble XGBoost on a noisy nonlinear function of mixed discrete features: predictions on
    unseen points rank them (Spearman > 0.8), and the spread is larger away from the data."""
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.integers(0, 2, 400), rng.integers(0, 6, 400), rng.uniform(10, 50, 400)])
    y = 5 * X[:, 0] + (X[:, 1] - 3) ** 2 + 40 / X[:, 2] + rng.normal(0, 0.1, 400)
    model = CostModel(seed=0).fit(X[:120], y[:120])
    mean, std = model.predict(X[120:])
    rank = lambda v: np.argsort(np.argsort(v))
    assert np.corrcoef(rank(mean), rank(y[120:]))[0, 1] > 0.8
    far = model.predict(np.array([[5.0, 20.0, 500.0]]))[1][0]
    assert far >= np.median(std)


def test_searchers_on_a_table():
    """Every searcher proposes only untried points and covers the space; Quantune finds the minimum
    of a table its features explain in far fewer trials than the grid's size."""
    grid = [(a, b, c) for a in range(4) for b in range(6) for c in range(5)]   # 120 points
    points = [{"a": a, "b": b, "c": c} for a, b, c in grid]
    X = np.array(grid, dtype=float)
    table = [(a - 2) ** 2 + abs(b - 4) + 0.3 * c for a, b, c in grid]
    best = min(table)
    for name in ("quantune", "grid", "random", "genetic"):
        kw = {"features": X} if name == "quantune" else {}
        s = make_searcher(name, points, seed=1, goal=Goal(), **kw)
        history, first_hit = {}, None
        while len(history) < len(points):
            picks = s.ask(3, history)
            assert picks and len(set(picks)) == len(picks) and not set(picks) & set(history)
            for i in picks:
                history[i] = (table[i], table[i])
                if table[i] == best and first_hit is None:
                    first_hit = len(history)
            if name == "quantune" and first_hit:
                break
        if name == "quantune":
            assert first_hit is not None and first_hit <= 24
        else:
            assert len(history) == len(points)


def _tune_cmd(d: Path, out: Path, budget: int, *extra: str) -> list[str]:
    from qcc.models import bundled_model_path

    return [sys.executable, "-m", "qcc.cli", "tune", str(bundled_model_path()),
            "--calib", str(d / "calib.npz"), "--eval", str(d / "eval.npz"), "--labels", str(d / "labels.npy"),
            "--max-loss", "1.5", "--budget", str(budget), "--quiet", "-o", str(out), "--space", *FAST, *extra]


def test_tune_kill9_resume_and_export(fashion, tmp_path):
    """kill -9 during a trial, run again: no trial lost, none repeated; the exported artifact is the
    journal's best and measures what its trial measured; the report is one self-contained page."""
    e, d = fashion
    cmd = _tune_cmd(d, tmp_path / "out", 6, "--objective", "size")
    journal = tmp_path / "out" / "journal.jsonl"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.is_file() and journal.read_text().count('"type": "trial"') >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, before = read(journal)
    assert 2 <= len(before) < 6
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=180)   # an existing run: not silently resumed
    assert again.returncode == 2 and "--resume continues its trials, --force starts over" in again.stderr
    run = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    _, after = read(journal)
    keys = [t["key"] for t in after]
    assert len(after) == 6 and len(set(keys)) == 6
    assert [t["key"] for t in after[:len(before)]] == [t["key"] for t in before]   # kept, not redone
    assert [t["trial"] for t in after] == list(range(1, 7))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    ok = [t for t in after if t["metrics"].get("loss", math.inf) <= 1.5]
    best = min(ok, key=lambda t: t["metrics"]["size_bytes"])
    assert summary["best"]["trial"] == best["trial"]
    art = qcc.load(tmp_path / "out" / "best")
    assert art.report["fidelity"]["outputs"]["logits"]["accuracy_drop_points"] == pytest.approx(best["metrics"]["loss"])
    assert (tmp_path / "out" / "best" / "model.qdq.onnx").stat().st_size == pytest.approx(
        best["metrics"]["size_bytes"], rel=0.01)
    y = art.run({"input": e.eval["input"][:4]})[0]
    assert y.shape == (4, 10)
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "src='http" not in html
    for png in ("loss.png", "pareto.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tune_errors(fashion, tmp_path, capsys):
    from qcc.cli import main

    _, d = fashion
    cmd = _tune_cmd(d, tmp_path / "o", 2, "--objective", "size")[3:]
    cmd[cmd.index("--max-loss") + 1] = "inf"
    assert main(cmd) == 2 and "needs --max-loss" in capsys.readouterr().err
    assert main(_tune_cmd(d, tmp_path / "o2", 2, "--space", "nonsense=1")[3:]) == 2
    assert "unknown search dimension" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()


def _configs(prepared):
    _, space, _, _ = prepared
    base = space.base_point()
    return [space.to_config({**base, "pass:bias-correction": False, "calibration": c}).to_dict()
            for c in ("minmax", "percentile-99.99")]


def test_process_workers_match_serial(fashion, evaluator, prepared):
    from qcc.autotune.parallel import EvaluatorSpec, ProcessExecutor

    e, _ = fashion
    configs = _configs(prepared)
    ex = ProcessExecutor(EvaluatorSpec(str(e.onnx_path), e.calib, e.eval, e.labels), workers=2)
    try:
        got = dict(ex.run(list(enumerate(configs))))
    finally:
        ex.close()
    for i, cfg in enumerate(configs):
        assert got[i]["loss"] == evaluator(QuantConfig(**cfg))["loss"]
        assert got[i]["size_bytes"] == evaluator(QuantConfig(**cfg))["size_bytes"]


def test_ray_local_matches_serial(fashion, evaluator, prepared):
    pytest.importorskip("ray")
    from qcc.autotune.parallel import EvaluatorSpec, RayExecutor

    e, _ = fashion
    configs = _configs(prepared)
    ex = RayExecutor(EvaluatorSpec(str(e.onnx_path), e.calib, e.eval, e.labels), "local", workers=1)
    try:
        got = dict(ex.run(list(enumerate(configs))))
    finally:
        ex.close()
    for i, cfg in enumerate(configs):
        assert got[i]["fidelity"]["logits"]["kl"] == evaluator(QuantConfig(**cfg))["fidelity"]["logits"]["kl"]
