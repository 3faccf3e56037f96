// The TensorRT backend: the engines `omnisift-edge build` wrote (manifest builds.<target>), run
// with IRuntime / ICudaEngine / IExecutionContext::setInputShape + setTensorAddress + enqueueV3 on
// one CUDA stream. Built only where CMake finds TensorRT 10/11 (TENSORRT_ROOT) or TensorRT-RTX
// (TENSORRT_RTX_ROOT) and the CUDA runtime (OMNISIFT_HAVE_TENSORRT); the declaration is always
// visible so apps can compile both ways.
//
// - tensor names, dtypes and shapes come from the manifest's graphs (inputs/outputs in order);
// - engines are checked against the manifest (every tensor present, fp32/fp16/int64 types), the
//   build's flavour and TensorRT major.minor against the library, its compute capability against
//   the GPU (a TensorRT-RTX build: any capability of its list; a TensorRT build: exactly its own);
// - the decoder's KV cache stays on the GPU, allocated once: with `decoder_scatter` (TensorRT >=
//   10.15, TensorRT-RTX) one [1, kv, max_context, hd] buffer per cache tensor, bound to the past
//   input and to the present output the engine aliases to it, written in place at write_index;
//   with `decoder` (TensorRT 10.3) two buffer sets that swap roles each step (present of step t is
//   the past of step t+1). No copy of the cache in either form; drop_kv / rotate_kv (rare) go
//   through the host;
// - the optimization profile is chosen per step (decoder: DecoderProfiles; decoder_scatter: by
//   sequence_length) and steps outside them are refused before anything changes;
// - fp16 engines get fp16 inputs converted on the host; outputs come back as float32;
// - sharing: the engines (weights) are loaded once (load_trt_engines) and every session's backend
//   has its own execution contexts, stream and KV cache on them (see SharedEngines, backend.h).
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

// The engines for `ratio`'s compressor, loaded once (IRuntime + one ICudaEngine per graph, checked
// as above) to be shared by several sessions: open_backend() gives each its own IExecutionContext
// per engine, CUDA stream, I/O buffers and KV cache device buffers (contexts are created one at a
// time under a mutex; the backends may then run on different threads at once). The engines are
// freed with the last backend (and the returned pointer). Unsupported in builds without TensorRT.
Result<std::shared_ptr<SharedEngines>> load_trt_engines(const std::string& export_dir, const Manifest& manifest,
                                                        double ratio, const TrtOptions& options = {});

// One session's backend on engines of its own: load_trt_engines + open_backend.
Result<std::unique_ptr<Backend>> create_trt_backend(const std::string& export_dir, const Manifest& manifest,
                                                   double ratio, const TrtOptions& options = {});

}  // namespace omnisift
