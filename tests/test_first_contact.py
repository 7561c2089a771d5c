"""What a new user meets first: the core install without torch, fixed-batch exports, default threads,
tune's output folder, and one trial numbering across log, journal and summary."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import qcc
from qcc.autotune.journal import read
from qcc.models import bundled_calib_path, bundled_model_path

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
ENV.pop("QCC_DEBUG", None)

# An interpreter on which torch and transformers cannot be imported, as on the core install.
NO_TORCH = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers'):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Block())
from qcc.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _qcc(*args, no_torch=False, cwd=None):
    cmd = [sys.executable, "-c", NO_TORCH] if no_torch else [sys.executable, "-m", "qcc.cli"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def fixed_batch(tmp_path_factory):
    """The bundled CNN exported with batch fixed at 1 (what most exporters write) + 24 calibration images."""
    d = tmp_path_factory.mktemp("fixed")
    m = onnx.load(str(bundled_model_path()))
    for v in list(m.graph.input) + list(m.graph.output):
        dim = v.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = 1
    onnx.save(m, d / "fixed.onnx")
    with np.load(bundled_calib_path()) as z:
        np.savez(d / "calib.npz", input=z["input"][:24])
    return d / "fixed.onnx", d / "calib.npz"


def test_main_job_without_torch(tmp_path):
    """The README's main job on an interpreter without torch: compile for llvm, bench, inspect."""
    out = tmp_path / "build"
    proc = _qcc("compile", "--target", "llvm", "-o", out, no_torch=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"report           {out / 'report.html'}" in proc.stdout
    assert {"model.so", "report.html", "report.json", "manifest.json"} <= set(os.listdir(out))
    backend = json.loads((out / "report.json").read_text())["backend"]
    assert backend["exactness"]["logits"]["within_step"] >= 0.999
    proc = _qcc("bench", out, "--runs", "30", "--warmup", "5", no_torch=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["median_ms"] > 0 and row["onnxruntime_int8_median_ms"] > 0 and row["onnxruntime_fp32_median_ms"] > 0
    assert _qcc("inspect", out, no_torch=True).returncode == 0


@pytest.mark.parametrize("passes, feature", [("equalization", "the equalization pass"),
                                             ("adaround", "the adaround pass")])
def test_pass_that_needs_torch_says_how_to_install_it(tmp_path, passes, feature):
    proc = _qcc("compile", "--passes", passes, "-o", tmp_path / "a", no_torch=True)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert f"{feature} needs torch" in line and "pip install torch==2.13.0" in line and "qcc[torch]" in line
    assert not (tmp_path / "a").exists()


def test_tune_without_torch_searches_only_what_can_run(tmp_path):
    proc = _qcc("tune", "fashion-cnn", "--budget", "2", "--max-loss", "5", "-o", tmp_path / "t",
                "--space", "calibration=minmax,mse", "granularity=per-channel", "float_layers=0", no_torch=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    header, _ = read(tmp_path / "t" / "journal.jsonl")
    dims = header["space"]["dims"]
    assert not any(k in dims for k in ("pass:equalization", "pass:adaround", "pass:noisyquant", "pass:affinequant"))
    assert (tmp_path / "t" / "report.html").is_file() and (tmp_path / "t" / "best" / "report.html").is_file()


@pytest.mark.parametrize("target", ["llvm", "c"])
def test_fixed_batch_model_compiles_and_verifies(fixed_batch, tmp_path, target):
    model, calib = fixed_batch
    out = tmp_path / target
    proc = _qcc("compile", model, "--calib", calib, "--target", target, "-o", out, "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    # 0.99: where onnxruntime's fused kernels are not exact (no VNNI) the reference is its float
    # graph, whose float32 sums flip a few near-tie roundings
    assert report["backend"]["exactness"]["logits"]["within_step"] >= 0.99
    with np.load(calib) as z:
        x = z["input"][:5]
    art = qcc.load(out)
    got = art.run({"input": x})[0]          # 5 samples through a batch-1 build
    ref = qcc.load(out).run({"input": x[:1]})[0]
    assert got.shape == (5, 10) and np.array_equal(got[:1], ref)


def test_default_threads_are_the_cpus_this_process_may_use(tmp_path, fixed_batch):
    from qcc.backends.tvm import compat

    model, calib = fixed_batch
    out = tmp_path / "llvm"
    assert _qcc("compile", model, "--calib", calib, "--target", "llvm", "-o", out, "--quiet").returncode == 0
    with np.load(calib) as z:
        feeds = {"input": z["input"][:1]}
    art = qcc.load(out)
    art.run(feeds)
    assert art._runner().threads == len(os.sched_getaffinity(0))
    one = qcc.load(out, threads=1)
    y1 = one.run(feeds)[0]
    assert one._runner().threads == 1 and compat.set_threads(1) == 1
    assert np.array_equal(y1, qcc.load(out, threads=2).run(feeds)[0])   # threads change speed, not results
    with pytest.raises(qcc.QccError, match="threads"):
        qcc.load(out, threads=0)


def _tune(out, *extra):
    return _qcc("tune", "fashion-cnn", "--budget", "3", "--max-loss", "5", "-o", out, "--space",
                "calibration=minmax,mse,percentile-99.99", "granularity=per-channel", "float_layers=0",
                "scheme=int8", "int4=0.0", "power_of_two=false", *extra)


def test_tune_folder_needs_resume_or_force_and_numbers_trials_once(tmp_path):
    out = tmp_path / "t"
    first = _tune(out)
    assert first.returncode == 0, first.stderr[-3000:]
    _, trials = read(out / "journal.jsonl")
    assert [t["trial"] for t in trials] == [1, 2, 3]
    summary = json.loads((out / "summary.json").read_text())
    best = min(trials, key=lambda t: t["metrics"]["loss"])
    (logged,) = re.findall(r"best: trial (\d+)", first.stderr)
    assert int(logged) == summary["best"]["trial"] == best["trial"]
    assert best["metrics"]["loss"] == pytest.approx(summary["best"]["loss"])
    for n in range(1, 4):   # the log's "trial N/3" is the journal's trial N
        line = next(l for l in first.stderr.splitlines() if f"trial {n}/3" in l)
        point = json.loads(line[line.index("{"):])
        assert point == trials[n - 1]["point"]

    again = _tune(out)
    assert again.returncode == 2 and "already exists" in again.stderr and "--resume" in again.stderr
    assert len((out / "journal.jsonl").read_text().splitlines()) == 1 + 3   # untouched
    resumed = _tune(out, "--resume")
    assert resumed.returncode == 0 and "resuming: 3 trials" in resumed.stderr
    restarted = _tune(out, "--force")
    assert restarted.returncode == 0 and "resuming" not in restarted.stderr
    assert _tune(tmp_path / "new", "--resume").returncode == 2
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    forced = _tune(tmp_path / "notes", "--force")
    assert forced.returncode == 2 and "not a qcc tuning folder" in forced.stderr
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
