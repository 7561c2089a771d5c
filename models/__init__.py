"""qcc model zoo: FP32 ONNX models with offline calibration and evaluation data.

``qcc.models.get("fashion-cnn")`` (bundled, trained Fashion-MNIST CNN), ``"mobilenetv2"``,
``"minilm"`` / ``"minilm-2layer"``, ``"ppocr-cls"`` and ``"ppocr-det"``; see
:func:`qcc.models.zoo.get`.  The model suite for speed and coverage (MobileNetV3, EfficientNet,
ResNet-50, ConvNeXt, YOLOv8n, DeiT, a TF-style graph, the real models above and PP-OCRv4 rec) is
:mod:`qcc.models.suite` (docs/suite.md).  Importing this package needs only numpy: torch and transformers
are imported inside the functions that export models.
"""

from __future__ import annotations

import importlib

# name -> submodule that defines it.  Resolved on first access (PEP 562) so that importing the
# package stays cheap and ``python -m qcc.models.fashion_cnn`` does not find its own module
# already imported by the package.
_EXPORTS = {
    "ZooEntry": "zoo",
    "get": "zoo",
    "names": "zoo",
    "bundled_model_path": "fashion_cnn",
    "bundled_calib_path": "fashion_cnn",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # cache: later lookups skip __getattr__
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
