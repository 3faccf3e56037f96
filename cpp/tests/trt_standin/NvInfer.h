// A stand-in for TensorRT's NvInfer.h, written for omnisift's CI (not NVIDIA's text): it declares
// exactly the part of the TensorRT C++ API that src/trt_backend.cpp and src/trt_kv.cpp call, with
// the signatures of the real headers (checked against NVIDIA/TensorRT's include/NvInferRuntime.h
// and NvInferRuntimeBase.h at tags v10.3.0, v10.15 and v11.1), so that ctest compiles the backend
// on machines without TensorRT. A call the backend makes that is not declared here, or made with
// other argument types, fails that compile. Nothing here has a definition: it is compiled, never
// linked. cuda_runtime_api.h is CUDA's real one (the check is skipped without it).
//
// Which TensorRT it mimics (the backend's #if branches):
//   default                         TensorRT 10.15 (has getAliasedInputTensor: decoder_scatter)
//   -DOMNISIFT_STANDIN_TRT_MINOR=3  TensorRT 10.3, JetPack 6 (no aliasing: decoder only)
//   -DOMNISIFT_STANDIN_RTX          TensorRT-RTX 1.7 (TRT_MAJOR_RTX; libtensorrt_rtx)
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#if defined(OMNISIFT_STANDIN_RTX)
#define TRT_MAJOR_RTX 1
#define TRT_MINOR_RTX 7
#define OMNISIFT_STANDIN_ALIASING 1
#else
#define NV_TENSORRT_MAJOR 10
#ifdef OMNISIFT_STANDIN_TRT_MINOR
#define NV_TENSORRT_MINOR OMNISIFT_STANDIN_TRT_MINOR
#else
#define NV_TENSORRT_MINOR 15
#endif
#define OMNISIFT_STANDIN_ALIASING (NV_TENSORRT_MINOR >= 15)
#endif

extern "C" int32_t getInferLibMajorVersion() noexcept;
extern "C" int32_t getInferLibMinorVersion() noexcept;

namespace nvinfer1 {

using AsciiChar = char;

enum class DataType : int32_t { kFLOAT = 0, kHALF = 1, kINT8 = 2, kINT32 = 3, kBOOL = 4, kUINT8 = 5, kFP8 = 6, kBF16 = 7, kINT64 = 8 };
enum class TensorIOMode : int32_t { kNONE = 0, kINPUT = 1, kOUTPUT = 2 };
enum class OptProfileSelector : int32_t { kMIN = 0, kOPT = 1, kMAX = 2 };
enum class TensorLocation : int32_t { kDEVICE = 0, kHOST = 1 };
enum class ExecutionContextAllocationStrategy : int32_t { kSTATIC = 0, kON_PROFILE_CHANGE = 1, kUSER_MANAGED = 2 };

class Dims64 {
 public:
  static constexpr int32_t MAX_DIMS{8};
  int32_t nbDims;
  int64_t d[MAX_DIMS];
};
using Dims = Dims64;

class ILogger {
 public:
  enum class Severity : int32_t { kINTERNAL_ERROR = 0, kERROR = 1, kWARNING = 2, kINFO = 3, kVERBOSE = 4 };
  virtual void log(Severity severity, AsciiChar const* msg) noexcept = 0;
  ILogger() = default;
  virtual ~ILogger() = default;
};

class IExecutionContext {
 public:
  virtual ~IExecutionContext() noexcept;
  bool setInputShape(char const* tensorName, Dims const& dims) noexcept;
  bool setTensorAddress(char const* tensorName, void* data) noexcept;
  bool setOptimizationProfileAsync(int32_t profileIndex, cudaStream_t stream) noexcept;
  bool enqueueV3(cudaStream_t stream) noexcept;
};

class ICudaEngine {
 public:
  virtual ~ICudaEngine() noexcept;
  IExecutionContext* createExecutionContext(
      ExecutionContextAllocationStrategy strategy = ExecutionContextAllocationStrategy::kSTATIC) noexcept;
  TensorIOMode getTensorIOMode(char const* tensorName) const noexcept;
  DataType getTensorDataType(char const* tensorName) const noexcept;
  Dims getTensorShape(char const* tensorName) const noexcept;
  TensorLocation getTensorLocation(char const* tensorName) const noexcept;
  int32_t getNbOptimizationProfiles() const noexcept;
  Dims getProfileShape(char const* tensorName, int32_t profileIndex, OptProfileSelector select) const noexcept;
#if OMNISIFT_STANDIN_ALIASING
  [[nodiscard]] char const* getAliasedInputTensor(char const* tensorName) const noexcept;
#endif
};

class IRuntime {
 public:
  virtual ~IRuntime() noexcept;
  ICudaEngine* deserializeCudaEngine(void const* blob, std::size_t size) noexcept;
};

IRuntime* createInferRuntime(ILogger& logger) noexcept;

}  // namespace nvinfer1
