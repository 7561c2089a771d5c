"""report.html: one self-contained page per compile and tune, checked statically and in headless Chromium.

The browser check loads a copy of the page with a small script appended that runs on `load`: every
`figure.chart` must hold an <svg> with drawn marks (or a decoded <img>) of non-zero size, and the page
may fetch nothing but data: URLs (Resource Timing lists failed loads too). Failures, uncaught errors
and any console message reach Chromium's stderr as `CONSOLE` lines (--enable-logging=stderr); the
pages themselves carry no scripts, so any console line is an error. test_browser_check_can_fail
proves the check catches an injected console.error, a script error, an external resource and an
empty chart.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(),
                                    reason="headless Chromium (/usr/bin/chromium, Debian package chromium) not installed")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000"]

CHECK = """<script>window.addEventListener('load', function () {
  var bad = [];
  var figs = document.querySelectorAll('figure.chart');
  figs.forEach(function (f) {
    var el = f.querySelector('svg, img');
    if (!el) { bad.push(f.id + ': no svg or img'); return; }
    var r = el.getBoundingClientRect();
    if (r.width < 100 || r.height < 40) bad.push(f.id + ': empty box ' + r.width + 'x' + r.height);
    if (el.tagName.toLowerCase() === 'img') {
      if (!(el.complete && el.naturalWidth > 0)) bad.push(f.id + ': image did not decode');
    } else if (el.querySelectorAll('path, rect, use, text').length < 10) {
      bad.push(f.id + ': svg has no marks');
    }
  });
  performance.getEntriesByType('resource').forEach(function (e) {
    if (e.name.indexOf('data:') !== 0) bad.push('external resource: ' + e.name);
  });
  document.documentElement.setAttribute('data-qcc-charts', String(figs.length));
  document.documentElement.setAttribute('data-qcc-check', bad.length ? 'fail' : 'ok');
  if (bad.length) console.error('qcc-check: ' + bad.join('; '));
});</script>"""


def browser_check(page: Path, tmp: Path, inject: str = "") -> tuple[list[str], str]:
    """(console lines, DOM after load) of `page` in headless Chromium, with CHECK (and `inject`) appended."""
    tmp.mkdir(parents=True, exist_ok=True)
    copy = tmp / "page.html"
    text = page.read_text(encoding="utf-8")
    copy.write_text(text.replace("</body>", inject + CHECK + "</body>"), encoding="utf-8")
    profile = tmp / "profile"
    proc = subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "--dump-dom", copy.as_uri()],
                          capture_output=True, text=True, timeout=120)
    shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "CONSOLE(" in line]
    assert "data-qcc-check=" in proc.stdout, "the check script did not run: " + proc.stderr[-2000:]
    return console, proc.stdout


class _Figures(HTMLParser):
    """figure.chart id -> tags inside it; every src / href; script and stylesheet links."""

    def __init__(self):
        super().__init__()
        self.figures: dict[str, Counter] = {}
        self.refs: list[str] = []
        self.scripts = 0
        self._open: list[str] = []   # ids of the chart figures we are inside
        self._depth: list[int] = []
        self.depth = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.depth += 1
        for key in ("src", "href", "xlink:href"):
            if a.get(key):
                self.refs.append(a[key])
        if tag == "script":
            self.scripts += 1
        if tag == "figure" and "chart" in (a.get("class") or "").split():
            self.figures[a.get("id")] = Counter()
            self._open.append(a.get("id"))
            self._depth.append(self.depth)
        elif self._open:
            self.figures[self._open[-1]][tag] += 1

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag == "figure" and self._open and self._depth[-1] == self.depth:
            self._open.pop()
            self._depth.pop()
        self.depth -= 1


def parse(text: str) -> _Figures:
    p = _Figures()
    p.feed(text)
    return p


def assert_self_contained(text: str) -> _Figures:
    p = parse(text)
    external = [r for r in p.refs if not (r.startswith("data:") or r.startswith("#"))]
    assert not external, external
    assert p.scripts == 0, "report pages carry no scripts"
    assert "<link" not in text and "@import" not in text and not re.search(r"url\((?!#|data:)", text)
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
    return p


def assert_charts(p: _Figures, ids: set[str], svg: bool = True) -> None:
    assert ids <= set(p.figures), (ids, set(p.figures))
    for cid in ids:
        tags = p.figures[cid]
        if svg:
            assert tags["svg"] == 1 and tags["path"] + tags["rect"] + tags["use"] >= 5, (cid, tags)
        else:
            assert tags["img"] == 1, (cid, tags)


def assert_browser_ok(page: Path, tmp: Path, n_charts: int) -> str:
    console, dom = browser_check(page, tmp)
    assert console == [], console
    assert 'data-qcc-check="ok"' in dom
    assert f'data-qcc-charts="{n_charts}"' in dom
    return dom


# ---------------------------------------------------------------------------------------------- compile page

@pytest.fixture(scope="module")
def onnx_artifact(tmp_path_factory):
    import qcc
    from qcc.models import bundled_calib_path, bundled_model_path

    with np.load(bundled_calib_path()) as z:
        calib = {"input": z["input"][:64]}
    out = tmp_path_factory.mktemp("report") / "art"
    qcc.compile_model(str(bundled_model_path()), calib, out_dir=out, target="onnx", progress=False)
    return out


def test_compile_writes_report_html(onnx_artifact, tmp_path):
    out = onnx_artifact
    manifest = json.loads((out / "manifest.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert manifest["files"]["report_html"] == "report.html"
    text = (out / "report.html").read_text(encoding="utf-8")
    p = assert_self_contained(text)
    assert_charts(p, {"sqnr-chart", "sensitivity-chart", "opmix-chart"})
    assert "could not be drawn" not in text
    cfg = manifest["config"]
    for fact in (cfg["scheme"], cfg["granularity"], cfg["calibration"], "calibration</b> set", "64</b> samples",
                 "no TVM build", "not measured"):
        assert fact in text, fact
    # the 5 lowest-SQNR layers are named, lowest first
    worst = sorted(report["layers"], key=lambda r: r["sqnr_db"])[:5]
    listed = re.search(r"<ol class='worst' id='worst-layers'>(.*?)</ol>", text, re.S).group(1)
    names = re.findall(r"<li><b>(.*?)</b>", listed)
    assert names == [r["node"] for r in worst]
    assert text.count("<tr class='worst'>") == 5
    # the passes that ran, with what each measured, in report.json and the page's pass table
    (bc,) = report["passes"]
    assert bc["name"] == "bias-correction" and bc["seconds"] > 0 and bc["summary"]["layers"] >= 1
    table_html = text.split("id='pass-table'")[1].split("</table>")[0]
    assert "bias-correction" in table_html and f"layers = {bc['summary']['layers']}" in table_html
    if CHROMIUM.exists():
        assert_browser_ok(out / "report.html", tmp_path / "b", 3)


def test_passes_recorded_in_order():
    """Every pass that ran is in report["passes"], in the order it ran, with its own summary."""
    import qcc
    from qcc.config import QuantConfig
    from qcc.models import bundled_calib_path, bundled_model_path

    with np.load(bundled_calib_path()) as z:
        calib = {"input": z["input"][:32]}
    config = QuantConfig(passes=["bias-correction-analytic", "equalization", "bias-correction"])
    res = qcc.compile_model(str(bundled_model_path()), calib, config=config, target="onnx", progress=False)
    passes = res.report["passes"]
    assert [p["name"] for p in passes] == ["equalization", "bias-correction-analytic", "bias-correction"]
    eq = passes[0]["summary"]
    assert eq["pairs"] >= 1 and 0 < eq["channels_scaled"] <= eq["channels"]
    assert all(p["seconds"] > 0 for p in passes)
    json.dumps(res.report["passes"], allow_nan=False)   # plain JSON: no numpy scalars, no nan


def synthetic_report() -> tuple[dict, dict]:
    """Every optional section filled, names that need escaping, ±inf / nan SQNR."""
    roles = ["compute", "fused-activation", "shared", "pool", "elementwise"]
    layers = [{"node": f"/block{i}/op<{i}>&", "op": ["Conv", "Relu", "MaxPool", "AveragePool", "Add"][i % 5],
               "role": roles[i % 5], "sqnr_db": 20.0 + (i * 7) % 23,
               "weight": {"dtype": "int8", "granularity": "per-channel"}, "input": {"dtype": "uint8"}}
              for i in range(45)]
    layers[3]["sqnr_db"] = math.inf
    layers[7]["sqnr_db"] = -math.inf
    layers[9]["sqnr_db"] = math.nan
    report = {
        "fidelity": {"data": "evaluation", "samples": 500, "outputs": {
            "logits": {"agreement": 0.99, "agreement_confident": 0.995, "kl": 1e-3, "cosine": 0.999, "sqnr_db": 30.1,
                       "accuracy_fp32": 0.91, "accuracy_quantized": 0.905, "accuracy_drop_points": 0.5},
            "embedding": {"cosine": 0.998, "sqnr_db": 25.0}}},
        "layers": layers,
        "float_nodes": [{"node": "/attn/<script>alert(1)</script>", "op": "Softmax", "reason": "excluded by --exclude"},
                        {"node": "/mask/Add", "op": "Add", "reason": "additive attention mask stays float"}],
        "quantized_nodes": {"compute": 9, "fused-activation": 9, "shared": 9, "pool": 9, "elementwise": 9},
        "unsupported_ops": ["Softmax"],
        "size": {"fp32_bytes": 4_000_000, "qdq_bytes": 1_100_000, "ratio": 0.275},
        "timings": {"load_canonicalize_s": 0.1, "calibrate_s": 1.2, "equalization_s": 0.4},
        "canonicalize": {"opset": 17, "nodes": 60},
        "passes": [{"name": "equalization", "seconds": 0.4, "summary": {"pairs": 4, "channels_scaled": 120}},
                   {"name": "bias-correction", "seconds": 0.2, "summary": {"layers": 9, "mean_shift": 0.0123}}],
        "backend": {"target": {"kind": "llvm", "mcpu": "cascadelake"}, "mcpu": "cascadelake", "build_s": 3.2,
                    "integer_ops": {"conv2d": 9, "matmul": 2, "add": 9},
                    "float_fallback": [{"op": "softmax", "reason": "no integer lowering (runs in float)", "count": 2},
                                       {"op": "erf", "reason": "no integer lowering", "count": 1}],
                    "exactness": {"logits": {"step": 0.01, "within_step": 0.999, "ort_fused_vs_unfused_within_step": 1.0,
                                             "max_abs": 0.01, "mean_abs": 1e-5}},
                    "threads": 4, "static_batch": True},
        "bench": {"threads": 4, "batch": 1, "runs": 50, "median_ms": 1.5, "p90_ms": 1.7,
                  "onnxruntime_int8_median_ms": 2.0, "onnxruntime_fp32_median_ms": 3.1,
                  "ratio_vs_onnxruntime_int8": 0.75, "ratio_vs_onnxruntime_fp32": 0.48,
                  "kernels": [{"name": f"fused_conv2d_{i}", "integer": i % 4 != 0, "ms": 0.05 + 0.01 * i}
                              for i in range(20)]},
    }
    manifest = {"target": "llvm", "qcc_version": "0.1.0", "source": {"path": "/models/<m>.onnx", "sha256": "ab" * 32},
                "config": {"scheme": "int8", "granularity": "per-channel", "calibration": "percentile",
                           "percentile": 99.99, "passes": ["equalization", "bias-correction"]},
                "inputs": [{"name": "input", "dtype": "float32", "shape": [1, 3, 224, 224]}],
                "outputs": [{"name": "logits"}, {"name": "embedding"}]}
    return report, manifest


def test_synthetic_report_every_section(tmp_path):
    from qcc.report_html import write_compile_report

    report, manifest = synthetic_report()
    page = write_compile_report(tmp_path / "report.html", report, manifest)
    text = page.read_text(encoding="utf-8")
    p = assert_self_contained(text)   # no <script>: the float node's name was escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "/block1/op&lt;1&gt;&amp;" in text
    assert_charts(p, {"sqnr-chart", "opmix-chart", "latency-chart", "timeshare-chart"})
    assert "could not be drawn" not in text
    for fact in ("cascadelake", "3.2 s", "99.90%", "float fallbacks", "softmax", "erf", "percentile 99.99",
                 "equalization", "channels_scaled = 120", "mean_shift = 0.0123", "1.5 ms", "0.75",
                 "integer kernels take", "embedding", "accuracy drop (points)", "additive attention mask stays float"):
        assert fact in text, fact
    assert "id='pass-table'" in text and "id='fallback-table'" in text and "id='float-table'" in text
    # -inf is the worst layer, nan is never ranked
    listed = re.search(r"id='worst-layers'>(.*?)</ol>", text, re.S).group(1)
    assert listed.startswith("<li><b>/block7/op&lt;7&gt;&amp;</b>") and "/block9/" not in listed
    if CHROMIUM.exists():
        assert_browser_ok(page, tmp_path / "b", 4)


@pytest.mark.parametrize("case", ["empty", "old", "onnx-no-layers", "garbage"])
def test_report_tolerates_missing_and_odd_keys(tmp_path, case):
    from qcc.report_html import write_compile_report

    report, manifest = synthetic_report()
    if case == "empty":
        report, manifest = {}, {}
    elif case == "old":   # an early report: no passes, backend, bench; layers without SQNR
        report = {k: report[k] for k in ("fidelity", "float_nodes", "size")}
        report["layers"] = [{"node": "a", "op": "Conv", "role": "compute"}]
    elif case == "onnx-no-layers":
        manifest["target"] = "onnx"
        report = {"fidelity": report["fidelity"], "quantized_nodes": {"compute": 3}, "passes": [],
                  "bench": {"median_ms": 1.0}}
    else:
        report = {"fidelity": {"outputs": {"y": "nope"}}, "layers": [None, 3, {"sqnr_db": "x"}], "size": [],
                  "backend": {"float_fallback": "x", "integer_ops": {"a": "b"}, "exactness": {"y": 1}},
                  "bench": {"kernels": [{"ms": None}, "x"], "median_ms": "fast"}, "passes": [1, {"summary": 3}]}
        manifest = {"config": None, "source": 5, "inputs": [1]}
    page = write_compile_report(tmp_path / "report.html", report, manifest)
    text = page.read_text(encoding="utf-8")
    assert_self_contained(text)
    assert "could not be drawn" not in text, re.findall(r"could not be drawn[^<]*", text)
    if case == "onnx-no-layers":
        assert "no graph passes" in text and "no TVM build" in text and "id='opmix-chart'" in text


@needs_chromium
def test_browser_check_can_fail(tmp_path):
    """The browser check is not vacuous: each planted fault is reported."""
    from qcc.report_html import write_compile_report

    report, manifest = synthetic_report()
    page = write_compile_report(tmp_path / "report.html", report, manifest)
    console, dom = browser_check(page, tmp_path / "e1", "<script>console.error('x-planted')</script>")
    assert any("x-planted" in line for line in console), console
    console, _ = browser_check(page, tmp_path / "e2", "<script>notAFunction()</script>")
    assert any("notAFunction" in line for line in console), console
    console, dom = browser_check(page, tmp_path / "e3", "<img src='http://192.0.2.1/x.png'>")
    assert any("external resource" in line for line in console) and 'data-qcc-check="fail"' in dom
    console, dom = browser_check(page, tmp_path / "e4", "<figure class='chart' id='blank'><svg></svg></figure>")
    assert any("blank" in line for line in console) and 'data-qcc-check="fail"' in dom


# ---------------------------------------------------------------------------------------------- tune page

def test_tune_page(tmp_path):
    """write_report on a resumed-looking journal (trials 3..10): charts inline, journal trial numbers in
    the table, the exported trial highlighted, the old public functions unchanged."""
    from qcc.autotune import report as R
    from qcc.autotune.objective import Goal
    from qcc.autotune.tune import write_report

    rng = np.random.default_rng(0)
    trials = []
    for n in range(3, 11):
        loss = float(rng.uniform(0, 3))
        metrics = {"loss": loss, "size_bytes": int(rng.uniform(40e3, 90e3)), "size_ratio": 0.3}
        if n == 6:
            metrics = {"error": "trial <failed> & crashed"}
        trials.append({"trial": n, "key": f"k{n}", "point": {"scheme": "int8", "calibration": "minmax",
                                                            "pass:bias-correction": n % 2 == 0},
                       "metrics": metrics})
    goal = Goal("size", 1.5)
    ok = [t for t in trials if not t["metrics"].get("error") and t["metrics"]["loss"] <= 1.5]
    best = min(ok, key=lambda t: t["metrics"]["size_bytes"])
    summary = {"model": "/m/<model>.onnx", "target": "onnx", "objective": "size", "max_loss": 1.5,
               "loss": "accuracy", "searcher": "quantune", "seed": 0, "space_size": 96, "trials": len(trials),
               "seconds": 12.0, "best": {"trial": best["trial"], "loss": best["metrics"]["loss"],
                                         "size_bytes": best["metrics"]["size_bytes"], "size_ratio": 0.3},
               "default_config": None, "artifact": None}
    write_report(tmp_path, trials, goal, summary, "accuracy", "quantune", best)
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    p = assert_self_contained(text)
    assert_charts(p, {"loss-chart", "pareto-chart"}, svg=False)
    assert text.count("data:image/png;base64,") == 2
    rows = re.findall(r"<tr( class='best')?><td class='num'>([\d,]+)</td>", text.split("id='trials-table'")[1])
    assert sorted(int(n) for _, n in rows) == list(range(3, 11))
    assert [int(n) for cls, n in rows if cls] == [best["trial"]]
    assert "trial &lt;failed&gt; &amp; crashed" in text and "&lt;model&gt;.onnx" in text
    assert f"#{best['trial']}" in text
    # the existing helpers keep their behaviour
    assert R.best_so_far([3.0, 1.0, 2.0]) == [3.0, 1.0, 1.0]
    assert R.pareto_front([(1, 5), (2, 3), (3, 4), (4, 1)]) == [0, 1, 3]
    assert R.plot_loss({"a": [1.0, 0.5]}, tmp_path / "l.png").read_bytes()[:4] == b"\x89PNG"
    assert R.plot_pareto([1.0, 2.0], [0.5, 0.2], tmp_path / "p.svg", "kB").read_text().lstrip().startswith("<?xml")
    if CHROMIUM.exists():
        assert_browser_ok(tmp_path / "report.html", tmp_path / "b", 2)


def test_tune_page_svg_images_inline(tmp_path):
    from qcc.autotune import report as R

    img = R.plot_loss({"q": [2.0, 1.0, 1.5]}, tmp_path / "loss.svg", trials={"q": [4, 5, 6]})
    page = R.write_html(tmp_path / "report.html", "qcc tune: <x>", {"trials": 3}, [img],
                        [{"trial": 4, "loss": 2.0, "config": "{}"}])
    text = page.read_text(encoding="utf-8")
    p = assert_self_contained(text)
    assert_charts(p, {"loss-chart"})
    assert "<?xml" not in text and "qcc tune: &lt;x&gt;" in text
