"""Quantization configuration: schemes, granularity, calibration method, user overrides."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from .errors import QccError
from .qtypes import QType

# scheme -> (activation type, activation symmetric, weight type)
SCHEMES: dict[str, tuple[QType, bool, QType]] = {
    "int8": (QType.UINT8, False, QType.INT8),          # U8 asymmetric activations, S8 symmetric weights
    "int8-sym": (QType.INT8, True, QType.INT8),        # S8 symmetric everywhere
    "uint8-sym": (QType.UINT8, True, QType.INT8),      # U8 with zero point 128 (symmetric range)
    "fp8-e4m3": (QType.FP8_E4M3, True, QType.FP8_E4M3),
    "fp8-e5m2": (QType.FP8_E5M2, True, QType.FP8_E5M2),
    "w4a8": (QType.UINT8, False, QType.INT4),
    # S16 symmetric activations (zero point 0), S8 symmetric weights, int32 bias: per layer through
    # overrides (TENSOR=w8a16) for the few layers int8 activations hurt; QDQ needs opset 21
    "w8a16": (QType.INT16, True, QType.INT8),
}
GRANULARITIES = ("per-channel", "per-tensor")
CALIBRATIONS = ("minmax", "percentile", "entropy", "mse")
@dataclass
class QuantConfig:
    scheme: str = "int8"
    granularity: str = "per-channel"
    calibration: str = "mse"
    percentile: float = 99.999
    power_of_two: bool = False
    bias_int32: bool = True
    exclude: list[str] = field(default_factory=list)   # node names, op types, or /regex/ on node names
    overrides: dict[str, str] = field(default_factory=dict)  # tensor name -> scheme name or "float"
    calib_batch_size: int | None = None                # None: chosen from the memory budget
    calib_memory_mb: int = 512                         # bound on activations held for one batch
    mask_threshold: float = 1e4                        # |values| beyond this mark an additive-mask sentinel
    passes: list[str] = field(default_factory=lambda: ["bias-correction"])   # names: passes/registry.py
    weight_budget: float = 0.6                         # mixed-precision: weight bytes / int8 weight bytes
    # quantize pointwise chains (SiLU, HardSwish, GELU, ...) at their input too, so they run as 256-entry
    # tables: faster, but the extra quantization of pre-activations costs PP-OCRv4 det 7.5 -> 1.8 dB
    pointwise_tables: bool = False

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise QccError(f"unknown scheme {self.scheme!r}; choose from {', '.join(SCHEMES)}")
        if self.granularity not in GRANULARITIES:
            raise QccError(f"unknown granularity {self.granularity!r}; choose from {', '.join(GRANULARITIES)}")
        if self.calibration not in CALIBRATIONS:
            raise QccError(f"unknown calibration {self.calibration!r}; choose from {', '.join(CALIBRATIONS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise QccError(f"percentile must be in (50, 100], got {self.percentile}")
        if not 0.0 < self.weight_budget <= 1.0:
            raise QccError(f"weight budget must be in (0, 1] (a fraction of the int8 weight bytes), got {self.weight_budget}")
        for tensor, scheme in self.overrides.items():
            if scheme != "float" and scheme not in SCHEMES:
                raise QccError(f"override for {tensor!r}: unknown scheme {scheme!r}")
        for pattern in self.exclude:
            if pattern.startswith("/") and pattern.endswith("/") and len(pattern) > 1:
                try:
                    re.compile(pattern[1:-1])
                except re.error as exc:
                    raise QccError(f"bad --exclude regex {pattern}: {exc}") from None

    @property
    def activation_type(self) -> QType:
        return SCHEMES[self.scheme][0]

    @property
    def activation_symmetric(self) -> bool:
        return SCHEMES[self.scheme][1]

    @property
    def weight_type(self) -> QType:
        return SCHEMES[self.scheme][2]

    @property
    def per_channel(self) -> bool:
        return self.granularity == "per-channel"

    def excludes(self, node_name: str, op_type: str) -> bool:
        for pattern in self.exclude:
            if pattern.startswith("/") and pattern.endswith("/") and len(pattern) > 1:
                if re.search(pattern[1:-1], node_name or ""):
                    return True
            elif pattern in (node_name, op_type):
                return True
        return False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
