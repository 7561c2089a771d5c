"""Fidelity of a quantized model against its float original.

    top-1 agreement        mean[argmax f(x) == argmax q(x)]
    confident agreement    the same, over samples where max softmax(f(x)) >= 0.5
    KL(f || q)             mean over samples of sum_c p_c (log p_c - log q_c),  p = softmax(f), q = softmax(q)
    cosine                 mean over samples of <f, q> / (|f| |q|)   (flattened per sample)
    SQNR (dB)              10 log10( sum f^2 / sum (f - q)^2 )
"""

from __future__ import annotations

import numpy as np


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    noise = np.sum((ref - test.astype(np.float64)) ** 2)
    signal = np.sum(ref**2)
    if noise == 0:
        return float("inf")
    if signal == 0:
        return float("-inf")
    return float(10 * np.log10(signal / noise))


def cosine(ref: np.ndarray, test: np.ndarray) -> float:
    a = ref.reshape(len(ref), -1).astype(np.float64)
    b = test.reshape(len(test), -1).astype(np.float64)
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    return float(np.mean(np.where(den > 0, num / np.maximum(den, 1e-30), np.where(both_zero, 1.0, 0.0))))


def classification(ref_logits: np.ndarray, q_logits: np.ndarray) -> dict[str, float]:
    p = softmax(ref_logits.astype(np.float64))
    q = softmax(q_logits.astype(np.float64))
    agree = np.argmax(ref_logits, -1) == np.argmax(q_logits, -1)
    confident = p.max(-1) >= 0.5
    kl = np.sum(p * (np.log(np.maximum(p, 1e-30)) - np.log(np.maximum(q, 1e-30))), axis=-1)
    return {"agreement": float(agree.mean()),
            "agreement_confident": float(agree[confident].mean()) if confident.any() else float("nan"),
            "confident_fraction": float(confident.mean()),
            "kl": float(kl.mean())}


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, -1) == labels))


def fidelity(ref_outputs: list[np.ndarray], q_outputs: list[np.ndarray], output_names: list[str],
             labels: np.ndarray | None = None) -> dict[str, dict]:
    """Per-output fidelity: cosine and SQNR always; classification metrics for [N, C] logits."""
    result: dict[str, dict] = {}
    for name, ref, q in zip(output_names, ref_outputs, q_outputs):
        if not np.issubdtype(ref.dtype, np.floating):
            result[name] = {"exact_match": float(np.mean(ref == q))}
            continue
        entry = {"cosine": cosine(ref, q), "sqnr_db": sqnr_db(ref, q)}
        if ref.ndim == 2 and ref.shape[1] > 1:
            entry.update(classification(ref, q))
            if labels is not None and len(labels) == len(ref):
                entry["accuracy_fp32"] = accuracy(ref, labels)
                entry["accuracy_quantized"] = accuracy(q, labels)
                entry["accuracy_drop_points"] = 100 * (entry["accuracy_fp32"] - entry["accuracy_quantized"])
        result[name] = entry
    return result
