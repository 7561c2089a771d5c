"""Edge-target figures: one JSON object per line on stdout.

    python benchmarks/edge_targets.py [--models fashion-cnn,mobilenetv2] [--targets aarch64,c,hexagon]
                                      [--presets cortex-a76,cortex-a55,cortex-a53] [--samples 2]

Per model, from ONE qcc QDQ graph:
- aarch64 (per preset): instruction mix of model.so (sdot, smull, mla, ... counted with
  aarch64-linux-gnu-objdump), build seconds, and whether qcc_run under qemu-aarch64 reproduces the
  x86 llvm build's outputs bit for bit (--samples samples).
- c: weights / arena / workspace bytes of the generated tree, `size -A` of the objects (code, rodata,
  data, bss) built with gcc (host) and aarch64-linux-gnu-gcc (-O2), and bit-exactness of both
  against the x86 build.
- hexagon: object size (compile-only; nothing runs it).
Timings under qemu are emulation, not board figures, and are not printed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import qcc
from qcc import models
from qcc.backends import tvm as tvm_backend
from qcc.backends.tvm import c_source, cross, verify

N_CALIB = {"fashion-cnn": 64, "mobilenetv2": 8}


def _bit_equal(got, ref) -> bool:
    return len(got) == len(ref) and all(g.shape == r.shape and np.array_equal(g.view(np.uint8), r.view(np.uint8))
                                        for g, r in zip(got, ref))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="fashion-cnn,mobilenetv2")
    ap.add_argument("--presets", default=",".join(cross.AARCH64_PRESETS))
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--targets", default="aarch64,c,hexagon")
    args = ap.parse_args()
    targets = set(args.targets.split(","))
    for name in args.models.split(","):
        entry = models.get(name, n_calib=N_CALIB.get(name, 16), n_eval=args.samples)
        qdq = qcc.compile_model(str(entry.onnx_path), entry.calib, progress=False).qdq_model
        shapes = verify.input_shapes_from(entry.calib)
        feeds = entry.eval
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            tvm_backend.build(qdq, tvm_backend.detect_target(), tmp / "x86", shapes)
            ref = tvm_backend.Runner(tmp / "x86").run(feeds)
            for preset in args.presets.split(",") if "aarch64" in targets else []:
                t0 = time.perf_counter()
                info = cross.build_aarch64(qdq, cross.aarch64_target(preset), tmp / preset, shapes)
                build_s = time.perf_counter() - t0
                got = cross.QemuRunner(tmp / preset).run(feeds)
                print(json.dumps({"model": name, "target": "aarch64", "mcpu": preset, "mattr": info["target"]["mattr"],
                                  "instructions": info["instructions"], "build_s": round(build_s, 1),
                                  "model_so_bytes": (tmp / preset / "model.so").stat().st_size,
                                  "bit_exact_vs_x86": _bit_equal(got, ref), "samples": len(got[0])}), flush=True)
            if "c" in targets:
                c_row(qdq, shapes, feeds, ref, tmp, name)
            if "hexagon" in targets:
                info = cross.build_hexagon(qdq, cross.hexagon_target(), tmp / "hexagon", shapes)
                print(json.dumps({"model": name, "target": "hexagon", "mcpu": info["mcpu"],
                                  "object_bytes": info["object_bytes"], "compile_only": True}), flush=True)


def c_row(qdq, shapes, feeds, ref, tmp: Path, name: str) -> None:
    info = c_source.build_c(qdq, tmp / "c", shapes)
    row = {"model": name, "target": "c", "memory": info["memory"], "kernels": info["kernels"],
           "calls": info["calls"], "blocks_inlined": info["blocks_inlined"]}
    for toolchain in ("host", "aarch64"):
        runner = c_source.CRunner(tmp / "c", toolchain)
        row[f"size_{toolchain}_O2"] = runner.sizes()["total"]
        row[f"bit_exact_vs_x86_{toolchain}"] = _bit_equal(runner.run(feeds), ref)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
