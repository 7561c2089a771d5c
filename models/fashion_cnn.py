"""Small Fashion-MNIST CNN, the zoo's bundled model (trained weights, ONNX and calibration set).

The network is deliberately "compiler-shaped": Conv + BatchNorm + ReLU chains (BN folding),
a residual Add (requantization of a join), MaxPool, GlobalAveragePool and a final Gemm.

Retrain and rewrite the bundled files with::

    python -m qcc.models.fashion_cnn --train [--epochs N] [--seed S]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"
N_CALIB = 256


def bundled_model_path() -> Path:
    """The committed FP32 ONNX model (BatchNorm nodes kept, dynamic batch)."""
    return DATA_DIR / "fashion_cnn.onnx"


def bundled_calib_path() -> Path:
    """The committed calibration set: npz with key ``"input"``, 256 train images [256,1,28,28]."""
    return DATA_DIR / "fashion_calib.npz"


def bundled_weights_path() -> Path:
    """The committed PyTorch state_dict of :class:`FashionCNN`."""
    return DATA_DIR / "fashion_cnn.pt"


def _build_module_class():
    # torch is imported lazily so ``import qcc.models`` works without it.
    import torch
    from torch import nn

    def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    class FashionCNN(nn.Module):
        """1x28x28 -> 10 logits, ~42k parameters."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(conv_bn_relu(1, 16), conv_bn_relu(16, 32), nn.MaxPool2d(2))
            # Residual block at 14x14: conv-bn-relu, conv-bn, Add(skip), relu.
            self.res1 = conv_bn_relu(32, 32)
            self.res2 = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(32))
            self.res_relu = nn.ReLU(inplace=True)
            self.pool = nn.MaxPool2d(2)
            self.head = conv_bn_relu(32, 64)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            x = self.res_relu(x + self.res2(self.res1(x)))
            x = self.head(self.pool(x))
            return self.fc(torch.flatten(self.gap(x), 1))

    return FashionCNN


_FashionCNN = None


def _model_class():
    """The :class:`FashionCNN` class, built on first use (needs torch)."""
    global _FashionCNN
    if _FashionCNN is None:
        _FashionCNN = _build_module_class()
    return _FashionCNN


def __getattr__(name: str):
    # Module-level getattr so ``from qcc.models.fashion_cnn import FashionCNN`` works lazily.
    if name == "FashionCNN":
        return _model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_fashion_cnn():
    """The bundled trained :class:`FashionCNN` in eval mode."""
    import torch

    model = _model_class()()
    model.load_state_dict(torch.load(bundled_weights_path(), map_location="cpu", weights_only=True))
    return model.eval()


def train(epochs: int = 8, seed: int = 0, batch_size: int = 128, lr: float = 3e-3,
          verbose: bool = True):
    """Train a fresh :class:`FashionCNN` on the 60k train split with Adam on CPU (2 threads).

    Uses a one-cycle LR schedule and random horizontal flips (clothes are left/right
    symmetric), which gets ~92% test accuracy in well under ten minutes on two cores.
    Returns the model in eval mode.
    """
    import torch
    from torch import nn

    from .datasets import load_fashion_mnist

    torch.set_num_threads(2)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_train, y_train = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)

    model = _model_class()()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(xt) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        t0 = time.time()
        perm = torch.from_numpy(rng.permutation(len(xt)))
        total = 0.0
        for i in range(len(xt) // batch_size):  # drop the ragged last batch (BN stats)
            idx = perm[i * batch_size:(i + 1) * batch_size]
            xb, yb = xt[idx], yt[idx]
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        if verbose:
            acc = evaluate_torch(model, x_test, y_test)
            print(f"epoch {epoch + 1}/{epochs}: loss {total / (i + 1):.4f} "
                  f"test acc {acc:.4f} ({time.time() - t0:.0f}s)", flush=True)
    return model.eval()


def evaluate_torch(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> float:
    """Top-1 accuracy of a torch model on numpy data."""
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            logits = model(torch.from_numpy(images[i:i + batch_size]))
            correct += int((logits.argmax(1).numpy() == labels[i:i + batch_size]).sum())
    return correct / len(images)


def evaluate_onnx(path: str | Path, images: np.ndarray, labels: np.ndarray,
                  batch_size: int = 1000) -> float:
    """Top-1 accuracy of an ONNX classifier (input "input", output "logits") via onnxruntime."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    correct = 0
    for i in range(0, len(images), batch_size):
        (logits,) = sess.run(["logits"], {"input": images[i:i + batch_size]})
        correct += int((logits.argmax(1) == labels[i:i + batch_size]).sum())
    return correct / len(images)


def export_onnx(model, path: str | Path) -> Path:
    """Export with the legacy (TorchScript) exporter, keeping BatchNormalization nodes.

    ``do_constant_folding=False`` plus ``TrainingMode.EVAL`` leaves Conv and BN separate, so
    the compiler's own BN folding pass has something to do.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    with warnings.catch_warnings():
        # The legacy exporter is chosen on purpose (it keeps BN); silence its deprecation notice.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            model, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False, opset_version=17,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=False, training=torch.onnx.TrainingMode.EVAL,
        )
    return path


def write_bundle(model, seed: int = 0) -> dict[str, Path]:
    """Write state_dict, ONNX and a 256-image train-split calibration set into ``models/data``."""
    import torch

    from .datasets import load_fashion_mnist

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), bundled_weights_path())
    export_onnx(model, bundled_model_path())
    x_train, _ = load_fashion_mnist("train")
    # Calibration comes from TRAIN so it never overlaps the test set used for evaluation.
    idx = np.sort(np.random.default_rng(seed + 1).choice(len(x_train), N_CALIB, replace=False))
    np.savez_compressed(bundled_calib_path(), input=x_train[idx].astype(np.float32))
    return {"weights": bundled_weights_path(), "onnx": bundled_model_path(),
            "calib": bundled_calib_path()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="train and rewrite the bundled files")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from .datasets import load_fashion_mnist

    if args.train:
        model = train(args.epochs, args.seed)
        paths = write_bundle(model, args.seed)
        for kind, p in paths.items():
            print(f"wrote {kind}: {p} ({p.stat().st_size / 1024:.1f} KiB)")
        n_params = sum(p.numel() for p in model.parameters())
        print(f"parameters: {n_params}")
    x_test, y_test = load_fashion_mnist("test")
    acc = evaluate_onnx(bundled_model_path(), x_test, y_test)
    print(f"ONNX FP32 test accuracy (onnxruntime, 10k): {acc:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
