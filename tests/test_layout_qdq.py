"""Channels-last rewrite (schedules/layout.py) of quantize / dequantize: a float region's quantize
(conv -> SiLU in float -> quantize, the default plan keeps SiLU float) is computed on the conv's NHWC
twin, so it fuses into the conv's float epilogue: no float32 transpose + quantize pass between two
int8 convs, and the codes are the same as with the quantize in NCHW (element by element)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper as oh

from conftest import compile_quiet, make_model, run

tvm_backend = pytest.importorskip("qcc.backends.tvm")
from qcc.backends.tvm import pipeline, schedules  # noqa: E402
from qcc.backends.tvm import compat  # noqa: E402

N = oh.make_node


def _silu_net(c_in, c_mid, h, w, seed=0):
    """Conv -> Sigmoid * x (SiLU) -> Conv 3x3 pad 1 -> SiLU; odd channel counts and spatial size."""
    rng = np.random.default_rng(seed)
    inits = {"W1": (rng.standard_normal((c_mid, c_in, 1, 1)) * 0.4).astype(np.float32),
             "B1": (rng.standard_normal(c_mid) * 0.1).astype(np.float32),
             "W2": (rng.standard_normal((c_mid, c_mid, 3, 3)) * 0.2).astype(np.float32),
             "B2": (rng.standard_normal(c_mid) * 0.1).astype(np.float32)}
    nodes = [N("Conv", ["x", "W1", "B1"], ["c1"]), N("Sigmoid", ["c1"], ["g1"]), N("Mul", ["c1", "g1"], ["a1"]),
             N("Conv", ["a1", "W2", "B2"], ["c2"], pads=[1, 1, 1, 1]), N("Sigmoid", ["c2"], ["g2"]),
             N("Mul", ["c2", "g2"], ["y"])]
    return make_model(nodes, [("x", [1, c_in, h, w])], [("y", [1, c_mid, h, w])], inits, opset=17)


def _float_transposes(mod) -> int:
    """permute_dims of float32 values in main (a float tensor moved between layouts)."""
    n = 0
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            if compat.op_name(b.value) == "relax.permute_dims" and compat.tensor_dtype(b.var) == "float32" \
                    and len(compat.tensor_shape(b.var) or ()) == 4:
                n += 1
    return n


@pytest.mark.parametrize("c_in,c_mid,h,w", [(3, 16, 9, 7), (5, 24, 6, 11)])
def test_float_region_quantize_runs_channels_last(tmp_path, c_in, c_mid, h, w):
    model = _silu_net(c_in, c_mid, h, w)
    rng = np.random.default_rng(1)
    calib = {"x": rng.standard_normal((8, c_in, h, w)).astype(np.float32)}
    qdq = compile_quiet(model, calib).qdq_model
    target = tvm_backend.detect_target()
    mod, _, _, fallback = pipeline.lower(qdq)
    assert any(f["op"] == "sigmoid" for f in fallback), fallback   # the SiLU is a float region here
    opt, info = schedules.optimize(mod, target)
    if not info.get("scheduled"):
        pytest.skip("not an x86 llvm target: no channels-last rewrite")
    # the only float transposes left: none between the convs (the final output's, at most one)
    assert _float_transposes(opt) <= 1, opt["main"]
    info = tvm_backend.build(qdq, target, tmp_path)
    x = rng.standard_normal((3, c_in, h, w)).astype(np.float32)
    for i in range(3):
        (got,) = tvm_backend.Runner(tmp_path).run({"x": x[i:i + 1]})
        (ref,) = run(qdq, {"x": x[i:i + 1]}, optimize=False)
        # onnxruntime's float SiLU vs TVM's: within a quantization step of the output
        s = float(np.abs(ref).max()) / 100
        assert np.abs(got - ref).max() <= s, np.abs(got - ref).max()
