// The chunk pipeline (Session over StubBackend) against Python's runtime over the same stand-in
// rule (golden/schedule.json): every decoder call (tokens, past length, positions), the answers,
// the streamed text and, for frames + PCM, the encoders' inputs chunk by chunk.
#include "golden_media.h"
#include "harness.h"
#include "omnisift/session.h"
#include "omnisift/stub_backend.h"

using namespace omnisift;
using nlohmann::json;

namespace {

std::shared_ptr<const ExportFolder> mini_folder() {
  auto m = read_manifest(harness::golden("export_mini"));
  auto t = Tokenizer::from_file(harness::golden("export_mini/tokenizer/tokenizer.json"));
  if (!m.ok() || !t.ok()) {
    std::cerr << m.status().to_string() << " " << t.status().to_string() << "\n";
    std::exit(1);
  }
  const int64_t vocab = m->dims.vocab;
  const int hidden = m->dims.hidden;
  return ExportFolder::from_parts(std::move(m).value(), std::move(t).value(),
                                  TextEmbeddings::from_table(std::vector<float>(static_cast<size_t>(vocab) * hidden), vocab, hidden));
}

// StubBackend that also records what reaches the encoders.
class RecordingBackend : public StubBackend {
 public:
  using StubBackend::StubBackend;
  Status encode_video(const std::vector<float>& pixels, std::vector<float>& out) override {
    pixel_sha256.push_back(sha256_hex(pixels.data(), pixels.size() * 4));
    return StubBackend::encode_video(pixels, out);
  }
  Status encode_audio(const std::vector<float>& mel, std::vector<float>& out) override {
    mels.push_back(mel);
    return StubBackend::encode_audio(mel, out);
  }
  std::vector<std::string> pixel_sha256;
  std::vector<std::vector<float>> mels;
};

void compare_calls(const std::vector<DecoderCall>& got, const json& want) {
  CHECK_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    const json& w = want[i];
    CHECK_EQ(got[i].n, w["n"].get<int64_t>());
    CHECK_EQ(got[i].past_length, w["past_length"].get<int64_t>());
    CHECK_EQ(got[i].past_length + got[i].n, w["attention_mask_length"].get<int64_t>());
    bool same = true;
    for (int r = 0; r < 3; ++r)
      for (int64_t k = 0; k < got[i].n; ++k) same = same && got[i].positions.at(r, k) == w["positions"][r][k].get<int64_t>();
    if (!same) harness::fail(__FILE__, __LINE__, "decoder call " + std::to_string(i) + ": positions differ");
  }
}

const json& scenario(const json& all, const std::string& name) {
  for (const json& s : all)
    if (s["name"] == name) return s;
  std::cerr << "no scenario " << name << "\n";
  std::exit(1);
}

}  // namespace

TEST(golden_schedule_whole_chunks) {
  const json s = scenario(harness::load_json(harness::golden("schedule.json")), "chunks");
  auto folder = mini_folder();
  const auto& d = folder->manifest().dims;
  StubBackend backend(folder->manifest(), 19, s["script"].get<std::vector<int64_t>>());
  SessionOptions options;
  options.ratio = s["ratio"];
  options.max_new_tokens = s["max_new_tokens"];
  auto session = Session::create(folder, backend, options);
  CHECK_RESULT(session);
  if (!session.ok()) return;
  const std::vector<float> pixels(static_cast<size_t>(d.chunk_patches()) * d.patch_dim), mel(128 * 200);
  for (int c = 0; c < s["chunks"].get<int>(); ++c) CHECK_OK((*session)->push_chunk(pixels, mel));
  for (int q = 0; q < 2; ++q) {
    auto answer = (*session)->ask_ids(s["question_ids"][q].get<std::vector<int64_t>>());
    CHECK_RESULT(answer);
    if (answer.ok()) CHECK(answer->ids == s["answers"][q].get<std::vector<int64_t>>());
  }
  compare_calls(backend.calls(), s["calls"]);
  CHECK_EQ((*session)->kv_length(), backend.kv_length());
}

TEST(golden_schedule_frames_and_pcm) {
  const json s = scenario(harness::load_json(harness::golden("schedule.json")), "media");
  auto folder = mini_folder();
  const Manifest& m = folder->manifest();
  RecordingBackend backend(m, 74, s["script"].get<std::vector<int64_t>>());
  SessionOptions options;
  options.ratio = s["ratio"];
  options.max_new_tokens = s["max_new_tokens"];
  auto session = Session::create(folder, backend, options);
  CHECK_RESULT(session);
  if (!session.ok()) return;
  const std::vector<uint8_t> frames = golden_media::frames(s["frames"], m.height, m.width);
  const std::vector<float> pcm = golden_media::pcm(s["samples"]);
  const size_t frame_bytes = static_cast<size_t>(m.height) * m.width * 3;
  for (const json& split : s["splits"]) {
    for (int f = split[0]; f < split[1].get<int>(); ++f)
      CHECK_OK((*session)->push_frame({frames.data() + f * frame_bytes, m.height, m.width}));
    const size_t s0 = split[2], s1 = split[3];
    CHECK_OK((*session)->push_audio(pcm.data() + s0, s1 - s0));
  }
  for (int q = 0; q < 2; ++q) {
    std::string streamed;
    auto answer = (*session)->ask(s["questions"][q], [&](const TokenEvent& e) { streamed += e.text; return true; });
    CHECK_RESULT(answer);
    if (!answer.ok()) continue;
    CHECK(answer->ids == s["answers"][q].get<std::vector<int64_t>>());
    CHECK_EQ(answer->text, s["answer_texts"][q].get<std::string>());
    CHECK_EQ(streamed, answer->text);
  }
  compare_calls(backend.calls(), s["calls"]);
  const json& inputs = s["chunk_inputs"];
  CHECK_EQ(backend.pixel_sha256.size(), inputs.size());
  for (size_t c = 0; c < inputs.size() && c < backend.mels.size(); ++c) {
    CHECK_EQ(backend.pixel_sha256[c], inputs[c]["pixel_sha256"].get<std::string>());
    const std::vector<float>& mel = backend.mels[c];
    double sum = 0;
    for (float v : mel) sum += v;
    CHECK_NEAR(sum, inputs[c]["mel_sum"].get<double>(), 1e-2);
    for (int k = 0; k < 128; ++k) {
      CHECK_NEAR(mel[static_cast<size_t>(k) * 200], inputs[c]["mel_first_frame"][k].get<double>(), 2e-5);
      CHECK_NEAR(mel[static_cast<size_t>(k) * 200 + 199], inputs[c]["mel_last_frame"][k].get<double>(), 2e-5);
    }
  }
}

TEST(context_full_is_an_error_and_changes_nothing) {
  auto folder = mini_folder();
  const auto& d = folder->manifest().dims;
  StubBackend probe(folder->manifest(), 19, {104});
  auto first = Session::create(folder, probe, SessionOptions{});
  CHECK_RESULT(first);
  const int64_t prefix = (*first)->kv_length();
  StubBackend backend(folder->manifest(), 19, {104});
  SessionOptions options;
  options.max_context = prefix + 2 * 19 + 10;
  options.max_new_tokens = 50;
  auto session = Session::create(folder, backend, options);
  CHECK_RESULT(session);
  const std::vector<float> pixels(static_cast<size_t>(d.chunk_patches()) * d.patch_dim), mel(128 * 200);
  CHECK_OK((*session)->push_chunk(pixels, mel));
  CHECK_OK((*session)->push_chunk(pixels, mel));
  CHECK_CODE((*session)->push_chunk(pixels, mel), StatusCode::kContextFull);
  CHECK_EQ((*session)->chunks(), 2);
  CHECK_EQ((*session)->kv_length(), prefix + 38);
  CHECK_CODE((*session)->ask("a question that is far too long for the room left").status(), StatusCode::kContextFull);
  // a short one fits; the answer runs until the context is full, then stops with the error
  std::vector<int64_t> streamed;
  auto answer = (*session)->ask_ids({72}, [&](const TokenEvent& e) { streamed.push_back(e.id); return true; });
  CHECK_CODE(answer.status(), StatusCode::kContextFull);
  CHECK_EQ((*session)->kv_length(), options.max_context);
  CHECK_EQ(backend.kv_length(), options.max_context);
  CHECK_EQ(static_cast<int64_t>(streamed.size()), options.max_context - prefix - 38 - 3 + 1);
}

TEST(bad_input_and_order) {
  auto folder = mini_folder();
  const Manifest& m = folder->manifest();
  StubBackend backend(m, 19, {151645});
  auto session = Session::create(folder, backend, SessionOptions{});
  CHECK_RESULT(session);
  std::vector<uint8_t> small(56 * 56 * 3);
  CHECK_CODE((*session)->push_frame({small.data(), 56, 56}), StatusCode::kInvalidArgument);
  CHECK_CODE((*session)->push_frame({nullptr, m.height, m.width}), StatusCode::kInvalidArgument);
  CHECK_CODE((*session)->push_chunk({1.0f}, {1.0f}), StatusCode::kInvalidArgument);
  std::vector<float> nan_pcm = {0.0f, std::nanf("")};
  CHECK_CODE((*session)->push_audio(nan_pcm.data(), nan_pcm.size()), StatusCode::kInvalidArgument);
  CHECK_CODE((*session)->ask("   ").status(), StatusCode::kInvalidArgument);
  CHECK_CODE((*session)->ask("what?").status(), StatusCode::kFailedPrecondition);   // no chunk yet
  SessionOptions bad;
  bad.ratio = 0.5;
  CHECK_CODE(Session::create(folder, backend, bad).status(), StatusCode::kNotFound);
  bad.ratio = 0.25;
  bad.max_new_tokens = 0;
  CHECK_CODE(Session::create(folder, backend, bad).status(), StatusCode::kInvalidArgument);
}

TEST(media_after_the_question_and_backend_failures) {
  auto folder = mini_folder();
  const auto& d = folder->manifest().dims;
  StubBackend backend(folder->manifest(), 19, {104, 151645});
  auto session = Session::create(folder, backend, SessionOptions{});
  const std::vector<float> pixels(static_cast<size_t>(d.chunk_patches()) * d.patch_dim), mel(128 * 200);
  CHECK_OK((*session)->push_chunk(pixels, mel));
  auto answer = (*session)->ask("what?");
  CHECK_RESULT(answer);
  CHECK_CODE((*session)->push_chunk(pixels, mel), StatusCode::kFailedPrecondition);
  CHECK_CODE((*session)->push_audio(nullptr, 0), StatusCode::kFailedPrecondition);

  class Failing : public StubBackend {
   public:
    using StubBackend::StubBackend;
    Status compress(const std::vector<float>&, const std::vector<float>&, const Positions&, CompressorOutput&) override {
      return BackendError("engine execution failed");
    }
  } failing(folder->manifest(), 19, {104});
  auto broken = Session::create(folder, failing, SessionOptions{});
  CHECK_RESULT(broken);
  CHECK_CODE((*broken)->push_chunk(pixels, mel), StatusCode::kBackend);
  CHECK_CODE((*broken)->push_chunk(pixels, mel), StatusCode::kFailedPrecondition);   // out of step: refused
}

HARNESS_MAIN
