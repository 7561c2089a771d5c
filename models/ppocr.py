"""PP-OCR ONNX models (text-direction classifier and PP-OCRv4 text detector) and their inputs.

The ONNX files ship inside the installed ``rapidocr-onnxruntime`` package.  We only locate its
folder with ``importlib.util.find_spec``; importing the package itself would pull in OpenCV.
These are third-party Paddle2ONNX exports (opset 11 / 12) with fully dynamic spatial dims, a
good test of how the compiler copes with graphs it did not produce.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .datasets import IMAGENET_MEAN, IMAGENET_STD, PHOTO_NAMES, TEXT_PHOTO_NAMES, random_photo_crops

PPOCR_FILES = {
    "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "det": "ch_PP-OCRv4_det_infer.onnx",
}
# Spatial sizes for the dynamic H / W dims: rapidocr's classifier shape (3x48x192) and a small
# detector input (the detector downsamples by 32, so H and W must be multiples of 32).
DEFAULT_HW = {"cls": (48, 192), "det": (160, 160)}


def ppocr_model_path(name: str) -> Path:
    """Path of the ``"cls"`` or ``"det"`` ONNX file inside ``rapidocr-onnxruntime``."""
    if name not in PPOCR_FILES:
        raise ValueError(f"unknown PP-OCR model {name!r}; choose from {sorted(PPOCR_FILES)}")
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "PP-OCR models need the package 'rapidocr-onnxruntime' "
            "(pip install rapidocr-onnxruntime); it ships the ONNX files"
        )
    path = Path(spec.origin).parent / "models" / PPOCR_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from rapidocr-onnxruntime")
    return path


def ppocr_input_spec(name: str) -> tuple[str, list[int | str]]:
    """``(input_name, shape)`` read from the ONNX file; dynamic dims are given as strings."""
    import onnx

    model = onnx.load(str(ppocr_model_path(name)), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    (inp,) = [i for i in model.graph.input if i.name not in inits]
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
            for d in inp.type.tensor_type.shape.dim]
    return inp.name, dims


def _input_hw(name: str, size: tuple[int, int] | None) -> tuple[int, int]:
    """H, W to feed: static dims from the model win; dynamic ones take ``size`` or the default."""
    _, dims = ppocr_input_spec(name)
    if len(dims) != 4 or dims[1] != 3:
        raise ValueError(f"PP-OCR {name}: expected an NCHW 3-channel input, got {dims}")
    want = size or DEFAULT_HW[name]
    hw = tuple(d if isinstance(d, int) else w for d, w in zip(dims[2:], want))
    if name == "det" and any(v % 32 for v in hw):
        raise ValueError(f"PP-OCR det needs H and W that are multiples of 32, got {hw}")
    return hw  # type: ignore[return-value]


def ppocr_inputs(name: str, n: int, seed: int = 0,
                 size: tuple[int, int] | None = None) -> np.ndarray:
    """Realistic float32 NCHW inputs for a PP-OCR model, preprocessed as rapidocr does.

    * ``cls``: ``[n, 3, 48, 192]`` text-line-shaped crops (1-2 lines of text) of the skimage
      text images (a scanned book page and handwritten formulas), half of them rotated 180
      degrees, since upright vs. upside-down is what the classifier decides; normalized
      ``(x - 0.5) / 0.5``.
    * ``det``: ``[n, 3, 160, 160]``, half crops of the text images (so the probability map has
      text to find) and half natural photos (mostly background), normalized with the ImageNet
      mean / std on a 0-1 scale.
    """
    h, w = _input_hw(name, size)
    # An rng stream separate from the crops' own (which uses ``seed`` directly).
    rng = np.random.default_rng([seed, 1])
    if name == "cls":
        crops = random_photo_crops(n, h, w, seed, names=TEXT_PHOTO_NAMES, hflip=False,
                                   scale=(0.1, 0.25))
        flip = rng.random(n) < 0.5
        crops[flip] = crops[flip][:, ::-1, ::-1]  # 180-degree rotation = upside-down text
        x = (crops - 0.5) / 0.5
    else:
        n_text = n // 2
        crops = np.concatenate([
            random_photo_crops(n_text, h, w, seed, names=TEXT_PHOTO_NAMES, hflip=False),
            random_photo_crops(n - n_text, h, w, seed, names=PHOTO_NAMES),
        ])
        crops = crops[rng.permutation(n)]  # mix, so any prefix has both kinds
        x = (crops - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
