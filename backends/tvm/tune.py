"""MetaSchedule tuning on top of the rule-based CPU schedules (``qcc compile --tune TRIALS``).

The x86 LLVM build (schedules/) gives every fused PrimFunc a rule-based schedule; qcc's int8
kernels get VNNI-tensorized rules, the float ones a row rule (softmax, layer norm) or a generic one
(parallel + vectorize), or none at all (the rule failed). Tuning targets the fused functions whose
rule is "generic", "rows", "matmul" (TVM's activation x activation matmul) or failed, and on VNNI
CPUs the int8 kernels too (below).

For each such function f (static shapes only):

    tuned(f)  = best schedule MetaSchedule finds for f in TRIALS measured trials (TVM's default CPU
                rules, or the VNNI space below for the int8 kernels), stored in a persistent JSON
                database keyed by the workload's structural hash and the target;
    chosen(f) = tuned(f) if time(tuned(f)) < time(rule(f)) else rule(f)

with both times measured side by side here (median of repeated runs of the function alone), so
tuning never makes a build slower. The database lives in $QCC_TUNE_DB or
~/.cache/qcc/tune-db/<target-hash>/; a workload already tuned with >= TRIALS trials is not tuned
again (trials.json in the same folder counts the trials spent per workload; logs/<workload>/ keeps
MetaSchedule's logs), so a second compile
of the same model runs no new trials. ``minutes`` bounds the search: once spent, the remaining
functions keep what the database already has (or the rule-based schedule).

On AVX-512 VNNI targets the int8 kernel functions (qcc's packed conv / dense, rule "conv" or
"dense") are tuned too, in a search space whose tiling rule tensorizes with vpdpbusd
(MultiLevelTilingWithIntrin on the re-registered intrinsic of schedules/intrin.py; the weights
are already packed [.., N/16, .., K/4, 16, 4], so the 16 x 4 tiles are contiguous). As the probe
notes found, that space must not rewrite layouts (no RewriteLayout postproc) and must not
vectorize beyond the intrinsic (max_vectorize_extent = 0). The same keep-the-faster rule applies:
MetaSchedule's tile sizes replace the rule's 7 x 2 pixel x channel-block tile only where measured
faster.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import tvm
import tvm_ffi

from qcc.errors import QccError

from . import compat, schedules
from .schedules.intrin import VNNI_16x4, has_vnni, is_x86_llvm
from .schedules.kernels import CONV_BLOCK, DENSE_BLOCK

TUNED_RULES = ("generic", "matmul", "rows")   # plus failed rules: the functions tuning goes after
VNNI_RULES = (CONV_BLOCK, DENSE_BLOCK)  # tuned in the VNNI space on VNNI targets
MIN_US = 5.0                            # functions faster than this (rule-based) are not tuned
_CHUNK = 16                             # trials per tune_tir call: the time budget is checked between calls
# MetaSchedule's default 30 s per build is the time a worker takes to start and import TVM on a busy
# 2-core machine: every trial then "fails" and nothing is tuned. Building a candidate takes ~1 s.
BUILD_TIMEOUT_S = 180


def db_dir(target: dict) -> Path:
    """The tuning database folder for `target` ($QCC_TUNE_DB overrides the cache location)."""
    env = os.environ.get("QCC_TUNE_DB")
    if env:
        return Path(env)
    key = hashlib.sha1(json.dumps(target, sort_keys=True).encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "qcc" / "tune-db" / key


def check_target(target) -> None:
    if not (isinstance(target, dict) and is_x86_llvm(target)):
        raise QccError("--tune needs an x86-64 llvm target (MetaSchedule tuning runs and measures on this host)")


def _static_args(func):
    """Random inputs for a PrimFunc's buffers, or None when a shape is symbolic."""
    rng = np.random.default_rng(0)
    args = []
    for p in func.params:
        shape = []
        for d in getattr(p, "shape", None) or ():    # TIR params in 0.27 carry their buffer's shape / dtype
            if not isinstance(d, tvm.tirx.IntImm):
                return None
            shape.append(int(d))
        if not getattr(p, "shape", None):
            return None
        dtype = str(p.dtype)
        if dtype.startswith("float"):
            a = rng.standard_normal(shape).astype(dtype)
        elif dtype == "bool":
            a = rng.integers(0, 2, shape).astype(bool)
        else:
            a = rng.integers(-8, 8, shape).astype(dtype) if dtype.startswith("int") else \
                rng.integers(0, 16, shape).astype(dtype)
        args.append(a)
    return args


def _main(func):
    return func.with_attr("global_symbol", "main")


def prepare_logging() -> None:
    """MetaSchedule's logger quiet, and only its own handlers left on it: each tuning run rebuilds
    the logging config from the logger's handlers by name, and fails on one it did not create (an
    unnamed handler gives "'NoneType' object has no attribute 'format'")."""
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    ms_logger.setLevel(logging.WARNING)
    for h in list(ms_logger.handlers):
        if not (h.get_name() or "").startswith("tvm.s_tir.meta_schedule"):
            ms_logger.removeHandler(h)


def local_builder():
    """MetaSchedule's local builder with BUILD_TIMEOUT_S per candidate."""
    from tvm.s_tir import meta_schedule as ms

    return ms.builder.LocalBuilder(timeout_sec=BUILD_TIMEOUT_S)


def vnni_space():
    """MetaSchedule's CPU space with the tiling rule tensorizing int8 reductions by vpdpbusd."""
    from tvm.s_tir import meta_schedule as ms

    rules = [
        ms.schedule_rule.AutoInline(into_producer=False, into_consumer=True, inline_const_tensor=True,
                                    disallow_if_then_else=True, require_injective=True, require_ordered=True),
        ms.schedule_rule.MultiLevelTilingWithIntrin(
            VNNI_16x4, structure="SSRSRS", tile_binds=None, max_innermost_factor=64, vector_load_lens=None,
            reuse_read=None, reuse_write=ms.schedule_rule.ReuseType(req="may", levels=[1, 2], scope="global")),
        # max_vectorize_extent=0: wider vectorization of the tensorized nest fails to build ("Cannot
        # broadcast lanes=16", TVM probe notes)
        ms.schedule_rule.ParallelizeVectorizeUnroll(max_jobs_per_core=16, max_vectorize_extent=0,
                                                    unroll_max_steps=[0, 16, 64, 512], unroll_explicit=True),
        ms.schedule_rule.RandomComputeLocation(),
    ]
    # no RewriteLayout: the weights are packed already, a second layout rewrite breaks the tiles
    postprocs = [ms.postproc.DisallowDynamicLoop(), ms.postproc.RewriteParallelVectorizeUnroll(),
                 ms.postproc.RewriteReductionBlock(), ms.postproc.RewriteTensorize(vectorize_init_loop=True)]
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=postprocs,
                                             mutator_probs=ms.Mutator.create("llvm"))


def time_function(func, tgt, arrays, repeat: int = 5) -> float:
    """Median seconds of one call of `func` built alone for `tgt`."""
    rt = tvm.tirx.build(tvm.IRModule({"main": _main(func)}), target=tgt)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    f = rt.time_evaluator("main", dev, number=3, repeat=repeat, min_repeat_ms=20)
    return float(np.median(f(*args).results))


class _Trials:
    """trials.json: measured trials spent per workload (structural hash) in this database."""

    def __init__(self, folder: Path):
        self.path = folder / "trials.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def get(self, key: str) -> int:
        return int(self.data.get(key, 0))

    def add(self, key: str, n: int) -> None:
        self.data[key] = self.get(key) + n
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


class Tuner:
    """Tunes the weakly scheduled PrimFuncs of one build and records what it did."""

    def __init__(self, target: dict, trials: int, minutes: float | None = None, quiet: bool = False,
                 all_functions: bool = False, max_tasks: int | None = None):
        if trials < 1:
            raise QccError(f"--tune needs a positive number of trials, got {trials}")
        if minutes is not None and minutes <= 0:
            raise QccError(f"--tune-minutes must be positive, got {minutes}")
        check_target(target)
        self.target, self.trials, self.quiet, self.all = target, int(trials), quiet, all_functions
        self.vnni = has_vnni(target)
        self.max_tasks = max_tasks
        self.deadline = None if minutes is None else time.monotonic() + 60.0 * minutes
        self.tgt = compat.make_target({**target, "num-cores": os.cpu_count() or 1})
        self.folder = db_dir(target)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.originals: dict = {}
        self.rules: dict = {}     # function -> the rule schedules.schedule_pass gave it
        self.info = {"db": str(self.folder), "trials_requested": self.trials, "tasks": 0, "tuned": 0,
                     "reused": 0, "new_trials": 0, "kept_rule": 0, "tune_s": 0.0, "functions": {}}

    # -- passes around schedules.schedule_pass -------------------------------------------------
    def capture_pass(self):
        @tvm.transform.module_pass(opt_level=0, name="QccTuneCapture")
        def _capture(mod, _ctx):
            self.originals = {gv.name_hint: f for gv, f in mod.functions_items()
                              if isinstance(f, tvm.tirx.PrimFunc)}
            return mod
        return _capture

    def tune_pass(self):
        @tvm.transform.module_pass(opt_level=0, name="QccTune")
        def _tune(mod, _ctx):
            t0 = time.perf_counter()
            candidates = []
            for gv, func in list(mod.functions_items()):
                if not isinstance(func, tvm.tirx.PrimFunc) or gv.name_hint not in self.originals:
                    continue
                rule = self.rules.get(gv.name_hint, "failed")
                if not (self.all or rule.startswith("failed") or rule in TUNED_RULES
                        or (self.vnni and rule in VNNI_RULES)):
                    continue
                arrays = _static_args(self.originals[gv.name_hint])
                if arrays is None:
                    self.info["functions"][gv.name_hint] = "skipped: symbolic shape"
                    continue
                try:
                    t_rule = time_function(func, self.tgt, arrays)
                except Exception as exc:  # noqa: BLE001 - TVM's default code that does not build alone
                    self.info["functions"][gv.name_hint] = f"skipped: {type(exc).__name__}"
                    continue
                if t_rule * 1e6 < MIN_US:
                    continue        # too small for a measured trial to pay off
                candidates.append((t_rule, gv, func, arrays, self.vnni and rule in VNNI_RULES))
            # the slowest functions first: a time budget or max_tasks leaves the cheap ones
            candidates.sort(key=lambda c: -c[0])
            for t_rule, gv, func, arrays, vnni in candidates[:self.max_tasks]:
                new = self._tune_one(gv.name_hint, self.originals[gv.name_hint], func, arrays, t_rule, vnni)
                if new is not None:
                    mod[gv] = new
            self.info["tune_s"] = round(self.info["tune_s"] + time.perf_counter() - t0, 3)
            return mod
        return _tune

    # -- one function ---------------------------------------------------------------------------
    def _tune_one(self, name, original, rule_func, arrays, t_rule, vnni=False):
        from tvm.s_tir import meta_schedule as ms

        self.info["tasks"] += 1
        wl = tvm.IRModule({"main": _main(original)})
        key = str(tvm_ffi.structural_hash(wl))
        db = ms.database.JSONDatabase(work_dir=str(self.folder))
        counts = _Trials(self.folder)
        done = counts.get(key)
        if done >= self.trials:
            self.info["reused"] += 1
        else:
            done = self._search(name, wl, db, key, counts, done, vnni)
        sch = db.query_schedule(wl, target=self.tgt, workload_name="main") if db.has_workload(wl) else None
        if sch is None:
            self.info["functions"][name] = "no valid tuned schedule"
            return None
        tuned = sch.mod["main"].without_attr("global_symbol")
        for k, v in (original.attrs or {}).items():     # the fused function's own attributes back
            tuned = tuned.with_attr(k, v)
        tuned = tuned.with_attr("tir.is_scheduled", True)
        try:
            t_tuned = time_function(tuned, self.tgt, arrays)
        except Exception as exc:  # noqa: BLE001 - a tuned schedule that does not build alone: keep the rule
            self.info["functions"][name] = f"kept rule: {type(exc).__name__}"
            self.info["kept_rule"] += 1
            return None
        entry = {"rule_us": round(t_rule * 1e6, 2), "tuned_us": round(t_tuned * 1e6, 2), "trials": done,
                 "space": "vnni" if vnni else "default"}
        if t_tuned < t_rule:
            self.info["tuned"] += 1
            self.info["functions"][name] = {**entry, "used": "tuned"}
            return tuned
        self.info["kept_rule"] += 1
        self.info["functions"][name] = {**entry, "used": "rule"}
        return None

    def _search(self, name, wl, db, key, counts, done, vnni=False):
        from tvm.s_tir import meta_schedule as ms
        from tqdm import tqdm

        bar = tqdm(total=self.trials, initial=done, desc=f"tune {name}", unit="trial", disable=self.quiet,
                   leave=False)
        prepare_logging()
        try:
            while done < self.trials:
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    self.info["time_budget_hit"] = True
                    break
                n = min(_CHUNK, self.trials - done)
                work = self.folder / "logs" / key     # MetaSchedule's logs: why a trial failed
                ms.tir_integration.tune_tir(wl, target=self.tgt, work_dir=str(work), max_trials_global=n,
                                            num_trials_per_iter=n, database=db, seed=done, builder=local_builder(),
                                            **({"space": vnni_space()} if vnni else {}))
                done += n
                counts.add(key, n)
                self.info["new_trials"] += n
                bar.update(n)
        finally:
            bar.close()
        return done


def compile_module(mod, target: dict, trials: int, minutes: float | None = None, quiet: bool = False,
                   all_functions: bool = False, max_tasks: int | None = None):
    """schedules.compile_module with MetaSchedule tuning of the weakly scheduled functions.
    Returns (executable, seconds, schedule info as schedules.compile_module's, tuning info)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    tuner = Tuner(target, trials, minutes, quiet, all_functions, max_tasks)
    t0 = time.perf_counter()
    tgt = compat.make_target(target)
    fast, info = schedules.optimize(mod, target)

    @tvm.transform.module_pass(opt_level=0, name="QccTunedCPUPipeline")
    def _pipeline(m, _ctx):
        with tgt:
            seq = tvm.transform.Sequential(cpu.library_dispatch_passes(tgt) + cpu.legalize_passes(tgt)
                                           + [tuner.capture_pass(), schedules.schedule_pass(tuner.rules), tuner.tune_pass()]
                                           + cpu.dataflow_lower_passes(tgt) + cpu.finalize_passes(tgt))
            return seq(m)

    ex = tvm.compile(fast, target=tgt, relax_pipeline=_pipeline)
    return ex, time.perf_counter() - t0, {**info, "functions": schedules.rule_counts(tuner.rules)}, tuner.info
