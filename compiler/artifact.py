"""The artifact folder: model.qdq.onnx, manifest.json, report.json - written all-or-nothing.

Everything is written into a hidden sibling folder first and moved into place with one rename, so an
interrupted or failed compile never leaves a half-written artifact, and an existing folder is only
replaced (with --force) once the new one is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnx_ir as ir

from .errors import QccError
from .threads import default_threads

MANIFEST = "manifest.json"
QDQ_MODEL = "model.qdq.onnx"
REPORT = "report.json"
REPORT_HTML = "report.html"
FORMAT_VERSION = 1


def check_output_dir(out: Path, force: bool) -> None:
    if out.exists() and not force:
        what = "folder" if out.is_dir() else "file"
        raise QccError(f"output {what} {out} already exists (use --force to replace it)")
    if out.exists() and not out.is_dir():
        raise QccError(f"output path {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        # --force replaces artifacts, never a folder of someone's other work
        raise QccError(f"output folder {out} exists and is not a qcc artifact (no {MANIFEST}); refusing to replace it")


def write_artifact(out: Path, force: bool, writer: Callable[[Path], None]) -> Path:
    """Call `writer(tmp_folder)` and move the result to `out` atomically."""
    out = Path(out)
    check_output_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the artifact follows the umask like mkdir
    try:
        writer(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def save_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model(model: ir.Model | onnx.ModelProto, path: Path) -> None:
    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    onnx.save(proto, str(path))


class Artifact:
    """A compiled artifact folder. `run(feeds)` executes it with the backend its target names."""

    def __init__(self, folder: str | os.PathLike, threads: int | None = None):
        """threads: CPU threads the compiled code runs on (default: the CPUs this process may use)."""
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise QccError(f"threads must be a positive integer, got {threads!r}")
        self.threads = threads
        self.folder = Path(folder)
        manifest_path = self.folder / MANIFEST
        if not manifest_path.is_file():
            raise QccError(f"{self.folder} is not a qcc artifact (no {MANIFEST})")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise QccError(f"{manifest_path} is corrupt: {exc}") from None
        report_path = self.folder / REPORT
        self.report = json.loads(report_path.read_text()) if report_path.is_file() else {}
        self._session = None

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.manifest["inputs"]]

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.manifest["outputs"]]

    def _runner(self):
        if self._session is None:
            from . import targets   # the runner the manifest's target registers (compiler/targets.py)

            self._session = targets.open_runner(self.manifest.get("target", "onnx"), self.folder, self.threads)
        return self._session

    def record_bench(self, bench: dict) -> None:
        """Store `qcc bench` figures in report.json (replaced atomically) and redraw report.html."""
        self.report["bench"] = bench
        tmp = self.folder / f".{REPORT}.tmp"
        save_json(tmp, self.report)
        os.replace(tmp, self.folder / REPORT)
        from .report_html import write_compile_report

        write_compile_report(self.folder / REPORT_HTML, self.report, self.manifest)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        from .data import InputSpec, validate_feeds

        specs = [InputSpec(i["name"], i["dtype"], i["shape"]) for i in self.manifest["inputs"]]
        feeds = validate_feeds(specs, feeds, what="input")
        return self._runner().run(feeds)


class _OrtRunner:
    def __init__(self, session, output_names: list[str]):
        self.session, self.output_names = session, output_names

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, feeds)


def onnx_runner(folder: Path, threads: int | None = None) -> _OrtRunner:
    """The onnx target's runner (its registry record): onnxruntime on the artifact's QDQ graph."""
    from .backends import onnxruntime as ort_backend

    manifest = json.loads((Path(folder) / MANIFEST).read_text())
    session = ort_backend.make_session(Path(folder) / QDQ_MODEL, threads=threads or default_threads())
    return _OrtRunner(session, [o["name"] for o in manifest["outputs"]])


def load(folder: str | os.PathLike, threads: int | None = None) -> Artifact:
    return Artifact(folder, threads)
