// The two pre-tokenizer regexes byte-level BPE tokenizers use, as hand-written scanners over
// code points (internal). Character classes follow Oniguruma, the regex engine of the tokenizers
// library: \p{L} and \p{N} are the Unicode general categories (from ICU's u_charType), \s is
// U+0009-U+000D, U+0020, U+0085 and the categories Zs, Zl, Zp.
#pragma once

#include <string>
#include <vector>

namespace omnisift::detail {

enum class SplitPattern {
  kQwen2,   // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  kGpt2,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+  (ByteLevel use_regex=true)
  kNone,    // the whole text is one piece (ByteLevel use_regex=false without a Split)
};

extern const char* const kQwen2Regex;
extern const char* const kGpt2Regex;

// Split valid UTF-8 `text` into the pieces the pattern matches (in order, covering the text).
std::vector<std::string> pre_tokenize(const std::string& text, SplitPattern pattern);

// NFC normalization (ICU); ASCII text is returned unchanged without calling ICU.
bool nfc_normalize(const std::string& text, std::string& out);

}  // namespace omnisift::detail
