"""MetaSchedule tuning on top of the rule-based CPU schedules (backends/tvm/tune.py): a tuned build
still matches onnxruntime, the tuning database persists and a second build reuses it without new
trials, and bad --tune flags fail clearly."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper as oh

from conftest import compile_quiet, make_model

from qcc import QccError
from qcc.backends import onnxruntime as ort_backend
from qcc.backends import tvm as tvm_backend
from qcc.backends.tvm import tune

RNG = np.random.default_rng(7)


def _qdq_model():
    """int8 MatMul (VNNI rule) feeding a float Softmax (a float fallback function: generic rule)."""
    w = (RNG.standard_normal((64, 128)) * 0.2).astype(np.float32)
    nodes = [oh.make_node("MatMul", ["x", "W"], ["y"]), oh.make_node("Softmax", ["y"], ["z"], axis=-1)]
    m = make_model(nodes, [("x", [1, 64, 64])], [("z", [1, 64, 128])], {"W": w})
    calib = {"x": RNG.standard_normal((8, 64, 64)).astype(np.float32)}
    return compile_quiet(m, calib).qdq_model


@pytest.mark.slow   # MetaSchedule's builder / runner process pools: ~2 min on a loaded 2-core machine
def test_tuned_build_matches_and_database_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("QCC_TUNE_DB", str(tmp_path / "db"))
    target = tvm_backend.detect_target()
    q = _qdq_model()
    feeds = {"x": RNG.standard_normal((1, 64, 64)).astype(np.float32)}
    ref = ort_backend.make_session(q, optimize=False).run(None, feeds)[0]   # the QDQ semantics

    opts = {"trials": 4, "quiet": True, "max_tasks": 1}
    info = tvm_backend.build(q, target, tmp_path / "a", tune=dict(opts))
    t = info["tune"]
    assert t["db"] == str(tmp_path / "db") and t["tasks"] == 1 and t["new_trials"] == 4
    (entry,) = t["functions"].values()
    if isinstance(entry, dict):   # a valid tuned schedule: measured against the rule, the faster one used
        assert t["tuned"] + t["kept_rule"] == 1 and entry["rule_us"] > 0 and entry["tuned_us"] > 0
        assert entry["used"] == ("tuned" if entry["tuned_us"] < entry["rule_us"] else "rule")
    else:                         # every trial failed to build / run: the rule-based schedule stays
        assert entry == "no valid tuned schedule" and t["tuned"] == 0
    assert (tmp_path / "db" / "database_workload.json").stat().st_size > 0
    got = tvm_backend.Runner(tmp_path / "a").run(feeds)[0]
    # softmax probabilities from int8 logits: one output quantization step of slack
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1.5 / 127

    # same workloads again: answered from the database, no new trials, same code choice
    info2 = tvm_backend.build(q, target, tmp_path / "b", tune=dict(opts))
    t2 = info2["tune"]
    assert t2["new_trials"] == 0 and t2["reused"] == 1 and t2["tasks"] == 1
    got2 = tvm_backend.Runner(tmp_path / "b").run(feeds)[0]
    assert np.abs(got2 - ref).max() <= 1.5 / 127


def test_bad_tune_flags_are_errors(tmp_path):
    q = _qdq_model()
    calib = {"x": RNG.standard_normal((4, 64, 64)).astype(np.float32)}
    with pytest.raises(QccError, match="--target llvm"):
        compile_quiet(q, calib, target="onnx", out_dir=tmp_path / "o", tune_trials=4)
    with pytest.raises(QccError, match="positive"):
        compile_quiet(q, calib, target="llvm", out_dir=tmp_path / "l", tune_trials=0)
    with pytest.raises(QccError, match="x86-64 llvm"):
        tune.check_target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"})
    with pytest.raises(QccError, match="positive"):
        tune.Tuner(tvm_backend.detect_target(), 0)
    with pytest.raises(QccError, match="positive"):
        tune.Tuner(tvm_backend.detect_target(), 4, minutes=0)


@pytest.mark.slow   # 8 measured MetaSchedule trials
@pytest.mark.skipif(not tune.has_vnni(tvm_backend.detect_target()), reason="this CPU has no AVX-512 VNNI")
def test_vnni_space_tensorizes_the_packed_dense_exactly(tmp_path):
    """The VNNI search space (tune.vnni_space) on qcc's packed dense kernel: the best schedule found
    runs vpdpbusd and computes the exact int32 products."""
    import tvm
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    from qcc.backends.tvm import compat
    from qcc.backends.tvm.schedules import kernels

    m_, k, n = 32, 96, 64
    x = RNG.integers(0, 256, (m_, k), dtype=np.uint8)
    w = RNG.integers(-128, 128, (k, n), dtype=np.int8)
    wp = kernels.pack_dense_weight(w)
    xt, wt = te.placeholder((m_, k), "uint8", name="x"), te.placeholder(wp.shape, "int8", name="w")
    func = te.create_prim_func([xt, wt, kernels.dense_packed(xt, wt)])
    mod = tvm.IRModule({"main": func})
    tgt = compat.make_target({**tvm_backend.detect_target(), "num-cores": 2})
    tune.prepare_logging()
    db = ms.tir_integration.tune_tir(mod, tgt, str(tmp_path / "ms"), max_trials_global=8, num_trials_per_iter=8,
                                     space=tune.vnni_space(), database="memory", builder=tune.local_builder())
    sch = ms.tir_integration.compile_tir(db, mod, tgt)
    assert sch is not None
    lib = tvm.tirx.build(sch.mod, target=tgt)
    out = tvm.runtime.tensor(np.zeros((m_, n), np.int32))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(wp), out)
    np.testing.assert_array_equal(out.numpy(), x.astype(np.int64) @ w.astype(np.int64))
    assert "vpdpbusd" in lib.inspect_source("asm")
