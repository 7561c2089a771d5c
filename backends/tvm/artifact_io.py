"""The files a TVM build leaves in its folder and how every runner feeds and reads them.

The bottom of the backend's import graph (numpy only, no TVM): the lowering, the per-target builds
and the runtimes all import it, it imports none of them.

    tvm_io.json   input names / dtypes / compiled shapes (dim 0 may be "batch"), output names /
                  dtypes, the TVM target dict (written by every build)
    model.so      the Relax VM executable (llvm, cuda, aarch64 builds)

The bundled runners (aarch64 ``qcc_run``, the c tree's ``qcc_main``) take ``input<i>.bin`` files of
whole batches and write ``output<i>.bin`` + ``outputs.txt``: :func:`chunks` and :func:`read_outputs`;
the tools around them (cross compilers, qemu, make) are found and run with :func:`missing_tools` and
:func:`check_call`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from qcc.errors import QccError

LIBRARY = "model.so"
IO_SPEC = "tvm_io.json"
BATCH = "batch"


class ArtifactIO:
    """Input / output names of a built artifact, from its tvm_io.json (`self.spec`): shared by the
    runners of every target (runtime.Runner, cross.QemuRunner, c_source.CRunner)."""

    spec: dict

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.spec["inputs"]]

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.spec["outputs"]]


def read_spec(folder: Path) -> dict | None:
    """The folder's tvm_io.json, or None where there is none."""
    path = Path(folder) / IO_SPEC
    return json.loads(path.read_text()) if path.is_file() else None


def write_spec(folder: Path, spec: dict) -> None:
    (Path(folder) / IO_SPEC).write_text(json.dumps(spec, indent=2) + "\n")


def check_shapes(spec: dict, arrays: dict[str, np.ndarray]) -> dict[str, int]:
    """Each input's shape against the build's: static dims equal, symbolic dims (str) one value per
    symbol across inputs and within the symbol's range (spec["ranges"]). Returns symbol -> value."""
    ranges = spec.get("ranges") or {}
    bound: dict[str, int] = {}
    for inp in spec["inputs"]:
        x = arrays[inp["name"]]
        want = inp["shape"]
        if x.ndim != len(want):
            raise QccError(f"input {inp['name']!r} has shape {list(x.shape)}, this build expects {want}")
        for axis, (w, d) in enumerate(zip(want, x.shape)):
            if not isinstance(w, str):
                if w != d:
                    raise QccError(f"input {inp['name']!r} has shape {list(x.shape)}, this build expects {want}")
                continue
            lo, hi = ranges.get(w, (1, None))
            if d < lo or (hi is not None and d > hi):
                raise QccError(f"input {inp['name']!r} axis {axis} ({w}) is {d}; this build takes {lo}..{hi}"
                               " (build it with a wider range)")
            if bound.setdefault(w, d) != d:
                raise QccError(f"input {inp['name']!r} axis {axis} ({w}) is {d}, another input has {w} = {bound[w]}")
    return bound


def input_shapes_from(feeds: dict[str, np.ndarray]) -> dict[str, list]:
    """input_shapes for build() from sample data (e.g. the calibration set): the per-sample shape
    with a dynamic batch dim."""
    return {k: [BATCH] + list(np.shape(v)[1:]) for k, v in feeds.items()}


def write_atomic(out_dir: Path, name: str, write) -> None:
    """`write(tmp_path)` next to out_dir/name, then one rename: a failed write never leaves a partial file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{Path(name).stem}.", suffix=Path(name).suffix, dir=out_dir)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, out_dir / name)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def missing_tools(*tools: str) -> list[str]:
    """The programs of `tools` not on PATH."""
    return [t for t in tools if shutil.which(t) is None]


def check_call(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    """Run a tool; QccError with the last lines of its output if it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise QccError(f"{what} failed ({cmd[0]} exit {proc.returncode}): {' | '.join(tail)}")
    return proc


def chunks(spec: dict, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], int, int]:
    """Inputs as arrays of n_batches x batch (the last one padded by repeating its last row),
    in spec order. Returns (arrays, number of samples, number of batches)."""
    arrays, n = [], None
    for inp in spec["inputs"]:
        if inp["name"] not in feeds:
            raise QccError(f"missing input {inp['name']!r} (expected {[i['name'] for i in spec['inputs']]})")
        x = np.asarray(feeds[inp["name"]]).astype(inp["dtype"], copy=False)
        want = inp["shape"]
        if x.ndim != len(want) or list(x.shape[1:]) != list(want[1:]):
            raise QccError(f"input {inp['name']!r} has shape {list(x.shape)}, this build expects {want}")
        if n is not None and x.shape[0] != n:
            raise QccError("inputs disagree on the number of samples (axis 0)")
        n = x.shape[0]
        arrays.append(x)
    b = spec["inputs"][0]["shape"][0]
    n_batches = max(1, -(-n // b))
    padded = []
    for x in arrays:
        extra = n_batches * b - n
        padded.append(np.ascontiguousarray(np.concatenate([x, np.repeat(x[-1:], extra, axis=0)]) if extra else x))
    return padded, n, n_batches


def write_inputs(in_dir: Path, arrays: list[np.ndarray]) -> None:
    for i, x in enumerate(arrays):
        x.tofile(in_dir / f"input{i}.bin")


def read_outputs(out_dir: Path, n: int, n_batches: int) -> list[np.ndarray]:
    """Outputs written by qcc_run / the C tree's runner: outputs.txt + output<i>.bin."""
    outs = []
    for i, line in enumerate((out_dir / "outputs.txt").read_text().split("\n")):
        if not line.strip():
            continue
        dtype, ndim, *dims = line.split()
        shape = [int(d) for d in dims[:int(ndim)]]
        data = np.fromfile(out_dir / f"output{i}.bin", dtype=dtype)
        batch = shape[0] if shape else 1
        arr = data.reshape([n_batches * batch] + shape[1:]) if shape else data.reshape(n_batches)
        outs.append(arr[:n] if shape else arr)
    return outs
