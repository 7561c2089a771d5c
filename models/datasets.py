"""Offline data sources for the model zoo: Fashion-MNIST, natural-photo crops, English sentences.

Everything here reads files already on the machine (a Debian dataset package, the photos that
ship inside scikit-image, a committed text file); nothing is downloaded.  Only numpy (and
scikit-image for the photos) is needed, so the module is importable without torch.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

SENTENCES_PATH = Path(__file__).resolve().parent / "data" / "sentences.txt"

# skimage.data photos that ship with the wheel (no pooch download needed).  Grayscale ones are
# replicated to 3 channels.  ``cat`` is the same picture as ``chelsea`` so it is not listed twice.
PHOTO_NAMES = (
    "astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
    "retina", "stereo_motorcycle", "camera", "coins", "clock", "moon", "brick", "grass", "gravel",
)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------------

def _read_idx(path: Path) -> np.ndarray:
    """Parse a gzip'ed IDX file (the MNIST container format) into a uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    # Header: two zero bytes, a dtype code (0x08 = uint8), the number of dims, then big-endian
    # uint32 sizes.
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int(x) for x in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {shape} elements, file holds {arr.size}")
    return arr.reshape(shape)


def load_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load a Fashion-MNIST split from the Debian ``dataset-fashion-mnist`` package.

    Args:
        split: ``"train"`` (60k images) or ``"test"`` (10k images).

    Returns:
        ``(images, labels)``: float32 ``[N, 1, 28, 28]`` scaled to [0, 1] and then normalized
        with mean 0.2860 / std 0.3530, and int64 ``[N]`` labels in 0..9.
    """
    prefixes = {"train": "train", "test": "t10k"}
    if split not in prefixes:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    img_path = FASHION_MNIST_DIR / f"{prefixes[split]}-images-idx3-ubyte.gz"
    lbl_path = FASHION_MNIST_DIR / f"{prefixes[split]}-labels-idx1-ubyte.gz"
    missing = [str(p) for p in (img_path, lbl_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found: {', '.join(missing)}. "
            "Install the Debian package 'dataset-fashion-mnist' "
            "(apt-get install dataset-fashion-mnist)."
        )
    images = _read_idx(img_path).astype(np.float32) / 255.0
    images = (images - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    labels = _read_idx(lbl_path).astype(np.int64)
    return images[:, None, :, :].astype(np.float32), labels


# --------------------------------------------------------------------------------------------
# Natural-image crops (ImageNet-style calibration / eval data for vision models)
# --------------------------------------------------------------------------------------------

# Photos with printed text, for OCR models (a scanned page and a sign-like text sample).
TEXT_PHOTO_NAMES = ("page", "text")


@functools.lru_cache(maxsize=None)
def _load_photo(name: str) -> tuple[np.ndarray, ...]:
    """One skimage sample as float32 HxWx3 arrays in [0, 1]; () if it cannot load offline."""
    from qcc import extras

    skimage_data = extras.require("skimage.data", "natural-image calibration crops (skimage's sample photos)")

    try:
        img = getattr(skimage_data, name)()
    except Exception:  # noqa: BLE001 - an optional photo that needs pooch; skip it
        return ()
    # stereo_motorcycle returns (left, right, disparity): both views are photos.
    imgs = img[:2] if isinstance(img, tuple) else (img,)
    out = []
    for im in imgs:
        im = np.asarray(im)
        if im.ndim == 2:  # grayscale -> 3 identical channels
            im = np.repeat(im[:, :, None], 3, axis=2)
        out.append(im[:, :, :3].astype(np.float32) / 255.0)
    return tuple(out)


def _photos(names: tuple[str, ...] = PHOTO_NAMES) -> list[np.ndarray]:
    photos = [im for name in names for im in _load_photo(name)]
    if not photos:
        raise RuntimeError(f"none of the skimage.data samples {names} could be loaded")
    return photos


def random_photo_crops(n: int, height: int, width: int, seed: int = 0,
                       names: tuple[str, ...] = PHOTO_NAMES, hflip: bool = True,
                       scale: tuple[float, float] = (0.25, 1.0)) -> np.ndarray:
    """Random ``[n, height, width, 3]`` float32 crops in [0, 1] from skimage sample photos.

    Each crop takes a random photo out of ``names``, a side (geometric mean of crop height and
    width) of ``scale`` (default 0.25-1.0) times the photo's short side, an aspect ratio
    jittered around the target's (x0.75-1.33), a random position and (if ``hflip``; turn it
    off for text, which must not be mirrored) a random horizontal flip, then is resized with
    anti-aliasing.  Deterministic for a given seed.
    """
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    photos = _photos(tuple(names))
    out = np.empty((n, height, width, 3), dtype=np.float32)
    target_aspect = width / height
    for i in range(n):
        img = photos[rng.integers(len(photos))]
        h, w = img.shape[:2]
        side = rng.uniform(*scale) * min(h, w)
        aspect = target_aspect * np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = int(min(h, max(8, round(side / np.sqrt(aspect)))))
        cw = int(min(w, max(8, round(side * np.sqrt(aspect)))))
        y = int(rng.integers(0, h - ch + 1))
        x = int(rng.integers(0, w - cw + 1))
        crop = img[y:y + ch, x:x + cw]
        if rng.random() < 0.5 and hflip:
            crop = crop[:, ::-1]
        out[i] = resize(crop, (height, width), order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(out, 0.0, 1.0)


def photo_center_crop(name: str, size: int = 224) -> np.ndarray:
    """One named skimage photo (e.g. ``"chelsea"``, a tabby cat), center-cropped to its short
    side, resized and ImageNet-normalized: float32 ``[3, size, size]``.  For sanity checks
    whose expected label is known."""
    from skimage.transform import resize

    photos = _load_photo(name)
    if not photos:
        raise ValueError(f"skimage.data.{name} is not an image available offline")
    img = photos[0]
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    img = resize(img, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    img = (np.clip(img, 0.0, 1.0) - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)


def natural_image_crops(n: int, size: int = 224, seed: int = 0) -> np.ndarray:
    """ImageNet-normalized random crops of real photos: float32 ``[n, 3, size, size]``.

    Use different seeds for calibration and evaluation sets (the zoo uses 0 and 1) so a
    quantizer is never scored on the very tensors it was calibrated on.
    """
    crops = random_photo_crops(n, size, size, seed)
    crops = (crops - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# English sentences (text-model calibration / eval data)
# --------------------------------------------------------------------------------------------

def _all_sentences() -> list[str]:
    lines = SENTENCES_PATH.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def sentences(n: int | None = None, seed: int = 0) -> list[str]:
    """Real English sentences from ``models/data/sentences.txt``, deterministically shuffled.

    Args:
        n: how many to return (``None``: all of them).  Raises if more are asked for than exist.
        seed: shuffle seed.  Disjoint calibration / eval sets come from slicing one shuffle
            (see :func:`qcc.models.zoo.get`), not from two seeds, which would overlap.
    """
    allsents = _all_sentences()
    order = np.random.default_rng(seed).permutation(len(allsents))
    if n is None:
        n = len(allsents)
    if n > len(allsents):
        raise ValueError(f"asked for {n} sentences, corpus has {len(allsents)}")
    return [allsents[i] for i in order[:n]]
