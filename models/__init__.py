"""qcc model zoo: FP32 ONNX models with offline calibration and evaluation data.

``qcc.models.get("fashion-cnn")`` (bundled, trained Fashion-MNIST CNN), ``"mobilenetv2"``,
``"minilm"`` / ``"minilm-2layer"``, ``"ppocr-cls"`` and ``"ppocr-det"``; see
:func:`qcc.models.zoo.get`.  Importing this package needs only numpy: torch and transformers
are imported inside the functions that export models.
"""

from .fashion_cnn import bundled_calib_path, bundled_model_path
from .zoo import ZooEntry, get, names

__all__ = ["ZooEntry", "bundled_calib_path", "bundled_model_path", "get", "names"]
