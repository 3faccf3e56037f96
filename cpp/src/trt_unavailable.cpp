// Built when CMake did not find TensorRT: the backend factory says so instead of failing to link.
#include "omnisift/trt_backend.h"

namespace omnisift {

bool trt_available() { return false; }

Result<std::unique_ptr<Backend>> create_trt_backend(const std::string&, const Manifest&, double, const TrtOptions&) {
  return Unsupported("this omnisift build has no TensorRT backend (CMake did not find NvInfer.h / libnvinfer / CUDA); "
                     "configure with TENSORRT_ROOT=/path/to/TensorRT on a machine with TensorRT 10");
}

}  // namespace omnisift
