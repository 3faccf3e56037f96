#include "omnisift/tokenizer.h"

#include <array>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "json_util.h"
#include "omnisift/manifest.h"
#include "pretokenize.h"
#include "utf8.h"

namespace omnisift {

using detail::FieldError;
using detail::json;

namespace {

// GPT-2's printable stand-ins for the 256 bytes (what byte-level BPE vocabularies are spelled in).
std::array<char32_t, 256> byte_alphabet() {
  std::array<char32_t, 256> chars{};
  char32_t extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    chars[static_cast<size_t>(b)] = printable ? static_cast<char32_t>(b) : 256 + extra++;
  }
  return chars;
}

// The bytes a token string stands for: each character's byte when all are in the alphabet
// (`mapped` = true), else the string's own UTF-8 bytes (the tokenizers library's ByteLevel
// decoder rule).
std::string token_string_bytes(const std::string& token, const std::unordered_map<char32_t, unsigned char>& char_byte,
                               bool* mapped = nullptr) {
  if (mapped) *mapped = false;
  std::vector<char32_t> cps;
  if (!detail::utf8_to_codepoints(token, cps)) return token;
  std::string out;
  for (char32_t c : cps) {
    auto it = char_byte.find(c);
    if (it == char_byte.end()) return token;
    out += static_cast<char>(it->second);
  }
  if (mapped) *mapped = true;
  return out;
}

uint64_t pair_key(int64_t a, int64_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b); }

struct Added {
  std::string content;   // as matched (NFC-normalized for normalized tokens)
  int64_t id;
};

}  // namespace

struct Tokenizer::Impl {
  detail::SplitPattern pattern = detail::SplitPattern::kNone;
  bool nfc = false;
  bool ignore_merges = false;
  std::array<int64_t, 256> byte_id{};
  std::unordered_map<std::string, int64_t> bytes_to_id;        // vocabulary by the bytes it stands for
  std::unordered_map<int64_t, std::string> id_bytes;           // decoding: bytes of each id
  std::unordered_map<std::string, int64_t> token_ids;          // as spelled in tokenizer.json
  std::unordered_map<uint64_t, std::pair<int32_t, int64_t>> merges;   // (left, right) -> (rank, merged)
  std::vector<Added> raw_added, normalized_added;              // matched before / after normalization
  std::unordered_set<int64_t> special;
  int64_t max_id = -1;

  // Split `text` at added tokens (leftmost, then longest): (text, -1) pieces and (token, id). With
  // `special_as_text`, a special token's match stays text (its span consumed, as the tokenizers
  // library skips the match under encode_special_tokens); non-special added tokens still split.
  std::vector<std::pair<std::string, int64_t>> split_added(const std::string& text, const std::vector<Added>& added,
                                                           bool special_as_text = false) const {
    std::vector<std::pair<std::string, int64_t>> out;
    size_t start = 0, i = 0;
    while (i < text.size()) {
      const Added* best = nullptr;
      for (const Added& a : added)
        if (!a.content.empty() && (!best || a.content.size() > best->content.size()) &&
            text.compare(i, a.content.size(), a.content) == 0)
          best = &a;
      if (!best) { ++i; continue; }
      if (special_as_text && special.count(best->id)) { i += best->content.size(); continue; }
      if (i > start) out.emplace_back(text.substr(start, i - start), -1);
      out.emplace_back(best->content, best->id);
      i += best->content.size();
      start = i;
    }
    if (start < text.size()) out.emplace_back(text.substr(start), -1);
    return out;
  }

  // The tokenizers library's Word::merge_all: lowest rank first, then leftmost; stale entries skipped.
  Status bpe(const std::string& piece, std::vector<int64_t>& out) const {
    if (ignore_merges) {
      auto it = bytes_to_id.find(piece);
      if (it != bytes_to_id.end()) { out.push_back(it->second); return Status::Ok(); }
    }
    struct Sym { int64_t id; int prev, next; size_t len; };
    std::vector<Sym> syms;
    for (size_t k = 0; k < piece.size(); ++k) {
      const int64_t id = byte_id[static_cast<unsigned char>(piece[k])];
      if (id < 0) return Unsupported("the tokenizer's vocabulary lacks byte " + std::to_string(static_cast<unsigned char>(piece[k])));
      syms.push_back({id, static_cast<int>(k) - 1, k + 1 < piece.size() ? static_cast<int>(k) + 1 : -1, 1});
    }
    struct Merge { int pos; int32_t rank; int64_t id; };
    auto later = [](const Merge& a, const Merge& b) { return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos; };
    std::priority_queue<Merge, std::vector<Merge>, decltype(later)> queue(later);
    for (size_t k = 0; k + 1 < syms.size(); ++k) {
      auto m = merges.find(pair_key(syms[k].id, syms[k + 1].id));
      if (m != merges.end()) queue.push({static_cast<int>(k), m->second.first, m->second.second});
    }
    while (!queue.empty()) {
      const Merge top = queue.top();
      queue.pop();
      Sym& cur = syms[static_cast<size_t>(top.pos)];
      if (cur.len == 0 || cur.next == -1) continue;
      const int next_pos = cur.next;
      const Sym right = syms[static_cast<size_t>(next_pos)];
      auto m = merges.find(pair_key(cur.id, right.id));
      if (m == merges.end() || m->second.second != top.id) continue;   // expired entry
      cur.id = top.id;
      cur.len += right.len;
      cur.next = right.next;
      syms[static_cast<size_t>(next_pos)].len = 0;
      if (right.next >= 0) syms[static_cast<size_t>(right.next)].prev = top.pos;
      if (cur.prev >= 0) {
        auto pm = merges.find(pair_key(syms[static_cast<size_t>(cur.prev)].id, cur.id));
        if (pm != merges.end()) queue.push({cur.prev, pm->second.first, pm->second.second});
      }
      if (cur.next >= 0) {
        auto nm = merges.find(pair_key(cur.id, syms[static_cast<size_t>(cur.next)].id));
        if (nm != merges.end()) queue.push({top.pos, nm->second.first, nm->second.second});
      }
    }
    for (const Sym& s : syms)
      if (s.len) out.push_back(s.id);
    return Status::Ok();
  }

  void parse(const json& j);
};

namespace {

const json* find(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

bool is_type(const json& obj, const char* type) {
  const json* t = find(obj, "type");
  return t && t->is_string() && *t == type;
}

void check_byte_level(const json& p, bool want_regex, detail::SplitPattern& pattern) {
  if (detail::get_bool(p, "add_prefix_space", "pre_tokenizer", false))
    throw FieldError("ByteLevel add_prefix_space=true is not supported");
  const bool use_regex = detail::get_bool(p, "use_regex", "pre_tokenizer", true);
  if (want_regex) pattern = use_regex ? detail::SplitPattern::kGpt2 : detail::SplitPattern::kNone;
  else if (use_regex) throw FieldError("a Split pre-tokenizer followed by ByteLevel with use_regex=true is not supported");
}

}  // namespace

void Tokenizer::Impl::parse(const json& j) {
  const json& model = detail::field(j, "model", "");
  if (const json* t = find(model, "type"); t && *t != "BPE") throw FieldError("model type " + t->dump() + " is not BPE");
  if (detail::get_bool(model, "byte_fallback", "model", false)) throw FieldError("byte_fallback BPE is not supported");
  if (find(model, "dropout")) throw FieldError("BPE dropout is not supported");
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (const json* v = find(model, k); v && *v != "") throw FieldError(std::string("BPE ") + k + " is not supported");
  ignore_merges = detail::get_bool(model, "ignore_merges", "model", false);

  if (const json* n = find(j, "normalizer")) {
    if (is_type(*n, "NFC")) nfc = true;
    else if (is_type(*n, "Sequence") && find(*n, "normalizers") && (*n)["normalizers"].size() == 1 &&
             is_type((*n)["normalizers"][0], "NFC")) nfc = true;
    else throw FieldError("normalizer " + n->dump() + " is not supported (only NFC or none)");
  }
  const json* pre = find(j, "pre_tokenizer");
  if (!pre) throw FieldError("no pre_tokenizer (a byte-level BPE tokenizer needs ByteLevel)");
  if (is_type(*pre, "ByteLevel")) {
    check_byte_level(*pre, true, pattern);
  } else if (is_type(*pre, "Sequence") && find(*pre, "pretokenizers") && (*pre)["pretokenizers"].size() == 2 &&
             is_type((*pre)["pretokenizers"][0], "Split") && is_type((*pre)["pretokenizers"][1], "ByteLevel")) {
    const json& split = (*pre)["pretokenizers"][0];
    const json* regex = find(split, "pattern") ? find(split["pattern"], "Regex") : nullptr;
    if (!regex || !regex->is_string()) throw FieldError("Split pre-tokenizer without a Regex pattern");
    const std::string r = regex->get<std::string>();
    if (r == detail::kQwen2Regex) pattern = detail::SplitPattern::kQwen2;
    else if (r == detail::kGpt2Regex) pattern = detail::SplitPattern::kGpt2;
    else throw FieldError("Split regex " + r + " is neither Qwen2's nor GPT-2's");
    if (!find(split, "behavior") || split["behavior"] != "Isolated" || detail::get_bool(split, "invert", "Split", false))
      throw FieldError("Split pre-tokenizer must be behavior=Isolated, invert=false");
    check_byte_level((*pre)["pretokenizers"][1], false, pattern);
  } else {
    throw FieldError("pre_tokenizer " + pre->dump().substr(0, 200) + " is not supported");
  }
  const json* dec = find(j, "decoder");
  if (!dec || !is_type(*dec, "ByteLevel")) throw FieldError("decoder is not ByteLevel");

  const auto alphabet = byte_alphabet();
  std::unordered_map<char32_t, unsigned char> char_byte;
  for (int b = 0; b < 256; ++b) char_byte[alphabet[static_cast<size_t>(b)]] = static_cast<unsigned char>(b);
  byte_id.fill(-1);
  const json& vocab = detail::field(model, "vocab", "model");
  if (!vocab.is_object()) throw FieldError("model.vocab is not an object");
  std::unordered_map<std::string, int64_t> vocab_ids;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it->is_number_integer() || it->get<int64_t>() < 0) throw FieldError("model.vocab holds a bad id for " + it.key());
    const int64_t id = it->get<int64_t>();
    bool mapped = false;
    const std::string bytes = token_string_bytes(it.key(), char_byte, &mapped);
    vocab_ids[it.key()] = id;
    token_ids[it.key()] = id;
    id_bytes[id] = bytes;
    if (mapped) {   // reachable by encoding: spelled in the byte alphabet
      bytes_to_id.emplace(bytes, id);
      if (bytes.size() == 1) byte_id[static_cast<unsigned char>(bytes[0])] = id;
    }
    max_id = std::max(max_id, id);
  }
  int32_t rank = 0;
  for (const json& m : detail::get_array(model, "merges", "model")) {
    std::string a, b;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) throw FieldError("bad merge '" + s + "'");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      throw FieldError("bad merge entry " + m.dump());
    }
    auto ia = vocab_ids.find(a), ib = vocab_ids.find(b), iab = vocab_ids.find(a + b);
    if (ia == vocab_ids.end() || ib == vocab_ids.end() || iab == vocab_ids.end())
      throw FieldError("merge '" + a + " " + b + "' uses a token the vocabulary lacks");
    merges.emplace(pair_key(ia->second, ib->second), std::make_pair(rank++, iab->second));
  }
  if (const json* added = find(j, "added_tokens")) {
    for (const json& t : *added) {
      const std::string content = detail::get_string(t, "content", "added_tokens");
      const int64_t id = detail::get_int(t, "id", "added_tokens");
      for (const char* flag : {"single_word", "lstrip", "rstrip"})
        if (detail::get_bool(t, flag, "added_tokens", false))
          throw FieldError(std::string("added token ") + content + " has " + flag + "=true, which is not supported");
      if (detail::get_bool(t, "normalized", "added_tokens", false)) {
        std::string norm = content;
        if (nfc && !detail::nfc_normalize(content, norm)) throw FieldError("cannot NFC-normalize added token " + content);
        normalized_added.push_back({norm, id});
      } else {
        raw_added.push_back({content, id});
      }
      if (detail::get_bool(t, "special", "added_tokens", false)) special.insert(id);
      token_ids[content] = id;
      id_bytes[id] = token_string_bytes(content, char_byte);
      max_id = std::max(max_id, id);
    }
  }
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Result<Tokenizer> Tokenizer::from_json(const std::string& text) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return DataLoss("tokenizer.json is not a JSON object; export again");
  auto impl = std::make_unique<Impl>();
  try {
    impl->parse(j);
  } catch (const FieldError& e) {
    return Unsupported(std::string("tokenizer.json: ") + e.what() +
                       "; this library reads byte-level BPE tokenizers of the Qwen2 family");
  } catch (const json::exception& e) {
    return DataLoss(std::string("tokenizer.json: unexpected value (") + e.what() + ")");
  }
  return Tokenizer(std::move(impl));
}

Result<Tokenizer> Tokenizer::from_file(const std::string& path) {
  OMNISIFT_ASSIGN_OR_RETURN(std::string text, read_file(path));
  return from_json(text);
}

Result<std::vector<int64_t>> Tokenizer::encode(const std::string& text) const { return encode(text, false); }

Result<std::vector<int64_t>> Tokenizer::encode(const std::string& text, bool split_special_tokens) const {
  std::vector<char32_t> cps;
  if (!detail::utf8_to_codepoints(text, cps)) return InvalidArgument("text to tokenize is not valid UTF-8");
  std::vector<int64_t> ids;
  for (const auto& [segment, id] : impl_->split_added(text, impl_->raw_added, split_special_tokens)) {
    if (id >= 0) { ids.push_back(id); continue; }
    std::string norm = segment;
    if (impl_->nfc && !detail::nfc_normalize(segment, norm)) return Internal("ICU NFC normalization failed");
    for (const auto& [sub, sub_id] : impl_->split_added(norm, impl_->normalized_added, split_special_tokens)) {
      if (sub_id >= 0) { ids.push_back(sub_id); continue; }
      for (const std::string& piece : detail::pre_tokenize(sub, impl_->pattern))
        OMNISIFT_RETURN_IF_ERROR(impl_->bpe(piece, ids));
    }
  }
  return ids;
}

std::string Tokenizer::token_bytes(int64_t id) const {
  auto it = impl_->id_bytes.find(id);
  return it == impl_->id_bytes.end() ? std::string() : it->second;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int64_t id : ids) {
    if (skip_special_tokens && impl_->special.count(id)) continue;
    bytes += token_bytes(id);
  }
  return detail::utf8_lossy(bytes);
}

std::optional<int64_t> Tokenizer::token_to_id(const std::string& token) const {
  auto it = impl_->token_ids.find(token);
  if (it == impl_->token_ids.end()) return std::nullopt;
  return it->second;
}

bool Tokenizer::is_special(int64_t id) const { return impl_->special.count(id) > 0; }
int64_t Tokenizer::max_id() const { return impl_->max_id; }

std::string TokenStreamDecoder::push(int64_t id) {
  if (skip_special_ && tokenizer_.is_special(id)) return "";
  bytes_ += tokenizer_.token_bytes(id);
  const std::string text = detail::utf8_lossy(bytes_);
  static const std::string kReplacement = "\xEF\xBF\xBD";
  const bool open_end = text.size() >= 3 && text.compare(text.size() - 3, 3, kReplacement) == 0;
  if (text.size() <= shown_ || open_end) return "";
  std::string out = text.substr(shown_);
  shown_ = text.size();
  return out;
}

}  // namespace omnisift
