"""The pass registry (passes/registry.py) and statistic points (compiler/statistic_points.py).

- every pass module declares its record; the registry lists them on a core install (no torch);
- a pass registered from outside (a new module's record) is validated, run by compile in its phase,
  recorded in the report, and becomes a tuner dimension, with no other file touched;
- run order honours `after`; docs/passes.md's table is the generated one;
- a pass's statistic points are collected in ONE onnxruntime session, with the values the separate
  collectors give.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

import qcc
from qcc.config import QuantConfig
from qcc.errors import QccError
from qcc.models import bundled_calib_path, bundled_model_path
from qcc.passes import registry

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def calib():
    with np.load(bundled_calib_path()) as z:
        return {"input": z["input"][:32]}


def test_every_record_is_complete():
    records = registry.registry()
    declared = [m.name for m in pkgutil.iter_modules([str(ROOT / "passes")])
                if "\nPASS = " in (ROOT / "passes" / f"{m.name}.py").read_text(encoding="utf-8")]
    assert list(records) == registry.names() and {p.run_module for p in records.values()} == set(declared)
    assert len(records) >= 11
    assert [p.order for p in records.values()] == sorted(p.order for p in records.values())
    for p in records.values():
        assert p.phase in registry.PHASES and p.summary and p.where, p.name
        assert (p.run is not None) or (p.quantizer is not None), p.name
        module = sys.modules[(p.run or p.quantizer).__module__]
        assert module.__doc__ and len(module.__doc__) > 200, f"{p.name}: its module opens with the math"
        assert (ROOT / "passes" / f"{p.run_module}.py").is_file()
        for name in p.after:
            assert name in records, (p.name, name)


def test_run_order_follows_after():
    config = QuantConfig(passes=list(reversed(registry.names())))
    for phase in registry.PHASES:   # every pass after the ones it names in `after`, before those in `before`
        order = [p.name for p in registry.chosen(config, phase)]
        for i, p in enumerate(registry.chosen(config, phase)):
            assert all(order.index(a) < i for a in p.after if a in order), (p.name, order)
            assert all(order.index(b) > i for b in p.before if b in order), (p.name, order)
    known = lambda phase, names: [p.name for p in registry.chosen(config, phase) if p.name in names]
    assert known("weights", {"mixed-precision", "adaround", "bias-correction-analytic"}) == [
        "mixed-precision", "adaround", "bias-correction-analytic"]
    rewrite = ["equalization", "noisyquant", "smoothing", "affinequant", "repquant", "crossquant"]
    assert known("rewrite", set(rewrite)) == rewrite
    # without mixed precision chosen, AdaRound still runs before the analytic shifts that read its weights
    config = QuantConfig(passes=["bias-correction-analytic", "adaround"])
    assert [p.name for p in registry.chosen(config, "weights")] == ["adaround", "bias-correction-analytic"]


def test_docs_table_is_generated():
    doc = (ROOT / "docs" / "passes.md").read_text(encoding="utf-8")
    assert registry.write_table(doc) == doc, "run: python -m qcc.passes.registry --write docs/passes.md"
    for name in registry.names():
        assert f"| `{name}` |" in doc


def test_validate_errors(calib):
    with pytest.raises(QccError, match=r"unknown pass 'bogus'; choose from bias-correction, "):
        registry.validate(QuantConfig(passes=["bogus"]))
    # a record's check refuses a config before any work
    with pytest.raises(QccError, match="crossquant quantizes activations to int8 per token"):
        qcc.compile_model(str(bundled_model_path()), calib, config=QuantConfig(scheme="fp8-e4m3",
                                                                             passes=["crossquant"]), progress=False)


def test_registry_lists_every_pass_without_torch():
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch': raise ImportError('no torch here')\n"
            "sys.meta_path.insert(0, Block())\n"
            "from qcc.passes import registry\n"
            "print(','.join(registry.names()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().split(",") == registry.names()


def test_a_new_pass_plugs_in_from_its_own_record(calib, monkeypatch):
    """A rewrite pass declared outside the registry's modules: validated, run in its phase with its
    statistic points collected, in the report, and a tuner dimension."""
    from qcc.autotune import space as space_mod
    from qcc.statistic_points import ChannelMax

    seen = {}

    def statistics(ctx):
        conv = next(n for n in ctx.model.graph if n.op_type == "Conv")
        return {"out": (conv.outputs[0].name, ChannelMax())}

    def run(ctx):
        seen["max"] = ctx.points["out"]
        return {"channels": int(ctx.points["out"].size), "table": [1, 2]}

    record = registry.Pass(name="probe", phase="rewrite", order=5, summary="a test pass", where="Conv",
                           run=run, statistics=statistics, describe=lambda s: f"probe: {s['channels']} channels",
                           applies=lambda model: True)
    records = dict(registry.registry())
    records["probe"] = record
    monkeypatch.setattr(registry, "_REGISTRY", records)
    lines = []
    res = qcc.compile_model(str(bundled_model_path()), calib, config=QuantConfig(passes=["probe", "bias-correction"]),
                            progress=False, log=lines.append)
    assert seen["max"].ndim == 1 and seen["max"].size > 1
    probe = res.report["passes"][0]
    assert probe["name"] == "probe" and probe["summary"] == {"channels": seen["max"].size}   # lists stay out
    assert f"probe: {seen['max'].size} channels" in lines
    assert [p["name"] for p in res.report["passes"]] == ["probe", "bias-correction"]
    assert space_mod.check_restrict({"pass:probe": [False]}) is None
    assert space_mod.pass_values("probe") == [False, True]


def test_equalization_statistics_in_one_session(calib, monkeypatch):
    """Equalization's two statistic kinds (Clip pre-activation max, pair inputs) come from one
    onnxruntime session, and equal what each collector gives on its own."""
    from qcc.backends import onnxruntime as ort_backend
    from qcc.canonicalize import canonicalize
    from qcc.loader import load_model
    from qcc.passes import equalization
    from qcc.statistic_points import collect

    zoo = pytest.importorskip("qcc.models.zoo")
    entry = zoo.get("mobilenetv2", n_calib=24, n_eval=8)   # ReLU6 pairs: both kinds of points
    model, _ = canonicalize(load_model(str(entry.onnx_path)))
    proto = ir.to_proto(model)
    pairs = equalization.find_pairs(model)
    points = equalization.statistic_points(pairs)
    kinds = {k for k, _ in points}
    assert kinds == {"preact", "input"}
    sessions = []
    real = ort_backend.make_session
    monkeypatch.setattr(ort_backend, "make_session", lambda *a, **k: sessions.append(1) or real(*a, **k))
    merged = collect(proto, points, entry.calib)
    assert len(sessions) == 1
    monkeypatch.setattr(ort_backend, "make_session", real)
    preact = equalization.measure_preactivation_max(proto, pairs, entry.calib)
    inputs = equalization.capture_pair_inputs(proto, pairs, entry.calib)
    for name, v in preact.items():
        np.testing.assert_array_equal(merged[("preact", name)], v)
    for name, v in inputs.items():
        assert v.shape[0] == equalization.SEARCH_SAMPLES
        np.testing.assert_allclose(merged[("input", name)], v, rtol=1e-5, atol=1e-6)
