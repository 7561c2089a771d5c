"""--target onnx: the QDQ graph itself, run by onnxruntime."""

from qcc.target_record import Target

TARGET = Target("onnx", "QDQ ONNX run by onnxruntime", rank=0,
                runner="qcc.artifact:onnx_runner",
                verify="nothing to check: onnxruntime on the QDQ graph is the reference")
