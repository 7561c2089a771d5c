"""Choosing and validating the LLVM CPU target.

TVM 0.27 takes targets as JSON dicts. An ``mcpu`` LLVM does not know is *not* an error there: TVM
logs one line and compiles for a generic x86-64, so a typo silently costs all vector extensions.
``detect_target`` therefore checks every ``mcpu`` with LLVM itself and raises instead.
"""

from __future__ import annotations

import platform
from pathlib import Path

from qcc.errors import QccError

from . import compat

# LLVM feature -> /proc/cpuinfo flag: an mcpu must not promise a feature the host lacks
# (an illegal instruction at run time), so auto-detection steps down until none is missing.
_HOST_FLAG = {
    "avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512vl": "avx512vl",
    "avx512vnni": "avx512_vnni", "avx512vbmi2": "avx512_vbmi2", "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16", "amx-int8": "amx_int8", "avxvnni": "avx_vnni",
}


def host_cpu_flags(cpuinfo: str | None = None) -> tuple[str, set[str]]:
    """(vendor, flags) from /proc/cpuinfo (or the given text)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "", set()
    vendor, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return vendor, flags


def candidate_mcpus(vendor: str, flags: set[str]) -> list[str]:
    """Most capable first; ends with a baseline every x86-64 runs."""
    out = []
    if "avx512_vnni" in flags:
        if vendor == "AuthenticAMD":
            out.append("znver4")
        else:
            if "amx_int8" in flags and "avx512_fp16" in flags:
                out.append("sapphirerapids")
            if "avx512_vbmi2" in flags:
                out.append("icelake-server")
            out.append("cascadelake")
    if "avx512f" in flags and "avx512bw" in flags:
        out.append("skylake-avx512")
    if "avx2" in flags and "fma" in flags:
        out.append("haswell")
    out.append("x86-64")
    return out


def _missing_features(target: dict, flags: set[str]) -> list[str]:
    missing = []
    for feature, flag in _HOST_FLAG.items():
        if flag not in flags and compat.cpu_has_features(target, [feature]):
            missing.append(feature)
    return missing


def detect_target(kind: str = "llvm", mcpu: str | None = None, cpuinfo: str | None = None) -> dict:
    """A validated TVM target dict for this x86 CPU (or for the given ``mcpu``)."""
    if kind != "llvm":
        raise QccError(f"the TVM backend supports kind='llvm' (x86 CPUs) only, got {kind!r}")
    triple = compat.system_triple()
    if mcpu is not None:
        if not compat.is_valid_cpu(mcpu, triple):
            raise QccError(f"LLVM does not know mcpu={mcpu!r} for {triple}: TVM would silently compile for a "
                           "generic x86-64 CPU. Use an LLVM CPU name such as 'haswell', 'skylake-avx512', "
                           "'cascadelake', 'icelake-server', 'sapphirerapids', 'znver4'.")
        return {"kind": "llvm", "mcpu": mcpu}
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64") and cpuinfo is None:
        return {"kind": "llvm", "mcpu": "generic"}
    vendor, flags = host_cpu_flags(cpuinfo)
    for name in candidate_mcpus(vendor, flags):
        if not compat.is_valid_cpu(name, triple):
            continue
        target = {"kind": "llvm", "mcpu": name}
        if not _missing_features(target, flags):
            return target
    return {"kind": "llvm", "mcpu": "x86-64"}


def validate_target(target: dict) -> dict:
    """Check a target dict before building (raises QccError on an mcpu LLVM would ignore)."""
    if not isinstance(target, dict) or target.get("kind") != "llvm":
        raise QccError(f"expected a target dict like {{'kind': 'llvm', 'mcpu': 'haswell'}}, got {target!r}")
    mcpu = target.get("mcpu")
    if mcpu is not None and not compat.is_valid_cpu(mcpu, target.get("mtriple") or compat.system_triple()):
        raise QccError(f"LLVM does not know mcpu={mcpu!r}: TVM would silently compile for a generic CPU")
    return dict(target)


def configure(options) -> dict:
    """`qcc compile --target llvm|x86-64 [--mcpu]` -> the TVM target dict (the target registry's
    `configure`: qcc/targets.py)."""
    return detect_target(kind="llvm", mcpu=options.mcpu)
