"""AffineQuant (passes/affinequant.py): the learned transform lowers the quantized-output loss and stays
strictly diagonally dominant (so invertible), block-diagonal per head; on the real 2-layer MiniLM the
value -> output (per head) and LayerNorm (diagonal) sites are found and the rewritten float graph equals
the original on real sentences; the pipeline hook runs it before calibration."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from conftest import compile_quiet, config, max_rel_err, run
from qcc.passes import affinequant as aq


def test_learned_block_transform_lowers_loss_and_stays_invertible():
    rng = np.random.default_rng(0)
    k, block = 32, 8
    # correlated channels with an outlier direction inside each block: a rotation helps
    mix = np.kron(np.eye(k // block), rng.standard_normal((block, block)))
    x = (rng.standard_normal((256, k)) @ mix).astype(np.float32)
    x[:, 3] *= 12.0
    w = (rng.standard_normal((k, 16)) * 0.3).astype(np.float32)
    a, info = aq.learn_transform(x, w, block, steps=120)
    assert a.shape == (k // block, block, block)
    assert info["loss"] < 0.9 * info["loss_identity"]
    assert aq.is_strictly_diagonally_dominant(a)
    assert np.abs(a - np.eye(block)).max() > 1e-3             # off-diagonal entries were learned
    inv = np.linalg.inv(a)
    np.testing.assert_allclose(a @ inv, np.broadcast_to(np.eye(block), a.shape), atol=1e-9)
    assert not aq.is_strictly_diagonally_dominant(np.array([[1.0, 1.0], [0.0, 1.0]]))


@pytest.fixture(scope="module")
def minilm2():
    from qcc import models

    return models.get("minilm-2layer", n_calib=16, n_eval=16)


def test_minilm_sites_and_real_sentence_equivalence(minilm2):
    from qcc.canonicalize import canonicalize
    from qcc.loader import load_model

    model, _ = canonicalize(load_model(str(minilm2.onnx_path), None))
    proto = ir.to_proto(model)
    heads = aq.find_head_sites(model)
    assert [s.head_dim for s in heads] == [32, 32]
    assert all(s.value_add is not None and "value" in s.value_mm.name and "output/dense" in s.out_mm.name
               for s in heads)
    summary = aq.apply(model, proto, minilm2.calib, steps=24, rows=96)
    kinds = [p["kind"] for p in summary["per_site"]]
    assert kinds.count("heads") == 2 and kinds.count("layernorm") >= 2 and summary["loss_ratio"] < 1.0
    new = ir.to_proto(model)
    ref, got = run(proto, minilm2.eval), run(new, minilm2.eval)
    assert max_rel_err(ref[0], got[0]) <= 1e-4


def test_pipeline_hook(minilm2, monkeypatch):
    monkeypatch.setattr(aq, "STEPS", 8)
    monkeypatch.setattr(aq, "ROWS", 64)
    calib = {k: v[:8] for k, v in minilm2.calib.items()}
    r = compile_quiet(str(minilm2.onnx_path), calib, config=config(passes=["affinequant"]))
    assert "affinequant_s" in r.report["timings"]
    assert any(t.name.endswith("weight_affine") for t in r.float_model.graph.initializer)
    x = {k: v[:4] for k, v in minilm2.eval.items()}
    assert max_rel_err(run(str(minilm2.onnx_path), x)[0], run(r.float_model, x)[0]) <= 1e-4
