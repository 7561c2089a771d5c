"""Quantized element types and their numeric ranges."""

from __future__ import annotations

import enum

import ml_dtypes
import numpy as np
import onnx_ir as ir


class QType(enum.Enum):
    INT8 = "int8"
    UINT8 = "uint8"
    INT16 = "int16"
    INT4 = "int4"
    INT32 = "int32"
    FP8_E4M3 = "fp8-e4m3"
    FP8_E5M2 = "fp8-e5m2"

    @property
    def is_float(self) -> bool:
        return self in (QType.FP8_E4M3, QType.FP8_E5M2)

    @property
    def bits(self) -> int:
        return {QType.INT4: 4, QType.INT16: 16, QType.INT32: 32}.get(self, 8)

    @property
    def qmin(self) -> float:
        return _RANGES[self][0]

    @property
    def qmax(self) -> float:
        return _RANGES[self][1]

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(_NUMPY[self])

    @property
    def ir_dtype(self) -> ir.DataType:
        return _IR[self]

    @property
    def min_opset(self) -> int:
        """First ONNX opset whose QuantizeLinear/DequantizeLinear accept this type (with per-axis scales):
        int16 / int4 21, FP8 19, int8 / uint8 13."""
        return {QType.INT4: 21, QType.INT16: 21, QType.FP8_E4M3: 19, QType.FP8_E5M2: 19}.get(self, 13)


_RANGES = {
    QType.INT8: (-128, 127),
    QType.UINT8: (0, 255),
    QType.INT16: (-(2**15), 2**15 - 1),
    QType.INT4: (-8, 7),
    QType.INT32: (-(2**31), 2**31 - 1),
    QType.FP8_E4M3: (-448.0, 448.0),
    QType.FP8_E5M2: (-57344.0, 57344.0),
}
_NUMPY = {
    QType.INT8: np.int8,
    QType.UINT8: np.uint8,
    QType.INT16: np.int16,
    QType.INT4: ml_dtypes.int4,
    QType.INT32: np.int32,
    QType.FP8_E4M3: ml_dtypes.float8_e4m3fn,
    QType.FP8_E5M2: ml_dtypes.float8_e5m2,
}
_IR = {
    QType.INT8: ir.DataType.INT8,
    QType.UINT8: ir.DataType.UINT8,
    QType.INT16: ir.DataType.INT16,
    QType.INT4: ir.DataType.INT4,
    QType.INT32: ir.DataType.INT32,
    QType.FP8_E4M3: ir.DataType.FLOAT8E4M3FN,
    QType.FP8_E5M2: ir.DataType.FLOAT8E5M2,
}
