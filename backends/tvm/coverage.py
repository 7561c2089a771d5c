"""Operator coverage of the TVM backend, generated from the rewrite's own rule tables.

    python -m qcc.backends.tvm.coverage > docs/operator_coverage.md

integer         the rewrite lowers it to integer code (lower.py: VIEW_RULES, CLAMP_RULES, AFFINE_RULES)
float-fallback  TVM's ONNX frontend imports it; between dequantize and quantize it runs in float32
unsupported     no converter in TVM's ONNX frontend: a model containing it does not build
"""

from __future__ import annotations

import sys

import onnx

from . import compat  # noqa: F401  (version check)
from .lower import AFFINE_RULES, CLAMP_RULES, VIEW_RULES

# ONNX ops outside the tables that are handled all the same: the QDQ boundary ops, and ops that
# only exist in shape computations (folded or kept as shape arithmetic).
BOUNDARY = {
    "QuantizeLinear": "float -> int8/uint8 at the graph input and after float fallbacks; elsewhere the "
                      "rewrite replaces it by the producer's integer requantization",
    "DequantizeLinear": "consumed by the rewrite (activations become integer views, weights / int32 "
                        "biases constants); kept only in front of float fallbacks",
}


def integer_ops() -> dict[str, list[tuple[str, str, str]]]:
    """ONNX op -> [(relax op, kind, how)] for every op the rewrite lowers to integer code."""
    table: dict[str, list[tuple[str, str, str]]] = {}
    for kind, rules in (("arithmetic", AFFINE_RULES), ("view", VIEW_RULES), ("activation", CLAMP_RULES)):
        for relax_op, (onnx_ops, how) in rules.items():
            for op in onnx_ops:
                table.setdefault(op, []).append((relax_op.replace("relax.", ""), kind, how))
    return table


def frontend_ops() -> set[str]:
    from tvm.relax.frontend.onnx import onnx_frontend

    return set(onnx_frontend._get_convert_map()) | {"Constant", "If"}


def coverage_rows() -> list[dict]:
    """One row per ONNX (default domain) op, plus frontend-only ops: status integer / float-fallback /
    unsupported."""
    ints = integer_ops()
    fe = frontend_ops()
    standard = {s.name for s in onnx.defs.get_all_schemas() if s.domain == ""}
    rows = []
    for op in sorted(standard | fe):
        if op in ints:
            status = "integer"
            how = "; ".join(sorted({f"{r} ({k}): {h}" for r, k, h in ints[op]}))
        elif op in BOUNDARY:
            status, how = "integer", BOUNDARY[op]
        elif op in fe:
            status, how = "float-fallback", ""
        else:
            status, how = "unsupported", ""
        rows.append({"op": op, "status": status, "how": how, "standard": op in standard})
    return rows


def markdown() -> str:
    rows = coverage_rows()
    out = [
        "# Operator coverage: TVM backend (`--target llvm`)",
        "",
        "Generated from the rewrite's rule tables by `python -m qcc.backends.tvm.coverage` "
        "(backends/tvm/lower.py: `AFFINE_RULES`, `VIEW_RULES`, `CLAMP_RULES`); do not edit by hand.",
        "",
        "- **integer**: lowered to integer code (uint8/int8 inputs, int32 accumulation, float32 requantization in onnxruntime's "
        "MLAS order, int64 fixed point where several terms meet) when its inputs are quantized and its output is quantized (or, for Conv / Gemm / "
        "MatMul, consumed in float: int32 accumulate, then one float multiply).",
        "- **float-fallback**: imported by TVM's ONNX frontend; runs in float32 between dequantize and "
        "quantize, exactly as the QDQ graph says, and is listed in the build's `float_fallback`. An "
        "integer op whose inputs are not quantized (or that matches no rule, e.g. Resize linear) "
        "falls back the same way.",
        "- **unsupported**: TVM 0.27's ONNX frontend has no converter; a model containing it does not build.",
        "",
        "## Integer",
        "",
        "| ONNX op | Relax op (rule) | integer lowering |",
        "|---|---|---|",
    ]
    ints = integer_ops()
    for row in rows:
        if row["status"] != "integer":
            continue
        if row["op"] in ints:
            for relax_op, kind, how in sorted(set(ints[row["op"]])):
                out.append(f"| {row['op']} | `{relax_op}` ({kind}) | {how} |")
        else:
            out.append(f"| {row['op']} | - | {row['how']} |")
    fb = [r["op"] for r in rows if r["status"] == "float-fallback"]
    un = [r["op"] for r in rows if r["status"] == "unsupported" and r["standard"]]
    out += ["", f"## Float fallback ({len(fb)} ops)", "", ", ".join(fb), "",
            f"## Unsupported ({len(un)} standard ONNX ops)", "", ", ".join(un), ""]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("integer", "float-fallback", "unsupported")}
    out += ["## Summary", "", "| status | ops |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in counts.items()]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
