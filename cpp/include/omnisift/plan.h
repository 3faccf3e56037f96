// Chunk bookkeeping: how many tokens each chunk adds at a ratio and how many chunks fit, and how a
// decoder step runs under the engines' optimization profiles. The KV cache's length and the
// context policies (error, sliding) are window.h's KvWindow.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "omnisift/manifest.h"
#include "omnisift/status.h"

namespace omnisift {

struct ChunkBudget {
  int kept_per_chunk = 0;        // K of the ratio's compressor graph (manifest ratio plan)
  int kept_video = 0, kept_audio = 0;
  int uncompressed_per_chunk = 0;   // 2 * tokens_per_frame + 50
  int64_t max_context = 0;

  static Result<ChunkBudget> create(const Manifest& manifest, double ratio);
  // KV length after the prefix (p + 2 tokens) and `chunks` whole chunks.
  int64_t kv_after(int64_t prefix_tokens, int64_t chunks) const { return prefix_tokens + chunks * kept_per_chunk; }
  // Whole chunks that fit after a prefix of `prefix_tokens`, leaving `reserve` tokens for the
  // question, the answer and follow-ups; 0 when not even one fits.
  int64_t max_chunks(int64_t prefix_tokens, int64_t reserve) const;
  // Seconds of video that fit (2 s per chunk).
  double max_seconds(int64_t prefix_tokens, int64_t reserve, double seconds_per_chunk) const {
    return static_cast<double>(max_chunks(prefix_tokens, reserve)) * seconds_per_chunk;
  }
};

// The decoder engine's optimization profiles (manifest builds.<target>.engines.decoder) and how a
// step of n tokens after `past` cached ones runs under them; the same rule as Python's
// runtime/trt_pipeline.choose_profile: among the profiles whose past range holds `past`, take the
// one that feeds the most tokens at once (for a single token, the decode profile); a step longer
// than that is fed in pieces, down to single decode steps late in the context. A piece no profile
// holds is ContextFull (the engines were built for a shorter context).
class DecoderProfiles {
 public:
  struct Piece {
    int profile;       // index in engine order
    int64_t tokens;
  };
  static Result<DecoderProfiles> create(const EngineEntry& decoder);
  // (profile, tokens to feed now) for n new tokens after `past` cached ones.
  Result<Piece> choose(int64_t past, int64_t n) const;
  // The whole step as pieces.
  Result<std::vector<Piece>> plan(int64_t past, int64_t n) const;
  const std::vector<EngineProfile>& profiles() const { return profiles_; }

 private:
  std::vector<EngineProfile> profiles_;
};

}  // namespace omnisift
