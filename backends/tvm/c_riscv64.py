"""The riscv64 target: the portable C tree (c_source.py) cross-built for 64-bit RISC-V Linux boards.

TVM's wheels carry no RISC-V runtime, so the runtime-free C tree is the route onto these boards:
``qcc compile --target riscv64`` writes the same tree as ``--target c``, builds it with Debian's
``riscv64-linux-gnu-gcc`` for rv64gc (the Linux profile: integer multiply, atomics, float and double,
compressed) and runs it under ``qemu-riscv64`` against onnxruntime on the same QDQ graph. On a board:
``make -C c CC=gcc`` and ``./build/qcc_main IN OUT N`` (docs/targets.md). The kernels are integer
C with int32 accumulators, so the codes are the host build's, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

from qcc.errors import QccError

from . import exactness
from .artifact_io import input_shapes_from
from .c_source import CRunner, Toolchain, build_c

SYSROOT = "/usr/riscv64-linux-gnu"
RISCV64 = Toolchain("riscv64", "riscv64-linux-gnu-gcc", "riscv64-linux-gnu-ar", "riscv64-linux-gnu-size",
                    ("qemu-riscv64", "-L", SYSROOT))
CFLAGS = "-O2 -march=rv64gc -mabi=lp64d"


class RiscvRunner(CRunner):
    """The artifact's C tree built for riscv64, run under qemu-riscv64."""

    def __init__(self, folder, cflags: str = CFLAGS):
        super().__init__(folder, RISCV64, cflags)


def configure(options) -> dict:
    """`qcc compile --target riscv64`: the C tree's code is chosen by its compiler flags, not TVM's."""
    if options.mcpu is not None or options.mattr is not None:
        raise QccError("--target riscv64 builds portable C for rv64gc: --mcpu / --mattr do not apply "
                       "(pass CFLAGS to make on the board instead)")
    return {"kind": "c"}


def build_artifact(job) -> dict:
    """Write the C tree into the artifact folder, then (the riscv64 gcc and qemu installed) build it
    for rv64gc and run it on a few samples against onnxruntime on the same QDQ graph."""
    info = build_c(job.qdq_model, job.folder, input_shapes=input_shapes_from(job.calib))
    info["target"] = "riscv64"
    job.log(f"{job.name} build: {info['build_s']:.1f} s, integer ops {info['integer_ops']}, "
            f"{len(info['float_fallback'])} float fallbacks")

    def code_size(runner, info):
        info["code_size_riscv64"] = runner.sizes()

    return exactness.check_with_runner(job, info, RiscvRunner, after_run=code_size)


def open_runner(folder: Path, threads: int | None = None) -> RiscvRunner:
    """The riscv64 target's runner (qemu-riscv64 here; `threads` does not apply: the tree is serial)."""
    return RiscvRunner(folder)
