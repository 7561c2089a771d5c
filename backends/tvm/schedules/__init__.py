"""Fast CPU code for the integer Relax the TVM backend lowers to (x86 LLVM targets).

    compile_module(mod, target) -> (ex, s, info)  what pipeline.build calls: the two steps below and
                                                tvm.compile (TVM's default build off x86)
    optimize(mod, target) -> (mod, info)        before tvm.compile: channels-last rewrite with
                                                packed int8 kernels (layout.py, kernels.py),
                                                requantize rounding as lrint (rounding.py)
    relax_pipeline(target, report)              the default CPU pipeline with the rule-based
                                                schedules (schedule.py) after FuseTIR

On a non-x86 or non-LLVM target both are no-ops (the module unchanged, TVM's default pipeline).
"""

from __future__ import annotations

import time

import tvm
from tvm import relax

from .. import compat
from .intrin import has_avx2, has_vnni, is_x86_llvm
from .layout import channels_last, int8_macs
from .rounding import lrint_requantize
from .schedule import schedule_function


def optimize(mod, target: dict):
    if not is_x86_llvm(target):
        return mod, {"scheduled": False}
    vnni = has_vnni(target)
    total = int8_macs(mod)
    mod, counts, macs = channels_last(mod, vnni, has_avx2(target))
    mod, lrint = lrint_requantize(mod)
    return mod, {"scheduled": True, "vnni": vnni, "kernels": counts, "kernel_macs": macs, "int8_macs": total,
                 "lrint_requantize": lrint}


def schedule_pass(report: dict):
    """The rule-based schedule on every PrimFunc of the module; `report` gets fused function -> the rule
    applied (or why it failed), which is how the build info and the tuner learn what each got."""

    @tvm.transform.module_pass(opt_level=0, name="QccScheduleCPU")
    def _schedule(mod, _ctx):
        updates = {}
        for gv, func in mod.functions_items():
            if isinstance(func, tvm.tirx.PrimFunc):
                try:
                    new, rule = schedule_function(func)
                except Exception as exc:  # noqa: BLE001 - keep TVM's default code for a function a rule fails on
                    report[gv.name_hint] = f"failed: {_why(exc)}"
                    continue
                report[gv.name_hint] = rule
                updates[gv] = new
        for gv, func in updates.items():
            mod[gv] = func
        return mod
    return _schedule


def rule_counts(report: dict) -> dict:
    """schedule_pass's report -> {rule: functions} ("failed" for every failure)."""
    counts: dict = {}
    for rule in report.values():
        key = "failed" if rule.startswith("failed") else rule
        counts[key] = counts.get(key, 0) + 1
    return counts


def _why(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1:]}"


def relax_pipeline(target: dict, report: dict):
    """TVM's CPU pipeline with qcc's schedules after FuseTIR (TVM's default pipeline elsewhere); `report`
    as for schedule_pass."""
    tgt = compat.make_target(target)
    if not is_x86_llvm(target):
        return relax.get_default_pipeline(tgt)
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="QccCPUPipeline")
    def _pipeline(mod, _ctx):
        with tgt:
            seq = tvm.transform.Sequential(cpu.library_dispatch_passes(tgt) + cpu.legalize_passes(tgt)
                                           + [schedule_pass(report)] + cpu.dataflow_lower_passes(tgt)
                                           + cpu.finalize_passes(tgt))
            return seq(mod)
    return _pipeline


def compile_module(mod, target: dict):
    """Compile integer Relax for `target` with qcc's CPU schedules. Returns (executable, seconds, info):
    info says what optimize substituted and which rule each function got ({} off x86)."""
    if not is_x86_llvm(target):
        return (*compat.compile_module(mod, target), {})
    t0 = time.perf_counter()
    report: dict = {}
    try:
        fast, info = optimize(mod, target)
        ex = tvm.compile(fast, target=compat.make_target(target), relax_pipeline=relax_pipeline(target, report))
    except Exception as exc:  # noqa: BLE001 - a schedule LLVM / TIR rejects: TVM's default build, reported
        ex, _ = compat.compile_module(mod, target)
        return ex, time.perf_counter() - t0, {"scheduled": False, "error": _why(exc)}
    return ex, time.perf_counter() - t0, {**info, "functions": rule_counts(report)}
