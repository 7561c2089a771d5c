"""`qcc tune`: search quantization configs for one model, journal every trial, export the best.

    prepare   evaluator (caches), model statistics once (features.py), the space (space.py),
              every point's features
    resume    trials already in OUT/journal.jsonl count toward the budget and are never re-run
    loop      ask the searcher for a batch (one trial per worker), run it (parallel.py), journal each
              trial as it finishes
    export    the best trial meeting --max-loss (best objective) -> OUT/best, written by qcc's
              compile (same artifact writer, same statistics: the same QDQ graph the trial measured)
    report    OUT/loss.png, OUT/pareto.png, OUT/report.html, OUT/summary.json

The first trial of a fresh run is qcc compile's default config when the space holds it, so the
report always shows what tuning gained over not tuning.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
from qcc import extras, loss_metrics
from qcc.artifact import file_sha256, save_json
from qcc.config import QuantConfig
from qcc.errors import QccError

from . import features, report
from .evaluate import LATENCY_TVM
from .journal import JOURNAL, Journal, read
from .objective import OBJECTIVES, Goal
from .parallel import EvaluatorSpec, make_executor
from .searchers import make_searcher
from .space import check_restrict, default_space

BEST = "best"


def prepare(evaluator, target: str, restrict: dict | None = None):
    """(model statistics, space, points, feature matrix) - everything computed once per run."""
    cfg = evaluator.with_batch(QuantConfig(passes=[]))
    _, float_proto, digest = evaluator.float_graph(cfg)
    act = evaluator.statistics(float_proto, digest, features.activation_roots(float_proto))
    stats = features.model_stats(float_proto, act)
    space = default_space(stats, ir.serde.deserialize_model(float_proto), target, restrict=restrict)
    points = space.points()
    if not points:
        raise QccError("the search space is empty")
    return stats, space, points, features.featurize(space, stats, points)


def data_digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
        elif isinstance(a, dict):
            for k in sorted(a):
                h.update(k.encode())
                h.update(np.ascontiguousarray(a[k]).tobytes())
        else:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def load_prior(paths, names: list[str], goal: Goal):
    """Trials of earlier runs (their journals) as (X, loss, value) for the cost model's warm start;
    journals whose features differ in layout are skipped."""
    X, loss, value = [], [], []
    for p in paths or []:
        p = Path(p)
        header, trials = read(p / JOURNAL if p.is_dir() else p)
        if header is None or header.get("feature_names") != names:
            continue
        for t in trials:
            if "features" not in t:
                continue
            X.append(t["features"])
            loss.append(goal.loss(t["metrics"]))
            try:
                value.append(goal.value(t["metrics"]))
            except KeyError:  # e.g. no latency measured in that run
                value.append(math.nan)
    if not X:
        return None
    return np.array(X, np.float64), np.array(loss), np.array(value)


def tune(model: str, calib, eval_data=None, labels=None, *, out: str | Path, target: str = "onnx",
         max_loss: float = math.inf, budget: int = 20, objective: str = "accuracy", searcher: str = "quantune",
         workers: int = 1, ray_address: str | None = None, seed: int = 0, loss: str = "auto",
         transfer=(), restrict: dict | None = None, batch: int | None = None, mcpu: str | None = None,
         export: bool = True, resume: bool = False, force: bool = False, log=None) -> dict:
    """resume: continue the trials journaled in `out` (an interrupted run); force: discard them and start
    over; neither: an existing tuning folder is an error, so no earlier run is silently extended or lost."""
    log = log or (lambda m: None)
    if objective not in OBJECTIVES:
        raise QccError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")
    if budget < 1:
        raise QccError("--budget must be >= 1")
    if objective != "accuracy" and not math.isfinite(max_loss):
        raise QccError(f"--objective {objective} needs --max-loss (the accuracy budget the {objective} is traded for)")
    check_restrict(restrict)
    if ray_address:
        extras.check("ray", "--ray")   # before any folder is made
    if objective == "latency" and target not in ("onnx",) + LATENCY_TVM:
        raise QccError(f"--objective latency measures on this machine: use --target onnx, "
                       f"{' or '.join(LATENCY_TVM)} (not {target!r})")
    out = Path(out)
    _check_out(out, resume, force)
    goal = Goal(objective, max_loss)
    spec = EvaluatorSpec(str(model), calib, eval_data, labels, target, loss, objective == "latency", mcpu)
    t0 = time.perf_counter()
    evaluator = spec.build()
    stats, space, points, X = prepare(evaluator, target, restrict)
    names = features.feature_names(space)
    log(f"space: {len(points)} configs over {', '.join(f'{k} ({len(v)})' for k, v in space.dims.items())}; "
        f"loss = {evaluator.loss}")
    index = {space.key(p): i for i, p in enumerate(points)}

    if force and out.exists():
        shutil.rmtree(out)   # a tuning folder (checked above): its journal, reports and best/
    out.mkdir(parents=True, exist_ok=True)
    journal = Journal(out / JOURNAL)
    journal.start({"model": str(model), "model_sha256": file_sha256(Path(model)),
                   "data_sha256": data_digest(evaluator.calib, evaluator.eval_data, evaluator.labels),
                   "loss": evaluator.loss, "loss_definitions": loss_metrics.DEFINITIONS, "target": target,
                   "space": space.to_json(), "feature_names": names})
    history: dict[int, tuple[float, float]] = {}
    for t in journal.trials:
        i = index.get(t["key"])
        if i is not None:
            history[i] = (goal.loss(t["metrics"]), _value(goal, t["metrics"]))
    if history:
        log(f"resuming: {len(history)} trials already in {journal.path}")

    prior = load_prior(transfer, names, goal)
    kw = {}
    if searcher == "quantune":
        proxy = X[:, names.index("wa_sqnr_wmean")] if objective == "accuracy" else None
        kw = {"features": X, "prior": prior, "proxy": proxy}
    search = make_searcher(searcher, points, seed, goal, **kw)
    base = space.base_point()
    default = index.get(space.key(base)) if base is not None else None
    executor = make_executor(spec, workers, ray_address, evaluator if workers == 1 and not ray_address else None)
    batch = batch or executor.workers
    try:
        while len(history) < min(budget, len(points)):
            n = min(batch, budget - len(history))
            picks = [default] if default is not None and default not in history and not journal.trials else []
            picks += [i for i in search.ask(n - len(picks), history) if i not in picks]
            if not picks:
                break
            jobs = [(i, space.to_config(points[i]).to_dict()) for i in picks]
            for i, metrics in executor.run(jobs):
                # numbered from 1, as the log, the summary and the report show them
                record = {"trial": len(journal.trials) + 1, "key": space.key(points[i]), "point": points[i],
                          "config": space.to_config(points[i]).to_dict(), "metrics": metrics,
                          "searcher": searcher, "seed": seed, "features": X[i].tolist()}
                journal.append(record)
                history[i] = (goal.loss(metrics), _value(goal, metrics))
                log(_line(len(journal.trials), budget, searcher, metrics, points[i], evaluator.loss))
    finally:
        executor.close()

    trials = [t for t in journal.trials if t["key"] in index]
    ranked = sorted(trials, key=lambda t: goal.rank_key(goal.loss(t["metrics"]), _value(goal, t["metrics"])))
    best = ranked[0] if ranked and goal.feasible(ranked[0]["metrics"]) else None
    baseline = next((t for t in trials if default is not None and t["key"] == space.key(points[default])), None)
    summary = {
        "model": str(model), "target": target, "objective": objective, "max_loss": max_loss,
        "loss": evaluator.loss, "searcher": searcher, "seed": seed, "space_size": len(points),
        "trials": len(trials), "seconds": time.perf_counter() - t0,
        "best": _brief(best) if best else None,
        "default_config": _brief(baseline) if baseline else None,
        "artifact": None,
    }
    if best is not None and export:
        result = evaluator.export(QuantConfig(**best["config"]), out / BEST, force=True)
        summary["artifact"] = str(result.out_dir)
        summary["artifact_size_bytes"] = result.report["size"]["qdq_bytes"]
        log(f"best: trial {best['trial']} loss {best['metrics']['loss']:.4g} -> {result.out_dir}")
    write_report(out, trials, goal, summary, evaluator.loss, searcher, best)
    save_json(out / "summary.json", summary)
    if best is None:
        lowest = min((goal.loss(t["metrics"]) for t in trials), default=math.inf)
        raise QccError(f"no config met --max-loss {max_loss:g} in {len(trials)} trials (lowest loss {lowest:.4g}); "
                       f"report in {out / 'report.html'}")
    return summary


def _check_out(out: Path, resume: bool, force: bool) -> None:
    if resume and force:
        raise QccError("--resume continues an earlier run and --force discards it: give one of them")
    if out.exists() and not out.is_dir():
        raise QccError(f"output path {out} is a file, not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        if resume:
            raise QccError(f"--resume: {out} holds no earlier tuning run")
        return
    if not (out / JOURNAL).is_file():
        raise QccError(f"output folder {out} exists and is not a qcc tuning folder (no {JOURNAL}); refusing to use it")
    if not (resume or force):
        raise QccError(f"tuning folder {out} already exists (--resume continues its trials, --force starts over)")


def _value(goal: Goal, metrics: dict) -> float:
    try:
        return goal.value(metrics)
    except KeyError:
        return math.inf


def _brief(t: dict) -> dict:
    m = t["metrics"]
    return {"trial": t["trial"], "point": t["point"], "loss": m.get("loss"), "size_bytes": m.get("size_bytes"),
            "size_ratio": m.get("size_ratio"), "latency_ms": m.get("latency_ms")}


def _line(n, budget, searcher, metrics, point, loss_name) -> str:
    if metrics.get("error"):
        return f"trial {n}/{budget} [{searcher}] failed: {metrics['error']}"
    lat = f", {metrics['latency_ms']:.3f} ms" if "latency_ms" in metrics else ""
    return (f"trial {n}/{budget} [{searcher}] {loss_name} loss {metrics['loss']:.4g}, "
            f"{metrics['size_bytes'] / 1e3:.1f} kB{lat}  {json.dumps(point, sort_keys=True)}")


def write_report(out: Path, trials: list[dict], goal: Goal, summary: dict, loss_name: str, searcher: str,
                 best: dict | None) -> None:
    losses = [goal.loss(t["metrics"]) for t in trials]
    numbers = [t.get("trial", k + 1) for k, t in enumerate(trials)]   # as journaled: 1-based, as the log
    images = [report.plot_loss({searcher: losses}, out / "loss.png", ylabel=f"loss ({loss_name})",
                               trials={searcher: numbers})]
    latency = goal.objective == "latency"
    costs = [t["metrics"].get("latency_ms" if latency else "size_bytes", math.inf) for t in trials]
    costs = [c if latency else c / 1e3 for c in costs]
    chosen = trials.index(best) if best in trials else None
    images.append(report.plot_pareto(costs, losses, out / "pareto.png",
                                     "latency (ms)" if latency else "QDQ model size (kB)",
                                     f"loss ({loss_name})", goal.max_loss, chosen, labels=numbers))
    rows = []
    for t in sorted(trials, key=lambda t: goal.rank_key(goal.loss(t["metrics"]), _value(goal, t["metrics"]))):
        m = t["metrics"]
        row = {"trial": t["trial"], "loss": m.get("loss", math.inf), "size kB": m.get("size_bytes", 0) / 1e3}
        if latency:
            row["latency ms"] = m.get("latency_ms", math.inf)
        row["config"] = m.get("error") or json.dumps(t["point"], sort_keys=True)
        rows.append(row)
    report.write_html(out / "report.html", f"qcc tune: {Path(summary['model']).name}", summary, images, rows,
                      best_trial=best["trial"] if best else None)
