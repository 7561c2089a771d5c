"""Calibration / evaluation data: `.npz` files keyed by the model's input names, axis 0 = samples.

Validation happens before any compute, so bad data fails fast with one clear line: unknown or missing
keys, an empty set, mismatched sample counts, wrong rank, fixed dimensions that disagree with the
model, non-numeric dtypes, NaN or inf.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from .errors import QccError

def load_npz(path: str | Path, what: str = "calibration") -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise QccError(f"{what} file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise QccError(f"{what} file {path} is not a readable .npz ({exc})") from None


@dataclass
class InputSpec:
    name: str
    dtype: str                      # numpy dtype name, e.g. "float32", "int64"
    shape: list[int | None]         # None for symbolic dimensions

    @property
    def is_float(self) -> bool:
        return np.dtype(self.dtype).kind == "f"


def input_specs(model: ir.Model) -> list[InputSpec]:
    specs = []
    for v in model.graph.inputs:
        if v.is_initializer():
            continue
        dtype = np.dtype(v.dtype.numpy()).name if v.dtype is not None else "float32"
        shape = [d if isinstance(d, int) else None for d in v.shape] if v.shape is not None else None
        specs.append(InputSpec(v.name, dtype, shape))
    return specs


def validate_feeds(specs: list[InputSpec], feeds: dict[str, np.ndarray], what: str = "calibration") -> dict[str, np.ndarray]:
    """Check `feeds` against the model's inputs; returns arrays cast to the inputs' dtypes."""
    inputs = {s.name: s for s in specs}
    missing = sorted(set(inputs) - set(feeds))
    extra = sorted(set(feeds) - set(inputs))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"unknown {', '.join(extra)}")
        raise QccError(f"{what} data keys don't match the model inputs ({'; '.join(parts)}); "
                       f"expected keys: {', '.join(inputs)}")
    out: dict[str, np.ndarray] = {}
    counts = set()
    for name, spec in inputs.items():
        arr = np.asarray(feeds[name])
        if arr.dtype.kind not in "biuf":
            raise QccError(f"{what} data {name!r} has dtype {arr.dtype}; expected numbers")
        shape = spec.shape
        if shape is not None and arr.ndim != len(shape):
            raise QccError(f"{what} data {name!r} has shape {arr.shape}; the model expects rank {len(shape)} "
                           f"({_fmt(shape)}) with samples on axis 0")
        if arr.ndim == 0 or arr.shape[0] == 0:
            raise QccError(f"{what} data {name!r} is empty: it needs at least one sample on axis 0")
        if shape is not None:
            for axis, dim in enumerate(shape):
                if axis > 0 and dim is not None and arr.shape[axis] != dim:
                    raise QccError(f"{what} data {name!r} has shape {arr.shape}; the model expects {_fmt(shape)}")
        counts.add(arr.shape[0])
        if spec.is_float:
            if arr.dtype.kind != "f":
                # raw integer pixels / token ids fed to a float input would calibrate the wrong ranges
                raise QccError(f"{what} data {name!r} is {arr.dtype}; the model input is {spec.dtype} (convert "
                               f"and scale it as the model expects, e.g. x.astype(np.float32) / 255 for pixels)")
            else:
                bad = ~np.isfinite(arr)
                if bad.any():
                    kind = "NaN" if np.isnan(arr).any() else "inf"
                    raise QccError(f"{what} data {name!r} contains {int(bad.sum())} {kind}/non-finite values")
        elif arr.dtype.kind == "f":
            raise QccError(f"{what} data {name!r} is {arr.dtype}; the model input is {spec.dtype}")
        out[name] = arr.astype(spec.dtype, copy=False)
    if len(counts) > 1:
        raise QccError(f"{what} data inputs disagree on the sample count (axis 0): {sorted(counts)}")
    return out


def n_samples(feeds: dict[str, np.ndarray]) -> int:
    return len(next(iter(feeds.values())))


def subset(feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    return {k: v[:n] for k, v in feeds.items()}


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"
