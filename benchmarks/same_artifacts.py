"""Same artifacts before and after a refactor: fingerprints of real compiles, one JSON line each.

    python benchmarks/same_artifacts.py --save base.json          # on the old commit
    python benchmarks/same_artifacts.py --compare base.json       # on the new one: exit 1 on any change
    python benchmarks/same_artifacts.py --only mobilenetv2:onnx:equalization,smoothing,bias-correction
                                                                  # one case (alternate old / new for timing)

For the bundled Fashion-MNIST CNN, MobileNetV2 and all-MiniLM-L6 (zoo), each for --target onnx and
llvm with the default passes, plus MobileNetV2 with `equalization,smoothing,bias-correction`
(--target onnx): the sha256 of model.qdq.onnx, and the sha256 of the artifact's outputs on fixed
inputs (the zoo's evaluation samples; onnxruntime on the QDQ graph for onnx, model.so for llvm), and
the compile's wall time. --compare asserts both hashes equal, and prints the compile-time ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import qcc
from qcc import models

CASES = [("fashion-cnn", "onnx", None), ("fashion-cnn", "llvm", None),
         ("mobilenetv2", "onnx", None), ("mobilenetv2", "llvm", None),
         ("minilm", "onnx", None), ("minilm", "llvm", None),
         ("mobilenetv2", "onnx", "equalization,smoothing,bias-correction")]
N_CALIB = {"fashion-cnn": 256, "mobilenetv2": 64, "minilm": 64}
N_RUN = 8


def _digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def fingerprint(name: str, target: str, passes: str | None, work: Path) -> dict:
    entry = models.get(name, n_calib=N_CALIB[name], n_eval=64)
    config = qcc.QuantConfig(passes=passes.split(",")) if passes else qcc.QuantConfig()
    out = work / f"{name}-{target}-{passes or 'default'}"
    t = time.perf_counter()
    qcc.compile_model(str(entry.onnx_path), entry.calib, config=config, target=target, out_dir=out,
                      progress=False)
    seconds = time.perf_counter() - t
    feeds = {k: v[:N_RUN] for k, v in (entry.eval or entry.calib).items()}
    art = qcc.load(out)
    outputs = art.run(feeds)
    outputs = outputs.values() if isinstance(outputs, dict) else outputs
    return {"model": name, "target": target, "passes": passes or "default",
            "qdq_sha256": hashlib.sha256((out / "model.qdq.onnx").read_bytes()).hexdigest(),
            "outputs_sha256": _digest(list(outputs)), "compile_s": round(seconds, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--save", type=Path)
    group.add_argument("--compare", type=Path)
    ap.add_argument("--only", help="one case, MODEL:TARGET:PASSES (e.g. mobilenetv2:onnx:equalization,"
                                   "smoothing,bias-correction; PASSES 'default'): side-by-side compile timing")
    args = ap.parse_args()
    cases = CASES
    if args.only:
        name, target, passes = args.only.split(":")
        cases = [(name, target, None if passes == "default" else passes)]
    base = {}
    if args.compare:
        base = {(r["model"], r["target"], r["passes"]): r for r in map(json.loads, args.compare.read_text().splitlines())}
    rows, changed = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, target, passes in cases:
            row = fingerprint(name, target, passes, Path(tmp))
            old = base.get((row["model"], row["target"], row["passes"]))
            if old is not None:
                row["same_qdq"] = row["qdq_sha256"] == old["qdq_sha256"]
                row["same_outputs"] = row["outputs_sha256"] == old["outputs_sha256"]
                row["compile_s_before"] = old["compile_s"]
                row["compile_ratio"] = round(row["compile_s"] / old["compile_s"], 3)
                changed += not (row["same_qdq"] and row["same_outputs"])
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.save:
        args.save.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
