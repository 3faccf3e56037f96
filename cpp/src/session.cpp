#include "omnisift/session.h"

#include <algorithm>
#include <cmath>
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
                 StreamingLayout layout, ChunkBudget budget, KvWindow window)
    : folder_(std::move(folder)), backend_(backend), options_(std::move(options)), layout_(std::move(layout)),
      budget_(budget), window_(std::move(window)), mel_(folder_->manifest().layout) {
  const Manifest& m = folder_->manifest();
  inv_freq_ = inv_freq(m.rope.theta, m.dims.head_dim);
}

Result<std::unique_ptr<Session>> Session::create(std::shared_ptr<const ExportFolder> folder, Backend& backend,
                                                 SessionOptions options) {
  if (!folder) return InvalidArgument("no export folder");
  const Manifest& m = folder->manifest();
  if (options.max_new_tokens < 1)
    return InvalidArgument("max_new_tokens must be at least 1 (got " + std::to_string(options.max_new_tokens) + ")");
  OMNISIFT_RETURN_IF_ERROR(options.context.validate());
  if (options.stop_token_ids.empty()) options.stop_token_ids = m.stop_token_ids;
  OMNISIFT_ASSIGN_OR_RETURN(ChunkBudget budget, ChunkBudget::create(m, options.ratio));
  if (options.max_context > 0) budget.max_context = std::min(budget.max_context, options.max_context);
  if (backend.max_context() > 0) budget.max_context = std::min(budget.max_context, backend.max_context());
  OMNISIFT_ASSIGN_OR_RETURN(std::vector<int64_t> prefix, folder->prompt().prefix_ids(options.system));
  OMNISIFT_RETURN_IF_ERROR(check_window(options.context, m.layout.seconds_per_chunk,
                                        static_cast<int64_t>(prefix.size()) + 2, budget.kept_per_chunk,
                                        budget.max_context));
  OMNISIFT_ASSIGN_OR_RETURN(StreamingLayout layout,
                            StreamingLayout::create(m.layout, std::move(prefix), m.dims.grid_h, m.dims.grid_w));
  KvWindow window(options.context, budget.max_context, m.layout.seconds_per_chunk, m.rope.max_position_embeddings);
  OMNISIFT_RETURN_IF_ERROR(backend.reset());
  std::unique_ptr<Session> s(
      new Session(folder, backend, std::move(options), std::move(layout), budget, std::move(window)));
  const Span& span = s->layout_.prefix();
  OMNISIFT_RETURN_IF_ERROR(s->append_text(span.ids, span.positions, SegmentKind::kPinned, "system prompt",
                                          [] { return Status::Ok(); }, nullptr));
  return s;
}

Result<std::unique_ptr<Session>> Session::create(std::shared_ptr<const ExportFolder> folder,
                                                 std::unique_ptr<Backend> backend, SessionOptions options) {
  if (!backend) return InvalidArgument("no backend");
  OMNISIFT_ASSIGN_OR_RETURN(std::unique_ptr<Session> s, create(std::move(folder), *backend, std::move(options)));
  s->owned_backend_ = std::move(backend);   // backend_ refers to the same object, now owned here
  return s;
}

Result<std::unique_ptr<Session>> Session::create(std::shared_ptr<const ExportFolder> folder, SharedEngines& engines,
                                                 SessionOptions options) {
  OMNISIFT_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, engines.open_backend());
  return create(std::move(folder), std::move(backend), std::move(options));
}

Status Session::guard() const {
  if (broken_)
    return FailedPrecondition("an earlier backend error left this session's KV cache out of step; start a new session");
  return Status::Ok();
}

Result<Session::Plan> Session::plan(const Positions& positions, SegmentKind kind, const std::string& what) const {
  Plan p{window_, {}, 0};
  OMNISIFT_ASSIGN_OR_RETURN(p.drops, p.window.make_room(positions.n, kind, what));
  OMNISIFT_ASSIGN_OR_RETURN(p.delta, p.window.rebase_delta(positions.max()));
  OMNISIFT_RETURN_IF_ERROR(backend_.check_append(p.window.length(), positions.n));   // e.g. engine profiles
  return p;
}

Status Session::check_room(int64_t n, SegmentKind kind, const std::string& what) const {
  KvWindow next = window_;
  OMNISIFT_ASSIGN_OR_RETURN(std::vector<KvDrop> drops, next.make_room(n, kind, what));
  (void)drops;
  return backend_.check_append(next.length(), n);
}

Status Session::run(Plan plan, SegmentKind kind, const std::vector<float>& embeds, const Positions& positions,
                    std::vector<float>* logits) {
  Status st;
  for (const KvDrop& d : plan.drops)
    if (st.ok()) st = backend_.drop_kv(d.start, d.stop);
  if (st.ok() && plan.delta) {
    st = backend_.rotate_kv(plan.delta, inv_freq_);
    plan.window.rebased(plan.delta);
  }
  Positions fed = positions;   // the backend sees positions minus the accumulated base
  for (int64_t& v : fed.data) v -= plan.window.base();
  if (st.ok()) st = backend_.decode(embeds, fed, logits);
  if (st.ok() && logits && logits->size() != static_cast<size_t>(folder_->manifest().dims.vocab))
    st = BackendError("the decoder returned " + std::to_string(logits->size()) + " logits, expected dims.vocab");
  if (!st.ok()) {
    broken_ = true;   // the layout has counted these tokens, the KV cache may not have
    return st;
  }
  plan.window.record(kind, positions);
  window_ = std::move(plan.window);
  return Status::Ok();
}

Result<std::vector<float>> Session::embed(const std::vector<int64_t>& ids) const {
  std::vector<float> out;
  OMNISIFT_RETURN_IF_ERROR(folder_->embeddings().lookup(ids, out));
  return out;
}

Status Session::append_text(const std::vector<int64_t>& ids, const Positions& positions, SegmentKind kind,
                            const std::string& what, const std::function<Status()>& advance,
                            std::vector<float>* logits) {
  OMNISIFT_ASSIGN_OR_RETURN(std::vector<float> embeds, embed(ids));
  OMNISIFT_ASSIGN_OR_RETURN(Plan p, plan(positions, kind, what));   // a refusal changes nothing
  OMNISIFT_RETURN_IF_ERROR(advance());                               // the layout takes the tokens
  return run(std::move(p), kind, embeds, positions, logits);
}

// Media after a question opens a new turn (fresh log-mel); after finish() with no question it is refused.
Status Session::begin_media() {
  if (!finished_) return Status::Ok();
  if (!layout_.closed())
    return FailedPrecondition("the media ended (finish()) and no question followed; ask one first (more media then "
                              "opens a new user turn), or start a new session");
  mel_ = StreamingLogMel(folder_->manifest().layout);
  frames_.clear();
  turn_start_ = chunks();
  finished_ = false;
  return Status::Ok();
}

// After an answer: <|im_end|>\n<|im_start|>user\n<|vision_bos|><|audio_bos|> (Python's ChunkStream.open_turn).
Status Session::open_turn() {
  OMNISIFT_ASSIGN_OR_RETURN(std::vector<int64_t> text, folder_->prompt().turn_prefix_ids());
  // the turn's text and its first chunk, checked together so a refusal leaves no empty turn behind
  OMNISIFT_RETURN_IF_ERROR(window_.check_fits(static_cast<int64_t>(text.size()) + 2 + budget_.kept_per_chunk,
                                              "new turn with its first chunk", SegmentKind::kTurn));
  OMNISIFT_ASSIGN_OR_RETURN(Span span, layout_.next_open_turn(text));
  return append_text(span.ids, span.positions, SegmentKind::kTurn, "turn text",
                     [&] { return layout_.open_turn(text).status(); }, nullptr);
}

Status Session::push_chunk(const std::vector<float>& pixel_values, const std::vector<float>& mel) {
  OMNISIFT_RETURN_IF_ERROR(guard());
  OMNISIFT_RETURN_IF_ERROR(begin_media());
  const Dims& d = folder_->manifest().dims;
  return run_chunk(pixel_values, mel, d.grids_per_chunk, d.window_frames);
}

namespace {

// Exports since issue 25 take a clip's short last chunk through valid-length inputs (audio_encoder's
// valid_frames, the compressor's valid_grids / valid_audio_tokens); older ones take whole chunks only.
bool takes_short_chunks(const Manifest& m) {
  const auto audio = m.graphs.find("audio_encoder");
  return audio != m.graphs.end() && audio->second.inputs.size() > 1;
}

// A short chunk in whole-chunk shapes: the real rows first, then `copies` of them (pixels: the vision
// tower attends within one grid step) or zeros (audio embeddings, positions).
std::vector<float> tiled(const std::vector<float>& real, size_t total) {
  std::vector<float> out(total);
  for (size_t i = 0; i < total; ++i) out[i] = real[i % real.size()];
  return out;
}

}  // namespace

Status Session::run_chunk(const std::vector<float>& pixel_values, const std::vector<float>& mel, int grids,
                          int mel_frames) {
  const Dims& d = folder_->manifest().dims;
  const size_t want_pixels = static_cast<size_t>(grids) * d.grid_h * d.grid_w * d.patch_dim;
  const size_t want_mel = static_cast<size_t>(d.n_mels) * mel_frames;
  if (pixel_values.size() != want_pixels || mel.size() != want_mel)
    return InvalidArgument("the exported graphs take whole chunks: pixel patches [" + std::to_string(d.chunk_patches()) +
                           ", " + std::to_string(d.patch_dim) + "] and a log-mel window [" + std::to_string(d.n_mels) +
                           ", " + std::to_string(d.window_frames) + "] (got " + std::to_string(pixel_values.size()) +
                           " and " + std::to_string(mel.size()) + " values)");
  for (const std::vector<float>* v : {&pixel_values, &mel})
    for (float x : *v)
      if (!std::isfinite(x)) return InvalidArgument("the chunk's pixels or audio features contain NaN or Inf");
  const std::string what = "chunk " + std::to_string(chunks());
  const int64_t k = budget_.kept_per_chunk;   // a short chunk keeps at most this many
  const int64_t audio_tokens = ((mel_frames - 1) / 2 + 1) / 2;   // conv2 (stride 2), then pairs
  if (layout_.closed()) OMNISIFT_RETURN_IF_ERROR(open_turn());   // the first chunk after an answer
  OMNISIFT_RETURN_IF_ERROR(check_room(k, SegmentKind::kChunk, what));   // before the encoders run
  std::vector<float> padded_mel(static_cast<size_t>(d.n_mels) * d.window_frames, 0.0f);   // [n_mels, 200], zeros after
  for (int r = 0; r < d.n_mels; ++r)
    std::copy_n(mel.begin() + static_cast<std::ptrdiff_t>(r) * mel_frames, mel_frames,
                padded_mel.begin() + static_cast<std::ptrdiff_t>(r) * d.window_frames);
  std::vector<float> video, audio;
  OMNISIFT_RETURN_IF_ERROR(backend_.encode_video(tiled(pixel_values, static_cast<size_t>(d.chunk_patches()) * d.patch_dim), video));
  OMNISIFT_RETURN_IF_ERROR(backend_.encode_audio(padded_mel, mel_frames, audio));
  if (video.size() != static_cast<size_t>(d.chunk_video_tokens()) * d.hidden ||
      audio.size() != static_cast<size_t>(d.window_audio_tokens) * d.hidden)
    return BackendError("an encoder returned embeddings of the wrong size");
  const size_t real_video = static_cast<size_t>(grids) * d.tokens_per_frame() * d.hidden;
  std::fill(audio.begin() + audio_tokens * d.hidden, audio.end(), 0.0f);   // padding rows: zeros, as Python feeds
  OMNISIFT_ASSIGN_OR_RETURN(ChunkLayout chunk, layout_.next_chunk(grids, audio_tokens));
  Positions padded_positions{static_cast<int64_t>(d.chunk_tokens()), std::vector<int64_t>(3 * static_cast<size_t>(d.chunk_tokens()), 0)};
  for (int row = 0; row < 3; ++row)
    for (int64_t i = 0; i < chunk.positions.n; ++i) padded_positions.data[static_cast<size_t>(row * d.chunk_tokens() + i)] = chunk.positions.at(row, i);
  CompressorOutput kept;
  OMNISIFT_RETURN_IF_ERROR(backend_.compress(tiled(std::vector<float>(video.begin(), video.begin() + real_video), video.size()),
                                             audio, padded_positions, grids, audio_tokens, kept));
  const int64_t n = static_cast<int64_t>(kept.kept_index.size());
  if (n > k || (n != k && grids == d.grids_per_chunk && mel_frames == d.window_frames) ||
      kept.kept_embeds.size() != static_cast<size_t>(n) * d.hidden)
    return BackendError("the compressor kept " + std::to_string(n) + " tokens, the ratio plan says " + std::to_string(k));
  // positions of the kept tokens: the chunk's, gathered by kept_index (as Python's ChunkStream.push)
  Positions positions;
  positions.n = n;
  positions.data.resize(static_cast<size_t>(3 * n));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t idx = kept.kept_index[static_cast<size_t>(i)];
    if (idx < 0 || idx >= chunk.positions.n)
      return BackendError("the compressor returned kept index " + std::to_string(idx) + " outside the chunk");
    for (int row = 0; row < 3; ++row) positions.data[static_cast<size_t>(row * n + i)] = chunk.positions.at(row, idx);
  }
  if (kept.kept_positions.n == n && kept.kept_positions.data != positions.data)
    return BackendError("the compressor's kept_position_ids disagree with its kept_index");
  OMNISIFT_ASSIGN_OR_RETURN(Plan p, plan(positions, SegmentKind::kChunk, what));   // nothing changed so far
  OMNISIFT_RETURN_IF_ERROR(layout_.chunk(grids, audio_tokens).status());
  OMNISIFT_RETURN_IF_ERROR(run(std::move(p), SegmentKind::kChunk, kept.kept_embeds, positions, nullptr));   // no logits on a chunk
  last_kept_index_ = std::move(kept.kept_index);
  return Status::Ok();
}

Status Session::run_ready_chunks(bool finishing) {
  const Manifest& m = folder_->manifest();
  const size_t per_chunk = static_cast<size_t>(m.layout.raw_frames_per_chunk());
  // a clip's short last chunk (fewer frames, a short window) only once the media ended
  while ((frames_.size() >= per_chunk || (finishing && !frames_.empty())) && mel_.ready()) {
    const int mel_frames = mel_.front_frames();
    if (mel_frames != m.dims.window_frames && !finishing) return Internal("a partial log-mel window reached a chunk");
    const size_t take = std::min(per_chunk, frames_.size());
    std::vector<FrameView> views;
    for (size_t i = 0; i < take; ++i) views.push_back({frames_[i].data(), m.height, m.width});
    OMNISIFT_ASSIGN_OR_RETURN(std::vector<float> pixels, chunk_patches(views, m.layout, m.height, m.width));
    frames_.erase(frames_.begin(), frames_.begin() + static_cast<std::ptrdiff_t>(take));
    const int tp = m.layout.temporal_patch_size;
    OMNISIFT_RETURN_IF_ERROR(run_chunk(pixels, mel_.pop(), (static_cast<int>(take) + tp - 1) / tp, mel_frames));
  }
  if (finishing) mel_.clear();   // audio beyond the video is dropped
  return Status::Ok();
}

Status Session::push_frame(const FrameView& frame) {
  OMNISIFT_RETURN_IF_ERROR(guard());
  const Manifest& m = folder_->manifest();
  if (!frame.rgb || frame.height != m.height || frame.width != m.width)
    return InvalidArgument("frame is " + std::to_string(frame.height) + "x" + std::to_string(frame.width) +
                           " (HxW), the export takes " + std::to_string(m.height) + "x" + std::to_string(m.width) +
                           " RGB; capture or resize frames to that size");
  OMNISIFT_RETURN_IF_ERROR(begin_media());
  const size_t max_waiting = static_cast<size_t>(4 * m.layout.raw_frames_per_chunk());
  if (frames_.size() >= max_waiting)
    return FailedPrecondition("the video runs more than " + std::to_string(max_waiting / 2) +
                              " s ahead of the audio; push audio (silence when there is none) with push_audio");
  frames_.emplace_back(frame.rgb, frame.rgb + static_cast<size_t>(m.height) * m.width * 3);
  return run_ready_chunks();
}

Status Session::push_audio(const float* pcm, size_t n) {
  OMNISIFT_RETURN_IF_ERROR(guard());
  OMNISIFT_RETURN_IF_ERROR(begin_media());
  OMNISIFT_ASSIGN_OR_RETURN(int completed, mel_.push(pcm, n));
  (void)completed;
  return run_ready_chunks();
}

Status Session::finish() {
  OMNISIFT_RETURN_IF_ERROR(guard());
  if (finished_) return Status::Ok();
  finished_ = true;
  if (frames_.empty()) {   // no partial chunk; audio beyond the video is dropped
    mel_.clear();
    return Status::Ok();
  }
  const LayoutSpec& spec = folder_->manifest().layout;
  const size_t per_chunk = static_cast<size_t>(spec.raw_frames_per_chunk());
  int64_t want = 0;
  if (takes_short_chunks(folder_->manifest())) {   // the tail as it is: audio to the video's length
    const int64_t frames = (chunks() - turn_start_) * static_cast<int64_t>(per_chunk) + static_cast<int64_t>(frames_.size());
    want = frames * spec.samples_per_chunk() / static_cast<int64_t>(per_chunk);
  } else {   // older exports: pad to a whole chunk
    while (!frames_.empty() && frames_.size() % per_chunk) frames_.push_back(frames_.back());   // repeat the last frame
    want = (chunks() - turn_start_ + static_cast<int64_t>(frames_.size() / per_chunk)) * spec.samples_per_chunk();
  }
  if (want > mel_.samples_received()) {
    const std::vector<float> zeros(static_cast<size_t>(want - mel_.samples_received()), 0.0f);
    OMNISIFT_ASSIGN_OR_RETURN(int completed, mel_.push(zeros.data(), zeros.size()));
    (void)completed;
  }
  mel_.finish();
  return run_ready_chunks(/*finishing=*/true);
}

Result<Answer> Session::ask(const std::string& question, const TokenCallback& on_token) {
  OMNISIFT_RETURN_IF_ERROR(guard());
  if (question.find_first_not_of(" \t\r\n\f\v") == std::string::npos)
    return InvalidArgument("the question is empty; ask something about the video");
  OMNISIFT_RETURN_IF_ERROR(finish());
  const ChatPrompt& prompt = folder_->prompt();
  // as Python's OmniSession.ask_ids: the first question, a question closing a new turn's video, a follow-up
  Result<std::vector<int64_t>> ids = layout_.closed()    ? prompt.followup_ids(question)
                                     : questions_ == 0  ? prompt.suffix_ids(question)
                                                        : prompt.turn_suffix_ids(question);
  if (!ids.ok()) return ids.status();
  ++questions_;
  return ask_ids(*ids, on_token);
}

Result<Answer> Session::ask_ids(const std::vector<int64_t>& ids, const TokenCallback& on_token) {
  OMNISIFT_RETURN_IF_ERROR(guard());
  std::vector<float> logits;
  if (!layout_.closed()) {
    OMNISIFT_RETURN_IF_ERROR(finish());   // runs a trailing partial chunk (padded for older exports)
    if (layout_.chunks().empty())
      return FailedPrecondition("no chunk was pushed; OmniSIFT needs video with audio before a question");
    OMNISIFT_RETURN_IF_ERROR(window_.check_fits(static_cast<int64_t>(ids.size()) + 2, "question"));
    OMNISIFT_ASSIGN_OR_RETURN(Span span, layout_.next_close(ids));
    OMNISIFT_RETURN_IF_ERROR(append_text(span.ids, span.positions, SegmentKind::kText, "question",
                                         [&] { return layout_.close(ids).status(); }, &logits));
  } else {
    OMNISIFT_RETURN_IF_ERROR(check_text_ids(folder_->manifest().layout, ids, "follow-up ids"));
    OMNISIFT_RETURN_IF_ERROR(window_.check_fits(static_cast<int64_t>(ids.size()), "question"));
    const int64_t n = static_cast<int64_t>(ids.size());
    OMNISIFT_RETURN_IF_ERROR(append_text(ids, layout_.next_text(n), SegmentKind::kText, "question",
                                         [&] { return layout_.text(n).status(); }, &logits));
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
    OMNISIFT_RETURN_IF_ERROR(append_text({token}, layout_.next_text(1), SegmentKind::kText,
                                         "answer token " + std::to_string(k),
                                         [&] { return layout_.text(1).status(); }, &logits));
  }
  return answer;   // an incomplete last character is never shown (TokenStreamDecoder)
}

}  // namespace omnisift
