// Tokenizer against the Python tokenizer (transformers) on golden/tokenizer_cases.json, for the
// tiny default's byte-only tokenizer and a trained BPE with merges.
#include "harness.h"
#include "omnisift/manifest.h"
#include "omnisift/tokenizer.h"
#include "utf8.h"

using namespace omnisift;
using nlohmann::json;

namespace {

Tokenizer load(const std::string& name) {
  auto t = Tokenizer::from_file(harness::golden("tokenizer_" + name + "/tokenizer.json"));
  if (!t.ok()) {
    std::cerr << t.status().to_string() << "\n";
    std::exit(1);
  }
  return std::move(t).value();
}

std::string quoted(const std::string& s) { return json(s).dump(); }

void check_cases(const std::string& name) {
  const Tokenizer tok = load(name);
  const json cases = harness::load_json(harness::golden("tokenizer_cases.json"))[name];
  for (const json& c : cases["encode"]) {
    const std::string text = c["text"];
    auto ids = tok.encode(text);
    CHECK_RESULT(ids);
    if (!ids.ok()) continue;
    if (*ids != c["ids"].get<std::vector<int64_t>>())
      harness::fail(__FILE__, __LINE__, name + " encode " + quoted(text) + ": got " + json(*ids).dump() +
                                            ", Python " + c["ids"].dump());
    auto plain = tok.encode(text, /*split_special_tokens=*/true);   // untrusted text: control tokens as text
    CHECK_RESULT(plain);
    if (plain.ok() && *plain != c["ids_split_special"].get<std::vector<int64_t>>())
      harness::fail(__FILE__, __LINE__, name + " encode(split_special_tokens) " + quoted(text) + ": got " +
                                            json(*plain).dump() + ", Python " + c["ids_split_special"].dump());
    if (tok.decode(*ids) != c["decoded"].get<std::string>())
      harness::fail(__FILE__, __LINE__, name + " decode " + quoted(text) + ": got " + quoted(tok.decode(*ids)));
    if (tok.decode(*ids, true) != c["decoded_skip_special"].get<std::string>())
      harness::fail(__FILE__, __LINE__, name + " decode(skip) " + quoted(text) + ": got " + quoted(tok.decode(*ids, true)));
  }
  for (const json& c : cases["decode"]) {
    const auto ids = c["ids"].get<std::vector<int64_t>>();
    if (tok.decode(ids) != c["decoded"].get<std::string>())
      harness::fail(__FILE__, __LINE__, name + " decode " + c["name"].get<std::string>() + ": got " + quoted(tok.decode(ids)) +
                                            ", Python " + c["decoded"].dump());
    CHECK_EQ(tok.decode(ids, true), c["decoded_skip_special"].get<std::string>());
  }
}

}  // namespace

TEST(tiny_tokenizer_matches_python) { check_cases("tiny"); }
TEST(bpe_tokenizer_with_merges_matches_python) { check_cases("bpe"); }
TEST(bpe_with_the_gpt2_regex_matches_python) { check_cases("bpe_gpt2"); }

TEST(bpe_really_merges) {
  const Tokenizer tok = load("bpe");
  auto ids = tok.encode("the camera sees a robot");
  CHECK_RESULT(ids);
  CHECK(ids->size() < 20);   // fewer tokens than bytes (23): merges applied
  CHECK_EQ(*tok.token_to_id("<|im_end|>"), 151645);
  CHECK(tok.is_special(151645));
  CHECK(!tok.is_special(151657));   // <tool_call>: added, not special
}

TEST(stream_decoder_releases_whole_characters) {
  const Tokenizer tok = load("tiny");
  const std::string text = "naïve 東京 😀 ok";
  auto ids = tok.encode(text);
  CHECK_RESULT(ids);
  TokenStreamDecoder stream(tok);
  std::string joined;
  for (int64_t id : *ids) {
    const std::string piece = stream.push(id);
    std::vector<char32_t> cps;
    CHECK(detail::utf8_to_codepoints(piece, cps));   // never half a character
    joined += piece;
  }
  joined += stream.finish();
  CHECK_EQ(joined, text);
  // an incomplete tail is never shown; special tokens are skipped
  TokenStreamDecoder tail(tok);
  CHECK_EQ(tail.push(104), std::string("h"));
  CHECK_EQ(tail.push(151645), std::string(""));
  CHECK_EQ(tail.push(0xE6), std::string(""));
  CHECK_EQ(tail.finish(), std::string(""));
}

TEST(refuses_what_it_does_not_implement) {
  const json base = harness::load_json(harness::golden("tokenizer_bpe/tokenizer.json"));
  auto with = [&](const char* pointer, const json& value) {
    json j = base;
    j[json::json_pointer(pointer)] = value;
    return Tokenizer::from_json(j.dump()).status();
  };
  CHECK_CODE(with("/normalizer", json{{"type", "NFKC"}}), StatusCode::kUnsupported);
  CHECK_CODE(with("/pre_tokenizer/pretokenizers/0/pattern/Regex", "\\w+"), StatusCode::kUnsupported);
  CHECK_CODE(with("/pre_tokenizer/pretokenizers/1/add_prefix_space", true), StatusCode::kUnsupported);
  CHECK_CODE(with("/model/byte_fallback", true), StatusCode::kUnsupported);
  CHECK_CODE(with("/model/type", "WordPiece"), StatusCode::kUnsupported);
  CHECK_CODE(with("/decoder", json{{"type", "Metaspace"}}), StatusCode::kUnsupported);
  CHECK_CODE(with("/added_tokens/0/lstrip", true), StatusCode::kUnsupported);
  CHECK_CODE(with("/model/merges/0", "nosuchtoken x"), StatusCode::kUnsupported);
  CHECK_CODE(Tokenizer::from_json("{not json").status(), StatusCode::kDataLoss);
  CHECK_CODE(Tokenizer::from_file("/nonexistent/tokenizer.json").status(), StatusCode::kNotFound);
  const Tokenizer tok = load("tiny");
  CHECK_CODE(tok.encode(std::string("bad \xC3\x28 utf8")).status(), StatusCode::kInvalidArgument);
}

TEST(lossy_utf8_is_rusts) {
  using detail::utf8_lossy;
  CHECK_EQ(utf8_lossy("a\xF0\x9F\x98"), std::string("a\xEF\xBF\xBD"));          // truncated tail: one U+FFFD
  CHECK_EQ(utf8_lossy("\xE0\x80z"), std::string("\xEF\xBF\xBD\xEF\xBF\xBDz"));   // E0 80: two maximal subparts
  CHECK_EQ(utf8_lossy("\xE6\x97z"), std::string("\xEF\xBF\xBDz"));              // E6 97: one
}

HARNESS_MAIN
