// The chunk pipeline an app embeds: open an export folder, push 2-second chunks as they arrive,
// ask questions, stream the greedy answer. The same loop as Python's runtime/stream.py
// (ChunkStream, which every Python backend shares), over any Backend:
//   create:   prefix ids (system prompt) + <|vision_bos|><|audio_bos|> -> decoder prefill
//   chunk:    vision + audio encoders -> compressor (K kept tokens, their positions) -> prefill
//             (no logits: nobody reads a chunk's)
//   ask:      a question closes the turn's video span (<|audio_eos|><|vision_eos|> + question)
//             -> prefill, then greedy decode at max position + 1, + 2, ... until a stop id or
//             max_new_tokens; a question with no new media is a follow-up turn
//   more media after an answer: a new user turn (<|im_end|>\n<|im_start|>user\n
//             <|vision_bos|><|audio_bos|>, then its chunks), as transformers lays out the
//             conversation [system, user: (video 1, q1), assistant: a1, user: (video 2, q2), ...]
// Media arrives as frames (2 fps, export resolution) and PCM (16 kHz) in any block sizes; a chunk
// runs when 4 frames and its log-mel window are there. When a turn's media ends (finish(), or a
// question) a trailing partial chunk is padded to 2 s: the last frame repeated, the audio
// zero-padded; audio beyond the video is dropped; each turn's audio gets a fresh log-mel. The
// same rules as Python's OmniSession (runtime/session.py); golden files check the two agree call
// by call.
// Context policy (window.h, SessionOptions::context): `error` refuses (kContextFull) a step that
// would exceed max_context or reach the trained position range, before anything changes (the
// session stays consistent: a shorter question still works); `sliding` evicts the oldest whole
// segments through Backend::drop_kv and re-bases positions through Backend::rotate_kv.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "omnisift/backend.h"
#include "omnisift/embeddings.h"
#include "omnisift/layout.h"
#include "omnisift/manifest.h"
#include "omnisift/plan.h"
#include "omnisift/preprocess.h"
#include "omnisift/prompt.h"
#include "omnisift/tokenizer.h"
#include "omnisift/window.h"

namespace omnisift {

// An export folder, read and checked once: manifest (checksums verified), tokenizer, chat
// prompt, text embeddings. Shared by the sessions that use it.
class ExportFolder {
 public:
  static Result<std::shared_ptr<const ExportFolder>> open(const std::string& folder, bool verify_checksums = true);
  // From parts already loaded (tests, custom storage); the prompt's template check is skipped.
  static std::shared_ptr<const ExportFolder> from_parts(Manifest manifest, Tokenizer tokenizer, TextEmbeddings embeddings);

  const Manifest& manifest() const { return manifest_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  const TextEmbeddings& embeddings() const { return embeddings_; }
  const ChatPrompt& prompt() const { return *prompt_; }
  const std::string& path() const { return path_; }

  ExportFolder(Manifest m, Tokenizer t, TextEmbeddings e) : manifest_(std::move(m)), tokenizer_(std::move(t)), embeddings_(std::move(e)) {}

 private:
  std::string path_;
  Manifest manifest_;
  Tokenizer tokenizer_;
  TextEmbeddings embeddings_;
  std::optional<ChatPrompt> prompt_;
};

struct SessionOptions {
  double ratio = 0.25;                                           // must be in the manifest's ratio plan
  std::optional<std::string> system = std::string(kDefaultSystemPrompt);   // nullopt: the template's default
  int max_new_tokens = 64;
  std::vector<int64_t> stop_token_ids;                           // empty: the manifest's stop_token_ids
  int64_t max_context = 0;                                       // 0: the manifest's (and the backend's)
  ContextPolicy context;   // error (default) | sliding, window_seconds, position_limit (none: the manifest's)
};

struct TokenEvent {
  int64_t id = 0;
  std::string text;      // whole UTF-8 characters released by this token (maybe ""; TokenStreamDecoder)
  bool stop = false;     // a stop id: the answer ends here (it is not fed back)
};
// Return false to end the answer after this token.
using TokenCallback = std::function<bool(const TokenEvent&)>;

struct Answer {
  std::vector<int64_t> ids;   // including the stop id when one ended it
  std::string text;           // special tokens skipped
};

class Session {
 public:
  // On a backend the caller owns (it must outlive the session).
  static Result<std::unique_ptr<Session>> create(std::shared_ptr<const ExportFolder> folder, Backend& backend,
                                                 SessionOptions options = {});
  // On a backend the session owns: e.g. SharedEngines::open_backend()'s, so that several sessions
  // (cameras) share one set of loaded engines, each with its own execution contexts and KV cache.
  static Result<std::unique_ptr<Session>> create(std::shared_ptr<const ExportFolder> folder,
                                                 std::unique_ptr<Backend> backend, SessionOptions options = {});
  // The same on a new backend opened on `engines`.
  static Result<std::unique_ptr<Session>> create(std::shared_ptr<const ExportFolder> folder, SharedEngines& engines,
                                                 SessionOptions options = {});

  // One RGB frame at the export resolution (frames at 2 fps, in order).
  Status push_frame(const FrameView& frame);
  // Mono PCM at 16 kHz, any block size.
  Status push_audio(const float* pcm, size_t n);
  // One whole preprocessed chunk: pixel_values [chunk_patches * patch_dim], mel [n_mels * window_frames].
  // After an answer, media (frames, PCM or chunks) opens a new user turn.
  Status push_chunk(const std::vector<float>& pixel_values, const std::vector<float>& mel);
  // End the turn's media: pad a trailing partial chunk to 2 s and run it (a question does this).
  // More media is then refused until a question was asked.
  Status finish();

  // Ask about everything in the context; tokens stream through `on_token`.
  Result<Answer> ask(const std::string& question, const TokenCallback& on_token = {});
  // The same with the ids to prefill: while the turn's video span is open, the ids after its
  // <|vision_eos|> (ChatPrompt::suffix_ids); after an answer, follow-up ids (ChatPrompt::followup_ids).
  Result<Answer> ask_ids(const std::vector<int64_t>& ids, const TokenCallback& on_token = {});

  int chunks() const { return static_cast<int>(layout_.chunks().size()); }   // every turn's
  int64_t kv_length() const { return window_.length(); }
  const KvWindow& window() const { return window_; }
  const ChunkBudget& budget() const { return budget_; }
  const StreamingLayout& layout() const { return layout_; }
  int64_t waiting_frames() const { return static_cast<int64_t>(frames_.size()); }
  bool closed() const { return layout_.closed(); }
  // What the compressor kept of the last chunk: ascending indices into its tokens (video first,
  // then audio; layout().chunks().back() has the counts). For apps that show or count what was kept.
  const std::vector<int64_t>& last_kept_index() const { return last_kept_index_; }
  Backend& backend() const { return backend_; }

 private:
  Session(std::shared_ptr<const ExportFolder> folder, Backend& backend, SessionOptions options,
          StreamingLayout layout, ChunkBudget budget, KvWindow window);
  // An append planned on a copy of the window: the spans to drop and the re-basing delta.
  struct Plan {
    KvWindow window;
    std::vector<KvDrop> drops;
    int64_t delta = 0;
  };
  Result<Plan> plan(const Positions& positions, SegmentKind kind, const std::string& what) const;
  // Room for n tokens of `kind` (no position check): refused before the encoders run.
  Status check_room(int64_t n, SegmentKind kind, const std::string& what) const;
  // Runs a plan on the backend: drops, rotation, then the decoder on `positions` minus the base.
  Status run(Plan plan, SegmentKind kind, const std::vector<float>& embeds, const Positions& positions,
             std::vector<float>* logits);
  Result<std::vector<float>> embed(const std::vector<int64_t>& ids) const;
  // Append text ids at their (absolute) positions, planned before the layout advances by `advance`.
  Status append_text(const std::vector<int64_t>& ids, const Positions& positions, SegmentKind kind,
                     const std::string& what, const std::function<Status()>& advance, std::vector<float>* logits);
  Status begin_media();
  Status open_turn();
  // one chunk of `grids` temporal grid steps and `mel_frames` log-mel frames (a clip's last: fewer)
  Status run_chunk(const std::vector<float>& pixel_values, const std::vector<float>& mel, int grids, int mel_frames);
  Status run_ready_chunks(bool finishing = false);
  Status guard() const;

  std::shared_ptr<const ExportFolder> folder_;
  std::unique_ptr<Backend> owned_backend_;     // set when the session owns its backend
  Backend& backend_;
  SessionOptions options_;
  StreamingLayout layout_;
  ChunkBudget budget_;
  KvWindow window_;
  std::vector<double> inv_freq_;               // RoPE inverse frequencies for rotate_kv
  StreamingLogMel mel_;                        // this turn's audio
  std::vector<std::vector<uint8_t>> frames_;   // frames waiting for a whole chunk
  int turn_start_ = 0;                         // chunks before this turn's first
  int questions_ = 0;
  bool finished_ = false;                      // the turn's media ended (finish() or a question)
  bool broken_ = false;
  std::vector<int64_t> last_kept_index_;
};

}  // namespace omnisift
