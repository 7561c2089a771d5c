"""ONNX clean-ups before TVM's ONNX frontend sees a graph (on a copy; the QDQ semantics are kept).

The frontend follows shape arithmetic only through its own shape values: paddle exports cast a
Shape to int32 and back before a Reshape, and transformers exports build the attention mask with
Range / Gather index arithmetic over the input's shape (which leaves free symbolic dims the VM
cannot compute). Both go away once the shapes are static and the shape subgraph is folded.
Quantize / Dequantize nodes are never folded: the integer lowering needs to see them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

_NEVER_FOLD = {"QuantizeLinear", "DequantizeLinear", "RandomNormal", "RandomUniform", "RandomNormalLike",
               "RandomUniformLike", "Multinomial", "Bernoulli"}
_MAX_FOLDED_ELEMENTS = 1 << 20


def drop_shape_casts(model: onnx.ModelProto) -> int:
    """Remove integer Casts of shape values (Shape -> Cast(int32) -> Slice -> Cast(int64) -> Reshape).
    Returns how many were removed."""
    graph = model.graph
    const = {t.name for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            const.update(n.output)
    shape_like = set()
    passthrough = {"Cast", "Slice", "Gather", "Concat", "Unsqueeze", "Squeeze", "Identity"}
    for n in graph.node:
        if n.op_type == "Shape":
            shape_like.update(n.output)
        elif n.op_type in passthrough:
            data = [i for i in n.input if i and i not in const]
            if data and all(i in shape_like for i in data):
                shape_like.update(n.output)
    ints = {onnx.TensorProto.INT32, onnx.TensorProto.INT64}
    outputs = {o.name for o in graph.output}
    rename, drop = {}, []
    for n in graph.node:
        if n.op_type == "Cast" and n.input[0] in shape_like and n.output[0] not in outputs:
            to = next((a.i for a in n.attribute if a.name == "to"), None)
            if to in ints:
                rename[n.output[0]] = n.input[0]
                drop.append(n)

    def resolve(name):
        while name in rename:
            name = rename[name]
        return name

    for n in graph.node:
        for i, x in enumerate(n.input):
            if x in rename:
                n.input[i] = resolve(x)
    for n in drop:
        graph.node.remove(n)
    return len(drop)


def set_input_shapes(model: onnx.ModelProto, shapes: dict[str, list]) -> None:
    """Write static dims (ints) into the graph inputs; other entries (e.g. "batch") become dim_params."""
    for vi in model.graph.input:
        if vi.name not in shapes:
            continue
        tt = vi.type.tensor_type
        del tt.shape.dim[:]
        for d in shapes[vi.name]:
            dim = tt.shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            else:
                dim.dim_param = str(d)


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]          # stale entries (an exporter's symbolic batch) would win
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:  # noqa: BLE001 - shape inference is best effort here
        return {}
    out = {}
    for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            out[vi.name] = [d.dim_value for d in tt.shape.dim]
    return out


def _fold_once(model: onnx.ModelProto) -> int:
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    shapes = _static_shapes(model)
    known = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    folded = []
    for n in graph.node:
        if n.op_type in _NEVER_FOLD or n.domain not in ("", "ai.onnx"):
            continue
        if n.op_type == "Shape" and n.input[0] in shapes:
            s = np.array(shapes[n.input[0]], np.int64)
            start = next((a.i for a in n.attribute if a.name == "start"), 0)
            end = next((a.i for a in n.attribute if a.name == "end"), None)
            known[n.output[0]] = s[start:end]
            folded.append(n)
            continue
        ins = [i for i in n.input if i]
        if not all(i in known for i in ins):
            continue
        if n.op_type != "Constant" and not ins:
            continue
        sub = helper.make_model(
            helper.make_graph([n], "fold",
                              [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(known[i].dtype),
                                                             known[i].shape) for i in ins],
                              [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in n.output]),
            opset_imports=model.opset_import)
        try:
            outs = ReferenceEvaluator(sub).run(None, {i: known[i] for i in ins})
        except Exception:  # noqa: BLE001 - leave anything the reference evaluator can't run
            continue
        outs = [np.asarray(o) for o in outs]
        if any(o.size > _MAX_FOLDED_ELEMENTS for o in outs):
            continue
        for o, v in zip(n.output, outs):
            known[o] = v
        folded.append(n)
    if not folded:
        return 0
    folded_ids = {id(n) for n in folded}
    used = {i for n in graph.node if id(n) not in folded_ids for i in n.input} | {o.name for o in graph.output}
    have = {t.name for t in graph.initializer}
    for n in folded:
        graph.node.remove(n)
    for name, v in known.items():
        if name in used and name not in have:
            graph.initializer.append(numpy_helper.from_array(v, name))
    return len(folded)


def fold_static_shapes(model: onnx.ModelProto, max_rounds: int = 10) -> int:
    """Fold Shape nodes of statically shaped tensors and every node computable from constants,
    re-running shape inference until nothing changes. Returns the number of folded nodes."""
    total = 0
    for _ in range(max_rounds):
        k = _fold_once(model)
        total += k
        if k == 0:
            break
    return total
