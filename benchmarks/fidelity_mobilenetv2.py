"""MobileNetV2 (real ImageNet weights) on natural-image crops: fidelity of qcc's int8 QDQ graph against
FP32, all-int8 and with a loss budget (`--max-loss`), one JSON line per configuration.

    python benchmarks/fidelity_mobilenetv2.py                       # all cases (~8 min on 2 cores)
    python benchmarks/fidelity_mobilenetv2.py --only int8 budget    # some of them

Cases: int8 (default passes), int8 with equalization + bias correction, and --metric kl --max-loss
0.03 (the precision search: which layers went to int16 activations / float). Calibration: the zoo's
64 crops (seed 0); evaluation: 512 other crops (seed 1); onnxruntime runs both graphs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import qcc
from qcc import models

CASES = {
    "int8": {"passes": ["bias-correction"]},
    "int8-equalization": {"passes": ["equalization", "bias-correction"]},
    "budget": {"passes": ["bias-correction"], "max_loss": 0.03},
}


def run(name: str, case: dict, entry) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        res = qcc.compile_model(str(entry.onnx_path), entry.calib, eval_data=entry.eval,
                                config=qcc.QuantConfig(passes=case["passes"]), out_dir=f"{tmp}/o", progress=False,
                                metrics=["kl"], max_loss=case.get("max_loss"))
        seconds = time.perf_counter() - t
    out = next(iter(res.report["fidelity"]["outputs"].values()))
    row = {"case": name, "passes": case["passes"], "kl": round(out["kl"], 4), "agreement": round(out["agreement"], 4),
           "agreement_confident": round(out["agreement_confident"], 4), "compile_s": round(seconds, 1)}
    p = res.report.get("precision")
    if p:
        layers = len(res.report["sensitivity"]["layers"])
        row.update(max_loss=p["max_loss"], met=p["met"], int8_kl=round(p["int8_loss"], 4),
                   raised=[(r["node"], r["to"]) for r in p["raised"]], layers=layers,
                   raised_fraction=round(len(p["raised"]) / layers, 3),
                   modelled_cost=round(p["modelled_cost"]["relative"], 3), trials=len(p["trials"]))
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=list(CASES))
    args = ap.parse_args()
    entry = models.get("mobilenetv2", n_calib=64, n_eval=512)
    for name in args.only or CASES:
        print(json.dumps(run(name, CASES[name], entry)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
