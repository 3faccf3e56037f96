// Host CUDA for test_trt_kv: the few CUDA runtime calls src/trt_kv.cpp makes, run on the CPU
// ("device" memory is host memory), so that the KV cache's pitches, packing and set swaps are
// tested where no GPU exists. Stricter than CUDA where it matters here: a 2D copy whose width
// exceeds a pitch, or whose source and destination overlap, fails. Test-only; never used by the
// library build (which takes CUDA's real header).
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2, cudaErrorInvalidPitchValue = 12 };
enum cudaMemcpyKind { cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3 };
using cudaStream_t = struct CUstream_st*;

inline int& host_cuda_copies() {   // 2D copies made, for the test's checks
  static int n = 0;
  return n;
}

inline const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidPitchValue: return "invalid pitch argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    default: return "invalid argument";
  }
}

inline cudaError_t cudaMalloc(void** ptr, size_t size) {
  *ptr = std::malloc(size == 0 ? 1 : size);
  return *ptr ? cudaSuccess : cudaErrorMemoryAllocation;
}

inline cudaError_t cudaFree(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}

inline cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                                     cudaMemcpyKind, cudaStream_t) {
  if (width > dpitch || width > spitch) return cudaErrorInvalidPitchValue;
  const char* s = static_cast<const char*>(src);
  char* d = static_cast<char*>(dst);
  const char* s_end = s + (height ? (height - 1) * spitch + width : 0);
  const char* d_end = d + (height ? (height - 1) * dpitch + width : 0);
  if (height && s < d_end && d < s_end) return cudaErrorInvalidValue;   // overlapping regions
  for (size_t r = 0; r < height; ++r) std::memcpy(d + r * dpitch, s + r * spitch, width);
  ++host_cuda_copies();
  return cudaSuccess;
}

inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
