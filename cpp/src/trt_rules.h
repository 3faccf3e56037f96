// What the TensorRT backend decides without a GPU: which engine builds this library may run on
// which GPU, which optimization profile feeds a step of the in-place decoder, and the rare KV-cache
// edits it does on a host copy (drop rows, re-base keys). No TensorRT or CUDA in here: this file
// is part of every build of the library, so ctest (test_trt_rules) checks these rules on machines
// without TensorRT; trt_backend.cpp calls them. Internal to the library (src/).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "omnisift/manifest.h"
#include "omnisift/status.h"

namespace omnisift::trt {

// The build's GPU against this GPU (name, "major.minor"), as Python's runtime/trt_env.check_compatible:
// a TensorRT-RTX build lists the capabilities it was compiled for ("8.6,8.9,12.0") and runs on any
// of them; a plain TensorRT build runs only on the capability it was built on. Unsupported (one
// line naming the rebuild) otherwise.
Status check_compute_capability(const EngineBuild& build, const std::string& gpu_name, const std::string& gpu_cc);

// The build's flavour and TensorRT major.minor against the library this was compiled and linked
// with (`rtx_library`: TensorRT-RTX; major/minor: getInferLibMajorVersion/MinorVersion()).
Status check_library(const EngineBuild& build, bool rtx_library, int major, int minor);

// One enqueue of decoder_scatter: `tokens` new rows under optimization profile `profile`, with
// `logits_rows` rows of logits (0: a chunk prefill where the profile allows logits_length 0;
// 1: the last row, wanted or computed and ignored).
struct ScatterPiece {
  int profile;
  int64_t tokens;
  int64_t logits_rows;
};

// decoder_scatter's optimization profiles (builds.<t>.engines.decoder_scatter): the cache is
// static, so a profile is chosen by `sequence_length` alone: the one that feeds the most of the
// step at once (a single token: a profile made for one token, the decode profile), then one that
// allows logits_length 0 when no logits are wanted. A step longer than every profile is fed in pieces.
class ScatterProfiles {
 public:
  // DataLoss when a profile lacks the sequence_length / logits_length ranges, or none takes one
  // token with one row of logits (a decode step).
  static Result<ScatterProfiles> create(const EngineEntry& decoder_scatter);
  // The pieces of a step of n new tokens; `want_logits`: the last piece returns the last row's logits.
  Result<std::vector<ScatterPiece>> plan(int64_t n, bool want_logits) const;
  // The longest piece any profile takes (the size of the embeds staging buffer).
  int64_t max_tokens() const;

 private:
  std::vector<EngineProfile> profiles_;
};

// Drop and rotate arguments against the cached length; InvalidArgument naming the numbers.
Status check_drop(int64_t start, int64_t stop, int64_t length);
Status check_rotate(int64_t head_dim, const std::vector<double>& inv_freq);

// One cache tensor copied to the host, packed [heads, length, head_dim] of `row_bytes` per row;
// returns it without rows [start, stop) of every head, packed [heads, length - (stop - start), head_dim].
std::vector<unsigned char> drop_rows(const std::vector<unsigned char>& packed, int64_t heads, int64_t length,
                                     size_t row_bytes, int64_t start, int64_t stop);

// Keys of `rows` rows [rows, head_dim] rotated in place by -delta positions on every frequency
// (rotate-half layout: element j pairs with j + head_dim/2, angle -delta * inv_freq[j]), computed in
// double precision and rounded once to the cache's type, as Python's runtime/context.rotate_keys
// (numpy: astype(float64), rotate, astype(dtype)). fp16 keys are IEEE half bit patterns.
void rotate_rows_f32(float* keys, int64_t rows, int64_t head_dim, int64_t delta, const std::vector<double>& inv_freq);
void rotate_rows_f16(uint16_t* keys, int64_t rows, int64_t head_dim, int64_t delta, const std::vector<double>& inv_freq);

// IEEE half nearest to a double (ties to even), rounded once as numpy's float64 -> float16 does
// (going through float would round twice and differ on rare values).
uint16_t double_to_half(double value);

}  // namespace omnisift::trt
