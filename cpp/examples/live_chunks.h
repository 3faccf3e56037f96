// Live capture -> 2-second chunks -> a bounded queue with a drop policy: the C++ camera app's side
// of docs/live.md ("Chunking, the queue and the drop policy"), which Python's `omnisift-edge watch`
// follows too. No GStreamer here (tests/test_live_chunks.cpp checks it without a pipeline).
//
// ChunkAssembler (one capture thread calls it): frames and PCM with their source timestamps in,
// whole chunks out. Source time 0 is the first frame's timestamp; frame k of the stream is the
// frame whose timestamp is nearest to k / fps (the earlier on a tie); chunk n holds frames
// 4n .. 4n+3 and samples 32000n .. 32000(n+1)-1. Audio follows the video's clock: when the samples
// written so far and a buffer's timestamp disagree by more than 40 ms, the audio is realigned to
// the timestamp (silence inserted or samples skipped), so the error never accumulates. Without
// audio (no branch, or none came) a chunk's audio is silence.
//
// ChunkQueue (capture thread puts, inference thread takes): at most `capacity` chunks; a whole new
// chunk meeting a full queue makes the policy drop one queued chunk (never the new one):
//   oldest: the oldest queued chunk;
//   thin:   among the queued chunks after the oldest (the new chunk as the last neighbour), the one
//           whose neighbours are closest in capture time (the older on a tie); capacity 1: the queued one.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace omnisift_live {

using Clock = std::chrono::steady_clock;

struct LiveChunk {
  int64_t index = 0;                       // capture index: 0, 1, ...
  double capture_time = 0;                 // source seconds of the chunk's start
  std::vector<std::vector<uint8_t>> frames;   // frames_per_chunk RGB frames [H, W, 3]
  std::vector<float> pcm;                  // samples_per_chunk mono float PCM
  std::vector<float> lookahead;            // the next chunk's first samples (a log-mel window's look-ahead)
  int64_t audio_filled = 0;                // samples of `pcm` that are silence standing in for audio
  Clock::time_point complete;              // when its last frame and sample were there
};

enum class DropPolicy { kOldest, kThin };

inline std::optional<DropPolicy> parse_drop_policy(const std::string& name) {
  if (name == "oldest") return DropPolicy::kOldest;
  if (name == "thin") return DropPolicy::kThin;
  return std::nullopt;
}
inline const char* drop_policy_name(DropPolicy p) { return p == DropPolicy::kOldest ? "oldest" : "thin"; }

class ChunkAssembler {
 public:
  // frame_bytes: H * W * 3; lookahead: samples after a chunk it waits for too (handed over as
  // LiveChunk::lookahead, kept for the next chunk: the session's log-mel window j needs 2 s * (j + 1)
  // + 40 samples, preprocess.h); audio_wait_s: how far the video may run past a chunk's end before
  // its missing audio is filled with silence (a live source's audio lagging or gone).
  explicit ChunkAssembler(size_t frame_bytes, int lookahead = 0, int fps = 2, int frames_per_chunk = 4,
                          int sample_rate = 16000, int samples_per_chunk = 32000, double audio_wait_s = 1.0)
      : frame_bytes_(frame_bytes), lookahead_(lookahead), fps_(fps), frames_per_chunk_(frames_per_chunk),
        rate_(sample_rate), samples_per_chunk_(samples_per_chunk), audio_wait_s_(audio_wait_s) {}

  // One decoded frame (RGB at the export's size) with its timestamp in seconds.
  void video(double ts, const uint8_t* rgb) {
    if (!t0_) {
      t0_ = ts;
      for (auto& [t, pcm] : early_audio_) audio(t, pcm.data(), pcm.size());
      early_audio_.clear();
    }
    const double rel = ts - *t0_;
    last_video_ = std::max(last_video_, rel);
    std::vector<uint8_t> cur(rgb, rgb + frame_bytes_);
    for (double target = static_cast<double>(next_k_) / fps_; rel >= target; target = static_cast<double>(++next_k_) / fps_) {
      const bool prev_nearer = has_prev_ && (target - prev_rel_) <= (rel - target);   // the earlier on a tie
      frames_.push_back(prev_nearer ? prev_ : cur);
    }
    prev_ = std::move(cur);
    prev_rel_ = rel;
    has_prev_ = true;
  }

  // Mono PCM at the sample rate, the buffer's first sample at `ts` seconds.
  void audio(double ts, const float* pcm, size_t n) {
    if (!t0_) {   // before the first frame: held until source time 0 is known
      early_audio_.emplace_back(ts, std::vector<float>(pcm, pcm + n));
      return;
    }
    got_audio_ = true;
    const int64_t expected = std::llround((ts - *t0_) * rate_);
    int64_t written = audio_base_ + static_cast<int64_t>(audio_.size());
    size_t skip = 0;
    if (std::llabs(expected - written) > rate_ * 40 / 1000 || written == 0) {   // realign (and place the first)
      if (expected > written) {
        audio_.insert(audio_.end(), static_cast<size_t>(expected - written), 0.0f);
        realigned_ += written > 0;
      } else if (expected < written) {
        skip = static_cast<size_t>(std::min<int64_t>(written - expected, static_cast<int64_t>(n)));
        realigned_ += written > 0;
      }
    }
    audio_.insert(audio_.end(), pcm + skip, pcm + n);
  }

  // No audio will come (no audio branch, or the source has none): chunks get silence.
  void set_no_audio() { no_audio_ = true; }
  bool got_audio() const { return got_audio_; }
  bool started() const { return t0_.has_value(); }
  double video_seconds() const { return last_video_; }
  int64_t realigned() const { return realigned_; }

  // Chunks whose frames and audio are all there, in order.
  std::vector<LiveChunk> take_ready() {
    std::vector<LiveChunk> out;
    const size_t per = static_cast<size_t>(frames_per_chunk_);
    while (frames_.size() >= per) {
      const double end_s = static_cast<double>((next_chunk_ + 1) * frames_per_chunk_) / fps_;
      const bool audio_there = static_cast<int64_t>(audio_.size()) >= samples_per_chunk_ + lookahead_;
      if (!audio_there && !no_audio_ && last_video_ < end_s + audio_wait_s_) break;
      LiveChunk c;
      c.index = next_chunk_;
      c.capture_time = static_cast<double>(next_chunk_ * frames_per_chunk_) / fps_;
      c.frames.assign(std::make_move_iterator(frames_.begin()), std::make_move_iterator(frames_.begin() + per));
      frames_.erase(frames_.begin(), frames_.begin() + per);
      const size_t have = std::min(audio_.size(), static_cast<size_t>(samples_per_chunk_));
      c.pcm.assign(audio_.begin(), audio_.begin() + static_cast<std::ptrdiff_t>(have));
      audio_.erase(audio_.begin(), audio_.begin() + static_cast<std::ptrdiff_t>(have));
      c.audio_filled = samples_per_chunk_ - static_cast<int64_t>(have);
      c.pcm.resize(static_cast<size_t>(samples_per_chunk_), 0.0f);
      c.lookahead.assign(audio_.begin(), audio_.begin() + std::min<std::ptrdiff_t>(lookahead_, static_cast<std::ptrdiff_t>(audio_.size())));
      c.lookahead.resize(static_cast<size_t>(lookahead_), 0.0f);
      audio_base_ += samples_per_chunk_;
      c.complete = Clock::now();
      ++next_chunk_;
      out.push_back(std::move(c));
    }
    return out;
  }

  // Something of a chunk not yet whole (discarded at the end: never padded into a live stream).
  bool has_partial() const { return !frames_.empty() || (has_prev_ && next_k_ % frames_per_chunk_ != 0); }

 private:
  size_t frame_bytes_;
  int lookahead_;
  int fps_, frames_per_chunk_, rate_, samples_per_chunk_;
  double audio_wait_s_;
  std::optional<double> t0_;
  std::vector<std::pair<double, std::vector<float>>> early_audio_;
  std::deque<std::vector<uint8_t>> frames_;   // sampled frames from frame 4 * next_chunk_ on
  std::vector<uint8_t> prev_;
  double prev_rel_ = 0, last_video_ = -1;
  bool has_prev_ = false, no_audio_ = false, got_audio_ = false;
  int64_t next_k_ = 0, next_chunk_ = 0;
  std::vector<float> audio_;                  // samples from audio_base_ on
  int64_t audio_base_ = 0, realigned_ = 0;
};

struct DropRecord {
  int64_t index = 0;
  double capture_time = 0;
};

class ChunkQueue {
 public:
  ChunkQueue(size_t capacity, DropPolicy policy) : capacity_(std::max<size_t>(capacity, 1)), policy_(policy) {}

  // Adds a whole chunk; a full queue first drops one queued chunk by the policy.
  void put(LiveChunk chunk) {
    std::lock_guard<std::mutex> lock(mu_);
    if (q_.size() >= capacity_) {
      const size_t victim = pick_victim(chunk.capture_time);
      drops_.push_back({q_[victim].index, q_[victim].capture_time});
      q_.erase(q_.begin() + static_cast<std::ptrdiff_t>(victim));
      ++dropped_;
    }
    q_.push_back(std::move(chunk));
    cv_.notify_all();
  }
  // The oldest chunk, waiting up to `wait`; false when none came (or the queue is closed and empty).
  bool take(LiveChunk& out, std::chrono::milliseconds wait) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, wait, [&] { return !q_.empty() || closed_; });
    if (q_.empty()) return false;
    out = std::move(q_.front());
    q_.pop_front();
    return true;
  }
  void close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    cv_.notify_all();
  }
  std::vector<DropRecord> take_drops() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<DropRecord> out;
    out.swap(drops_);
    return out;
  }
  int64_t dropped() const {
    std::lock_guard<std::mutex> lock(mu_);
    return dropped_;
  }
  size_t size() const {
    std::lock_guard<std::mutex> lock(mu_);
    return q_.size();
  }
  std::vector<int64_t> indices() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<int64_t> out;
    for (const LiveChunk& c : q_) out.push_back(c.index);
    return out;
  }

 private:
  size_t pick_victim(double new_time) const {
    if (policy_ == DropPolicy::kOldest || q_.size() < 2) return 0;
    size_t best = 1;
    double best_gap = 0;
    for (size_t i = 1; i < q_.size(); ++i) {
      const double next = i + 1 < q_.size() ? q_[i + 1].capture_time : new_time;
      const double gap = next - q_[i - 1].capture_time;
      if (i == 1 || gap < best_gap) best = i, best_gap = gap;   // strict: the older on a tie
    }
    return best;
  }

  size_t capacity_;
  DropPolicy policy_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<LiveChunk> q_;
  std::vector<DropRecord> drops_;
  int64_t dropped_ = 0;
  bool closed_ = false;
};

// Median and 95th percentile (nearest rank) of lags in ms; 0 for none.
inline double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
  return v[std::min(v.size() - 1, rank == 0 ? 0 : rank - 1)];
}

}  // namespace omnisift_live
