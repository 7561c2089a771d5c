"""Steady-state latency of the model suite (models/suite.py), in the manner of MLPerf's SingleStream.

    python benchmarks/suite_latency.py [--models a,b,c] [--warmup 50] [--runs 300] [--rounds 3]
                                       [--threads N] [--modes equal,default] [--out file.jsonl]

Per model: export (once, into the zoo cache), ``qcc compile --target llvm`` (the CLI, in its own
process), onnxruntime FP32, onnxruntime int8 (``quantize_static``: QDQ, per-channel, U8 / S8
MinMax, on the same calibration samples: benchmarks/ort_baseline.py) and, where ``import
openvino, nncf`` works (the ``bench`` extra), OpenVINO FP32 (inference precision pinned to f32)
and NNCF's default int8. Batch 1, inputs static.

Timing: each engine in its own process (spawned: no thread pool shared or inherited); in each of
``--rounds`` rounds the engines take turns A B C ... , each making ``--warmup`` untimed then
``--runs / --rounds`` timed calls back to back, no pauses; median and p90 over all timed calls.
Two thread settings (``--modes``): ``equal`` (every engine at ``--threads``, default the CPUs this
process may use) and ``default`` (each engine as it comes: qcc.load(), onnxruntime's
SessionOptions(), OpenVINO's compile_model with no config). Each engine's thread count is in
``engine_info``: at its default qcc gets TVM's pool size, which TVM caps at ``TVM_NUM_THREADS`` or,
unset, half the logical CPUs on x86 (so 1 on a 2-vCPU machine, whatever qcc.load asks for); in
``equal`` mode the qcc worker sets ``TVM_NUM_THREADS`` so the pool really has ``--threads``.

Float share: qcc's artifact runs once more in its own process with a Relax VM instrument around
every VM call (``--profile-runs`` runs, per-kernel medians). A kernel whose tensor arguments are all
floating point is a float kernel; one that mixes an integer tensor with a float tensor at least half
as large as its largest integer tensor is a conversion (quantize / dequantize at a float region's
edge); the rest are integer kernels (their float arguments are per-channel scales). Shares are of
the instrumented time (kernels + VM builtins); ``float_share`` is the float + conversion kernels (those
that read or write a float activation); qcc's integer conv / dense / depthwise kernels (``qcc_conv2d``,
``qcc_dense``, ``qcc_dwconv2d`` in the name) whose fused epilogue reads or writes a float activation
(dequantize + SiLU, say) are counted apart, as ``float_epilogue_share``: their time is mostly the
integer multiply-accumulates. Float math fused inside a kernel whose tensors are all
integer (dequantize -> op -> quantize in one function) counts as integer: the split comes from
argument dtypes, not from the kernel body. report.json's float fallbacks are listed too.

One JSON line per model on stdout (also appended to ``--out``); ratios are qcc's median over the
other engine's (below 1: qcc is faster).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MLPERF_MIN_WARMUP, MLPERF_MIN_RUNS = 50, 300


def emit(obj: dict, out: Path | None) -> None:
    line = json.dumps(obj, default=float)
    print(line, flush=True)
    if out is not None:
        with out.open("a") as f:
            f.write(line + "\n")


def _quiet_child() -> None:
    """In a child process: stdout -> stderr (OpenVINO / NNCF print), so stdout stays JSON lines."""
    os.dup2(2, 1)
    sys.stdout = sys.stderr


# ------------------------------------------------------------------------------------------------
# engines: each in its own process
# ------------------------------------------------------------------------------------------------

def _make_call(kind: str, path: str, threads: int | None, feeds: dict):
    """(callable, info) for one engine; threads None = the engine's default."""
    if kind == "qcc":
        if threads is not None:
            # TVM caps its pool at TVM_NUM_THREADS, read once at start-up (unset on x86: half the
            # logical CPUs, 1 on a 2-vCPU machine), whatever qcc.load(threads=) asks for
            os.environ["TVM_NUM_THREADS"] = str(threads)
        import qcc

        art = qcc.load(path, threads=threads)
        return (lambda: art.run(feeds)), {"threads": art._runner().threads}
    if kind == "ort":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads is not None:
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        return (lambda: sess.run(None, feeds)), {"threads": threads or "onnxruntime default"}
    if kind in ("ov_fp32", "ov_int8"):
        import openvino as ov

        config = {"INFERENCE_NUM_THREADS": threads} if threads is not None else {}
        if kind == "ov_fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"   # else bf16 on CPUs that have it
        compiled = ov.Core().compile_model(path, "CPU", config)
        req = compiled.create_infer_request()
        info = {k.lower(): str(compiled.get_property(k)).replace("<Type: '", "").rstrip("'>") for k in
                ("INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT")}
        return (lambda: req.infer(feeds)), info
    raise ValueError(kind)


def _worker(conn, kind: str, path: str, threads: int | None, feeds: dict) -> None:
    _quiet_child()
    try:
        call, info = _make_call(kind, path, threads, feeds)
        call()   # the first call compiles / allocates: fail here, not mid-measurement
    except Exception as exc:   # noqa: BLE001 - reported to the parent as one line
        conn.send(("error", f"{type(exc).__name__}: {str(exc)[:300]}"))
        return
    conn.send(("ready", info))
    while (msg := conn.recv()) is not None:
        n, warmup = msg
        for _ in range(warmup):
            call()
        times = np.empty(n)
        for i in range(n):
            t = time.perf_counter()
            call()
            times[i] = time.perf_counter() - t
        conn.send(("times", times))


def measure(engines: dict[str, tuple[str, str]], feeds: dict, threads: int | None, runs: int, warmup: int,
            rounds: int) -> tuple[dict, dict, dict]:
    """({engine: {median_ms, p90_ms, runs}}, {engine: info}, {engine: error}) for engines
    {name: (kind, path)}; an engine that cannot start is reported and left out."""
    ctx = mp.get_context("spawn")
    procs, conns, infos, errors = {}, {}, {}, {}
    try:
        for name, (kind, path) in engines.items():
            parent, child = ctx.Pipe()
            procs[name] = ctx.Process(target=_worker, args=(child, kind, path, threads, feeds), daemon=True)
            procs[name].start()
            child.close()   # the child's end: so recv() sees EOF if the child dies
            conns[name] = parent
        for name in list(conns):
            try:
                status, detail = conns[name].recv()
            except EOFError:
                status, detail = "error", "worker process died"
            if status == "ready":
                infos[name] = detail
            else:
                errors[name] = detail
                del conns[name]
        times = {k: [] for k in conns}
        for _ in range(rounds):
            for name, conn in conns.items():
                conn.send((runs // rounds, warmup))
                times[name].append(conn.recv()[1])
    finally:
        for conn in conns.values():
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for p in procs.values():
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    ms = {}
    for name, parts in times.items():
        t = np.concatenate(parts) * 1e3
        ms[name] = {"median_ms": round(float(np.median(t)), 4), "p90_ms": round(float(np.percentile(t, 90)), 4),
                    "runs": int(t.size)}
    return ms, infos, errors


# ------------------------------------------------------------------------------------------------
# float share: per-kernel timing of the qcc artifact
# ------------------------------------------------------------------------------------------------

INTEGER_KERNEL = re.compile(r"qcc_(conv2d|dense|dwconv2d)")   # qcc's integer conv / dense / depthwise


def _kernel_class(symbol: str, args) -> str:
    tensors = [(str(a.dtype), int(np.prod([int(d) for d in a.shape]))) for a in args
               if hasattr(a, "dtype") and hasattr(a, "shape")]
    is_float = [d.startswith(("float", "bfloat")) for d, _ in tensors]
    if tensors and all(is_float):
        return "float"
    ints = [n for (d, n), f in zip(tensors, is_float) if not f]
    if any(f and n * 2 >= max(ints, default=0) for (d, n), f in zip(tensors, is_float)):
        return "float_epilogue" if INTEGER_KERNEL.search(symbol) else "conversion"
    return "integer"


def _profile_worker(conn, artifact: str, threads: int, feeds: dict, runs: int) -> None:
    _quiet_child()
    try:
        os.environ["TVM_NUM_THREADS"] = str(threads)   # see _make_call
        import qcc

        art = qcc.load(artifact, threads=threads)
        vm = art._runner().vm
        for _ in range(10):
            art.run(feeds)
        per_run, current, state = [], {}, {}

        def instrument(func, symbol, before, ret, *args):
            if before:
                state["t"] = time.perf_counter()
            else:
                dt = time.perf_counter() - state["t"]
                cls = "builtin" if str(symbol).startswith("vm.builtin") else _kernel_class(str(symbol), args)
                key = (str(symbol), cls)
                current[key] = current.get(key, 0.0) + dt
            return 0   # VMInstrumentReturnKind.NO_OP: run the call

        vm.set_instrument(instrument)
        for _ in range(runs):
            current.clear()
            art.run(feeds)
            per_run.append(dict(current))
        keys = per_run[0].keys()
        med = {k: float(np.median([r.get(k, 0.0) for r in per_run])) * 1e3 for k in keys}
        conn.send(("ok", med))
    except Exception as exc:   # noqa: BLE001
        conn.send(("error", f"{type(exc).__name__}: {str(exc)[:300]}"))


def float_share(artifact: Path, threads: int, feeds: dict, runs: int) -> dict:
    report = json.loads((artifact / "report.json").read_text())
    backend = report.get("backend") or {}
    fallback = backend.get("float_fallback", [])   # [{"op", "reason", "count"}] from the lowering
    out = {"float_fallback_ops": sum(int(f.get("count", 1)) for f in fallback),
           "float_fallback": [f"{f.get('op')} x{f.get('count', 1)}: {str(f.get('reason'))[:80]}" for f in fallback][:12],
           "float_nodes_in_qdq": len(report.get("float_nodes", [])),
           "unsupported_ops": report.get("unsupported_ops", [])}
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_profile_worker, args=(child, str(artifact), threads, feeds, runs), daemon=True)
    p.start()
    child.close()
    try:
        status, med = parent.recv()
    except EOFError:
        status, med = "error", "profiling process died"
    p.join(timeout=30)
    if status != "ok":
        out["float_share"] = None
        out["note"] = f"per-kernel timing failed ({med}): time share not measured"
        return out
    total = sum(med.values())
    classes = ("float", "conversion", "float_epilogue", "integer")
    by = {c: sum(v for (s, k), v in med.items() if k == c) for c in (*classes, "builtin")}
    out.update({
        "float_share": round((by["float"] + by["conversion"]) / total, 4),
        "all_float_share": round(by["float"] / total, 4), "conversion_share": round(by["conversion"] / total, 4),
        "float_epilogue_share": round(by["float_epilogue"] / total, 4),
        "integer_share": round(by["integer"] / total, 4), "vm_builtin_share": round(by["builtin"] / total, 4),
        "instrumented_ms": round(total, 3), "kernels": {c: sum(1 for (_, k) in med if k == c) for c in classes},
        "top_float_kernels": [{"kernel": s[:90], "class": k, "ms": round(v, 4)} for (s, k), v in
                              sorted(med.items(), key=lambda kv: -kv[1]) if k in ("float", "conversion")][:5],
        "method": f"Relax VM instrument, median of {runs} runs at {threads} threads; shares of instrumented time"})
    return out


# ------------------------------------------------------------------------------------------------
# preparing the engines' models
# ------------------------------------------------------------------------------------------------

def qcc_compile(model: Path, calib: dict, out: Path, reuse: bool) -> tuple[float | None, str | None]:
    """``qcc compile --target llvm`` in its own process; (seconds, error line or None)."""
    if reuse and (out / "manifest.json").is_file() and (out / "model.so").is_file():
        return None, None
    npz = out.parent / "calib.npz"
    np.savez(npz, **calib)
    cmd = [sys.executable, "-m", "qcc.cli", "compile", str(model), "--target", "llvm", "--calib", str(npz),
           "-o", str(out), "--force", "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    secs = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return secs, (lines[-1] if lines else f"exit code {proc.returncode}")[:400]
    return secs, None


def _openvino_worker(conn, model: str, calib: dict, out_dir: str, transformer: bool) -> None:
    _quiet_child()
    try:
        import nncf
        import openvino as ov

        m = ov.convert_model(model)
        m.reshape({name: [1, *v.shape[1:]] for name, v in calib.items()})   # batch 1, static
        fp32, int8 = Path(out_dir) / "ov_fp32.xml", Path(out_dir) / "ov_int8.xml"
        ov.save_model(m, str(fp32), compress_to_fp16=False)
        n = len(next(iter(calib.values())))
        data = nncf.Dataset([{k: v[i:i + 1] for k, v in calib.items()} for i in range(n)])
        kw = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
        q = nncf.quantize(m, data, subset_size=n, **kw)
        ov.save_model(q, str(int8), compress_to_fp16=False)
        conn.send(("ok", {"openvino": ov.__version__.split("-")[0], "nncf": nncf.__version__}))
    except Exception as exc:   # noqa: BLE001
        conn.send(("error", f"{type(exc).__name__}: {str(exc)[:300]}"))


def openvino_models(model: Path, calib: dict, out: Path, transformer: bool) -> tuple[dict, str | None]:
    """({"openvino_fp32": xml, "openvino_int8": xml}, versions or note), converted in their own process."""
    try:
        import importlib.util

        if not (importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf")):
            return {}, "openvino / nncf not installed (pip install 'qcc[bench]'): OpenVINO skipped"
    except ValueError:
        return {}, "openvino / nncf not importable: OpenVINO skipped"
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_openvino_worker, args=(child, str(model), calib, str(out), transformer), daemon=True)
    p.start()
    child.close()
    try:
        status, detail = parent.recv()
    except EOFError:
        status, detail = "error", "OpenVINO conversion process died"
    p.join(timeout=60)
    if status != "ok":
        return {}, f"OpenVINO / NNCF failed: {detail}"
    return {"openvino_fp32": str(out / "ov_fp32.xml"), "openvino_int8": str(out / "ov_int8.xml")}, detail


# ------------------------------------------------------------------------------------------------

def bench_model(name: str, args, work: Path) -> dict:
    from ort_baseline import ort_quantize_static
    from qcc.models import suite

    entry = suite.SUITE[name]
    z = suite.get(name, n_calib=args.n_calib, n_eval=1)
    feeds = {k: np.ascontiguousarray(v[:1]) for k, v in z.calib.items()}
    info = suite.export_info(name)
    fig = {"figure": "suite_latency", "model": name, "kind": entry.kind, "exporter": info.get("exporter"),
           "opset": info.get("opset"), "idiom": entry.idiom, "inputs": {k: list(v.shape) for k, v in feeds.items()},
           "cpus": len(os.sched_getaffinity(0)), "warmup": args.warmup, "runs": args.runs, "rounds": args.rounds,
           "mlperf_minimums_met": args.warmup >= MLPERF_MIN_WARMUP and args.runs >= MLPERF_MIN_RUNS}
    if info.get("fallback"):
        fig["export_fallback"] = info["fallback"]
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    engines: dict[str, tuple[str, str]] = {}
    secs, err = qcc_compile(Path(z.onnx_path), z.calib, folder / "qcc", args.reuse)
    fig["qcc_compile_s"] = secs
    if secs is None and not err:
        fig["qcc_artifact_reused"] = True
    if err:
        fig["qcc_error"] = err
    else:
        engines["qcc"] = ("qcc", str(folder / "qcc"))
    engines["onnxruntime_fp32"] = ("ort", str(z.onnx_path))
    try:
        engines["onnxruntime_int8"] = ("ort", str(ort_quantize_static(Path(z.onnx_path), z.calib, folder / "ort_int8.onnx")))
    except Exception as exc:   # noqa: BLE001 - report, keep the other engines
        fig["onnxruntime_int8_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    if not args.no_openvino:
        ov_paths, note = openvino_models(Path(z.onnx_path), z.calib, folder, entry.transformer)
        engines.update({k: ("ov_" + k.split("_")[1], v) for k, v in ov_paths.items()})
        fig["openvino"] = note
    for mode in args.modes:
        threads = args.threads if mode == "equal" else None
        ms, infos, errors = measure(engines, feeds, threads, args.runs, args.warmup, args.rounds)
        res = {"threads": threads or "each engine's default", "ms": ms, "engine_info": infos}
        if errors:
            res["errors"] = errors
        if "qcc" in ms:
            res["ratios"] = {f"qcc_over_{k}": round(ms["qcc"]["median_ms"] / v["median_ms"], 3)
                             for k, v in ms.items() if k != "qcc"}
        fig[f"{mode}_threads"] = res
    if "qcc" in engines:
        fig["float"] = float_share(folder / "qcc", args.threads, feeds, args.profile_runs)
    return fig


def main(argv=None) -> int:
    from qcc.models import suite
    from qcc.threads import default_threads

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(suite.names()), help="comma-separated suite names")
    ap.add_argument("--warmup", type=int, default=MLPERF_MIN_WARMUP, help="untimed calls before each block")
    ap.add_argument("--runs", type=int, default=MLPERF_MIN_RUNS, help="timed calls per engine, all rounds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=default_threads(), help="threads for every engine in 'equal' mode")
    ap.add_argument("--modes", default="equal,default", help="equal, default or both")
    ap.add_argument("--n-calib", type=int, default=8, help="calibration samples (qcc, quantize_static, NNCF)")
    ap.add_argument("--profile-runs", type=int, default=20, help="instrumented runs for the float share")
    ap.add_argument("--no-openvino", action="store_true")
    ap.add_argument("--work", help="keep exports' engines and qcc artifacts here (default: a temporary folder)")
    ap.add_argument("--reuse", action="store_true", help="with --work: reuse qcc artifacts already built there")
    ap.add_argument("--out", help="also append the JSON lines to this file")
    args = ap.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    if not set(args.modes) <= {"equal", "default"} or args.runs < args.rounds or args.warmup < 0:
        ap.error("--modes takes equal / default; --runs must be >= --rounds and --warmup >= 0")
    out = Path(args.out) if args.out else None
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in suite.SUITE]
    if unknown:
        ap.error(f"unknown suite models {unknown}; available: {', '.join(suite.names())}")
    with tempfile.TemporaryDirectory(prefix="qcc-suite-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        for name in names:
            try:
                emit(bench_model(name, args, work), out)
            except Exception as exc:   # noqa: BLE001 - one model failing does not end the suite
                emit({"figure": "suite_latency", "model": name, "error": f"{type(exc).__name__}: {str(exc)[:400]}"}, out)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))   # ort_baseline
    raise SystemExit(main())
