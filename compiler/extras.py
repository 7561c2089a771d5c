"""Optional packages: imported lazily, and a missing one is a one-line user error naming the install.

The core install (`pip install qcc`) compiles, runs, benches, inspects and tunes; a few features need an
extra, and only the user who chose one of them meets this error (exit code 2, before any work is done).
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import QccError

# import name -> (what to install, the exact command)
EXTRAS = {
    "torch": ("torch", "pip install torch==2.13.0 && pip install 'qcc[torch]'   "
                       "(torch==2.13.0 first: the CPU build; a looser pin pulls GBs of CUDA wheels)"),
    "transformers": ("transformers", "pip install torch==2.13.0 && pip install 'qcc[torch]'"),
    "ray": ("ray", "pip install 'qcc[ray]'"),
    "skimage": ("scikit-image", "pip install scikit-image"),
}


def available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):   # a finder that refuses it, or a module set to None
        return False


def require(module: str, feature: str) -> ModuleType:
    """Import `module` for `feature`, or raise a QccError that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        if top not in EXTRAS:
            raise
        package, command = EXTRAS[top]
        raise QccError(f"{feature} needs {package}, which is not installed: {command}") from None


def check(module: str, feature: str) -> None:
    """Fail early (before calibrating) when `feature` will need a missing optional package."""
    if not available(module):
        require(module, feature)
