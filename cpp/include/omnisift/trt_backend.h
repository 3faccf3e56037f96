// The TensorRT 10 backend: the engines `omnisift-edge build` wrote (manifest builds.<target>),
// run with IRuntime / ICudaEngine / IExecutionContext::setInputShape + setTensorAddress +
// enqueueV3 on one CUDA stream. Built only where CMake finds TensorRT (OMNISIFT_HAVE_TENSORRT);
// the declaration is always visible so apps can compile both ways.
//
// - tensor names, dtypes and shapes come from the manifest's graphs (inputs/outputs in order);
// - engines are checked against the manifest (every tensor present, fp32/fp16/int64 types), the
//   build's compute capability against the GPU, its TensorRT major.minor against the library;
// - the decoder keeps its KV cache on the GPU in two buffer sets of max_context tokens that swap
//   roles each step (present of step t is the past of step t+1: no copy), picks the prefill or
//   decode optimization profile per step (DecoderProfiles) and refuses steps outside them;
// - fp16 engines get fp16 inputs converted on the host; outputs come back as float32.
#pragma once

#include <memory>
#include <string>

#include "omnisift/backend.h"
#include "omnisift/manifest.h"
#include "omnisift/status.h"

namespace omnisift {

struct TrtOptions {
  std::string target;        // builds.<target>; empty: the only one (an error when there are several)
  int device = 0;            // CUDA device
  bool check_device = true;  // refuse a GPU whose compute capability is not the build's
};

// True in builds compiled with TensorRT.
bool trt_available();

// The backend for `ratio`'s compressor; Unsupported in builds without TensorRT.
Result<std::unique_ptr<Backend>> create_trt_backend(const std::string& export_dir, const Manifest& manifest,
                                                   double ratio, const TrtOptions& options = {});

}  // namespace omnisift
