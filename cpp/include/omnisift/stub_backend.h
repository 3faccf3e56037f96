// A deterministic stand-in backend: no model, the pipeline's bookkeeping only.
//
// Encoders return zeros of the manifest's shapes; the compressor keeps the first K tokens of a
// chunk (positions = the chunk's first K positions); the decoder records every call and returns
// logits whose argmax is script[k % script.size()], k counting the calls since the last prefill
// (a call of more than one token, which gives k = 0): so every answer starts at script[0].
// Golden files record the same rule run through Python's runtime, so the two pipelines' decoder
// calls can be compared.
// Also what the example app runs when TensorRT is not built.
#pragma once

#include <cstdint>
#include <vector>

#include "omnisift/backend.h"
#include "omnisift/manifest.h"

namespace omnisift {

struct DecoderCall {
  int64_t n = 0;              // tokens appended
  int64_t past_length = 0;    // KV length before the call
  Positions positions;
};

class StubBackend : public Backend {
 public:
  StubBackend(const Manifest& manifest, int kept_per_chunk, std::vector<int64_t> script);

  Status encode_video(const std::vector<float>& pixel_values, std::vector<float>& video_embeds) override;
  Status encode_audio(const std::vector<float>& mel, std::vector<float>& audio_embeds) override;
  Status compress(const std::vector<float>& video_embeds, const std::vector<float>& audio_embeds,
                  const Positions& chunk_positions, CompressorOutput& out) override;
  Status decode(const std::vector<float>& embeds, const Positions& positions, std::vector<float>* logits) override;
  Status drop_kv(int64_t start, int64_t stop) override;
  Status rotate_kv(int64_t delta, const std::vector<double>& inv_freq) override;
  Status reset() override;
  int64_t kv_length() const override { return kv_length_; }

  const std::vector<DecoderCall>& calls() const { return calls_; }

 private:
  Dims dims_;
  int kept_;
  std::vector<int64_t> script_;
  int64_t kv_length_ = 0;
  int64_t since_prefill_ = 0;
  std::vector<DecoderCall> calls_;
};

}  // namespace omnisift
