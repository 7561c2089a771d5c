"""Running a TVM build on this machine: the Relax VM for model.so (CPU or CUDA GPU), and the runner
each cross build brings (aarch64: its qcc_run under qemu-aarch64; c: its tree built with gcc).

The top of the backend's import graph beside native.py and verify.py: it imports the per-target
builds' runners, nothing below imports it. `qcc.load` / `qcc run` pick a runner through the target
registry (qcc.targets); ``Runner(folder)`` here opens whichever one the folder's tvm_io.json names.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from qcc.errors import QccError
from qcc.threads import default_threads

from . import compat, cuda
from .artifact_io import IO_SPEC, LIBRARY, ArtifactIO, check_shapes, read_spec
from .c_source import CRunner
from .cross import QemuRunner


def runner_for(folder: Path):
    """The runner of a cross-built folder (aarch64: qemu; c: host gcc), or None for a native build."""
    spec = read_spec(folder)
    if spec is None:
        return None
    target = spec.get("target") or {}
    if str(target.get("mtriple", "")).startswith("aarch64"):
        return QemuRunner(folder)
    if target.get("kind") == "c":
        return CRunner(folder)
    if target.get("mtriple") == "hexagon":
        raise QccError("a hexagon artifact is compile-only (object code, no runtime or simulator here)")
    return None


def open_runner(folder: Path, threads: int | None = None) -> "Runner":
    """The llvm / x86-64 / cuda targets' runner (the target registry's `runner`)."""
    return Runner(folder, threads=threads)


class Runner(ArtifactIO):
    """Runs out_dir/model.so with TVM's Relax VM on the CPU (a cuda build: on GPU 0). Given a cross
    build's folder it returns that build's runner instead (runner_for)."""

    def __new__(cls, out_dir, threads: int | None = None):
        # cross builds run elsewhere: aarch64 under qemu, the c target's tree with the host compiler
        other = runner_for(Path(out_dir))
        return other if other is not None else super().__new__(cls)

    def __init__(self, out_dir, threads: int | None = None):
        """threads: TVM worker threads (process-wide); default: the CPUs this process may use."""
        self.folder = Path(out_dir)
        io_path, lib = self.folder / IO_SPEC, self.folder / LIBRARY
        if not lib.is_file() or not io_path.is_file():
            raise QccError(f"{self.folder} has no TVM build ({LIBRARY} and {IO_SPEC} expected)")
        self.spec = json.loads(io_path.read_text())
        self._gpu = self.spec.get("target", {}).get("kind") == "cuda"
        self.vm = cuda.load_vm(lib) if self._gpu else compat.load_vm(lib)
        self._main = self.vm["main"]
        self.threads = None if self._gpu else compat.set_threads(threads or default_threads())

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.spec.get("static_batch"):
            return self._run_chunked(feeds)
        return self._run(feeds)

    def _run_chunked(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """A static-batch build fed a different batch size: run it in chunks along axis 0."""
        b = self.spec["inputs"][0]["shape"][0]
        arrays = {k: np.asarray(v) for k, v in feeds.items()}
        n = {a.shape[0] for a in arrays.values() if a.ndim}
        if len(n) != 1 or n == {b}:
            return self._run(feeds)
        (n,) = n
        parts = []
        for start in range(0, n, b):
            chunk = {k: v[start:start + b] for k, v in arrays.items()}
            got = next(iter(chunk.values())).shape[0]
            if got < b:     # pad the last chunk by repeating its last row
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], b - got, axis=0)]) for k, v in chunk.items()}
            parts.append([o[:got] for o in self._run(chunk)])
        return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        arrays = {}
        for inp in self.spec["inputs"]:
            if inp["name"] not in feeds:
                raise QccError(f"missing input {inp['name']!r} (expected {self.input_names})")
            x = np.asarray(feeds[inp["name"]])
            arrays[inp["name"]] = x if x.dtype == np.dtype(inp["dtype"]) else x.astype(inp["dtype"])
        check_shapes(self.spec, arrays)
        args = [cuda.to_device(x) if self._gpu else compat.to_device(x) for x in arrays.values()]
        return compat.outputs_to_numpy(self._main(*args))

