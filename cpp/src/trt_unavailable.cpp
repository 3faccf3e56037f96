// Built when CMake did not find TensorRT: the backend factory says so instead of failing to link.
#include "omnisift/trt_backend.h"

namespace omnisift {

bool trt_available() { return false; }

namespace {
Status no_tensorrt() {
  return Unsupported("this omnisift build has no TensorRT backend (CMake did not find NvInfer.h, libnvinfer or "
                     "libtensorrt_rtx, and CUDA); configure with -DTENSORRT_ROOT=/path/to/TensorRT (TensorRT 10 or 11) "
                     "or -DTENSORRT_RTX_ROOT=/path/to/TensorRT-RTX on a machine with one");
}
}  // namespace

Result<std::shared_ptr<SharedEngines>> load_trt_engines(const std::string&, const Manifest&, double, const TrtOptions&) {
  return no_tensorrt();
}

Result<std::unique_ptr<Backend>> create_trt_backend(const std::string&, const Manifest&, double, const TrtOptions&) {
  return no_tensorrt();
}

}  // namespace omnisift
