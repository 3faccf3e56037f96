// The live chunker and the drop policies (examples/live_chunks.h, docs/live.md): frames sampled at
// 2 fps by timestamp, audio on the video's clock, the bounded queue's `oldest` and `thin` drops.
#include <vector>

#include "harness.h"
#include "live_chunks.h"

using namespace omnisift_live;

namespace {
constexpr size_t kBytes = 2 * 2 * 3;   // a 2x2 RGB frame whose pixels all hold its frame number

void feed_video(ChunkAssembler& a, double fps, int n, double t0 = 10.0) {
  for (int i = 0; i < n; ++i) {
    const std::vector<uint8_t> frame(kBytes, static_cast<uint8_t>(i));
    a.video(t0 + i / fps, frame.data());
  }
}

LiveChunk chunk_at(int64_t index, double time) {
  LiveChunk c;
  c.index = index;
  c.capture_time = time;
  return c;
}
}  // namespace

TEST(frames_are_sampled_at_2_fps_by_nearest_timestamp) {
  ChunkAssembler a(kBytes);
  a.set_no_audio();
  feed_video(a, 7.0, 25);   // 7 fps from t = 10 s (3.43 s): frame k nearest k / 2 s, the earlier on a tie
  const auto chunks = a.take_ready();
  CHECK_EQ(chunks.size(), size_t{1});   // frames 0..6 sampled: one whole chunk, the second still open
  std::vector<int> got;
  for (const auto& f : chunks[0].frames) got.push_back(f[0]);
  CHECK(got == (std::vector<int>{0, 3, 7, 10}));   // 0.5 s: 3/7 and 4/7 (about) tie -> 3; 1.5 s: 10/7 or 11/7 -> 10
  CHECK_EQ(chunks[0].index, 0);
  CHECK_NEAR(chunks[0].capture_time, 0.0, 1e-12);
  CHECK_EQ(chunks[0].audio_filled, 32000);   // no audio: silence
  CHECK(a.has_partial());
}

TEST(audio_follows_the_video_clock) {
  ChunkAssembler a(kBytes);
  feed_video(a, 30.0, 1);
  std::vector<float> block(1600);
  int64_t t = 0;
  for (int b = 0; b < 22; ++b) {            // 100 ms blocks; block 5 is lost, block 12 comes 20 ms late
    for (size_t i = 0; i < block.size(); ++i) block[i] = static_cast<float>(b + 1);
    const double jitter = b == 12 ? 0.02 : 0.0;
    if (b != 5) a.audio(10.0 + static_cast<double>(t) / 16000 + jitter, block.data(), block.size());
    t += 1600;
  }
  feed_video(a, 30.0, 70);                   // 2.3 s of video
  const auto chunks = a.take_ready();
  CHECK_EQ(chunks.size(), size_t{1});
  const std::vector<float>& pcm = chunks[0].pcm;
  CHECK_EQ(pcm.size(), size_t{32000});
  CHECK_EQ(pcm[0], 1.0f);
  CHECK_EQ(pcm[5 * 1600], 0.0f);            // the lost block: silence, not the next block early
  CHECK_EQ(pcm[6 * 1600], 7.0f);            // later blocks at their own time
  CHECK_EQ(pcm[12 * 1600], 13.0f);          // 20 ms late: within 40 ms, not realigned
  CHECK_EQ(pcm[19 * 1600 + 1599], 20.0f);
  CHECK_EQ(chunks[0].audio_filled, 0);
  CHECK_EQ(a.realigned(), 1);
}

TEST(audio_before_the_first_frame_and_missing_audio) {
  ChunkAssembler a(kBytes);
  std::vector<float> early(3200, 0.5f);      // 0.2 s of audio from 0.1 s before the first frame
  a.audio(9.9, early.data(), early.size());
  feed_video(a, 30.0, 60);                   // 2 s of video, no more audio: the chunk waits ...
  CHECK(a.take_ready().empty());
  feed_video(a, 30.0, 40, 12.0);             // ... until the video is 1 s past its end
  const auto chunks = a.take_ready();
  CHECK_EQ(chunks.size(), size_t{1});
  CHECK_EQ(chunks[0].pcm[0], 0.5f);          // sample 0 is the one at the first frame's time
  CHECK_EQ(chunks[0].pcm[1599], 0.5f);
  CHECK_EQ(chunks[0].pcm[1600], 0.0f);
  CHECK_EQ(chunks[0].audio_filled, 32000 - 1600);
}

TEST(a_chunk_waits_for_its_log_mel_look_ahead) {
  ChunkAssembler a(kBytes, 40);
  feed_video(a, 30.0, 61);                   // 2 s of video
  std::vector<float> pcm(32000);
  for (size_t i = 0; i < pcm.size(); ++i) pcm[i] = static_cast<float>(i);
  a.audio(10.0, pcm.data(), pcm.size());
  CHECK(a.take_ready().empty());             // 40 samples short
  std::vector<float> more(100, -1.0f);
  a.audio(12.0, more.data(), more.size());
  const auto chunks = a.take_ready();
  CHECK_EQ(chunks.size(), size_t{1});
  CHECK_EQ(chunks[0].pcm.back(), 31999.0f);
  CHECK_EQ(chunks[0].lookahead.size(), size_t{40});
  CHECK_EQ(chunks[0].lookahead[0], -1.0f);   // the next chunk's first samples, still the next chunk's
}

TEST(oldest_policy_drops_the_oldest_queued_chunk) {
  ChunkQueue q(2, DropPolicy::kOldest);
  for (int i = 0; i < 5; ++i) q.put(chunk_at(i, 2.0 * i));
  CHECK(q.indices() == (std::vector<int64_t>{3, 4}));
  CHECK_EQ(q.dropped(), 3);
  const auto drops = q.take_drops();
  CHECK_EQ(drops.size(), size_t{3});
  CHECK_EQ(drops[0].index, 0);
  LiveChunk out;
  CHECK(q.take(out, std::chrono::milliseconds(0)) && out.index == 3);
}

TEST(thin_policy_keeps_what_is_kept_spread_over_time) {
  ChunkQueue q(3, DropPolicy::kThin);
  for (int i = 0; i < 3; ++i) q.put(chunk_at(i, 2.0 * i));   // queued 0, 2, 4 s
  q.put(chunk_at(3, 6.0));   // gaps around 1: 4 s, around 2: 4 s (with the new one) -> the older, 1
  CHECK(q.indices() == (std::vector<int64_t>{0, 2, 3}));
  q.put(chunk_at(4, 8.0));   // around 2: 6 - 0 = 6 s, around 3: 8 - 4 = 4 s -> 3
  CHECK(q.indices() == (std::vector<int64_t>{0, 2, 4}));
  ChunkQueue one(1, DropPolicy::kThin);
  one.put(chunk_at(0, 0));
  one.put(chunk_at(1, 2));
  CHECK(one.indices() == (std::vector<int64_t>{1}));
  CHECK(parse_drop_policy("thin") == DropPolicy::kThin && !parse_drop_policy("newest"));
}

TEST(percentiles) {
  CHECK_EQ(percentile({}, 0.5), 0.0);
  CHECK_EQ(percentile({5, 1, 3, 2, 4}, 0.5), 3.0);
  CHECK_EQ(percentile({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 100}, 0.95), 19.0);
}

HARNESS_MAIN
