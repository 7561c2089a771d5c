"""The target registry (compiler/targets.py): every registered target builds and runs where this
machine can, spellings resolve, refusals are clear, and the backend's modules import one another
one way only (function-level imports count)."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import qcc
from qcc import models, targets
from qcc.artifact import file_sha256
from qcc.errors import QccError

import test_structure as structure   # the import graph of qcc's modules

ROOT = Path(__file__).resolve().parents[1]
EXTRA_ARGS = {"cuda": {"arch": "sm_80"}}      # flags a target cannot build without
_built: dict = {}


@pytest.fixture(scope="module")
def fashion():
    return models.get("fashion-cnn", n_calib=16, n_eval=4)


def _cannot_build(record) -> str | None:
    missing = record.missing(record.build_tools)
    if missing:
        return f"{', '.join(missing)} not installed"
    if record.name == "aarch64":
        from qcc.backends.tvm import cross

        try:
            cross.runtime_wheels()
        except QccError as exc:
            return str(exc)
    return None


def _artifact(name, fashion, tmp_path_factory):
    if name not in _built:
        out = tmp_path_factory.mktemp(f"target-{name}") / "a"
        res = qcc.compile_model(str(fashion.onnx_path), fashion.calib, eval_data=fashion.eval, target=name,
                                out_dir=out, progress=False, **EXTRA_ARGS.get(name, {}))
        _built[name] = (out, res)
    return _built[name]


# --- every registered target: build, manifest, run --------------------------------------------

def _bar() -> tuple[float, float]:
    """(fraction, steps): exact integer code matches onnxruntime's fused kernels; where those are not
    exact (x86 without VNNI) the reference is onnxruntime's float graph, whose float32 sums flip
    near-tie roundings that the 10-sample logits carry a step or two further."""
    from qcc.backends.onnxruntime import fused_qdq_is_exact

    return (0.99, 1.0) if fused_qdq_is_exact() else (0.9, 3.0)


@pytest.mark.parametrize("name", targets.names())
def test_every_target_builds_and_runs(name, fashion, tmp_path_factory):
    record = targets.get(name)
    why = _cannot_build(record)
    if why:
        pytest.skip(f"{name} cannot build here: {why}")
    out, res = _artifact(name, fashion, tmp_path_factory)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == name
    for key, digest in manifest["hashes"].items():     # every hashed file is there, with that hash
        path = out / (manifest["files"]["library"] if key == "library" else key)
        assert path.is_file() and file_sha256(path) == digest, key
    for rel in manifest["files"].values():
        assert (out / rel).exists(), rel
    if record.build is not None:
        backend = res.report["backend"]
        assert {"target", "mcpu", "static_batch", "files"} <= set(backend)
        if record.samples and not record.missing() and "exactness_skipped" not in backend:
            assert backend["exactness"] and all(e["within_step"] >= _bar()[0] for e in backend["exactness"].values())
    art = qcc.load(out)
    if record.runner is None:
        with pytest.raises(QccError, match=f"artifact target '{name}' has no runner"):
            art.run(fashion.eval)
        return
    if record.missing():
        pytest.skip(f"{name} runs with {', '.join(record.missing())}: not installed")
    if name == "cuda":
        from qcc.backends.tvm import cuda

        if not cuda.has_gpu():
            with pytest.raises(QccError, match="no CUDA GPU"):
                art.run(fashion.eval)
            return
    got = art.run(fashion.eval)
    ref_out, _ = _artifact("onnx", fashion, tmp_path_factory)
    ref = qcc.load(ref_out).run(fashion.eval)
    assert len(got) == len(ref)
    steps = res.report["backend"]["exactness"] if record.build is not None else {}
    for o, g, r in zip(art.output_names, got, ref):
        assert g.shape == r.shape and g.dtype == r.dtype
        step = steps.get(o, {}).get("step") or 0.0
        assert np.mean(np.abs(g.astype(np.float64) - r) <= _bar()[1] * step * (1 + 1e-6)) >= 0.99


def test_cross_builds_match_the_native_build_bit_for_bit(fashion, tmp_path_factory):
    """Each runnable TVM target's artifact gives the llvm artifact's outputs, bit for bit."""
    ref = None
    for name in ("llvm", "c", "aarch64"):
        record = targets.get(name)
        if _cannot_build(record) or record.missing():
            continue
        out, _ = _artifact(name, fashion, tmp_path_factory)
        got = qcc.load(out).run(fashion.eval)
        if ref is None:
            ref = got
            continue
        for g, r in zip(got, ref):
            assert np.array_equal(g.view(np.uint8), r.view(np.uint8)), name


# --- spellings, refusals, tools -------------------------------------------------------------

def test_spellings_resolve():
    assert targets.choices() == ["onnx", "llvm", "x86-64", "cuda", "aarch64", "c", "riscv64", "hexagon"]
    assert targets.get("x86-64") is targets.get("llvm")
    assert len(set(targets.choices())) == len(targets.choices())
    for record in targets.TARGETS:
        for spelling in record.spellings:
            assert targets.get(spelling) is record
            assert spelling in targets.help_text()
    assert targets.get("onnx").build is None and targets.get("onnx").output is None
    # every function a record names exists
    for record in targets.TARGETS:
        for which in ("configure", "build", "runner"):
            if getattr(record, which):
                assert callable(record.function(which)), (record.name, which)


def test_unknown_target_error_text(tmp_path, fashion):
    want = "unknown target 'tensorrt'; this build supports: onnx, llvm, x86-64, cuda, aarch64, c, riscv64, hexagon"
    with pytest.raises(QccError) as exc:
        targets.get("tensorrt")
    assert str(exc.value) == want
    with pytest.raises(QccError) as exc:
        qcc.compile_model(str(fashion.onnx_path), fashion.calib, target="tensorrt", out_dir=tmp_path / "x",
                          progress=False)
    assert str(exc.value) == want and not (tmp_path / "x").exists()
    with pytest.raises(QccError, match="artifact target 'tensorrt' has no runner in this qcc version"):
        targets.open_runner("tensorrt", tmp_path)
    proc = subprocess.run([sys.executable, "-m", "qcc.cli", "compile", "--target", "tensorrt",
                           "-o", str(tmp_path / "y")], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr and "tensorrt" in proc.stderr


def test_flag_refusals_name_the_targets_that_take_them():
    with pytest.raises(QccError, match=r"--tune applies to --target llvm \(x86-64\) only \(got --target c\)"):
        targets.check_options("c", tune_trials=4)
    with pytest.raises(QccError, match=r"--arch applies to --target cuda only \(got --target llvm\)"):
        targets.check_options("llvm", arch="sm_89")
    assert targets.check_options("x86-64", tune_trials=4, progress=False) == {"trials": 4, "minutes": None,
                                                                               "quiet": True}
    config = qcc.QuantConfig(scheme="fp8-e4m3")
    with pytest.raises(QccError, match="target 'aarch64' lowers int8 schemes only; fp8-e4m3 needs --target onnx"):
        targets.prepare("aarch64", config, "unused")
    with pytest.raises(QccError, match="target 'c' builds an artifact folder: give an output folder"):
        targets.prepare("c", qcc.QuantConfig(), None)
    assert targets.prepare("onnx", qcc.QuantConfig(scheme="w4a8"), None) is None


def test_missing_check_tool_is_reported_not_fatal(fashion, tmp_path):
    """A record whose check needs a program that is not installed: the build is written, the report
    says why it was not checked, and the log says so too."""
    record = dataclasses.replace(targets.get("c"), name="c-test-missing-tool", aliases=(),
                                 tools=("qcc-no-such-tool",))
    targets.register(record)
    try:
        with pytest.raises(ValueError, match="already registered"):
            targets.register(record)
        logs = []
        res = qcc.compile_model(str(fashion.onnx_path), fashion.calib, target=record.name, out_dir=tmp_path / "a",
                                progress=False, log=logs.append)
    finally:
        targets.unregister(record.name)
    backend = res.report["backend"]
    assert backend["exactness"] == {}
    assert backend["exactness_skipped"] == "qcc-no-such-tool not installed: the build was not run here"
    assert any("c-test-missing-tool build not checked: qcc-no-such-tool not installed" in m for m in logs), logs
    assert (tmp_path / "a" / "c" / "Makefile").is_file()
    assert record.name not in targets.choices()


def test_missing_runner_tool_is_a_clear_error(fashion, tmp_path_factory, monkeypatch):
    record = targets.get("aarch64")
    why = _cannot_build(record)
    if why:
        pytest.skip(f"aarch64 cannot build here: {why}")
    out, _ = _artifact("aarch64", fashion, tmp_path_factory)
    monkeypatch.setenv("PATH", str(tmp_path_factory.mktemp("empty-path")))
    with pytest.raises(QccError, match="qemu-aarch64 not found: install Debian's qemu-user"):
        qcc.load(out).run(fashion.eval)


def test_listing_targets_imports_no_tvm():
    code = ("import sys, qcc.cli, qcc.targets; qcc.cli._parser(); qcc.targets.help_text(); "
            "assert not any(m == 'tvm' or m.startswith('tvm.') for m in sys.modules), 'tvm imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the import graph -------------------------------------------------------------------------

def test_backend_modules_import_one_way():
    modules = {k: v for k, v in structure.module_files().items() if k.startswith("qcc.backends.tvm")}
    assert {"qcc.backends.tvm.artifact_io", "qcc.backends.tvm.cross", "qcc.backends.tvm.c_source",
            "qcc.backends.tvm.pipeline", "qcc.backends.tvm.runtime"} <= set(modules)
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        graph.add_edges_from((name, dep) for dep in structure.imports(name, path, modules))
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, cycles
    # the layers the package docstring promises
    below = {"qcc.backends.tvm.artifact_io": set(), "qcc.backends.tvm.exactness": set()}
    for name, allowed in below.items():
        assert structure.imports(name, modules[name], modules) == allowed, name
    assert "qcc.backends.tvm.runtime" not in nx.descendants(graph, "qcc.backends.tvm.cross")
    assert "qcc.backends.tvm.runtime" not in nx.descendants(graph, "qcc.backends.tvm.c_source")
    assert "qcc.backends.tvm.cross" not in nx.descendants(graph, "qcc.backends.tvm.pipeline")


def test_compiler_asks_the_registry():
    """No `target == "..."` / `target in (...)` in compiler/: target checks go through qcc.targets."""
    offenders = []
    for path in sorted((ROOT / "compiler").glob("*.py")):
        if path.name == "targets.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            names = {s.id for s in sides if isinstance(s, ast.Name)}
            names |= {s.attr for s in sides if isinstance(s, ast.Attribute)}
            consts = [s.value for s in sides if isinstance(s, ast.Constant)]
            if "target" in names and (consts or any(n.endswith("TARGETS") for n in names)):
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders
