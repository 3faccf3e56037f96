#include "omnisift/preprocess.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

namespace omnisift {

namespace {
// Qwen2VLImageProcessor's normalization (OpenAI CLIP), as float32 like numpy's asarray(..., float32)
const float kClipMean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
const float kClipStd[3] = {0.26862954f, 0.26130258f, 0.27577711f};
constexpr double kLogFloorRange = 8.0;   // Whisper: floor at max - 8
constexpr double kPowerClamp = 1e-10;
}  // namespace

Result<std::vector<float>> chunk_patches(const std::vector<FrameView>& frames, const LayoutSpec& spec,
                                         int height, int width) {
  const int tp = spec.temporal_patch_size, p = spec.patch_size, m = spec.spatial_merge_size;
  if (frames.empty() || static_cast<int>(frames.size()) > spec.raw_frames_per_chunk())
    return InvalidArgument("a chunk holds 1-" + std::to_string(spec.raw_frames_per_chunk()) + " frames (got " +
                           std::to_string(frames.size()) + ")");
  if (height <= 0 || width <= 0 || height % (p * m) || width % (p * m))
    return InvalidArgument("resolution must be a multiple of " + std::to_string(p * m) + " (got " +
                           std::to_string(height) + "x" + std::to_string(width) + ")");
  for (size_t f = 0; f < frames.size(); ++f) {
    if (!frames[f].rgb) return InvalidArgument("frame " + std::to_string(f) + " has no pixels");
    if (frames[f].height != height || frames[f].width != width)
      return InvalidArgument("frame " + std::to_string(f) + " is " + std::to_string(frames[f].height) + "x" +
                             std::to_string(frames[f].width) + " (HxW), the export takes " + std::to_string(height) +
                             "x" + std::to_string(width) + "; capture or resize frames to that size");
  }
  const int t_frames = static_cast<int>(frames.size());
  const int gt = (t_frames + tp - 1) / tp, gh = height / p, gw = width / p;
  const int cols = 3 * tp * p * p;
  std::vector<float> out(static_cast<size_t>(gt) * gh * gw * cols);
  size_t row = 0;
  for (int g = 0; g < gt; ++g)
    for (int bh = 0; bh < gh / m; ++bh)
      for (int bw = 0; bw < gw / m; ++bw)
        for (int mh = 0; mh < m; ++mh)
          for (int mw = 0; mw < m; ++mw, ++row) {
            float* dst = out.data() + row * cols;
            for (int c = 0; c < 3; ++c)
              for (int t = 0; t < tp; ++t) {
                const int f = std::min(g * tp + t, t_frames - 1);   // pad by repeating the last frame
                const uint8_t* rgb = frames[static_cast<size_t>(f)].rgb;
                for (int py = 0; py < p; ++py) {
                  const int y = (bh * m + mh) * p + py;
                  for (int px = 0; px < p; ++px) {
                    const int x = (bw * m + mw) * p + px;
                    const uint8_t v = rgb[(static_cast<size_t>(y) * width + x) * 3 + c];
                    const float scaled = static_cast<float>(static_cast<double>(v) * (1.0 / 255.0));
                    *dst++ = (scaled - kClipMean[c]) / kClipStd[c];
                  }
                }
              }
          }
  return out;
}

std::vector<double> mel_filters(int n_fft, int n_mels, int sample_rate) {
  auto hz_to_mel = [](double f) { return f >= 1000.0 ? 15.0 + std::log(f / 1000.0) * (27.0 / std::log(6.4)) : 3.0 * f / 200.0; };
  auto mel_to_hz = [](double mel) { return mel >= 15.0 ? 1000.0 * std::exp((std::log(6.4) / 27.0) * (mel - 15.0)) : 200.0 * mel / 3.0; };
  auto linspace = [](double a, double b, int n) {
    std::vector<double> v(static_cast<size_t>(n));
    const double step = (b - a) / (n - 1);
    for (int i = 0; i < n; ++i) v[static_cast<size_t>(i)] = a + i * step;
    v.back() = b;
    return v;
  };
  const int n_freq = 1 + n_fft / 2;
  std::vector<double> filter_freqs = linspace(hz_to_mel(0.0), hz_to_mel(8000.0), n_mels + 2);
  for (double& f : filter_freqs) f = mel_to_hz(f);
  const std::vector<double> fft_freqs = linspace(0, sample_rate / 2, n_freq);
  std::vector<double> out(static_cast<size_t>(n_freq) * n_mels);
  for (int k = 0; k < n_freq; ++k)
    for (int j = 0; j < n_mels; ++j) {
      const size_t jj = static_cast<size_t>(j);
      const double down = -(filter_freqs[jj] - fft_freqs[static_cast<size_t>(k)]) / (filter_freqs[jj + 1] - filter_freqs[jj]);
      const double up = (filter_freqs[jj + 2] - fft_freqs[static_cast<size_t>(k)]) / (filter_freqs[jj + 2] - filter_freqs[jj + 1]);
      const double enorm = 2.0 / (filter_freqs[jj + 2] - filter_freqs[jj]);
      out[static_cast<size_t>(k) * n_mels + jj] = std::max(0.0, std::min(down, up)) * enorm;
    }
  return out;
}

StreamingLogMel::StreamingLogMel(const LayoutSpec& spec)
    : spec_(spec), frames_per_chunk_(spec.samples_per_chunk() / spec.hop_length),
      running_max_(-std::numeric_limits<double>::infinity()) {
  const int n_fft = spec.n_fft, n_freq = 1 + n_fft / 2;
  filters_ = mel_filters(n_fft, spec.n_mels, spec.sample_rate);
  cos_.resize(static_cast<size_t>(n_freq) * n_fft);
  sin_.resize(cos_.size());
  const double two_pi = 2.0 * M_PI;
  for (int k = 0; k < n_freq; ++k)
    for (int n = 0; n < n_fft; ++n) {
      const double angle = two_pi * static_cast<double>((static_cast<int64_t>(k) * n) % n_fft) / n_fft;
      cos_[static_cast<size_t>(k) * n_fft + n] = std::cos(angle);
      sin_[static_cast<size_t>(k) * n_fft + n] = std::sin(angle);
    }
  window_.resize(static_cast<size_t>(n_fft));
  for (int n = 0; n < n_fft; ++n) window_[static_cast<size_t>(n)] = 0.5 - 0.5 * std::cos(two_pi * n / n_fft);
}

Result<int> StreamingLogMel::push(const float* pcm, size_t n) {
  if (finished_) return FailedPrecondition("StreamingLogMel::push after finish(); start a new one per clip");
  if (n && !pcm) return InvalidArgument("pcm is null");
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(pcm[i]))
      return InvalidArgument("the audio contains NaN or Inf samples; check the source");
  for (size_t i = 0; i < n; ++i) buf_.push_back(static_cast<double>(pcm[i]));
  received_ += static_cast<int64_t>(n);
  int emitted = 0;
  const int hop = spec_.hop_length, half = spec_.n_fft / 2;
  // chunk j's last frame 200j + 199 reads up to sample (200j + 199) * 160 + 200 (exclusive)
  while (received_ >= static_cast<int64_t>(next_chunk_ + 1) * frames_per_chunk_ * hop - hop + half) {
    emit(frames_per_chunk_, -1);
    ++emitted;
  }
  return emitted;
}

int StreamingLogMel::finish() {
  if (finished_) return 0;
  finished_ = true;
  const int64_t n_valid = (received_ + spec_.hop_length - 1) / spec_.hop_length;
  int emitted = 0;
  while (static_cast<int64_t>(next_chunk_) * frames_per_chunk_ < n_valid) {
    const int64_t f0 = static_cast<int64_t>(next_chunk_) * frames_per_chunk_;
    emit(static_cast<int>(std::min<int64_t>(frames_per_chunk_, n_valid - f0)), received_);
    ++emitted;
  }
  return emitted;
}

std::vector<double> StreamingLogMel::log_spec(int64_t f0, int n, int64_t n_total) const {
  const int hop = spec_.hop_length, half = spec_.n_fft / 2, n_fft = spec_.n_fft, n_freq = 1 + n_fft / 2;
  const int n_mels = spec_.n_mels;
  // Qwen2.5-Omni's extractor (chunk_length 300) pads the clip with zeros to 300 s (or keeps a longer one whole),
  // then reflects at its end
  const int64_t padded = std::max<int64_t>(n_total, static_cast<int64_t>(300) * spec_.sample_rate);
  std::vector<double> out(static_cast<size_t>(n_mels) * n);
  std::vector<double> frame(static_cast<size_t>(n_fft)), power(static_cast<size_t>(n_freq));
  for (int f = 0; f < n; ++f) {
    const int64_t first = (f0 + f) * hop - half;   // centred STFT: reflect at the clip start
    for (int k = 0; k < n_fft; ++k) {
      int64_t idx = std::llabs(first + k);
      double v = 0;
      if (n_total >= 0 && idx >= padded) idx = 2 * (padded - 1) - idx;
      if (n_total < 0 || idx < n_total) v = buf_[static_cast<size_t>(idx - buf_start_)];
      frame[static_cast<size_t>(k)] = v * window_[static_cast<size_t>(k)];
    }
    for (int k = 0; k < n_freq; ++k) {
      const double* c = cos_.data() + static_cast<size_t>(k) * n_fft;
      const double* s = sin_.data() + static_cast<size_t>(k) * n_fft;
      double re = 0, im = 0;
      for (int t = 0; t < n_fft; ++t) {
        re += frame[static_cast<size_t>(t)] * c[t];
        im -= frame[static_cast<size_t>(t)] * s[t];
      }
      power[static_cast<size_t>(k)] = re * re + im * im;
    }
    for (int j = 0; j < n_mels; ++j) {
      double mel = 0;
      for (int k = 0; k < n_freq; ++k) mel += filters_[static_cast<size_t>(k) * n_mels + j] * power[static_cast<size_t>(k)];
      out[static_cast<size_t>(j) * n + f] = std::log10(std::max(mel, kPowerClamp));
    }
  }
  return out;
}

void StreamingLogMel::emit(int n, int64_t n_total) {
  const int hop = spec_.hop_length, half = spec_.n_fft / 2;
  const int64_t f0 = static_cast<int64_t>(next_chunk_) * frames_per_chunk_;
  const std::vector<double> spec = log_spec(f0, n, n_total);
  for (double v : spec) running_max_ = std::max(running_max_, v);
  if (n_total >= 0) {
    const int64_t n_valid = (n_total + hop - 1) / hop;
    if (f0 + n == n_valid) {   // Whisper's max also covers the frames past the valid ones that still read the clip
      const int64_t padded = std::max<int64_t>(n_total, static_cast<int64_t>(300) * spec_.sample_rate);
      const int64_t n_tail = std::min(padded / hop, (n_total + half + hop - 1) / hop) - n_valid;
      if (n_tail > 0)
        for (double v : log_spec(n_valid, static_cast<int>(n_tail), n_total)) running_max_ = std::max(running_max_, v);
    }
  }
  std::vector<float> features(spec.size());
  for (size_t i = 0; i < spec.size(); ++i)
    features[i] = static_cast<float>((std::max(spec[i], running_max_ - kLogFloorRange) + 4.0) / 4.0);
  windows_.push_back(std::move(features));
  ++next_chunk_;
  // keep only what the next chunk reads: from its first frame's window start on
  const int64_t keep_from = std::max<int64_t>(0, (f0 + frames_per_chunk_) * hop - half);
  if (n_total < 0 && keep_from > buf_start_) {
    buf_.erase(buf_.begin(), buf_.begin() + (keep_from - buf_start_));
    buf_start_ = keep_from;
  }
}

std::vector<float> StreamingLogMel::pop() {
  if (windows_.empty()) return {};
  std::vector<float> w = std::move(windows_.front());
  windows_.pop_front();
  return w;
}

}  // namespace omnisift
