#include "trt_kv.h"

#include <cstring>
#include <string>

#include "trt_rules.h"

namespace omnisift::trt {

Status cuda(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status::Ok();
  return BackendError(std::string(what) + ": " + cudaGetErrorString(err));
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr) cudaFree(ptr);
}

Status DeviceBuffer::allocate(size_t n) {
  if (n <= bytes) return Status::Ok();
  if (ptr) cudaFree(ptr);
  ptr = nullptr;
  bytes = 0;
  OMNISIFT_RETURN_IF_ERROR(cuda(cudaMalloc(&ptr, n), "cudaMalloc"));
  bytes = n;
  return Status::Ok();
}

Status DeviceKv::allocate(Form form, size_t tensors, int64_t kv_heads, int64_t rows, int64_t head_dim, bool fp16,
                          cudaStream_t stream) {
  form_ = form;
  kv_heads_ = kv_heads;
  rows_ = rows;
  head_dim_ = head_dim;
  fp16_ = fp16;
  row_bytes_ = static_cast<size_t>(head_dim) * (fp16 ? 2 : 4);
  stream_ = stream;
  length_ = 0;
  past_set_ = 0;
  const size_t bytes = static_cast<size_t>(kv_heads * rows) * row_bytes_;
  for (int s = 0; s < (form == Form::kPingPong ? 2 : 1); ++s) {
    sets_[s].clear();
    for (size_t i = 0; i < tensors; ++i) {
      sets_[s].push_back(std::make_unique<DeviceBuffer>());
      OMNISIFT_RETURN_IF_ERROR(sets_[s].back()->allocate(bytes));
    }
  }
  return Status::Ok();
}

void DeviceKv::commit(int64_t n) {
  length_ += n;
  if (form_ == Form::kPingPong) past_set_ = 1 - past_set_;
}

Status DeviceKv::read(size_t i, std::vector<unsigned char>& host) const {
  host.resize(static_cast<size_t>(kv_heads_ * length_) * row_bytes_);
  if (length_ == 0) return Status::Ok();
  const size_t width = static_cast<size_t>(length_) * row_bytes_;   // one head's valid rows
  OMNISIFT_RETURN_IF_ERROR(cuda(cudaMemcpy2DAsync(host.data(), width, past(i), static_cast<size_t>(pitch_rows()) * row_bytes_,
                                                  width, static_cast<size_t>(kv_heads_), cudaMemcpyDeviceToHost, stream_),
                                "KV cache to host"));
  return cuda(cudaStreamSynchronize(stream_), "KV cache to host");
}

Status DeviceKv::write(size_t i, const std::vector<unsigned char>& host, int64_t length) {
  if (length == 0) return Status::Ok();
  const size_t width = static_cast<size_t>(length) * row_bytes_;
  const size_t pitch = form_ == Form::kInPlace ? static_cast<size_t>(rows_) * row_bytes_ : width;   // packed: the new length
  OMNISIFT_RETURN_IF_ERROR(cuda(cudaMemcpy2DAsync(past(i), pitch, host.data(), width, width, static_cast<size_t>(kv_heads_),
                                                  cudaMemcpyHostToDevice, stream_),
                                "KV cache to device"));
  return cuda(cudaStreamSynchronize(stream_), "KV cache to device");   // `host` is reused for the next tensor
}

Status DeviceKv::drop(int64_t start, int64_t stop) {
  OMNISIFT_RETURN_IF_ERROR(check_drop(start, stop, length_));
  if (start == stop) return Status::Ok();
  const int64_t kept = length_ - (stop - start);
  std::vector<unsigned char> host;
  for (size_t i = 0; i < sets_[past_set_].size(); ++i) {
    OMNISIFT_RETURN_IF_ERROR(read(i, host));
    OMNISIFT_RETURN_IF_ERROR(write(i, drop_rows(host, kv_heads_, length_, row_bytes_, start, stop), kept));
  }
  length_ = kept;
  return Status::Ok();
}

Status DeviceKv::rotate(int64_t delta, const std::vector<double>& inv_freq) {
  OMNISIFT_RETURN_IF_ERROR(check_rotate(head_dim_, inv_freq));
  if (delta == 0 || length_ == 0) return Status::Ok();
  const int64_t rows = kv_heads_ * length_;
  std::vector<unsigned char> host;
  for (size_t i = 0; i < sets_[past_set_].size(); i += 2) {   // keys: past_key_values.{l}.key come first in each pair
    OMNISIFT_RETURN_IF_ERROR(read(i, host));
    if (fp16_) {
      std::vector<uint16_t> keys(host.size() / 2);
      std::memcpy(keys.data(), host.data(), host.size());
      rotate_rows_f16(keys.data(), rows, head_dim_, delta, inv_freq);
      std::memcpy(host.data(), keys.data(), host.size());
    } else {
      std::vector<float> keys(host.size() / 4);
      std::memcpy(keys.data(), host.data(), host.size());
      rotate_rows_f32(keys.data(), rows, head_dim_, delta, inv_freq);
      std::memcpy(host.data(), keys.data(), host.size());
    }
    OMNISIFT_RETURN_IF_ERROR(write(i, host, length_));
  }
  return Status::Ok();
}

}  // namespace omnisift::trt
