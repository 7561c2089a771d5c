"""The search space: a finite grid of quantization choices, each point mapping to one QuantConfig.

Dimensions (a point is a dict {dimension: value}, JSON-serializable; its key is its sorted JSON):
    scheme          int8 (asymmetric U8 activations), int8-sym, uint8-sym; fp8-e4m3 on --target onnx
    power_of_two    scales rounded up to powers of two (integer schemes only)
    calibration     minmax, percentile-99.9 / 99.99 / 99.999, entropy, mse
    granularity     per-channel or per-tensor weights
    int4            fraction of the compute layers whose weights drop to int4 (W4A8), least
                    sensitive first (highest int4 weight SQNR); --target onnx only
    float_layers    how many of the most sensitive layers (lowest int8 SQNR proxy) stay float
    pass:NAME       one per registered graph pass (passes/registry.py): off, on, or on with each
                    combination of its record's `params`

New passes plug in without touching the searchers: a registered pass is a dimension automatically;
its record's `params` grid and `to_config` (one parameter choice -> QuantConfig field values) make it
tunable, and its `applies` says when it cannot change a given graph (it is then left out of that
model's space rather than doubling it).
"""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import dataclass, field

import onnx_ir as ir
from qcc import extras
from qcc.config import QuantConfig
from qcc.errors import QccError
from qcc.passes import registry as passes
from qcc.qtypes import QType

CALIBRATION_CHOICES = ("minmax", "percentile-99.9", "percentile-99.99", "percentile-99.999", "entropy", "mse")

POOL = 4096              # a space larger than this is searched on a fixed random sample of this many points


def _pass_params(name: str) -> dict[str, list]:
    """The pass's tunable parameter grid (its registry record), {} when it has none."""
    return passes.get(name).params


@dataclass
class Space:
    dims: dict[str, list]
    float_order: list[str] = field(default_factory=list)   # compute nodes, most sensitive first
    int4_order: list[tuple[str, str]] = field(default_factory=list)  # (node, weight), least sensitive first
    base: QuantConfig = field(default_factory=QuantConfig)

    # ---- points ----------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.dims.values())

    def points(self, pool: int = POOL) -> list[dict]:
        """Every valid point, in product order; for a space of more than `pool` points, a fixed
        (seed 0, so a resumed run sees the same list) sample of `pool` distinct valid points, plus
        the point of the base config."""
        names = list(self.dims)
        if self.size <= pool:
            return [p for p in (dict(zip(names, c)) for c in itertools.product(*(self.dims[n] for n in names)))
                    if self.valid(p)]
        rng = random.Random(0)
        seen, out = set(), []
        base = self.base_point()
        if base is not None:
            seen.add(self.key(base))
            out.append(base)
        for _ in range(pool * 20):
            if len(out) >= pool:
                break
            p = {n: self.dims[n][rng.randrange(len(self.dims[n]))] for n in names}
            k = self.key(p)
            if k not in seen and self.valid(p):
                seen.add(k)
                out.append(p)
        return out

    def base_point(self) -> dict | None:
        """The point whose config is the base config (all choices at their defaults), if any."""
        cfg = self.base
        point = {"scheme": cfg.scheme, "power_of_two": cfg.power_of_two, "granularity": cfg.granularity,
                 "int4": 0.0, "float_layers": 0,
                 "calibration": f"percentile-{cfg.percentile:g}" if cfg.calibration == "percentile" else cfg.calibration}
        for name in self.pass_names:
            point[f"pass:{name}"] = name in cfg.passes if not _pass_params(name) else False
            if name in cfg.passes and _pass_params(name):
                return None
        point = {k: v for k, v in point.items() if k in self.dims}
        if any(v not in self.dims[k] for k, v in point.items()):
            return None
        return point if self.to_config(point).to_dict() == cfg.to_dict() else None

    def valid(self, point: dict) -> bool:
        scheme = point.get("scheme", self.base.scheme)
        if point.get("power_of_two") and scheme.startswith("fp8"):
            return False  # FP8 scales are not shifts; the flag would only duplicate points
        return True

    @staticmethod
    def key(point: dict) -> str:
        return json.dumps(point, sort_keys=True)

    @property
    def pass_names(self) -> list[str]:
        return [n[5:] for n in self.dims if n.startswith("pass:")]

    @property
    def pass_param_keys(self) -> list[tuple[str, str]]:
        return [(p, k) for p in self.pass_names for k in sorted(_pass_params(p))]

    def calibration_of(self, point: dict) -> tuple[str, float]:
        choice = point.get("calibration")
        if choice is None:
            return self.base.calibration, self.base.percentile
        if choice.startswith("percentile-"):
            return "percentile", float(choice.split("-", 1)[1])
        return choice, self.base.percentile

    def float_nodes(self, point: dict) -> list[str]:
        return self.float_order[:int(point.get("float_layers", 0))]

    def int4_nodes(self, point: dict) -> list[str]:
        return [n for n, _ in self._int4(point)]

    def _int4(self, point: dict) -> list[tuple[str, str]]:
        floats = set(self.float_nodes(point))
        candidates = [(n, w) for n, w in self.int4_order if n not in floats]
        count = int(round(float(point.get("int4", 0.0)) * len(self.int4_order)))
        return candidates[:count]

    def to_config(self, point: dict) -> QuantConfig:
        method, pct = self.calibration_of(point)
        fields = {
            "scheme": point.get("scheme", self.base.scheme),
            "power_of_two": bool(point.get("power_of_two", self.base.power_of_two)),
            "granularity": point.get("granularity", self.base.granularity),
            "calibration": method,
            "percentile": pct,
            "exclude": list(self.base.exclude) + self.float_nodes(point),
            "overrides": {**self.base.overrides, **{w: "w4a8" for _, w in self._int4(point)}},
        }
        chosen = [p for p in self.base.passes if f"pass:{p}" not in self.dims]
        for name in self.pass_names:
            choice = point.get(f"pass:{name}", False)
            if choice:
                chosen.append(name)
                to_config = passes.get(name).to_config
                if isinstance(choice, dict) and to_config is not None:
                    fields.update(to_config(choice))
        fields["passes"] = [p for p in passes.names() if p in chosen]  # canonical order
        cfg = QuantConfig(**{**self.base.to_dict(), **fields})
        return cfg

    def to_json(self) -> dict:
        return {"dims": self.dims, "float_order": self.float_order, "int4_order": self.int4_order}


DIMENSIONS = ("scheme", "power_of_two", "calibration", "granularity", "int4", "float_layers")


def check_restrict(restrict: dict | None) -> None:
    known = list(DIMENSIONS) + [f"pass:{p}" for p in passes.names()]
    for name in restrict or {}:
        if name not in known:
            raise QccError(f"unknown search dimension {name!r}; known: {', '.join(known)}")


def pass_values(name: str) -> list:
    params = _pass_params(name)
    if not params:
        return [False, True]
    keys = sorted(params)
    return [False] + [dict(zip(keys, combo)) for combo in itertools.product(*(params[k] for k in keys))]


def default_space(stats, float_model: ir.Model, target: str = "onnx", base: QuantConfig | None = None,
                  restrict: dict[str, list] | None = None) -> Space:
    """The full space for a model (`stats`: features.ModelStats of its float graph). `restrict` replaces
    a dimension's values (or drops the dimension with an empty list: the base config decides it)."""
    from qcc import targets

    sens = stats.sensitivity()
    order = sorted(range(len(stats.layers)), key=lambda i: sens[i])
    int4_db = stats.weight_sqnr(QType.INT4, True)
    int4_order = sorted(range(len(stats.layers)), key=lambda i: -int4_db[i])
    # what each target's backend lowers: int4 weights only as QDQ for onnxruntime; FP8 also through
    # TVM on x86; the edge builds take int8 only
    lowers = targets.get(target).schemes   # None: every scheme
    fp8 = lowers is None or "fp8-e4m3" in lowers
    int4 = lowers is None or "w4a8" in lowers
    dims: dict[str, list] = {
        "scheme": ["int8", "int8-sym", "uint8-sym"] + (["fp8-e4m3"] if fp8 else []),
        "power_of_two": [False, True],
        "calibration": list(CALIBRATION_CHOICES),
        "granularity": ["per-channel", "per-tensor"],
        "int4": [0.0, 0.25, 0.5, 0.75] if int4 else [0.0],
        "float_layers": [0, 1, 2] if len(stats.layers) > 2 else [0],
    }
    for record in passes.registry().values():
        if record.needs and not extras.available(record.needs):
            continue   # its optional package is not installed: searched only where it can run
        if record.applies is None or record.applies(float_model):   # else it cannot change this model
            dims[f"pass:{record.name}"] = pass_values(record.name)
    check_restrict(restrict)
    for name, values in (restrict or {}).items():
        if values:
            dims[name] = list(values)
        else:
            dims.pop(name, None)
    return Space(dims, [stats.layers[i].node for i in order],
                 [(stats.layers[i].node, stats.layers[i].weight) for i in int4_order], base or QuantConfig())
