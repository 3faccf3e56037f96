// manifest.json (schema version 1): the contract an export folder makes with every runtime.
//
// Read with `read_manifest(folder)`: it refuses other schema versions, checks the SHA-256 and
// size of every file the manifest lists, and checks the entries agree with each other (the
// compressor's K with the ratio plan, the layout with the dims). Tensor names are never spelled
// in C++: they come from `graphs.<graph>.inputs/outputs`, in the order tensors.py declares them.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "omnisift/status.h"

namespace omnisift {

constexpr int kSchemaVersion = 1;

// Special token ids (manifest `layout.tokens`).
struct TokenIds {
  int64_t endoftext = 0, im_start = 0, im_end = 0, audio = 0, audio_bos = 0, audio_eos = 0;
  int64_t vision_bos = 0, vision_eos = 0, image = 0, video = 0;
};

// Layout and feature constants (manifest `layout`, Python's OmniSpec).
struct LayoutSpec {
  TokenIds tokens;
  int patch_size = 14, temporal_patch_size = 2, spatial_merge_size = 2;
  double fps = 2.0;
  int position_id_per_seconds = 25;
  double seconds_per_chunk = 2.0;
  int sample_rate = 16000, n_mels = 128, n_fft = 400, hop_length = 160, audio_window_frames = 200;

  int time_ids_per_grid() const;    // 25: seconds per grid step * ids per second
  int grids_per_chunk() const;      // 2
  int time_ids_per_chunk() const;   // 50 (= audio tokens per chunk)
  int samples_per_chunk() const;    // 32000
  int raw_frames_per_chunk() const; // 4 frames at 2 fps
};

// Fixed axis sizes (manifest `dims`, Python's artifact.tensors.Dims).
struct Dims {
  int hidden = 0, patch_dim = 0, grid_h = 0, grid_w = 0, spatial_merge = 0, grids_per_chunk = 0;
  int n_mels = 0, window_frames = 0, window_audio_tokens = 0;
  int num_layers = 0, kv_heads = 0, head_dim = 0;
  int64_t vocab = 0;
  int tokens_per_frame() const { return (grid_h / spatial_merge) * (grid_w / spatial_merge); }
  int chunk_patches() const { return grids_per_chunk * grid_h * grid_w; }
  int chunk_video_tokens() const { return grids_per_chunk * tokens_per_frame(); }
  int chunk_tokens() const { return chunk_video_tokens() + window_audio_tokens; }
};

struct TensorInfo {
  std::string name;
  std::string dtype;               // "float32", "float16", "int64", "bool"
  std::vector<std::string> axes;   // symbolic axis names
  std::vector<int64_t> shape;      // fixed sizes; -1 where the axis is dynamic
  bool is_dynamic(size_t i) const { return shape[i] < 0; }
};

struct GraphInfo {
  std::string key;                 // "vision_encoder", "compressor_r0.25", ...
  std::string file;
  int opset = 0;
  std::vector<TensorInfo> inputs, outputs;
};

// One compressor graph of the ratio plan (manifest `ratios[i]`).
struct RatioPlan {
  std::string graph;
  double ratio = 0, rho_video = 0, rho_audio = 0, achieved = 0;
  int kept_video = 0, kept_audio = 0, kept_total = 0;   // kept tokens per whole chunk
};

// TensorRT engines built for one target (manifest `builds.<target>`, written by the engines stage).
struct EngineProfile {
  std::string name;                                      // "static", "prefill" or "decode"
  std::map<std::string, std::vector<int64_t>> axes;      // dynamic axis -> [min, opt, max]
};
struct EngineEntry {
  std::string file;                                      // relative to the export folder
  std::string precision;
  std::vector<EngineProfile> profiles;                   // in the engine's profile order
};
struct EngineBuild {
  std::string target, tensorrt, compute_capability, precision;   // compute_capability "8.7"
  // "tensorrt" (engines for the one GPU model they were built on; compute_capability "8.7") or
  // "tensorrt_rtx" (built ahead of time for a list: compute_capability "8.6,8.9,12.0"); records
  // written before flavours existed are "tensorrt"
  std::string flavour = "tensorrt";
  int64_t max_context = 0, max_prefill_tokens = 0;
  std::map<std::string, EngineEntry> engines;            // graph key -> engine
};

// One decoder form of the manifest's `kv_cache` (export.decoder_gqa.kv_cache_record; absent in
// exports made before the in-place forms). "past_present" (`decoder`): the past is an input, the
// grown cache an output (TensorRT 10.3 / JetPack 6, no aliasing); "in_place_scatter"
// (`decoder_scatter`): each layer's cache is one static [1, kv, max_context, hd] buffer that the
// engine writes in place at `write_index` (ONNX TensorScatter -> TensorRT's KVCacheUpdate layer;
// TensorRT >= 10.15 and TensorRT-RTX; the engine aliases present to past); "shared_buffer"
// (`decoder_gqa`): ONNX Runtime's GroupQueryAttention, not built by TensorRT. TrtBackend runs
// decoder_scatter when the build has it, else decoder.
struct KvCacheForm {
  std::string graph, kind, file;
  std::vector<std::string> runtimes;     // "tensorrt", "tensorrt>=10.15", "tensorrt_rtx", "onnxruntime"
  std::vector<std::string> cache_axes;   // the cache tensors' axes, e.g. [batch_size, kv_heads, past_sequence_length, head_dim]
  std::string write_index;               // in_place_scatter: the input that says where the new rows go
  GraphInfo entry;                       // the graph's tensors when the record carries them (`entry`); key empty if not
};

// RoPE settings (manifest `rope`): what re-basing cached keys needs (window.h). Absent values take
// Qwen2.5-Omni's, as Python does (older manifests lack max_position_embeddings).
struct RopeInfo {
  double theta = 1e6;                         // rope_theta
  int64_t max_position_embeddings = 32768;    // the trained position range
};

struct FileEntry {
  std::string sha256;
  int64_t bytes = 0;
};

struct Manifest {
  int schema_version = 0;
  std::string dtype;               // "fp32" | "fp16"
  int height = 0, width = 0;       // frame size the graphs take
  int64_t max_context = 0;
  Dims dims;
  LayoutSpec layout;
  RopeInfo rope;
  std::vector<RatioPlan> ratios;
  std::map<std::string, GraphInfo> graphs;
  std::map<std::string, KvCacheForm> kv_cache;          // form key -> form; empty for older exports
  std::string embeddings_file, embeddings_tensor, embeddings_dtype;
  std::vector<int64_t> embeddings_shape;
  std::string tokenizer_folder;
  std::vector<std::string> tokenizer_files;
  std::vector<int64_t> stop_token_ids;
  std::map<std::string, FileEntry> files;
  std::map<std::string, EngineBuild> builds;             // empty until `omnisift-edge build` ran

  // The ratio plan entry for `ratio` (compared to 1e-9), or NotFound listing the ratios there are.
  Result<RatioPlan> ratio_plan(double ratio) const;
  // graphs.<key>, else the `entry` of the kv_cache form whose graph is `key` (the in-place decoders).
  Result<const GraphInfo*> graph(const std::string& key) const;
};

// Parse manifest text: schema version, every key the runtime reads, consistency. No file access.
Result<Manifest> parse_manifest(const std::string& json_text);

// Read `folder/manifest.json`, check its paths stay inside `folder` (check_contained); with `verify`, check
// every listed file's size and SHA-256.
Result<Manifest> read_manifest(const std::string& folder, bool verify = true);

// Every path the manifest names resolves inside `folder` (symlinks resolved) and every file a runtime
// opens (graphs, in-place decoder forms, embeddings, tokenizer files) is covered by `files`; read_manifest
// checks this before anything else touches the folder (DataLoss naming the key otherwise).
Status check_contained(const std::string& folder, const Manifest& manifest);

// Check the files of a parsed manifest against `folder` (size, then SHA-256).
Status verify_files(const std::string& folder, const Manifest& manifest);

// Lower-case hex SHA-256 of a file / of bytes (OpenSSL EVP).
Result<std::string> sha256_file(const std::string& path);
std::string sha256_hex(const void* data, size_t n);

// Whole file contents, or NotFound/DataLoss.
Result<std::string> read_file(const std::string& path);

}  // namespace omnisift
