"""Structure: the import graph of qcc's modules has no cycle (function-level imports count; imports
under `if TYPE_CHECKING:` do not, they never run), and no source module is over 600 lines."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 600


def module_files() -> dict[str, Path]:
    """qcc module name -> source file, from pyproject's package-dir mapping."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = cfg["package-dir"]
    out = {}
    for package in cfg["packages"]:
        top = max((p for p in dirs if package == p or package.startswith(p + ".")), key=len)
        folder = ROOT / dirs[top] / Path(*package[len(top):].strip(".").split(".")) if package != top \
            else ROOT / dirs[top]
        for f in sorted(folder.glob("*.py")):
            out[package if f.stem == "__init__" else f"{package}.{f.stem}"] = f
    return out


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, child.end_lineno + 1))
    return lines


def imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # `from pkg import mod` depends on pkg.mod; `from mod import name` on mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            # the longest qcc module the name refers to (a module, or a name inside one)
            while t and t not in modules:
                t = t.rpartition(".")[0]
            # a package's own __init__ always runs before its submodules: not an edge of the submodule
            if t and t != name and not name.startswith(t + "."):
                found.add(t)
    return found


def test_modules_found():
    modules = module_files()
    assert {"qcc.pipeline", "qcc.passes.registry", "qcc.backends.tvm", "qcc.autotune.space"} <= set(modules)


def test_every_source_package_is_installed():
    """A folder of modules missing from pyproject's `packages` is left out of `pip install .` (the editable
    install still finds it, so only a regular install would fail)."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = {module_files()[p].parent for p in cfg["packages"]}
    folders = {f.parent for d in cfg["package-dir"].values() for f in (ROOT / d).rglob("__init__.py")}
    assert folders <= listed, sorted(str(f.relative_to(ROOT)) for f in folders - listed)


def test_no_import_cycle():
    modules = module_files()
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        for dep in imports(name, path, modules):
            graph.add_edge(name, dep)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c + [c[0]]) for c in cycles[:10])


def test_no_module_over_600_lines():
    long = {name: n for name, path in module_files().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long


def test_tvm_is_imported_only_where_compat_says():
    """compat.py's docstring names the modules that import tvm themselves; every other module goes
    through compat (function-level imports count)."""
    allowed = {"qcc.backends.tvm.compat", "qcc.backends.tvm.coverage", "qcc.backends.tvm.cuda",
               "qcc.backends.tvm.onnx_converters", "qcc.backends.tvm.tune"}
    doc = (ROOT / "backends" / "tvm" / "compat.py").read_text(encoding="utf-8")
    for name in allowed - {"qcc.backends.tvm.compat"}:
        assert f"``{name.rsplit('.', 1)[1]}.py``" in doc, name
    importers = set()
    for name, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(m == "tvm" or m.startswith("tvm.") for m in mods):
                importers.add(name)
    stray = {m for m in importers if m not in allowed and not m.startswith("qcc.backends.tvm.schedules")}
    assert not stray, sorted(stray)
