// StreamingLayout against Python's StreamingLayout (golden/layouts.json, layout_errors.json, and
// layout_turns.json: conversations with video in several user turns, open_turn).
#include "harness.h"
#include "omnisift/layout.h"

using namespace omnisift;
using nlohmann::json;

namespace {

LayoutSpec spec() { return LayoutSpec{}; }   // Qwen2.5-Omni's defaults, as OmniSpec()

TokenIds qwen_ids() {
  TokenIds t;
  t.endoftext = 151643; t.im_start = 151644; t.im_end = 151645; t.audio = 151646; t.audio_bos = 151647;
  t.audio_eos = 151648; t.vision_bos = 151652; t.vision_eos = 151653; t.image = 151655; t.video = 151656;
  return t;
}

LayoutSpec qwen_spec() {
  LayoutSpec s = spec();
  s.tokens = qwen_ids();
  return s;
}

void append(std::vector<int64_t>& ids, std::vector<std::vector<int64_t>>& rows, const std::vector<int64_t>& more,
            const Positions& pos) {
  ids.insert(ids.end(), more.begin(), more.end());
  for (int r = 0; r < 3; ++r)
    for (int64_t i = 0; i < pos.n; ++i) rows[static_cast<size_t>(r)].push_back(pos.at(r, i));
}

}  // namespace

TEST(golden_layouts) {
  const json cases = harness::load_json(harness::golden("layouts.json"));
  CHECK(cases.size() >= 10);
  for (const json& c : cases) {
    const LayoutSpec s = qwen_spec();
    auto layout = StreamingLayout::create(s, c["prefix_ids"].get<std::vector<int64_t>>(), c["grid_hw"][0], c["grid_hw"][1]);
    CHECK_RESULT(layout);
    if (!layout.ok()) continue;
    std::vector<int64_t> ids;
    std::vector<std::vector<int64_t>> rows(3);
    append(ids, rows, layout->prefix().ids, layout->prefix().positions);
    auto counts = chunk_counts(s, c["n_grids"], c["n_audio"]);
    CHECK_RESULT(counts);
    CHECK_EQ(counts->size(), c["chunks"].size());
    for (size_t k = 0; k < counts->size(); ++k) {
      auto chunk = layout->chunk((*counts)[k].first, (*counts)[k].second);
      CHECK_RESULT(chunk);
      if (!chunk.ok()) break;
      const json& want = c["chunks"][k];
      CHECK_EQ(chunk->n_grids, want["n_grids"].get<int>());
      CHECK_EQ(chunk->n_audio, want["n_audio"].get<int>());
      CHECK_EQ(chunk->start, want["start"].get<int64_t>());
      CHECK_EQ(chunk->time_start, want["time_start"].get<int64_t>());
      CHECK_EQ(chunk->time_end, want["time_end"].get<int64_t>());
      CHECK_EQ(chunk->segment_max(), want["segment_max"].get<int64_t>());
      append(ids, rows, chunk->input_ids, chunk->positions);
    }
    auto span = layout->close(c["suffix_ids"].get<std::vector<int64_t>>());
    CHECK_RESULT(span);
    if (!span.ok()) continue;
    append(ids, rows, span->ids, span->positions);
    CHECK(ids == c["input_ids"].get<std::vector<int64_t>>());
    for (int r = 0; r < 3; ++r) CHECK(rows[static_cast<size_t>(r)] == c["position_ids"][r].get<std::vector<int64_t>>());
    CHECK_EQ(layout->rope_delta(), c["rope_delta_after_close"].get<int64_t>());
    auto text = layout->text(c["answer_tokens"].get<int64_t>());
    CHECK_RESULT(text);
    for (int r = 0; r < 3; ++r)
      for (int64_t i = 0; i < text->n; ++i) CHECK_EQ(text->at(r, i), c["text_positions"][r][i].get<int64_t>());
    CHECK_EQ(layout->next_position(), c["next_position"].get<int64_t>());
    CHECK_EQ(layout->length(), c["length"].get<int64_t>());
  }
}

TEST(golden_layout_errors) {
  const json cases = harness::load_json(harness::golden("layout_errors.json"));
  for (const json& c : cases) {
    const std::string name = c["name"];
    std::string failed = "none";
    auto layout = StreamingLayout::create(qwen_spec(), c["prefix_ids"].get<std::vector<int64_t>>(), 4, 4);
    if (!layout.ok()) failed = "create";
    for (size_t i = 0; layout.ok() && i < c["ops"].size() && failed == "none"; ++i) {
      const json& op = c["ops"][i];
      Status st;
      if (op[0] == "chunk") {
        st = layout->chunk(op[1], op[2]).status();
      } else if (op[0] == "close" || op[0] == "open_turn") {
        std::vector<int64_t> text;
        for (size_t k = 1; k < op.size(); ++k) text.push_back(op[k]);
        st = op[0] == "close" ? layout->close(text).status() : layout->open_turn(text).status();
      } else {
        st = layout->text(op[1]).status();
      }
      if (!st.ok()) {
        failed = std::to_string(i);
        CHECK(!st.message().empty());
      }
    }
    if (failed != c["fails_at"].get<std::string>())
      harness::fail(__FILE__, __LINE__, name + ": C++ failed at " + failed + ", Python at " + c["fails_at"].get<std::string>());
  }
}

TEST(golden_turn_layouts) {
  const json cases = harness::load_json(harness::golden("layout_turns.json"));
  CHECK(cases.size() >= 2);
  for (const json& c : cases) {
    auto layout = StreamingLayout::create(qwen_spec(), c["prefix_ids"].get<std::vector<int64_t>>(), c["grid_hw"][0], c["grid_hw"][1]);
    CHECK_RESULT(layout);
    if (!layout.ok()) continue;
    std::vector<int64_t> ids;
    std::vector<std::vector<int64_t>> rows(3);
    append(ids, rows, layout->prefix().ids, layout->prefix().positions);
    size_t chunk = 0;
    for (const json& op : c["ops"]) {
      if (op[0] == "chunk") {
        const Result<ChunkLayout> preview = layout->next_chunk(op[1], op[2]);
        auto got = layout->chunk(op[1], op[2]);
        CHECK_RESULT(got);
        if (!got.ok()) break;
        CHECK(preview.ok() && preview->positions.data == got->positions.data);   // the preview changes nothing
        const json& want = c["chunks"][chunk++];
        CHECK_EQ(got->index, want["index"].get<int>());
        CHECK_EQ(got->start, want["start"].get<int64_t>());
        CHECK_EQ(got->time_start, want["time_start"].get<int64_t>());
        CHECK_EQ(got->segment_max(), want["segment_max"].get<int64_t>());
        append(ids, rows, got->input_ids, got->positions);
      } else if (op[0] == "text") {
        auto got = layout->text(op[1]);
        CHECK_RESULT(got);
        if (got.ok()) append(ids, rows, {}, *got);
      } else {
        std::vector<int64_t> text;
        for (size_t k = 1; k < op.size(); ++k) text.push_back(op[k]);
        auto got = op[0] == "close" ? layout->close(text) : layout->open_turn(text);
        CHECK_RESULT(got);
        if (got.ok()) append(ids, rows, got->ids, got->positions);
      }
    }
    CHECK_EQ(chunk, c["chunks"].size());
    CHECK(ids == c["input_ids"].get<std::vector<int64_t>>());
    for (int r = 0; r < 3; ++r) CHECK(rows[static_cast<size_t>(r)] == c["position_ids"][r].get<std::vector<int64_t>>());
    CHECK_EQ(layout->rope_delta(), c["rope_delta"].get<int64_t>());
    CHECK_EQ(layout->next_position(), c["next_position"].get<int64_t>());
    CHECK_EQ(layout->length(), c["length"].get<int64_t>());
  }
}

TEST(worked_example_of_docs_layout_md) {
  // docs/layout.md: prefix 100 101 102, 56x56 frames, 4 grid steps, 53 audio tokens, suffix 200..203
  auto layout = StreamingLayout::create(qwen_spec(), {100, 101, 102}, 4, 4);
  CHECK_RESULT(layout);
  CHECK(layout->chunk(2, 50).ok());
  auto last = layout->chunk(2, 3);
  CHECK_RESULT(last);
  CHECK_EQ(last->positions.at(0, 4), 79);   // grid 3's time id
  auto span = layout->close({200, 201, 202, 203});
  CHECK_RESULT(span);
  CHECK_EQ(span->positions.at(0, 0), 57);   // eos pair at the last (audio) segment's max + 1
  CHECK_EQ(span->positions.at(2, 5), 61);
  CHECK_EQ(layout->rope_delta(), 0);
  CHECK_EQ(layout->next_position(), 80);
}

TEST(bad_grid_and_counts) {
  CHECK_CODE(StreamingLayout::create(qwen_spec(), {}, 5, 4).status(), StatusCode::kInvalidArgument);
  CHECK_CODE(StreamingLayout::create(qwen_spec(), {}, 0, 4).status(), StatusCode::kInvalidArgument);
  CHECK_CODE(chunk_counts(qwen_spec(), -1, 3).status(), StatusCode::kInvalidArgument);
  CHECK_CODE(chunk_counts(qwen_spec(), 2, 0).status(), StatusCode::kInvalidArgument);
  LayoutSpec odd = qwen_spec();
  odd.fps = 3.0;   // 2/3 s per grid step does not tile a 2 s chunk
  CHECK_CODE(chunk_counts(odd, 2, 50).status(), StatusCode::kUnsupported);
}

HARNESS_MAIN
