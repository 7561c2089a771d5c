"""Torch definitions of the architectures users deploy, for the offline model suite (models/suite.py).

Written here (torchvision does not work in this environment) after torchvision's / the papers'
layouts, compact rather than name-compatible: the weights are random (see :func:`build`), so
only speed and exactness against onnxruntime are measured on them, never accuracy.

- MobileNetV3-Large: HardSwish, squeeze-excite with HardSigmoid, 3x3 / 5x5 depthwise.
- EfficientNet-B0: SiLU, squeeze-excite with Sigmoid, 5x5 depthwise.
- ResNet-50: bottleneck blocks [3, 4, 6, 3] (v1.5: stride on the 3x3).
- ConvNeXt-tiny-style: 7x7 depthwise, LayerNorm (channels-last and channels-first), GELU, layer
  scale; ConvNeXt-tiny's widths with depths reduced from (3, 3, 9, 3) to (2, 2, 4, 2) to keep
  export and compile times sane.
- YOLOv8n-style detector: width 0.25 / depth 0.33 as YOLOv8n, SiLU, C2f (Split / Concat), SPPF,
  nearest Resize, the DFL head (Softmax over 16 bins, a 1x1 conv with arange weights) and the
  box decode with anchors fixed for one input size (as Ultralytics' export, batch 1).
- DeiT-tiny-style ViT: patch 16, dim 192, 12 blocks, 3 heads, explicit MatMul-Softmax-MatMul
  attention (no fused SDPA), so exporters show the pattern a quantizer must handle.

Only torch is needed, imported when a builder is called.
"""

from __future__ import annotations

import math


def _nn():
    import torch
    from torch import nn

    return torch, nn


def _div8(v: float) -> int:
    # torchvision's channel rounding (never drops by more than 10%)
    new_v = max(8, int(v + 4) // 8 * 8)
    return new_v + 8 if new_v < 0.9 * v else new_v


def conv_bn(cin: int, cout: int, k: int = 1, s: int = 1, groups: int = 1, act=None):
    """Conv (no bias) + BatchNorm + optional activation module class."""
    _, nn = _nn()
    layers = [nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def build(builder, seed: int = 0, **kwargs):
    """``builder(**kwargs)`` with deterministic, non-trivial parameters: torch's default init under
    ``torch.manual_seed(seed)``, then BatchNorm running statistics and affine terms, LayerNorm affine
    terms and layer scales drawn away from identity (so BN folding and per-channel scales matter).
    Returns the model in eval mode."""
    torch, nn = _nn()
    torch.manual_seed(seed)
    model = builder(**kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
        for name, p in model.named_parameters():
            if name.endswith("gamma"):   # ConvNeXt layer scale: 1e-6 at init would mute every block
                p.copy_(torch.rand(p.shape, generator=g) * 0.4 + 0.1)
    return model.eval()


# ------------------------------------------------------------------------------------------------
# MobileNetV3-Large, EfficientNet-B0
# ------------------------------------------------------------------------------------------------

def _squeeze_excite(c: int, squeeze: int, act, gate):
    torch, nn = _nn()

    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.act = nn.Conv2d(c, squeeze, 1), act()
            self.fc2, self.gate = nn.Conv2d(squeeze, c, 1), gate()

        def forward(self, x):
            s = torch.nn.functional.adaptive_avg_pool2d(x, 1)
            return x * self.gate(self.fc2(self.act(self.fc1(s))))

    return SE()


def _inverted_residual(cin: int, cexp: int, cout: int, k: int, s: int, act, se):
    """MobileNetV3 / EfficientNet block: 1x1 expand, kxk depthwise, SE (a module or None), 1x1 project."""
    _, nn = _nn()

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            layers = [conv_bn(cin, cexp, act=act)] if cexp != cin else []
            layers.append(conv_bn(cexp, cexp, k, s, groups=cexp, act=act))
            if se is not None:
                layers.append(se)
            layers.append(conv_bn(cexp, cout))
            self.block = nn.Sequential(*layers)
            self.residual = s == 1 and cin == cout

        def forward(self, x):
            y = self.block(x)
            return x + y if self.residual else y

    return Block()


def mobilenet_v3_large(num_classes: int = 1000):
    """MobileNetV3-Large (torchvision's configuration, width 1.0)."""
    _, nn = _nn()
    RE, HS = nn.ReLU, nn.Hardswish
    # kernel, expanded, out, SE, activation, stride
    cfg = [(3, 16, 16, 0, RE, 1), (3, 64, 24, 0, RE, 2), (3, 72, 24, 0, RE, 1), (5, 72, 40, 1, RE, 2),
           (5, 120, 40, 1, RE, 1), (5, 120, 40, 1, RE, 1), (3, 240, 80, 0, HS, 2), (3, 200, 80, 0, HS, 1),
           (3, 184, 80, 0, HS, 1), (3, 184, 80, 0, HS, 1), (3, 480, 112, 1, HS, 1), (3, 672, 112, 1, HS, 1),
           (5, 672, 160, 1, HS, 2), (5, 960, 160, 1, HS, 1), (5, 960, 160, 1, HS, 1)]
    layers, cin = [conv_bn(3, 16, 3, 2, act=HS)], 16
    for k, exp, out, use_se, act, s in cfg:
        se = _squeeze_excite(exp, _div8(exp // 4), nn.ReLU, nn.Hardsigmoid) if use_se else None
        layers.append(_inverted_residual(cin, exp, out, k, s, act, se))
        cin = out
    layers.append(conv_bn(cin, 960, act=HS))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(960, 1280), HS(),
                         nn.Dropout(0.2), nn.Linear(1280, num_classes))


def efficientnet_b0(num_classes: int = 1000, depth: float = 1.0):
    """EfficientNet-B0 (width 1.0): MBConv stages as in the paper / torchvision; ``depth`` is the
    paper's depth coefficient (repeats scaled and rounded up; B0 is 1.0, tests use less)."""
    _, nn = _nn()
    # expand ratio, kernel, first stride, in, out, repeats
    cfg = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
           (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]
    layers = [conv_bn(3, 32, 3, 2, act=nn.SiLU)]
    for t, k, s, cin, cout, n in cfg:
        for i in range(math.ceil(n * depth)):
            c = cin if i == 0 else cout
            se = _squeeze_excite(c * t, max(1, c // 4), nn.SiLU, nn.Sigmoid)
            layers.append(_inverted_residual(c, c * t, cout, k, s if i == 0 else 1, nn.SiLU, se))
    layers.append(conv_bn(320, 1280, act=nn.SiLU))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(0.2),
                         nn.Linear(1280, num_classes))


# ------------------------------------------------------------------------------------------------
# ResNet-50
# ------------------------------------------------------------------------------------------------

def resnet50(num_classes: int = 1000, blocks=(3, 4, 6, 3)):
    """ResNet-50 v1.5: 7x7 stem, max pool, bottleneck stages ``blocks`` (ResNet-50: [3, 4, 6, 3];
    tests use fewer), global pool, FC."""
    torch, nn = _nn()

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, s: int):
            super().__init__()
            cout = width * 4
            self.body = nn.Sequential(conv_bn(cin, width, act=nn.ReLU), conv_bn(width, width, 3, s, act=nn.ReLU),
                                      conv_bn(width, cout))
            self.down = conv_bn(cin, cout, 1, s) if s != 1 or cin != cout else None

        def forward(self, x):
            return torch.relu(self.body(x) + (x if self.down is None else self.down(x)))

    layers, cin = [conv_bn(3, 64, 7, 2, act=nn.ReLU), nn.MaxPool2d(3, 2, 1)], 64
    for width, n, s in zip((64, 128, 256, 512), blocks, (1, 2, 2, 2)):
        for i in range(n):
            layers.append(Bottleneck(cin, width, s if i == 0 else 1))
            cin = width * 4
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(2048, num_classes))


# ------------------------------------------------------------------------------------------------
# ConvNeXt-tiny-style
# ------------------------------------------------------------------------------------------------

def convnext_tiny_style(num_classes: int = 1000, depths=(2, 2, 4, 2), dims=(96, 192, 384, 768)):
    """ConvNeXt with ConvNeXt-tiny's widths and reduced depths (default (2, 2, 4, 2), tiny has
    (3, 3, 9, 3)): 4x4 patchify stem, blocks of 7x7 depthwise -> LayerNorm (channels-last) -> 4x MLP
    with GELU -> layer scale -> residual, LayerNorm2d + 2x2 stride-2 conv between stages."""
    torch, nn = _nn()

    class LayerNorm2d(nn.LayerNorm):
        def forward(self, x):   # channels-first LayerNorm, as torchvision's: permute, LN, permute back
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    class Block(nn.Module):
        def __init__(self, d: int):
            super().__init__()
            self.dw = nn.Conv2d(d, d, 7, padding=3, groups=d)
            self.norm = nn.LayerNorm(d, eps=1e-6)
            self.fc1, self.act, self.fc2 = nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)
            self.gamma = nn.Parameter(torch.full((d,), 1e-6))

        def forward(self, x):
            y = self.dw(x).permute(0, 2, 3, 1)
            y = self.gamma * self.fc2(self.act(self.fc1(self.norm(y))))
            return x + y.permute(0, 3, 1, 2)

    layers = [nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6)]
    for i, (d, n) in enumerate(zip(dims, depths)):
        if i:
            layers += [LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], d, 2, 2)]
        layers += [Block(d) for _ in range(n)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.LayerNorm(dims[-1], eps=1e-6),
                         nn.Linear(dims[-1], num_classes))


# ------------------------------------------------------------------------------------------------
# YOLOv8n-style detector
# ------------------------------------------------------------------------------------------------

def yolov8n_style(size: int = 320, num_classes: int = 80, reg_max: int = 16):
    """YOLOv8n's layer graph (Ultralytics yolov8.yaml at scale n) for a fixed size x size input:
    output [1, 4 + num_classes, anchors] (decoded xywh boxes in pixels, class sigmoids)."""
    torch, nn = _nn()
    Conv = lambda cin, cout, k=1, s=1: conv_bn(cin, cout, k, s, act=nn.SiLU)   # noqa: E731

    class Bottleneck(nn.Module):
        def __init__(self, c: int, shortcut: bool):
            super().__init__()
            self.cv1, self.cv2, self.add = Conv(c, c, 3), Conv(c, c, 3), shortcut

        def forward(self, x):
            y = self.cv2(self.cv1(x))
            return x + y if self.add else y

    class C2f(nn.Module):
        def __init__(self, cin: int, cout: int, n: int, shortcut: bool):
            super().__init__()
            self.c = cout // 2
            self.cv1, self.cv2 = Conv(cin, 2 * self.c), Conv((2 + n) * self.c, cout)
            self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

        def forward(self, x):
            y = list(self.cv1(x).split((self.c, self.c), 1))   # ONNX Split
            y.extend(m(y[-1]) for m in self.m)
            return self.cv2(torch.cat(y, 1))

    class SPPF(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.cv1, self.cv2, self.pool = Conv(c, c // 2), Conv(c * 2, c), nn.MaxPool2d(5, 1, 2)

        def forward(self, x):
            y = [self.cv1(x)]
            y.extend(self.pool(y[-1]) for _ in range(3))
            return self.cv2(torch.cat(y, 1))

    class Detect(nn.Module):
        def __init__(self, chs, strides):
            super().__init__()
            c2, c3 = max(16, chs[0] // 4, 4 * reg_max), max(chs[0], min(num_classes, 100))
            self.box = nn.ModuleList(nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1))
                                     for c in chs)
            self.cls = nn.ModuleList(nn.Sequential(Conv(c, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, num_classes, 1))
                                     for c in chs)
            self.dfl = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
            anchors, stride_t = [], []
            for s in strides:   # anchor points fixed for this input size, as Ultralytics' export
                n = size // s
                yy, xx = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
                anchors.append(torch.stack((xx, yy), -1).view(-1, 2))
                stride_t.append(torch.full((n * n, 1), float(s)))
            self.register_buffer("anchors", torch.cat(anchors).T.unsqueeze(0))
            self.register_buffer("strides", torch.cat(stride_t).T.unsqueeze(0))

        def forward(self, feats):
            x = torch.cat([torch.cat((b(f), c(f)), 1).view(1, 4 * reg_max + num_classes, -1)
                           for f, b, c in zip(feats, self.box, self.cls)], 2)
            box, cls = x.split((4 * reg_max, num_classes), 1)
            a = box.shape[-1]
            # DFL: expected value of a 16-bin distribution per side
            dist = self.dfl(box.view(1, 4, reg_max, a).transpose(2, 1).softmax(1)).view(1, 4, a)
            lt, rb = dist.chunk(2, 1)
            x1y1, x2y2 = self.anchors - lt, self.anchors + rb
            xywh = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * self.strides
            return torch.cat((xywh, cls.sigmoid()), 1)

    class YOLOv8n(nn.Module):
        def __init__(self):
            super().__init__()
            self.b0 = nn.Sequential(Conv(3, 16, 3, 2), Conv(16, 32, 3, 2), C2f(32, 32, 1, True),
                                    Conv(32, 64, 3, 2), C2f(64, 64, 2, True))                     # P3
            self.b1 = nn.Sequential(Conv(64, 128, 3, 2), C2f(128, 128, 2, True))                 # P4
            self.b2 = nn.Sequential(Conv(128, 256, 3, 2), C2f(256, 256, 1, True), SPPF(256))   # P5
            self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
            self.h1, self.h2 = C2f(384, 128, 1, False), C2f(192, 64, 1, False)
            self.d1, self.h3 = Conv(64, 64, 3, 2), C2f(192, 128, 1, False)
            self.d2, self.h4 = Conv(128, 128, 3, 2), C2f(384, 256, 1, False)
            self.detect = Detect((64, 128, 256), (8, 16, 32))

        def forward(self, x):
            p3 = self.b0(x)
            p4 = self.b1(p3)
            p5 = self.b2(p4)
            t4 = self.h1(torch.cat((self.up(p5), p4), 1))
            o3 = self.h2(torch.cat((self.up(t4), p3), 1))
            o4 = self.h3(torch.cat((self.d1(o3), t4), 1))
            o5 = self.h4(torch.cat((self.d2(o4), p5), 1))
            return self.detect([o3, o4, o5])

    model = YOLOv8n()
    with torch.no_grad():
        model.detect.dfl.weight.copy_(torch.arange(reg_max, dtype=torch.float32).view(1, reg_max, 1, 1))
    return model


# ------------------------------------------------------------------------------------------------
# DeiT-tiny-style ViT
# ------------------------------------------------------------------------------------------------

def deit_tiny_style(num_classes: int = 1000, size: int = 224, patch: int = 16, dim: int = 192, depth: int = 12,
                    heads: int = 3):
    """DeiT-tiny (ViT-Ti/16): patch embedding conv, class token + learned position embedding,
    pre-norm blocks (LayerNorm -> attention -> residual, LayerNorm -> GELU MLP -> residual), head on
    the class token."""
    torch, nn = _nn()
    hd = dim // heads

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

        def forward(self, x):
            b, n, _ = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
            return self.proj((att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, dim))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.n1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention()
            self.n2 = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

        def forward(self, x):
            x = x + self.attn(self.n1(x))
            return x + self.mlp(self.n2(x))

    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = nn.Conv2d(3, dim, patch, patch)
            self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.02)
            self.blocks = nn.Sequential(*[Block() for _ in range(depth)])
            self.norm, self.head = nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, num_classes)

        def forward(self, x):
            x = self.patch(x).flatten(2).transpose(1, 2)
            x = torch.cat((self.cls.expand(x.shape[0], -1, -1), x), 1) + self.pos
            return self.head(self.norm(self.blocks(x))[:, 0])

    return ViT()
