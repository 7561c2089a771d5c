"""Which tensors get quantized, with which type, and which nodes stay float (and why).

The plan is a pure function of (graph, config, statistics). Nodes take one of these roles:

    compute           Conv, ConvTranspose, Gemm, MatMul: activation inputs and weights quantized,
                      bias -> int32 with scale s_x * s_w; always quantized unless excluded
    bias-add          Add(MatMul(x, W), b) with constant b: the bias of the MatMul before it
    fused-activation  Relu / Clip right after a quantized producer: folded into its requantization,
                      so the tensor between them is never quantized
    elementwise       Add, Concat of activations: quantized when their output must be quantized; also
                      Mul of two activations that are not functions of one tensor (the SE block's
                      x * sigmoid(conv(pool(x))), an integer product; x * sigmoid(x) is an activation
                      and stays float unless config.pointwise_tables makes it a table)
    pool              AveragePool, GlobalAveragePool, ReduceMean (constant axes): quantized in and
                      out, each with its own scale (an int32 sum)
    norm              Softmax over the last axis: quantized in and out when its output must be (the
                      lowering's one int8 -> int8 row kernel). An additive-mask input stays float
                      (the mask check below). LayerNormalization is not one: quantizing its input,
                      a transformer's residual stream, costs DeiT-tiny 33 -> 22 dB, MiniLM 18 -> 6.5 dB
    shared            MaxPool, Reshape, Transpose, Flatten, ... : the output reuses the input's scale
                      (exact on integer code), quantized when the output must be quantized
    scale             Mul / Div by a constant, or Add of one, right after a compute layer: folded into
                      that layer's requantization (its output is not quantized)
    pointwise         (config.pointwise_tables) element-wise functions (Sigmoid, HardSwish, Gelu, ...) and their
                      compositions with scalar constants: when the chain's output must be quantized
                      and it reads one tensor, only that tensor and the output are (one 256-entry
                      table, f(x) for every int8 x); Mul of two tensors quantizes both (an integer
                      product: the SE block's x * sigmoid(s))

A tensor must be quantized when a quantized node reads it; roles are resolved consumers first
(reverse topological order), so a chain like Conv -> Relu -> MaxPool -> Flatten -> Gemm quantizes
the Relu output once and the MaxPool / Flatten outputs share its scale. Anything else stays float
and is listed with its reason. With statistics, a tensor whose calibrated range reaches the mask
threshold (an additive attention mask of -1e9 or -inf) is not quantized and its consumers stay float.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from .config import SCHEMES, QuantConfig
from .qtypes import QType
from .statistics import TensorStats

COMPUTE = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
ELEMENTWISE = {"Add", "Concat"}
POOL = {"AveragePool", "GlobalAveragePool", "ReduceMean"}
NORMS = {"Softmax"}
SHARED = {"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Resize", "Relu", "Clip",
          "Slice", "Split", "Pad", "Upsample", "DepthToSpace", "SpaceToDepth", "GlobalMaxPool"}
FUSABLE_ACTIVATIONS = {"Relu", "Clip"}
POINTWISE = {"Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Gelu", "Erf", "Mish", "LeakyRelu", "Elu", "Selu",
             "Celu", "Softplus", "Softsign", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Sin", "Cos",
             "Floor", "Ceil", "Round", "Relu", "Clip", "Pow", "Mul", "Div", "Sub", "Add", "Max", "Min"}
SCALE_OPS = {"Mul", "Div", "Add"}
MAX_CHAIN = 64      # nodes of one pointwise chain (the lowering's limit too)


@dataclass
class ActivationSpec:
    tensor: str
    root: str                    # tensor whose statistics (and so qparams) this one uses
    qtype: QType
    symmetric: bool
    scale: float | None = None
    zero_point: int | float | None = None


@dataclass
class WeightSpec:
    node: ir.Node
    index: int
    qtype: QType
    axis: int | None


@dataclass
class BiasSpec:
    node: ir.Node                # the node reading the bias (Conv, Gemm, or the bias Add)
    index: int
    activation: str              # input tensor whose scale multiplies the weight scale
    weight: WeightSpec
    axis: int | None


@dataclass
class QuantPlan:
    activations: dict[str, ActivationSpec] = field(default_factory=dict)
    weights: list[WeightSpec] = field(default_factory=list)
    biases: list[BiasSpec] = field(default_factory=list)
    roles: dict[str, str] = field(default_factory=dict)          # quantized node name -> role
    float_nodes: dict[str, tuple[str, str]] = field(default_factory=dict)  # node name -> (op, reason)

    def roots(self) -> set[str]:
        return {spec.root for spec in self.activations.values()}


def build_plan(model: ir.Model, config: QuantConfig, stats: dict[str, TensorStats] | None = None,
               forced_float: dict[str, str] | None = None) -> QuantPlan:
    """Plan quantization. `forced_float` maps node names to the reason they must stay float."""
    forced = dict(forced_float or {})
    while True:
        plan = _plan_once(model, config, forced)
        if stats is None:
            return plan
        newly = _mask_sentinels(model, plan, stats, config)
        newly = {k: v for k, v in newly.items() if k not in forced}
        if not newly:
            return plan
        forced.update(newly)


def _is_float(value: ir.Value | None) -> bool:
    return value is not None and value.dtype in (ir.DataType.FLOAT, None) and value.const_value is None


def _const(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is not None


def _plan_once(model: ir.Model, config: QuantConfig, forced: dict[str, str]) -> QuantPlan:
    graph = model.graph
    plan = QuantPlan()
    nodes = list(graph)
    role: dict[ir.Node, str] = {}
    reason: dict[ir.Node, str] = {}
    for node in nodes:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            reason[node] = f"custom-domain op {node.domain}::{op}"
        elif node.name in forced:
            reason[node] = forced[node.name]
        elif config.excludes(node.name, op):
            reason[node] = "excluded by user"
        elif op in COMPUTE:
            if _compute_ok(node):
                role[node] = "compute"
            else:
                reason[node] = "unsupported operand layout (non-float input or non-unit Gemm alpha/transA)"
        elif op == "Add" and _is_bias_add(node, role):
            role[node] = "bias-add"
        elif op in SCALE_OPS and _is_scale(node, role):
            role[node] = "scale"
        elif op in ELEMENTWISE and all(_is_float(v) for v in node.inputs):
            role[node] = "elementwise"
        elif op in FUSABLE_ACTIVATIONS and _fusable(node, role):
            role[node] = "fused-activation"
        elif op in POINTWISE and config.pointwise_tables and _pointwise_operands(node):
            role[node] = "pointwise"
        elif op == "Mul" and _independent_product(node):
            role[node] = "elementwise"
        elif op in ELEMENTWISE:
            reason[node] = f"{op} with a constant or non-float operand"
        elif op in POOL and _pool_ok(node):
            role[node] = "pool"
        elif op in NORMS and _is_float(node.inputs[0]) and _last_axis(node):
            role[node] = "norm"
        elif op in SHARED and _is_float(node.inputs[0]):
            role[node] = "shared"
        else:
            reason[node] = "no integer lowering (runs in float)"

    needed: dict[str, str] = {}   # tensor -> root tensor (itself unless it shares a scale)
    force_quant: set[ir.Node] = set()
    in_table: set[ir.Node] = set()   # pointwise nodes inside a chain that becomes one table

    def need(value: ir.Value, root: str | None = None) -> None:
        if _is_float(value) and config.overrides.get(value.name) != "float":
            needed.setdefault(value.name, root or value.name)

    for node in reversed(nodes):
        r = role.get(node)
        if r is None:
            continue
        out_needed = any(o.name in needed for o in node.outputs) or node in force_quant
        if r == "compute":
            for i in _activation_inputs(node):
                need(node.inputs[i])
            plan.roles[node.name] = r
        elif r == "bias-add":
            plan.roles[node.name] = r
        elif r == "scale":
            if out_needed:
                plan.roles[node.name] = r
            else:
                reason[node] = "output feeds float ops only (runs in float)"
        elif r == "pointwise":
            if out_needed:
                leaves, members = _pointwise_chain(node, role, needed)
                if leaves is not None and len(leaves) == 1:
                    need(leaves[0])
                    in_table.update(members)
                    plan.roles[node.name] = r
                elif node.op_type == "Mul" and all(_is_float(v) for v in node.inputs):
                    for v in node.inputs:
                        need(v)
                    plan.roles[node.name] = r
                else:
                    reason[node] = f"{node.op_type} of several tensors: no integer lowering (runs in float)"
            elif node in in_table:
                plan.roles[node.name] = r
            else:
                reason[node] = "output feeds float ops only (runs in float)"
        elif r == "fused-activation":
            producer = node.inputs[0].producer()
            if out_needed and producer is not None and role.get(producer) == "elementwise":
                force_quant.add(producer)
            plan.roles[node.name] = r
        elif r in ("elementwise", "pool", "norm"):
            if out_needed:
                for v in (node.inputs if r == "elementwise" else node.inputs[:1]):
                    need(v)
                plan.roles[node.name] = r
            else:
                reason[node] = "output feeds float ops only (runs in float)"
        elif r == "shared":
            out = node.outputs[0]
            if out.name in needed:
                need(node.inputs[0])
                if node.inputs[0].name in needed:
                    needed[out.name] = node.inputs[0].name
                plan.roles[node.name] = r
            else:
                reason[node] = "neighbours are float (runs in float)"

    def root_of(name: str) -> str:
        seen = set()
        while needed.get(name, name) != name and name not in seen:
            seen.add(name)
            name = needed[name]
        return name

    # a shared-scale group has one quantizer type: an override of any member (the MaxPool output a
    # user names, say) is the group's, the root's own override first
    group_scheme: dict[str, str] = {}
    for name in needed:
        if config.overrides.get(name, "float") != "float":
            group_scheme.setdefault(root_of(name), config.overrides[name])
    for name in needed:
        root = root_of(name)
        scheme = config.overrides.get(root) if config.overrides.get(root, "float") != "float" else None
        scheme = scheme or group_scheme.get(root, config.scheme)
        qtype, symmetric, _ = SCHEMES[scheme]
        plan.activations[name] = ActivationSpec(name, root, qtype, symmetric)

    for node in nodes:
        if plan.roles.get(node.name) == "compute":
            _plan_weights(node, config, plan)
    for node in nodes:
        if node not in role or node.name in plan.roles:
            continue
        plan.float_nodes[node.name] = (node.op_type, reason.get(node, "output not quantized (runs in float)"))
    for node, why in reason.items():
        plan.float_nodes[node.name] = (node.op_type, why)
    return plan


def _pool_ok(node: ir.Node) -> bool:
    """A pooling node the integer lowering reads: ReduceMean only with constant (or no) axes."""
    if node.op_type != "ReduceMean" or len(node.inputs) < 2 or node.inputs[1] is None:
        return True
    return _const(node.inputs[1])


def _pointwise_sources(value: ir.Value) -> set[str]:
    """The tensors `value` is an element-wise function of: itself and, through pointwise producers
    (Sigmoid, Clip, Add, Mul, ... of activations and constants), every tensor they read."""
    seen: set[str] = set()
    stack = [value]
    while stack and len(seen) <= MAX_CHAIN:
        v = stack.pop()
        if v is None or _const(v) or v.name in seen:
            continue
        seen.add(v.name)
        producer = v.producer()
        if producer is not None and producer.op_type in POINTWISE:
            stack.extend(producer.inputs)
    return seen


def _independent_product(node: ir.Node) -> bool:
    """Mul of two float activations neither of which is a pointwise function of the other's
    sources: an integer product of two quantized tensors (the SE gate). x * f(x) (SiLU, HardSwish,
    GELU's halves) is one activation of x: quantizing x there is quantizing a pre-activation."""
    a, b = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
    if not (_is_float(a) and _is_float(b)) or a.name == b.name:
        return False
    return not (_pointwise_sources(a) & _pointwise_sources(b))


def _last_axis(node: ir.Node) -> bool:
    """Softmax normalizing the last axis (opset >= 13 semantics, as canonicalized)."""
    attr = node.attributes.get("axis")
    axis = -1 if attr is None else attr.as_int()
    shape = node.inputs[0].shape
    return axis == -1 or (shape is not None and axis == len(shape) - 1)


def _compute_ok(node: ir.Node) -> bool:
    if not _is_float(node.inputs[0]) and not _const(node.inputs[0]):
        return False
    if node.op_type == "Gemm":
        if node.attributes.get_int("transA", 0) or node.attributes.get_float("alpha", 1.0) != 1.0:
            return False
    return True


def _activation_inputs(node: ir.Node) -> list[int]:
    if node.op_type in ("Conv", "ConvTranspose"):
        return [0]
    return [i for i in (0, 1) if not _const(node.inputs[i])]


def _is_bias_add(node: ir.Node, role: dict[ir.Node, str]) -> bool:
    consts = [i for i, v in enumerate(node.inputs) if _const(v)]
    if len(consts) != 1:
        return False
    other = node.inputs[1 - consts[0]]
    producer = other.producer()
    if producer is None or role.get(producer) != "compute" or producer.op_type != "MatMul":
        return False
    if not _const(producer.inputs[1]) or len(other.uses()) != 1 or other.is_graph_output():
        return False
    bias = node.inputs[consts[0]].const_value
    w = producer.inputs[1].const_value
    return bias.shape is not None and len(bias.shape) == 1 and bias.shape[0] == w.shape[-1]


def _scalar_const(value: ir.Value) -> bool:
    """A constant of one value (size 1, or every element equal): what a 256-entry table can hold."""
    a = value.const_value.numpy()
    return a.size >= 1 and bool((a == a.reshape(-1)[0]).all())


def _pointwise_operands(node: ir.Node) -> bool:
    """Float activations and scalar constants only (attributes aside: Clip's bounds are inputs)."""
    ins = [v for v in node.inputs if v is not None]
    return any(_is_float(v) for v in ins) and all(_is_float(v) or (_const(v) and _scalar_const(v)) for v in ins)


def _pointwise_chain(node: ir.Node, role: dict[ir.Node, str], needed: dict[str, str]):
    """(the tensors the pointwise chain ending at `node` reads, the chain's nodes); (None, _) when it
    is longer than MAX_CHAIN. A tensor already quantized for another consumer ends the chain."""
    leaves: dict[str, ir.Value] = {}
    members: set[ir.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n in members:
            continue
        members.add(n)
        if len(members) > MAX_CHAIN:
            return None, members
        for v in n.inputs:
            if v is None or _const(v):
                continue
            producer = v.producer()
            if producer is not None and role.get(producer) == "pointwise" and v.name not in needed:
                stack.append(producer)
            else:
                leaves[v.name] = v
    return list(leaves.values()), members


def _is_scale(node: ir.Node, role: dict[ir.Node, str]) -> bool:
    """Mul / Add by a constant, or Div by one, of a compute layer's single-use output."""
    consts = [i for i, v in enumerate(node.inputs) if _const(v)]
    if len(consts) != 1 or (node.op_type == "Div" and consts != [1]):
        return False
    src = node.inputs[1 - consts[0]]
    producer = src.producer()
    return (producer is not None and role.get(producer) in ("compute", "bias-add", "scale")
            and len(src.uses()) == 1 and not src.is_graph_output())


def _fusable(node: ir.Node, role: dict[ir.Node, str]) -> bool:
    src = node.inputs[0]
    producer = src.producer()
    if producer is None or role.get(producer) not in ("compute", "bias-add", "elementwise", "scale"):
        return False
    if len(src.uses()) != 1 or src.is_graph_output():
        return False
    return node.op_type == "Relu" or all(v is None or _const(v) for v in node.inputs[1:])


def _weight_axis(node: ir.Node, w: ir.Value) -> int | None:
    rank = len(w.const_value.shape)
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1 if node.attributes.get_int("group", 1) == 1 else None
    if node.op_type == "Gemm":
        return 0 if node.attributes.get_int("transB", 0) else 1
    return rank - 1  # MatMul: [..., K, N], output channel is the last axis


def _plan_weights(node: ir.Node, config: QuantConfig, plan: QuantPlan) -> None:
    w_index = 1
    w = node.inputs[w_index]
    if not _const(w) or w.const_value.dtype != ir.DataType.FLOAT:
        return
    scheme = config.overrides.get(w.name, config.scheme)
    if scheme == "float":
        return
    qtype = SCHEMES[scheme][2]
    axis = _weight_axis(node, w) if config.per_channel else None
    wspec = WeightSpec(node, w_index, qtype, axis)
    plan.weights.append(wspec)
    act = node.inputs[0]
    if qtype.is_float or not config.bias_int32 or act.name not in plan.activations:
        return
    if plan.activations[act.name].qtype.is_float:
        return
    bias_node, bias_index = None, None
    if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.inputs) > 2 and _const(node.inputs[2]):
        if node.op_type == "Gemm" and node.attributes.get_float("beta", 1.0) != 1.0:
            return
        if len(node.inputs[2].const_value.shape) != 1:
            return
        bias_node, bias_index = node, 2
    elif node.op_type == "MatMul":
        users = node.outputs[0].uses()
        if len(users) == 1 and plan.roles.get(users[0].node.name) == "bias-add":
            add = users[0].node
            bias_node = add
            bias_index = 0 if _const(add.inputs[0]) else 1
    if bias_node is not None:
        if node.op_type == "ConvTranspose" and axis is None and node.attributes.get_int("group", 1) != 1:
            return
        plan.biases.append(BiasSpec(bias_node, bias_index, act.name, wspec, 0 if axis is not None else None))


def _mask_sentinels(model: ir.Model, plan: QuantPlan, stats: dict[str, TensorStats],
                    config: QuantConfig) -> dict[str, str]:
    """Nodes reading a tensor whose range marks it as a sentinel-carrying mask must stay float."""
    bad: dict[str, str] = {}
    values = {v.name: v for v in model.graph.inputs}
    values.update({o.name: o for node in model.graph for o in node.outputs})
    for name, spec in plan.activations.items():
        st = stats.get(spec.root)
        if st is None:
            continue
        if st.nonfinite or st.absmax >= config.mask_threshold:
            value = values.get(name)
            why = (f"input {name} spans [{st.min:.3g}, {st.max:.3g}] (additive-mask sentinel): "
                   "integer code can't represent it")
            for use in value.uses() if value is not None else []:
                if use.node.name in plan.roles:
                    bad[use.node.name] = why
            producer = value.producer() if value is not None else None
            if producer is not None and plan.roles.get(producer.name) in ("elementwise", "pool", "norm", "shared",
                                                                          "pointwise"):
                bad[producer.name] = why
    return bad
