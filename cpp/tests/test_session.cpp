// The chunk pipeline (Session over StubBackend) against Python's runtime over the same stand-in
// rule (golden/schedule.json): every backend call on the KV cache (decoder calls with tokens, past
// length, positions and whether logits were asked for; evictions; re-basings), the answers, the
// streamed text and, for frames + PCM, the encoders' inputs chunk by chunk. The streams replayed
// op by op cover new user turns after answers, the sliding window and re-based positions.
#include "golden_media.h"
#include "harness.h"
#include "omnisift/session.h"
#include "omnisift/stub_backend.h"

#include <thread>

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
  Status encode_audio(const std::vector<float>& mel, int64_t valid_frames, std::vector<float>& out) override {
    mels.push_back(mel);
    mel_frames.push_back(valid_frames);
    return StubBackend::encode_audio(mel, valid_frames, out);
  }
  std::vector<std::string> pixel_sha256;
  std::vector<std::vector<float>> mels;
  std::vector<int64_t> mel_frames;   // a short last window: fewer real frames (zeros after them)
};

void compare_calls(const std::vector<BackendCall>& got, const json& want) {
  CHECK_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    const json& w = want[i];
    const std::string where = "backend call " + std::to_string(i) + " (" + w["op"].get<std::string>() + ")";
    const BackendCall& g = got[i];
    if (w["op"] == "drop") {
      if (g.kind != BackendCall::Kind::kDrop || g.start != w["start"].get<int64_t>() || g.stop != w["stop"].get<int64_t>())
        harness::fail(__FILE__, __LINE__, where + ": not the same drop");
      continue;
    }
    if (w["op"] == "rotate") {
      if (g.kind != BackendCall::Kind::kRotate || g.delta != w["delta"].get<int64_t>())
        harness::fail(__FILE__, __LINE__, where + ": not the same rotation");
      continue;
    }
    if (g.kind != BackendCall::Kind::kDecode) {
      harness::fail(__FILE__, __LINE__, where + ": C++ made another call");
      continue;
    }
    CHECK_EQ(g.n, w["n"].get<int64_t>());
    CHECK_EQ(g.past_length, w["past_length"].get<int64_t>());
    CHECK_EQ(g.past_length + g.n, w["attention_mask_length"].get<int64_t>());
    if (g.logits != w["logits"].get<bool>()) harness::fail(__FILE__, __LINE__, where + ": logits asked differently");
    bool same = true;
    for (int r = 0; r < 3; ++r)
      for (int64_t k = 0; k < g.n; ++k) same = same && g.positions.at(r, k) == w["positions"][r][k].get<int64_t>();
    if (!same) harness::fail(__FILE__, __LINE__, where + ": positions differ");
  }
}

// What reached the encoders, chunk by chunk: pixel patches bit for bit, log-mel within 2e-5.
void compare_chunk_inputs(const RecordingBackend& backend, const json& inputs) {
  CHECK_EQ(backend.pixel_sha256.size(), inputs.size());
  for (size_t c = 0; c < inputs.size() && c < backend.mels.size(); ++c) {
    CHECK_EQ(backend.pixel_sha256[c], inputs[c]["pixel_sha256"].get<std::string>());
    const std::vector<float>& mel = backend.mels[c];
    double sum = 0;
    for (float v : mel) sum += v;
    CHECK_NEAR(sum, inputs[c]["mel_sum"].get<double>(), 1e-2);
    for (int k = 0; k < 128; ++k) {
      CHECK_NEAR(mel[static_cast<size_t>(k) * 200], inputs[c]["mel_first_frame"][k].get<double>(), 2e-5);
      const size_t last = static_cast<size_t>(backend.mel_frames[c] - 1);
      CHECK_NEAR(mel[static_cast<size_t>(k) * 200 + last], inputs[c]["mel_last_frame"][k].get<double>(), 2e-5);
    }
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
  compare_chunk_inputs(backend, s["chunk_inputs"]);
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

namespace {

// golden/schedule.json STREAMS: media appends, finish() and questions replayed through push_frame,
// push_audio, finish and ask; every backend call, answer and the window's state compared.
SessionOptions stream_options(const json& s) {
  SessionOptions options;
  options.ratio = s["ratio"];
  options.max_new_tokens = s["max_new_tokens"];
  if (!s["system"].is_null()) options.system = s["system"].get<std::string>();
  if (!s["max_context"].is_null()) options.max_context = s["max_context"];
  const json& ctx = s["context"];
  options.context.policy = *parse_context_policy(ctx["policy"]);
  if (ctx.contains("window_seconds")) options.context.window_seconds = ctx["window_seconds"].get<double>();
  if (ctx.contains("position_limit")) options.context.position_limit = ctx["position_limit"].get<int64_t>();
  return options;
}

// One stream replayed op by op (so that several can interleave, or run on threads): what the
// session returned is recorded by step() and compared by check(), on the test's thread.
class StreamReplay {
 public:
  StreamReplay(const json& s, const Manifest& m, Session& session)
      : s_(s), m_(m), session_(session), frames_(golden_media::frames(s["frames"], m.height, m.width)),
        per_frame_(m.layout.sample_rate / static_cast<int64_t>(m.layout.fps)),
        pcm_(golden_media::pcm(s["frames"].get<int64_t>() * per_frame_)) {}

  // Runs the next op; false when there is none.
  bool step() {
    if (op_ >= s_["ops"].size()) return false;
    const json& op = s_["ops"][op_++];
    const size_t frame_bytes = static_cast<size_t>(m_.height) * m_.width * 3;
    if (op[0] == "media") {
      const int f0 = op[1], f1 = op[2];
      for (int f = f0; f < f1; ++f) {   // a capture loop: each frame with its half second of PCM
        record(session_.push_frame({frames_.data() + f * frame_bytes, m_.height, m_.width}));
        record(session_.push_audio(pcm_.data() + f * per_frame_, static_cast<size_t>(per_frame_)));
      }
    } else if (op[0] == "finish") {
      record(session_.finish());
    } else {
      auto answer = session_.ask(op[1]);
      record(answer.status());
      if (answer.ok()) answers_.push_back(*answer);
    }
    return true;
  }

  void check(const StubBackend& backend) const {
    for (const std::string& e : errors_) harness::fail(__FILE__, __LINE__, s_["name"].get<std::string>() + ": " + e);
    CHECK_EQ(answers_.size(), s_["answers"].size());
    for (size_t q = 0; q < answers_.size() && q < s_["answers"].size(); ++q) {
      CHECK(answers_[q].ids == s_["answers"][q].get<std::vector<int64_t>>());
      CHECK_EQ(answers_[q].text, s_["answer_texts"][q].get<std::string>());
    }
    compare_calls(backend.calls(), s_["calls"]);
    const KvWindow& w = session_.window();
    CHECK_EQ(session_.kv_length(), s_["kv_length"].get<int64_t>());
    CHECK_EQ(backend.kv_length(), s_["kv_length"].get<int64_t>());
    CHECK_EQ(w.evicted_chunks(), s_["evicted_chunks"].get<int64_t>());
    CHECK_EQ(w.base(), s_["base"].get<int64_t>());
    CHECK_EQ(session_.chunks(), s_["chunks"].get<int>());
    CHECK_EQ(session_.layout().next_position(), s_["next_position"].get<int64_t>());
  }

 private:
  void record(const Status& st) {
    if (!st.ok()) errors_.push_back("op " + std::to_string(op_ - 1) + ": " + st.to_string());
  }

  const json& s_;
  const Manifest& m_;
  Session& session_;
  std::vector<uint8_t> frames_;
  int64_t per_frame_;
  std::vector<float> pcm_;
  size_t op_ = 0;
  std::vector<Answer> answers_;
  std::vector<std::string> errors_;
};

void replay_stream(const std::string& name) {
  const json s = scenario(harness::load_json(harness::golden("schedule.json")), name);
  auto folder = mini_folder();
  const Manifest& m = folder->manifest();
  auto budget = ChunkBudget::create(m, s["ratio"]);
  CHECK_RESULT(budget);
  RecordingBackend backend(m, budget->kept_per_chunk, s["script"].get<std::vector<int64_t>>());
  auto session = Session::create(folder, backend, stream_options(s));
  CHECK_RESULT(session);
  if (!session.ok()) return;
  StreamReplay replay(s, m, **session);
  while (replay.step()) {
  }
  replay.check(backend);
  if (s.contains("chunk_inputs")) compare_chunk_inputs(backend, s["chunk_inputs"]);   // each turn's own log-mel
  for (const BackendCall& c : backend.calls())
    if (c.kind == BackendCall::Kind::kRotate) {   // the manifest's rope theta and head_dim, as Python's inv_freq
      CHECK_EQ(c.inv_freq.size(), s["inv_freq"].size());
      for (size_t j = 0; j < c.inv_freq.size() && j < s["inv_freq"].size(); ++j)
        CHECK_NEAR(c.inv_freq[j], s["inv_freq"][j].get<double>(), 1e-15);
    }
}

// `n` sessions of stream `name` on one StubEngines, each with its own backend: the engines load
// once, and every session's calls, answers and window equal the golden stream run alone. `threads`:
// each session on its own thread; else interleaved op by op, session k starting k ops late.
void shared_sessions(const std::string& name, int n, bool threads) {
  const json s = scenario(harness::load_json(harness::golden("schedule.json")), name);
  auto folder = mini_folder();
  const Manifest& m = folder->manifest();
  auto budget = ChunkBudget::create(m, s["ratio"]);
  CHECK_RESULT(budget);
  if (!budget.ok()) return;
  const int64_t loads_before = StubEngines::loads();
  std::shared_ptr<StubEngines> engines = StubEngines::load(m, budget->kept_per_chunk, s["script"].get<std::vector<int64_t>>());
  std::vector<std::unique_ptr<Session>> sessions;
  std::vector<std::unique_ptr<StreamReplay>> replays;
  for (int k = 0; k < n; ++k) {
    auto session = Session::create(folder, *engines, stream_options(s));
    CHECK_RESULT(session);
    if (!session.ok()) return;
    sessions.push_back(std::move(session).value());
    replays.push_back(std::make_unique<StreamReplay>(s, m, *sessions.back()));
  }
  CHECK_EQ(StubEngines::loads() - loads_before, 1);
  CHECK_EQ(engines.use_count(), n + 1);   // each session's backend holds the engines
  if (threads) {
    std::vector<std::thread> workers;
    for (auto& r : replays) workers.emplace_back([&r] { while (r->step()) {} });
    for (std::thread& t : workers) t.join();
  } else {
    for (int t = 0, running = n; running > 0; ++t) {
      running = 0;
      for (int k = 0; k < n; ++k)
        if (t < k || replays[k]->step()) ++running;   // session k starts at op time k
    }
  }
  for (int k = 0; k < n; ++k) {
    const auto* backend = dynamic_cast<const StubBackend*>(&sessions[k]->backend());
    CHECK(backend != nullptr && backend->engines() == engines);
    if (backend) replays[k]->check(*backend);
  }
  CHECK_EQ(StubEngines::loads() - loads_before, 1);
  sessions.clear();   // the sessions' backends let go of the engines
  CHECK_EQ(engines.use_count(), 1);
}

}  // namespace

TEST(golden_stream_new_turns_after_answers) { replay_stream("turns"); }
TEST(golden_stream_sliding_window) { replay_stream("sliding"); }
TEST(golden_stream_rebased_positions) { replay_stream("rebase"); }
TEST(shared_engines_interleaved_sessions_equal_separate_ones) {
  shared_sessions("turns", 3, false);
  shared_sessions("sliding", 3, false);
}
TEST(shared_engines_sessions_on_threads_equal_separate_ones) {
  shared_sessions("rebase", 4, true);
  shared_sessions("turns", 4, true);
}
TEST(standalone_stub_backends_load_each) {
  auto folder = mini_folder();
  const int64_t before = StubEngines::loads();
  StubBackend a(folder->manifest(), 19, {1}), b(folder->manifest(), 19, {1});
  CHECK_EQ(StubEngines::loads() - before, 2);
  CHECK(a.engines() != b.engines());
}

namespace {
SessionOptions sliding_options(std::optional<double> window, int64_t max_context) {
  SessionOptions o;
  o.system = "Be brief.";
  o.max_context = max_context;
  o.context.policy = ContextPolicy::Kind::kSliding;
  o.context.window_seconds = window;
  return o;
}
}  // namespace

TEST(context_policy_bad_input) {
  auto folder = mini_folder();
  StubBackend backend(folder->manifest(), 19, {104});
  SessionOptions error_with_window;
  error_with_window.context.window_seconds = 10;
  const auto refused = Session::create(folder, backend, error_with_window);
  CHECK_CODE(refused.status(), StatusCode::kInvalidArgument);
  CHECK(refused.status().message().find("applies to the sliding context policy") != std::string::npos);
  CHECK_CODE(Session::create(folder, backend, sliding_options(1.0, 0)).status(), StatusCode::kInvalidArgument);
  const auto too_wide = Session::create(folder, backend, sliding_options(60.0, 256));   // 27-token prompt, K 19: 12 chunks fit
  CHECK_CODE(too_wide.status(), StatusCode::kInvalidArgument);
  CHECK(too_wide.status().message().find("use window_seconds 24 or less") != std::string::npos);
  SessionOptions low_limit = sliding_options(std::nullopt, 0);
  low_limit.context.position_limit = 10;
  CHECK_CODE(Session::create(folder, backend, low_limit).status(), StatusCode::kInvalidArgument);
}

TEST(sliding_refuses_a_question_longer_than_the_window_and_stays_usable) {
  auto folder = mini_folder();
  const auto& d = folder->manifest().dims;
  StubBackend backend(folder->manifest(), 19, {104, 151645});
  auto session = Session::create(folder, backend, sliding_options(std::nullopt, 256));
  CHECK_RESULT(session);
  if (!session.ok()) return;
  const std::vector<float> pixels(static_cast<size_t>(d.chunk_patches()) * d.patch_dim), mel(128 * 200);
  for (int c = 0; c < 20; ++c) CHECK_OK((*session)->push_chunk(pixels, mel));   // 20 chunks: max_context evicts
  CHECK((*session)->kv_length() <= 256);
  CHECK_EQ((*session)->window().evicted_chunks(), 20 - (256 - 27) / 19);
  std::string long_question;
  for (int i = 0; i < 300; ++i) long_question += "why ";
  const int64_t before = (*session)->kv_length();
  const auto refused = (*session)->ask(long_question);
  CHECK_CODE(refused.status(), StatusCode::kInvalidArgument);
  CHECK(refused.status().message().find("longer than the window") != std::string::npos);
  CHECK_EQ((*session)->kv_length(), before);   // refused before anything changed
  auto answer = (*session)->ask("Why?");
  CHECK_RESULT(answer);
  if (answer.ok()) CHECK(answer->ids == (std::vector<int64_t>{104, 151645}));
}

TEST(sliding_follow_up_that_the_protected_text_cannot_hold_is_refused_cleanly) {
  // the question/answer run being written is never evicted (Python's KVWindow); when it fills the
  // window, the next append is refused (kInvalidArgument, as Python's UsageError) and the session is
  // left as it was
  auto folder = mini_folder();
  const auto& d = folder->manifest().dims;
  StubBackend backend(folder->manifest(), 19, {104});   // never stops: answers run to max_new_tokens
  SessionOptions options = sliding_options(std::nullopt, 256);
  options.max_new_tokens = 150;
  auto session = Session::create(folder, backend, options);
  CHECK_RESULT(session);
  if (!session.ok()) return;
  const std::vector<float> pixels(static_cast<size_t>(d.chunk_patches()) * d.patch_dim), mel(128 * 200);
  CHECK_OK((*session)->push_chunk(pixels, mel));
  CHECK_RESULT((*session)->ask("What?"));
  const auto calls = backend.calls().size();
  const int64_t length = (*session)->kv_length();
  const int64_t next = (*session)->layout().next_position();
  const Status refused = (*session)->ask("And what happened after that, in detail?").status();
  CHECK_CODE(refused, StatusCode::kInvalidArgument);
  CHECK(refused.message().find("question and answer being written") != std::string::npos);
  CHECK_EQ(backend.calls().size(), calls);
  CHECK_EQ((*session)->kv_length(), length);
  CHECK_EQ((*session)->layout().next_position(), next);
  CHECK_OK((*session)->push_chunk(pixels, mel));   // more media still works, in a new turn
}

TEST(media_after_finish_and_backend_failures) {
  auto folder = mini_folder();
  const auto& d = folder->manifest().dims;
  StubBackend backend(folder->manifest(), 19, {104, 151645});
  auto session = Session::create(folder, backend, SessionOptions{});
  const std::vector<float> pixels(static_cast<size_t>(d.chunk_patches()) * d.patch_dim), mel(128 * 200);
  CHECK_OK((*session)->push_chunk(pixels, mel));
  CHECK_OK((*session)->finish());
  const Status after_finish = (*session)->push_chunk(pixels, mel);
  CHECK_CODE(after_finish, StatusCode::kFailedPrecondition);
  CHECK(after_finish.message().find("ask one first") != std::string::npos);
  CHECK_CODE((*session)->push_audio(nullptr, 0), StatusCode::kFailedPrecondition);
  CHECK_RESULT((*session)->ask("what?"));
  CHECK_OK((*session)->push_chunk(pixels, mel));   // after an answer: a new user turn
  CHECK(!(*session)->closed());
  CHECK_EQ((*session)->layout().turn_chunks(), 1);

  class Failing : public StubBackend {
   public:
    using StubBackend::StubBackend;
    Status compress(const std::vector<float>&, const std::vector<float>&, const Positions&, int64_t, int64_t,
                    CompressorOutput&) override {
      return BackendError("engine execution failed");
    }
  } failing(folder->manifest(), 19, {104});
  auto broken = Session::create(folder, failing, SessionOptions{});
  CHECK_RESULT(broken);
  CHECK_CODE((*broken)->push_chunk(pixels, mel), StatusCode::kBackend);
  CHECK_EQ((*broken)->chunks(), 0);   // refused before the layout advanced

  class FailingDecoder : public StubBackend {
   public:
    using StubBackend::StubBackend;
    Status decode(const std::vector<float>& e, const Positions& p, std::vector<float>* l) override {
      if (p.n == 19) return BackendError("engine execution failed");
      return StubBackend::decode(e, p, l);
    }
  } failing_decoder(folder->manifest(), 19, {104});
  auto out_of_step = Session::create(folder, failing_decoder, SessionOptions{});
  CHECK_RESULT(out_of_step);
  CHECK_CODE((*out_of_step)->push_chunk(pixels, mel), StatusCode::kBackend);
  CHECK_CODE((*out_of_step)->push_chunk(pixels, mel), StatusCode::kFailedPrecondition);   // out of step: refused
}

HARNESS_MAIN
