"""Loss metrics: one number per (float outputs, quantized outputs, labels), lower is better.

The registry behind `qcc tune --loss` (the objective) and `qcc compile --metric` (report.json's
fidelity.metrics). Each built-in is one `Metric` record, registered below in `_BUILTINS`. With f the
FP32 outputs, q the quantized ones, over the N evaluation samples i:

    accuracy                100 * (mean[argmax f_i == y_i] - mean[argmax q_i == y_i])      accuracy points lost
    disagreement            100 * (1 - mean[argmax f_i == argmax q_i])                     points of top-1 disagreement
    confident-disagreement  the same over S = {i : max softmax(f_i) >= 0.5} (all i when S is empty)
    kl                      mean_i sum_c p_ic (log p_ic - log r_ic),  p = softmax(f), r = softmax(q)   nats
    cosine                  100 * (1 - min_outputs mean_i <f_i, q_i> / (|f_i| |q_i|))      (flattened per sample)
    ctc-line-exact          100 * (1 - mean[ctc(f_i) == ctc(q_i)])                        points of lines decoded differently
                            ctc(x) = greedy CTC decode of x [T, C]: a_t = argmax_c x_tc, collapse runs of equal a_t,
                            drop the blank 0
    box-f1                  100 * (1 - F1),  F1 = 2 TP / (|D_f| + |D_q|)  over all samples (F1 = 1 when both are empty)
                            D(x) = detections of a YOLO-style head x [K, 4 + C] (or [4 + C, K]: the shorter of the last
                            two axes is the 4 + C one): box k = (cx, cy, w, h), class argmax_c x_k,4+c, score max_c;
                            score >= 0.25, the 1000 best, class-wise greedy NMS at IoU > 0.5, at most 300 kept.
                            TP: FP32 detections by decreasing score, each matched to the unmatched quantized detection
                            of its class with the highest IoU, if that IoU >= 0.5.

Class-score metrics read the first float output of shape [N, C] (C > 1), ctc-line-exact the first
[N, T, C], box-f1 the first [N, K, 4 + C]; cosine reads every float output. "auto" keeps the tuner's
rule: accuracy with labels, else confident-disagreement for [N, C] class scores, else cosine.

A user metric is `MODULE:FUNCTION` (imported from sys.path or the current directory) or
`path/to/file.py:FUNCTION`: a callable (float_outputs, quantized_outputs, labels or None) -> float,
given lists of read-only arrays in the model's output order. Import failures, a missing attribute,
something not callable, an exception, or a value that is not a finite number are QccErrors.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import numbers
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import QccError
from .metrics import classification, cosine, softmax

Outputs = Sequence[np.ndarray]
AUTO = "auto"
DEFINITIONS = 2            # bumped whenever a built-in loss changes meaning: tuning journals record it
SCORE_THRESHOLD = 0.25     # box-f1: a detection's class score must reach this
NMS_IOU = 0.5              # box-f1: class-wise NMS suppresses overlaps above this
MATCH_IOU = 0.5            # box-f1: FP32 and quantized detections match at or above this
MAX_CANDIDATES = 1000      # box-f1: best-scoring boxes per sample entering NMS
MAX_DETECTIONS = 300       # box-f1: detections kept per sample after NMS


@dataclass(frozen=True)
class Metric:
    name: str
    loss: Callable[[Outputs, Outputs, np.ndarray | None], float]
    needs: Callable[[Outputs, np.ndarray | None], str | None]   # None when it applies, else what it needs
    unit: str
    description: str
    user: bool = False


# ---- which output a metric reads ---------------------------------------------------------------
def _floats(outputs: Outputs) -> list[np.ndarray]:
    return [o for o in outputs if np.issubdtype(o.dtype, np.floating)]


def class_scores(outputs: Outputs) -> np.ndarray | None:
    """The first float output of shape [N, C], C > 1."""
    return next((o for o in _floats(outputs) if o.ndim == 2 and o.shape[1] > 1), None)


def _sequence_scores(outputs: Outputs) -> np.ndarray | None:
    return next((o for o in _floats(outputs) if o.ndim == 3 and o.shape[2] > 1), None)


def _detection_head(outputs: Outputs) -> np.ndarray | None:
    return next((o for o in _floats(outputs) if o.ndim == 3 and min(o.shape[1:]) >= 5), None)


def _need(choose, what: str):
    return lambda outputs, labels: None if choose(outputs) is not None else what


def _need_labels(outputs: Outputs, labels) -> str | None:
    if labels is None:
        return "labels (--labels with --eval)"
    return None if class_scores(outputs) is not None else "a model output of [N, C] class scores"


# ---- the built-ins ----------------------------------------------------------------------------
def _accuracy(f: Outputs, q: Outputs, labels) -> float:
    ref, out = class_scores(f), class_scores(q)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(ref):
        raise QccError(f"labels have {len(labels)} entries but the outputs have {len(ref)} samples")
    return 100.0 * float(np.mean(ref.argmax(-1) == labels) - np.mean(out.argmax(-1) == labels))


def _disagreement(f: Outputs, q: Outputs, labels) -> float:
    return 100.0 * (1.0 - classification(class_scores(f), class_scores(q))["agreement"])


def _confident_disagreement(f: Outputs, q: Outputs, labels) -> float:
    ref, out = class_scores(f), class_scores(q)
    agree = ref.argmax(-1) == out.argmax(-1)
    confident = softmax(ref.astype(np.float64)).max(-1) >= 0.5
    return 100.0 * (1.0 - float(agree[confident].mean() if confident.any() else agree.mean()))


def _kl(f: Outputs, q: Outputs, labels) -> float:
    return classification(class_scores(f), class_scores(q))["kl"]


def _cosine(f: Outputs, q: Outputs, labels) -> float:
    cos = [cosine(a, b) for a, b in zip(f, q) if np.issubdtype(a.dtype, np.floating)]
    return 100.0 * (1.0 - min(cos))


def ctc_greedy_decode(scores: np.ndarray, blank: int = 0) -> list[tuple[int, ...]]:
    """Per sample of scores [N, T, C]: argmax per frame, runs of one class collapsed, blanks dropped."""
    best = np.asarray(scores).argmax(-1)
    lines = []
    for ids in best:
        if ids.size == 0:
            lines.append(())
            continue
        runs = ids[np.r_[True, ids[1:] != ids[:-1]]]
        lines.append(tuple(int(c) for c in runs[runs != blank]))
    return lines


def _ctc_line_exact(f: Outputs, q: Outputs, labels) -> float:
    a, b = ctc_greedy_decode(_sequence_scores(f)), ctc_greedy_decode(_sequence_scores(q))
    return 100.0 * (1.0 - float(np.mean([x == y for x, y in zip(a, b)])))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of (x1, y1, x2, y2) boxes."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=-1)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def detections(head: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes x1y1x2y2, scores, classes) of one sample's head [K, 4 + C], by decreasing score."""
    head = np.asarray(head, np.float64)
    cls_scores = head[:, 4:]
    classes, scores = cls_scores.argmax(-1), cls_scores.max(-1)
    keep = np.flatnonzero(scores >= SCORE_THRESHOLD)
    keep = keep[np.argsort(-scores[keep], kind="stable")][:MAX_CANDIDATES]
    cx, cy, w, h = head[keep, :4].T
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)
    iou = box_iou(boxes, boxes)
    same = classes[keep][:, None] == classes[keep][None, :]
    suppressed = np.zeros(len(keep), bool)
    chosen = []
    for i in range(len(keep)):
        if suppressed[i]:
            continue
        chosen.append(i)
        if len(chosen) == MAX_DETECTIONS:
            break
        suppressed |= same[i] & (iou[i] > NMS_IOU)
    chosen = np.asarray(chosen, int)
    return boxes[chosen].reshape(-1, 4), scores[keep][chosen], classes[keep][chosen]


def matched(ref: tuple, test: tuple) -> int:
    """Greedy same-class matches at IoU >= MATCH_IOU, FP32 detections by decreasing score."""
    rb, _, rc = ref
    tb, _, tc = test
    if not len(rb) or not len(tb):
        return 0
    iou = np.where(rc[:, None] == tc[None, :], box_iou(rb, tb), -1.0)
    free = np.ones(len(tb), bool)
    tp = 0
    for row in iou:
        cand = np.where(free, row, -1.0)
        j = int(cand.argmax())
        if cand[j] >= MATCH_IOU:
            free[j] = False
            tp += 1
    return tp


def _as_boxes_last(head: np.ndarray) -> np.ndarray:
    """[N, K, 4 + C] whichever way round the head is (the shorter of the last two axes is 4 + C)."""
    return np.swapaxes(head, 1, 2) if head.shape[1] < head.shape[2] else head


def _box_f1(f: Outputs, q: Outputs, labels) -> float:
    ref, out = _as_boxes_last(_detection_head(f)), _as_boxes_last(_detection_head(q))
    tp = n = 0
    for a, b in zip(ref, out):
        da, db = detections(a), detections(b)
        tp += matched(da, db)
        n += len(da[0]) + len(db[0])
    return 100.0 * (1.0 - (2.0 * tp / n if n else 1.0))


_BUILTINS = (
    Metric("accuracy", _accuracy, _need_labels, "accuracy points",
           "accuracy points lost against the labels (FP32 minus quantized)"),
    Metric("disagreement", _disagreement, _need(class_scores, "a model output of [N, C] class scores"), "points",
           "points of top-1 disagreement with FP32"),
    Metric("confident-disagreement", _confident_disagreement,
           _need(class_scores, "a model output of [N, C] class scores"), "points",
           "points of top-1 disagreement where FP32's max probability >= 0.5"),
    Metric("kl", _kl, _need(class_scores, "a model output of [N, C] class scores"), "nats",
           "mean KL(softmax(FP32) || softmax(quantized))"),
    Metric("cosine", _cosine, _need(lambda o: _floats(o) or None, "a float model output"), "points",
           "100 * (1 - cosine(FP32, quantized)), worst output"),
    Metric("ctc-line-exact", _ctc_line_exact,
           _need(_sequence_scores, "a model output of [N, T, C] per-frame class scores (CTC, blank 0)"), "points",
           "points of samples whose greedy CTC decode (blank 0) differs from FP32's"),
    Metric("box-f1", _box_f1, _need(_detection_head, "a YOLO-style model output [N, K, 4 + C] or [N, 4 + C, K]"),
           "points", "100 * (1 - F1) of quantized vs FP32 detections (score >= 0.25, NMS, same class, IoU >= 0.5)"),
)
METRICS: dict[str, Metric] = {m.name: m for m in _BUILTINS}


def names() -> list[str]:
    return list(METRICS)


def help_text() -> str:
    return ("built-ins: " + "; ".join(f"{m.name}: {m.description}" for m in METRICS.values())
            + "; or MODULE:FUNCTION / path/to/file.py:FUNCTION, a callable (float_outputs, quantized_outputs, "
              "labels) -> loss")


def auto(outputs: Outputs, labels: np.ndarray | None) -> str:
    """The tuner's default: accuracy with labels, else confident-disagreement for [N, C] class scores, else cosine."""
    if class_scores(outputs) is not None:
        return "accuracy" if labels is not None else "confident-disagreement"
    return "cosine"


def resolve(spec: str) -> Metric:
    """A built-in by name, or a user callable by MODULE:FUNCTION / path/to/file.py:FUNCTION."""
    if spec in METRICS:
        return METRICS[spec]
    if ":" not in spec:
        raise QccError(f"unknown metric {spec!r}; choose from {', '.join(METRICS)}, or give MODULE:FUNCTION")
    fn = _load_callable(spec)
    return Metric(spec, fn, lambda outputs, labels: None, "user-defined", f"user metric {spec}", user=True)


def parse_list(items: Sequence[str] | None) -> list[str]:
    """--metric values (repeatable, each a comma list) -> metric specs, in order, without repeats."""
    out: list[str] = []
    for item in items or []:
        for spec in item.split(","):
            spec = spec.strip()
            if spec and spec not in out:
                out.append(spec)
    return out


def evaluate(metric: Metric, float_outputs: Outputs, quantized_outputs: Outputs,
             labels: np.ndarray | None = None) -> float:
    """The metric's loss, checked: it applies to these outputs and gives a finite number."""
    reason = metric.needs(float_outputs, labels)
    if reason:
        raise QccError(f"metric {metric.name!r} needs {reason}")
    f, q = [_read_only(a) for a in float_outputs], [_read_only(a) for a in quantized_outputs]
    try:
        value = metric.loss(f, q, None if labels is None else _read_only(np.asarray(labels)))
    except QccError:
        raise
    except Exception as exc:
        if not metric.user:
            raise
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise QccError(f"metric {metric.name!r} raised {type(exc).__name__}: {msg}") from None
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise QccError(f"metric {metric.name!r} returned {type(value).__name__} {str(value)[:60]!r}, not a number")
    if not math.isfinite(float(value)):
        raise QccError(f"metric {metric.name!r} returned {float(value)}, not a finite number")
    return float(value)


def evaluate_all(metrics: Sequence[Metric], float_outputs: Outputs, quantized_outputs: Outputs,
                 labels: np.ndarray | None = None) -> dict[str, float]:
    return {m.name: evaluate(m, float_outputs, quantized_outputs, labels) for m in metrics}


def _read_only(a: np.ndarray) -> np.ndarray:
    v = np.asarray(a).view()
    v.flags.writeable = False    # the tuner caches FP32 outputs: a metric must not change them
    return v


def _load_callable(spec: str):
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise QccError(f"metric {spec!r}: expected MODULE:FUNCTION or path/to/file.py:FUNCTION")
    if where.endswith(".py") or "/" in where or os.sep in where:
        module = _load_file(spec, Path(where))
    else:
        module = _import(spec, where)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise QccError(f"metric {spec!r}: {where} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise QccError(f"metric {spec!r}: {attr} is a {type(obj).__name__}, not a callable "
                       "(float_outputs, quantized_outputs, labels) -> loss")
    return obj


def _load_file(spec: str, path: Path):
    if not path.is_file():
        raise QccError(f"metric {spec!r}: no such file {path}")
    name = "qcc_user_metric_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(loader_spec)
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:
        raise QccError(f"metric {spec!r}: loading {path} failed: {type(exc).__name__}: {_first_line(exc)}") from None
    sys.modules[name] = module
    return module


def _import(spec: str, module_name: str):
    added = os.getcwd() not in sys.path and "" not in sys.path
    if added:
        sys.path.append(os.getcwd())     # as `python -m` does: a module beside the user is importable
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise QccError(f"metric {spec!r}: no module named {module_name!r} (on sys.path or in the current "
                           "directory; or give path/to/file.py:FUNCTION)") from None
        raise QccError(f"metric {spec!r}: importing {module_name} failed: it needs {exc.name!r}, "
                       "which is not installed") from None
    except Exception as exc:
        raise QccError(f"metric {spec!r}: importing {module_name} failed: {type(exc).__name__}: "
                       f"{_first_line(exc)}") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""
