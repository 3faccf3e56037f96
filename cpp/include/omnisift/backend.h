// The inference backend interface: one call per exported graph, host float32 in and out.
//
// The chunk pipeline (Session) is written against this interface only, so it builds and is
// tested without TensorRT. Implementations: TrtBackend (TensorRT 10 engines, built only where
// TensorRT is found; trt_backend.h) and StubBackend (deterministic stand-in, stub_backend.h).
// Shapes are the manifest's (dims): the backend never invents names or sizes.
//
// Loaded once, used by many sessions: SharedEngines holds what is loaded once per process (the
// engines and their weights); each session gets its own Backend from it (execution contexts, KV
// cache, bindings, a CUDA stream), so a robot with several cameras loads the model once. Each
// call is still one session's: batching several sessions' steps into one call is not done in C++.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "omnisift/layout.h"
#include "omnisift/status.h"

namespace omnisift {

struct CompressorOutput {
  std::vector<float> kept_embeds;    // [K, hidden]
  Positions kept_positions;          // [3, K]
  std::vector<int64_t> kept_index;   // [K], ascending indices into the chunk's tokens
};

class Backend {
 public:
  virtual ~Backend() = default;
  // vision_encoder: pixel_values [chunk_patches, patch_dim] -> video_embeds [chunk_video_tokens, hidden]
  virtual Status encode_video(const std::vector<float>& pixel_values, std::vector<float>& video_embeds) = 0;
  // audio_encoder: input_features [n_mels, window_frames] (zero-padded after `valid_frames` real frames) ->
  // audio_embeds [window_audio_tokens, hidden], of which the first ((valid - 1) / 2 + 1) / 2 are real. Graphs
  // without a valid_frames input (exports before issue 25) only ever see valid_frames == window_frames.
  virtual Status encode_audio(const std::vector<float>& mel, int64_t valid_frames, std::vector<float>& audio_embeds) = 0;
  // compressor of the session's ratio: one chunk's whole-chunk shapes (video [grids_per_chunk, n_p, hidden],
  // audio [window_audio_tokens, hidden], chunk_positions [3, chunk_tokens]) of which the first `valid_grids`
  // frames and `valid_audio_tokens` audio tokens are real (a clip's short last chunk: fewer) -> the kept
  // tokens of the real part and their positions (K of a whole chunk, fewer for a short one)
  virtual Status compress(const std::vector<float>& video_embeds, const std::vector<float>& audio_embeds,
                          const Positions& chunk_positions, int64_t valid_grids, int64_t valid_audio_tokens,
                          CompressorOutput& out) = 0;
  // decoder: append n tokens (embeds [n, hidden] at positions [3, n]) to the KV cache. `logits`:
  // nullptr on a chunk prefill (nothing reads them, so none are computed or copied), else it gets
  // [vocab] of the last token. Every cached row is attended (the cache holds only valid rows).
  virtual Status decode(const std::vector<float>& embeds, const Positions& positions, std::vector<float>* logits) = 0;
  // Remove cached rows [start, stop); later rows move down, kv_length() shrinks by stop - start
  // (the sliding policy evicts the oldest whole chunks; runtime/context.py drop_tokens).
  virtual Status drop_kv(int64_t start, int64_t stop) = 0;
  // Re-base every cached key by -delta positions: the RoPE rotation by -delta * inv_freq[j]
  // (inv_freq [head_dim / 2], the manifest's rope_theta), exact for RoPE; values are unchanged
  // (runtime/context.py rotate_keys).
  virtual Status rotate_kv(int64_t delta, const std::vector<double>& inv_freq) = 0;
  // Empty the KV cache (a new clip).
  virtual Status reset() = 0;
  virtual int64_t kv_length() const = 0;
  // Whether a decoder step of n tokens after `past` cached ones can run (e.g. inside the engine's
  // optimization profiles); checked before the session changes anything, so a refusal is clean.
  virtual Status check_append(int64_t /*past*/, int64_t /*n*/) const { return Status::Ok(); }
  // The longest KV cache the backend holds (0: no limit of its own; the manifest's applies).
  virtual int64_t max_context() const { return 0; }
};

// What is loaded once and shared by the sessions of a process: engines / weights. A Backend it
// opens owns only per-session state (execution contexts, KV cache, I/O buffers) and keeps the
// shared engines alive (they are freed with the last of them). open_backend() may be called from
// any thread; the backends it returns may run at the same time on different threads, each used by
// one thread at a time (as a Session is).
class SharedEngines {
 public:
  virtual ~SharedEngines() = default;
  virtual Result<std::unique_ptr<Backend>> open_backend() = 0;
};

}  // namespace omnisift
