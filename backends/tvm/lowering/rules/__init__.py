"""The rule modules of the integer lowering, grouped by kind; importing this package registers
every rule (registry.py). A new operator is one more @rule class in the module of its kind, or a
new module here (every module of this package is imported)."""

import importlib
import pkgutil

__all__ = sorted(m.name for m in pkgutil.iter_modules(__path__))
for _name in __all__:
    importlib.import_module(f"{__name__}.{_name}")
