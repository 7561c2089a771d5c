"""CPU speed of TVM-built int8 models (x86 llvm, rule-based schedules, no tuning): JSON lines.

    python benchmarks/cpu_speed.py [--models mobilenetv2,resnet18,minilm] [--runs 30] [--threads 2]

- latency: batch 1, `--threads` threads for every engine, medians of `--runs` calls, each engine in
  its own process, in 5 rotations of per-engine blocks (side by side, so machine load hits all alike):
  the qcc TVM artifact, onnxruntime FP32, onnxruntime int8 QDQ from quantize_static (U8/S8
  per-channel MinMax, as benchmarks/ort_baseline.py) and onnxruntime on qcc's own QDQ model.
  Ratios: tvm / ort_int8 (quantize_static), tvm / ort_qcc_qdq, tvm / ort_fp32.
- compile: MobileNetV2 TVM build seconds (import, lowering, schedules, LLVM, export).
- vnni: the fraction of the model's int8 conv / matmul multiply-accumulates that run in kernels
  whose machine code contains vpdpbusd (each fused function built alone and its assembly read),
  and for the largest conv its achieved int8 GOP/s against the machine's peak:
  peak = measured vpdpbusd/ns summed over one copy of benchmarks/vnni_peak.c per core, run at
  once, x 64 MAC x 2 op (AVX-512 vpdpbusd: 16 lanes x 4 u8*s8 products); without a C compiler,
  estimated as cores x VNNI ports x 64 x 2 x nominal GHz.
- tune (with --tune TRIALS): the model built again with MetaSchedule tuning (backends/tvm/tune.py,
  VNNI space for the int8 kernels, --tune-minutes budget, a fresh database), timed side by side
  with the rule-based build; the tuning report (functions tuned / kept) is printed too.
resnet18 is a torch ResNet-18 (basic blocks [2, 2, 2, 2], random weights; torchvision is not
installed), minilm the zoo all-MiniLM-L6 encoder at 128 tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path

THREADS_DEFAULT = 2

import numpy as np
import onnx


def emit(**kv) -> None:
    print(json.dumps(kv, default=float), flush=True)


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------

def resnet18_onnx(path: Path) -> Path:
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            y = self.b2(self.c2(y))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
            layers, cin = [], 64
            for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
                layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
                cin = cout
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(512, 1000)

        def forward(self, x):
            y = self.layers(self.stem(x))
            return self.fc(torch.flatten(torch.mean(y, dim=(2, 3), keepdim=True), 1))

    torch.manual_seed(0)
    model = ResNet18().eval()
    with torch.no_grad():   # non-trivial BN statistics so the folded weights are not all alike
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.onnx.export(model, torch.randn(1, 3, 224, 224), str(path), input_names=["input"], output_names=["logits"],
                      opset_version=17, dynamic_axes={"input": {0: "batch"}}, dynamo=False)
    return path


def load(name: str, work: Path, n_calib: int):
    """(float onnx path, calibration feeds, one-sample feeds)."""
    from qcc import models

    if name == "resnet18":
        path = resnet18_onnx(work / "resnet18.onnx")
        rng = np.random.default_rng(0)
        calib = {"input": rng.standard_normal((n_calib, 3, 224, 224)).astype(np.float32)}
        return path, calib
    entry = models.get(name, n_calib=n_calib, n_eval=1)
    return Path(entry.onnx_path), entry.calib


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------

def _engine_worker(conn, kind: str, path: str, feeds: dict, threads: int) -> None:
    """One engine in its own process: loads it, then runs `n` timed calls per request."""
    os.environ["TVM_NUM_THREADS"] = str(threads)
    if kind == "tvm":
        from qcc.backends import tvm as tvm_backend

        runner = tvm_backend.Runner(path)
        fn = lambda: runner.run(feeds)   # noqa: E731
    else:
        from qcc.backends import onnxruntime as ort_backend

        sess = ort_backend.make_session(path, threads=threads, fuse_qdq=True)   # onnxruntime as users run it
        fn = lambda: sess.run(None, feeds)   # noqa: E731
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        n, warmup = msg
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        conn.send(times)


def _medians(engines: dict, feeds: dict, threads: int, runs: int, rounds: int = 5, warmup: int = 3,
             settle_s: float = 0.2) -> dict:
    """Median ms per engine; engines = {name: ("tvm", artifact dir) | ("ort", model path)}. Each
    engine runs in its own process (as it would deployed), so one engine's idle worker threads
    (onnxruntime and TVM both spin-wait after a parallel region) never share a process with another's;
    the engines run in blocks of runs/rounds calls, the blocks rotated `rounds` times, so machine
    load hits all alike, with a pause between blocks so no engine's spin-waiting threads overlap
    the next one's calls."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs, conns = {}, {}
    try:
        for name, (kind, path) in engines.items():
            parent, child = ctx.Pipe()
            procs[name] = ctx.Process(target=_engine_worker, args=(child, kind, str(path), feeds, threads), daemon=True)
            procs[name].start()
            conns[name] = parent
        for c in conns.values():
            if c.recv() != "ready":
                raise RuntimeError("engine worker failed to start")
        times = {k: [] for k in engines}
        per = max(1, runs // rounds)
        for _ in range(rounds):
            for name, c in conns.items():
                # the engine timed before spin-waits for ~10 ms after its last call (TVM's pool:
                # 300000 pause instructions; onnxruntime's likewise): let it go to sleep first
                time.sleep(settle_s)
                c.send((per, warmup))
                times[name] += c.recv()
    finally:
        for name, c in conns.items():
            try:
                c.send(None)
            except (BrokenPipeError, OSError):
                pass
        for p in procs.values():
            p.join(timeout=30)
    return {k: float(np.median(v) * 1e3) for k, v in times.items()}


def latency(name: str, target: dict, work: Path, runs: int, threads: int, n_calib: int):
    import qcc
    from ort_baseline import ort_quantize_static
    from qcc.backends import tvm as tvm_backend

    path, calib = load(name, work, n_calib)
    one = {k: v[:1] for k, v in calib.items()}
    res = qcc.compile_model(str(path), calib, progress=False)
    out = work / f"tvm-{name}"
    info = tvm_backend.build(res.qdq_model, target, out, input_shapes=tvm_backend.input_shapes_from(calib))
    qdq_path = work / f"{name}.qcc_qdq.onnx"
    onnx.save(res.qdq_model, str(qdq_path))
    engines = {"tvm_int8": ("tvm", out), "ort_fp32": ("ort", path), "ort_qcc_qdq": ("ort", qdq_path)}
    fig = {}
    try:
        engines["ort_int8"] = ("ort", ort_quantize_static(path, calib, work / f"{name}.ort_qdq.onnx"))
    except Exception as exc:  # noqa: BLE001 - report, keep the other figures
        fig["ort_quantize_static_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    ms = _medians(engines, one, threads, runs)
    t = ms["tvm_int8"]
    emit(figure="latency", model=name, batch=1, threads=threads, runs=runs, mcpu=info["mcpu"],
         **{f"{k}_ms": round(v, 3) for k, v in ms.items()}, **fig,
         tvm_vs_ort_int8=round(t / ms["ort_int8"], 3) if "ort_int8" in ms else None,
         tvm_vs_ort_qcc_qdq=round(t / ms["ort_qcc_qdq"], 3), tvm_vs_ort_fp32=round(t / ms["ort_fp32"], 3),
         bar={"vs_ort_int8": 1.0, "vs_ort_fp32": 0.5}, tvm_build_s=info["build_s"],
         cpu_schedule={k: v for k, v in info.get("cpu_schedule", {}).items() if k in ("vnni", "kernels", "functions")})
    return res.qdq_model, calib


def tuned_latency(name: str, qdq_model, calib, target: dict, work: Path, runs: int, trials: int,
                  minutes: float | None) -> None:
    """Rule-based vs MetaSchedule-tuned build of the same QDQ model, timed side by side."""
    from qcc.backends import tvm as tvm_backend

    one = {k: v[:1] for k, v in calib.items()}
    shapes = tvm_backend.input_shapes_from(calib)
    os.environ["QCC_TUNE_DB"] = str(work / f"tune-db-{name}")    # fresh: the trials are spent here
    t0 = time.perf_counter()
    info = tvm_backend.build(qdq_model, target, work / f"tuned-{name}", input_shapes=shapes,
                             tune={"trials": trials, "minutes": minutes, "quiet": True})
    tune_s = time.perf_counter() - t0
    tvm_backend.build(qdq_model, target, work / f"rule-{name}", input_shapes=shapes)
    tuned, rule = tvm_backend.Runner(work / f"tuned-{name}"), tvm_backend.Runner(work / f"rule-{name}")
    same = all(np.array_equal(a, b) for a, b in zip(tuned.run(one), rule.run(one)))
    del tuned, rule
    ms = _medians({"rule": ("tvm", work / f"rule-{name}"), "tuned": ("tvm", work / f"tuned-{name}")}, one,
                  int(os.environ.get("TVM_NUM_THREADS", THREADS_DEFAULT)), runs)
    t = info["tune"]
    emit(figure="tune", model=name, trials_per_function=trials, minutes=minutes, tune_build_s=round(tune_s, 1),
         rule_ms=round(ms["rule"], 3), tuned_ms=round(ms["tuned"], 3), tuned_vs_rule=round(ms["tuned"] / ms["rule"], 3),
         outputs_identical=same, tasks=t["tasks"], functions_tuned=t["tuned"], functions_kept_rule=t["kept_rule"],
         new_trials=t["new_trials"], time_budget_hit=bool(t.get("time_budget_hit")),
         functions={k: v for k, v in t["functions"].items() if isinstance(v, dict)})


def compile_time(qdq_model, calib, target: dict, work: Path) -> None:
    from qcc.backends import tvm as tvm_backend

    t0 = time.perf_counter()
    info = tvm_backend.build(qdq_model, target, work / "compile-mnv2",
                             input_shapes=tvm_backend.input_shapes_from(calib))
    total = time.perf_counter() - t0
    emit(figure="compile_time", model="mobilenetv2", tvm_build_s=round(total, 2), timings=info["timings"],
         bar_s=60, ok=total <= 60, cpus=os.cpu_count())


def measured_vnni_rate(cores: int) -> float | None:
    """Summed vpdpbusd per ns of `cores` copies of vnni_peak.c running at once (None without a C
    compiler or AVX-512 VNNI): the machine's real int8 peak, turbo clock and VNNI ports included."""
    import shutil
    import subprocess

    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if cc is None:
        return None
    src = Path(__file__).with_name("vnni_peak.c")
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "vnni_peak"
        built = subprocess.run([cc, "-O2", "-mavx512f", "-mavx512bw", "-mavx512vnni", str(src), "-o", str(exe)],
                               capture_output=True)
        if built.returncode != 0:
            return None
        procs = [subprocess.Popen([str(exe)], stdout=subprocess.PIPE, text=True) for _ in range(cores)]
        try:
            outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
        except (subprocess.SubprocessError, ValueError):   # no VNNI (SIGILL) or a garbled line
            return None
    return sum(o["vpdpbusd_per_ns"] for o in outs)


def peak_gops(cores: int) -> dict:
    from qcc.backends.tvm.target import host_cpu_flags

    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mhz = [float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", text)]
    ghz = (max(mhz) / 1000.0) if mhz else float("nan")
    _, flags = host_cpu_flags()
    ports = 2 if "amx_int8" in flags or "avx512_fp16" in flags else 1   # SPR-class: p0 + p5
    out = {"cores": cores, "nominal_ghz": round(ghz, 3), "assumed_vnni_ports_per_core": ports,
           "nominal_peak_int8_gops": round(cores * ports * 64 * 2 * ghz, 1)}
    rate = measured_vnni_rate(cores)
    if rate is not None:
        out.update(vpdpbusd_per_ns=round(rate, 3), peak_int8_gops=round(rate * 64 * 2, 1),
                   derivation="measured: benchmarks/vnni_peak.c on every core at once, "
                              "vpdpbusd/ns x 64 MAC x 2 op")
    else:
        out.update(peak_int8_gops=out["nominal_peak_int8_gops"],
                   derivation="estimated: cores x ports x 64 MAC/vpdpbusd(zmm) x 2 op/MAC x nominal GHz")
    return out


def vnni_report(qdq_model, calib, target: dict, threads: int) -> None:
    """Which fused functions run vpdpbusd, their share of the int8 MACs, and the largest conv's GOP/s."""
    import tvm
    from qcc.backends import tvm as tvm_backend
    from qcc.backends.tvm import compat, schedules
    from qcc.backends.tvm.compat import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    mod, *_ = tvm_backend.lower(qdq_model, tvm_backend.input_shapes_from(calib))
    mod, info = schedules.optimize(mod, target)
    tgt = compat.make_target(target)
    with tgt:
        mod = tvm.transform.Sequential(cpu.library_dispatch_passes(tgt) + cpu.legalize_passes(tgt))(mod)
    calls: dict = {}
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and getattr(v.op, "name", "") == "relax.call_tir":
                calls[v.args[0].name_hint] = calls.get(v.args[0].name_hint, 0) + 1
    vnni_macs, largest = 0, None
    funcs = {}
    for gv, f in mod.functions_items():
        if not isinstance(f, tvm.tirx.PrimFunc) or calls.get(gv.name_hint, 0) == 0:
            continue
        macs = _kernel_macs(f)
        if macs == 0:
            continue
        f, _ = schedules.schedule_function(f)
        lib = tvm.tirx.build(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target=tgt)
        has = "vpdpbusd" in lib.inspect_source("asm")
        funcs[gv.name_hint] = (macs, has, calls[gv.name_hint])
        if has:
            vnni_macs += macs * calls[gv.name_hint]
        if gv.name_hint.startswith("fused_qcc_conv2d") and (largest is None or macs > largest[1]):
            largest = (gv.name_hint, macs, f, lib)
    total = info["int8_macs"]
    # every conv / dense kernel function must show vpdpbusd in its assembly for its MACs to count
    vnni_kernels = [f for f in funcs if "dwconv2d_nhwc" not in f]   # all but the int32-product depthwise
    all_vnni = all(funcs[f][1] for f in vnni_kernels)
    real = sum(info["kernel_macs"].get(k, 0) for k in ("conv2d_vnni", "dense_vnni", "depthwise_vnni"))
    emit(figure="vnni_fraction", int8_macs=total, vnni_macs=real if all_vnni else None,
         fraction=round(real / total, 4) if total and all_vnni else None,
         kernel_macs=info["kernel_macs"], functions_with_vpdpbusd=sum(1 for m in funcs.values() if m[1]),
         functions_with_int8_reduction=len(funcs), vnni_macs_padded=vnni_macs,
         note="MACs of the model's int8 conv/matmul ops (unpadded); depthwise convs with a multiple "
              "of 64 channels run on VNNI in lane order, the others as int32-product (vpmaddwd) vector code")
    if largest is not None:
        name, macs, f, lib = largest
        args = []
        for p in f.params:
            t = p.ty
            args.append(tvm.runtime.tensor(np.random.randint(0, 8, [int(d) for d in t.shape]).astype(str(t.dtype))))
        fe = lib.time_evaluator(lib.entry_name, tvm.cpu(), number=20, repeat=5)
        secs = float(np.median(fe(*args).results))
        peak = peak_gops(threads)
        emit(figure="largest_conv", function=name[:80], macs_padded=macs, ms=round(secs * 1e3, 4),
             gops=round(2 * macs / secs / 1e9, 1), **peak,
             fraction_of_peak=round(2 * macs / secs / 1e9 / peak["peak_int8_gops"], 3),
             note="median of TVM's time_evaluator (wall), the fused function incl. its requantize epilogue")


def _kernel_macs(f) -> int:
    """Multiply-accumulates of the int8 kernel block of an unscheduled fused function (the product
    of its iteration domain, padded channels included); 0 when it has none."""
    from qcc.backends.tvm.schedules import kernels
    from tvm import s_tir

    sch = s_tir.Schedule(f)
    for name in (kernels.CONV_BLOCK, kernels.DENSE_BLOCK, kernels.DW_BLOCK, kernels.DW_VNNI_BLOCK):
        try:
            block = sch.get(sch.get_sblock(name))
        except Exception:  # noqa: BLE001, S112 - no such block in this function
            continue
        return int(np.prod([int(iv.dom.extent) for iv in block.iter_vars]))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mobilenetv2,resnet18,minilm")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=THREADS_DEFAULT)
    ap.add_argument("--n-calib", type=int, default=16)
    ap.add_argument("--mcpu", default=None)
    ap.add_argument("--tune", type=int, metavar="TRIALS", help="also build with MetaSchedule tuning and compare")
    ap.add_argument("--tune-minutes", type=float, default=None)
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)   # read when TVM's thread pool starts
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from qcc.backends import tvm as tvm_backend

    target = tvm_backend.detect_target(mcpu=args.mcpu)
    emit(figure="target", target=target, cpus=os.cpu_count(), threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="qcc-cpu-speed-") as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            qdq, calib = latency(name, target, work, args.runs, args.threads, args.n_calib)
            if name == "mobilenetv2":
                compile_time(qdq, calib, target, work)
                vnni_report(qdq, calib, target, args.threads)
            if args.tune:
                tuned_latency(name, qdq, calib, target, work, args.runs, args.tune, args.tune_minutes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
