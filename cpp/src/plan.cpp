#include "omnisift/plan.h"

#include <algorithm>

namespace omnisift {

Result<ChunkBudget> ChunkBudget::create(const Manifest& manifest, double ratio) {
  OMNISIFT_ASSIGN_OR_RETURN(RatioPlan plan, manifest.ratio_plan(ratio));
  ChunkBudget b;
  b.kept_per_chunk = plan.kept_total;
  b.kept_video = plan.kept_video;
  b.kept_audio = plan.kept_audio;
  b.uncompressed_per_chunk = manifest.dims.chunk_tokens();
  b.max_context = manifest.max_context;
  return b;
}

int64_t ChunkBudget::max_chunks(int64_t prefix_tokens, int64_t reserve) const {
  const int64_t room = max_context - prefix_tokens - reserve;
  if (room <= 0 || kept_per_chunk <= 0) return 0;
  return room / kept_per_chunk;
}

Result<DecoderProfiles> DecoderProfiles::create(const EngineEntry& decoder) {
  if (decoder.profiles.empty())
    return DataLoss("the decoder engine's build record lists no optimization profiles; build the engines again");
  for (const EngineProfile& p : decoder.profiles)
    if (!p.axes.count("sequence_length") || !p.axes.count("past_sequence_length"))
      return DataLoss("the decoder engine's profile \"" + p.name + "\" has no sequence_length / past_sequence_length "
                      "ranges; build the engines again with this omnisift-edge");
  DecoderProfiles d;
  d.profiles_ = decoder.profiles;
  return d;
}

Result<DecoderProfiles::Piece> DecoderProfiles::choose(int64_t past, int64_t n) const {
  int best = -1;
  int64_t best_take = 0;
  bool best_decode = false;
  for (size_t i = 0; i < profiles_.size(); ++i) {
    const std::vector<int64_t>& seq = profiles_[i].axes.at("sequence_length");
    const std::vector<int64_t>& pst = profiles_[i].axes.at("past_sequence_length");
    if (!(pst[0] <= past && past <= pst[2] && seq[0] <= 1 && 1 <= seq[2])) continue;
    const int64_t take = std::min(n, seq[2]);
    const bool decode = n == 1 && seq[2] == 1;
    if (best < 0 || take > best_take || (take == best_take && decode && !best_decode)) {
      best = static_cast<int>(i);
      best_take = take;
      best_decode = decode;
    }
  }
  if (best < 0)
    return ContextFull("no decoder profile of these engines holds " + std::to_string(past) +
                       " cached tokens; build the engines with a larger --max-context, or ask sooner");
  return Piece{best, best_take};
}

Result<std::vector<DecoderProfiles::Piece>> DecoderProfiles::plan(int64_t past, int64_t n) const {
  std::vector<Piece> pieces;
  while (n > 0) {
    OMNISIFT_ASSIGN_OR_RETURN(Piece piece, choose(past, n));
    pieces.push_back(piece);
    past += piece.tokens;
    n -= piece.tokens;
  }
  return pieces;
}

}  // namespace omnisift
