"""The rule modules of the integer lowering, grouped by kind; importing this package registers
every rule (registry.py). A new operator is one more @rule class in the module of its kind."""

from . import activation, conv, elementwise, matmul, pooling, views  # noqa: F401

__all__ = ["activation", "conv", "elementwise", "matmul", "pooling", "views"]
