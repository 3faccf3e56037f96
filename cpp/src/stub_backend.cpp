#include "omnisift/stub_backend.h"

#include <algorithm>
#include <string>

namespace omnisift {

std::atomic<int64_t> StubEngines::loads_{0};

StubEngines::StubEngines(const Manifest& manifest, int kept_per_chunk, std::vector<int64_t> script)
    : dims(manifest.dims), kept(kept_per_chunk), script(std::move(script)) {
  ++loads_;
}

std::shared_ptr<StubEngines> StubEngines::load(const Manifest& manifest, int kept_per_chunk, std::vector<int64_t> script) {
  return std::make_shared<StubEngines>(manifest, kept_per_chunk, std::move(script));
}

Result<std::unique_ptr<Backend>> StubEngines::open_backend() {
  return std::unique_ptr<Backend>(std::make_unique<StubBackend>(shared_from_this()));
}

StubBackend::StubBackend(const Manifest& manifest, int kept_per_chunk, std::vector<int64_t> script)
    : StubBackend(StubEngines::load(manifest, kept_per_chunk, std::move(script))) {}

StubBackend::StubBackend(std::shared_ptr<const StubEngines> engines)
    : engines_(std::move(engines)), dims_(engines_->dims), kept_(engines_->kept), script_(engines_->script) {}

Status StubBackend::encode_video(const std::vector<float>& pixel_values, std::vector<float>& video_embeds) {
  if (pixel_values.size() != static_cast<size_t>(dims_.chunk_patches()) * dims_.patch_dim)
    return InvalidArgument("stub vision encoder: pixel_values of the wrong size");
  video_embeds.assign(static_cast<size_t>(dims_.chunk_video_tokens()) * dims_.hidden, 0.0f);
  return Status::Ok();
}

Status StubBackend::encode_audio(const std::vector<float>& mel, int64_t valid_frames, std::vector<float>& audio_embeds) {
  if (mel.size() != static_cast<size_t>(dims_.n_mels) * dims_.window_frames || valid_frames < 1 ||
      valid_frames > dims_.window_frames)
    return InvalidArgument("stub audio encoder: input_features of the wrong size");
  audio_embeds.assign(static_cast<size_t>(dims_.window_audio_tokens) * dims_.hidden, 0.0f);
  return Status::Ok();
}

Status StubBackend::compress(const std::vector<float>&, const std::vector<float>&, const Positions& chunk_positions,
                             int64_t valid_grids, int64_t valid_audio_tokens, CompressorOutput& out) {
  const int64_t real = valid_grids * dims_.tokens_per_frame() + valid_audio_tokens;
  const int k = static_cast<int>(std::min<int64_t>(kept_, real));   // a short last chunk keeps fewer
  if (chunk_positions.n < kept_ || valid_grids < 1 || valid_grids > dims_.grids_per_chunk)
    return InvalidArgument("stub compressor: chunk shorter than K");
  out.kept_embeds.assign(static_cast<size_t>(k) * dims_.hidden, 0.0f);
  out.kept_positions.n = k;
  out.kept_positions.data.clear();
  for (int row = 0; row < 3; ++row)
    for (int i = 0; i < k; ++i) out.kept_positions.data.push_back(chunk_positions.at(row, i));
  out.kept_index.clear();
  for (int i = 0; i < k; ++i) out.kept_index.push_back(i);
  return Status::Ok();
}

Status StubBackend::decode(const std::vector<float>& embeds, const Positions& positions, std::vector<float>* logits) {
  if (embeds.size() != static_cast<size_t>(positions.n) * dims_.hidden || positions.n <= 0)
    return InvalidArgument("stub decoder: embeds and positions disagree");
  BackendCall call;
  call.n = positions.n;
  call.past_length = kv_length_;
  call.positions = positions;
  call.logits = logits != nullptr;
  calls_.push_back(std::move(call));
  kv_length_ += positions.n;
  if (positions.n > 1) since_prefill_ = 0;
  const int64_t k = since_prefill_++;
  if (logits == nullptr) return Status::Ok();   // a chunk prefill: nothing reads them
  logits->assign(static_cast<size_t>(dims_.vocab), 0.0f);
  if (!script_.empty()) {
    const int64_t token = script_[static_cast<size_t>(k) % script_.size()];
    if (token >= 0 && token < dims_.vocab) (*logits)[static_cast<size_t>(token)] = 1.0f;
  }
  return Status::Ok();
}

Status StubBackend::drop_kv(int64_t start, int64_t stop) {
  if (start < 0 || stop < start || stop > kv_length_) return InvalidArgument("stub decoder: drop outside the cache");
  BackendCall call;
  call.kind = BackendCall::Kind::kDrop;
  call.start = start;
  call.stop = stop;
  calls_.push_back(std::move(call));
  kv_length_ -= stop - start;
  return Status::Ok();
}

Status StubBackend::rotate_kv(int64_t delta, const std::vector<double>& inv_freq) {
  if (inv_freq.size() != static_cast<size_t>(dims_.head_dim / 2))
    return InvalidArgument("stub decoder: inv_freq must have head_dim / 2 values");
  BackendCall call;   // the stub caches no keys: the call is recorded for the golden comparison
  call.kind = BackendCall::Kind::kRotate;
  call.delta = delta;
  call.inv_freq = inv_freq;
  calls_.push_back(std::move(call));
  return Status::Ok();
}

Status StubBackend::reset() {
  kv_length_ = 0;
  since_prefill_ = 0;
  calls_.clear();
  return Status::Ok();
}

}  // namespace omnisift
