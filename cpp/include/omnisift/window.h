// Context policies of a session: what happens when the KV cache or the positions reach their limits.
// The C++ port of Python's runtime/context.py (ContextPolicy, KVWindow, inv_freq); docs/runtime.md
// says what the model then sees.
//
//   error (default): an append that would exceed max_context, or a position that would reach the
//     trained range (position_limit: the manifest's rope.max_position_embeddings, 32,768 for
//     Qwen2.5-Omni, about 22 minutes at 25 TMRoPE steps per second) is refused (kContextFull).
//   sliding: the oldest whole segments (a chunk's kept tokens, a run of text) leave the KV cache
//     (Backend::drop_kv), so memory and per-chunk cost stay flat; the segment holding the system
//     prompt and the first <|vision_bos|><|audio_bos|> stays. Kept tokens keep their positions.
//     Before a position would reach the limit, every cached key is re-based (Backend::rotate_kv by
//     delta, exact for RoPE) and later positions are fed minus the accumulated base.
//
// KvWindow does the bookkeeping (which cache span holds which segment, the position base). The
// session plans an append on a copy (make_room, rebase_delta), so a refusal changes nothing, then
// runs the drops and the rotation on the backend and keeps the copy.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "omnisift/layout.h"
#include "omnisift/status.h"

namespace omnisift {

constexpr int64_t kDefaultPositionLimit = 32768;   // Qwen2.5-Omni's max_position_embeddings

// Python's ContextPolicy.
struct ContextPolicy {
  enum class Kind { kError, kSliding };
  Kind policy = Kind::kError;
  std::optional<double> window_seconds;     // sliding: seconds of media kept; none: what max_context holds
  std::optional<int64_t> position_limit;    // none: the manifest's max_position_embeddings

  // kInvalidArgument naming the fix: a window with the error policy, a window shorter than one
  // 2-second chunk, a position limit below 64.
  Status validate() const;
  // Whole chunks the window keeps (none: no chunk limit, only max_context).
  std::optional<int64_t> window_chunks(double seconds_per_chunk) const;
};

// "error" | "sliding" (the command-line spelling), else kInvalidArgument.
Result<ContextPolicy::Kind> parse_context_policy(const std::string& name);
const char* context_policy_name(ContextPolicy::Kind kind);

// Refuse a sliding window that max_context cannot hold beside the prompt (Python's session.check_window):
// one line with the longest window that fits.
Status check_window(const ContextPolicy& policy, double seconds_per_chunk, int64_t prompt_tokens,
                    int64_t chunk_tokens, int64_t max_context);

// RoPE inverse frequencies [head_dim / 2]: 1 / theta^(2j / head_dim), float64 (Python's inv_freq).
std::vector<double> inv_freq(double theta, int head_dim);

// kTurn: a new user turn's opening text. It is booked as a text segment of its own (it never extends
// the question/answer run before it, so it may evict that run; a question or answer cannot evict the
// run it extends).
enum class SegmentKind { kPinned, kChunk, kText, kTurn };

// One span of the KV cache: the pinned prefix, a chunk's kept tokens, or a run of text.
struct Segment {
  SegmentKind kind = SegmentKind::kText;
  int64_t start = 0, stop = 0;   // cache rows [start, stop)
  int64_t time0 = 0;             // smallest time-row (row 0) position, absolute (layout) positions
  int64_t time1 = 0;             // largest position on any row
};

struct KvDrop {
  int64_t start = 0, stop = 0;   // cache rows [start, stop), as the cache is after the drops before it
};

class KvWindow {
 public:
  KvWindow(const ContextPolicy& policy, int64_t max_context, double seconds_per_chunk, int64_t position_limit);

  bool sliding() const { return policy_.policy == ContextPolicy::Kind::kSliding; }
  int64_t length() const { return segments_.empty() ? 0 : segments_.back().stop; }
  int64_t chunks() const;
  int64_t pinned_length() const;
  // The most tokens one append of `kind` can hold under this policy (sliding: max_context less the
  // pinned prefix, and for text less the question/answer run it extends).
  int64_t room(SegmentKind kind = SegmentKind::kChunk) const;
  int64_t max_context() const { return max_context_; }
  int64_t position_limit() const { return position_limit_; }
  std::optional<int64_t> window_chunks() const { return window_chunks_; }
  int64_t base() const { return base_; }                 // positions are fed minus this
  int64_t evicted_chunks() const { return evicted_chunks_; }
  const std::vector<Segment>& segments() const { return segments_; }

  // Refuse, before anything changes, an append of n tokens that no eviction can make room for:
  // sliding: kInvalidArgument ("the question is N tokens, longer than the window's R ..."); error:
  // kContextFull.
  Status check_fits(int64_t n, const std::string& what, SegmentKind kind = SegmentKind::kText) const;
  // Spans to drop, oldest first, before appending n tokens of `kind`; the bookkeeping is updated as
  // if they were dropped (drop them in this order). error policy: none, or kContextFull when n does
  // not fit max_context. sliding: check_fits's refusal; nothing changes then.
  Result<std::vector<KvDrop>> make_room(int64_t n, SegmentKind kind, const std::string& what);
  // How far to re-base (0: not needed) so that next_max (an absolute position about to be written)
  // stays below the limit; kContextFull when no re-basing can do it.
  Result<int64_t> rebase_delta(int64_t next_max) const;
  void rebased(int64_t delta) { base_ += delta; }
  // Book appended tokens at absolute `positions` as a segment; text extends a text segment, a turn
  // starts one.
  void record(SegmentKind kind, const Positions& positions);

 private:
  int64_t kept_run(SegmentKind kind) const;   // the text run a text append extends (0 otherwise)

  ContextPolicy policy_;
  int64_t max_context_;
  int64_t position_limit_;
  std::optional<int64_t> window_chunks_;
  std::vector<Segment> segments_;
  int64_t base_ = 0;
  int64_t evicted_chunks_ = 0;
};

}  // namespace omnisift
