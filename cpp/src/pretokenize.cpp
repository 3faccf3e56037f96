#include "pretokenize.h"

#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include "utf8.h"

namespace omnisift::detail {

const char* const kQwen2Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* const kGpt2Regex = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

namespace {

bool is_letter(char32_t c) { return (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_L_MASK) != 0; }
bool is_number(char32_t c) { return (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_N_MASK) != 0; }
bool is_space(char32_t c) {   // Oniguruma's \s for Unicode
  if ((c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85) return true;
  if (c < 0x80) return false;
  return (U_GET_GC_MASK(static_cast<UChar32>(c)) & (U_GC_ZS_MASK | U_GC_ZL_MASK | U_GC_ZP_MASK)) != 0;
}
bool is_newline(char32_t c) { return c == '\r' || c == '\n'; }
bool is_other(char32_t c) { return !is_space(c) && !is_letter(c) && !is_number(c); }   // [^\s\p{L}\p{N}]

using Cps = std::vector<char32_t>;

size_t run(const Cps& s, size_t j, bool (*pred)(char32_t)) {
  while (j < s.size() && pred(s[j])) ++j;
  return j;
}

// 's 't 're 've 'm 'll 'd (case-insensitive when `fold`); returns the end or 0.
size_t contraction(const Cps& s, size_t i, bool fold) {
  if (s[i] != '\'' || i + 1 >= s.size()) return 0;
  auto low = [&](char32_t c) -> char32_t {
    if (!fold) return c;
    if (c == 0x017F) return 's';   // LATIN SMALL LETTER LONG S case-folds to s
    return (c >= 'A' && c <= 'Z') ? c + 32 : c;
  };
  const char32_t a = low(s[i + 1]);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
  if (i + 2 < s.size()) {
    const char32_t b = low(s[i + 2]);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
  }
  return 0;
}

// \s*[\r\n]+ | \s+(?!\S) | \s+ at a whitespace character (the qwen2 flag enables the first).
size_t whitespace(const Cps& s, size_t i, bool newline_alternative) {
  const size_t e = run(s, i, is_space);
  if (newline_alternative) {
    for (size_t q = e; q > i; --q)
      if (is_newline(s[q - 1])) return q;     // greedy \s* gives back until [\r\n]+ matches
  }
  if (e == s.size() || e - i == 1) return e;  // (?!\S) holds at the end; else plain \s+
  return e - 1;                               // leave one space for the next piece
}

size_t match_qwen2(const Cps& s, size_t i) {
  const char32_t c = s[i];
  if (size_t e = contraction(s, i, true)) return e;
  if (is_letter(c)) return run(s, i, is_letter);
  if (!is_newline(c) && !is_number(c) && i + 1 < s.size() && is_letter(s[i + 1])) return run(s, i + 1, is_letter);
  if (is_number(c)) return i + 1;
  const size_t j = (c == ' ' && i + 1 < s.size() && is_other(s[i + 1])) ? i + 1 : i;
  if (is_other(s[j])) return run(s, run(s, j, is_other), is_newline);
  return whitespace(s, i, true);
}

size_t match_gpt2(const Cps& s, size_t i) {
  if (size_t e = contraction(s, i, false)) return e;
  const size_t j = (s[i] == ' ' && i + 1 < s.size()) ? i + 1 : i;
  for (bool (*pred)(char32_t) : {is_letter, is_number, is_other}) {
    if (pred(s[j]) && (j == i || s[i] == ' ')) return run(s, j, pred);
    if (j != i && pred(s[i])) return run(s, i, pred);
  }
  return whitespace(s, i, false);
}

}  // namespace

std::vector<std::string> pre_tokenize(const std::string& text, SplitPattern pattern) {
  std::vector<std::string> pieces;
  if (text.empty()) return pieces;
  if (pattern == SplitPattern::kNone) return {text};
  Cps cps;
  if (!utf8_to_codepoints(text, cps)) return {text};   // callers validate UTF-8 first
  for (size_t i = 0; i < cps.size();) {
    size_t e = pattern == SplitPattern::kQwen2 ? match_qwen2(cps, i) : match_gpt2(cps, i);
    if (e <= i) e = i + 1;   // unreachable: every character matches some alternative
    std::string piece;
    for (size_t k = i; k < e; ++k) utf8_append(piece, cps[k]);
    pieces.push_back(std::move(piece));
    i = e;
  }
  return pieces;
}

bool nfc_normalize(const std::string& text, std::string& out) {
  bool ascii = true;
  for (unsigned char c : text) ascii = ascii && c < 0x80;
  if (ascii) {
    out = text;
    return true;
  }
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(err);
  if (U_FAILURE(err)) return false;
  icu::UnicodeString src = icu::UnicodeString::fromUTF8(text);
  icu::UnicodeString dst = nfc->normalize(src, err);
  if (U_FAILURE(err)) return false;
  out.clear();
  dst.toUTF8String(out);
  return true;
}

}  // namespace omnisift::detail
