"""qcc: a graph-level quantization compiler.

    import qcc
    result = qcc.compile_model("model.onnx", calib={"input": x}, out_dir="build/")
    qcc.load("build/").run({"input": x[:1]})
"""

__version__ = "0.1.0"

from .artifact import Artifact, load  # noqa: E402
from .config import QuantConfig  # noqa: E402
from .errors import QccError  # noqa: E402
from .pipeline import CompileResult, compile_model  # noqa: E402

__all__ = ["Artifact", "CompileResult", "QccError", "QuantConfig", "compile_model", "load", "__version__"]
