"""Load a model into the graph IR (onnx-ir) from an ONNX file or a torch.nn.Module.

Every failure mode a user can cause (missing file, truncated or non-ONNX bytes, missing external
data, an opset outside what qcc supports) becomes a `QccError` with a one-line reason.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from .errors import QccError

MIN_OPSET, MAX_OPSET = 11, 21


def load_model(source: Any, example_inputs: Any = None, input_names: list[str] | None = None) -> ir.Model:
    """Load `source` (a path to an .onnx file, onnx.ModelProto, ir.Model, or torch.nn.Module)."""
    if isinstance(source, ir.Model):
        return source
    if isinstance(source, onnx.ModelProto):
        return _from_proto(source, "<ModelProto>")
    if isinstance(source, (str, os.PathLike)):
        return _from_file(Path(source))
    if _is_torch_module(source):
        return _from_torch(source, example_inputs, input_names)
    raise QccError(f"cannot load a model from {type(source).__name__}: pass an .onnx path or a torch.nn.Module")


def _from_file(path: Path) -> ir.Model:
    if not path.exists():
        raise QccError(f"model file not found: {path}")
    if path.is_dir():
        raise QccError(f"model path is a folder, expected an .onnx file: {path}")
    try:
        # load_external_data=False first: a missing external-data file then gets its own message.
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError / RuntimeWarning-like errors
        raise QccError(f"{path} is not a valid ONNX file (truncated or corrupt: {_short(exc)})") from None
    if not proto.graph.node:
        raise QccError(f"{path} is not a valid ONNX model: the graph has no nodes")
    _check_external_data(proto, path.parent)
    try:
        onnx.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise QccError(f"cannot read external data of {path}: {_short(exc)}") from None
    return _from_proto(proto, str(path))


def _check_external_data(proto: onnx.ModelProto, base: Path) -> None:
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            loc = base / info.get("location", "")
            if not loc.is_file():
                raise QccError(f"external data file for initializer {tensor.name!r} is missing: {loc}")


def _from_proto(proto: onnx.ModelProto, where: str) -> ir.Model:
    try:
        onnx.checker.check_model(proto, full_check=False)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise QccError(f"{where} is malformed: {first}") from None
    opset = default_opset(proto)
    if opset is None:
        raise QccError(f"{where} does not import the default ONNX domain")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise QccError(f"{where} uses opset {opset}; qcc supports opsets {MIN_OPSET}-{MAX_OPSET}")
    _check_operators(proto, where)
    return ir.serde.deserialize_model(proto)


# domains onnxruntime (calibration, reference) runs without a user-registered kernel library
RUNTIME_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


def _check_operators(proto: onnx.ModelProto, where: str) -> None:
    """Every node must be an operator onnxruntime can run (qcc calibrates by running the float graph) or a
    function the model defines: name the first one that is not, instead of failing inside calibration."""
    local = {(f.domain, f.name) for f in proto.functions}
    for graph in _graphs(proto.graph):
        for node in graph.node:
            if (node.domain, node.op_type) in local:
                continue
            domain = node.domain or "ai.onnx"
            if node.domain not in RUNTIME_DOMAINS:
                raise QccError(f"{where}: node {node.name or node.output[0]!r} is {domain}::{node.op_type}, a custom "
                               f"operator onnxruntime cannot run (qcc calibrates by running the float model); "
                               f"replace it with standard ONNX ops or a model-local function")
            if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type):
                raise QccError(f"{where}: node {node.name or node.output[0]!r} has op type {node.op_type!r}, "
                               f"which is not an ONNX operator")


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def default_opset(proto: onnx.ModelProto) -> int | None:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return None


def _is_torch_module(obj: Any) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(obj, torch.nn.Module)


def _from_torch(module: Any, example_inputs: Any, input_names: list[str] | None) -> ir.Model:
    import torch

    if example_inputs is None:
        raise QccError("a torch.nn.Module needs example_inputs (a tensor or tuple of tensors) to export")
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    names = input_names or [f"input_{i}" if len(example_inputs) > 1 else "input" for i in range(len(example_inputs))]
    buf = io.BytesIO()
    module = module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # The TorchScript exporter: deterministic, no onnxscript dependency, opset 17 keeps
            # every op we quantize in its modern form.
            torch.onnx.export(
                module, example_inputs, buf, dynamo=False, opset_version=17, input_names=names,
                dynamic_axes={n: {0: "batch"} for n in names},
            )
        except Exception as exc:
            raise QccError(f"torch.onnx export failed: {_short(exc)}") from None
    return _from_proto(onnx.load_from_string(buf.getvalue()), type(module).__name__)


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
