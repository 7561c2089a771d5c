"""Canonicalization: bring any exported graph into the normal form the quantizer expects.

opset upgrade (QDQ with per-axis scales needs 13, FP8 19, int4 21) -> unique names -> no-op removal ->
shape inference + constant folding to a fixed point -> LayerNorm fusion (decomposed ReduceMean / Sub /
Pow / Sqrt / Div chains -> LayerNormalization, passes/fuse_layernorm.py; the opset is raised to 17 when
one is found below it) -> GELU normal form ((x * (1 + erf | tanh ...)) * 0.5, passes/gelu_form.py) ->
BatchNorm folding -> dead-code removal -> topological order. Every step preserves the float function;
the tests compare outputs before/after.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx_ir.passes import common as ir_passes

from .errors import QccError
from .passes.eliminate_noops import eliminate_noops
from .passes.fold_batchnorm import fold_batchnorm
from .passes.fold_constants import fold_constants
from .passes.gelu_form import normalize_gelus
from .passes.fuse_layernorm import LN_OPSET, find_layernorms, fuse_layernorms


def canonicalize(model: ir.Model, min_opset: int = 13) -> tuple[ir.Model, dict]:
    summary: dict = {"opset_in": model.opset_imports.get("", 0)}
    if summary["opset_in"] < min_opset:
        model = upgrade_opset(model, min_opset)
    ir_passes.NameFixPass()(model)
    summary["noops_removed"] = eliminate_noops(model)
    folded = 0
    for _ in range(8):
        _infer_shapes(model)
        n = fold_constants(model)
        folded += n
        if n == 0:
            break
    summary["constants_folded"] = folded
    model = _fuse_layernorms(model, summary)
    summary.update(normalize_gelus(model))
    summary["batchnorms_folded"] = fold_batchnorm(model)
    ir_passes.RemoveUnusedNodesPass()(model)
    ir_passes.TopologicalSortPass()(model)
    _infer_shapes(model)
    summary["opset"] = model.opset_imports.get("", 0)
    summary["nodes"] = sum(1 for _ in model.graph)
    return model, summary


def _fuse_layernorms(model: ir.Model, summary: dict) -> ir.Model:
    """Decomposed LayerNorms -> LayerNormalization; below opset 17 (the operator's first) the model is
    upgraded first, and only when a match exists. (GELU stays decomposed, in one normal form:
    passes/gelu_form.py says why.)"""
    matches, skipped = find_layernorms(model)
    if matches and model.opset_imports.get("", 0) < LN_OPSET:
        try:
            model = upgrade_opset(model, LN_OPSET)
        except QccError as exc:
            summary["layernorms_fused"] = 0
            summary["layernorms_skipped"] = {f"opset upgrade to {LN_OPSET} failed: {exc}"[:200]: len(matches)}
            return model
        _infer_shapes(model)
        matches, skipped = find_layernorms(model)
    summary["layernorms_fused"] = fuse_layernorms(model, matches) if matches else 0
    if skipped:
        summary["layernorms_skipped"] = skipped
    return model


def upgrade_opset(model: ir.Model, opset: int) -> ir.Model:
    proto = ir.to_proto(model)
    try:
        converted = onnx.version_converter.convert_version(proto, opset)
    except Exception as exc:
        raise QccError(f"cannot upgrade the model from opset {model.opset_imports.get('', 0)} to {opset} "
                       f"(needed for per-channel / typed QDQ): {str(exc).splitlines()[0][:200]}") from None
    return ir.serde.deserialize_model(converted)


def _infer_shapes(model: ir.Model) -> None:
    try:
        ir_passes.ShapeInferencePass(strict_mode=False)(model)
    except Exception:
        pass  # shape inference is an aid (dtypes, static shapes), never a requirement
