"""The baseline every benchmark compares against: onnxruntime's own static quantizer
(`quantize_static`, QDQ format, uint8 activations / int8 weights), driven quietly."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path


def ort_quantize_static(model_path: Path, calib: dict, out: Path, method: str = "MinMax",
                        per_channel: bool = True) -> Path:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            n = len(next(iter(calib.values())))
            self.it = iter([{k: v[i:i + 1] for k, v in calib.items()} for i in range(n)])

        def get_next(self):
            return next(self.it, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" advice, once per model
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its progress prints would break the JSON lines
            quantize_static(str(model_path), str(out), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, method))
    finally:
        root.setLevel(level)
    return out
