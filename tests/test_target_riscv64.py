"""--target riscv64 (backends/tvm/c_riscv64.py): the C tree cross-built for rv64gc and run under
qemu-riscv64 matches the host build of the same tree bit for bit and onnxruntime on the QDQ graph;
the executable really is RISC-V code; flags that do not apply are refused before any work."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import qcc
from qcc import models
from qcc.backends.tvm import c_riscv64, c_source
from qcc.errors import QccError

TOOLS = ("riscv64-linux-gnu-gcc", "qemu-riscv64", "make", "gcc")
_missing = [t for t in TOOLS if shutil.which(t) is None]
needs_tools = pytest.mark.skipif(bool(_missing), reason=f"{', '.join(_missing)} not installed; "
                                 ".ci/install installs gcc-riscv64-linux-gnu and qemu-user")
EM_RISCV = 243      # ELF e_machine of RISC-V


@needs_tools
def test_riscv64_artifact_matches_host_and_onnxruntime(tmp_path):
    entry = models.get("fashion-cnn", n_calib=32, n_eval=8)
    out = tmp_path / "rv"
    np.savez(tmp_path / "calib.npz", **entry.calib)
    proc = subprocess.run([sys.executable, "-m", "qcc.cli", "compile", str(entry.onnx_path), "--calib",
                           str(tmp_path / "calib.npz"), "--target", "riscv64", "-o", str(out), "--quiet"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res_backend = json.loads((out / "report.json").read_text())["backend"]
    # onnxruntime's float QDQ semantics (its fused kernels are not exact without VNNI) flip a few
    # near-tie roundings that propagate: within two steps; the host build of the tree is the exact check
    e = res_backend["exactness"]["logits"]
    assert e["max_abs"] <= 2 * e["step"] + 1e-6, e
    assert res_backend["code_size_riscv64"]["total"]["code"] > 0
    x = entry.eval["input"][:8]
    art = qcc.load(out)
    got = art.run({"input": x})[0]
    runner = art._runner()
    elf = runner.exe.read_bytes()[:20]
    assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == EM_RISCV
    host = c_source.CRunner(out, "host").run({"input": x})[0]
    assert np.array_equal(got.view(np.uint8), host.view(np.uint8))


def test_flags_that_do_not_apply_are_refused(tmp_path):
    entry = models.get("fashion-cnn", n_calib=8, n_eval=2)
    for kw in ({"mcpu": "sifive-u74"}, {"mattr": ["+v"]}):
        with pytest.raises(QccError, match="--target riscv64 builds portable C for rv64gc"):
            qcc.compile_model(str(entry.onnx_path), entry.calib, target="riscv64", out_dir=tmp_path / "x",
                              progress=False, **kw)
        assert not (tmp_path / "x").exists()
    assert qcc.targets.get("riscv64").function("runner") is c_riscv64.open_runner
