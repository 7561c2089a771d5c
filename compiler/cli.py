"""The `qcc` command line: compile, run, inspect, bench.

Every user error ends as one line on stderr and exit code 2 (1 for internal errors), never a
traceback; set QCC_DEBUG=1 to see the traceback of an internal error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from .errors import QccError
from .passes.registry import help_text as passes_help

DEFAULT_MODEL = "fashion-cnn"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except QccError as exc:
        print(f"qcc: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `qcc inspect out | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("qcc: interrupted (no artifact written)", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal bug: still one line unless debugging
        if os.environ.get("QCC_DEBUG"):
            raise
        print(f"qcc: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              "(set QCC_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line like every other qcc error."""

    def error(self, message: str):
        self.exit(2, f"qcc: error: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    from . import loss_metrics, targets
    from .config import CALIBRATIONS, GRANULARITIES, SCHEMES

    p = _Parser(prog="qcc", description="Graph-level quantization compiler")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    c = sub.add_parser("compile", help="quantize a model and build an artifact folder")
    c.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"an .onnx file or a model-zoo name (default: {DEFAULT_MODEL}, the bundled Fashion-MNIST CNN)")
    c.add_argument("--target", default="onnx", choices=targets.choices(), help=targets.help_text())
    c.add_argument("--mcpu", help="LLVM CPU for llvm targets (default: detected from this host's CPU flags); "
                   "aarch64 presets cortex-a76 (default), cortex-a55 (+dotprod), cortex-a53 (NEON); hexagon: hexagonv68")
    c.add_argument("--mattr", metavar="FEATURES",
                   help="aarch64 only: comma-separated LLVM features replacing the preset's, e.g. "
                        "--mattr=+neon,-dotprod")
    c.add_argument("--arch", choices=("sm_80", "sm_86", "sm_89", "sm_90"),
                   help="cuda only (required): the GPU architecture; FP8 schemes need sm_89 or sm_90 (docs/cuda_fp8.md)")
    c.add_argument("--calib", help="calibration .npz (keys = input names, axis 0 = samples); zoo models bring their own")
    c.add_argument("--eval", dest="eval_path", help="evaluation .npz: adds FP32-vs-quantized fidelity to the report")
    c.add_argument("--labels", help=".npy of integer labels for the evaluation set (adds accuracy)")
    c.add_argument("--metric", action="append", default=[], metavar="NAME|MODULE:FUNCTION",
                   help="loss metrics to add to report.json's fidelity.metrics (repeatable or a comma list; "
                        "lower is better; docs/autotune.md): " + ", ".join(loss_metrics.names())
                        + ", or a user callable MODULE:FUNCTION / path/to/file.py:FUNCTION")
    c.add_argument("--max-loss", type=float, metavar="L",
                   help="raise the most sensitive layers' precision (int16 activations where the scheme allows, "
                        "else float) until the evaluation loss of the first --metric (default auto) is at most L "
                        "(docs/precision.md)")
    c.add_argument("-o", "--output", required=True, help="artifact folder to create")
    c.add_argument("--force", action="store_true", help="replace an existing output folder")
    c.add_argument("--scheme", default="int8", choices=list(SCHEMES))
    c.add_argument("--granularity", default="per-channel", choices=GRANULARITIES)
    c.add_argument("--calibration", default="mse", choices=CALIBRATIONS)
    c.add_argument("--percentile", type=float, default=99.999)
    c.add_argument("--passes", default="bias-correction",
                   help="comma-separated graph passes, or none; default: bias-correction (docs/passes.md). "
                        + passes_help())
    c.add_argument("--weight-budget", type=float, default=0.6,
                   help="mixed-precision pass: weight bytes as a fraction of int8 weight bytes (default 0.6)")
    c.add_argument("--power-of-two", action="store_true", help="round scales up to powers of two")
    c.add_argument("--pointwise-tables", action="store_true",
                   help="run pointwise chains (SiLU, HardSwish, GELU, Sigmoid, ...) on int8 as 256-entry tables: "
                        "faster, but quantizes their inputs too (check the report's fidelity)")
    c.add_argument("--exclude", nargs="+", default=[], metavar="NODE|OP|/REGEX/",
                   help="keep these nodes float: node names, op types, or /regex/ on node names")
    c.add_argument("--override", nargs="+", default=[], metavar="TENSOR=SCHEME",
                   help="per-tensor scheme (a scheme name or 'float') for an activation or weight")
    c.add_argument("--tune", type=int, metavar="TRIALS",
                   help="llvm (x86-64): MetaSchedule-tune the generically scheduled functions and, on AVX-512 "
                        "VNNI CPUs, the int8 conv / dense kernels in a vpdpbusd-tensorizing space, TRIALS trials "
                        "each; a tuned schedule is used only where it measures faster (database: $QCC_TUNE_DB "
                        "or ~/.cache/qcc/tune-db)")
    c.add_argument("--tune-minutes", type=float, metavar="M", help="stop tuning after M minutes (keeps the best found)")
    shape = c.add_mutually_exclusive_group()
    shape.add_argument("--dynamic", nargs="+", action="extend", default=[], metavar="INPUT:AXIS=MIN..MAX",
                       help="llvm: keep this input dim open within MIN..MAX (default 1..any); without --dynamic "
                            "or --static the dims the model leaves open (dim_param, -1) stay open")
    shape.add_argument("--static", action="store_true",
                       help="llvm: pin every input dim to the calibration sample's (batch 1, other batches in "
                            "chunks): the fastest code for that one shape")
    c.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    c.set_defaults(func=_compile)

    r = sub.add_parser("run", help="run an artifact on inputs")
    r.add_argument("artifact")
    r.add_argument("--inputs", required=True, help=".npz keyed by input names")
    r.add_argument("-o", "--output", help="write outputs to this .npz")
    r.add_argument("--threads", type=_positive_int, help="CPU threads (default: the CPUs this process may use)")
    r.set_defaults(func=_run)

    b = sub.add_parser("bench", help="steady-state latency of an artifact beside onnxruntime int8 (its QDQ graph) and FP32")
    b.add_argument("artifact")
    b.add_argument("--inputs", help=".npz keyed by input names (default: random data for float inputs)")
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--runs", type=int, default=300, help="timed runs per engine (default 300)")
    b.add_argument("--warmup", type=int, default=50, help="warm-up runs before each block of timed runs (default 50)")
    b.add_argument("--threads", type=_positive_int, help="CPU threads for every engine (default: the CPUs this process may use)")
    b.add_argument("--shapes", nargs="+", metavar="SYMBOL=N[,...]",
                   help="sweep the build's open dims, one JSON line per point, e.g. --shapes batch=1,sequence=16 "
                        "batch=4,sequence=64 (inputs cropped or repeated to each size; printed, not recorded in the report)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=_bench)

    i = sub.add_parser("inspect", help="per-layer table of an artifact: op, bits, scheme, scale, SQNR")
    i.add_argument("artifact")
    i.add_argument("--json", action="store_true", help="print the layer rows as JSON lines")
    i.set_defaults(func=_inspect)

    t = sub.add_parser("tune", help="search quantization configs (Quantune: XGBoost-guided) and export the best")
    t.add_argument("model", help="an .onnx file or a model-zoo name")
    t.add_argument("--target", default="onnx", choices=targets.choices())
    t.add_argument("--mcpu", help="LLVM CPU for llvm targets")
    t.add_argument("--calib", help="calibration .npz (zoo models bring their own)")
    t.add_argument("--eval", dest="eval_path", help="evaluation .npz (default: the calibration set, or the zoo's)")
    t.add_argument("--labels", help=".npy of integer labels for the evaluation set: loss = accuracy points lost")
    t.add_argument("--max-loss", type=float, default=float("inf"),
                   help="loss budget a config must meet to be exported (accuracy points with labels, else points "
                        "of confident top-1 disagreement with FP32; see docs/autotune.md)")
    t.add_argument("--loss", default="auto", metavar="NAME|MODULE:FUNCTION",
                   help="the loss --max-loss bounds (lower is better; docs/autotune.md): auto (accuracy with "
                        "--labels, else confident-disagreement for [N, C] class scores, else cosine), "
                        + ", ".join(loss_metrics.names())
                        + ", or a user callable MODULE:FUNCTION / path/to/file.py:FUNCTION of (float_outputs, "
                          "quantized_outputs, labels)")
    t.add_argument("--budget", type=int, default=20, help="number of trials (default 20)")
    t.add_argument("--objective", default="accuracy", choices=["accuracy", "size", "latency"])
    t.add_argument("--searcher", default="quantune", choices=["quantune", "grid", "random", "genetic"])
    t.add_argument("--workers", type=int, default=1, help="local worker processes evaluating trials in parallel")
    t.add_argument("--ray", dest="ray_address", metavar="ADDRESS",
                   help="run trials on a Ray cluster (ADDRESS, 'auto', or 'local' for a local instance)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--transfer", nargs="+", default=[], metavar="JOURNAL",
                   help="journals (or tune folders) of earlier runs to warm-start the cost model")
    t.add_argument("--space", nargs="+", default=[], metavar="DIM=V1,V2",
                   help="restrict a search dimension (e.g. pass:adaround=false scheme=int8,int8-sym); "
                        "DIM= with no values drops it")
    t.add_argument("-o", "--output", required=True, help="tuning folder: journal.jsonl, best/, report.html")
    t.add_argument("--resume", action="store_true", help="continue the trials journaled in an existing tuning folder")
    t.add_argument("--force", action="store_true", help="discard an existing tuning folder and start over")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_tune)
    return p


def _tune(args) -> int:
    from .autotune.tune import tune

    model, calib, eval_data, labels = _resolve_inputs(args)
    restrict = {}
    for item in args.space:
        if "=" not in item:
            raise QccError(f"--space expects DIM=V1,V2, got {item!r}")
        dim, values = item.split("=", 1)
        restrict[dim] = [_space_value(v) for v in values.split(",") if v]
    log = (lambda m: None) if args.quiet else (lambda m: print(f"qcc: {m}", file=sys.stderr))
    summary = tune(model, calib, eval_data, labels, out=args.output, target=args.target, max_loss=args.max_loss,
                   budget=args.budget, objective=args.objective, searcher=args.searcher, workers=args.workers,
                   ray_address=args.ray_address, seed=args.seed, loss=args.loss, transfer=args.transfer,
                   restrict=restrict, mcpu=args.mcpu, resume=args.resume, force=args.force, log=log)
    print(json.dumps({k: summary[k] for k in ("trials", "best", "default_config", "artifact")}, default=str))
    return 0


def _space_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _compile(args) -> int:
    from .config import QuantConfig
    from .pipeline import compile_model

    overrides = {}
    for item in args.override:
        if "=" not in item:
            raise QccError(f"--override expects TENSOR=SCHEME, got {item!r}")
        k, v = item.rsplit("=", 1)
        overrides[k] = v
    config = QuantConfig(scheme=args.scheme, granularity=args.granularity, calibration=args.calibration,
                         percentile=args.percentile, power_of_two=args.power_of_two, exclude=list(args.exclude),
                         overrides=overrides, weight_budget=args.weight_budget,
                         pointwise_tables=args.pointwise_tables,
                         passes=[p for p in args.passes.split(",") if p and p != "none"])
    model, calib, eval_data, labels = _resolve_inputs(args)
    progress = not args.quiet and sys.stderr.isatty()
    log = (lambda m: None) if args.quiet else (lambda m: print(f"qcc: {m}", file=sys.stderr))
    t0 = time.perf_counter()
    result = compile_model(model, calib, config=config, target=args.target, eval_data=eval_data, labels=labels,
                           out_dir=args.output, force=args.force, progress=progress, mcpu=args.mcpu, log=log,
                           mattr=[f for f in args.mattr.split(",") if f] if args.mattr else None, arch=args.arch,
                           tune_trials=args.tune, tune_minutes=args.tune_minutes, metrics=args.metric,
                           max_loss=args.max_loss, dynamic=args.dynamic, static=args.static)
    if not args.quiet:
        _summary(result.report, result.out_dir, time.perf_counter() - t0)
    return 0


def _resolve_inputs(args):
    from .data import load_npz

    model = args.model
    zoo_entry = None
    if not model.endswith(".onnx") and not Path(model).exists():
        from qcc import models

        if model not in models.names():
            raise QccError(f"model {model!r} is neither an existing .onnx file nor a zoo model "
                           f"({', '.join(models.names())})")
        try:
            zoo_entry = models.get(model)
        except ModuleNotFoundError as exc:   # an optional package its export or data needs
            from . import extras

            extras.require(exc.name or "", f"the zoo model {model!r}")
            raise QccError(f"the zoo model {model!r} needs {exc.name}, which is not installed") from None
        except FileNotFoundError as exc:   # the package that ships its weights is not installed
            raise QccError(f"the zoo model {model!r} is not available here: {exc}") from None
        model = str(zoo_entry.onnx_path)
    if args.calib:
        calib = load_npz(args.calib, "calibration")
    elif zoo_entry is not None:
        calib = zoo_entry.calib
    else:
        raise QccError("--calib CALIB.npz is required for a user model (keys = input names, axis 0 = samples)")
    eval_data, labels = None, None
    if args.labels and not args.eval_path:
        raise QccError("--labels needs --eval: labels are the classes of the evaluation samples")
    if args.eval_path:
        eval_data = load_npz(args.eval_path, "evaluation")
    elif zoo_entry is not None and not args.calib:
        eval_data, labels = zoo_entry.eval, zoo_entry.labels
    if args.labels:
        try:
            labels = np.load(args.labels, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise QccError(f"cannot read labels {args.labels}: {exc}") from None
    return model, calib, eval_data, labels


def _summary(report: dict, out_dir, seconds: float) -> None:
    q = report["quantized_nodes"]
    fl = report["float_nodes"]
    size = report["size"]
    print(f"\nqcc: compiled in {seconds:.1f} s -> {out_dir}")
    print(f"  quantized nodes  {sum(q.values()):5d}   ({', '.join(f'{k} {v}' for k, v in sorted(q.items()))})")
    print(f"  float nodes      {len(fl):5d}   unsupported ops: {', '.join(report['unsupported_ops']) or 'none'}")
    if size["ratio"]:
        print(f"  size             {size['fp32_bytes'] / 1e6:.2f} MB fp32 -> {size['qdq_bytes'] / 1e6:.2f} MB "
              f"({size['ratio']:.2f}x)")
    fid = report["fidelity"]
    for name, m in fid["outputs"].items():
        parts = [f"{k} {m[k]:.4f}" for k in ("accuracy_fp32", "accuracy_quantized", "agreement",
                                             "agreement_confident", "kl", "cosine", "sqnr_db") if k in m]
        print(f"  {name:<16} {', '.join(parts)}   ({fid['data']} set, {fid['samples']} samples)")
    if fid.get("metrics"):
        print("  loss metrics     " + ", ".join(f"{k} {v:.4g}" for k, v in fid["metrics"].items()))
    precision = report.get("precision")
    if precision:
        raised = Counter(r["to"] for r in precision["raised"])
        print(f"  precision        {precision['metric']} loss {precision['int8_loss']:.4g} all-int8 -> "
              f"{precision['loss']:.4g} (budget {precision['max_loss']:g}: {'met' if precision['met'] else 'NOT met'}); "
              f"raised: {', '.join(f'{n} to {k}' for k, n in raised.items()) or 'none'}")
    backend = report.get("backend")
    if backend:
        print(f"  TVM {backend['target']}: built in {backend['build_s']:.1f} s, integer ops "
              f"{sum(backend['integer_ops'].values())}, float fallbacks {len(backend['float_fallback'])}")
        for name, e in backend.get("exactness", {}).items():
            built = backend.get("files", {}).get("library") or backend.get("files", {}).get("c_source") or "build"
            print(f"  {name:<16} {built} vs onnxruntime: {100 * e['within_step']:.2f}% of elements within one step "
                  f"(onnxruntime fused vs unfused: {100 * e['ort_fused_vs_unfused_within_step']:.2f}%)")
    worst = sorted((r for r in report["layers"] if "sqnr_db" in r), key=lambda r: r["sqnr_db"])[:3]
    if worst:
        print("  lowest SQNR      " + ", ".join(f"{r['node']} {r['sqnr_db']:.1f} dB" for r in worst))
    if out_dir is not None:
        print(f"  report           {Path(out_dir) / 'report.html'}   (per-layer table: qcc inspect {out_dir}; "
              f"latency: qcc bench {out_dir})")


def _run(args) -> int:
    from .artifact import load
    from .data import load_npz

    art = load(args.artifact, threads=args.threads)
    outputs = art.run(load_npz(args.inputs, "input"))
    if args.output:
        np.savez(args.output, **dict(zip(art.output_names, outputs)))
    for name, out in zip(art.output_names, outputs):
        print(json.dumps({"output": name, "shape": list(out.shape), "dtype": str(out.dtype),
                          "mean": float(np.mean(out)), "argmax_first": int(np.argmax(out[0])) if out.ndim > 1 else None}))
    return 0


def _bench(args) -> int:
    """Steady-state latency (compiler/latency.py: each engine in its own process, warm-up, back-to-back
    runs, rounds alternated) of the artifact beside onnxruntime on its QDQ graph (onnxruntime's int8
    path) and on the FP32 source model, all at the same number of threads. One JSON line; the figures
    go into the artifact's report.json / report.html. With --shapes, one line per point of the sweep."""
    from .artifact import QDQ_MODEL, load
    from .latency import Engine
    from .shapes import fit, parse_sizes
    from .threads import default_threads

    if args.runs < 3 or args.batch < 1 or args.warmup < 0:
        raise QccError("--runs must be >= 3, --batch >= 1 and --warmup >= 0")
    points = [parse_sizes(text) for text in args.shapes or []]
    threads = args.threads or default_threads()
    art = load(args.artifact, threads=threads)
    feeds = _bench_feeds(art, args)
    engines = {"qcc": Engine("qcc", str(art.folder), threads),
               "onnxruntime_int8": Engine("onnxruntime", str(art.folder / QDQ_MODEL), threads)}
    source = (art.manifest.get("source") or {}).get("path")
    fp32_note = None
    if source and Path(source).is_file():
        engines["onnxruntime_fp32"] = Engine("onnxruntime", source, threads)
    else:
        fp32_note = f"the FP32 source model {source!r} is not on this machine" if source else "no FP32 source recorded"
    head = {"artifact": str(art.folder), "target": art.manifest["target"], "threads": threads}
    if not points:
        result = {**head, "batch": args.batch, **_bench_point(engines, feeds, args, fp32_note)}
        print(json.dumps(result))
        art.record_bench(result)
        return 0
    dims = _open_dims(art)
    for sizes in points:
        fitted = fit(feeds, dims, sizes)
        line = {**head, "shapes": sizes, "input_shapes": {k: list(v.shape) for k, v in fitted.items()},
                **_bench_point(engines, fitted, args, fp32_note)}
        print(json.dumps(line), flush=True)
    return 0


def _bench_point(engines: dict, feeds: dict, args, fp32_note: str | None) -> dict:
    """The medians and ratios of every engine on one set of feeds."""
    from .latency import measure

    bar = None
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=3 * len(engines), desc="bench", unit="block", leave=False)
    ms = measure(engines, feeds, runs=args.runs, warmup=args.warmup,
                 progress=(lambda done, total: bar.update(1)) if bar else None)
    if bar:
        bar.close()
    ours = ms["qcc"]["median_ms"]
    result = {"runs": ms["qcc"]["runs"], "warmup": args.warmup,
              "median_ms": round(ours, 4), "p90_ms": round(ms["qcc"]["p90_ms"], 4),
              "onnxruntime_int8_median_ms": round(ms["onnxruntime_int8"]["median_ms"], 4),
              "ratio_vs_onnxruntime_int8": round(ours / ms["onnxruntime_int8"]["median_ms"], 3),
              "onnxruntime_fp32_median_ms": None, "ratio_vs_onnxruntime_fp32": None}
    if "onnxruntime_fp32" in ms:
        result["onnxruntime_fp32_median_ms"] = round(ms["onnxruntime_fp32"]["median_ms"], 4)
        result["ratio_vs_onnxruntime_fp32"] = round(ours / ms["onnxruntime_fp32"]["median_ms"], 3)
    else:
        result["onnxruntime_fp32_note"] = fp32_note
    return result


def _open_dims(art) -> dict[str, list]:
    """Each input's dims, open ones by name: the build's tvm_io.json where it has one (what the library
    takes), else the QDQ graph's inputs named by the rule the TVM build uses (qcc.shapes.input_dims)."""
    import onnx

    from .artifact import QDQ_MODEL
    from .shapes import input_dims

    spec_path = art.folder / "tvm_io.json"   # backends/tvm/artifact_io.IO_SPEC, read without importing TVM
    if spec_path.is_file():
        return {i["name"]: i["shape"] for i in json.loads(spec_path.read_text())["inputs"]}
    graph = onnx.load(str(art.folder / QDQ_MODEL), load_external_data=False).graph
    inits = {t.name for t in graph.initializer}
    return {vi.name: input_dims(vi) for vi in graph.input if vi.name not in inits}


def _bench_feeds(art, args) -> dict[str, np.ndarray]:
    from .data import load_npz

    if args.inputs:
        return {k: v[:args.batch] for k, v in load_npz(args.inputs, "input").items()}
    feeds = {}
    for spec in art.manifest["inputs"]:
        if np.dtype(spec["dtype"]).kind != "f":
            raise QccError(f"input {spec['name']!r} is {spec['dtype']}: give real inputs with --inputs")
        batch = spec["shape"][0] if spec["shape"] else None
        if batch is not None and batch != args.batch:
            raise QccError(f"input {spec['name']!r} has a fixed batch of {batch}: use --batch {batch}")
        shape = [args.batch] + [d if d is not None else 1 for d in spec["shape"][1:]]
        feeds[spec["name"]] = np.random.default_rng(0).standard_normal(shape).astype(spec["dtype"])
    return feeds


def _inspect(args) -> int:
    from .artifact import load

    art = load(args.artifact)
    rows = art.report.get("layers", [])
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    cfg = art.manifest["config"]
    print(f"artifact {art.folder}  target {art.manifest['target']}  scheme {cfg['scheme']}  "
          f"{cfg['granularity']}  calibration {cfg['calibration']}")
    # alone dB: the layer alone quantized on float inputs (report["sensitivity"]); SQNR dB: accumulated, QDQ graph
    print(f"{'node':<40} {'op':<14} {'role':<17} {'weight':<16} {'input':<22} {'alone dB':>8} {'SQNR dB':>8}")
    for r in rows:
        w = r.get("weight")
        wtxt = f"{w['dtype']} {'pc' if w['granularity'] == 'per-channel' else 'pt'}" if w else "-"
        a = r.get("input")
        atxt = f"{a['dtype']} s={a['scale']:.3g} z={a['zero_point']:g}" if a else "-"
        alone = f"{r['sensitivity_db']:8.2f}" if isinstance(r.get("sensitivity_db"), (int, float)) else f"{'-':>8}"
        print(f"{r['node'][:40]:<40} {r['op']:<14} {r['role']:<17} {wtxt:<16} {atxt:<22} {alone} "
              f"{r.get('sqnr_db', float('nan')):8.2f}")
    for f in art.report.get("float_nodes", []):
        print(f"{f['node'][:40]:<40} {f['op']:<14} {'float':<17} {f['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
