// A deterministic stand-in backend: no model, the pipeline's bookkeeping only.
//
// Encoders return zeros of the manifest's shapes; the compressor keeps the first K tokens of a
// chunk (positions = the chunk's first K positions; a short last chunk: the first min(K, real tokens)); the decoder returns, when logits are asked
// for, logits whose argmax is script[k % script.size()], k counting the decoder calls since the
// last prefill (a call of more than one token, which gives k = 0): so every answer starts at
// script[0]. Every decoder call, drop_kv and rotate_kv is recorded in order (calls()).
// Golden files record the same rule run through Python's runtime, so the two pipelines' decoder
// calls can be compared.
// Also what the example app runs when TensorRT is not built.
// Sharing: StubEngines is what a stub "loads" once (dims, K, the script), counted process-wide
// (StubEngines::loads()) so tests can show that N sessions on one StubEngines load once; each
// StubBackend it opens keeps its own KV length and call record, as a TensorRT session keeps its
// own execution context and KV cache.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "omnisift/backend.h"
#include "omnisift/manifest.h"

namespace omnisift {

// One backend call on the KV cache, as golden/schedule.json records Python's.
struct BackendCall {
  enum class Kind { kDecode, kDrop, kRotate };
  Kind kind = Kind::kDecode;
  int64_t n = 0;              // decode: tokens appended
  int64_t past_length = 0;    // decode: KV length before the call
  Positions positions;        // decode: as fed (minus the re-basing base)
  bool logits = false;        // decode: whether logits were asked for
  int64_t start = 0, stop = 0;   // drop: rows [start, stop)
  int64_t delta = 0;             // rotate
  std::vector<double> inv_freq;  // rotate
};

// The stub's "engines": loaded once, shared by the StubBackends opened on it.
class StubEngines : public SharedEngines, public std::enable_shared_from_this<StubEngines> {
 public:
  // One load (counted by loads()).
  static std::shared_ptr<StubEngines> load(const Manifest& manifest, int kept_per_chunk, std::vector<int64_t> script);
  Result<std::unique_ptr<Backend>> open_backend() override;
  // Loads so far in this process (each StubEngines::load, and each StubBackend made from a manifest).
  static int64_t loads() { return loads_.load(); }

  StubEngines(const Manifest& manifest, int kept_per_chunk, std::vector<int64_t> script);   // use load()
  const Dims dims;
  const int kept;
  const std::vector<int64_t> script;

 private:
  static std::atomic<int64_t> loads_;
};

class StubBackend : public Backend {
 public:
  // Loads its own engines (one load).
  StubBackend(const Manifest& manifest, int kept_per_chunk, std::vector<int64_t> script);
  // A session's backend on shared engines (no load).
  explicit StubBackend(std::shared_ptr<const StubEngines> engines);

  Status encode_video(const std::vector<float>& pixel_values, std::vector<float>& video_embeds) override;
  Status encode_audio(const std::vector<float>& mel, int64_t valid_frames, std::vector<float>& audio_embeds) override;
  Status compress(const std::vector<float>& video_embeds, const std::vector<float>& audio_embeds,
                  const Positions& chunk_positions, int64_t valid_grids, int64_t valid_audio_tokens,
                  CompressorOutput& out) override;
  Status decode(const std::vector<float>& embeds, const Positions& positions, std::vector<float>* logits) override;
  Status drop_kv(int64_t start, int64_t stop) override;
  Status rotate_kv(int64_t delta, const std::vector<double>& inv_freq) override;
  Status reset() override;
  int64_t kv_length() const override { return kv_length_; }

  const std::vector<BackendCall>& calls() const { return calls_; }
  const std::shared_ptr<const StubEngines>& engines() const { return engines_; }

 private:
  std::shared_ptr<const StubEngines> engines_;
  const Dims& dims_;
  const int kept_;
  const std::vector<int64_t>& script_;
  int64_t kv_length_ = 0;
  int64_t since_prefill_ = 0;
  std::vector<BackendCall> calls_;
};

}  // namespace omnisift
