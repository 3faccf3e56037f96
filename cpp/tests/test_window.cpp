// KvWindow and ContextPolicy against Python's runtime/context.py: the same cases as
// tests/runtime/test_context.py (eviction of whole segments, re-basing, bad policies), with
// Python's numbers; the session goldens (test_session) replay whole streams.
#include <cmath>

#include "harness.h"
#include "omnisift/window.h"

using namespace omnisift;

namespace {

Positions pos(int64_t t0, int64_t n) { return Positions::text(t0, n); }

ContextPolicy sliding(std::optional<double> window = std::nullopt, std::optional<int64_t> limit = std::nullopt) {
  ContextPolicy p;
  p.policy = ContextPolicy::Kind::kSliding;
  p.window_seconds = window;
  p.position_limit = limit;
  return p;
}

std::vector<std::pair<int64_t, int64_t>> spans(const Result<std::vector<KvDrop>>& drops) {
  std::vector<std::pair<int64_t, int64_t>> out;
  if (drops.ok())
    for (const KvDrop& d : *drops) out.emplace_back(d.start, d.stop);
  return out;
}

}  // namespace

TEST(sliding_evicts_oldest_whole_segments_and_keeps_the_prompt) {
  KvWindow w(sliding(6.0), 100, 2.0, kDefaultPositionLimit);
  CHECK(w.window_chunks() == std::optional<int64_t>(3));
  w.record(SegmentKind::kPinned, pos(0, 10));
  for (int c = 0; c < 3; ++c) {
    CHECK(spans(w.make_room(20, SegmentKind::kChunk, "chunk")).empty());
    w.record(SegmentKind::kChunk, pos(11 + 50 * c, 20));
  }
  using V = std::vector<std::pair<int64_t, int64_t>>;
  CHECK(spans(w.make_room(20, SegmentKind::kChunk, "chunk")) == (V{{10, 30}}));   // the 4th evicts the 1st
  w.record(SegmentKind::kChunk, pos(161, 20));
  w.record(SegmentKind::kText, pos(300, 5));      // a question...
  CHECK(spans(w.make_room(1, SegmentKind::kText, "answer")).empty());
  w.record(SegmentKind::kText, pos(305, 1));      // ...and its answer extend one text segment
  CHECK_EQ(w.segments().size(), 5u);
  CHECK(w.segments().back().kind == SegmentKind::kText);
  CHECK(spans(w.make_room(50, SegmentKind::kText, "answer")) == (V{{10, 30}, {10, 30}}));   // 76 + 50 > 100
  CHECK_EQ(w.segments().size(), 3u);
  CHECK_EQ(w.segments()[1].start, 10);
  CHECK_EQ(w.segments()[2].stop, 36);
  CHECK_EQ(w.evicted_chunks(), 3);
  // a follow-up extends the question/answer run (6 tokens), which it cannot evict: 100 - 10 - 6 = 84
  const Status st = w.check_fits(85, "question");
  CHECK_CODE(st, StatusCode::kInvalidArgument);
  CHECK(st.message().find("longer than the window's 84") != std::string::npos);
  CHECK(st.message().find("question and answer being written") != std::string::npos);
  CHECK_OK(w.check_fits(84, "question"));
  CHECK_EQ(w.room(SegmentKind::kChunk), 90);      // a chunk, or a new turn's text, may evict the run
  CHECK_OK(w.check_fits(90, "turn text", SegmentKind::kTurn));
  // refused before anything changes
  CHECK_CODE(w.make_room(85, SegmentKind::kText, "answer").status(), StatusCode::kInvalidArgument);
  CHECK_EQ(w.segments().size(), 3u);
  CHECK_EQ(w.evicted_chunks(), 3);
  // a new turn's opening evicts the oldest segments, the finished run too, and starts its own segment
  CHECK(spans(w.make_room(85, SegmentKind::kTurn, "turn text")) == (V{{10, 30}, {10, 16}}));   // 36 + 85 > 100, 16 + 85 > 100
  w.record(SegmentKind::kTurn, pos(400, 85));
  CHECK_EQ(w.segments().size(), 2u);
  CHECK(w.segments().back().kind == SegmentKind::kText);
  w.record(SegmentKind::kTurn, pos(485, 2));      // a turn never extends the text before it
  CHECK_EQ(w.segments().size(), 3u);
}

TEST(rebase_under_each_policy) {
  KvWindow w(sliding(std::nullopt, 400), 1000, 2.0, kDefaultPositionLimit);
  CHECK_EQ(w.position_limit(), 400);
  w.record(SegmentKind::kPinned, pos(0, 10));   // prompt at 0..9: media starts at 10
  for (int c = 0; c < 6; ++c) w.record(SegmentKind::kChunk, pos(10 + 50 * c, 20));
  CHECK_EQ(*w.rebase_delta(399), 0);
  CHECK(spans(w.make_room(1000 - 130 + 1, SegmentKind::kChunk, "chunk")) == (std::vector<std::pair<int64_t, int64_t>>{{10, 30}}));
  CHECK_EQ(*w.rebase_delta(400), 50);   // chunk 1 then starts where chunk 0 did
  w.rebased(50);
  CHECK_EQ(*w.rebase_delta(449), 0);
  CHECK_CODE(w.rebase_delta(460 + 400).status(), StatusCode::kContextFull);   // the window spans more than the limit
  ContextPolicy error;
  error.position_limit = 400;
  KvWindow stuck(error, 1000, 2.0, kDefaultPositionLimit);
  stuck.record(SegmentKind::kPinned, pos(0, 10));
  stuck.record(SegmentKind::kChunk, pos(10, 20));
  const auto refused = stuck.rebase_delta(400);
  CHECK_CODE(refused.status(), StatusCode::kContextFull);
  CHECK(refused.status().message().find("trained range of 400 positions") != std::string::npos);
  CHECK_EQ(KvWindow(ContextPolicy{}, 1000, 2.0, 32768).position_limit(), 32768);   // the manifest's by default
}

TEST(error_policy_refuses_past_max_context) {
  KvWindow w(ContextPolicy{}, 100, 2.0, kDefaultPositionLimit);
  w.record(SegmentKind::kPinned, pos(0, 90));
  CHECK(spans(w.make_room(10, SegmentKind::kChunk, "chunk 0")).empty());
  const auto full = w.make_room(11, SegmentKind::kChunk, "chunk 0");
  CHECK_CODE(full.status(), StatusCode::kContextFull);
  CHECK(full.status().message().find("chunk 0") != std::string::npos);
  CHECK_EQ(w.length(), 90);   // a refusal changes nothing
}

TEST(bad_policies) {
  const auto message = [](const ContextPolicy& p) { return p.validate().message(); };
  CHECK_CODE(sliding(1.5).validate(), StatusCode::kInvalidArgument);
  CHECK(message(sliding(1.5)).find("at least one 2-second chunk") != std::string::npos);
  CHECK_CODE(sliding(std::nan("")).validate(), StatusCode::kInvalidArgument);
  ContextPolicy error;
  error.window_seconds = 10;
  CHECK(message(error).find("applies to the sliding context policy") != std::string::npos);
  CHECK(message(sliding(std::nullopt, 3)).find("at least 64") != std::string::npos);
  CHECK_OK(sliding(2.0, 64).validate());
  CHECK_CODE(parse_context_policy("fifo").status(), StatusCode::kInvalidArgument);
  CHECK(*parse_context_policy("sliding") == ContextPolicy::Kind::kSliding);
  // the window must fit beside the prompt: Python's check_window names the longest that fits
  const Status st = check_window(sliding(60.0), 2.0, 30, 19, 256);
  CHECK_CODE(st, StatusCode::kInvalidArgument);
  CHECK(st.message().find("use window_seconds 22 or less") != std::string::npos);
  CHECK_CODE(check_window(sliding(), 2.0, 250, 19, 256), StatusCode::kInvalidArgument);
  CHECK_OK(check_window(sliding(22.0), 2.0, 30, 19, 256));
}

TEST(inv_freq_as_python) {
  const std::vector<double> f = inv_freq(1e6, 8);   // numpy: 1 / 1e6 ** (arange(0, 8, 2) / 8)
  CHECK_EQ(f.size(), 4u);
  CHECK_EQ(f[0], 1.0);
  CHECK_NEAR(f[1], 0.031622776601683794, 1e-17);
  CHECK_NEAR(f[2], 0.001, 1e-18);
  CHECK_NEAR(f[3], 3.1622776601683795e-05, 1e-19);
}

HARNESS_MAIN
