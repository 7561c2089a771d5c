"""The target registry: one `Target` record per `qcc compile --target`, all of them in `TARGETS` below.

A record says what the target is called (name, aliases), which quantization schemes it lowers, what
it builds into the artifact folder and with which tools, how that build is checked at compile time
(tools, samples) and how `qcc.load` / `qcc run` run it. Its functions live with the backend code and
are named here as "module:function", imported only when a compile or a run needs them, so listing
the targets (`qcc --help`, `--target` choices) never imports TVM.

The compiler asks this module and nothing else: `compile_model` calls `get`, `check_options` and
`prepare`, its artifact writer `Build.build`; `qcc.load` calls `open_runner`; the CLI `choices` and
`help_text`. Adding a target: its backend module (configure / build / runner functions, below),
its tests, and one `Target(...)` entry in `TARGETS` (docs/targets.md, "The target registry").

The functions a record names, and what they get:

    configure(options) -> dict     options: Options (mcpu, mattr, arch, schemes): the backend's target
                                   dict, or QccError for a flag or scheme it refuses (before any work)
    build(job) -> dict             job: BuildJob: writes the target's files into job.folder, checks
                                   them (job.check_feeds(), job.missing_tools()); returns report["backend"]
                                   (with "target", "mcpu", "static_batch" and "files": key -> path)
    runner(folder, threads)        an object whose run(feeds) -> list of arrays runs the artifact here
"""

from __future__ import annotations

import importlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import QccError

INT8_SCHEMES = frozenset({"int8", "int8-sym", "uint8-sym"})
FP8_SCHEMES = frozenset({"fp8-e4m3", "fp8-e5m2"})


@dataclass(frozen=True)
class Target:
    name: str
    help: str                                  # --target help: what the artifact holds
    aliases: tuple[str, ...] = ()              # other --target spellings (the manifest keeps the one given)
    schemes: frozenset | None = None           # schemes it lowers (None: every scheme)
    lowers: str = ""                           # refusal text: "target 'x' <lowers>; <schemes> needs <instead>"
    instead: str = ""
    output: str | None = None                  # what it builds ("a library (model.so)"); None: nothing to build
    options: frozenset = frozenset()           # which of --tune / --arch it takes (--mcpu / --mattr: configure)
    configure: str | None = None               # "module:function" (see the module docstring)
    build: str | None = None
    runner: str | None = None                  # None: nothing runs it
    layout: str = "library"                    # how the manifest lists its files: "library" or "tree"
    build_tools: tuple[str, ...] = ()          # programs its build needs on PATH
    tools: tuple[str, ...] = ()                # programs its compile-time check needs (missing: built, not checked)
    verify: str = ""                           # how a build is checked at compile time
    samples: int = 0                           # samples it is checked on against onnxruntime

    @property
    def spellings(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def function(self, which: str) -> Callable:
        """The configure / build / runner function this record names, imported now."""
        ref = getattr(self, which)
        if ref is None:
            raise QccError(f"internal error: target {self.name!r} has no {which} function")
        module, _, attr = ref.partition(":")
        return getattr(importlib.import_module(module), attr)

    def missing(self, tools: tuple[str, ...] | None = None) -> list[str]:
        """The programs of `tools` (default: the check's) not on PATH."""
        return [t for t in (self.tools if tools is None else tools) if shutil.which(t) is None]

    def configure_target(self, options: "Options") -> dict | None:
        return self.function("configure")(options) if self.configure else None


_TVM = "qcc.backends.tvm"
_TVM_SCHEMES = dict(schemes=INT8_SCHEMES | FP8_SCHEMES, lowers="lowers int8 and fp8 schemes",
                    instead="--target onnx in this version (int4 tensors need explicit packing)")
_EDGE_SCHEMES = dict(schemes=INT8_SCHEMES, lowers="lowers int8 schemes only", instead="--target onnx or llvm")
_EDGE_HELP = "cross builds for edge boards and DSPs (docs/targets.md)"

TARGETS: tuple[Target, ...] = (
    Target("onnx", "QDQ ONNX run by onnxruntime",
           runner="qcc.artifact:onnx_runner",
           verify="nothing to check: onnxruntime on the QDQ graph is the reference"),
    Target("llvm", "integer code built by TVM (model.so)", aliases=("x86-64",), **_TVM_SCHEMES,
           output="a library (model.so)", options=frozenset({"tune"}),
           configure=f"{_TVM}.target:configure", build=f"{_TVM}.native:build_llvm",
           runner=f"{_TVM}.runtime:open_runner",
           verify="run here, against onnxruntime", samples=16),
    Target("cuda", "NVIDIA GPUs, with --arch (docs/cuda_fp8.md)", **_TVM_SCHEMES,
           output="a library (model.so)", options=frozenset({"arch"}),
           configure=f"{_TVM}.cuda:configure", build=f"{_TVM}.native:build_cuda",
           runner=f"{_TVM}.runtime:open_runner", build_tools=("nvcc",),
           verify="every kernel compiled by nvcc; run against onnxruntime where this machine has a GPU",
           samples=16),
    Target("aarch64", _EDGE_HELP, **_EDGE_SCHEMES, output="an artifact folder",
           configure=f"{_TVM}.cross:configure_aarch64", build=f"{_TVM}.cross:build_aarch64_artifact",
           runner=f"{_TVM}.cross:open_runner", layout="tree",
           build_tools=("aarch64-linux-gnu-g++", "aarch64-linux-gnu-objdump"), tools=("qemu-aarch64",),
           verify="run under qemu-aarch64, against onnxruntime", samples=2),
    Target("c", _EDGE_HELP, **_EDGE_SCHEMES, output="an artifact folder",
           configure=f"{_TVM}.c_source:configure", build=f"{_TVM}.c_source:build_artifact",
           runner=f"{_TVM}.c_source:open_runner", layout="tree", tools=("gcc", "make"),
           verify="the tree built with the host gcc and run, against onnxruntime", samples=2),
    Target("hexagon", _EDGE_HELP, **_EDGE_SCHEMES, output="an artifact folder",
           configure=f"{_TVM}.cross:configure_hexagon", build=f"{_TVM}.cross:build_hexagon_artifact",
           layout="tree", verify="not checked: compile-only (no Hexagon runtime or simulator)"),
)


def register(record: Target) -> None:
    """Add a target (a plugin, or a test): its spellings must be new."""
    global TARGETS
    taken = {s for t in TARGETS for s in t.spellings}
    clash = sorted(set(record.spellings) & taken)
    if clash:
        raise ValueError(f"target spellings already registered: {clash}")
    TARGETS = TARGETS + (record,)


def unregister(name: str) -> None:
    global TARGETS
    TARGETS = tuple(t for t in TARGETS if t.name != name)


def names() -> list[str]:
    """The canonical target names, in registration order."""
    return [t.name for t in TARGETS]


def choices() -> list[str]:
    """Every --target spelling: each name followed by its aliases."""
    return [s for t in TARGETS for s in t.spellings]


def find(name: str) -> Target | None:
    return next((t for t in TARGETS if name in t.spellings), None)


def get(name: str) -> Target:
    record = find(name)
    if record is None:
        raise QccError(f"unknown target {name!r}; this build supports: {', '.join(choices())}")
    return record


def help_text() -> str:
    """The --target help: targets with the same help share one entry."""
    groups: dict[str, list[str]] = {}
    for t in TARGETS:
        groups.setdefault(t.help, []).extend(t.spellings)
    return "; ".join(f"{' / '.join(spellings)}: {text}" for text, spellings in groups.items())


def _owners(option: str) -> str:
    owners = [t for t in TARGETS if option in t.options]
    return " / ".join(f"{t.name} ({', '.join(t.aliases)})" if t.aliases else t.name for t in owners) or "none"


def check_options(name: str, *, arch: str | None = None, tune_trials: int | None = None,
                  tune_minutes: float | None = None, progress: bool = True) -> dict | None:
    """The flags only some targets take, before any work. Returns the MetaSchedule settings (or None)."""
    record = get(name)
    tune = None
    if tune_trials is not None or tune_minutes is not None:   # MetaSchedule tuning (backends/tvm/tune.py)
        if "tune" not in record.options:
            raise QccError(f"--tune applies to --target {_owners('tune')} only (got --target {name})")
        if tune_trials is None or tune_trials < 1 or (tune_minutes is not None and tune_minutes <= 0):
            raise QccError("--tune needs a positive number of trials and --tune-minutes a positive time")
        tune = {"trials": int(tune_trials), "minutes": tune_minutes, "quiet": not progress}
    if arch is not None and "arch" not in record.options:
        raise QccError(f"--arch applies to --target {_owners('arch')} only (got --target {name})")
    return tune


@dataclass
class Options:
    """What `qcc compile` hands a target's configure function."""
    mcpu: str | None = None
    mattr: list[str] | None = None
    arch: str | None = None
    schemes: frozenset = frozenset()


def config_schemes(config) -> frozenset:
    """The schemes a QuantConfig uses: its scheme and every non-float override."""
    return frozenset({config.scheme, *(v for v in config.overrides.values() if v != "float")})


def prepare(name: str, config, out_dir, *, mcpu: str | None = None, mattr: list[str] | None = None,
            arch: str | None = None, tune: dict | None = None, log=None) -> "Build | None":
    """Everything a target refuses, before calibrating: no output folder, a scheme it does not lower,
    a flag its configure refuses. Returns the build to run into the artifact folder (None: the
    target builds nothing beyond the QDQ graph)."""
    record = get(name)
    if record.build is None:
        return None
    if out_dir is None:
        raise QccError(f"target {name!r} builds {record.output}: give an output folder")
    schemes = config_schemes(config)
    unsupported = sorted(schemes - record.schemes) if record.schemes is not None else []
    if unsupported:  # refuse before calibrating, not after
        raise QccError(f"target {name!r} {record.lowers}; {', '.join(unsupported)} needs {record.instead}")
    target = record.configure_target(Options(mcpu=mcpu, mattr=mattr, arch=arch, schemes=schemes))
    if log is not None:
        log(f"TVM target: {target}")
    return Build(record, name, target, tune)


@dataclass
class BuildJob:
    """What a target's build function gets."""
    name: str                       # the target as given (an alias stays an alias)
    record: Target
    qdq_model: Any
    target: dict | None             # what the record's configure returned
    folder: Path
    calib: dict
    eval_data: dict | None
    log: Callable[[str], None]
    tune: dict | None = None

    def check_feeds(self) -> dict:
        """The samples the build is checked on: the first `record.samples` of the evaluation set (else calibration)."""
        data = self.eval_data if self.eval_data is not None else self.calib
        return {k: v[:self.record.samples] for k, v in data.items()}

    def missing_tools(self) -> list[str]:
        return self.record.missing()


@dataclass
class Build:
    """A target prepared for one compile (`prepare`); `build` runs in the artifact writer."""
    record: Target
    name: str
    target: dict | None
    tune: dict | None = None

    def build(self, folder: Path, qdq_model, calib, eval_data, log=None) -> tuple[dict, dict, dict]:
        """Build into `folder`. Returns (report["backend"], manifest files to add, manifest hash key -> path)."""
        folder = Path(folder)
        job = BuildJob(self.name, self.record, qdq_model, self.target, folder, calib, eval_data,
                       log or (lambda msg: None), self.tune)
        info = self.record.function("build")(job)
        files, hashed = _LAYOUTS[self.record.layout](folder, info["files"])
        return info, files, hashed


def _library_layout(folder: Path, files: dict) -> tuple[dict, dict]:
    # model.so and its io spec; the hash is recorded under "library"
    return {"library": files["library"], "io": files["io"]}, {"library": files["library"]}


def _tree_layout(folder: Path, files: dict) -> tuple[dict, dict]:
    # every file the build lists (folders walked), each hashed under its path; "library" names the
    # built code as for the native targets (the c tree's folder for c, absent for a hexagon object)
    out = dict(files)
    out["library"] = files.get("library") or files.get("c_source")
    if out["library"] is None:
        out.pop("library")
    hashed = {}
    for name in files.values():
        path = folder / name
        for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if f.is_file():
                rel = str(f.relative_to(folder))
                hashed[rel] = rel
    return out, hashed


_LAYOUTS = {"library": _library_layout, "tree": _tree_layout}


def open_runner(name: str, folder, threads: int | None = None):
    """The runner of an artifact built for target `name` (its manifest's "target")."""
    record = find(name)
    if record is None or record.runner is None:
        raise QccError(f"artifact target {name!r} has no runner in this qcc version")
    return record.function("runner")(Path(folder), threads)
