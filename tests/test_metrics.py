"""Fidelity metrics (metrics.py) against direct numpy formulas."""

from __future__ import annotations

import numpy as np
import pytest

from qcc.metrics import accuracy, classification, cosine, fidelity, softmax, sqnr_db


def test_sqnr_and_cosine():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((20, 7)).astype(np.float32)
    noise = rng.standard_normal((20, 7)).astype(np.float32) * 0.01
    expect = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum(noise.astype(np.float64) ** 2))
    assert sqnr_db(ref, ref + noise) == pytest.approx(expect, abs=1e-3)
    assert sqnr_db(ref, ref) == float("inf")
    assert sqnr_db(ref, 2 * ref) == pytest.approx(0.0, abs=1e-9)
    cos = np.mean([a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(ref.astype(np.float64), -ref)])
    assert cosine(ref, -ref) == pytest.approx(cos) == pytest.approx(-1.0)
    assert cosine(ref, 3 * ref) == pytest.approx(1.0)


def test_cosine_zero_vs_nonzero_is_not_a_match():
    ref = np.zeros((2, 4), np.float32)
    ref[1] = 1.0
    q = np.ones((2, 4), np.float32)
    assert cosine(ref, q) < 0.75  # sample 0: zero reference vs a non-zero output
    assert cosine(np.zeros((1, 3)), np.zeros((1, 3))) == 1.0


def test_classification_metrics():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((500, 10)) * 3
    q = ref + rng.standard_normal((500, 10)) * 0.5
    m = classification(ref, q)
    assert m["agreement"] == pytest.approx(np.mean(ref.argmax(1) == q.argmax(1)))
    p, pq = softmax(ref), softmax(q)
    assert np.allclose(p.sum(1), 1.0)
    assert m["kl"] == pytest.approx(np.mean(np.sum(p * np.log(p / pq), axis=1)), rel=1e-9)
    conf = p.max(1) >= 0.5
    assert m["confident_fraction"] == pytest.approx(conf.mean())
    assert m["agreement_confident"] == pytest.approx(np.mean((ref.argmax(1) == q.argmax(1))[conf]))
    labels = ref.argmax(1)
    labels[:50] = (labels[:50] + 1) % 10
    assert accuracy(ref, labels) == pytest.approx(0.9)


def test_fidelity_per_output():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((30, 5)).astype(np.float32)
    emb = rng.standard_normal((30, 8)).astype(np.float32)
    ids = rng.integers(0, 9, (30, 4))
    labels = logits.argmax(1)
    res = fidelity([logits, emb[:, :1], ids], [logits, emb[:, :1] * 1.1, ids], ["logits", "one", "ids"], labels)
    assert res["logits"]["agreement"] == 1.0 and res["logits"]["accuracy_drop_points"] == 0.0
    assert res["logits"]["accuracy_fp32"] == 1.0
    assert "agreement" not in res["one"]  # [N, 1] is not a classifier output
    assert res["one"]["sqnr_db"] == pytest.approx(20.0, abs=1e-4)
    assert res["ids"] == {"exact_match": 1.0}
