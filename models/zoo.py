"""Model zoo registry: FP32 ONNX models paired with calibration and evaluation inputs.

``get(name)`` returns a :class:`ZooEntry` whose ``calib`` and ``eval`` dicts are keyed by the
ONNX input names, ready for ``onnxruntime.InferenceSession.run(None, entry.eval)``.  The
calibration and evaluation sets never overlap (different seeds, splits or slices).

Models exported from PyTorch (MobileNetV2, MiniLM) are written once into a cache folder
(default ``~/.cache/qcc/zoo``, or ``$QCC_ZOO_CACHE``) as ``<name>.onnx``; delete the file to
re-export.  Everything is built from locally installed packages; nothing is downloaded.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import datasets
from .fashion_cnn import bundled_calib_path, bundled_model_path

MINILM_SEQ_LEN = 128
DEFAULT_CACHE_DIR = Path("~/.cache/qcc/zoo")


@dataclass
class ZooEntry:
    """One zoo model: its FP32 ONNX file and input sets keyed by ONNX input name.

    ``labels`` holds ground-truth classes aligned with ``eval`` when the data set has them
    (Fashion-MNIST); otherwise ``None`` and accuracy is judged against the FP32 outputs.
    """

    name: str
    onnx_path: Path
    calib: dict[str, np.ndarray]
    eval: dict[str, np.ndarray] | None
    labels: np.ndarray | None


def default_cache_dir() -> Path:
    """``$QCC_ZOO_CACHE`` if set, else ``~/.cache/qcc/zoo``."""
    return Path(os.environ.get("QCC_ZOO_CACHE", DEFAULT_CACHE_DIR)).expanduser()


def _cached_export(name: str, cache_dir: Path | None, export: Callable[[Path], object]) -> Path:
    """Return ``cache_dir/<name>.onnx``, exporting it first if it is not there yet."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = cache / f"{name}.onnx"
    if path.is_file():
        return path
    from qcc import extras

    extras.check("torch", f"the zoo model {name!r} (exported from PyTorch on first use)")
    if name.startswith("minilm"):
        extras.check("transformers", f"the zoo model {name!r}")
    cache.mkdir(parents=True, exist_ok=True)
    # Export to a temporary name and rename, so a crashed or concurrent export never leaves a
    # half-written file that later runs would trust.
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".onnx", dir=cache)
    os.close(fd)
    try:
        export(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache may be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# --------------------------------------------------------------------------------------------
# Builders: (cache_dir, n_calib, n_eval) -> ZooEntry
# --------------------------------------------------------------------------------------------

def _fashion_cnn(cache_dir: Path | None, n_calib: int, n_eval: int) -> ZooEntry:
    with np.load(bundled_calib_path()) as z:
        calib = z["input"][:n_calib]
    try:
        x_test, y_test = datasets.load_fashion_mnist("test")
    except FileNotFoundError:
        # The bundled model and calibration set still compile; without the Debian test set the
        # report measures fidelity on the calibration images instead of labelled accuracy.
        return ZooEntry("fashion-cnn", bundled_model_path(), {"input": calib}, None, None)
    return ZooEntry("fashion-cnn", bundled_model_path(), {"input": calib},
                    {"input": x_test[:n_eval]}, y_test[:n_eval])


def _mobilenetv2(cache_dir: Path | None, n_calib: int, n_eval: int) -> ZooEntry:
    from .mobilenet_v2 import export_mobilenet_v2

    path = _cached_export("mobilenetv2", cache_dir, export_mobilenet_v2)
    # Seeds 0 / 1 give different random crops for calibration and evaluation.
    return ZooEntry("mobilenetv2", path,
                    {"input": datasets.natural_image_crops(n_calib, 224, seed=0)},
                    {"input": datasets.natural_image_crops(n_eval, 224, seed=1)}, None)


def _minilm_builder(name: str, num_layers: int | None):
    def build(cache_dir: Path | None, n_calib: int, n_eval: int) -> ZooEntry:
        from .minilm import export_minilm, tokenize

        # "-seq": the export with a dynamic sequence axis (an older cached file fixed it at 128)
        path = _cached_export(
            f"{name}-seq", cache_dir, lambda p: export_minilm(p, MINILM_SEQ_LEN, num_layers=num_layers))
        # One shuffle sliced in two: calibration and evaluation sentences are disjoint.
        sents = datasets.sentences(n_calib + n_eval, seed=0)
        return ZooEntry(name, path, tokenize(sents[:n_calib], MINILM_SEQ_LEN),
                        tokenize(sents[n_calib:], MINILM_SEQ_LEN), None)

    return build


def _ppocr_builder(kind: str):
    def build(cache_dir: Path | None, n_calib: int, n_eval: int) -> ZooEntry:
        from .ppocr import ppocr_input_spec, ppocr_inputs, ppocr_model_path

        input_name, _ = ppocr_input_spec(kind)
        return ZooEntry(f"ppocr-{kind}", ppocr_model_path(kind),
                        {input_name: ppocr_inputs(kind, n_calib, seed=0)},
                        {input_name: ppocr_inputs(kind, n_eval, seed=1)}, None)

    return build


# name -> (builder, default n_calib, default n_eval)
_REGISTRY: dict[str, tuple[Callable[[Path | None, int, int], ZooEntry], int, int]] = {
    "fashion-cnn": (_fashion_cnn, 256, 10000),
    "mobilenetv2": (_mobilenetv2, 64, 512),
    "minilm": (_minilm_builder("minilm", None), 64, 256),
    "minilm-2layer": (_minilm_builder("minilm-2layer", 2), 64, 256),
    "ppocr-cls": (_ppocr_builder("cls"), 64, 256),
    "ppocr-det": (_ppocr_builder("det"), 32, 64),
}


def names() -> list[str]:
    """Names accepted by :func:`get`."""
    return list(_REGISTRY)


def get(name: str, cache_dir: str | Path | None = None, n_calib: int | None = None,
        n_eval: int | None = None) -> ZooEntry:
    """Build the zoo entry ``name`` (see :func:`names`).

    Args:
        cache_dir: where exported ONNX files are cached (default :func:`default_cache_dir`).
        n_calib: calibration-set size (defaults: fashion-cnn 256 (the bundled set, its
            maximum), mobilenetv2 64, minilm* 64, ppocr-cls 64, ppocr-det 32).
        n_eval: evaluation-set size (defaults: fashion-cnn 10000 (the full test set),
            mobilenetv2 512, minilm* 256, ppocr-cls 256, ppocr-det 64).
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown zoo model {name!r}; available: {', '.join(_REGISTRY)}")
    build, default_calib, default_eval = _REGISTRY[name]
    n_calib = default_calib if n_calib is None else n_calib
    n_eval = default_eval if n_eval is None else n_eval
    if n_calib < 1 or n_eval < 1:
        raise ValueError("n_calib and n_eval must be positive")
    if name == "fashion-cnn" and (n_calib > 256 or n_eval > 10000):
        raise ValueError("fashion-cnn has 256 bundled calibration and 10000 test images")
    return build(Path(cache_dir) if cache_dir is not None else None, n_calib, n_eval)
