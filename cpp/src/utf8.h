// UTF-8 helpers (internal): strict decoding to code points, encoding, and Rust's
// String::from_utf8_lossy (one U+FFFD per maximal invalid subpart), which the tokenizers
// library's byte-level decoder applies to the decoded bytes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace omnisift::detail {

// Length of the valid UTF-8 sequence starting at s[i] (1-4), or 0 with `bad` = the length of the
// maximal invalid subpart (>= 1) when it is invalid, or 0 with bad = 0 when it is a valid but
// truncated prefix at the end of the input.
inline int utf8_sequence(const std::string& s, size_t i, int& bad) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  bad = 0;
  if (c < 0x80) return 1;
  int need;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) need = 1;
  else if (c == 0xE0) { need = 2; lo = 0xA0; }
  else if (c >= 0xE1 && c <= 0xEC) need = 2;
  else if (c == 0xED) { need = 2; hi = 0x9F; }
  else if (c >= 0xEE && c <= 0xEF) need = 2;
  else if (c == 0xF0) { need = 3; lo = 0x90; }
  else if (c >= 0xF1 && c <= 0xF3) need = 3;
  else if (c == 0xF4) { need = 3; hi = 0x8F; }
  else { bad = 1; return 0; }
  for (int k = 1; k <= need; ++k) {
    if (i + k >= s.size()) return 0;   // truncated at the end (bad stays 0)
    const unsigned char x = b(i + k);
    const unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (x < l || x > h) { bad = k; return 0; }
  }
  return need + 1;
}

inline char32_t utf8_decode_at(const std::string& s, size_t i, int len) {
  const auto b = [&](size_t k) { return static_cast<char32_t>(static_cast<unsigned char>(s[k])); };
  switch (len) {
    case 1: return b(i);
    case 2: return ((b(i) & 0x1F) << 6) | (b(i + 1) & 0x3F);
    case 3: return ((b(i) & 0x0F) << 12) | ((b(i + 1) & 0x3F) << 6) | (b(i + 2) & 0x3F);
    default: return ((b(i) & 0x07) << 18) | ((b(i + 1) & 0x3F) << 12) | ((b(i + 2) & 0x3F) << 6) | (b(i + 3) & 0x3F);
  }
}

inline void utf8_append(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

// Strict: false when `s` is not valid UTF-8.
inline bool utf8_to_codepoints(const std::string& s, std::vector<char32_t>& out) {
  out.clear();
  for (size_t i = 0; i < s.size();) {
    int bad;
    const int len = utf8_sequence(s, i, bad);
    if (len == 0) return false;
    out.push_back(utf8_decode_at(s, i, len));
    i += static_cast<size_t>(len);
  }
  return true;
}

// Rust's from_utf8_lossy: each maximal invalid subpart (and a truncated tail) becomes U+FFFD.
inline std::string utf8_lossy(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    int bad;
    const int len = utf8_sequence(s, i, bad);
    if (len > 0) {
      out.append(s, i, static_cast<size_t>(len));
      i += static_cast<size_t>(len);
    } else {
      out += "\xEF\xBF\xBD";
      i += bad > 0 ? static_cast<size_t>(bad) : s.size() - i;
    }
  }
  return out;
}

}  // namespace omnisift::detail
