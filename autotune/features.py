"""Cheap model statistics, computed once, and the feature vector of a config that the cost model reads.

Per compute layer (Conv / Gemm / MatMul with a constant weight), from the float graph alone:
    weight range  max(W) - min(W);   kurtosis  E[(W - mu)^4] / sigma^4  (outlier-heavy weights)
    weight SQNR   10 log10( sum W^2 / sum (W - Q(W))^2 ) for each weight type and granularity
From the calibration statistics of the layer's input activation (histograms, no extra model run):
    activation SQNR proxy   the same ratio over the histogram (bin centres stand for their samples),
                            with the clipping range each calibration method picks for each type
A config's features: its own choices (one-hot scheme / calibration, percentile, granularity, power of
two, int4 fraction, float layers, passes and their numeric parameters), the SQNR proxies of the layers
it quantizes aggregated (min, mean, parameter-weighted mean; weights, activations and both combined),
and constants of the model (layer count, parameters, kurtosis, op mix) so journals of other models can
warm-start the cost model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir
from qcc.config import CALIBRATIONS, SCHEMES, QuantConfig
from qcc.plan import build_plan
from qcc.qparams import dequantize_values, quantize_values, weight_scales
from qcc.qtypes import QType
from qcc.ranges import fake_quantize, select_range
from qcc.statistics import TensorStats


@dataclass
class Layer:
    node: str
    op: str
    weight: str
    activation: str | None       # root tensor of the quantized input activation
    params: int
    w_range: float
    w_kurtosis: float
    array: np.ndarray = field(repr=False)
    axis: int | None = None


@dataclass
class ModelStats:
    layers: list[Layer]
    op_counts: dict[str, int]
    act_stats: dict[str, TensorStats]
    _w_cache: dict = field(default_factory=dict, repr=False)
    _a_cache: dict = field(default_factory=dict, repr=False)

    def weight_sqnr(self, qtype: QType, per_channel: bool) -> np.ndarray:
        """dB, one per layer."""
        key = (qtype, per_channel)
        if key not in self._w_cache:
            self._w_cache[key] = np.array([_weight_sqnr(layer.array, qtype, layer.axis if per_channel else None)
                                           for layer in self.layers])
        return self._w_cache[key]

    def act_sqnr(self, calibration: str, percentile: float, qtype: QType, symmetric: bool) -> np.ndarray:
        """dB, one per layer (inf where the layer's input is not a quantized activation)."""
        key = (calibration, percentile, qtype, symmetric)
        if key not in self._a_cache:
            per_tensor: dict[str, float] = {}
            values = []
            for layer in self.layers:
                t = layer.activation
                if t is None or t not in self.act_stats or self.act_stats[t].count == 0:
                    values.append(np.inf)
                    continue
                if t not in per_tensor:
                    per_tensor[t] = _hist_sqnr(self.act_stats[t], calibration, percentile, qtype, symmetric)
                values.append(per_tensor[t])
            self._a_cache[key] = np.array(values)
        return self._a_cache[key]

    def sensitivity(self) -> np.ndarray:
        """Per-layer SQNR (dB) of default int8 (per-channel weights, minmax activations): lower is more
        sensitive. Noise powers of weight and activation add."""
        return _combine(self.weight_sqnr(QType.INT8, True), self.act_sqnr("minmax", 99.999, QType.UINT8, False))

    def constants(self) -> np.ndarray:
        params = np.array([layer.params for layer in self.layers], dtype=np.float64)
        kurt = np.array([layer.w_kurtosis for layer in self.layers])
        n_ops = max(sum(self.op_counts.values()), 1)
        return np.array([len(self.layers), math.log10(max(params.sum(), 1)),
                         float(np.mean(np.log10(kurt + 1))) if kurt.size else 0.0,
                         float(np.log10(kurt.max() + 1)) if kurt.size else 0.0,
                         float(np.mean([layer.w_range for layer in self.layers])) if self.layers else 0.0]
                        + [self.op_counts.get(op, 0) / n_ops for op in ("Conv", "Gemm", "MatMul", "Add",
                                                                        "LayerNormalization", "Softmax")])


def model_stats(float_proto: onnx.ModelProto, act_stats: dict[str, TensorStats]) -> ModelStats:
    """Per-layer statistics of the float graph; `act_stats` are calibration statistics of (at least)
    the activations the default int8 plan quantizes."""
    model = ir.serde.deserialize_model(float_proto)
    plan = build_plan(model, QuantConfig())
    layers = []
    weight_axis = {id(w.node): w.axis for w in plan.weights}
    for w in plan.weights:
        node = w.node
        array = node.inputs[w.index].const_value.numpy().astype(np.float32)
        x = array.astype(np.float64).ravel()
        sd = x.std()
        act = node.inputs[0].name if node.inputs[0] is not None else None
        root = plan.activations[act].root if act in plan.activations else None
        layers.append(Layer(node.name, node.op_type, node.inputs[w.index].name, root, int(array.size),
                            float(x.max() - x.min()) if x.size else 0.0,
                            float(np.mean((x - x.mean()) ** 4) / sd**4) if sd > 0 else 0.0, array,
                            weight_axis.get(id(node))))
    op_counts: dict[str, int] = {}
    for node in model.graph:
        op_counts[node.op_type] = op_counts.get(node.op_type, 0) + 1
    return ModelStats(layers, op_counts, act_stats)


def activation_roots(float_proto: onnx.ModelProto) -> set[str]:
    return build_plan(ir.serde.deserialize_model(float_proto), QuantConfig()).roots()


# ---- the feature vector -----------------------------------------------------------------------

def feature_names(space) -> list[str]:
    names = [f"scheme={s}" for s in SCHEMES] + [f"calibration={c}" for c in CALIBRATIONS]
    names += ["percentile", "power_of_two", "per_channel", "int4_fraction", "float_layers"]
    names += [f"pass={p}" for p in space.pass_names] + [f"pass={p}.{k}" for p, k in space.pass_param_keys]
    for part in ("w", "a", "wa"):
        names += [f"{part}_sqnr_min", f"{part}_sqnr_mean", f"{part}_sqnr_wmean"]
    names += ["quantized_fraction", "bits_per_param"]
    names += ["m_layers", "m_log_params", "m_kurtosis_mean", "m_kurtosis_max", "m_w_range",
              "m_conv", "m_gemm", "m_matmul", "m_add", "m_layernorm", "m_softmax"]
    return names


def featurize(space, stats: ModelStats, points: list[dict]) -> np.ndarray:
    consts = stats.constants()
    params = np.array([layer.params for layer in stats.layers], dtype=np.float64)
    index = {layer.node: i for i, layer in enumerate(stats.layers)}
    rows = []
    for point in points:
        cfg = space.to_config(point)
        method, pct = space.calibration_of(point)
        w_qtype = SCHEMES[cfg.scheme][2]
        a_qtype, a_sym = SCHEMES[cfg.scheme][0], SCHEMES[cfg.scheme][1]
        w_db = stats.weight_sqnr(w_qtype, cfg.per_channel).copy()
        bits = np.full(len(stats.layers), w_qtype.bits, dtype=np.float64)
        int4 = [index[n] for n in space.int4_nodes(point) if n in index]
        if int4:
            w_db[int4] = stats.weight_sqnr(QType.INT4, cfg.per_channel)[int4]
            bits[int4] = 4
        a_db = stats.act_sqnr(method, pct, a_qtype, a_sym)
        keep = np.ones(len(stats.layers), dtype=bool)
        for n in space.float_nodes(point):
            if n in index:
                keep[index[n]] = False
        bits[~keep] = 32
        row = [float(cfg.scheme == s) for s in SCHEMES] + [float(method == c) for c in CALIBRATIONS]
        row += [pct if method == "percentile" else 100.0, float(cfg.power_of_two), float(cfg.per_channel),
                float(point.get("int4", 0.0)), float(point.get("float_layers", 0))]
        row += [float(bool(point.get(f"pass:{p}", False))) for p in space.pass_names]
        row += [float((point.get(f"pass:{p}") or {}).get(k, 0.0)) if isinstance(point.get(f"pass:{p}"), dict)
                else 0.0 for p, k in space.pass_param_keys]
        for db in (w_db, a_db, _combine(w_db, a_db)):
            row += _aggregate(db[keep], params[keep])
        row += [float(params[keep].sum() / max(params.sum(), 1)),
                float((bits * params).sum() / max(params.sum(), 1))]
        rows.append(np.concatenate([np.array(row, dtype=np.float64), consts]))
    return np.vstack(rows) if rows else np.zeros((0, len(feature_names(space))))


def _aggregate(db: np.ndarray, weights: np.ndarray) -> list[float]:
    if db.size == 0:
        return [80.0, 80.0, 80.0]
    db = np.clip(db, -20.0, 80.0)  # inf (exact) -> a large finite value the trees can split on
    return [float(db.min()), float(db.mean()), float(np.average(db, weights=np.maximum(weights, 1)))]


def _combine(w_db: np.ndarray, a_db: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", divide="ignore"):
        noise = 10.0 ** (-np.asarray(w_db) / 10) + 10.0 ** (-np.asarray(a_db) / 10)
        return -10.0 * np.log10(np.maximum(noise, 1e-30))


def _weight_sqnr(w: np.ndarray, qtype: QType, axis: int | None) -> float:
    scale = weight_scales(w, qtype, axis)
    q = quantize_values(w, scale, 0, qtype, axis, narrow=not qtype.is_float)
    err = w.astype(np.float64) - dequantize_values(q, scale, 0, axis)
    return _db(float(np.sum(w.astype(np.float64) ** 2)), float(np.sum(err * err)))


def _hist_sqnr(st: TensorStats, calibration: str, percentile: float, qtype: QType, symmetric: bool) -> float:
    lo, hi = select_range(st, calibration, qtype, symmetric, percentile)
    edges = st.bin_edges
    centers = 0.5 * (edges[:-1] + edges[1:])
    nz = st.hist > 0
    c, n = centers[nz], st.hist[nz].astype(np.float64)
    err = fake_quantize(c, lo, hi, qtype) - c
    return _db(float(np.sum(n * c * c)), float(np.sum(n * err * err)))


def _db(signal: float, noise: float) -> float:
    if noise <= 0:
        return float("inf")
    if signal <= 0:
        return float("-inf")
    return 10.0 * math.log10(signal / noise)
