"""One way to add a constant to a graph: a uniquely named, typed initializer."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray, dtype: ir.DataType | None = None) -> ir.Value:
    """Register `array` as an initializer named `name` (suffixed with '_' until unique) and return its
    value. `dtype` overrides the numpy dtype (int4 / float8 arrays carried in ml_dtypes)."""
    array = np.asarray(array)
    dtype = dtype or ir.DataType.from_numpy(array.dtype)
    while name in graph.initializers:
        name += "_"
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(dtype),
                     const_value=ir.tensor(array, dtype=dtype, name=name))
    graph.register_initializer(value)
    return value
