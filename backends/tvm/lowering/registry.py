"""The rule registry of the integer lowering: one decorator, one table, one lookup.

A rule says how one kind of Relax op (as TVM's ONNX frontend imports it) runs on integers. It is a
class with

    docstring   the math: why the integer computation equals the float one
    pattern     the Relax op names it matches ("relax.nn.conv2d", "call_tir:maximum", ...)
    role        where it plugs into the plan (below): VIEW, CLAMP, AFFINE or SITE
    onnx        the ONNX op types TVM's frontend imports as `pattern` (for the operator table)
    lowers_to   what it becomes in integer Relax              (operator table)
    conditions  when it applies; otherwise the op stays float  (operator table)
    check(low, call, var) -> None | str
                None when the rule applies to `call` (bound to `var`), else a short human reason:
                it becomes the float fallback's reason in the build info
    rewrite(low, call, var, ...)
                the integer plan; its arguments and result depend on the role

and is registered with ``@rule`` in its rule module (rules/*.py): adding an operator touches only
that module and its tests. docs/operator_coverage.md is generated from this registry (coverage.py).

Roles (``low`` is the analysis.Lowering of the module being lowered):

    VIEW    op(DQ(x)) == DQ(op'(x)) exactly: data movement and max. rewrite(low, call, var, inner)
            -> ir.View, with `inner` the view of call.args[0].
    CLAMP   an activation folded into the requantization clamp of the quantize site it feeds.
            rewrite(low, call, var, site) narrows site.lo / site.hi and returns the op's input.
    AFFINE  the op's result is an integer affine sum (ir.Affine). rewrite(low, call, var, rank)
            -> ir.Affine; `float_sink = True`: a layer of this op whose output is consumed in float
            still accumulates in integers (float(acc + k) * m).
    SITE    planned at the quantize site itself. rewrite(low, call, var, site, absorbed) -> ir.Plan.
            A site rule may list in `also` ops that other rules own: it is tried at a quantize site
            whose op's own rule fails (the pointwise table behind an Add or Mul that is not affine).

``rewrite`` may still raise NoMatch for what only the computation finds out (a constant that does
not broadcast, a multiplier out of range).
"""

from __future__ import annotations

import abc

VIEW, CLAMP, AFFINE, SITE = "view", "clamp", "affine", "site"
ROLES = (VIEW, CLAMP, AFFINE, SITE)
# the "(kind)" the operator table shows for each role
ROLE_KIND = {VIEW: "view", CLAMP: "activation", AFFINE: "arithmetic", SITE: "arithmetic"}


class NoMatch(Exception):
    """A rule does not apply; the message says why (it ends up in the float-fallback report).
    `unquantized`: the reason is that an operand is not a quantized tensor (see Unquantized)."""

    def __init__(self, reason: str):
        super().__init__(str(reason))
        self.unquantized = isinstance(reason, Unquantized)


class Unquantized(str):
    """A check's reason meaning "an operand is not read through dequantize": a float layer in a
    partly quantized model. A layer consumed in float reports it as "operands are not quantized"."""


def unquantized(what: str) -> Unquantized:
    """The reason for an activation input that is not read through dequantize."""
    return Unquantized(f"{what}: input is not a quantized tensor")


class Rule(abc.ABC):
    """Base of all rules (see the module docstring). Subclass a role's base, not this; a rule class
    without check or rewrite cannot be instantiated."""

    role: str = ""
    pattern: tuple[str, ...] = ()
    onnx: tuple[str, ...] = ()
    lowers_to: str = ""
    conditions: str = ""
    float_sink: bool = False
    also: tuple[str, ...] = ()      # SITE rules: ops owned by other rules, tried when those fail

    @property
    def name(self) -> str:
        return type(self).__name__

    @abc.abstractmethod
    def check(self, low, call, var) -> str | None:
        """None when the rule applies to `call`, else why not (the float fallback's reason)."""

    @abc.abstractmethod
    def rewrite(self, low, call, var, *args):
        """The integer Relax for `call` (check has passed)."""

    def apply(self, low, call, var, *args):
        """check, then rewrite; a failed check raises NoMatch(its reason)."""
        why = self.check(low, call, var)
        if why is not None:
            raise NoMatch(why)
        return self.rewrite(low, call, var, *args)

    def __repr__(self) -> str:
        return f"<rule {self.name} ({self.role}): {', '.join(self.pattern)}>"


class ViewRule(Rule):
    role = VIEW


class ClampRule(Rule):
    role = CLAMP


class AffineRule(Rule):
    role = AFFINE


class SiteRule(Rule):
    role = SITE


_RULES: list[Rule] = []
_BY_OP: dict[str, Rule] = {}
_FALLBACK: dict[str, list[Rule]] = {}


def rule(cls: type) -> type:
    """Class decorator: validate and register a rule (one instance; rules hold no state)."""
    if not (isinstance(cls, type) and issubclass(cls, Rule)) or cls.role not in ROLES:
        raise TypeError(f"{cls!r}: a rule subclasses ViewRule, ClampRule, AffineRule or SiteRule")
    missing = [a for a in ("pattern", "onnx", "lowers_to", "conditions") if not getattr(cls, a)]
    if not (cls.__dict__.get("__doc__") or "").strip():
        missing.append("docstring")
    if cls.check is Rule.check or cls.rewrite is Rule.rewrite:
        missing.append("check / rewrite")
    if cls.also and cls.role != SITE:
        missing.append("SITE role (only site rules take `also`)")
    if missing:
        raise TypeError(f"rule {cls.__name__} lacks {', '.join(missing)}")
    taken = [op for op in cls.pattern if op in _BY_OP]
    if taken:
        raise ValueError(f"rule {cls.__name__}: {taken} already matched by {_BY_OP[taken[0]].name}")
    inst = cls()
    _RULES.append(inst)
    for op in cls.pattern:
        _BY_OP[op] = inst
    for op in cls.also:
        _FALLBACK.setdefault(op, []).append(inst)
    return cls


def rule_for(op: str | None, role: str | None = None) -> Rule | None:
    """The rule matching a Relax op name (of that role, if given), else None."""
    r = _BY_OP.get(op) if op is not None else None
    return r if r is not None and (role is None or r.role == role) else None


def fallbacks(op: str | None) -> list[Rule]:
    """The site rules tried at a quantize site whose op (`also`) failed its own rule, or has none."""
    return list(_FALLBACK.get(op, ())) if op is not None else []


def rules(role: str | None = None) -> list[Rule]:
    """The registered rules in registration order (of one role, if given)."""
    return [r for r in _RULES if role is None or r.role == role]


def ops(role: str | None = None, float_sink: bool | None = None) -> frozenset[str]:
    """The Relax op names the rules of a role (and float-sink capability) match."""
    return frozenset(op for r in rules(role) if float_sink is None or r.float_sink == float_sink
                     for op in r.pattern)
