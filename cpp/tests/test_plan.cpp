// Chunk bookkeeping, the decoder engine's profile choice (ranges from the engines stage's build
// record in golden/export_mini), and the embedding table reader (golden safetensors from Python).
#include "harness.h"
#include "omnisift/embeddings.h"
#include "omnisift/manifest.h"
#include "omnisift/plan.h"

using namespace omnisift;
using nlohmann::json;

namespace {
Manifest mini() {
  auto m = read_manifest(harness::golden("export_mini"));
  if (!m.ok()) {
    std::cerr << m.status().to_string() << "\n";
    std::exit(1);
  }
  return std::move(m).value();
}
}  // namespace

TEST(chunk_budget_from_the_ratio_plan) {
  const Manifest m = mini();
  auto b = ChunkBudget::create(m, 0.25);
  CHECK_RESULT(b);
  CHECK_EQ(b->kept_per_chunk, 19);
  CHECK_EQ(b->kept_video + b->kept_audio, 19);
  CHECK_EQ(b->uncompressed_per_chunk, 74);
  CHECK_EQ(b->kv_after(100, 3), 157);
  CHECK_EQ(b->max_chunks(100, 124), (1024 - 224) / 19);
  CHECK_EQ(b->max_chunks(1000, 100), 0);
  auto full = ChunkBudget::create(m, 1.0);
  CHECK_RESULT(full);
  CHECK_EQ(full->kept_per_chunk, 74);
  CHECK_CODE(ChunkBudget::create(m, 0.3).status(), StatusCode::kNotFound);
}

TEST(decoder_profiles_from_the_build_record) {
  // The golden build record holds the engines stage's own ranges for max_context C = 1024 and
  // S_max = 74 (the largest K): prefill sequence 1..74 after 0..950 cached; decode 1 after 1..1023.
  // Expected pieces follow Python's runtime/trt_pipeline.choose_profile (checked against it once).
  const Manifest m = mini();
  const EngineEntry& decoder = m.builds.at("golden-sm00").engines.at("decoder");
  CHECK_EQ(decoder.profiles[0].axes.at("past_sequence_length")[2], 950);
  CHECK_EQ(decoder.profiles[1].axes.at("past_sequence_length")[2], 1023);
  auto profiles = DecoderProfiles::create(decoder);
  CHECK_RESULT(profiles);
  const struct { int64_t past, n; const char* want; } steps[] = {
      {0, 30, "prefill:30"}, {30, 74, "prefill:74"}, {200, 1, "decode:1"}, {0, 1, "prefill:1"},
      {950, 74, "prefill:74"}, {1023, 1, "decode:1"}, {1024, 1, "CONTEXT_FULL"}, {10, 75, "prefill:74 decode:1"},
      {1022, 2, "decode:1 decode:1"}, {940, 20, "prefill:20"}, {0, 200, "prefill:74 prefill:74 prefill:52"},
      {951, 74, "CONTEXT_FULL"}, {951, 3, "decode:1 decode:1 decode:1"}};
  for (const auto& s : steps) {
    auto plan = profiles->plan(s.past, s.n);
    std::string got;
    if (!plan.ok()) got = status_code_name(plan.status().code());
    else
      for (const auto& piece : *plan)
        got += (got.empty() ? "" : " ") + decoder.profiles[static_cast<size_t>(piece.profile)].name + ":" +
               std::to_string(piece.tokens);
    if (got != s.want)
      harness::fail(__FILE__, __LINE__, "step past=" + std::to_string(s.past) + " n=" + std::to_string(s.n) + ": " + got);
  }
  EngineEntry none;
  CHECK_CODE(DecoderProfiles::create(none).status(), StatusCode::kDataLoss);
}

TEST(golden_embeddings) {
  const json want = harness::load_json(harness::golden("embeddings.json"));
  for (const char* file : {"embeddings_f32.safetensors", "embeddings_f16.safetensors"}) {
    auto e = TextEmbeddings::open(harness::golden(file), want["tensor"], 16, 4);
    CHECK_RESULT(e);
    if (!e.ok()) continue;
    std::vector<float> rows;
    CHECK_OK(e->lookup({0, 5, 15}, rows));
    CHECK_EQ(rows.size(), 12u);
    const int picks[] = {0, 5, 15};
    for (int r = 0; r < 3; ++r)
      for (int k = 0; k < 4; ++k)
        CHECK_NEAR(rows[static_cast<size_t>(r * 4 + k)], want["values"][picks[r]][k].get<float>(), 1e-3);
    CHECK_CODE(e->lookup({16}, rows), StatusCode::kInvalidArgument);
    CHECK_CODE(e->lookup({-1}, rows), StatusCode::kInvalidArgument);
  }
  CHECK_CODE(TextEmbeddings::open(harness::golden("embeddings_f32.safetensors"), "embed_tokens", 17, 4).status(),
             StatusCode::kDataLoss);
  CHECK_CODE(TextEmbeddings::open(harness::golden("embeddings_f32.safetensors"), "other", 16, 4).status(),
             StatusCode::kDataLoss);
  CHECK_CODE(TextEmbeddings::open(harness::golden("layouts.json"), "embed_tokens", 16, 4).status(), StatusCode::kDataLoss);
  CHECK_CODE(TextEmbeddings::open("/nonexistent.safetensors", "embed_tokens", 16, 4).status(), StatusCode::kNotFound);
}

TEST(half_floats) {
  for (float f : {0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f, 0.333333f, -1e-6f})
    CHECK_NEAR(half_to_float(float_to_half(f)), f, std::fabs(f) * 1e-3 + 6e-8);
  CHECK_EQ(float_to_half(1.0f), 0x3C00);
  CHECK_EQ(float_to_half(65520.0f), 0x7C00);           // rounds to infinity
  CHECK_EQ(float_to_half(1.0f + 1.0f / 2048), 0x3C00);  // ties to even
  CHECK_EQ(half_to_float(0xC000), -2.0f);
}

HARNESS_MAIN
