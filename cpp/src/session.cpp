#include "omnisift/session.h"

#include <algorithm>
#include <filesystem>

namespace omnisift {

namespace fs = std::filesystem;

Result<std::shared_ptr<const ExportFolder>> ExportFolder::open(const std::string& folder, bool verify_checksums) {
  OMNISIFT_ASSIGN_OR_RETURN(Manifest manifest, read_manifest(folder, verify_checksums));
  const fs::path tok_dir = fs::path(folder) / manifest.tokenizer_folder;
  OMNISIFT_ASSIGN_OR_RETURN(Tokenizer tokenizer, Tokenizer::from_file((tok_dir / "tokenizer.json").string()));
  OMNISIFT_ASSIGN_OR_RETURN(
      TextEmbeddings embeddings,
      TextEmbeddings::open((fs::path(folder) / manifest.embeddings_file).string(), manifest.embeddings_tensor,
                           manifest.dims.vocab, manifest.dims.hidden));
  auto out = std::make_shared<ExportFolder>(std::move(manifest), std::move(tokenizer), std::move(embeddings));
  out->path_ = folder;
  OMNISIFT_ASSIGN_OR_RETURN(ChatPrompt prompt, ChatPrompt::create(out->tokenizer_, out->manifest_.layout, tok_dir.string()));
  out->prompt_.emplace(std::move(prompt));
  return std::shared_ptr<const ExportFolder>(std::move(out));
}

std::shared_ptr<const ExportFolder> ExportFolder::from_parts(Manifest manifest, Tokenizer tokenizer, TextEmbeddings embeddings) {
  auto out = std::make_shared<ExportFolder>(std::move(manifest), std::move(tokenizer), std::move(embeddings));
  out->prompt_.emplace(ChatPrompt::unchecked(out->tokenizer_, out->manifest_.layout));
  return out;
}

Session::Session(std::shared_ptr<const ExportFolder> folder, Backend& backend, SessionOptions options,
                 StreamingLayout layout, ChunkBudget budget)
    : folder_(std::move(folder)), backend_(backend), options_(std::move(options)), layout_(std::move(layout)),
      budget_(budget), ledger_(budget.max_context), mel_(folder_->manifest().layout) {}

Result<std::unique_ptr<Session>> Session::create(std::shared_ptr<const ExportFolder> folder, Backend& backend,
                                                 SessionOptions options) {
  if (!folder) return InvalidArgument("no export folder");
  const Manifest& m = folder->manifest();
  if (options.max_new_tokens < 1) return InvalidArgument("max_new_tokens must be >= 1");
  if (options.stop_token_ids.empty()) options.stop_token_ids = m.stop_token_ids;
  OMNISIFT_ASSIGN_OR_RETURN(ChunkBudget budget, ChunkBudget::create(m, options.ratio));
  OMNISIFT_ASSIGN_OR_RETURN(std::vector<int64_t> prefix, folder->prompt().prefix_ids(options.system));
  OMNISIFT_ASSIGN_OR_RETURN(StreamingLayout layout,
                            StreamingLayout::create(m.layout, std::move(prefix), m.dims.grid_h, m.dims.grid_w));
  OMNISIFT_RETURN_IF_ERROR(backend.reset());
  std::unique_ptr<Session> s(new Session(folder, backend, std::move(options), std::move(layout), budget));
  std::vector<float> logits;
  const Span& span = s->layout_.prefix();
  OMNISIFT_RETURN_IF_ERROR(s->step(&span.ids, nullptr, span.positions, "the system prompt", logits));
  return s;
}

Status Session::guard() const {
  if (broken_)
    return FailedPrecondition("an earlier backend error left this session's KV cache out of step; start a new session");
  return Status::Ok();
}

// One decoder call: ids (embedded here) or embeds, checked against max_context first.
Status Session::step(const std::vector<int64_t>* ids, const std::vector<float>* embeds, const Positions& positions,
                     const std::string& what, std::vector<float>& logits) {
  OMNISIFT_RETURN_IF_ERROR(ledger_.reserve(positions.n, what));
  std::vector<float> looked_up;
  if (ids) {
    OMNISIFT_RETURN_IF_ERROR(folder_->embeddings().lookup(*ids, looked_up));
    embeds = &looked_up;
  }
  Status st = backend_.decode(*embeds, positions, logits);
  if (!st.ok()) {
    broken_ = true;
    return st;
  }
  if (logits.size() != static_cast<size_t>(folder_->manifest().dims.vocab)) {
    broken_ = true;
    return BackendError("the decoder returned " + std::to_string(logits.size()) + " logits, expected dims.vocab");
  }
  ledger_.commit(positions.n);
  return Status::Ok();
}

Status Session::push_chunk(const std::vector<float>& pixel_values, const std::vector<float>& mel) {
  OMNISIFT_RETURN_IF_ERROR(guard());
  if (layout_.closed())
    return FailedPrecondition("the video span is closed once a question was asked; start a new session for new video");
  const Dims& d = folder_->manifest().dims;
  const size_t want_pixels = static_cast<size_t>(d.chunk_patches()) * d.patch_dim;
  const size_t want_mel = static_cast<size_t>(d.n_mels) * d.window_frames;
  if (pixel_values.size() != want_pixels || mel.size() != want_mel)
    return InvalidArgument("the exported graphs take whole chunks: pixel patches [" + std::to_string(d.chunk_patches()) +
                           ", " + std::to_string(d.patch_dim) + "] and a log-mel window [" + std::to_string(d.n_mels) +
                           ", " + std::to_string(d.window_frames) + "] (got " + std::to_string(pixel_values.size()) +
                           " and " + std::to_string(mel.size()) + " values)");
  const std::string what = "chunk " + std::to_string(chunks());
  OMNISIFT_RETURN_IF_ERROR(ledger_.reserve(budget_.kept_per_chunk, what));
  std::vector<float> video, audio, logits;
  OMNISIFT_RETURN_IF_ERROR(backend_.encode_video(pixel_values, video));
  OMNISIFT_RETURN_IF_ERROR(backend_.encode_audio(mel, audio));
  if (video.size() != static_cast<size_t>(d.chunk_video_tokens()) * d.hidden ||
      audio.size() != static_cast<size_t>(d.window_audio_tokens) * d.hidden)
    return BackendError("an encoder returned embeddings of the wrong size");
  OMNISIFT_ASSIGN_OR_RETURN(ChunkLayout chunk, layout_.chunk(d.grids_per_chunk, d.window_audio_tokens));
  CompressorOutput kept;
  Status st = backend_.compress(video, audio, chunk.positions, kept);
  if (st.ok() && (kept.kept_positions.n != budget_.kept_per_chunk ||
                  kept.kept_embeds.size() != static_cast<size_t>(budget_.kept_per_chunk) * d.hidden))
    st = BackendError("the compressor kept " + std::to_string(kept.kept_positions.n) + " tokens, the ratio plan says " +
                      std::to_string(budget_.kept_per_chunk));
  if (!st.ok()) {
    broken_ = true;   // the layout has counted the chunk, the KV cache has not
    return st;
  }
  return step(nullptr, &kept.kept_embeds, kept.kept_positions, what, logits);
}

Status Session::run_ready_chunks() {
  const Manifest& m = folder_->manifest();
  const size_t per_chunk = static_cast<size_t>(m.layout.raw_frames_per_chunk());
  while (frames_.size() >= per_chunk && mel_.ready()) {
    std::vector<FrameView> views;
    for (size_t i = 0; i < per_chunk; ++i) views.push_back({frames_[i].data(), m.height, m.width});
    OMNISIFT_ASSIGN_OR_RETURN(std::vector<float> pixels, chunk_patches(views, m.layout, m.height, m.width));
    frames_.erase(frames_.begin(), frames_.begin() + static_cast<std::ptrdiff_t>(per_chunk));
    OMNISIFT_RETURN_IF_ERROR(push_chunk(pixels, mel_.pop()));
  }
  return Status::Ok();
}

Status Session::push_frame(const FrameView& frame) {
  OMNISIFT_RETURN_IF_ERROR(guard());
  if (layout_.closed()) return FailedPrecondition("the video span is closed once a question was asked; start a new session");
  const Manifest& m = folder_->manifest();
  if (!frame.rgb || frame.height != m.height || frame.width != m.width)
    return InvalidArgument("frame is " + std::to_string(frame.height) + "x" + std::to_string(frame.width) +
                           " (HxW), the export takes " + std::to_string(m.height) + "x" + std::to_string(m.width) +
                           " RGB; capture or resize frames to that size");
  const size_t max_waiting = static_cast<size_t>(4 * m.layout.raw_frames_per_chunk());
  if (frames_.size() >= max_waiting)
    return FailedPrecondition("the video runs more than " + std::to_string(max_waiting / 2) +
                              " s ahead of the audio; push audio (silence when there is none) with push_audio");
  frames_.emplace_back(frame.rgb, frame.rgb + static_cast<size_t>(m.height) * m.width * 3);
  return run_ready_chunks();
}

Status Session::push_audio(const float* pcm, size_t n) {
  OMNISIFT_RETURN_IF_ERROR(guard());
  if (layout_.closed()) return FailedPrecondition("the video span is closed once a question was asked; start a new session");
  OMNISIFT_ASSIGN_OR_RETURN(int completed, mel_.push(pcm, n));
  (void)completed;
  return run_ready_chunks();
}

Result<Answer> Session::ask(const std::string& question, const TokenCallback& on_token) {
  OMNISIFT_RETURN_IF_ERROR(guard());
  const ChatPrompt& prompt = folder_->prompt();
  Result<std::vector<int64_t>> ids = layout_.closed() ? prompt.followup_ids(question) : prompt.suffix_ids(question);
  if (!ids.ok()) return ids.status();
  return ask_ids(*ids, on_token);
}

Result<Answer> Session::ask_ids(const std::vector<int64_t>& ids, const TokenCallback& on_token) {
  OMNISIFT_RETURN_IF_ERROR(guard());
  std::vector<float> logits;
  if (!layout_.closed()) {
    if (layout_.chunks().empty())
      return FailedPrecondition("no whole chunk was pushed yet (4 frames and 2 s of audio); push media before asking");
    OMNISIFT_RETURN_IF_ERROR(ledger_.reserve(static_cast<int64_t>(ids.size()) + 2, "the question"));
    OMNISIFT_ASSIGN_OR_RETURN(Span span, layout_.close(ids));
    dropped_frames_ += static_cast<int64_t>(frames_.size());
    frames_.clear();
    OMNISIFT_RETURN_IF_ERROR(step(&span.ids, nullptr, span.positions, "the question", logits));
  } else {
    OMNISIFT_RETURN_IF_ERROR(check_text_ids(folder_->manifest().layout, ids, "follow-up ids"));
    OMNISIFT_RETURN_IF_ERROR(ledger_.reserve(static_cast<int64_t>(ids.size()), "the follow-up question"));
    OMNISIFT_ASSIGN_OR_RETURN(Positions pos, layout_.text(static_cast<int64_t>(ids.size())));
    OMNISIFT_RETURN_IF_ERROR(step(&ids, nullptr, pos, "the follow-up question", logits));
  }
  Answer answer;
  TokenStreamDecoder text(folder_->tokenizer(), /*skip_special_tokens=*/true);
  const auto& stops = options_.stop_token_ids;
  for (int k = 0; k < options_.max_new_tokens; ++k) {
    const int64_t token = std::max_element(logits.begin(), logits.end()) - logits.begin();   // first max, as numpy
    TokenEvent event{token, text.push(token), std::find(stops.begin(), stops.end(), token) != stops.end()};
    answer.ids.push_back(token);
    answer.text += event.text;
    const bool more = on_token ? on_token(event) : true;
    if (event.stop || !more) break;
    const std::vector<int64_t> one{token};
    OMNISIFT_RETURN_IF_ERROR(ledger_.reserve(1, "answer token " + std::to_string(k)));
    OMNISIFT_ASSIGN_OR_RETURN(Positions pos, layout_.text(1));
    OMNISIFT_RETURN_IF_ERROR(step(&one, nullptr, pos, "answer token " + std::to_string(k), logits));
  }
  const std::string tail = text.finish();
  answer.text += tail;
  if (!tail.empty() && on_token) on_token(TokenEvent{-1, tail, false});
  return answer;
}

}  // namespace omnisift
