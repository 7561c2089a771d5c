"""The pass registry: every graph pass is one `Pass` record, declared in its own module.

A module under qcc/passes/ that defines `PASS = Pass(...)` (or a tuple of them) is a pass; nothing else
lists it. Config
validation, `qcc compile --passes` help, docs/passes.md's table and the tuner's search space
(autotune/space.py) all read the records here, so adding a pass touches its module and its tests.

Phases, in the order a compile runs them (each pass runs in its phase, ordered by `order`):

    rewrite    float graph -> equivalent float graph, before calibration (ctx.model changed in place);
               the pass's declared statistic points are collected on the current graph, in one
               onnxruntime run, just before it runs (compiler/statistic_points.py)
    weights    after calibration: how weights are quantized (ctx.config overrides, ctx.weights,
               ctx.analytic bias shifts)
    quantizer  at emission: tensors that leave the static plan for a run-time / non-uniform quantizer
    correct    after emission, measured on the QDQ graph (ctx.quantized replaced)

Top-level imports of pass modules stay light (no torch): listing the passes must work on the core
install; a pass whose optimisation needs an extra names it in `needs`.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..errors import QccError
from ..statistic_points import collect

if TYPE_CHECKING:   # annotations only: the registry must not import config / plan (they sit above it)
    import onnx
    import onnx_ir as ir

PHASES = ("rewrite", "weights", "quantizer", "correct")


@dataclass
class PassContext:
    """What a pass reads and writes. The runner keeps `float_proto` equal to `model` after a rewrite."""

    model: "ir.Model"                      # the float graph (rewrite passes change it in place)
    float_proto: "onnx.ModelProto"         # its serialized form
    config: Any                            # QuantConfig (weights passes may return a replaced one)
    calib: dict
    stats: dict | None = None              # calibration statistics (from the weights phase on)
    points: dict = field(default_factory=dict)   # this pass's statistic points, collected
    weights: dict | None = None            # AdaRound's rounded weights
    analytic: dict | None = None           # analytic bias shifts
    quantized: tuple | None = None         # (qdq ir.Model, plan, encodings), in the correct phase
    requantize: Callable | None = None     # (bias shift) -> quantized tuple, in the correct phase


@dataclass(frozen=True)
class Pass:
    """One graph pass.

    name        the --passes name
    phase       one of PHASES
    order       canonical order (tuner dimensions and configs, the docs table); run order within the
                phase, except that a pass runs after the ones named in `after` when they are chosen too
    summary     one line: what it does (help text, docs table)
    where       the graph pattern it applies to (docs table)
    run         (ctx) -> summary dict of what it measured / changed; None for quantizer-only passes
    describe    (summary) -> the log line
    needs       optional package its optimisation imports (compile checks it before any work)
    applies     (float ir.Model) -> whether the pass can change it (the tuner drops it otherwise)
    statistics  (ctx) -> {key: (tensor, collector)}: statistic points collected before run
    params      tunable parameter grid {field: [values]} (the tuner tries each combination)
    to_config   (chosen params) -> QuantConfig field values
    check       (config) -> None, or why the pass cannot run with it (a user error before any work)
    quantizer   (float ir.Model) -> an object with take(plan) / emit(qdq model) -> encodings
    after       passes this one must follow in its phase (it reads what they decided)
    before      passes this one must precede in its phase (they read what it decides): the same
                constraint as `after`, declared by the new pass so older ones need no edit
    reference   where the technique comes from
    """

    name: str
    phase: str
    order: int
    summary: str
    where: str = ""
    run: Callable[[PassContext], dict] | None = None
    describe: Callable[[dict], str] = lambda s: ""
    needs: str | None = None
    applies: Callable[[Any], bool] | None = None
    statistics: Callable[[PassContext], dict] | None = None
    params: dict = field(default_factory=dict)
    to_config: Callable[[dict], dict] | None = None
    check: Callable[[Any], str | None] | None = None
    quantizer: Callable[[Any], Any] | None = None
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    reference: str = ""

    @property
    def run_module(self) -> str:
        """The module that declares the pass (its record's functions live there)."""
        fn = self.run or self.quantizer
        return fn.__module__.rsplit(".", 1)[-1]

    def __post_init__(self):
        if self.phase not in PHASES:
            raise ValueError(f"pass {self.name}: phase {self.phase!r} is not one of {PHASES}")


_REGISTRY: dict[str, Pass] | None = None


def _discover() -> dict[str, Pass]:
    from .. import passes as package

    found: list[Pass] = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name == "registry":
            continue
        record = getattr(importlib.import_module(f"{package.__name__}.{info.name}"), "PASS", None)
        found.extend(r for r in (record if isinstance(record, tuple) else (record,)) if isinstance(r, Pass))
    found.sort(key=lambda p: (p.order, p.name))
    names = [p.name for p in found]
    if len(set(names)) != len(names):
        raise RuntimeError(f"two passes share a name: {names}")
    return {p.name: p for p in found}


def registry() -> dict[str, Pass]:
    """name -> Pass, in canonical order."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _discover()
    return _REGISTRY


def names() -> list[str]:
    return list(registry())


def get(name: str) -> Pass:
    try:
        return registry()[name]
    except KeyError:
        raise QccError(f"unknown pass {name!r}; choose from {', '.join(names())}") from None


def validate(config) -> None:
    """Every chosen pass exists and accepts this config; the optional packages they need are installed."""
    from ..extras import check as check_extra

    for name in config.passes:
        p = get(name)
        if p.check is not None:
            why = p.check(config)
            if why:
                raise QccError(why)
        if p.needs:
            check_extra(p.needs, f"the {name} pass")


def _run_order(records: list[Pass]) -> list[Pass]:
    """Canonical order, each pass moved after the chosen passes it names in `after` and those that
    name it in `before`."""
    pending, done, out = list(records), set(), []
    names = {p.name for p in records}

    def ready(p: Pass) -> bool:
        if any(a in names and a not in done for a in p.after):
            return False
        return not any(p.name in q.before for q in pending if q is not p)

    while pending:
        p = next(p for p in pending if ready(p))
        pending.remove(p)
        done.add(p.name)
        out.append(p)
    return out


def chosen(config, phase: str) -> list[Pass]:
    """The passes of `phase` that config turns on, in run order."""
    return _run_order([p for p in registry().values() if p.phase == phase and p.name in config.passes])


def help_text() -> str:
    """The --passes help: every pass with its one-line summary, in canonical order."""
    return "; ".join(f"{p.name} ({p.summary})" for p in sorted(registry().values(), key=lambda p: p.order))


def run_phase(phase: str, ctx: PassContext, trace) -> None:
    """Run the chosen passes of `phase` on ctx, in order: collect each one's statistic points on the
    current float graph (one onnxruntime run), apply it, keep ctx.float_proto in step with a rewritten
    graph, and record it in `trace` (compiler/trace.py: seconds, summary, log line)."""
    import onnx_ir as ir

    for p in chosen(ctx.config, phase):
        if p.run is None:
            continue
        started = time.perf_counter()
        ctx.points = collect(ctx.float_proto, p.statistics(ctx), ctx.calib) if p.statistics else {}
        summary = p.run(ctx)
        ctx.points = {}
        if phase == "rewrite":
            ctx.float_proto = ir.to_proto(ctx.model)
        trace.pass_done(p.name, started, summary, p.describe(summary))


def quantizers(config, model) -> list:
    """The run-time / non-uniform quantizers of the chosen passes, in pass order, for float `model`."""
    records = _run_order([p for p in registry().values() if p.quantizer is not None and p.name in config.passes])
    return [p.quantizer(model) for p in records]


TABLE_START = "<!-- pass table: generated from the registry by `python -m qcc.passes.registry --write docs/passes.md` -->"
TABLE_END = "<!-- end of pass table -->"


def markdown_table() -> str:
    """docs/passes.md's pass table, from the records."""
    rows = ["| pass | module | phase | what it does | where it applies | needs | tunable |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in registry().values():
        module = f"`passes/{p.run_module}.py`"
        params = ", ".join(f"`{k}` in {v}" for k, v in p.params.items())
        rows.append(f"| `{p.name}` | {module} | {p.phase} | {p.summary} | {p.where} | {p.needs or ''} | {params} |")
    return "\n".join(rows) + "\n"


def write_table(doc: str) -> str:
    """`doc` with the text between TABLE_START and TABLE_END replaced by markdown_table()."""
    head, rest = doc.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    return f"{head}{TABLE_START}\n{markdown_table()}{TABLE_END}{tail}"


if __name__ == "__main__":
    import argparse
    from pathlib import Path

    from qcc.passes import registry as installed   # the module the passes registered with, not __main__

    ap = argparse.ArgumentParser(description="print the pass table, or rewrite it in a markdown file")
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    if args.write:
        args.write.write_text(installed.write_table(args.write.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(installed.markdown_table(), end="")
