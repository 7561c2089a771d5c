"""The target records: one module per `qcc compile --target`, each declaring ``TARGET = Target(...)``.

compiler/targets.py collects every module here (nothing lists them), so adding a target is its
record module here, its backend code and its tests. Records name their functions as
"module:function" strings and import nothing heavy: listing the targets never imports TVM.
Below: what several records share.
"""

from qcc.target_record import FP8_SCHEMES, INT8_SCHEMES, W8A16_SCHEMES

TVM = "qcc.backends.tvm"
# what TVM's lowering takes, and what a refusal says
TVM_SCHEMES = dict(schemes=INT8_SCHEMES | W8A16_SCHEMES | FP8_SCHEMES, lowers="lowers int8, w8a16 and fp8 schemes",
                   instead="--target onnx in this version (int4 tensors need explicit packing)")
EDGE_SCHEMES = dict(schemes=INT8_SCHEMES, lowers="lowers int8 schemes only", instead="--target onnx or llvm")
EDGE_HELP = "cross builds for edge boards and DSPs (docs/targets.md)"
