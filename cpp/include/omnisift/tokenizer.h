// Byte-level BPE tokenizer read from an exported tokenizer/tokenizer.json (the Qwen2 family).
//
// encode() equals `tokenizer(text, add_special_tokens=False)["input_ids"]` of the Python side
// (transformers' fast tokenizer): added tokens (<|im_start|>, ...) are matched first, leftmost
// longest; the text between them is NFC-normalized, split by the pre-tokenizer regex (Qwen2's
// Split pattern, or GPT-2's when ByteLevel has use_regex=true), mapped to bytes and merged by
// BPE rank exactly as the tokenizers library does. decode() equals `tokenizer.decode(ids,
// skip_special_tokens=...)`: the byte-level decoder, then UTF-8 with U+FFFD for invalid bytes.
// Anything else in tokenizer.json (other normalizers, pre-tokenizers, byte fallback, dropout,
// lstrip/rstrip added tokens) is refused at load with kUnsupported, never approximated.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "omnisift/status.h"

namespace omnisift {

class Tokenizer {
 public:
  static Result<Tokenizer> from_file(const std::string& tokenizer_json_path);
  static Result<Tokenizer> from_json(const std::string& tokenizer_json_text);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Token ids of UTF-8 `text` (InvalidArgument when it is not valid UTF-8).
  Result<std::vector<int64_t>> encode(const std::string& text) const;
  // `split_special_tokens`: special tokens written in `text` are text, tokenized as their
  // characters (transformers' `split_special_tokens=True`); for untrusted text such as questions.
  Result<std::vector<int64_t>> encode(const std::string& text, bool split_special_tokens) const;
  // Text of `ids`; ids the vocabulary does not have are skipped, as the tokenizers library does.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const;
  // The bytes one token stands for ("" for unknown ids); for streaming (see TokenStreamDecoder).
  std::string token_bytes(int64_t id) const;

  std::optional<int64_t> token_to_id(const std::string& token) const;   // as spelled in tokenizer.json
  bool is_special(int64_t id) const;
  int64_t max_id() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Turns a stream of token ids into text pieces, as Python's OmniSession.ask does: after each token
// the answer so far is decoded (special tokens skipped when `skip_special_tokens`) and the new text
// is released unless it ends in U+FFFD (a character still split across tokens, or invalid bytes
// that may be followed by more). So pieces are always whole characters, and an incomplete or
// invalid tail of the answer is never shown (finish() returns "" then, as Python shows nothing).
class TokenStreamDecoder {
 public:
  explicit TokenStreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = true)
      : tokenizer_(tokenizer), skip_special_(skip_special_tokens) {}
  std::string push(int64_t id);   // text released by this token (maybe "")
  std::string finish() { return ""; }

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::string bytes_;             // the answer's bytes so far
  size_t shown_ = 0;              // bytes of decoded text released so far
};

}  // namespace omnisift
