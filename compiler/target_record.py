"""What one `qcc compile --target` is: the `Target` record (its fields below) and the scheme sets.

Each target declares its record in its own module under qcc/backends/targets/ (``TARGET = Target(...)``);
compiler/targets.py collects them. This module imports nothing heavy, so listing the targets
(`qcc --help`, `--target` choices) never imports TVM.
"""

from __future__ import annotations

import importlib
import shutil
from dataclasses import dataclass
from typing import Callable

from .errors import QccError

INT8_SCHEMES = frozenset({"int8", "int8-sym", "uint8-sym"})
FP8_SCHEMES = frozenset({"fp8-e4m3", "fp8-e5m2"})
W8A16_SCHEMES = frozenset({"w8a16"})     # int16 activations x int8 weights (the TVM lowering's int16 kernels)


@dataclass(frozen=True)
class Target:
    name: str
    help: str                                  # --target help: what the artifact holds
    aliases: tuple[str, ...] = ()              # other --target spellings (the manifest keeps the one given)
    schemes: frozenset | None = None           # schemes it lowers (None: every scheme)
    lowers: str = ""                           # refusal text: "target 'x' <lowers>; <schemes> needs <instead>"
    instead: str = ""
    output: str | None = None                  # what it builds ("a library (model.so)"); None: nothing to build
    options: frozenset = frozenset()           # which of --tune / --arch it takes (--mcpu / --mattr: configure)
    configure: str | None = None               # "module:function" (see the module docstring)
    build: str | None = None
    runner: str | None = None                  # None: nothing runs it
    layout: str = "library"                    # how the manifest lists its files: "library" or "tree"
    build_tools: tuple[str, ...] = ()          # programs its build needs on PATH
    tools: tuple[str, ...] = ()                # programs its compile-time check needs (missing: built, not checked)
    verify: str = ""                           # how a build is checked at compile time
    samples: int = 0                           # samples it is checked on against onnxruntime
    rank: int = 100                            # place in --target choices and help (lower first)

    @property
    def spellings(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def function(self, which: str) -> Callable:
        """The configure / build / runner function this record names, imported now."""
        ref = getattr(self, which)
        if ref is None:
            raise QccError(f"internal error: target {self.name!r} has no {which} function")
        module, _, attr = ref.partition(":")
        return getattr(importlib.import_module(module), attr)

    def missing(self, tools: tuple[str, ...] | None = None) -> list[str]:
        """The programs of `tools` (default: the check's) not on PATH."""
        return [t for t in (self.tools if tools is None else tools) if shutil.which(t) is None]

    def configure_target(self, options: "Options") -> dict | None:
        return self.function("configure")(options) if self.configure else None
