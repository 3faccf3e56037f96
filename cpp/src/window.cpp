#include "omnisift/window.h"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace omnisift {

namespace {
std::string num(double x) {   // as Python's {x:g}
  std::ostringstream s;
  s << x;
  return s.str();
}
}  // namespace

Status ContextPolicy::validate() const {
  if (window_seconds) {
    if (policy != Kind::kSliding)
      return InvalidArgument("window_seconds (--window-seconds) applies to the sliding context policy; "
                             "set the policy to sliding or drop the window");
    if (!(*window_seconds >= 2.0))
      return InvalidArgument("window_seconds must be at least one 2-second chunk (got " + num(*window_seconds) +
                             "); use 2 or more");
  }
  if (position_limit && *position_limit < 64)
    return InvalidArgument("the position limit must be at least 64 (got " + std::to_string(*position_limit) + ")");
  return Status::Ok();
}

std::optional<int64_t> ContextPolicy::window_chunks(double seconds_per_chunk) const {
  if (!window_seconds) return std::nullopt;
  return static_cast<int64_t>(std::floor(*window_seconds / seconds_per_chunk + 1e-9));
}

Result<ContextPolicy::Kind> parse_context_policy(const std::string& name) {
  if (name == "error") return ContextPolicy::Kind::kError;
  if (name == "sliding") return ContextPolicy::Kind::kSliding;
  return InvalidArgument("--context-policy must be one of error, sliding (got '" + name + "')");
}

const char* context_policy_name(ContextPolicy::Kind kind) {
  return kind == ContextPolicy::Kind::kSliding ? "sliding" : "error";
}

Status check_window(const ContextPolicy& policy, double seconds_per_chunk, int64_t prompt_tokens,
                    int64_t chunk_tokens, int64_t max_context) {
  if (policy.policy != ContextPolicy::Kind::kSliding) return Status::Ok();
  const int64_t fit = (max_context - prompt_tokens) / chunk_tokens;   // whole chunks beside the prompt
  if (max_context - prompt_tokens < chunk_tokens)
    return InvalidArgument("max_context " + std::to_string(max_context) + " cannot hold the prompt (" +
                           std::to_string(prompt_tokens) + " tokens) and one chunk (" + std::to_string(chunk_tokens) +
                           "); raise max_context or lower the ratio");
  const std::optional<int64_t> chunks = policy.window_chunks(seconds_per_chunk);
  if (chunks && *chunks > fit)
    return InvalidArgument("window_seconds " + num(*policy.window_seconds) + " needs " + std::to_string(*chunks) +
                           " chunks of " + std::to_string(chunk_tokens) + " tokens beside the " +
                           std::to_string(prompt_tokens) + "-token prompt, more than max_context " +
                           std::to_string(max_context) + " holds; use window_seconds " +
                           num(static_cast<double>(fit) * seconds_per_chunk) + " or less, or raise max_context");
  return Status::Ok();
}

std::vector<double> inv_freq(double theta, int head_dim) {
  std::vector<double> out;
  for (int j = 0; j < head_dim; j += 2)
    out.push_back(1.0 / std::pow(theta, static_cast<double>(j) / static_cast<double>(head_dim)));
  return out;
}

KvWindow::KvWindow(const ContextPolicy& policy, int64_t max_context, double seconds_per_chunk, int64_t position_limit)
    : policy_(policy),
      max_context_(max_context),
      position_limit_(policy.position_limit ? *policy.position_limit : position_limit),
      window_chunks_(policy.window_chunks(seconds_per_chunk)) {}

int64_t KvWindow::chunks() const {
  return std::count_if(segments_.begin(), segments_.end(), [](const Segment& s) { return s.kind == SegmentKind::kChunk; });
}

int64_t KvWindow::pinned_length() const {
  int64_t n = 0;
  for (const Segment& s : segments_)
    if (s.kind == SegmentKind::kPinned) n += s.stop - s.start;
  return n;
}

int64_t KvWindow::kept_run(SegmentKind kind) const {
  if (kind != SegmentKind::kText || segments_.empty() || segments_.back().kind != SegmentKind::kText) return 0;
  return segments_.back().stop - segments_.back().start;
}

int64_t KvWindow::room(SegmentKind kind) const {
  if (!sliding()) return max_context_ - length();
  return max_context_ - pinned_length() - kept_run(kind);
}

Status KvWindow::check_fits(int64_t n, const std::string& what, SegmentKind kind) const {
  const int64_t r = room(kind);
  if (n <= r) return Status::Ok();
  if (sliding())
    return InvalidArgument("the " + what + " is " + std::to_string(n) + " tokens, longer than the window's " +
                           std::to_string(r) + " (max_context " + std::to_string(max_context_) +
                           " less the system prompt" + (kept_run(kind) ? " and the question and answer being written" : "") +
                           "); shorten it, continue in a new turn with more video, or raise max_context");
  return ContextFull("the context is full: " + std::to_string(length()) + " cached + " + std::to_string(n) +
                     " new tokens (" + what + ") > max_context " + std::to_string(max_context_) +
                     "; start a new session, use the sliding context policy, export with a larger --max-context, "
                     "or a lower ratio");
}

Result<std::vector<KvDrop>> KvWindow::make_room(int64_t n, SegmentKind kind, const std::string& what) {
  std::vector<KvDrop> drops;
  if (n < 0) return InvalidArgument("cannot append a negative number of tokens");
  OMNISIFT_RETURN_IF_ERROR(check_fits(n, what, kind));   // refused before anything changes
  if (!sliding()) return drops;
  // evictable: everything but the pinned prefix and, for text, the text run being written
  const bool keep_last = kept_run(kind) > 0;
  while (true) {
    const bool over_tokens = length() + n > max_context_;
    const bool over_chunks = kind == SegmentKind::kChunk && window_chunks_ && chunks() >= *window_chunks_;
    if (!over_tokens && !over_chunks) return drops;
    size_t i = 0;   // check_fits made sure one exists while over_tokens; over_chunks implies a cached chunk
    while (i < segments_.size() && (segments_[i].kind == SegmentKind::kPinned || (keep_last && i + 1 == segments_.size()))) ++i;
    if (i == segments_.size()) return Internal("KvWindow::make_room: no evictable segment after check_fits");
    const Segment seg = segments_[i];
    segments_.erase(segments_.begin() + static_cast<std::ptrdiff_t>(i));
    const int64_t width = seg.stop - seg.start;
    for (size_t k = i; k < segments_.size(); ++k) {
      segments_[k].start -= width;
      segments_[k].stop -= width;
    }
    evicted_chunks_ += seg.kind == SegmentKind::kChunk;
    drops.push_back({seg.start, seg.stop});
  }
}

Result<int64_t> KvWindow::rebase_delta(int64_t next_max) const {
  if (next_max - base_ < position_limit_) return int64_t{0};
  const int64_t minutes = std::llround(static_cast<double>(position_limit_) / 25.0 / 60.0);
  const Segment* oldest = nullptr;   // the oldest kept segment that is not pinned
  int64_t pinned_next = 0;           // one past the pinned segments' largest position
  for (const Segment& s : segments_) {
    if (s.kind == SegmentKind::kPinned) pinned_next = std::max(pinned_next, s.time1 + 1);
    else if (!oldest) oldest = &s;
  }
  if (!sliding() || !oldest)
    return ContextFull("position " + std::to_string(next_max) + " would pass the model's trained range of " +
                       std::to_string(position_limit_) + " positions (about " + std::to_string(minutes) +
                       " minutes of stream); use the sliding context policy, or start a new session");
  const int64_t new_base = oldest->time0 - pinned_next;   // the oldest kept segment then starts after the prompt
  if (new_base <= base_ || next_max - new_base >= position_limit_)
    return ContextFull("the window spans more than the model's trained range of " + std::to_string(position_limit_) +
                       " positions; use a shorter window_seconds");
  return new_base - base_;
}

void KvWindow::record(SegmentKind kind, const Positions& positions) {
  const int64_t n = positions.n;
  int64_t time0 = 0, time1 = 0;
  if (n) {
    time0 = positions.at(0, 0);
    for (int64_t i = 0; i < n; ++i) time0 = std::min(time0, positions.at(0, i));
    time1 = positions.max();
  }
  if (kind == SegmentKind::kText && !segments_.empty() && segments_.back().kind == SegmentKind::kText) {
    segments_.back().stop += n;
    segments_.back().time1 = std::max(segments_.back().time1, time1);
    return;
  }
  const int64_t start = length();
  segments_.push_back({kind == SegmentKind::kTurn ? SegmentKind::kText : kind, start, start + n, time0, time1});
}

}  // namespace omnisift
