"""Which input dims a build keeps open: `qcc compile --dynamic INPUT:AXIS=MIN..MAX` / `--static`.

A `ShapePlan` is what the user asked for; the target's build turns it into its input shapes with
`resolve` (the model's inputs and a calibration sample in hand):

* default: every dim the model leaves open (dim_param, -1) stays open, the way onnxruntime runs the
  QDQ graph; each takes any size >= 1 unless `--dynamic` gives it a range.
* `--dynamic INPUT:AXIS[=MIN..MAX]`: that dim is open (also where the model fixed it: the user says
  the graph computes it) within MIN..MAX (default 1..any). A symbol shared by several inputs (BERT's
  `sequence`) takes the one range.
* `--static`: every dim pinned to the calibration sample's (batch 1; other batches run in chunks),
  the fastest code for that one shape.

Numpy only: the CLI parses flags without importing a backend.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import QccError

BATCH = "batch"
_SPEC = re.compile(r"^(?P<input>[^:=]+):(?P<axis>-?\d+)(?:=(?P<lo>\d+)?\.\.(?P<hi>\d+)?)?$")


@dataclass(frozen=True)
class DynamicDim:
    input: str
    axis: int
    lo: int = 1
    hi: int | None = None      # None: any size


@dataclass(frozen=True)
class ShapePlan:
    static: bool = False
    dynamic: tuple[DynamicDim, ...] = field(default_factory=tuple)

    @property
    def given(self) -> bool:
        return self.static or bool(self.dynamic)


def parse_dynamic(text: str) -> DynamicDim:
    """'input_ids:1=1..512' (or 'x:0', 'x:0=..64', 'x:3=160..') -> DynamicDim."""
    m = _SPEC.match(text.strip())
    if m is None:
        raise QccError(f"--dynamic expects INPUT:AXIS or INPUT:AXIS=MIN..MAX (e.g. input_ids:1=1..512), got {text!r}")
    lo = int(m["lo"]) if m["lo"] else 1
    hi = int(m["hi"]) if m["hi"] else None
    if lo < 1 or (hi is not None and hi < lo):
        raise QccError(f"--dynamic {text!r}: the range must be 1 <= MIN <= MAX")
    return DynamicDim(m["input"], int(m["axis"]), lo, hi)


def plan(dynamic: list[str] | tuple | None = None, static: bool = False) -> ShapePlan:
    """The plan of `--dynamic SPEC ...` / `--static` (DynamicDim entries pass through)."""
    dims = tuple(d if isinstance(d, DynamicDim) else parse_dynamic(d) for d in (dynamic or ()))
    if static and dims:
        raise QccError("--static pins every dim; it cannot be combined with --dynamic")
    seen = set()
    for d in dims:
        if (d.input, d.axis) in seen:
            raise QccError(f"--dynamic names {d.input}:{d.axis} twice")
        seen.add((d.input, d.axis))
    return ShapePlan(static=static, dynamic=dims)


def symbol(input_name: str, axis: int, dim_param: str | None = None) -> str:
    """The name of an open input dim: "batch" for axis 0, else its dim_param (inputs that share one,
    input_ids and attention_mask's "sequence", share the dim), else input_axis; C-identifier safe."""
    if axis == 0:
        return BATCH
    return "".join(c if c.isalnum() else "_" for c in (dim_param or f"{input_name}_{axis}"))


def parse_sizes(text: str) -> dict[str, int]:
    """`qcc bench --shapes` point: 'batch=4,sequence=64' -> {"batch": 4, "sequence": 64}."""
    sizes = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if not name.strip() or not value.strip().isdigit() or int(value) < 1:
            raise QccError(f"--shapes expects SYMBOL=N[,SYMBOL=N...] (e.g. batch=4,sequence=64), got {text!r}")
        sizes[name.strip()] = int(value)
    return sizes


def input_dims(value_info) -> list:
    """An ONNX graph input's dims: ints where static, `symbol` names where open (dim_param, -1, 0)."""
    name = value_info.name
    return [d.dim_value if d.dim_value > 0 else symbol(name, axis, d.dim_param)
            for axis, d in enumerate(value_info.type.tensor_type.shape.dim)]


def fit(feeds: dict, dims: dict[str, list], sizes: dict[str, int]) -> dict:
    """The feeds at `sizes`: each input's open dims (dims: name -> ints / symbols) cropped or, where
    the data is shorter, repeated cyclically along that axis (`qcc bench --shapes` times real inputs
    at any size)."""
    import numpy as np

    open_dims = {d for ds in dims.values() for d in ds if isinstance(d, str)}
    unknown = sorted(set(sizes) - open_dims)
    if unknown:
        raise QccError(f"--shapes names {', '.join(unknown)}; this build's open dims are "
                       f"{', '.join(sorted(open_dims)) or 'none'}")
    out = {}
    for name, x in feeds.items():
        x = np.asarray(x)
        for axis, d in enumerate(dims.get(name, [])):
            if isinstance(d, str) and d in sizes and axis < x.ndim:
                x = np.take(x, np.arange(sizes[d]) % x.shape[axis], axis=axis)
        out[name] = np.ascontiguousarray(x)
    return out


def resolve(shape_plan: ShapePlan, inputs: list[dict], sample_shapes: dict[str, tuple]) -> dict:
    """The build's shapes. inputs: the model's (name, shape with ints and symbol strings: the io spec);
    sample_shapes: one calibration batch's shape per input. Returns {"input_shapes": name -> dims
    (ints, symbols), "ranges": symbol -> [lo, hi or None], "sizes": symbol -> the calibration size
    (a static build's, or the fallback where a model cannot stay dynamic), "static": bool}."""
    by_name = {i["name"]: list(i["shape"]) for i in inputs}
    for d in shape_plan.dynamic:
        if d.input not in by_name:
            raise QccError(f"--dynamic {d.input}:{d.axis}: the model has no input {d.input!r} "
                           f"(inputs: {', '.join(by_name)})")
        rank = len(by_name[d.input])
        if not -rank <= d.axis < rank:
            raise QccError(f"--dynamic {d.input}:{d.axis}: input {d.input!r} has rank {rank}")
    shapes = {name: list(dims) for name, dims in by_name.items()}
    ranges: dict[str, list] = {}
    for d in shape_plan.dynamic:
        dims = shapes[d.input]
        axis = d.axis % len(dims)
        if not isinstance(dims[axis], str):
            dims[axis] = symbol(d.input, axis)
        sym = dims[axis]
        if sym in ranges and ranges[sym] != [d.lo, d.hi]:
            raise QccError(f"--dynamic gives {sym!r} (shared by several inputs) two ranges: {ranges[sym]} and "
                           f"{[d.lo, d.hi]}")
        ranges[sym] = [d.lo, d.hi]
    sizes: dict[str, int] = {}
    for name, dims in shapes.items():
        sample = sample_shapes.get(name)
        for axis, dim in enumerate(dims):
            if isinstance(dim, str) and sample is not None and axis < len(sample):
                sizes.setdefault(dim, 1 if axis == 0 else int(sample[axis]))
    for dim in {d for dims in shapes.values() for d in dims if isinstance(d, str)}:
        ranges.setdefault(dim, [1, None])
    if shape_plan.static:
        shapes = {name: [d if not isinstance(d, str) else sizes.get(d, d) for d in dims]
                  for name, dims in shapes.items()}
        ranges = {}
    return {"input_shapes": shapes, "ranges": ranges, "sizes": sizes, "static": shape_plan.static}
