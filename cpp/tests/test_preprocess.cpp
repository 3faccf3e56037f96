// Pixel patches (bit-identical) and streaming log-mel (within 2e-5) against Python's
// chunk_patches and StreamingLogMel (golden/preprocess.json).
#include "golden_media.h"
#include "harness.h"
#include "omnisift/manifest.h"
#include "omnisift/preprocess.h"

using namespace omnisift;
using nlohmann::json;

TEST(golden_patches) {
  const LayoutSpec spec;
  const json cases = harness::load_json(harness::golden("preprocess.json"))["patches"];
  for (const json& c : cases) {
    const int n = c["frames"], h = c["height"], w = c["width"];
    const std::vector<uint8_t> pixels = golden_media::frames(n, h, w);
    std::vector<FrameView> views;
    for (int t = 0; t < n; ++t) views.push_back({pixels.data() + static_cast<size_t>(t) * h * w * 3, h, w});
    auto x = chunk_patches(views, spec, h, w);
    CHECK_RESULT(x);
    if (!x.ok()) continue;
    const int64_t rows = c["shape"][0], cols = c["shape"][1];
    CHECK_EQ(static_cast<int64_t>(x->size()), rows * cols);
    CHECK_EQ(sha256_hex(x->data(), x->size() * 4), c["sha256"].get<std::string>());   // little-endian float32
    for (const json& s : c["samples"])
      CHECK_EQ((*x)[static_cast<size_t>(s[0].get<int64_t>() * cols + s[1].get<int64_t>())], s[2].get<float>());
  }
}

TEST(frames_of_the_wrong_size) {
  const LayoutSpec spec;
  const std::vector<uint8_t> pixels = golden_media::frames(1, 56, 84);
  CHECK_CODE(chunk_patches({{pixels.data(), 56, 84}}, spec, 56, 56).status(), StatusCode::kInvalidArgument);
  CHECK_CODE(chunk_patches({{pixels.data(), 56, 84}}, spec, 50, 84).status(), StatusCode::kInvalidArgument);
  CHECK_CODE(chunk_patches({{nullptr, 56, 84}}, spec, 56, 84).status(), StatusCode::kInvalidArgument);
  CHECK_CODE(chunk_patches({}, spec, 56, 84).status(), StatusCode::kInvalidArgument);
  std::vector<FrameView> five(5, FrameView{pixels.data(), 56, 84});
  CHECK_CODE(chunk_patches(five, spec, 56, 84).status(), StatusCode::kInvalidArgument);
}

TEST(golden_streaming_log_mel) {
  const json g = harness::load_json(harness::golden("preprocess.json"))["mel"];
  const LayoutSpec spec;
  const std::vector<float> pcm = golden_media::pcm(g["samples"].get<int64_t>());
  StreamingLogMel mel(spec);
  const size_t block = g["block"];
  std::vector<std::vector<float>> windows;
  for (size_t start = 0; start < pcm.size(); start += block) {
    auto n = mel.push(pcm.data() + start, std::min(block, pcm.size() - start));
    CHECK_RESULT(n);
    while (mel.ready()) windows.push_back(mel.pop());
  }
  CHECK_EQ(windows.size(), g["chunks"].size());
  for (size_t j = 0; j < windows.size() && j < g["chunks"].size(); ++j) {
    const json& c = g["chunks"][j];
    const std::vector<float>& w = windows[j];
    CHECK_EQ(w.size(), 128u * 200u);
    double sum = 0;
    for (float v : w) sum += v;
    CHECK_NEAR(sum, c["sum"].get<double>(), 1e-2);
    for (auto it = c["frames"].begin(); it != c["frames"].end(); ++it) {
      const int f = std::stoi(it.key());
      double worst = 0;
      for (int m = 0; m < 128; ++m)
        worst = std::max(worst, std::fabs(w[static_cast<size_t>(m) * 200 + f] - it.value()[m].get<double>()));
      if (worst > 2e-5) harness::fail(__FILE__, __LINE__, "chunk " + std::to_string(j) + " frame " + it.key() +
                                                              " differs by " + std::to_string(worst));
    }
  }
  // the running max is the floor of the LAST chunk, and it only grows
  CHECK_NEAR(mel.running_max(), g["chunks"].back()["floor_max"].get<double>(), 1e-9);
  std::vector<float> bad = {0.0f, std::nanf("")};
  CHECK_CODE(mel.push(bad.data(), bad.size()).status(), StatusCode::kInvalidArgument);
}

TEST(log_mel_finish_pads_like_whisper) {
  const LayoutSpec spec;
  const std::vector<float> pcm = golden_media::pcm(40000);   // 1 window + 8000 samples
  StreamingLogMel mel(spec);
  CHECK_EQ(*mel.push(pcm.data(), pcm.size()), 1);
  CHECK_EQ(mel.finish(), 1);
  mel.pop();
  CHECK_EQ(mel.front_frames(), 50);                         // ceil(8000 / 160) frames
  CHECK_CODE(mel.push(pcm.data(), 1).status(), StatusCode::kFailedPrecondition);
}

TEST(mel_filters_are_slaney) {
  const std::vector<double> f = mel_filters(400, 128, 16000);
  CHECK_EQ(f.size(), 201u * 128u);
  double total = 0;
  for (double v : f) {
    CHECK(v >= 0);
    total += v;
  }
  CHECK(total > 0);
}

HARNESS_MAIN
