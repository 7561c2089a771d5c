"""4/8-bit mixed precision (passes/mixed_precision.py): the knapsack choice is the exact optimum (brute force)
and within budget, a layer's sensitivity is the KL of the model with only that layer rounded (checked with a
separately built onnxruntime model), and the compiled W4A8 graph keeps the chosen weights int8 within budget."""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnx
import pytest
from onnx import numpy_helper as nh

from conftest import compile_quiet, config, run
from qcc.passes import mixed_precision as mp


@pytest.mark.parametrize("seed", range(4))
def test_choice_is_the_knapsack_optimum(seed):
    rng = np.random.default_rng(seed)
    numel = {f"w{i}": int(rng.integers(100, 5000)) for i in range(10)}
    sens = {k: float(rng.exponential()) for k in numel}
    budget = float(rng.uniform(0.55, 0.8))
    units = 400
    keep = mp.choose(sens, numel, budget, units=units)
    total = sum(numel.values())
    capacity = budget * total - total / 2
    assert sum(numel[k] / 2 for k in keep) <= capacity + 1e-9
    unit = capacity / units
    cost = {k: math.ceil((numel[k] / 2) / unit - 1e-9) for k in numel}
    best = max(sum(sens[k] for k in subset)
               for r in range(len(numel) + 1) for subset in itertools.combinations(numel, r)
               if sum(cost[k] for k in subset) <= units)
    assert sum(sens[k] for k in keep) == pytest.approx(best, rel=1e-12)


def test_sensitivity_matches_a_rebuilt_model(fashion_paths, fashion_calib):
    model = onnx.load(fashion_paths[0])
    inits = {t.name: t for t in model.graph.initializer}
    names = [n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm")][:3]
    feeds = {"input": fashion_calib["input"][:16]}
    sens = mp.sensitivity(model, {n: 0 for n in names}, feeds, n_samples=16)
    ref = run(model, feeds)[0].astype(np.float64)
    for name in names:
        w = nh.to_array(inits[name])
        s = np.abs(w).reshape(w.shape[0], -1).max(1) / 7
        s = s.reshape((-1,) + (1,) * (w.ndim - 1))
        rebuilt = onnx.ModelProto()
        rebuilt.CopyFrom(model)
        for t in rebuilt.graph.initializer:
            if t.name == name:
                t.CopyFrom(nh.from_array((np.clip(np.rint(w / s), -7, 7) * s).astype(np.float32), name))
        out = run(rebuilt, feeds)[0].astype(np.float64)
        p = np.exp(ref - ref.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
        q = np.exp(out - out.max(1, keepdims=True)); q /= q.sum(1, keepdims=True)
        kl = float((p * (np.log(p) - np.log(q))).sum(1).mean())
        assert sens[name] == pytest.approx(kl, rel=1e-3, abs=1e-7)
        assert sens[name] > 0


def test_pipeline_budget(fashion_paths, fashion_calib):
    """W4A8 with mixed precision at a 0.7 budget: some weights int8, the rest int4, bytes within budget."""
    cfg = config(scheme="w4a8", passes=["mixed-precision"], weight_budget=0.7)
    r = compile_quiet(str(fashion_paths[0]), fashion_calib, config=cfg)
    bits = {spec.qtype.bits for spec in r.plan.weights}
    assert bits == {4, 8}
    used, int8 = mp.qdq_weight_bytes(r.qdq_model)
    assert used <= 0.7 * int8 and used > 0.5 * int8
    assert all(v == "int8" for v in r.manifest["config"]["overrides"].values())
    types = {t.name: t.data_type for t in r.qdq_model.graph.initializer if t.name.endswith("_quantized")}
    assert onnx.TensorProto.INT8 in types.values() and onnx.TensorProto.INT4 in types.values()
