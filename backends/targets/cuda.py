"""--target cuda --arch sm_XX: int8 / FP8 kernels for NVIDIA GPUs, built by TVM and nvcc."""

from qcc.target_record import Target

from . import TVM, TVM_SCHEMES

TARGET = Target("cuda", "NVIDIA GPUs, with --arch (docs/cuda_fp8.md)", **TVM_SCHEMES, rank=20,
                output="a library (model.so)", options=frozenset({"arch"}),
                configure=f"{TVM}.cuda:configure", build=f"{TVM}.native:build_cuda",
                runner=f"{TVM}.runtime:open_runner", build_tools=("nvcc",),
                verify="every kernel compiled by nvcc; run against onnxruntime where this machine has a GPU",
                samples=16)
