// The TensorRT backend's GPU-free rules (src/trt_rules.h): which builds run on which GPU and
// library, decoder_scatter's profile choice, and the host-side KV edits (drop rows, re-base keys)
// against numbers Python's runtime/context.rotate_keys and numpy's float16 cast gave.
#include <cstring>

#include "harness.h"
#include "trt_rules.h"

using namespace omnisift;
using namespace omnisift::trt;

namespace {

EngineBuild build(const std::string& flavour, const std::string& tensorrt, const std::string& cc) {
  EngineBuild b;
  b.target = flavour == "tensorrt_rtx" ? "rtx" : "orin-nano";
  b.flavour = flavour;
  b.tensorrt = tensorrt;
  b.compute_capability = cc;
  return b;
}

bool says(const Status& s, const std::string& text) { return s.message().find(text) != std::string::npos; }

EngineEntry scatter_entry(std::vector<std::vector<int64_t>> seq, std::vector<std::vector<int64_t>> logits) {
  EngineEntry e;
  for (size_t i = 0; i < seq.size(); ++i) {
    EngineProfile p;
    p.name = "p" + std::to_string(i);
    p.axes["sequence_length"] = seq[i];
    p.axes["logits_length"] = logits[i];
    e.profiles.push_back(p);
  }
  return e;
}

std::string show(const std::vector<ScatterPiece>& pieces) {
  std::string out;
  for (const ScatterPiece& p : pieces)
    out += "(" + std::to_string(p.profile) + "," + std::to_string(p.tokens) + "," + std::to_string(p.logits_rows) + ")";
  return out;
}

template <typename T>
std::vector<uint32_t> bits32(const std::vector<T>& v) {
  std::vector<uint32_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) std::memcpy(&out[i], &v[i], 4);
  return out;
}

}  // namespace

TEST(compute_capability_rtx_list_plain_exact) {
  const EngineBuild rtx = build("tensorrt_rtx", "1.7.1.116", "8.6,8.9,12.0");
  CHECK_OK(check_compute_capability(rtx, "NVIDIA GeForce RTX 4090", "8.9"));
  CHECK_OK(check_compute_capability(rtx, "NVIDIA RTX PRO 6000", "12.0"));
  CHECK_OK(check_compute_capability(build("tensorrt_rtx", "1.7.1", "8.6, 8.9"), "RTX 4090", "8.9"));   // spaces
  const Status hopper = check_compute_capability(rtx, "NVIDIA H200", "9.0");
  CHECK_CODE(hopper, StatusCode::kUnsupported);
  CHECK(says(hopper, "8.6, 8.9, 12.0") && says(hopper, "--compute-capability 9.0") && says(hopper, "NVIDIA H200"));
  CHECK(hopper.message().find('\n') == std::string::npos);
  CHECK_CODE(check_compute_capability(rtx, "RTX", "12.1"), StatusCode::kUnsupported);
  // a plain TensorRT build: exactly the one capability, never a list or a prefix
  const EngineBuild orin = build("tensorrt", "10.3.0", "8.7");
  CHECK_OK(check_compute_capability(orin, "Orin", "8.7"));
  const Status other = check_compute_capability(orin, "NVIDIA A100", "8.0");
  CHECK_CODE(other, StatusCode::kUnsupported);
  CHECK(says(other, "--target auto"));
  CHECK_CODE(check_compute_capability(build("tensorrt", "10.3.0", "8.6,8.9"), "RTX", "8.9"), StatusCode::kUnsupported);
  CHECK_CODE(check_compute_capability(build("tensorrt", "10.3.0", "12.0"), "RTX", "12"), StatusCode::kUnsupported);
}

TEST(library_flavour_and_version) {
  CHECK_OK(check_library(build("tensorrt", "10.3.0", "8.7"), false, 10, 3));
  CHECK_OK(check_library(build("tensorrt", "10.15.1.29", "9.0"), false, 10, 15));
  CHECK_OK(check_library(build("tensorrt_rtx", "1.7.1.116", "8.9"), true, 1, 7));
  CHECK_CODE(check_library(build("tensorrt", "10.30.1", "8.7"), false, 10, 3), StatusCode::kUnsupported);
  CHECK_CODE(check_library(build("tensorrt", "10.3.0", "8.7"), false, 10, 15), StatusCode::kUnsupported);
  const Status rtx_on_trt = check_library(build("tensorrt_rtx", "1.7.1.116", "8.9"), false, 10, 15);
  CHECK_CODE(rtx_on_trt, StatusCode::kUnsupported);
  CHECK(says(rtx_on_trt, "TENSORRT_RTX_ROOT"));
  CHECK_CODE(check_library(build("tensorrt", "10.15.1", "8.9"), true, 1, 7), StatusCode::kUnsupported);
  CHECK_CODE(check_library(build("tensorrt_rtx", "1.6.0", "8.9"), true, 1, 7), StatusCode::kUnsupported);
}

TEST(scatter_profiles_of_the_python_build_record) {
  // the in_place profile the engines stage writes (golden/export_mini, build golden-rtx): sequence
  // 1..74 (a chunk), logits 0..1, one profile for chunks, questions and decode steps
  auto m = read_manifest(harness::golden("export_mini"));
  CHECK_RESULT(m);
  if (!m.ok()) return;
  auto p = ScatterProfiles::create(m->builds.at("golden-rtx").engines.at("decoder_scatter"));
  CHECK_RESULT(p);
  if (!p.ok()) return;
  CHECK_EQ(p->max_tokens(), 74);
  auto chunk = p->plan(19, false);
  if (chunk.ok()) CHECK_EQ(show(*chunk), std::string("(0,19,0)"));
  auto step = p->plan(1, true);
  if (step.ok()) CHECK_EQ(show(*step), std::string("(0,1,1)"));
  auto question = p->plan(100, true);
  if (question.ok()) CHECK_EQ(show(*question), std::string("(0,74,0)(0,26,1)"));
}

TEST(scatter_profiles_by_sequence_length) {
  // the contract's profiles: prefill sequence_length [1, 19, 74], decode [1, 1, 1], logits_length [0, 1, 1]
  auto p = ScatterProfiles::create(scatter_entry({{1, 19, 74}, {1, 1, 1}}, {{0, 1, 1}, {0, 1, 1}}));
  CHECK_RESULT(p);
  if (!p.ok()) return;
  CHECK_EQ(p->max_tokens(), 74);
  auto chunk = p->plan(19, false);   // a chunk prefill: no logits
  CHECK_RESULT(chunk);
  if (chunk.ok()) CHECK_EQ(show(*chunk), std::string("(0,19,0)"));
  auto step = p->plan(1, true);      // a decode step: the decode profile, its logits
  CHECK_RESULT(step);
  if (step.ok()) CHECK_EQ(show(*step), std::string("(1,1,1)"));
  auto one = p->plan(1, false);
  if (one.ok()) CHECK_EQ(show(*one), std::string("(1,1,0)"));
  auto question = p->plan(200, true);   // longer than any profile: pieces, logits on the last only
  CHECK_RESULT(question);
  if (question.ok()) CHECK_EQ(show(*question), std::string("(0,74,0)(0,74,0)(0,52,1)"));
  auto tail = p->plan(75, true);        // the last piece is one token: the decode profile
  if (tail.ok()) CHECK_EQ(show(*tail), std::string("(0,74,0)(1,1,1)"));

  // a build whose profiles always compute a row of logits: computed on a prefill and ignored
  auto always = ScatterProfiles::create(scatter_entry({{1, 8, 16}}, {{1, 1, 1}}));
  CHECK_RESULT(always);
  if (always.ok()) {
    auto prefill = always->plan(20, false);
    if (prefill.ok()) CHECK_EQ(show(*prefill), std::string("(0,16,1)(0,4,1)"));
  }
  // among equal lengths, the profile that allows no logits on a prefill
  auto both = ScatterProfiles::create(scatter_entry({{1, 8, 16}, {1, 8, 16}}, {{1, 1, 1}, {0, 1, 1}}));
  if (both.ok()) {
    auto prefill = both->plan(10, false);
    if (prefill.ok()) CHECK_EQ(show(*prefill), std::string("(1,10,0)"));
    auto ask = both->plan(10, true);
    if (ask.ok()) CHECK_EQ(show(*ask), std::string("(0,10,1)"));
  }
  // bad build records
  EngineEntry no_logits = scatter_entry({{1, 8, 16}}, {{0, 1, 1}});
  no_logits.profiles[0].axes.erase("logits_length");
  CHECK_CODE(ScatterProfiles::create(no_logits).status(), StatusCode::kDataLoss);
  CHECK_CODE(ScatterProfiles::create(scatter_entry({{2, 8, 16}}, {{0, 1, 1}})).status(), StatusCode::kDataLoss);
  CHECK_CODE(ScatterProfiles::create(scatter_entry({{1, 8, 16}}, {{0, 0, 0}})).status(), StatusCode::kDataLoss);
  CHECK_CODE(ScatterProfiles::create(EngineEntry{}).status(), StatusCode::kDataLoss);
}

TEST(drop_rows_per_head) {
  // 2 heads x 5 rows of one 4-byte value: head h row r holds 10 * h + r
  std::vector<unsigned char> packed(2 * 5 * 4);
  for (int h = 0; h < 2; ++h)
    for (int r = 0; r < 5; ++r) {
      const float v = static_cast<float>(10 * h + r);
      std::memcpy(packed.data() + (h * 5 + r) * 4, &v, 4);
    }
  auto rows = [](const std::vector<unsigned char>& bytes) {
    std::vector<float> out(bytes.size() / 4);
    std::memcpy(out.data(), bytes.data(), bytes.size());
    return out;
  };
  CHECK(rows(drop_rows(packed, 2, 5, 4, 1, 3)) == (std::vector<float>{0, 3, 4, 10, 13, 14}));
  CHECK(rows(drop_rows(packed, 2, 5, 4, 0, 2)) == (std::vector<float>{2, 3, 4, 12, 13, 14}));
  CHECK(rows(drop_rows(packed, 2, 5, 4, 3, 5)) == (std::vector<float>{0, 1, 2, 10, 11, 12}));
  CHECK(rows(drop_rows(packed, 2, 5, 4, 2, 2)) == rows(packed));
  CHECK(drop_rows(packed, 2, 5, 4, 0, 5).empty());
  CHECK_OK(check_drop(0, 5, 5));
  CHECK_OK(check_drop(3, 3, 5));
  CHECK_CODE(check_drop(3, 6, 5), StatusCode::kInvalidArgument);
  CHECK_CODE(check_drop(4, 3, 5), StatusCode::kInvalidArgument);
  CHECK_CODE(check_drop(-1, 2, 5), StatusCode::kInvalidArgument);
}

TEST(rotate_keys_as_python) {
  // keys [2, 4], inv_freq [1, 0.01]: Python's rotate_keys(keys, delta, inv_freq) bit patterns
  const std::vector<float> keys = {0.5f, -1.25f, 2.0f, 0.75f, 3.0f, 0.125f, -0.5f, 1.5f};
  const std::vector<double> inv_freq = {1.0, 0.01};
  std::vector<float> k = keys;
  rotate_rows_f32(k.data(), 2, 4, 7, inv_freq);
  CHECK(bits32(k) == (std::vector<uint32_t>{0x3fd87035, 0xbf98e4c6, 0x3f96f3ab, 0x3f55e958, 0x3ff7738a, 0x3e6b1e66,
                                            0xc016442c, 0x3fbe6924}));
  k = keys;
  rotate_rows_f32(k.data(), 2, 4, -3, inv_freq);
  CHECK(bits32(k) == (std::vector<uint32_t>{0xbf46f8f5, 0xbfa2cebd, 0xbff4680a, 0x3f3650a7, 0xc039900e, 0x3da3bd17,
                                            0x3f6b1966, 0x3fc064bf}));
  std::vector<uint16_t> h = {0x3800, 0xbd00, 0x4000, 0x3a00, 0x4200, 0x3000, 0xb800, 0x3e00};   // the same keys in fp16
  rotate_rows_f16(h.data(), 2, 4, 7, inv_freq);
  CHECK(h == (std::vector<uint16_t>{0x3ec4, 0xbcc7, 0x3cb8, 0x3aaf, 0x3fbc, 0x3359, 0xc0b2, 0x3df3}));
  // delta 0 changes nothing; delta then -delta comes back within rounding
  k = keys;
  rotate_rows_f32(k.data(), 2, 4, 0, inv_freq);
  CHECK(k == keys);
  rotate_rows_f32(k.data(), 2, 4, 1234, inv_freq);
  rotate_rows_f32(k.data(), 2, 4, -1234, inv_freq);
  for (size_t i = 0; i < k.size(); ++i) CHECK_NEAR(k[i], keys[i], 1e-6);
  CHECK_OK(check_rotate(4, inv_freq));
  CHECK_CODE(check_rotate(6, inv_freq), StatusCode::kInvalidArgument);
}

TEST(double_to_half_rounds_once) {
  CHECK_EQ(double_to_half(1.0), 0x3c00);
  CHECK_EQ(double_to_half(-2.0), 0xc000);
  CHECK_EQ(double_to_half(65504.0), 0x7bff);
  CHECK_EQ(double_to_half(65519.99), 0x7bff);
  CHECK_EQ(double_to_half(65520.0), 0x7c00);                   // ties to even: inf
  CHECK_EQ(double_to_half(1.0 + 0x1p-11), 0x3c00);             // a tie: to even
  CHECK_EQ(double_to_half(1.0 + 3 * 0x1p-11), 0x3c02);
  CHECK_EQ(double_to_half(1.0 + 0x1p-11 + 0x1p-40), 0x3c01);   // numpy: 0x3c01; through float32 it would be 0x3c00
  CHECK_EQ(double_to_half(0x1p-24), 0x0001);                   // the smallest subnormal
  CHECK_EQ(double_to_half(0x1p-25), 0x0000);                   // half of it: ties to even
  CHECK_EQ(double_to_half(3 * 0x1p-26), 0x0001);
  CHECK_EQ(double_to_half(1e-300), 0x0000);
  CHECK_EQ(double_to_half(-0.0), 0x8000);
}

HARNESS_MAIN
