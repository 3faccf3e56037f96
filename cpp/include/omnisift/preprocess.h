// Frames -> pixel patches and PCM -> log-mel windows, as Python's omnisift_edge.model.preprocess.
//
// Frames must already be at the export resolution (manifest `resolution`): resizing is the
// camera's job (set the capture size, or scale with your ISP), and a wrong size is an error,
// never a silent resample. PCM is mono float at 16 kHz. docs/preprocessing.md has the rules.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "omnisift/manifest.h"
#include "omnisift/status.h"

namespace omnisift {

// One RGB frame, row-major [height, width, 3] uint8 (no row padding).
struct FrameView {
  const uint8_t* rgb = nullptr;
  int height = 0, width = 0;
};

// Up to raw_frames_per_chunk (4) frames -> normalized patches [ceil(T/2)*gh*gw, 1176] float32 in
// the spatial-merge order of Python's chunk_patches (an odd count repeats the last frame).
// Bit-identical to Python (same float32/float64 steps).
Result<std::vector<float>> chunk_patches(const std::vector<FrameView>& frames, const LayoutSpec& spec,
                                         int height, int width);

// PCM in blocks of any size -> one [n_mels, 200] log-mel window per 2-second chunk, equal to
// Python's StreamingLogMel: the STFT carried across chunk edges, the floor at the running max - 8.
// Window j is ready once 2 s * (j + 1) + 40 samples arrived; finish() pads the end as the whole
// clip is padded (zeros to 300 s: Qwen2.5-Omni's chunk_length, then the STFT's reflection) and emits what is left, the last
// window possibly shorter than 200 frames.
class StreamingLogMel {
 public:
  explicit StreamingLogMel(const LayoutSpec& spec);
  // Append samples; returns the number of windows completed (fetch them with pop()).
  Result<int> push(const float* pcm, size_t n);
  // The stream ended: emit the remaining windows (up to two); returns how many.
  int finish();
  bool finished() const { return finished_; }
  bool ready() const { return !windows_.empty(); }
  // The oldest completed window, [n_mels, frames] row-major (frames = 200 except a last one).
  std::vector<float> pop();
  int front_frames() const { return windows_.empty() ? 0 : static_cast<int>(windows_.front().size()) / spec_.n_mels; }
  void clear() { windows_.clear(); }
  double running_max() const { return running_max_; }
  int64_t samples_received() const { return received_; }
  int windows_emitted() const { return next_chunk_; }

 private:
  void emit(int n, int64_t n_total);   // n_total < 0: the clip length is not known yet
  std::vector<double> log_spec(int64_t f0, int n, int64_t n_total) const;   // [n_mels, n]
  LayoutSpec spec_;
  int frames_per_chunk_;
  std::vector<double> filters_;       // [n_freq, n_mels] Slaney mel filters
  std::vector<double> cos_, sin_;     // DFT tables [n_freq, n_fft]
  std::vector<double> window_;        // periodic Hann [n_fft]
  std::vector<double> buf_;           // received samples [buf_start_, received_)
  int64_t buf_start_ = 0, received_ = 0;
  int next_chunk_ = 0;
  bool finished_ = false;
  double running_max_;
  std::deque<std::vector<float>> windows_;
};

// Slaney-scale mel filters [1 + n_fft/2, n_mels] float64 (transformers' mel_filter_bank).
std::vector<double> mel_filters(int n_fft, int n_mels, int sample_rate);

}  // namespace omnisift
