"""Per-layer sensitivity: one cheap sweep that says which layer's quantization costs the most.

A layer L is a quantized node that reads at least one quantized input in the QDQ graph (Conv, Gemm,
MatMul, Add, pool, ...), together with its fused epilogue (the Relu / Clip, scale or bias-add right
after it whose input is never quantized). With x the float inputs of L as the float graph computes
them, W its float parameters, Q(x) = DQ(Q(x; s_x, z_x)) the fake quantization the QDQ graph applies
and W_q its dequantized parameters (bias-corrected where a pass corrected them), define

    y     = f_L(x, W)                 the float graph's output of L (cached: one float run)
    y_qa  = f_L(Q(x), W)              only L's input activations quantized      -> input_sqnr_db
    y_qw  = f_L(x, W_q)               only L's weights / bias quantized          -> weight_sqnr_db
    y_q   = f_L(Q(x), W_q)            L alone quantized, the rest of the graph float -> sqnr_db

    SQNR(y, y') = 10 log10( sum y^2 / sum (y - y')^2 )   over every element of every sample

These are local figures: each layer sees exactly the float activations, so a layer's number is its
own quantization error and nothing accumulated upstream (report["layers"][i]["sqnr_db"], float graph
vs the whole QDQ graph, is the accumulated one). Layers are ranked lowest sqnr_db first.

How it runs: no full-graph re-run per layer. One model is the float graph with, for every layer,
its three variants added as side branches that read the float graph's own tensors (the Q / DQ nodes
and dequantized parameters copied from the QDQ graph, one Q / DQ copy shared by the variants that
use it; float parameters from the float graph), and the energies ReduceSumSquare(y) and
ReduceSumSquare(y - y_v) as its only outputs. One onnxruntime session, one run per sample batch: the
float activations are "cached" inside that run and only 4 scalars per layer leave it, summed over
batches. Memory is bounded by the batch: the float graph's bytes per sample (shape inference) size
it to `memory_mb`. On MobileNetV2 that is 65 layers x 3 variants, ~4x one float run of the samples.

Optionally (`recover_top=k`), the end-to-end effect for the k worst layers: the whole QDQ graph
with that one layer kept float (its inputs read before their Q / DQ, its parameters float), and the
SQNR of the final outputs against the float graph, beside the all-quantized graph's SQNR:
recovered_db = SQNR(float, QDQ with L float) - SQNR(float, QDQ). That costs one QDQ-graph session
per layer, so compile leaves it off by default.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from .backends import onnxruntime as ort_backend
from .data import n_samples, subset

EPILOGUE_ROLES = {"fused-activation", "scale", "bias-add"}
VARIANTS = ("q", "qa", "qw")      # both quantized, activations only, weights only


@dataclass
class _Layer:
    name: str                         # head node name (the report["layers"] row it belongs to)
    op: str
    role: str
    nodes: list[onnx.NodeProto]       # head + epilogue, from the QDQ graph
    float_nodes: list[onnx.NodeProto]  # the same nodes in the float graph
    output: str                       # float-graph tensor compared (the epilogue's output)
    act_inputs: dict[str, str]         # DQ output name -> float tensor it quantizes


def _db(signal: float, noise: float) -> float:
    if noise == 0:
        return float("inf")
    if signal <= 0:
        return float("-inf")
    return float(10 * np.log10(signal / noise))


def find_layers(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, roles: dict[str, str]) -> list[_Layer]:
    """The layers of the QDQ graph, each a head node with quantized inputs and its fused epilogue."""
    qg, fg = qdq_model.graph, float_model.graph
    producer = {o: n for n in qg.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in qg.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    f_nodes = {n.name: n for n in fg.node if n.name}
    f_values = {i.name for i in fg.input} | {o for n in fg.node for o in n.output}
    graph_outputs = {o.name for o in qg.output}
    absorbed: set[str] = set()
    layers = []
    for node in qg.node:
        role = roles.get(node.name)
        if role is None or node.name in absorbed or node.name not in f_nodes:
            continue
        fnode = f_nodes[node.name]
        if fnode.op_type != node.op_type or len(fnode.input) != len(node.input) or not node.output:
            continue
        acts, ok = {}, True
        for i in node.input:
            dq = producer.get(i)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                if q.input[0] not in f_values:
                    ok = False
                acts[i] = q.input[0]
        if not ok or not acts:
            continue
        chain, fchain, out = [node], [fnode], node.output[0]
        while out not in graph_outputs:
            users = consumers.get(out, [])
            if len(users) != 1:
                break
            nxt = users[0]
            fn = f_nodes.get(nxt.name)
            if (roles.get(nxt.name) not in EPILOGUE_ROLES or fn is None or fn.op_type != nxt.op_type
                    or len(fn.input) != len(nxt.input) or not nxt.output
                    or any(producer.get(i) is not None and producer[i].op_type == "QuantizeLinear"
                           for i in nxt.input)):
                break
            chain.append(nxt)
            fchain.append(fn)
            absorbed.add(nxt.name)
            out = nxt.output[0]
        if out not in f_values:
            continue
        layers.append(_Layer(node.name, node.op_type, role, chain, fchain, out, acts))
    return layers


def _add_variants(layer: _Layer, k: int, q_init: dict, f_init: dict, q_producer: dict, nodes: list,
                  inits: dict) -> list[str]:
    """Append to `nodes` the three variants of `layer` reading the float graph's own tensors, and the
    energies SQNR needs: [sum y^2, sum (y - y_q)^2, sum (y - y_qa)^2, sum (y - y_qw)^2] (scalar names)."""
    internal = {o for n in layer.nodes for o in n.output}
    prefix = f"sensitivity/{k}"
    copied: dict[str, str] = {}      # QDQ-graph tensor -> its copy (a Q / DQ serves every variant)

    def qinit(name: str) -> str:     # QDQ-graph initializers, renamed: a float one may share the name
        new = f"sensitivity/{name}"
        if new not in inits:
            t = onnx.TensorProto()
            t.CopyFrom(q_init[name])
            t.name = new
            inits[new] = t
        return new

    def finit(name: str) -> str:
        inits.setdefault(name, f_init[name])
        return name

    def clone(node: onnx.NodeProto, tag: str, ins: list[str], outs: list[str]) -> None:
        c = onnx.NodeProto()
        c.CopyFrom(node)
        c.name = f"{prefix}/{tag}/{node.name}"
        del c.input[:]
        c.input.extend(ins)
        del c.output[:]
        c.output.extend(outs)
        nodes.append(c)

    def const(name: str) -> str:
        return qinit(name) if name in q_init else name

    def copy_dq(name: str) -> str:
        """The QDQ graph's DQ (and the Q before it) producing `name`, reading the float tensor."""
        if name not in copied:
            dq = q_producer[name]
            ins = [const(i) for i in dq.input]
            q = q_producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                ins[0] = f"{prefix}/{dq.input[0]}"
                clone(q, "q", [q.input[0]] + [const(i) for i in q.input[1:]], [ins[0]])
            copied[name] = f"{prefix}/{name}"
            clone(dq, "q", ins, [copied[name]])
        return copied[name]

    energies = [f"{prefix}/signal"]
    nodes.append(helper.make_node("ReduceSumSquare", [layer.output], [energies[0]], keepdims=0,
                                  name=f"{prefix}/signal"))
    for tag in VARIANTS:
        rename = {}
        for qn, fn in zip(layer.nodes, layer.float_nodes):
            ins = []
            for qi, fi in zip(qn.input, fn.input):
                if not qi:
                    ins.append("")
                elif qi in internal:
                    ins.append(rename[qi])
                elif qi in layer.act_inputs:
                    ins.append(copy_dq(qi) if tag in ("q", "qa") else layer.act_inputs[qi])
                elif tag in ("q", "qw") and qi in q_producer and q_producer[qi].op_type == "DequantizeLinear":
                    ins.append(copy_dq(qi))
                elif tag in ("q", "qw") and qi in q_init:
                    ins.append(qinit(qi))
                elif fi in f_init:
                    ins.append(finit(fi))
                else:
                    ins.append(fi)     # a float tensor of the float graph
            outs = [f"{prefix}/{tag}/{o}" if o else "" for o in qn.output]
            rename.update({o: r for o, r in zip(qn.output, outs) if o})
            clone(qn, tag, ins, outs)
        diff = f"{prefix}/{tag}/diff"
        nodes.append(helper.make_node("Sub", [layer.output, rename[layer.output]], [diff], name=diff))
        energies.append(f"{prefix}/{tag}/noise")
        nodes.append(helper.make_node("ReduceSumSquare", [diff], [energies[-1]], keepdims=0, name=energies[-1]))
    return energies


def sweep_model(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto,
                layers: list[_Layer]) -> tuple[onnx.ModelProto, list[list[str]]]:
    """The float graph with every layer's variants as side branches and their energies as outputs
    (scalars: nothing but them leaves the session)."""
    q_init = {i.name: i for i in qdq_model.graph.initializer}
    f_init = {i.name: i for i in float_model.graph.initializer}
    q_producer = {o: n for n in qdq_model.graph.node for o in n.output}
    nodes, inits = [], {}
    energies = [_add_variants(layer, k, q_init, f_init, q_producer, nodes, inits) for k, layer in enumerate(layers)]
    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    graph = model.graph
    existing = {i.name for i in graph.initializer}
    graph.initializer.extend(t for name, t in inits.items() if name not in existing)
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(e, onnx.TensorProto.FLOAT, []) for es in energies for e in es)
    del model.opset_import[:]
    model.opset_import.extend(qdq_model.opset_import)
    model.ir_version = max(model.ir_version, qdq_model.ir_version)
    return model, energies


def _bytes_per_sample(model: onnx.ModelProto) -> int:
    """Bytes of every float tensor of one sample (shape inference; unknown dims count 1)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - an estimate only
        return 0
    total = 0
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        size = 1
        for i, d in enumerate(dims):
            size *= d.dim_value if d.HasField("dim_value") and i > 0 else 1
        total += 4 * size
    return total


def sweep(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, roles: dict[str, str],
          data: dict[str, np.ndarray], samples: int = 16, memory_mb: float = 256.0, recover_top: int = 0,
          threads: int | None = None) -> dict:
    """Local sensitivity of every layer (module docstring) on the first `samples` samples of `data`.

    Returns {"method", "samples", "seconds", "layers": [rows, lowest sqnr_db first]}; each row has
    node, op, role, output, fused (epilogue nodes), inputs (the float tensors its
    quantized inputs read), sqnr_db, input_sqnr_db, weight_sqnr_db (and
    recovered_db for the `recover_top` worst)."""
    t0 = time.perf_counter()
    data = subset(data, samples)
    layers = find_layers(float_model, qdq_model, roles)
    result = {"method": "local: each layer alone quantized on the float graph's own inputs (compiler/sensitivity.py)",
              "samples": n_samples(data), "layers": []}
    if not layers:
        result["seconds"] = time.perf_counter() - t0
        return result
    model, energies = sweep_model(float_model, qdq_model, layers)
    sess = ort_backend.make_session(model, threads=threads)
    names = [e for es in energies for e in es]
    n = n_samples(data)
    per_sample = _bytes_per_sample(float_model)
    batch = 1 if ort_backend.fixed_batch(float_model) else (
        int(max(1, min(n, memory_mb * 2**20 // per_sample))) if per_sample else min(n, 4))
    total = np.zeros(len(names))
    for b in ort_backend.batches(data, batch):
        total += np.asarray([float(v) for v in sess.run(names, b)])
    energy = total.reshape(len(layers), 1 + len(VARIANTS))
    rows = []
    for k, layer in enumerate(layers):
        s = energy[k, 0]
        rows.append({"node": layer.name, "op": layer.op, "role": layer.role, "output": layer.output,
                     "fused": [nd.name for nd in layer.nodes[1:]],
                     "inputs": sorted(set(layer.act_inputs.values())), "sqnr_db": _db(s, energy[k, 1]),
                     "input_sqnr_db": _db(s, energy[k, 2]), "weight_sqnr_db": _db(s, energy[k, 3])})
    rows.sort(key=lambda r: (np.nan_to_num(r["sqnr_db"], nan=np.inf), r["node"]))
    result["batch"] = batch
    if recover_top > 0:
        by_name = {l.name: l for l in layers}
        f_init = {i.name: i for i in float_model.graph.initializer}
        result["end_to_end"] = _recover(float_model, qdq_model, [by_name[r["node"]] for r in rows[:recover_top]],
                                        f_init, data, threads)
        for r in rows:
            if r["node"] in result["end_to_end"]["recovered_db"]:
                r["recovered_db"] = result["end_to_end"]["recovered_db"][r["node"]]
    result["layers"] = rows
    result["seconds"] = time.perf_counter() - t0
    return result


def keep_float(qdq_model: onnx.ModelProto, layer: _Layer, f_init: dict) -> onnx.ModelProto:
    """A copy of the QDQ graph where `layer` reads its activations before their Q / DQ and its float
    parameters (the rest of the graph unchanged)."""
    model = onnx.ModelProto()
    model.CopyFrom(qdq_model)
    names = {n.name for n in layer.nodes}
    have = {i.name for i in model.graph.initializer}
    for node, fnode in zip([n for n in model.graph.node if n.name in names], layer.float_nodes):
        for k, (qi, fi) in enumerate(zip(list(node.input), fnode.input)):
            if qi in layer.act_inputs:
                node.input[k] = layer.act_inputs[qi]
            elif fi in f_init and qi != fi:
                if fi not in have:
                    model.graph.initializer.append(f_init[fi])
                    have.add(fi)
                node.input[k] = fi
    return model


def _recover(float_model, qdq_model, layers, f_init, data, threads) -> dict:
    names = [o.name for o in float_model.graph.output]
    ref = ort_backend.run_all(ort_backend.make_session(float_model, threads=threads), data, 16, names)

    def out_db(model) -> float:
        got = ort_backend.run_all(ort_backend.make_session(model, threads=threads), data, 16, names)
        s = sum(float(np.dot(r.ravel().astype(np.float32), r.ravel().astype(np.float32))) for r in ref)
        e = sum(float(np.sum((r.astype(np.float32) - g.astype(np.float32)) ** 2)) for r, g in zip(ref, got))
        return _db(s, e)

    base = out_db(qdq_model)
    kept = {layer.name: out_db(keep_float(qdq_model, layer, f_init)) for layer in layers}
    return {"output_sqnr_db": base, "kept_float_sqnr_db": kept,
            "recovered_db": {k: v - base for k, v in kept.items()}}
