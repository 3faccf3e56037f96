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

Status KvLedger::reserve(int64_t n, const std::string& what) const {
  if (n < 0) return InvalidArgument("cannot append a negative number of tokens");
  if (length_ + n <= max_context_) return Status::Ok();
  return ContextFull("the KV cache holds " + std::to_string(length_) + " of max_context " + std::to_string(max_context_) +
                     " tokens; " + what + " needs " + std::to_string(n) + " more. Ask sooner (fewer chunks), use a "
                     "lower --ratio, or export and build with a larger --max-context");
}

Result<DecoderProfiles> DecoderProfiles::create(const EngineEntry& decoder) {
  DecoderProfiles d;
  d.profiles_ = decoder.profiles;
  for (size_t i = 0; i < d.profiles_.size(); ++i) {
    if (d.profiles_[i].name == "prefill") d.prefill_ = static_cast<int>(i);
    if (d.profiles_[i].name == "decode") d.decode_ = static_cast<int>(i);
  }
  if (d.prefill_ < 0)
    return DataLoss("the decoder engine's build record has no \"prefill\" profile; build the engines again");
  return d;
}

bool DecoderProfiles::fits(const EngineProfile& p, int64_t past, int64_t n) const {
  const std::pair<const char*, int64_t> values[] = {
      {"sequence_length", n}, {"past_sequence_length", past}, {"total_sequence_length", past + n}, {"batch_size", 1}};
  for (const auto& [axis, v] : values) {
    auto it = p.axes.find(axis);
    if (it != p.axes.end() && (v < it->second[0] || v > it->second[2])) return false;
  }
  return true;
}

Result<int> DecoderProfiles::select(int64_t past, int64_t n) const {
  if (n == 1 && decode_ >= 0 && fits(profiles_[static_cast<size_t>(decode_)], past, n)) return decode_;
  if (fits(profiles_[static_cast<size_t>(prefill_)], past, n)) return prefill_;
  return ContextFull("a decoder step of " + std::to_string(n) + " tokens after " + std::to_string(past) +
                     " cached ones is outside the engine's optimization profiles; build the engines with a larger "
                     "--max-context (or a larger max prompt), or ask sooner");
}

}  // namespace omnisift
