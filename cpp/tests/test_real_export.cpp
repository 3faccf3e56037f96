// A real export folder (OMNISIFT_EXPORT_DIR, e.g. from `omnisift-edge export`): the whole folder
// opens (checksums, tokenizer, chat template, safetensors embeddings) and a stub session runs on
// it. With OMNISIFT_EXPORT_EXPECT (a JSON written by tests/export/test_golden.py from the Python
// side) the prompt ids and tokenizations must match too. Exit 77 (skipped) without a folder.
#include <cstdlib>

#include "golden_media.h"
#include "harness.h"
#include "omnisift/session.h"
#include "omnisift/stub_backend.h"

using namespace omnisift;
using nlohmann::json;

namespace {
const char* export_dir() { return std::getenv("OMNISIFT_EXPORT_DIR"); }
}  // namespace

TEST(opens_and_runs) {
  auto folder = ExportFolder::open(export_dir());
  CHECK_RESULT(folder);
  if (!folder.ok()) return;
  const Manifest& m = (*folder)->manifest();
  const double ratio = m.ratios.back().ratio;
  auto budget = ChunkBudget::create(m, ratio);
  CHECK_RESULT(budget);
  StubBackend backend(m, budget->kept_per_chunk, {104, 105, m.stop_token_ids.front()});
  SessionOptions options;
  options.ratio = ratio;
  auto session = Session::create(*folder, backend, options);
  CHECK_RESULT(session);
  if (!session.ok()) return;
  const int64_t prefix = (*session)->kv_length();
  const std::vector<uint8_t> frames = golden_media::frames(8, m.height, m.width);
  const std::vector<float> pcm = golden_media::pcm(2 * 32000 + 40);
  for (int f = 0; f < 8; ++f)
    CHECK_OK((*session)->push_frame({frames.data() + static_cast<size_t>(f) * m.height * m.width * 3, m.height, m.width}));
  CHECK_OK((*session)->push_audio(pcm.data(), pcm.size()));
  CHECK_EQ((*session)->chunks(), 2);
  CHECK_EQ((*session)->kv_length(), prefix + 2 * budget->kept_per_chunk);
  auto answer = (*session)->ask("What is happening?");
  CHECK_RESULT(answer);
  if (answer.ok()) CHECK_EQ(answer->text, std::string("hi"));
}

TEST(matches_the_python_side) {
  const char* expect_path = std::getenv("OMNISIFT_EXPORT_EXPECT");
  if (!expect_path) return;
  const json expect = harness::load_json(expect_path);
  auto folder = ExportFolder::open(export_dir(), /*verify_checksums=*/false);
  CHECK_RESULT(folder);
  if (!folder.ok()) return;
  auto prefix = (*folder)->prompt().prefix_ids();
  auto suffix = (*folder)->prompt().suffix_ids(expect["question"]);
  CHECK_RESULT(prefix);
  CHECK_RESULT(suffix);
  CHECK(*prefix == expect["prefix_ids"].get<std::vector<int64_t>>());
  CHECK(*suffix == expect["suffix_ids"].get<std::vector<int64_t>>());
  for (const json& c : expect["encode"]) {
    auto ids = (*folder)->tokenizer().encode(c["text"]);
    CHECK_RESULT(ids);
    if (ids.ok() && *ids != c["ids"].get<std::vector<int64_t>>())
      harness::fail(__FILE__, __LINE__, "encode " + c["text"].dump() + " differs from Python");
  }
}

int main() {
  if (!export_dir() || !*export_dir()) {
    std::cout << "skipped: set OMNISIFT_EXPORT_DIR to an export folder (omnisift-edge export ... -o DIR)\n";
    return 77;
  }
  for (const auto& t : harness::registry()) {
    const int before = harness::failures();
    t.fn();
    std::cout << (harness::failures() == before ? "ok   " : "FAIL ") << t.name << "\n";
  }
  return harness::failures() ? 1 : 0;
}
