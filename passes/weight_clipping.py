"""Weight clipping: each weight channel's quantization range chosen by its rounding + clipping error.

A symmetric weight quantizer with scale s maps a channel w_c to

    Q_s(w_c) = s * clip(round(w_c / s), -q, q)          (q = 127 for int8, 7 for int4)

and the max-abs rule s = max|w_c| / q spends the whole grid on the channel's largest weight. With
heavy-tailed weights (the usual case after BatchNorm folding, and badly so at 4 bits) a smaller range
trades a little clipping error on the few largest weights for finer steps on all the others. Per
channel c the pass takes

    alpha_c* = argmin_{alpha in A} || w_c - Q_{s(alpha)}(w_c) ||^2,     s(alpha) = alpha * max|w_c| / q,

over a grid A of ratios in [ALPHA_MIN, 1] (1 is in A, so the error never grows), and rewrites

    w_c  ->  w_hat_c = clip(w_c, -alpha_c* max|w_c|, alpha_c* max|w_c|).

The quantizer's max-abs scale of w_hat_c is s(alpha_c*) (also after power-of-two rounding: the
candidates are scored with the scale the quantizer will compute), and rounding w_hat_c on it is
Q_{s(alpha_c*)}(w_c): the QDQ graph holds exactly the chosen quantization. The float model keeps w;
only the quantized copy reads w_hat (ctx.weights, as AdaRound's rounded weights). Data-free: no
statistics, no calibration run. Measured bias correction, run after it, removes the mean shift that
clipping adds to a layer's output.

Reference: Banner et al. 2019, Post-training 4-bit quantization of convolution networks for rapid
deployment (clipping by quantization MSE); the per-channel MSE weight range of NNCF / AIMET.
"""

from __future__ import annotations

import numpy as np

from ..qparams import quantize_values, weight_scales
from .registry import Pass, PassContext

ALPHA_MIN = 0.5
STEPS = 51          # ratios 0.50, 0.51, ..., 1.00


def channel_errors(w: np.ndarray, qtype, axis: int | None, alpha: float, power_of_two: bool) -> tuple[np.ndarray, np.ndarray]:
    """(w clipped at alpha * max|w_c|, squared quantization error of w per channel) for one ratio."""
    reduce = tuple(i for i in range(w.ndim) if i != axis) if axis is not None else None
    amax = np.abs(w).max(axis=reduce, keepdims=True)
    clipped = np.clip(w, -alpha * amax, alpha * amax).astype(np.float32)
    scale = weight_scales(clipped, qtype, axis, power_of_two)
    codes = quantize_values(clipped, scale, 0, qtype, axis, narrow=True).astype(np.float32)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    err = (w - codes * scale.reshape(shape)) ** 2
    return clipped, err.sum(axis=reduce) if reduce else err.sum()


def clip_weight(w: np.ndarray, qtype, axis: int | None, power_of_two: bool = False) -> tuple[np.ndarray, float, float]:
    """(w_hat, error with max-abs scales, error with the chosen ranges) for one weight tensor."""
    w = w.astype(np.float32)
    best, best_err = channel_errors(w, qtype, axis, 1.0, power_of_two)
    max_abs_err = float(np.sum(best_err))
    for alpha in np.linspace(ALPHA_MIN, 1.0, STEPS)[:-1]:
        clipped, err = channel_errors(w, qtype, axis, float(alpha), power_of_two)
        better = err < best_err
        if np.any(better):
            mask = better if axis is None else np.expand_dims(better, tuple(i for i in range(w.ndim) if i != axis))
            best = np.where(mask, clipped, best)
            best_err = np.where(better, err, best_err)
    return best, max_abs_err, float(np.sum(best_err))


def clip_weights(plan, power_of_two: bool) -> tuple[dict[str, np.ndarray], list[dict]]:
    """w_hat for every integer weight of the plan whose error the clipping lowers; one row per weight."""
    weights, rows = {}, []
    for spec in plan.weights:
        value = spec.node.inputs[spec.index]
        if spec.qtype.is_float or value.const_value is None:
            continue
        w = value.const_value.numpy()
        w_hat, before, after = clip_weight(w, spec.qtype, spec.axis, power_of_two)
        rows.append({"weight": value.name, "bits": spec.qtype.bits, "mse_before": before / w.size,
                     "mse_after": after / w.size})
        if after < before:
            weights[value.name] = w_hat
    return weights, rows


# ---- registration -------------------------------------------------------------------------------
def _run(ctx: PassContext) -> dict:
    from ..plan import build_plan

    weights, rows = clip_weights(build_plan(ctx.model, ctx.config, ctx.stats), ctx.config.power_of_two)
    ctx.weights = {**(ctx.weights or {}), **weights}
    before = sum(r["mse_before"] for r in rows)
    after = sum(r["mse_after"] for r in rows)
    return {"layers": len(rows), "clipped": len(weights), "mse_ratio": after / before if before else 1.0}


def _check(config) -> str | None:
    if "adaround" in config.passes:
        return "weight-clipping and adaround both choose the quantized weights: pass one of them"
    return None


PASS = Pass(
    name="weight-clipping", phase="weights", order=45,
    summary="per-channel weight ranges chosen by quantization MSE (clip ratio 0.5-1), not max |w|",
    where="every integer conv / gemm / matmul weight (kept where it lowers the error)",
    run=_run, check=_check,
    after=("mixed-precision",),            # scores the bits mixed precision chose
    before=("bias-correction-analytic",),  # whose shifts must see the clipped weights
    describe=lambda s: (f"weight clipping: {s['clipped']}/{s['layers']} weights clipped, weight "
                        f"quantization MSE {s['mse_ratio']:.3f}x of max-abs"),
    reference="Banner et al. 2019, Post-training 4-bit quantization of convolution networks for rapid deployment")
