"""report.html: one self-contained page a person reads, drawn from report.json + manifest.json.

    summary          target, scheme / granularity / calibration, size vs FP32, headline fidelity, latency
    fidelity         every output: agreement, confident agreement, KL, cosine, SQNR, accuracy (data set, samples)
    build            the TVM backend (target, mcpu, build time, integer ops, float fallbacks, exactness vs
                     onnxruntime, threads) when there is one
    latency          `qcc bench` figures (report["bench"]) beside onnxruntime int8 / FP32, when measured
    per-layer SQNR   a chart in graph order, the worst 5 layers named and highlighted, the full table
    sensitivity      each layer alone quantized on float inputs (compiler/sensitivity.py): a bar chart of
                     the most sensitive layers, split into input-only and weight-only, and the ranking
    float nodes      what stayed float and why (the QDQ plan, and the TVM build's float fallbacks)
    op mix           integer vs float op counts (QDQ graph, TVM build), kernel time share when benchmarked
    passes           graph passes applied and what each measured

No network: charts are matplotlib SVG inlined in the page, CSS is inline, there are no scripts. Every
section tolerates missing keys (old reports, --target onnx with no backend, no bench) and every string
from the report is HTML-escaped. The page kit (page, card, table, chart figures: compiler/html_page.py)
is shared with the `qcc tune` page (autotune/report.py).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from .html_page import (FLOAT_COLOR, INTEGER_COLOR, ROLE_COLORS, WORST_COLOR, Raw, card, cards, chart, chart_style,
                        esc, fmt, fmt_bytes, get_in, new_figure, num, page, section, short, split, style_axes,
                        table)
from .report_precision import precision_section

# ---------------------------------------------------------------------------------------------- compile page

FIDELITY_KEYS = [("agreement", "agreement"), ("agreement_confident", "confident agreement"),
                 ("confident_fraction", "confident fraction"), ("kl", "KL"), ("cosine", "cosine"),
                 ("sqnr_db", "SQNR dB"), ("accuracy_fp32", "accuracy FP32"),
                 ("accuracy_quantized", "accuracy quantized"), ("accuracy_drop_points", "accuracy drop (points)")]


GLOSSARY = {
    "agreement": "share of samples whose top-1 class is the FP32 model's",
    "agreement_confident": "the same, on the samples the FP32 model is confident about (confident fraction)",
    "kl": "mean KL divergence of the softmax outputs, FP32 to quantized (0 is identical)",
    "cosine": "mean cosine similarity of the output vectors",
    "sqnr_db": "output signal-to-quantization-noise ratio; +6 dB is one more bit",
    "accuracy_drop_points": "FP32 accuracy minus quantized accuracy, in percentage points",
}


def write_compile_report(path: Path, report: dict, manifest: dict) -> Path:
    """Render report.json + manifest.json contents as one self-contained HTML page at `path`."""
    path = Path(path)
    report = report if isinstance(report, dict) else {}
    manifest = manifest if isinstance(manifest, dict) else {}
    path.write_text(render_compile_report(report, manifest), encoding="utf-8")
    return path


def render_compile_report(report: dict, manifest: dict) -> str:
    source = get_in(manifest, "source", "path")
    name = Path(source).name if isinstance(source, str) and source else "model"
    sha = get_in(manifest, "source", "sha256")
    sub = [f"target <b>{esc(manifest.get('target', '?'))}</b>"]
    if manifest.get("qcc_version"):
        sub.append(f"qcc {esc(manifest['qcc_version'])}")
    if source:
        sub.append(f"source {esc(source)}")
    if isinstance(sha, str):
        sub.append(f"sha256 {esc(sha[:12])}…")
    sections = []
    with chart_style():
        sections = _sections(report, manifest)
    return page(f"qcc compile: {name}", " · ".join(sub), sections,
                footer="Drawn from report.json and manifest.json in this artifact folder; "
                       "<code>qcc inspect</code> prints the per-layer table, <code>qcc bench</code> adds latency.")


def _sections(report: dict, manifest: dict) -> list[str]:
    sections = []
    for build in (_summary, _fidelity, precision_section, _sqnr, _sensitivity, _float_nodes, _op_mix, _backend,
                  _latency, _passes, _timings, _config):
        try:
            built = build(report, manifest)
            if built:
                sections.append(built)
        except Exception as exc:  # noqa: BLE001 - a malformed section must not cost the whole page
            sections.append(section(build.__name__.strip("_"), f"<p class='warn'>this section could not be "
                                    f"drawn from report.json: {esc(type(exc).__name__)}: {esc(exc)}</p>",
                                    f"error-{build.__name__.strip('_')}"))
    return sections


def _summary(report: dict, manifest: dict) -> str:
    cfg = manifest.get("config") or {}
    items = []
    target = manifest.get("target")
    mcpu = get_in(report, "backend", "mcpu")
    items.append(card("target", esc(target or "?"), f"mcpu {mcpu}" if mcpu else None))
    if cfg:
        calib = cfg.get("calibration")
        if calib == "percentile" and cfg.get("percentile") is not None:
            calib = f"percentile {cfg['percentile']}"
        items.append(card("scheme", esc(cfg.get("scheme", "?")),
                          " · ".join(str(x) for x in (cfg.get("granularity"), calib) if x)))
    size = report.get("size") or {}
    ratio = num(size.get("ratio"))
    if ratio is not None or size.get("qdq_bytes") is not None:
        items.append(card("size vs FP32", f"{ratio:.2f}×" if ratio is not None else "–",
                          f"{fmt_bytes(size.get('fp32_bytes'))} → {fmt_bytes(size.get('qdq_bytes'))}", "ok"))
    outputs = get_in(report, "fidelity", "outputs", default={}) or {}
    for oname, m in list(outputs.items())[:3]:
        if not isinstance(m, dict):
            continue
        drop = num(m.get("accuracy_drop_points"))
        if drop is not None:
            items.append(card(f"accuracy · {oname}", f"{fmt(num(m.get('accuracy_quantized')))}",
                              f"FP32 {fmt(num(m.get('accuracy_fp32')))}, drop {drop:.3g} points",
                              "bad" if drop > 1 else "ok"))
        elif num(m.get("agreement")) is not None:
            items.append(card(f"agreement · {oname}", f"{100 * m['agreement']:.2f}%",
                              f"cosine {fmt(num(m.get('cosine')))}, SQNR {fmt(num(m.get('sqnr_db')), 3)} dB"))
        elif num(m.get("cosine")) is not None:
            items.append(card(f"cosine · {oname}", fmt(num(m["cosine"]), 5),
                              f"SQNR {fmt(num(m.get('sqnr_db')), 3)} dB"))
    rows = [r for r in report.get("layers") or [] if isinstance(r, dict) and num(r.get("sqnr_db")) is not None]
    if rows:
        worst = min(rows, key=lambda r: r["sqnr_db"])
        items.append(card("lowest layer SQNR", f"{fmt(worst['sqnr_db'], 3)} dB", short(worst.get("node", "?"), 40),
                          "bad" if worst["sqnr_db"] < 20 else ""))
    floats = report.get("float_nodes")
    if isinstance(floats, list):
        fb = get_in(report, "backend", "float_fallback")
        fb_n = sum(int(num(f.get("count")) or 1) for f in fb if isinstance(f, dict)) if isinstance(fb, list) else None
        note = f"TVM float fallbacks: {fb_n}" if fb_n is not None else None
        items.append(card("float nodes", len(floats), note, "bad" if floats or fb_n else "ok"))
    bench = report.get("bench") or {}
    if num(bench.get("median_ms")) is not None:
        ratio = num(bench.get("ratio_vs_onnxruntime_int8"))
        items.append(card("latency (median)", f"{bench['median_ms']:.3g} ms",
                          (f"{ratio:.2f}× onnxruntime int8's time" if ratio is not None else "") +
                          (f", {bench['threads']} threads" if bench.get("threads") is not None else "")))
    return section("Summary", cards(items), "summary")


def _fidelity(report: dict, manifest: dict) -> str:
    fid = report.get("fidelity")
    if not isinstance(fid, dict):
        return section("Fidelity", "<p class='note'>no fidelity figures in this report</p>", "fidelity")
    outputs = fid.get("outputs") or {}
    present = [(k, label) for k, label in FIDELITY_KEYS
               if any(isinstance(m, dict) and k in m for m in outputs.values())]
    extra = sorted({k for m in outputs.values() if isinstance(m, dict) for k in m} - {k for k, _ in FIDELITY_KEYS})
    outs = {o: m for o, m in outputs.items() if isinstance(m, dict)}
    headers = ["metric"] + list(outs)   # one column per output: models with many outputs stay readable
    rows = [[label] + [m.get(k) for m in outs.values()] for k, label in present + [(k, k) for k in extra]]
    data, samples = fid.get("data"), fid.get("samples")
    body = (f"<p>Final outputs of the float model vs the quantized (QDQ) model on the <b>{esc(data or '?')}</b> "
            f"set, <b>{fmt(samples)}</b> samples.</p>")
    if data == "calibration":
        body += ("<p class='warn'>No evaluation set was given: these figures are measured on the calibration "
                 "data the ranges were fitted to, so they are optimistic. Pass <code>--eval</code>.</p>")
    if isinstance(fid.get("metrics"), dict) and fid["metrics"]:   # qcc compile --metric (loss_metrics.py)
        body += ("<p id='fidelity-metrics'>Loss metrics (lower is better): " + ", ".join(
            f"<b>{esc(k)}</b> {fmt(v)}" for k, v in fid["metrics"].items()) + "</p>")
    if rows and outs:
        tab = table(headers, rows, num_cols=set(range(1, len(headers))), narrow=len(outs) < 4, table_id="fidelity-table")
        gloss = [(label, GLOSSARY[k]) for k, label in present if k in GLOSSARY]
        notes = ("<dl class='gloss'>" + "".join(f"<dt>{esc(a)}</dt><dd>{esc(b)}</dd>" for a, b in gloss) + "</dl>"
                 if gloss else "")
        body += split(tab, notes) if len(outs) < 4 else tab + notes
    else:
        body += "<p class='note'>no outputs measured</p>"
    return section("Fidelity", body, "fidelity")


def _backend(report: dict, manifest: dict) -> str:
    be = report.get("backend")
    if not isinstance(be, dict):
        target = manifest.get("target")
        note = ("--target onnx: the artifact is the QDQ graph, run by onnxruntime; no TVM build"
                if target in (None, "onnx") else "no backend build recorded in this report")
        return section("Build", f"<p class='note'>{esc(note)}</p>", "backend")
    items = []
    tgt = be.get("target")
    tgt_txt = tgt.get("kind", json.dumps(tgt)) if isinstance(tgt, dict) else tgt
    items.append(card("TVM target", esc(tgt_txt or "?"), f"mcpu {be['mcpu']}" if be.get("mcpu") else None))
    if num(be.get("build_s")) is not None:
        t = be.get("timings") or {}
        note = ", ".join(f"{k.removesuffix('_s')} {fmt(num(v), 3)} s" for k, v in t.items() if num(v) is not None)
        items.append(card("build time", f"{be['build_s']:.3g} s", note or None))
    iops = be.get("integer_ops")
    if isinstance(iops, dict):
        items.append(card("integer ops", sum(int(num(v) or 0) for v in iops.values()),
                          ", ".join(f"{k} {v}" for k, v in iops.items()), "ok"))
    fb = be.get("float_fallback")
    if isinstance(fb, list):
        n = sum(int(num(f.get("count")) or 1) for f in fb if isinstance(f, dict))
        items.append(card("float fallbacks", n, "see “Nodes left float”" if n else "every quantized layer is integer",
                          "bad" if n else "ok"))
    threads = be.get("threads", get_in(report, "bench", "threads"))
    if threads is not None:
        items.append(card("threads", threads, "from qcc bench" if "threads" not in be else None))
    if "static_batch" in be:
        items.append(card("static batch", bool(be["static_batch"])))
    sched = be.get("cpu_schedule")
    if isinstance(sched, dict):
        kern = sched.get("kernels") or {}
        items.append(card("CPU schedule", "VNNI" if sched.get("vnni") else "generic" if not sched.get("scheduled")
                          else "scheduled", ", ".join(f"{k} {v}" for k, v in kern.items()) or None))
    body = cards(items)
    ex = be.get("exactness")
    if isinstance(ex, dict) and ex:
        rows = []
        for oname, e in ex.items():
            if not isinstance(e, dict):
                continue
            ws, fu = num(e.get("within_step")), num(e.get("ort_fused_vs_unfused_within_step"))
            rows.append([oname, Raw(f"{100 * ws:.2f}%" if ws is not None else "–"),
                         Raw(f"{100 * fu:.2f}%" if fu is not None else "–"),
                         e.get("step"), e.get("max_abs"), e.get("mean_abs"), e.get("ort_fused_vs_unfused_mean_abs")])
        body += ("<h3>Exactness vs onnxruntime on the same QDQ graph</h3>"
                 + table(["output", "within one step", "onnxruntime fused vs unfused", "step", "max |Δ|", "mean |Δ|",
                          "fused vs unfused mean |Δ|"], rows, num_cols={1, 2, 3, 4, 5, 6}, code_cols={0}))
    if be.get("exactness_skipped"):
        body += f"<p class='note'>exactness not checked: {esc(be['exactness_skipped'])}</p>"
    if isinstance(be.get("versions"), dict):
        body += "<p class='note'>" + esc(", ".join(f"{k} {v}" for k, v in be["versions"].items())) + "</p>"
    return section("Build (TVM)", body, "backend")


def _latency(report: dict, manifest: dict) -> str:
    bench = report.get("bench")
    if not isinstance(bench, dict) or not bench:
        return section("Latency", "<p class='note'>not measured: run <code>qcc bench</code> on this artifact "
                       "to add latency beside onnxruntime int8 and FP32</p>", "latency")
    facts = [("threads", "threads"), ("batch", "batch"), ("runs", "runs"), ("warmup", "warm-up runs"),
             ("median_ms", "median ms"), ("p90_ms", "p90 ms"),
             ("onnxruntime_int8_median_ms", "onnxruntime int8 median ms"),
             ("onnxruntime_fp32_median_ms", "onnxruntime FP32 median ms"),
             ("ratio_vs_onnxruntime_int8", "time ratio vs onnxruntime int8 (below 1: qcc is faster)"),
             ("ratio_vs_onnxruntime_fp32", "time ratio vs onnxruntime FP32 (below 1: qcc is faster)")]
    rows = [[label, bench[k]] for k, label in facts if k in bench and bench[k] is not None]
    left = table(["", "value"], rows, num_cols={1}, narrow=True) if rows else ""
    if bench.get("onnxruntime_fp32_note"):
        left += f"<p class='note'>FP32: {esc(bench['onnxruntime_fp32_note'])}</p>"
    right = ""
    bars = [(label, num(bench.get(k))) for k, label in (("median_ms", "qcc"),
                                                        ("onnxruntime_int8_median_ms", "onnxruntime int8"),
                                                        ("onnxruntime_fp32_median_ms", "onnxruntime FP32"))]
    bars = [(label, v) for label, v in bars if v is not None]
    if bars:
        fig = new_figure(5.5, 1.0 + 0.5 * len(bars))
        ax = fig.subplots()
        labels = [b[0] for b in bars][::-1]
        vals = [b[1] for b in bars][::-1]
        colors = [INTEGER_COLOR if lab == "qcc" else "#8d99ae" for lab in labels]
        ax.barh(labels, vals, color=colors, height=0.6)
        for y, v in enumerate(vals):
            ax.text(v, y, f" {v:.3g} ms", va="center", fontsize=9)
        ax.set_xlabel(f"median latency (ms), batch {bench.get('batch', '?')}, {bench.get('threads', '?')} threads")
        ax.set_xlim(0, max(vals) * 1.25)
        ax.tick_params(labelsize=9)
        style_axes(ax, "x")
        right = chart(fig, "latency-chart", "median of back-to-back runs, each engine in its own process")
    return section("Latency", split(left, right) if left else right, "latency")


def _sqnr(report: dict, manifest: dict) -> str:
    layers = [r for r in report.get("layers") or [] if isinstance(r, dict)]
    if not layers:
        return section("Per-layer SQNR", "<p class='note'>no quantized layers in this report</p>", "layers")
    vals = [num(r.get("sqnr_db")) for r in layers]
    measured = [(i, v) for i, v in enumerate(vals) if v is not None and not math.isnan(v)]
    worst = [i for i, _ in sorted(measured, key=lambda p: p[1])[:5]]
    worst_set = set(worst)
    body = ("<p>Signal-to-quantization-noise ratio of each quantized node's output, float graph vs QDQ graph, "
            "in graph order (input to output). Higher is better; every 6 dB is one bit.</p>")
    if measured:
        finite = [v for _, v in measured if math.isfinite(v)]
        top = (max(finite) if finite else 60.0) + 6
        bottom = min(0.0, min(finite) - 3) if finite else 0.0
        roles = list(dict.fromkeys(str(r.get("role", "?")) for r in layers))
        cmap = {role: ROLE_COLORS[k % len(ROLE_COLORS)] for k, role in enumerate(roles)}
        n = len(layers)
        fig = new_figure(10.5, 3.4 if n <= 40 else 3.0)
        ax = fig.subplots()
        xs, hs, cs = [], [], []
        for i, v in measured:
            xs.append(i)
            hs.append(top if v == math.inf else bottom if v == -math.inf else v)
            cs.append(cmap[str(layers[i].get("role", "?"))])
        bars = ax.bar(xs, [h - bottom for h in hs], bottom=bottom, color=cs, width=0.8 if n < 200 else 1.0)
        for bar, i in zip(bars, xs):
            if i in worst_set:
                bar.set_color(WORST_COLOR)
            if vals[i] == math.inf:
                bar.set_hatch("//")
        for rank, i in enumerate(worst, 1):
            v = vals[i]
            y = bottom if v == -math.inf else min(v, top)
            ax.annotate(f"{rank}", (i, y), xytext=(0, 3), textcoords="offset points", ha="center",
                        fontsize=8, color=WORST_COLOR, fontweight="bold")
        ax.set_ylim(bottom, top + 2)
        ax.set_xlim(-0.8, n - 0.2)
        ax.set_ylabel("SQNR (dB)")
        if n <= 40:
            ax.set_xticks(range(n))
            ax.set_xticklabels([short(r.get("node", "?"), 24) for r in layers], rotation=55, ha="right", fontsize=7)
            for k, lab in enumerate(ax.get_xticklabels()):
                if k in worst_set:
                    lab.set_color(WORST_COLOR)
        else:
            ax.set_xlabel("layer (graph order)")
        from matplotlib.patches import Patch

        shown = {str(layers[i].get("role", "?")) for i, _ in measured if i not in worst_set}
        handles = [Patch(color=cmap[r], label=r) for r in roles if r in shown] + [Patch(color=WORST_COLOR,
                                                                                         label="worst 5")]
        ax.legend(handles=handles, fontsize=7, ncol=min(len(handles), 7), loc="upper center",
                  bbox_to_anchor=(0.5, 1.14), frameon=False)
        style_axes(ax)
        cap = "bars coloured by role; the 5 lowest in red, numbered by rank"
        if any(v == math.inf for _, v in measured):
            cap += "; hatched: no quantization noise at all (∞ dB), drawn at the top"
        body += chart(fig, "sqnr-chart", cap)
    if worst:
        items = "".join(f"<li><b>{esc(layers[i].get('node', '?'))}</b> ({esc(layers[i].get('op', '?'))}, "
                        f"{esc(layers[i].get('role', '?'))}): {fmt(vals[i], 3)} dB</li>" for i in worst)
        body += f"<h3>Lowest SQNR</h3><ol class='worst' id='worst-layers'>{items}</ol>"
    else:
        body += "<p class='note'>no SQNR measured for these layers</p>"
    rows, classes = [], []
    for i, r in enumerate(layers):
        w, a = r.get("weight") or {}, r.get("input") or {}
        wtxt = " ".join(str(x) for x in (w.get("dtype"), w.get("granularity")) if x) if isinstance(w, dict) else ""
        atxt = str(a.get("dtype", "")) if isinstance(a, dict) else ""
        rows.append([i + 1, r.get("node", "?"), r.get("op", "?"), r.get("role", "?"), wtxt or "–", atxt or "–", vals[i]])
        classes.append("worst" if i in worst_set else "")
    body += ("<details><summary>all " + str(len(layers)) + " quantized layers</summary>"
             + table(["#", "node", "op", "role", "weight", "input", "SQNR dB"], rows, num_cols={0, 6},
                     code_cols={1}, row_classes=classes, table_id="layer-table") + "</details>")
    return section("Per-layer SQNR", body, "layers")


SENSITIVITY_SHOWN = 15


def _sensitivity(report: dict, manifest: dict) -> str:
    sens = report.get("sensitivity")
    if not isinstance(sens, dict):
        return ""   # a report from before the sweep
    if sens.get("error"):
        return section("Per-layer sensitivity", f"<p class='warn'>the sensitivity sweep did not run: "
                       f"{esc(sens['error'])}</p>", "sensitivity")
    rows = [r for r in sens.get("layers") or [] if isinstance(r, dict) and num(r.get("sqnr_db")) is not None
            and not math.isnan(r["sqnr_db"])]
    rows.sort(key=lambda r: r["sqnr_db"])
    body = ("<p>Each layer quantized <b>alone</b>, the rest of the graph float: the SQNR of its output "
            "(after its fused activation) when only its own input activations and weights are quantized, "
            f"on the float graph's own activations ({fmt(sens.get('samples'))} calibration samples, "
            f"{fmt(num(sens.get('seconds')), 3)} s). Unlike the per-layer SQNR above, nothing upstream "
            "accumulates, so the lowest bars are the layers whose own quantization costs most: the first "
            "candidates for int16 activations, per-channel weights or float.</p>")
    if not rows:
        return section("Per-layer sensitivity", body + "<p class='note'>no layers measured</p>", "sensitivity")
    shown = rows[:SENSITIVITY_SHOWN]
    finite = [v for r in shown for v in (r["sqnr_db"], num(r.get("input_sqnr_db")), num(r.get("weight_sqnr_db")))
              if v is not None and math.isfinite(v)]
    top = (max(finite) if finite else 60.0) + 6
    bottom = min(0.0, min(finite) - 3) if finite else 0.0

    def clip(v):
        v = num(v)
        return None if v is None or math.isnan(v) else top if v == math.inf else bottom if v == -math.inf else v

    fig = new_figure(10.5, 0.9 + 0.28 * len(shown))
    ax = fig.subplots()
    ys = list(range(len(shown)))[::-1]     # worst at the top
    ax.barh(ys, [clip(r["sqnr_db"]) - bottom for r in shown], left=bottom, height=0.62,
            color=[WORST_COLOR if k < 5 else ROLE_COLORS[0] for k in range(len(shown))], label="layer alone quantized")
    for key, marker, color, label in (("input_sqnr_db", "o", INTEGER_COLOR, "input activations only"),
                                      ("weight_sqnr_db", "D", FLOAT_COLOR, "weights only")):
        pts = [(clip(r.get(key)), y) for r, y in zip(shown, ys) if clip(r.get(key)) is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, s=18, color=color, zorder=3,
                       label=label)
    ax.set_yticks(ys)
    def label(r):   # the end of the full name: the block number tells MobileNet's many ".../conv.0.0/Conv" apart
        name = str(r.get("node", "?")).lstrip("/")
        return ("…" + name[-43:] if len(name) > 44 else name) + f" ({r.get('op', '?')})"

    ax.set_yticklabels([label(r) for r in shown], fontsize=7)
    ax.set_xlim(bottom, top + 2)
    ax.set_xlabel("local SQNR (dB), lower is more sensitive")
    ax.legend(fontsize=7, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    style_axes(ax, "x")
    body += chart(fig, "sensitivity-chart", f"the {len(shown)} most sensitive of {len(rows)} layers, lowest first; "
                  "bar: input and weights quantized, markers: each alone (∞ dB drawn at the right edge)")
    recovered = any(num(r.get("recovered_db")) is not None for r in rows)
    table_rows = [[k + 1, r.get("node", "?"), r.get("op", "?"), r["sqnr_db"], r.get("input_sqnr_db"),
                   r.get("weight_sqnr_db")] + ([r.get("recovered_db")] if recovered else [])
                  for k, r in enumerate(rows)]
    headers = ["rank", "node", "op", "alone dB", "input only dB", "weights only dB"] + (
        ["kept float: output +dB"] if recovered else [])
    body += ("<details><summary>all " + str(len(rows)) + " layers, most sensitive first</summary>"
             + table(headers, table_rows, num_cols={0, 3, 4, 5, 6}, code_cols={1},
                     table_id="sensitivity-table")
             + "</details>")
    return section("Per-layer sensitivity", body, "sensitivity")


def _float_nodes(report: dict, manifest: dict) -> str:
    floats = [f for f in report.get("float_nodes") or [] if isinstance(f, dict)]
    body = ""
    if "float_nodes" not in report:
        body += "<p class='note'>this report does not list float nodes</p>"
    elif floats:
        body += ("<h3>QDQ graph: nodes the quantization plan left float</h3>"
                 + table(["node", "op", "reason"], [[f.get("node"), f.get("op"), f.get("reason")] for f in floats],
                         num_cols=set(), code_cols={0}, table_id="float-table"))
    else:
        body += "<p>Every node of the QDQ graph is quantized: the plan left no node float.</p>"
    unsupported = report.get("unsupported_ops")
    if unsupported:
        body += f"<p class='note'>ops with no integer kernel here: {esc(', '.join(map(str, unsupported)))}</p>"
    fb = get_in(report, "backend", "float_fallback")
    if isinstance(fb, list):
        fb = [f for f in fb if isinstance(f, dict)]
        if fb:
            body += ("<h3>TVM build: ops that run in float between dequantize and quantize</h3>"
                     + table(["op", "count", "reason"], [[f.get("op"), f.get("count"), f.get("reason")] for f in fb],
                             num_cols={1}, code_cols={0}, table_id="fallback-table"))
        else:
            body += "<p>TVM build: no float fallbacks; every quantized layer runs as integer code.</p>"
    return section("Nodes left float", body, "float-nodes")


def _op_mix(report: dict, manifest: dict) -> str:
    layers = [r for r in report.get("layers") or [] if isinstance(r, dict)]
    floats = [f for f in report.get("float_nodes") or [] if isinstance(f, dict)]
    qdq_int = Counter(str(r.get("op", "?")) for r in layers)
    qdq_float = Counter(str(f.get("op", "?")) for f in floats)
    roles = report.get("quantized_nodes") if isinstance(report.get("quantized_nodes"), dict) else {}
    if not qdq_int and roles:   # no per-layer rows: the role counts stand in for op types
        qdq_int = Counter({str(k): int(num(v) or 0) for k, v in roles.items()})
    be = report.get("backend") if isinstance(report.get("backend"), dict) else {}
    tvm_int = Counter({str(k): int(num(v) or 0) for k, v in (be.get("integer_ops") or {}).items()})
    tvm_float = Counter()
    for f in be.get("float_fallback") or []:
        if isinstance(f, dict):
            tvm_float[str(f.get("op", "?"))] += int(num(f.get("count")) or 1)
    panels = [(("QDQ graph (ONNX ops)" if layers else "QDQ graph (roles)"), qdq_int, qdq_float)]
    if tvm_int or tvm_float:
        panels.append(("TVM build (lowered ops)", tvm_int, tvm_float))
    body = ""
    if any(a or b for _, a, b in panels):
        nint = sum(qdq_int.values())
        nfl = sum(qdq_float.values())
        body += (f"<p>QDQ graph: <span class='pill int'>{nint} integer</span> "
                 f"<span class='pill float'>{nfl} float</span>")
        if len(panels) > 1:
            body += (f" · TVM build: <span class='pill int'>{sum(tvm_int.values())} integer</span> "
                     f"<span class='pill float'>{sum(tvm_float.values())} float</span>")
        body += "</p>"
        tallest = max(len(set(a) | set(b)) for _, a, b in panels)
        fig = new_figure(10.5, 0.9 + 0.28 * max(tallest, 3))
        from matplotlib.ticker import MaxNLocator

        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (title, ints, fls) in zip(axes, panels):
            ops = sorted(set(ints) | set(fls), key=lambda o: (ints.get(o, 0) + fls.get(o, 0), o))
            iv = [ints.get(o, 0) for o in ops]
            fv = [fls.get(o, 0) for o in ops]
            ax.barh(ops, iv, color=INTEGER_COLOR, label="integer", height=0.65)
            ax.barh(ops, fv, left=iv, color=FLOAT_COLOR, label="float", height=0.65)
            for y, (a, b) in enumerate(zip(iv, fv)):
                ax.text(a + b, y, f" {a + b}", va="center", fontsize=8)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("nodes")
            ax.set_xlim(0, max([a + b for a, b in zip(iv, fv)] + [1]) * 1.15)
            ax.tick_params(axis="y", labelsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            style_axes(ax, "x")
        axes[0].legend(fontsize=7, loc="lower right", frameon=False)
        fig.tight_layout()
        body += chart(fig, "opmix-chart", "integer (teal) vs float (orange) nodes per op type")
    if roles:
        body += "<p class='note'>quantized nodes by role: " + esc(", ".join(f"{k} {v}" for k, v in roles.items())) + "</p>"
    kernels = [k for k in get_in(report, "bench", "kernels", default=[]) or [] if isinstance(k, dict)
               and num(k.get("ms")) is not None]
    if kernels:
        total = sum(k["ms"] for k in kernels) or 1.0
        int_ms = sum(k["ms"] for k in kernels if k.get("integer"))
        body += (f"<h3>Time share (qcc bench)</h3><p>integer kernels take <b>{100 * int_ms / total:.1f}%</b> "
                 f"of {total:.3g} ms measured across {len(kernels)} kernels; float "
                 f"<b>{100 * (total - int_ms) / total:.1f}%</b>.</p>")
        top = sorted(kernels, key=lambda k: -k["ms"])[:15]
        rest = kernels[len(top):] if len(kernels) > 15 else []
        rows = [(str(k.get("name", "?")), k["ms"], bool(k.get("integer"))) for k in top]
        if rest:
            rows.append((f"{len(rest)} others", sum(k["ms"] for k in sorted(kernels, key=lambda k: -k["ms"])[15:]),
                         None))
        rows = rows[::-1]
        fig = new_figure(10.5, 0.9 + 0.27 * len(rows))
        ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [4, 1]})
        colors = [INTEGER_COLOR if r[2] else "#8d99ae" if r[2] is None else FLOAT_COLOR for r in rows]
        ax1.barh([short(r[0], 40) for r in rows], [r[1] for r in rows], color=colors, height=0.65)
        for y, r in enumerate(rows):
            ax1.text(r[1], y, f" {100 * r[1] / total:.1f}%", va="center", fontsize=7)
        ax1.set_xlabel("ms per run")
        ax1.set_xlim(0, max(r[1] for r in rows) * 1.18)
        ax1.tick_params(axis="y", labelsize=7)
        style_axes(ax1, "x")
        ax2.bar(["all kernels"], [int_ms], color=INTEGER_COLOR, width=0.6)
        ax2.bar(["all kernels"], [total - int_ms], bottom=[int_ms], color=FLOAT_COLOR, width=0.6)
        for y0, h, lab in ((0, int_ms, "integer"), (int_ms, total - int_ms, "float")):
            if h > 0.04 * total:
                ax2.text(0, y0 + h / 2, f"{lab}\n{100 * h / total:.0f}%", ha="center", va="center", fontsize=8,
                         color="white", fontweight="bold")
        ax2.set_ylabel("ms per run")
        ax2.set_xlim(-0.6, 0.6)
        style_axes(ax2)
        from matplotlib.patches import Patch

        handles = [Patch(color=INTEGER_COLOR, label="integer"), Patch(color=FLOAT_COLOR, label="float")]
        if rest:
            handles.append(Patch(color="#8d99ae", label="other kernels (summed)"))
        ax1.legend(handles=handles, fontsize=7, frameon=False, loc="lower right", bbox_to_anchor=(1.0, 1.0),
                   ncol=len(handles))
        fig.tight_layout()
        body += chart(fig, "timeshare-chart", "kernel time per run (largest 15), integer (teal) vs float (orange)")
    elif isinstance(report.get("bench"), dict):
        body += "<p class='note'>no per-kernel times in the bench figures</p>"
    if not body:
        body = "<p class='note'>no op counts in this report</p>"
    return section("Op mix: integer vs float", body, "op-mix")


def _passes(report: dict, manifest: dict) -> str:
    passes = report.get("passes")
    configured = get_in(manifest, "config", "passes", default=None)
    if isinstance(passes, list) and passes:
        rows = []
        for p in passes:
            if not isinstance(p, dict):
                continue
            summary = p.get("summary")
            if isinstance(summary, dict):
                stxt = "; ".join(f"{k} = {v if not isinstance(v, float) else format(v, '.4g')}"
                                 for k, v in summary.items())
            else:
                stxt = "" if summary is None else str(summary)
            rows.append([p.get("name", "?"), p.get("seconds"), stxt or "–"])
        body = table(["pass", "seconds", "measured effect"], rows, num_cols={1}, code_cols={0}, table_id="pass-table")
    elif isinstance(passes, list) or not configured:
        body = "<p>no graph passes</p>"
    else:
        timings = report.get("timings") or {}
        rows = [[name, timings.get(name.replace("-", "_") + "_s")] for name in configured]
        body = ("<p class='note'>this report does not record each pass's effect; the configured passes:</p>"
                + table(["pass", "seconds"], rows, num_cols={1}, code_cols={0}, table_id="pass-table", narrow=True))
    return section("Graph passes", body, "passes")


def _timings(report: dict, manifest: dict) -> str:
    t = report.get("timings")
    if not isinstance(t, dict) or not t:
        return ""
    rows = [[k.removesuffix("_s").replace("_", " "), v] for k, v in t.items() if num(v) is not None]
    canon = report.get("canonicalize") or {}
    note = ""
    if isinstance(canon, dict) and canon:
        note = "<p class='note'>canonicalize: " + esc(", ".join(f"{k.replace('_', ' ')} {v}" for k, v in canon.items())) + "</p>"
    return section("Compile time", table(["stage", "seconds"], rows, num_cols={1}, narrow=True) + note, "timings")


def _config(report: dict, manifest: dict) -> str:
    cfg = manifest.get("config")
    if not isinstance(cfg, dict):
        return ""
    rows = [[k, Raw(fmt(v) if not isinstance(v, (list, dict)) else esc(json.dumps(v)))] for k, v in cfg.items()]
    ins = manifest.get("inputs") or []
    outs = manifest.get("outputs") or []
    io_txt = ""
    if ins or outs:
        io_txt = ("<p class='note'>inputs: " + esc(", ".join(f"{i.get('name')} {i.get('dtype', '')} {i.get('shape', '')}"
                                                          for i in ins if isinstance(i, dict)))
                  + " · outputs: " + esc(", ".join(str(o.get("name")) for o in outs if isinstance(o, dict))) + "</p>")
    return section("Configuration", "<details><summary>quantization config</summary>"
                   + table(["field", "value"], rows, num_cols=set(), code_cols={0}, narrow=True) + "</details>" + io_txt,
                   "config")
