"""Quantune vs grid, random and genetic search, on a space small enough to grid exhaustively.

Trials are deterministic (fixed calibration batch size, fixed data), so every point of the space is
evaluated ONCE (the exhaustive grid) and the searchers then query that table instead of recompiling:
the same numbers a live search would get, at a fraction of the cost. The table is cached in
~/.cache/qcc/autotune/ (delete it to re-measure).

    fashion-cnn   labelled Fashion-MNIST test images, loss = accuracy points lost vs FP32
    mobilenetv2   natural-image crops, loss = mean KL(FP32 || quantized)
Space (144 points each): scheme {int8, int8-sym, uint8-sym} x power-of-two {no, yes} x calibration
{minmax, percentile 99.9 / 99.99 / 99.999, entropy, mse} x granularity {per-channel, per-tensor} x
{bias correction off / on (fashion-cnn) | int4 weights on 0 / 25% of the layers (mobilenetv2)}.

Printed per model (one JSON line each): the grid's best loss; for every searcher, the median over 5
seeds of the trials needed to come within the tolerance of it (0.1 accuracy point, or 0.01 KL) and
of the best loss found within a budget of 1/10 of the grid. Then `qcc tune mobilenetv2 --objective
size --max-loss 1` run live (same code path as the CLI) against uniform int8.

    python benchmarks/autotune.py [--models fashion-cnn,mobilenetv2] [--seeds 5] [--skip-size]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
from qcc import models
from qcc.autotune import features
from qcc.autotune.evaluate import TrialEvaluator
from qcc.autotune.objective import Goal
from qcc.autotune.searchers import make_searcher
from qcc.autotune.space import default_space
from qcc.config import QuantConfig
from qcc.passes import registry

CACHE = Path("~/.cache/qcc/autotune").expanduser()
SETUPS = {
    "fashion-cnn": dict(n_calib=256, n_eval=10000, loss="accuracy", tol=0.1, extra={"pass:bias-correction": [False, True]}),
    "mobilenetv2": dict(n_calib=64, n_eval=128, loss="kl", tol=0.01, extra={"int4": [0.0, 0.25]}),
}


def emit(obj) -> None:
    print(json.dumps(obj), flush=True)


def build(name: str):
    s = SETUPS[name]
    entry = models.get(name, n_calib=s["n_calib"], n_eval=s["n_eval"])
    ev = TrialEvaluator(entry.onnx_path, entry.calib, entry.eval, entry.labels, loss=s["loss"])
    _, float_proto, digest = ev.float_graph(ev.with_batch(QuantConfig(passes=[])))
    stats = features.model_stats(float_proto, ev.statistics(float_proto, digest, features.activation_roots(float_proto)))
    restrict = {"scheme": ["int8", "int8-sym", "uint8-sym"], "int4": [0.0], "float_layers": [0]}
    restrict.update({f"pass:{p}": [] for p in registry.names()})
    restrict.update(s["extra"])
    space = default_space(stats, ir.serde.deserialize_model(float_proto), "onnx", base=QuantConfig(passes=[]),
                          restrict=restrict)
    points = space.points()
    return entry, ev, stats, space, points, features.featurize(space, stats, points)


def grid_table(name: str, ev, space, points) -> list[float]:
    key = hashlib.sha256(json.dumps([name, SETUPS[name]["n_eval"], SETUPS[name]["loss"],
                                     [space.key(p) for p in points]], sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = CACHE / f"{name}-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())["loss"]
    losses, t0 = [], time.perf_counter()
    for i, p in enumerate(points):
        try:
            losses.append(float(ev(space.to_config(p))["loss"]))
        except Exception as exc:  # noqa: BLE001 - a config that fails is an infinitely bad point
            print(f"{name}: point {i} failed: {exc}", file=sys.stderr)
            losses.append(math.inf)
        print(f"{name}: grid {i + 1}/{len(points)} loss {losses[-1]:.4g} ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr)
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"points": points, "loss": losses, "seconds": time.perf_counter() - t0}))
    return losses


def simulate(searcher: str, points, X, table: list[float], budget: int, seed: int, proxy, stop_at: float,
             batch: int = 1):
    """Loss of each trial, in order, until the budget is spent and a loss <= stop_at was seen."""
    goal = Goal("accuracy")
    kw = {"features": X, "proxy": proxy} if searcher == "quantune" else {}
    s = make_searcher(searcher, points, seed, goal, **kw)
    history: dict[int, tuple[float, float]] = {}
    order = []
    while len(history) < len(points) and (len(history) < budget or min(order, default=math.inf) > stop_at):
        picks = s.ask(batch if len(history) >= budget else min(batch, budget - len(history)), history)
        if not picks:
            break
        for i in picks:
            history[i] = (table[i], table[i])
            order.append(table[i])
    return order


def trials_to_reach(order: list[float], target: float) -> int | None:
    for n, v in enumerate(order, 1):
        if v <= target:
            return n
    return None


def compare(name: str, seeds: int) -> None:
    entry, ev, stats, space, points, X = build(name)
    table = grid_table(name, ev, space, points)
    best = min(table)
    tol = SETUPS[name]["tol"]
    grid_n = len(points)
    budget = max(1, grid_n // 10)
    proxy = X[:, features.feature_names(space).index("wa_sqnr_wmean")]
    row = {"bench": "autotune_search", "model": name, "loss": ev.loss, "space": grid_n, "grid_best_loss": best,
           "tolerance": tol, "grid_trials": grid_n,
           "grid_order_first_within_tol": trials_to_reach(table, best + tol), "budget": budget, "seeds": seeds}
    for searcher in ("quantune", "random", "genetic"):
        reach, at_budget = [], []
        for seed in range(seeds):
            order = simulate(searcher, points, X, table, budget, seed, proxy, best + tol)
            n = trials_to_reach(order, best + tol)
            reach.append(n if n is not None else grid_n + 1)
            at_budget.append(min(order[:budget]))
        row[searcher] = {"trials_to_tol_median": float(np.median(reach)), "trials_to_tol": reach,
                         "best_loss_at_budget_median": float(np.median(at_budget)),
                         "best_loss_at_budget": at_budget}
    q = row["quantune"]
    row["quantune_trials_over_grid"] = q["trials_to_tol_median"] / grid_n
    # equal budget (1/10 of the grid): the median best loss found
    row["quantune_beats_random_and_genetic_at_budget"] = all(
        q["best_loss_at_budget_median"] < row[o]["best_loss_at_budget_median"] for o in ("random", "genetic"))
    emit(row)


def size_run(budget: int) -> None:
    """`qcc tune mobilenetv2 --objective size --max-loss 1` (same call the CLI makes), with the passes
    that each cost a minute or more a trial on this model (AdaRound, NoisyQuant, mixed precision's
    per-layer sensitivity runs, equalization, analytic bias correction) left out of the space: the
    int4 / float-layer dimensions are the mixed precision searched here."""
    from qcc.autotune.tune import tune

    entry = models.get("mobilenetv2")
    slow = ("adaround", "noisyquant", "mixed-precision", "equalization", "bias-correction-analytic")
    restrict = {f"pass:{p}": [False] for p in slow if p in registry.names()}
    with tempfile.TemporaryDirectory(prefix="qcc-tune-bench-") as tmp:
        t0 = time.perf_counter()
        try:
            summary = tune(str(entry.onnx_path), entry.calib, entry.eval, entry.labels, out=tmp, max_loss=1.0,
                           budget=budget, objective="size", restrict=restrict, seed=0,
                           log=lambda m: print(m, file=sys.stderr))
        except Exception as exc:  # noqa: BLE001 - report that no config met the budget
            emit({"bench": "autotune_size", "model": "mobilenetv2", "error": str(exc)})
            return
        base, best = summary["default_config"], summary["best"]
        # uniform int8 = qcc compile's default config (trial 1 of every fresh run)
        emit({"bench": "autotune_size", "model": "mobilenetv2", "objective": "size", "max_loss": 1.0,
              "loss": summary["loss"], "budget": budget, "trials": summary["trials"],
              "seconds": round(time.perf_counter() - t0, 1),
              "uniform_int8_bytes": base["size_bytes"] if base else None,
              "uniform_int8_loss": base["loss"] if base else None,
              "best_bytes": best["size_bytes"], "best_loss": best["loss"], "best_point": best["point"],
              "artifact_bytes": summary.get("artifact_size_bytes"),
              "size_vs_uniform_int8": best["size_bytes"] / base["size_bytes"] if base else None,
              "command": "qcc tune mobilenetv2 --max-loss 1 --objective size --budget "
                         f"{budget} --space " + " ".join(f"{k}=false" for k in restrict) + " -o OUT"})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="fashion-cnn,mobilenetv2")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--size-budget", type=int, default=16)
    p.add_argument("--skip-size", action="store_true")
    args = p.parse_args()
    for name in [m for m in args.models.split(",") if m]:
        compare(name, args.seeds)
    if not args.skip_size:
        size_run(args.size_budget)


if __name__ == "__main__":
    main()
