"""Tests for the model zoo (qcc.models): data loaders, bundled CNN, MobileNetV2, MiniLM, PP-OCR."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from qcc.models import bundled_calib_path, bundled_model_path, datasets, get, names

ort = pytest.importorskip("onnxruntime")


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_import_needs_no_torch():
    # Simulate a machine without torch / transformers: the zoo must still import.
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers"):
                    raise ImportError("blocked " + name)
        sys.meta_path.insert(0, Block())
        import qcc.models
        assert "fashion-cnn" in qcc.models.names()
        assert qcc.models.bundled_model_path().is_file()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_fashion_mnist_loader():
    x, y = datasets.load_fashion_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (10000,) and y.dtype == np.int64
    assert y.min() == 0 and y.max() == 9 and np.all(np.bincount(y) == 1000)
    # Normalized with the train-set statistics: roughly zero mean, unit std.
    assert abs(float(x.mean())) < 0.05 and 0.9 < float(x.std()) < 1.1
    x_train, y_train = datasets.load_fashion_mnist("train")
    assert x_train.shape == (60000, 1, 28, 28) and y_train.shape == (60000,)
    with pytest.raises(ValueError):
        datasets.load_fashion_mnist("val")


def test_bundled_fashion_cnn_onnx_accuracy():
    import onnx

    model = onnx.load(str(bundled_model_path()))
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" in ops and "Add" in ops  # BN left for the compiler to fold
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    with np.load(bundled_calib_path()) as z:
        calib = z["input"]
    assert calib.shape == (256, 1, 28, 28) and calib.dtype == np.float32

    x, y = datasets.load_fashion_mnist("test")
    (logits,) = _session(bundled_model_path()).run(["logits"], {"input": x[:2000]})
    assert (logits.argmax(1) == y[:2000]).mean() >= 0.88


def test_natural_image_crops_deterministic_and_normalized():
    a = datasets.natural_image_crops(12, size=64, seed=0)
    b = datasets.natural_image_crops(12, size=64, seed=0)
    c = datasets.natural_image_crops(12, size=64, seed=1)
    assert a.shape == (12, 3, 64, 64) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # ImageNet normalization of real photos: per-channel stats near 0 / 1, in the valid range.
    mean, std = a.mean(axis=(0, 2, 3)), a.std(axis=(0, 2, 3))
    assert np.all(np.abs(mean) < 0.6) and np.all((std > 0.5) & (std < 1.5))
    lo = (0 - datasets.IMAGENET_MEAN) / datasets.IMAGENET_STD
    hi = (1 - datasets.IMAGENET_MEAN) / datasets.IMAGENET_STD
    assert np.all(a.min(axis=(0, 2, 3)) >= lo - 1e-5) and np.all(a.max(axis=(0, 2, 3)) <= hi + 1e-5)


def test_sentences():
    allsents = datasets.sentences()
    assert len(allsents) >= 600
    assert len(set(allsents)) == len(allsents)
    assert all(8 <= len(s.split()) <= 40 for s in allsents)
    assert datasets.sentences(50, seed=3) == datasets.sentences(50, seed=3)
    assert datasets.sentences(50, seed=3) != datasets.sentences(50, seed=4)
    assert set(datasets.sentences(50, seed=3)) <= set(allsents)


def test_zoo_registry_small():
    assert set(names()) == {"fashion-cnn", "mobilenetv2", "minilm", "minilm-2layer",
                            "ppocr-cls", "ppocr-det"}
    with pytest.raises(KeyError):
        get("resnet-9000")
    e = get("fashion-cnn", n_calib=16, n_eval=100)
    assert e.calib["input"].shape == (16, 1, 28, 28) and e.eval["input"].shape == (100, 1, 28, 28)
    assert e.labels is not None and e.labels.shape == (100,)


@pytest.mark.parametrize("kind", ["cls", "det"])
def test_ppocr_inputs_run(kind):
    pytest.importorskip("onnx")
    from qcc.models.ppocr import ppocr_model_path

    try:
        ppocr_model_path(kind)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    e = get(f"ppocr-{kind}", n_calib=4, n_eval=4)
    (name,) = e.calib
    x = e.eval[name]
    assert x.dtype == np.float32 and x.shape[1] == 3 and x.shape[2] % 16 == 0
    assert not np.array_equal(e.calib[name], x)
    out = _session(e.onnx_path).run(None, e.eval)[0]
    assert out.shape[0] == 4 and np.all(np.isfinite(out))


def test_mobilenet_v2_strict_load_and_cat():
    torch = pytest.importorskip("torch")
    from qcc.models.mobilenet_v2 import load_mobilenet_v2, weights_path

    try:
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    model = load_mobilenet_v2()  # load_state_dict(strict=True) inside
    assert set(model.state_dict()) == set(state)
    x = torch.from_numpy(datasets.photo_center_crop("chelsea")[None])
    with torch.no_grad():
        top1 = int(model(x).argmax(1))
    assert 281 <= top1 <= 285, f"chelsea (a tabby cat) predicted as ImageNet class {top1}"


def test_minilm_2layer_export_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import onnx

    from qcc.models.minilm import INPUT_NAMES, embedding_model, export_minilm, tokenize

    try:
        path = export_minilm(tmp_path / "minilm2.onnx", seq_len=32, num_layers=2)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == list(INPUT_NAMES)
    assert [o.name for o in graph.output] == ["embedding"]
    # The additive attention mask must reach every Softmax through an Add.
    producers = {out: n for n in graph.node for out in n.output}
    softmaxes = [n for n in graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) == 2
    assert all(producers[s.input[0]].op_type == "Add" for s in softmaxes)

    feeds = tokenize(datasets.sentences(5, seed=11), seq_len=32)
    assert feeds["attention_mask"].min() == 0  # some padding, so the mask matters
    (onnx_out,) = _session(path).run(["embedding"], feeds)
    with torch.no_grad():
        ref = embedding_model(num_layers=2)(*(torch.from_numpy(feeds[k]) for k in INPUT_NAMES))
    assert onnx_out.shape == (5, 384)
    assert np.abs(onnx_out - ref.numpy()).max() < 1e-4
