#include "omnisift/layout.h"

#include <algorithm>
#include <limits>
#include <string>

namespace omnisift {

int64_t Positions::max() const {
  int64_t m = std::numeric_limits<int64_t>::min();
  for (int64_t v : data) m = std::max(m, v);
  return m;
}

Positions Positions::text(int64_t start, int64_t n) {
  Positions p;
  p.n = n;
  p.data.resize(static_cast<size_t>(3 * n));
  for (int row = 0; row < 3; ++row)
    for (int64_t i = 0; i < n; ++i) p.data[static_cast<size_t>(row * n + i)] = start + i;
  return p;
}

int64_t ChunkLayout::segment_max() const {
  int64_t m = std::numeric_limits<int64_t>::min();
  const int64_t from = n_audio ? n_video() : 0;
  for (int row = 0; row < 3; ++row)
    for (int64_t i = from; i < positions.n; ++i) m = std::max(m, positions.at(row, i));
  return m;
}

Status check_text_ids(const LayoutSpec& spec, const std::vector<int64_t>& ids, const char* what) {
  const TokenIds& t = spec.tokens;
  const int64_t media[] = {t.audio, t.audio_bos, t.audio_eos, t.vision_bos, t.vision_eos, t.image, t.video};
  for (int64_t id : ids)
    for (int64_t m : media)
      if (id == m)
        return InvalidArgument(std::string(what) + " contains media token id " + std::to_string(id) +
                               "; pass plain prompt text ids (omnisift::ChatPrompt) and let the layout place media tokens");
  return Status::Ok();
}

namespace {

Status steps(const LayoutSpec& spec, int& per_grid, int& gpc, int& apc) {
  per_grid = spec.time_ids_per_grid();
  gpc = spec.grids_per_chunk();
  apc = spec.time_ids_per_chunk();
  if (per_grid <= 0 || gpc <= 0 || per_grid * gpc != apc)
    return Unsupported("unsupported timing: grid steps must tile a chunk; use fps 2 with temporal_patch_size 2");
  return Status::Ok();
}

}  // namespace

Result<std::vector<std::pair<int, int>>> chunk_counts(const LayoutSpec& spec, int n_grids, int n_audio) {
  if (n_grids < 0 || n_audio < 0)
    return InvalidArgument("n_grids and n_audio must be >= 0 (got " + std::to_string(n_grids) + ", " +
                           std::to_string(n_audio) + ")");
  if (n_grids == 0 || n_audio == 0)
    return InvalidArgument("OmniSIFT needs both video and audio (got " + std::to_string(n_grids) + " grid steps, " +
                           std::to_string(n_audio) + " audio tokens)");
  int per_grid, gpc, apc;
  OMNISIFT_RETURN_IF_ERROR(steps(spec, per_grid, gpc, apc));
  const int n_chunks = std::max((n_grids + gpc - 1) / gpc, (n_audio + apc - 1) / apc);
  std::vector<std::pair<int, int>> out;
  for (int c = 0; c < n_chunks; ++c)
    out.emplace_back(std::min(std::max(n_grids - c * gpc, 0), gpc), std::min(std::max(n_audio - c * apc, 0), apc));
  return out;
}

Result<StreamingLayout> StreamingLayout::create(const LayoutSpec& spec, std::vector<int64_t> prefix_ids,
                                                int grid_h, int grid_w) {
  const int s = spec.spatial_merge_size;
  if (s <= 0 || grid_h <= 0 || grid_w <= 0 || grid_h % s || grid_w % s)
    return InvalidArgument("grid_h/grid_w must be positive multiples of the spatial merge size " + std::to_string(s) +
                           " in patches (got " + std::to_string(grid_h) + "x" + std::to_string(grid_w) + ")");
  OMNISIFT_RETURN_IF_ERROR(check_text_ids(spec, prefix_ids, "prefix_ids"));
  StreamingLayout l;
  l.spec_ = spec;
  l.llm_h_ = grid_h / s;
  l.llm_w_ = grid_w / s;
  OMNISIFT_RETURN_IF_ERROR(steps(spec, l.per_grid_, l.gpc_, l.apc_));
  const int64_t p = static_cast<int64_t>(prefix_ids.size());
  l.prefix_.ids = std::move(prefix_ids);
  l.prefix_.ids.push_back(spec.tokens.vision_bos);
  l.prefix_.ids.push_back(spec.tokens.audio_bos);
  l.prefix_.positions = Positions::text(0, p + 2);
  for (int row = 0; row < 3; ++row) l.prefix_.positions.data[static_cast<size_t>(row * (p + 2) + p + 1)] = p;
  l.st_ = p + 1;
  l.length_ = p + 2;
  l.max_ = p;
  l.last_segment_max_ = p;
  return l;
}

Result<ChunkLayout> StreamingLayout::next_chunk(int n_grids, int n_audio) const {
  if (closed_) return FailedPrecondition("chunk() after close(); open a new user turn with open_turn(text_ids) first");
  if (n_grids < 0 || n_grids > gpc_ || n_audio < 0 || n_audio > apc_ || n_grids + n_audio == 0)
    return InvalidArgument("a chunk holds 0-" + std::to_string(gpc_) + " grid steps and 0-" + std::to_string(apc_) +
                           " audio tokens, not both zero (got " + std::to_string(n_grids) + ", " +
                           std::to_string(n_audio) + ")");
  if (turn_chunks() == 0 && (n_grids == 0 || n_audio == 0))
    return InvalidArgument("OmniSIFT needs both video and audio: the first chunk has " + std::to_string(n_grids) +
                           " grid steps and " + std::to_string(n_audio) + " audio tokens; feed frames and audio together");
  if (turn_chunks() > 0) {
    const ChunkLayout& prev = chunks_.back();
    if (prev.n_grids < gpc_ && n_grids)
      return InvalidArgument("chunk " + std::to_string(prev.index) + " had " + std::to_string(prev.n_grids) +
                             " grid steps, so the video ended; later chunks must carry audio only (n_grids=0)");
    if (prev.n_audio < apc_ && n_audio)
      return InvalidArgument("chunk " + std::to_string(prev.index) + " had " + std::to_string(prev.n_audio) +
                             " audio tokens, so the audio ended; later chunks must carry video only (n_audio=0)");
  }
  ChunkLayout c;
  c.index = turn_chunks();   // counts within the turn, as Python's ChunkLayout.index
  c.n_grids = n_grids;
  c.n_audio = n_audio;
  c.tokens_per_frame = tokens_per_frame();
  c.start = length_;
  c.time_start = st_ + static_cast<int64_t>(c.index) * apc_;
  c.time_end = c.time_start + apc_;
  const int64_t n = c.length();
  c.positions.n = n;
  c.positions.data.resize(static_cast<size_t>(3 * n));
  c.input_ids.reserve(static_cast<size_t>(n));
  int64_t i = 0;
  for (int k = 0; k < n_grids; ++k)
    for (int row = 0; row < llm_h_; ++row)
      for (int col = 0; col < llm_w_; ++col, ++i) {
        c.positions.data[static_cast<size_t>(i)] = c.time_start + static_cast<int64_t>(per_grid_) * k;
        c.positions.data[static_cast<size_t>(n + i)] = st_ + row;
        c.positions.data[static_cast<size_t>(2 * n + i)] = st_ + col;
        c.input_ids.push_back(spec_.tokens.video);
      }
  for (int a = 0; a < n_audio; ++a, ++i) {
    for (int row = 0; row < 3; ++row) c.positions.data[static_cast<size_t>(row * n + i)] = c.time_start + a;
    c.input_ids.push_back(spec_.tokens.audio);
  }
  return c;
}

Result<ChunkLayout> StreamingLayout::chunk(int n_grids, int n_audio) {
  OMNISIFT_ASSIGN_OR_RETURN(ChunkLayout c, next_chunk(n_grids, n_audio));
  length_ += c.length();
  max_ = std::max(max_, c.positions.max());
  last_segment_max_ = c.segment_max();
  chunks_.push_back(c);
  return c;
}

Result<Span> StreamingLayout::next_close(const std::vector<int64_t>& suffix_ids) const {
  if (closed_) return FailedPrecondition("close() called twice; append later text with text()");
  if (turn_chunks() == 0)
    return FailedPrecondition("close() before any chunk; OmniSIFT needs at least one chunk of video and audio");
  OMNISIFT_RETURN_IF_ERROR(check_text_ids(spec_, suffix_ids, "suffix_ids"));
  const int64_t eos = last_segment_max_ + 1;   // not the global max: transformers' rule
  const int64_t s = static_cast<int64_t>(suffix_ids.size());
  Span span;
  span.ids = {spec_.tokens.audio_eos, spec_.tokens.vision_eos};
  span.ids.insert(span.ids.end(), suffix_ids.begin(), suffix_ids.end());
  span.positions = Positions::text(eos - 1, s + 2);
  for (int row = 0; row < 3; ++row) span.positions.data[static_cast<size_t>(row * (s + 2))] = eos;
  return span;
}

Result<Span> StreamingLayout::close(const std::vector<int64_t>& suffix_ids) {
  OMNISIFT_ASSIGN_OR_RETURN(Span span, next_close(suffix_ids));
  closed_ = true;
  length_ += span.positions.n;
  max_ = std::max(max_, span.positions.max());
  return span;
}

Result<Span> StreamingLayout::next_open_turn(const std::vector<int64_t>& text_ids) const {
  if (!closed_) return FailedPrecondition("open_turn() while the media span is open; close it with a question first");
  OMNISIFT_RETURN_IF_ERROR(check_text_ids(spec_, text_ids, "turn text ids"));
  const int64_t n = static_cast<int64_t>(text_ids.size());
  const int64_t bos = max_ + 1 + n;
  Span span;
  span.ids = text_ids;
  span.ids.push_back(spec_.tokens.vision_bos);
  span.ids.push_back(spec_.tokens.audio_bos);
  span.positions = Positions::text(max_ + 1, n + 2);
  for (int row = 0; row < 3; ++row) span.positions.data[static_cast<size_t>(row * (n + 2) + n + 1)] = bos;
  return span;
}

Result<Span> StreamingLayout::open_turn(const std::vector<int64_t>& text_ids) {
  OMNISIFT_ASSIGN_OR_RETURN(Span span, next_open_turn(text_ids));
  const int64_t bos = span.positions.max();
  turn_first_ = static_cast<int>(chunks_.size());
  st_ = bos + 1;
  length_ += span.positions.n;
  max_ = bos;
  last_segment_max_ = bos;
  closed_ = false;
  return span;
}

Result<Positions> StreamingLayout::text(int64_t n) {
  if (!closed_) return FailedPrecondition("text() before close(); close the media with close(suffix_ids) first");
  if (n < 0) return InvalidArgument("text token count must be >= 0 (got " + std::to_string(n) + ")");
  Positions p = Positions::text(max_ + 1, n);
  length_ += n;
  max_ += n;
  return p;
}

}  // namespace omnisift
