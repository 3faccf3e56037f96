// The text embedding table (manifest `text_embeddings`: a safetensors file [vocab, hidden],
// float32 or float16), memory-mapped; rows are looked up as float32.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "omnisift/status.h"

namespace omnisift {

class TextEmbeddings {
 public:
  // Open `path` and find `tensor` [vocab, hidden] in it (F32 or F16).
  static Result<TextEmbeddings> open(const std::string& path, const std::string& tensor, int64_t vocab, int hidden);
  // An in-memory table [vocab, hidden] (tests, stand-in backends).
  static TextEmbeddings from_table(std::vector<float> table, int64_t vocab, int hidden);

  TextEmbeddings(TextEmbeddings&&) noexcept;
  TextEmbeddings& operator=(TextEmbeddings&&) noexcept;
  ~TextEmbeddings();

  // Rows of `ids` appended to `out` ([n, hidden] float32); InvalidArgument for an id out of range.
  Status lookup(const std::vector<int64_t>& ids, std::vector<float>& out) const;
  int64_t vocab() const { return vocab_; }
  int hidden() const { return hidden_; }

 private:
  TextEmbeddings() = default;
  struct Mapping;
  std::unique_ptr<Mapping> map_;
  std::vector<float> table_;      // in-memory tables
  const unsigned char* data_ = nullptr;
  bool fp16_ = false;
  int64_t vocab_ = 0;
  int hidden_ = 0;
};

// IEEE half -> float.
float half_to_float(uint16_t h);
uint16_t float_to_half(float f);   // round to nearest even

}  // namespace omnisift
