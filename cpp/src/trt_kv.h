// The TensorRT decoder's KV cache on the device (CUDA runtime only; built with the TensorRT
// backend). One device buffer per cache tensor (a key and a value per layer, in the manifest's
// order), allocated once; two forms:
//
// - kInPlace (decoder_scatter): each buffer is [1, kv, rows, hd] with rows = the engine's static
//   cache_length; the engine reads rows [0, length) and writes the new rows at write_index = length,
//   its present output bound to the same address as its past input. Never copied.
// - kPingPong (decoder, TensorRT 10.3 / JetPack 6: presents cannot alias pasts): two buffer sets;
//   the past set holds [1, kv, length, hd] packed, the engine writes its present
//   [1, kv, length + n, hd] packed into the other set, and the sets swap roles. Never copied either,
//   at twice the memory (docs/cpp.md says why this and not one buffer plus a copy).
//
// drop() and rotate() (the sliding policy and position re-basing: rare) go through the host, one
// cache tensor at a time: the valid rows are copied out with cudaMemcpy2DAsync (the row pitch is
// the buffer's), edited by trt_rules (drop_rows, rotate_rows_*), and copied back; a host round
// trip, so no device-to-device copy ever overlaps itself and no CUDA kernel is needed.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "omnisift/status.h"

namespace omnisift::trt {

// A CUDA runtime error as a Status naming the call.
Status cuda(cudaError_t err, const char* what);

// One device allocation, freed with its owner.
struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();
  Status allocate(size_t n);   // grows only
};

class DeviceKv {
 public:
  enum class Form { kInPlace, kPingPong };

  // `tensors` buffers (2 per layer, keys at even positions) of kv_heads x rows x head_dim elements
  // of 2 (fp16) or 4 (fp32) bytes; kPingPong allocates two such sets.
  Status allocate(Form form, size_t tensors, int64_t kv_heads, int64_t rows, int64_t head_dim, bool fp16,
                  cudaStream_t stream);
  Form form() const { return form_; }
  int64_t length() const { return length_; }
  // Where cache tensor i's past is read and its present written for the next enqueue.
  void* past(size_t i) const { return sets_[past_set_][i]->ptr; }
  void* present(size_t i) const { return sets_[form_ == Form::kInPlace ? past_set_ : 1 - past_set_][i]->ptr; }
  // After an enqueue wrote n rows: the cache holds length + n (kPingPong: the sets swap).
  void commit(int64_t n);
  void reset() { length_ = 0; }
  // Remove rows [start, stop) (later rows move down); re-base every key by -delta positions.
  Status drop(int64_t start, int64_t stop);
  Status rotate(int64_t delta, const std::vector<double>& inv_freq);

 private:
  int64_t pitch_rows() const { return form_ == Form::kInPlace ? rows_ : length_; }   // rows per head in memory
  Status read(size_t i, std::vector<unsigned char>& host) const;                       // [kv, length, hd] packed
  Status write(size_t i, const std::vector<unsigned char>& host, int64_t length);

  Form form_ = Form::kInPlace;
  std::vector<std::unique_ptr<DeviceBuffer>> sets_[2];
  int past_set_ = 0;
  int64_t kv_heads_ = 0, rows_ = 0, head_dim_ = 0, length_ = 0;
  bool fp16_ = false;
  size_t row_bytes_ = 0;   // one row of one head: head_dim elements
  cudaStream_t stream_ = nullptr;
};

}  // namespace omnisift::trt
