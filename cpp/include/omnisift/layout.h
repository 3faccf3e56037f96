// Token ids and 3-row TMRoPE positions of the interleaved video+audio layout, chunk by chunk.
//
// The exact C++ counterpart of Python's omnisift_edge.model.layout.StreamingLayout (docs/layout.md):
//   prefix text | <|vision_bos|><|audio_bos|> at p | chunks | <|audio_eos|><|vision_eos|> at
//   (max of the LAST appended segment) + 1 | suffix | later text from max position + 1.
// Chunk c's positions depend only on st = len(prefix) + 1 and c: video time st + 50c + 25k,
// height/width st + row/col; audio st + 50c + i. After an answer, open_turn(text) starts a new
// user turn with its own video: text from max position + 1, <|vision_bos|><|audio_bos|> at the
// next position, and the turn's chunks laid out from there (st = bos + 1, c counting within the
// turn), as transformers' get_rope_index lays out a conversation's next video. Golden files from
// the Python side check it.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "omnisift/manifest.h"
#include "omnisift/status.h"

namespace omnisift {

// Positions of n tokens, [3, n] row-major: row 0 time, row 1 height, row 2 width. Fed to the
// decoder as position_ids [3, 1, n], which has the same memory layout.
struct Positions {
  int64_t n = 0;
  std::vector<int64_t> data;   // 3 * n
  int64_t at(int row, int64_t i) const { return data[static_cast<size_t>(row * n + i)]; }
  int64_t max() const;          // max over all rows; INT64_MIN when empty
  static Positions text(int64_t start, int64_t n);   // start, start+1, ... on all three rows
};

struct Span {
  std::vector<int64_t> ids;
  Positions positions;
};

struct ChunkLayout {
  int index = 0;
  int n_grids = 0;             // 0 (audio-only tail chunk), 1 or 2 temporal grid steps
  int n_audio = 0;             // 0 (video-only tail chunk) .. 50
  int tokens_per_frame = 0;
  int64_t start = 0;           // offset of its first token in the uncompressed sequence
  std::vector<int64_t> input_ids;
  Positions positions;         // [3, n_video + n_audio]
  int64_t time_start = 0, time_end = 0;   // its window [st + 50c, st + 50c + 50)

  int n_video() const { return n_grids * tokens_per_frame; }
  int length() const { return n_video() + n_audio; }
  int64_t end() const { return start + length(); }
  int64_t segment_max() const;   // max of the last appended segment (audio if any, else video)
};

// (grid steps, audio tokens) per chunk as the processor splits a clip; errors as Python's.
Result<std::vector<std::pair<int, int>>> chunk_counts(const LayoutSpec& spec, int n_grids, int n_audio);

class StreamingLayout {
 public:
  // grid_h, grid_w in 14-pixel patches (manifest dims.grid_h/grid_w), prefix without media tokens.
  static Result<StreamingLayout> create(const LayoutSpec& spec, std::vector<int64_t> prefix_ids,
                                        int grid_h, int grid_w);

  // The prefix text and <|vision_bos|><|audio_bos|> (both at position p).
  const Span& prefix() const { return prefix_; }
  // The next chunk: n_grids (0-2) grid steps and n_audio (0-50) audio tokens, clip-shaped.
  Result<ChunkLayout> chunk(int n_grids, int n_audio);
  // <|audio_eos|><|vision_eos|> at the last segment's max + 1, then the suffix.
  Result<Span> close(const std::vector<int64_t>& suffix_ids);
  // After close(): text that ends the answer and opens a user turn (ChatPrompt::turn_prefix_ids)
  // from max position + 1, then <|vision_bos|><|audio_bos|> both at the next position.
  Result<Span> open_turn(const std::vector<int64_t>& text_ids);
  // Positions of n tokens appended after close() (answers, follow-ups): from max position + 1.
  Result<Positions> text(int64_t n);

  // What chunk(), close(), open_turn() and text() would return, without changing anything (the
  // session checks the context policy on them before the layout advances).
  Result<ChunkLayout> next_chunk(int n_grids, int n_audio) const;
  Result<Span> next_close(const std::vector<int64_t>& suffix_ids) const;
  Result<Span> next_open_turn(const std::vector<int64_t>& text_ids) const;
  Positions next_text(int64_t n) const { return Positions::text(max_ + 1, n); }

  int tokens_per_frame() const { return llm_h_ * llm_w_; }
  const std::vector<ChunkLayout>& chunks() const { return chunks_; }   // every turn's
  int turn_chunks() const { return static_cast<int>(chunks_.size()) - turn_first_; }   // this turn's
  bool closed() const { return closed_; }
  int64_t length() const { return length_; }              // tokens so far (uncompressed)
  int64_t max_position() const { return max_; }
  int64_t rope_delta() const { return max_ + 1 - length_; }
  int64_t next_position() const { return max_ + 1; }

 private:
  StreamingLayout() = default;
  LayoutSpec spec_;
  int llm_h_ = 0, llm_w_ = 0, per_grid_ = 0, gpc_ = 0, apc_ = 0;
  Span prefix_;
  int64_t st_ = 0, length_ = 0, max_ = 0, last_segment_max_ = 0;
  std::vector<ChunkLayout> chunks_;
  int turn_first_ = 0;   // index in chunks_ of this turn's first chunk
  bool closed_ = false;
};

// InvalidArgument when `ids` holds a media token id (only the layout may place those).
Status check_text_ids(const LayoutSpec& spec, const std::vector<int64_t>& ids, const char* what);

}  // namespace omnisift
