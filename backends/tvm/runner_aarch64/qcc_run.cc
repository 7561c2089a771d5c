// qcc_run: runs a qcc aarch64 artifact (model.so, a TVM Relax VM executable) on the board.
//
//   qcc_run <artifact dir> <input dir> <output dir> [batches=1] [timing iterations=0]
//
// <artifact dir>/runner_io.txt describes the compiled signature, one line per tensor:
//   input  <dtype> <ndim> <dim0> <dim1> ...
//   output <dtype>
// <input dir>/input<i>.bin holds `batches` raw tensors (C order) for input i, back to back.
// Outputs go to <output dir>/output<i>.bin (the batches back to back) and <output dir>/outputs.txt
// ("<dtype> <ndim> <dims...>" per output, for one batch). With timing iterations > 0 the first batch
// is run that many more times and one JSON line {"median_ms": ...} is printed.
// Only the tvm-ffi headers are used; libtvm_ffi.so and libtvm_runtime.so come with the artifact.
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

struct AlignedAlloc {
  void AllocData(DLTensor* t) {
    size_t n = (ffi::GetDataSize(*t) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, n ? n : 64);
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

struct InputSpec {
  DLDataType dtype;
  std::vector<int64_t> shape;
};

DLDataType parse_dtype(const std::string& s) {
  static const struct { const char* name; uint8_t code; uint8_t bits; } table[] = {
      {"float32", kDLFloat, 32}, {"float16", kDLFloat, 16}, {"float64", kDLFloat, 64},
      {"int8", kDLInt, 8},       {"int16", kDLInt, 16},     {"int32", kDLInt, 32},
      {"int64", kDLInt, 64},     {"uint8", kDLUInt, 8},     {"bool", kDLBool, 8}};
  for (const auto& e : table)
    if (s == e.name) return DLDataType{e.code, e.bits, 1};
  throw std::runtime_error("unsupported dtype " + s);
}

std::string dtype_name(DLDataType t) {
  if (t.code == kDLBool) return "bool";
  const char* base = t.code == kDLFloat ? "float" : t.code == kDLUInt ? "uint" : "int";
  return base + std::to_string(t.bits);
}

std::vector<char> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  return std::vector<char>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void collect(const ffi::Any& value, std::vector<ffi::Tensor>* out) {
  if (auto t = value.try_cast<ffi::Tensor>()) {
    out->push_back(*t);
  } else if (auto arr = value.try_cast<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *arr) collect(item, out);
  } else {
    throw std::runtime_error("model returned something other than tensors");
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s <artifact dir> <input dir> <output dir> [batches] [timing iterations]\n", argv[0]);
    return 2;
  }
  std::string art = argv[1], in_dir = argv[2], out_dir = argv[3];
  long batches = argc > 4 ? std::atol(argv[4]) : 1, iters = argc > 5 ? std::atol(argv[5]) : 0;
  try {
    std::vector<InputSpec> inputs;
    std::ifstream spec(art + "/runner_io.txt");
    if (!spec) throw std::runtime_error("cannot open " + art + "/runner_io.txt");
    for (std::string line; std::getline(spec, line);) {
      std::istringstream ls(line);
      std::string kind, dtype;
      ls >> kind >> dtype;
      if (kind != "input") continue;
      InputSpec s{parse_dtype(dtype), {}};
      size_t ndim = 0;
      ls >> ndim;
      s.shape.resize(ndim);
      for (auto& d : s.shape) ls >> d;
      inputs.push_back(s);
    }

    ffi::Module lib = ffi::Module::LoadFromFile(art + "/model.so");
    ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);  // 2: pooled allocator
    ffi::Function main_fn = vm->GetFunction("main").value();

    std::vector<ffi::Tensor> args;
    std::vector<std::vector<char>> data;
    for (size_t i = 0; i < inputs.size(); ++i) {
      args.push_back(ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::ShapeView(inputs[i].shape.data(), inputs[i].shape.size()),
                                              inputs[i].dtype, DLDevice{kDLCPU, 0}));
      data.push_back(read_file(in_dir + "/input" + std::to_string(i) + ".bin"));
      size_t need = ffi::GetDataSize(*args[i].GetDLTensorPtr()) * batches;
      if (data[i].size() != need)
        throw std::runtime_error("input" + std::to_string(i) + ".bin has " + std::to_string(data[i].size()) +
                                 " bytes, expected " + std::to_string(need));
    }
    auto run = [&](long b) {
      std::vector<ffi::AnyView> views;
      for (size_t i = 0; i < args.size(); ++i) {
        size_t n = ffi::GetDataSize(*args[i].GetDLTensorPtr());
        std::memcpy(args[i].data_ptr(), data[i].data() + n * b, n);
        views.emplace_back(args[i]);
      }
      ffi::Any result;
      main_fn.CallPacked(views.data(), static_cast<int32_t>(views.size()), &result);
      std::vector<ffi::Tensor> outs;
      collect(result, &outs);
      return outs;
    };

    std::vector<std::FILE*> files;
    for (long b = 0; b < batches; ++b) {
      std::vector<ffi::Tensor> outs = run(b);
      if (b == 0) {
        std::ofstream meta(out_dir + "/outputs.txt");
        for (size_t i = 0; i < outs.size(); ++i) {
          meta << dtype_name(outs[i].dtype()) << " " << outs[i].ndim();
          for (int d = 0; d < outs[i].ndim(); ++d) meta << " " << outs[i].shape()[d];
          meta << "\n";
          files.push_back(std::fopen((out_dir + "/output" + std::to_string(i) + ".bin").c_str(), "wb"));
          if (!files.back()) throw std::runtime_error("cannot write to " + out_dir);
        }
      }
      for (size_t i = 0; i < outs.size(); ++i)
        std::fwrite(outs[i].data_ptr(), 1, ffi::GetDataSize(*outs[i].GetDLTensorPtr()), files[i]);
    }
    for (std::FILE* f : files) std::fclose(f);

    if (iters > 0) {
      std::vector<double> ms;
      for (long i = 0; i < iters; ++i) {
        auto t0 = std::chrono::steady_clock::now();
        run(0);
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
      std::sort(ms.begin(), ms.end());
      std::printf("{\"median_ms\": %.4f, \"iterations\": %ld}\n", ms[ms.size() / 2], iters);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qcc_run: %s\n", e.what());
    return 1;
  }
  return 0;
}
