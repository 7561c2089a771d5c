"""The target registry: one `Target` record (qcc/target_record.py) per `qcc compile --target`, each
declared in its own module under qcc/backends/targets/ and collected into `TARGETS` here.

A record says what the target is called (name, aliases), which quantization schemes it lowers, what
it builds into the artifact folder and with which tools, how that build is checked at compile time
(tools, samples) and how `qcc.load` / `qcc run` run it. Its functions live with the backend code and
are named in the record as "module:function", imported only when a compile or a run needs them, so listing
the targets (`qcc --help`, `--target` choices) never imports TVM.

The compiler asks this module and nothing else: `compile_model` calls `get`, `check_options` and
`prepare`, its artifact writer `Build.build`; `qcc.load` calls `open_runner`; the CLI `choices` and
`help_text`. Adding a target: its record module in backends/targets/ (``TARGET = Target(...)``),
its backend module (configure / build / runner functions, below) and its tests; nothing here
changes (docs/targets.md, "The target registry").

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
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .backends import targets as _records
from .errors import QccError
from .shapes import ShapePlan
from .target_record import FP8_SCHEMES, INT8_SCHEMES, Target  # noqa: F401  (re-exported)


def _discover() -> tuple[Target, ...]:
    """Every `TARGET` declared by a module of qcc.backends.targets, in rank order."""
    found = []
    for info in pkgutil.iter_modules(_records.__path__):
        module = importlib.import_module(f"{_records.__name__}.{info.name}")
        record = getattr(module, "TARGET", None)
        if record is not None:
            found.append(record)
    return tuple(sorted(found, key=lambda t: (t.rank, t.name)))


TARGETS: tuple[Target, ...] = _discover()


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
                  tune_minutes: float | None = None, progress: bool = True, shapes=None) -> dict | None:
    """The flags only some targets take, before any work. Returns the MetaSchedule settings (or None).
    shapes: the ShapePlan of --dynamic / --static (compiler/shapes.py)."""
    record = get(name)
    if shapes is not None and shapes.given and "shapes" not in record.options:
        flag = "--static" if shapes.static else "--dynamic"
        raise QccError(f"{flag} applies to --target {_owners('shapes')} only (got --target {name}"
                       + (": the QDQ ONNX keeps the model's dims, every shape runs)" if name == "onnx" else ")"))
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
            arch: str | None = None, tune: dict | None = None, shapes=None, log=None) -> "Build | None":
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
    return Build(record, name, target, tune, shapes or ShapePlan())


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
    shapes: ShapePlan = field(default_factory=ShapePlan)   # --dynamic / --static (compiler/shapes.py)

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
    shapes: ShapePlan = field(default_factory=ShapePlan)

    def build(self, folder: Path, qdq_model, calib, eval_data, log=None) -> tuple[dict, dict, dict]:
        """Build into `folder`. Returns (report["backend"], manifest files to add, manifest hash key -> path)."""
        folder = Path(folder)
        job = BuildJob(self.name, self.record, qdq_model, self.target, folder, calib, eval_data,
                       log or (lambda msg: None), self.tune, self.shapes)
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
