// The generated frames and PCM of golden.py (golden_frames, golden_pcm), rebuilt bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace golden_media {

// uint8 [n, H, W, 3]: (37t + 11y + 7x + 101c + (x*y mod 13)) mod 256
inline std::vector<uint8_t> frames(int n, int height, int width) {
  std::vector<uint8_t> out(static_cast<size_t>(n) * height * width * 3);
  size_t i = 0;
  for (int t = 0; t < n; ++t)
    for (int y = 0; y < height; ++y)
      for (int x = 0; x < width; ++x)
        for (int c = 0; c < 3; ++c) out[i++] = static_cast<uint8_t>((37 * t + 11 * y + 7 * x + 101 * c + (x * y) % 13) % 256);
  return out;
}

// float32 [n]: an LCG's integers in [-1000, 1000] times a piecewise (0.5 s) amplitude (GOLDEN_AMPS)
inline std::vector<float> pcm(int64_t n) {
  static const float amps[] = {0.0f, 1e-5f, 1e-4f, 2e-6f, 5e-4f, 3e-5f, 0.0f, 1e-5f, 2e-5f, 1e-6f, 3e-5f, 0.0f};
  std::vector<float> out(static_cast<size_t>(n));
  uint64_t state = 12345;
  for (int64_t i = 0; i < n; ++i) {
    state = (1103515245ULL * state + 12345ULL) % (1ULL << 31);
    const int64_t v = static_cast<int64_t>((state >> 8) % 2001) - 1000;
    out[static_cast<size_t>(i)] = static_cast<float>(v) * amps[(i / 8000) % 12];
  }
  return out;
}

}  // namespace golden_media
