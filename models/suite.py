"""The offline model suite: the architectures users deploy, exported with several exporters' idioms.

``SUITE`` names each entry with its inputs and export idiom; :func:`get` returns a
:class:`~qcc.models.zoo.ZooEntry` (FP32 ONNX path + calibration / evaluation feeds), exporting the
model once into the zoo's cache folder (``~/.cache/qcc/zoo`` or ``$QCC_ZOO_CACHE``) as
``suite-<name>.onnx`` with a ``suite-<name>.json`` beside it that records the exporter actually used.

Three kinds of entry:

- torch: random-weight nets from models/suite_nets.py (seeded, non-trivial BatchNorm statistics),
  exported with TorchScript (``dynamo=False``) or dynamo (``dynamo=True``, needs onnxscript) at the
  entry's opset. Where dynamo export fails, the export falls back to TorchScript and the sidecar
  says so. Random weights: only speed and exactness against onnxruntime mean anything on them.
- onnx: the TF-style net, built with onnx.helper the way tf2onnx writes Keras models: NHWC input and
  a Transpose to NCHW, explicit ``Pad`` nodes before ``Conv`` with ``pads=0`` (TF "SAME" padding),
  ReLU6 as ``Clip``, a folded BatchNorm as ``Mul`` + ``Add``, and a ``MatMul`` + ``Add`` classifier.
- real: the models with real weights, by reference: MobileNetV2, MiniLM, PP-OCR det / cls from
  models/zoo.py, and PP-OCRv4 rec (from the ``rapidocr-onnxruntime`` package folder, located with
  ``importlib.util.find_spec``; the package is never imported, it needs OpenCV).

Calibration data: ImageNet-normalized natural-photo crops (models/datasets.py), 0-1 crops for the
detector, text-line crops for PP-OCR; a few samples suffice for latency work.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import datasets
from .zoo import ZooEntry, default_cache_dir

EXPORTERS = ("torchscript", "dynamo")
PPOCR_REC_FILE = "ch_PP-OCRv4_rec_infer.onnx"


@dataclass(frozen=True)
class SuiteEntry:
    """One suite model. ``inputs``: ONNX input name -> the shape fed (batch 1); ``batch``: "dynamic"
    or "fixed" in the exported graph; ``idiom``: what the export looks like, in words."""

    name: str
    kind: str            # "torch" | "onnx" | "real"
    inputs: dict[str, tuple[int, ...]]
    exporter: str        # "torchscript" | "dynamo" | "onnx.helper" | the real model's exporter
    opset: int | None
    batch: str
    idiom: str
    builder: str = ""    # suite_nets function (torch) or zoo name (real)
    kwargs: dict = field(default_factory=dict)
    transformer: bool = False   # NNCF's model_type=TRANSFORMER applies
    data: str = "imagenet"      # calibration data: imagenet | unit (0-1 crops) | nhwc | zoo | ppocr-rec


def _img(size: int) -> dict[str, tuple[int, ...]]:
    return {"input": (1, 3, size, size)}


SUITE: dict[str, SuiteEntry] = {e.name: e for e in [
    SuiteEntry("mobilenetv3-large", "torch", _img(224), "torchscript", 13, "dynamic",
               "HardSwish as HardSigmoid * x (no HardSwish op before opset 14), SE with HardSigmoid",
               "mobilenet_v3_large"),
    SuiteEntry("efficientnet-b0", "torch", _img(224), "dynamo", 18, "fixed",
               "SiLU as Sigmoid * x, SE, 5x5 depthwise", "efficientnet_b0"),
    SuiteEntry("resnet50", "torch", _img(224), "torchscript", 17, "dynamic",
               "Conv + BatchNormalization + Relu, residual Add, MaxPool, Gemm", "resnet50"),
    SuiteEntry("convnext-tiny", "torch", _img(224), "dynamo", 20, "fixed",
               "fused LayerNormalization and Gelu ops (opset 20), 7x7 depthwise, NHWC Transposes; "
               "depths (2, 2, 4, 2)", "convnext_tiny_style"),
    SuiteEntry("yolov8n", "torch", _img(320), "torchscript", 17, "fixed",
               "SiLU, C2f Split / Concat, SPPF MaxPool, nearest Resize, DFL Softmax + 1x1 conv, box decode",
               "yolov8n_style", {"size": 320}, data="unit"),
    SuiteEntry("deit-tiny", "torch", _img(224), "torchscript", 13, "dynamic",
               "LayerNorm decomposed (ReduceMean, Sub, Pow, Sqrt, Div), GELU decomposed (Erf), "
               "MatMul-Softmax-MatMul attention", "deit_tiny_style", transformer=True),
    SuiteEntry("deit-tiny-dynamo", "torch", _img(224), "dynamo", 18, "fixed",
               "fused LayerNormalization, GELU decomposed (Erf), MatMul-Softmax-MatMul attention",
               "deit_tiny_style", transformer=True),
    SuiteEntry("tf-style", "onnx", {"input_1:0": (1, 224, 224, 3)}, "onnx.helper", 13, "fixed",
               "tf2onnx-like: NHWC input + Transpose, explicit Pad before Conv(pads=0), Clip as ReLU6, "
               "BatchNorm as Mul + Add, ReduceMean + MatMul + Add + Softmax head", data="nhwc"),
    SuiteEntry("mobilenetv2", "real", _img(224), "torchscript", 17, "dynamic",
               "torchvision ImageNet weights (models/mobilenet_v2.py)", "mobilenetv2", data="zoo"),
    SuiteEntry("minilm", "real", {"input_ids": (1, 128), "attention_mask": (1, 128), "token_type_ids": (1, 128)},
               "torchscript", 17, "dynamic", "all-MiniLM-L6-v2, eager attention, additive mask (models/minilm.py)",
               "minilm", transformer=True, data="zoo"),
    SuiteEntry("ppocr-det", "real", {"x": (1, 3, 160, 160)}, "paddle2onnx", 12, "dynamic",
               "PP-OCRv4 detector, Constant-node weights, dynamic H / W", "ppocr-det", data="zoo"),
    SuiteEntry("ppocr-cls", "real", {"x": (1, 3, 48, 192)}, "paddle2onnx", 11, "dynamic",
               "PP-OCR mobile v2 direction classifier", "ppocr-cls", data="zoo"),
    SuiteEntry("ppocr-rec", "real", {"x": (1, 3, 48, 320)}, "paddle2onnx", 12, "dynamic",
               "PP-OCRv4 recogniser (SVTR-LCNet: HardSwish, attention, Softmax CTC head), 48x320",
               data="ppocr-rec"),
]}


def names() -> list[str]:
    """Names accepted by :func:`get` and :func:`export`."""
    return list(SUITE)


def _entry(name: str) -> SuiteEntry:
    if name not in SUITE:
        raise KeyError(f"unknown suite model {name!r}; available: {', '.join(SUITE)}")
    return SUITE[name]


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------

def build_torch(name: str, seed: int = 0, **overrides):
    """The random-weight torch module of a torch entry (``overrides`` replace builder kwargs)."""
    from . import suite_nets

    e = _entry(name)
    if e.kind != "torch":
        raise ValueError(f"{name!r} is not a torch suite model")
    return suite_nets.build(getattr(suite_nets, e.builder), seed=seed, **{**e.kwargs, **overrides})


def _torch_export(model, shape, path: Path, exporter: str, opset: int, dynamic_batch: bool) -> None:
    import torch

    x = torch.randn(*shape)
    kw = dict(input_names=["input"], output_names=["output"], opset_version=opset)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore")   # the legacy exporter's deprecation notice, dynamo's chatter
        if exporter == "dynamo":
            dyn = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
            # one file: external data would be named after the temporary file it is written to
            torch.onnx.export(model, (x,), str(path), dynamo=True, dynamic_shapes=dyn, verbose=False,
                              external_data=False, **kw)
        else:
            dyn = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
            torch.onnx.export(model, (x,), str(path), dynamo=False, dynamic_axes=dyn, **kw)


def export(name: str, path: str | Path, exporter: str | None = None, opset: int | None = None,
           input_shape: tuple[int, ...] | None = None, model=None, **build_kwargs) -> dict:
    """Export suite model ``name`` to ``path``; returns what was done (exporter requested / used,
    opset, fallback reason). ``exporter`` / ``opset`` default to the entry's idiom; ``model`` (a
    module already built), ``input_shape`` and ``build_kwargs`` (e.g. a smaller ``depths``) are for
    quick tests. A failing dynamo export falls back to TorchScript, recorded under ``fallback``."""
    e = _entry(name)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    exporter = exporter or e.exporter
    opset = opset or e.opset
    info = {"model": name, "exporter_requested": exporter, "exporter": exporter, "opset": opset}
    if e.kind == "onnx":
        import onnx

        onnx.save(tf_style_model(opset=opset), str(path))
        return info
    if e.kind != "torch":
        raise ValueError(f"{name!r} is a real model: use get({name!r}) for its file")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    model = model if model is not None else build_torch(name, **build_kwargs)
    shape = input_shape or e.inputs["input"]
    dynamic = e.batch == "dynamic"
    if exporter == "dynamo":
        try:
            _torch_export(model, shape, path, "dynamo", opset, dynamic)
            return info
        except Exception as exc:   # noqa: BLE001 - any exporter failure: fall back and say why
            info.update(exporter="torchscript", fallback=f"dynamo failed: {type(exc).__name__}: {str(exc)[:300]}")
    _torch_export(model, shape, path, "torchscript", opset, dynamic)
    return info


def _cached(name: str, cache_dir: Path | None) -> tuple[Path, dict]:
    """``cache/suite-<name>.onnx`` (+ its sidecar), exported first if missing; written to a temporary
    name and renamed, so a crashed or concurrent export never leaves a file later runs would trust."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path, meta = cache / f"suite-{name}.onnx", cache / f"suite-{name}.json"
    if path.is_file() and meta.is_file():
        return path, json.loads(meta.read_text())
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".suite-{name}.", suffix=".onnx", dir=cache)
    os.close(fd)
    try:
        info = export(name, tmp)
        os.chmod(tmp, 0o644)   # mkstemp makes 0600; the cache may be shared
        meta.write_text(json.dumps(info, indent=1))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path, info


# ------------------------------------------------------------------------------------------------
# data and entries
# ------------------------------------------------------------------------------------------------

def _images(e: SuiteEntry, n: int, seed: int) -> dict[str, np.ndarray]:
    (name, shape), = e.inputs.items()
    if e.data == "nhwc":   # TF MobileNet preprocessing: [-1, 1], channels last
        h, w = shape[1:3]
        return {name: datasets.random_photo_crops(n, h, w, seed) * 2.0 - 1.0}
    h, w = shape[2:]
    if e.data == "unit":   # the detector takes 0-1 RGB
        crops = datasets.random_photo_crops(n, h, w, seed)
        return {name: np.ascontiguousarray(crops.transpose(0, 3, 1, 2))}
    if e.data == "ppocr-rec":   # text-line crops, (x - 0.5) / 0.5 as rapidocr
        crops = datasets.random_photo_crops(n, h, w, seed, names=datasets.TEXT_PHOTO_NAMES, hflip=False,
                                            scale=(0.1, 0.25))
        return {name: np.ascontiguousarray(((crops - 0.5) / 0.5).transpose(0, 3, 1, 2), dtype=np.float32)}
    return {name: datasets.natural_image_crops(n, h, seed)}


def ppocr_rec_path() -> Path:
    """PP-OCRv4 rec ONNX file inside the installed ``rapidocr-onnxruntime`` (not imported)."""
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("PP-OCRv4 rec needs the package 'rapidocr-onnxruntime' (it ships the ONNX file)")
    path = Path(spec.origin).parent / "models" / PPOCR_REC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from rapidocr-onnxruntime")
    return path


def get(name: str, n_calib: int = 8, n_eval: int = 2, cache_dir: str | Path | None = None) -> ZooEntry:
    """Suite model ``name``: its FP32 ONNX file (exported once into the cache) and calibration /
    evaluation feeds (seeds 0 / 1) of the entry's input shapes."""
    e = _entry(name)
    cache = Path(cache_dir) if cache_dir is not None else None
    if e.kind == "real" and e.data == "zoo":
        from . import zoo

        z = zoo.get(e.builder, cache_dir=cache, n_calib=n_calib, n_eval=n_eval)
        return ZooEntry(name, z.onnx_path, z.calib, z.eval, None)
    path = ppocr_rec_path() if e.data == "ppocr-rec" else _cached(name, cache)[0]
    return ZooEntry(name, path, _images(e, n_calib, 0), _images(e, n_eval, 1), None)


def export_info(name: str, cache_dir: str | Path | None = None) -> dict:
    """How the entry's ONNX file was made: the sidecar of a cached export, else the entry's idiom."""
    e = _entry(name)
    if e.kind in ("torch", "onnx"):
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        meta = cache / f"suite-{name}.json"
        if meta.is_file():
            return json.loads(meta.read_text())
    return {"model": name, "exporter": e.exporter, "opset": e.opset}


# ------------------------------------------------------------------------------------------------
# TF-style graph (onnx.helper)
# ------------------------------------------------------------------------------------------------

def tf_style_model(size: int = 224, num_classes: int = 1000, seed: int = 0, opset: int = 13):
    """A MobileNetV1-like Keras net as tf2onnx exports it (random weights, fixed batch 1).

    NHWC input ``input_1:0`` -> Transpose to NCHW -> per conv: explicit ``Pad`` (TF "SAME": for
    stride 2 the extra pixel goes bottom / right), ``Conv`` with ``pads=0`` and a bias, BatchNorm left
    as ``Mul`` + ``Add`` by channel, ReLU6 as ``Clip(0, 6)``; one residual ``Add``; Transpose back to
    NHWC, ``ReduceMean`` over H, W, ``MatMul`` + ``Add`` + ``Softmax``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def const(name: str, arr) -> str:
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    const("clip_min", np.float32(0.0))
    const("clip_max", np.float32(6.0))

    def conv(x: str, h: int, cin: int, cout: int, k: int, stride: int, dw: bool, i: int) -> str:
        p = f"b{i}"
        if k > 1:   # TF SAME padding as an explicit Pad: total = (ceil(h / s) - 1) * s + k - h
            total = max((-(-h // stride) - 1) * stride + k - h, 0)
            lo = total // 2   # the odd pixel goes bottom / right
            pads = np.array([0, 0, lo, lo, 0, 0, total - lo, total - lo], np.int64)
            nodes.append(helper.make_node("Pad", [x, const(f"{p}_pads", pads)], [f"{p}_pad"], mode="constant"))
            x = f"{p}_pad"
        wshape = (cout, 1, k, k) if dw else (cout, cin, k, k)
        fan_in = k * k * (1 if dw else cin)
        w = (rng.standard_normal(wshape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        nodes.append(helper.make_node("Conv", [x, const(f"{p}_w", w), const(f"{p}_b", np.zeros(cout, np.float32))],
                                      [f"{p}_conv"], kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[0, 0, 0, 0], group=cout if dw else 1))
        scale = rng.uniform(0.5, 1.5, (1, cout, 1, 1)).astype(np.float32)
        shift = rng.uniform(-0.2, 0.2, (1, cout, 1, 1)).astype(np.float32)
        nodes.append(helper.make_node("Mul", [f"{p}_conv", const(f"{p}_bn_scale", scale)], [f"{p}_mul"]))
        nodes.append(helper.make_node("Add", [f"{p}_mul", const(f"{p}_bn_shift", shift)], [f"{p}_bn"]))
        nodes.append(helper.make_node("Clip", [f"{p}_bn", "clip_min", "clip_max"], [f"{p}_relu6"]))
        return f"{p}_relu6"

    # (cin, cout, kernel, stride, depthwise): stem, then depthwise-separable pairs
    layers = [(3, 32, 3, 2, False)]
    for cin, cout, s in [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)]:
        layers += [(cin, cin, 3, s, True), (cin, cout, 1, 1, False)]
    nodes.append(helper.make_node("Transpose", ["input_1:0"], ["nchw"], perm=[0, 3, 1, 2]))
    x, skip, h = "nchw", None, size
    for i, (cin, cout, k, s, dw) in enumerate(layers):
        x = conv(x, h, cin, cout, k, s, dw, i)
        h = -(-h // s)
        if i == 4:
            skip = x    # 128 channels, before the stride-1 128 -> 128 pair (layers 5, 6)
        if i == 6:
            nodes.append(helper.make_node("Add", [x, skip], ["residual"]))
            x = "residual"
    nodes.append(helper.make_node("Transpose", [x], ["nhwc_out"], perm=[0, 2, 3, 1]))
    nodes.append(helper.make_node("ReduceMean", ["nhwc_out"], ["pooled"], axes=[1, 2], keepdims=0))
    w = (rng.standard_normal((512, num_classes)) * 4 / np.sqrt(512)).astype(np.float32)
    nodes.append(helper.make_node("MatMul", ["pooled", const("fc_w", w)], ["fc"]))
    nodes.append(helper.make_node("Add", ["fc", const("fc_b", np.zeros(num_classes, np.float32))], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["Identity:0"], axis=-1))
    graph = helper.make_graph(
        nodes, "tf_style", [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, [1, size, size, 3])],
        [helper.make_tensor_value_info("Identity:0", TensorProto.FLOAT, [1, num_classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tf2onnx-style")
    model.ir_version = 7 if opset <= 13 else 8
    onnx.checker.check_model(model)
    return model
