"""Who produces and who reads each value of a Relax function: one index, built in one pass."""

from __future__ import annotations

from collections import Counter

from .. import compat
from ..compat import relax


def _read_vars(expr, out: list) -> None:
    if isinstance(expr, compat.Var):
        out.append(expr)
    elif isinstance(expr, compat.Call):
        for a in expr.args:
            _read_vars(a, out)
    elif isinstance(expr, relax.Tuple):
        for f in expr.fields:
            _read_vars(f, out)
    elif isinstance(expr, relax.TupleGetItem):
        _read_vars(expr.tuple_value, out)


def read_vars(expr) -> list:
    """The vars an expression reads (call arguments, tuple fields, tuple items), in order, with
    repeats."""
    out: list = []
    _read_vars(expr, out)
    return out


class UseIndex:
    """The dataflow of a function's bindings, built once:

    producer[v]   the value bound to v
    order         the bound vars in binding order
    uses[v]       how many times v is read (each occurrence; the function's result included)
    consumers(v)  the bound vars whose value reads v, once each, in binding order
    """

    def __init__(self, func):
        self.producer: dict = {}
        self.order: list = []
        self.uses: Counter = Counter()
        self._consumers: dict = {}
        for block in func.body.blocks:
            for b in block.bindings:
                self.producer[b.var] = b.value
                self.order.append(b.var)
                reads = read_vars(b.value)
                self.uses.update(reads)
                for v in dict.fromkeys(reads):
                    self._consumers.setdefault(v, []).append(b.var)
        self.uses.update(read_vars(func.body.body))

    def consumers(self, var) -> list:
        return self._consumers.get(var, [])
