"""The offline model suite (qcc.models.suite): each torch net builds, exports to ONNX and runs in
onnxruntime at its declared input shape with torch's outputs; the TF-style graph passes the ONNX
checker and runs; the registry names what the benchmark needs. No latency here (benchmarks/)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from conftest import max_rel_err, run

torch = pytest.importorskip("torch")
suite = pytest.importorskip("qcc.models.suite")

# deit-tiny-dynamo is deit-tiny's module under another exporter: tested once, as deit-tiny
TORCH = [n for n, e in suite.SUITE.items() if e.kind == "torch" and n != "deit-tiny-dynamo"]
# fewer repeated blocks where the export takes longest (the declared input shapes stay)
SMALLER = {"resnet50": {"blocks": (1, 1, 2, 1)}, "efficientnet-b0": {"depth": 0.5}, "deit-tiny": {"depth": 4}}


def _export_and_compare(name: str, path, exporter: str | None = None, **kw) -> onnx.ModelProto:
    entry = suite.SUITE[name]
    net = suite.build_torch(name, **kw)
    info = suite.export(name, path, exporter=exporter, model=net)
    assert info["exporter"] == (exporter or entry.exporter), info
    model = onnx.load(str(path), load_external_data=False)
    assert model.opset_import[0].version == entry.opset
    shape = entry.inputs["input"]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    (got,) = run(str(path), {"input": x})
    assert got.shape == ref.shape
    assert max_rel_err(ref, got) < 1e-4
    return model


@pytest.mark.parametrize("name", TORCH)
def test_torch_model_exports_and_matches(name, tmp_path):
    """Every torch entry at its declared shape and opset; the dynamo entries through TorchScript
    here (a dynamo export takes 10-25 s), their dynamo idiom is checked on a reduced net below;
    ResNet-50 and EfficientNet-B0 with fewer repeated blocks (SMALLER)."""
    exporter = "torchscript" if suite.SUITE[name].exporter == "dynamo" else None
    model = _export_and_compare(name, tmp_path / f"{name}.onnx", exporter=exporter, **SMALLER.get(name, {}))
    ops = {n.op_type for n in model.graph.node}
    if name == "yolov8n":
        assert {"Split", "Concat", "Resize", "Softmax", "Sigmoid"} <= ops
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1   # fixed batch 1
    if name == "deit-tiny":   # opset 13: LayerNorm and GELU decomposed
        assert "LayerNormalization" not in ops and {"ReduceMean", "Erf", "Softmax"} <= ops
    if name == "mobilenetv3-large":
        assert "HardSigmoid" in ops


def test_dynamo_idiom_fused_layernorm_and_gelu(tmp_path):
    """convnext-tiny's idiom (dynamo, opset 20) on a one-block-per-stage net: LayerNormalization and
    Gelu appear as single ops and onnxruntime agrees with torch."""
    pytest.importorskip("onnxscript")
    model = _export_and_compare("convnext-tiny", tmp_path / "cx.onnx", depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))
    ops = {n.op_type for n in model.graph.node}
    assert {"LayerNormalization", "Gelu"} <= ops and "Erf" not in ops


def test_dynamo_failure_falls_back_to_torchscript(tmp_path, monkeypatch):
    real = suite._torch_export

    def dynamo_breaks(model, shape, path, exporter, opset, dynamic):
        if exporter == "dynamo":
            raise RuntimeError("no dynamo here")
        real(model, shape, path, exporter, opset, dynamic)

    monkeypatch.setattr(suite, "_torch_export", dynamo_breaks)
    info = suite.export("convnext-tiny", tmp_path / "cx.onnx", depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))
    assert info["exporter_requested"] == "dynamo" and info["exporter"] == "torchscript"
    assert "no dynamo here" in info["fallback"]
    assert run(onnx.load(str(tmp_path / "cx.onnx")), {"input": np.zeros((1, 3, 224, 224), np.float32)})


def test_tf_style_graph(tmp_path):
    model = suite.tf_style_model()
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops[0] == "Transpose" and "Pad" in ops and "MatMul" in ops
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert all(list(a.ints) == [0, 0, 0, 0] for n in convs for a in n.attribute if a.name == "pads")
    assert any(a.name == "group" and a.i > 1 for n in convs for a in n.attribute)   # depthwise
    x = np.random.default_rng(0).uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)
    (y,) = run(model, {"input_1:0": x})
    assert y.shape == (1, 1000) and abs(float(y.sum()) - 1.0) < 1e-4
    info = suite.export("tf-style", tmp_path / "tf.onnx")
    assert info["exporter"] == "onnx.helper" and (tmp_path / "tf.onnx").is_file()


def test_registry_and_seeded_weights():
    assert {"mobilenetv3-large", "efficientnet-b0", "resnet50", "convnext-tiny", "yolov8n", "deit-tiny",
            "tf-style", "mobilenetv2", "minilm", "ppocr-det", "ppocr-cls", "ppocr-rec"} <= set(suite.names())
    exporters = {e.exporter for e in suite.SUITE.values()}
    opsets = {e.opset for e in suite.SUITE.values()}
    assert {"torchscript", "dynamo"} <= exporters and 13 in opsets and max(opsets) >= 17
    a, b = suite.build_torch("resnet50"), suite.build_torch("resnet50")
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    bn = next(m for m in a.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert float(bn.running_var.min()) >= 0.5 and float(bn.running_mean.abs().max()) > 0.01


def test_tf_style_calibration_data_is_nhwc(tmp_path):
    pytest.importorskip("skimage")
    entry = suite.get("tf-style", n_calib=2, n_eval=1, cache_dir=tmp_path)
    x = entry.calib["input_1:0"]
    assert x.shape == (2, 224, 224, 3) and x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1
    assert (tmp_path / "suite-tf-style.onnx").is_file() and suite.export_info("tf-style", tmp_path)["opset"] == 13
