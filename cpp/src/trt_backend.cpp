// TensorRT 10 / 11 and TensorRT-RTX backend (see trt_backend.h). Compiled only where TensorRT
// (or TensorRT-RTX) and the CUDA runtime are found; ctest compiles it against a stand-in header
// (tests/trt_standin) so that it is checked where neither exists (docs/cpp.md).
#include "omnisift/trt_backend.h"

#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <filesystem>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>

#include "omnisift/embeddings.h"
#include "omnisift/plan.h"
#include "trt_kv.h"
#include "trt_rules.h"

// TensorRT-RTX's NvInferVersion.h defines TRT_MAJOR_RTX. Aliased outputs (an output that is its
// input's memory: ICudaEngine::getAliasedInputTensor, what KVCacheUpdate needs) came with TensorRT
// 10.15 and are in TensorRT-RTX; a library built against TensorRT 10.3 (JetPack 6) runs `decoder` only.
#if defined(TRT_MAJOR_RTX)
#define OMNISIFT_TRT_RTX 1
#define OMNISIFT_TRT_ALIASING 1
#elif NV_TENSORRT_MAJOR > 10 || (NV_TENSORRT_MAJOR == 10 && NV_TENSORRT_MINOR >= 15)
#define OMNISIFT_TRT_RTX 0
#define OMNISIFT_TRT_ALIASING 1
#else
#define OMNISIFT_TRT_RTX 0
#define OMNISIFT_TRT_ALIASING 0
#endif

namespace omnisift {

namespace {

namespace fs = std::filesystem;
using nvinfer1::DataType;
using trt::cuda;
using trt::DeviceBuffer;
using trt::DeviceKv;

class Logger : public nvinfer1::ILogger {
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << msg << "\n";
  }
};

size_t dtype_bytes(DataType t) {
  switch (t) {
    case DataType::kFLOAT: case DataType::kINT32: return 4;
    case DataType::kHALF: case DataType::kBF16: return 2;
    case DataType::kINT64: return 8;
    default: return 1;
  }
}

// One deserialized engine (its weights: loaded once, shared by the sessions) and the manifest's
// view of its tensors.
struct LoadedEngine {
  std::unique_ptr<nvinfer1::ICudaEngine> engine;
  const GraphInfo* graph = nullptr;
  std::map<std::string, DataType> types;

  static Result<std::unique_ptr<LoadedEngine>> load(nvinfer1::IRuntime& runtime, const std::string& path, const GraphInfo& graph) {
    OMNISIFT_ASSIGN_OR_RETURN(std::string blob, read_file(path));
    auto e = std::make_unique<LoadedEngine>();
    e->graph = &graph;
    e->engine.reset(runtime.deserializeCudaEngine(blob.data(), blob.size()));
    if (!e->engine)
      return BackendError("TensorRT could not deserialize " + path + " (built for another GPU or TensorRT version?); "
                          "build the engines on this device with omnisift-edge build");
    for (const auto* list : {&graph.inputs, &graph.outputs}) {
      const bool input = list == &graph.inputs;
      for (const TensorInfo& t : *list) {
        const auto mode = e->engine->getTensorIOMode(t.name.c_str());
        if (mode != (input ? nvinfer1::TensorIOMode::kINPUT : nvinfer1::TensorIOMode::kOUTPUT))
          return DataLoss(path + " has no " + (input ? "input " : "output ") + t.name + " that the manifest lists; "
                          "build the engines again from this export");
        const DataType dt = e->engine->getTensorDataType(t.name.c_str());
        if (dt != DataType::kFLOAT && dt != DataType::kHALF && dt != DataType::kINT64)
          return Unsupported(path + ": tensor " + t.name + " has a type this backend does not feed (want fp32, fp16, int64)");
        e->types[t.name] = dt;
      }
    }
    return e;
  }
};

// One session's execution context on a shared engine (its activations; the weights are the engine's).
struct Engine {
  nvinfer1::ICudaEngine* engine = nullptr;   // LoadedEngine's
  std::unique_ptr<nvinfer1::IExecutionContext> context;
  const GraphInfo* graph = nullptr;
  std::map<std::string, DataType> types;

  static Result<std::unique_ptr<Engine>> open(LoadedEngine& loaded) {
    auto e = std::make_unique<Engine>();
    e->engine = loaded.engine.get();
    e->graph = loaded.graph;
    e->types = loaded.types;
    e->context.reset(loaded.engine->createExecutionContext());
    if (!e->context) return BackendError("TensorRT could not create an execution context for " + loaded.graph->key);
    return e;
  }

  Status set_shape(const TensorInfo& t, const std::vector<int64_t>& shape) {
    nvinfer1::Dims dims{};
    dims.nbDims = static_cast<int32_t>(shape.size());
    for (size_t i = 0; i < shape.size(); ++i) dims.d[i] = shape[i];
    if (!context->setInputShape(t.name.c_str(), dims))
      return BackendError("TensorRT refused the shape of " + t.name + " (outside the engine's optimization profile)");
    return Status::Ok();
  }
  Status bind(const TensorInfo& t, void* ptr) {
    if (!context->setTensorAddress(t.name.c_str(), ptr)) return BackendError("TensorRT refused the address of " + t.name);
    return Status::Ok();
  }
};

int64_t volume(const std::vector<int64_t>& shape) {
  int64_t v = 1;
  for (int64_t d : shape) v *= d;
  return v;
}

// The manifest's fixed shape of a tensor (no dynamic axis allowed).
Result<std::vector<int64_t>> fixed_shape(const TensorInfo& t) {
  for (int64_t d : t.shape)
    if (d < 0) return DataLoss("tensor " + t.name + " has a dynamic axis where the pipeline expects a fixed shape");
  return t.shape;
}

// What is loaded once (SharedEngines): the runtime, the four engines, their profiles and checks.
// Sessions' TrtBackends share it through a shared_ptr; it is read-only once loaded, but for
// createExecutionContext, which the mutex serializes.
class TrtEngines : public SharedEngines, public std::enable_shared_from_this<TrtEngines> {
 public:
  Status load(const std::string& dir, const Manifest& m, double ratio, const TrtOptions& options);
  Result<std::unique_ptr<Backend>> open_backend() override;
  Result<std::unique_ptr<Engine>> open_context(LoadedEngine& loaded) {
    std::lock_guard<std::mutex> lock(mutex_);
    return Engine::open(loaded);
  }

  Manifest manifest;   // the engines' graph entries point into it
  Logger logger;
  std::unique_ptr<nvinfer1::IRuntime> runtime;   // before the engines: outlives them
  std::unique_ptr<LoadedEngine> vision, audio, compressor, decoder;
  const EngineBuild* build = nullptr;              // manifest.builds' entry
  std::optional<DecoderProfiles> profiles;         // decoder (past/present)
  std::optional<trt::ScatterProfiles> scatter;     // decoder_scatter (in place)
  int device = 0;
  int64_t capacity = 0;      // usable context: min(manifest, build)
  int64_t cache_rows = 0;    // decoder_scatter: the engine's static cache_length (the build's max_context)
  // write_index / logits_index: whether the engine wants them on the host (TensorLocation kHOST)
  bool indices_on_host[2] = {false, false};

 private:
  Status check_in_place();
  std::mutex mutex_;
};

// One session's backend: execution contexts, I/O buffers, KV cache and CUDA stream of its own, on
// shared engines.
class TrtBackend : public Backend {
 public:
  explicit TrtBackend(std::shared_ptr<TrtEngines> shared)
      : shared_(std::move(shared)), manifest_(shared_->manifest), profiles_(shared_->profiles),
        scatter_(shared_->scatter), dims_(manifest_.dims), capacity_(shared_->capacity), cache_rows_(shared_->cache_rows) {}
  Status open();

  Status encode_video(const std::vector<float>& pixels, std::vector<float>& out) override {
    return run_static(*vision_, {&pixels}, {}, out);
  }
  Status encode_audio(const std::vector<float>& mel, int64_t valid_frames, std::vector<float>& out) override {
    if (audio_->graph->inputs.size() < 2) {   // an export before issue 25: whole windows only
      if (valid_frames != manifest_.dims.window_frames) return InvalidArgument("these engines take whole chunks only");
      return run_static(*audio_, {&mel}, {}, out);
    }
    const std::vector<int64_t> valid{valid_frames};
    return run_static(*audio_, {&mel}, {&valid}, out);
  }
  Status compress(const std::vector<float>& video, const std::vector<float>& audio, const Positions& chunk_positions,
                  int64_t valid_grids, int64_t valid_audio_tokens, CompressorOutput& out) override;
  Status decode(const std::vector<float>& embeds, const Positions& positions, std::vector<float>* logits) override;
  Status drop_kv(int64_t start, int64_t stop) override { return kv_.drop(start, stop); }
  Status rotate_kv(int64_t delta, const std::vector<double>& inv_freq) override { return kv_.rotate(delta, inv_freq); }
  Status reset() override { kv_.reset(); return Status::Ok(); }
  int64_t kv_length() const override { return kv_.length(); }
  Status check_append(int64_t past, int64_t n) const override {
    if (past + n > capacity_) return ContextFull("the engines hold " + std::to_string(capacity_) + " tokens of context");
    if (scatter_) return scatter_->plan(n, true).status();
    return profiles_->plan(past, n).status();
  }
  int64_t max_context() const override { return capacity_; }

  ~TrtBackend() override {
    if (stream_) {
      cudaStreamSynchronize(stream_);
      cudaStreamDestroy(stream_);
    }
  }

 private:
  Status upload(const float* data, size_t n, DataType type, void* dst);
  Status upload_ints(const int64_t* data, size_t n, void* dst);
  Status download(const void* src, size_t n, DataType type, std::vector<float>& out);
  // One run of a fixed-shape engine: float inputs in order (int64 ones from `ints`), output 0 as float.
  Status run_static(Engine& e, std::vector<const std::vector<float>*> floats, std::vector<const std::vector<int64_t>*> ints,
                    std::vector<float>& out0, std::vector<std::vector<int64_t>>* int_outputs = nullptr);
  Status use_profile(int profile);
  // The first `take` tokens from `start`: embeds and positions [3, 1, take] uploaded, both bound.
  Status feed_tokens(const std::vector<float>& embeds, const Positions& positions, int64_t start, int64_t take);
  Status decode_scatter(const std::vector<float>& embeds, const Positions& positions, std::vector<float>* logits);
  Status decode_past_present(const std::vector<float>& embeds, const Positions& positions, std::vector<float>* logits);
  Status init_decoder();

  std::shared_ptr<TrtEngines> shared_;   // first: released after everything below
  const Manifest& manifest_;
  const std::optional<DecoderProfiles>& profiles_;
  const std::optional<trt::ScatterProfiles>& scatter_;
  const Dims dims_;
  const int64_t capacity_, cache_rows_;
  std::unique_ptr<Engine> vision_, audio_, compressor_, decoder_;   // this session's execution contexts
  cudaStream_t stream_ = nullptr;
  int current_profile_ = 0;
  std::map<std::string, std::unique_ptr<DeviceBuffer>> io_;   // per tensor name, static engines
  DeviceBuffer embeds_, positions_, mask_, logits_, write_index_, logits_index_;
  // write_index / logits_index: fed from device memory, or from here where the engine wants them on
  // the host (TensorLocation kHOST: TensorRT reads them when enqueueV3 is called)
  int64_t write_index_host_[1] = {0}, logits_index_host_[1] = {0};
  DeviceKv kv_;
  std::vector<uint16_t> half_staging_;
};

Status TrtBackend::upload(const float* data, size_t n, DataType type, void* dst) {
  if (type == DataType::kFLOAT) return cuda(cudaMemcpyAsync(dst, data, n * 4, cudaMemcpyHostToDevice, stream_), "upload");
  if (type != DataType::kHALF) return Unsupported("cannot feed float data to a tensor of this type");
  half_staging_.resize(n);
  for (size_t i = 0; i < n; ++i) half_staging_[i] = float_to_half(data[i]);
  OMNISIFT_RETURN_IF_ERROR(cuda(cudaMemcpyAsync(dst, half_staging_.data(), n * 2, cudaMemcpyHostToDevice, stream_), "upload"));
  return cuda(cudaStreamSynchronize(stream_), "upload");   // the staging buffer is reused
}

Status TrtBackend::upload_ints(const int64_t* data, size_t n, void* dst) {
  return cuda(cudaMemcpyAsync(dst, data, n * 8, cudaMemcpyHostToDevice, stream_), "upload");
}

Status TrtBackend::download(const void* src, size_t n, DataType type, std::vector<float>& out) {
  out.resize(n);
  if (type == DataType::kFLOAT) {
    OMNISIFT_RETURN_IF_ERROR(cuda(cudaMemcpyAsync(out.data(), src, n * 4, cudaMemcpyDeviceToHost, stream_), "download"));
    return cuda(cudaStreamSynchronize(stream_), "download");
  }
  half_staging_.resize(n);
  OMNISIFT_RETURN_IF_ERROR(cuda(cudaMemcpyAsync(half_staging_.data(), src, n * 2, cudaMemcpyDeviceToHost, stream_), "download"));
  OMNISIFT_RETURN_IF_ERROR(cuda(cudaStreamSynchronize(stream_), "download"));
  for (size_t i = 0; i < n; ++i) out[i] = half_to_float(half_staging_[i]);
  return Status::Ok();
}

Status TrtBackend::run_static(Engine& e, std::vector<const std::vector<float>*> floats,
                              std::vector<const std::vector<int64_t>*> ints, std::vector<float>& out0,
                              std::vector<std::vector<int64_t>>* int_outputs) {
  size_t fi = 0, ii = 0;
  for (const TensorInfo& t : e.graph->inputs) {
    OMNISIFT_ASSIGN_OR_RETURN(std::vector<int64_t> shape, fixed_shape(t));
    const size_t n = static_cast<size_t>(volume(shape));
    DeviceBuffer& buf = *io_.at(e.graph->key + "/" + t.name);
    const DataType type = e.types.at(t.name);
    if (type == DataType::kINT64) {
      if (ii >= ints.size() || ints[ii]->size() != n) return InvalidArgument(t.name + ": wrong number of values");
      OMNISIFT_RETURN_IF_ERROR(upload_ints(ints[ii++]->data(), n, buf.ptr));
    } else {
      if (fi >= floats.size() || floats[fi]->size() != n)
        return InvalidArgument(t.name + ": " + std::to_string(fi < floats.size() ? floats[fi]->size() : 0) +
                               " values, the engine takes " + std::to_string(n));
      OMNISIFT_RETURN_IF_ERROR(upload(floats[fi++]->data(), n, type, buf.ptr));
    }
    OMNISIFT_RETURN_IF_ERROR(e.set_shape(t, shape));
    OMNISIFT_RETURN_IF_ERROR(e.bind(t, buf.ptr));
  }
  for (const TensorInfo& t : e.graph->outputs) OMNISIFT_RETURN_IF_ERROR(e.bind(t, io_.at(e.graph->key + "/" + t.name)->ptr));
  if (!e.context->enqueueV3(stream_)) return BackendError("TensorRT failed to run " + e.graph->key);
  for (size_t k = 0; k < e.graph->outputs.size(); ++k) {
    const TensorInfo& t = e.graph->outputs[k];
    const size_t n = static_cast<size_t>(volume(t.shape));
    const void* src = io_.at(e.graph->key + "/" + t.name)->ptr;
    const DataType type = e.types.at(t.name);
    if (type == DataType::kINT64) {
      if (!int_outputs) continue;
      int_outputs->emplace_back(n);
      OMNISIFT_RETURN_IF_ERROR(cuda(cudaMemcpyAsync(int_outputs->back().data(), src, n * 8, cudaMemcpyDeviceToHost, stream_), "download"));
      OMNISIFT_RETURN_IF_ERROR(cuda(cudaStreamSynchronize(stream_), "download"));
    } else if (k == 0) {
      OMNISIFT_RETURN_IF_ERROR(download(src, n, type, out0));
    }
  }
  return Status::Ok();
}

Status TrtBackend::compress(const std::vector<float>& video, const std::vector<float>& audio,
                            const Positions& chunk_positions, int64_t valid_grids, int64_t valid_audio_tokens,
                            CompressorOutput& out) {
  std::vector<std::vector<int64_t>> ints;
  const std::vector<int64_t> grids{valid_grids}, audio_tokens{valid_audio_tokens};
  const bool valid_inputs = compressor_->graph->inputs.size() > 3;   // exports since issue 25
  if (!valid_inputs && (valid_grids != manifest_.dims.grids_per_chunk || valid_audio_tokens != manifest_.dims.window_audio_tokens))
    return InvalidArgument("these engines take whole chunks only");
  std::vector<const std::vector<int64_t>*> int_inputs{&chunk_positions.data};
  if (valid_inputs) int_inputs.insert(int_inputs.end(), {&grids, &audio_tokens});
  OMNISIFT_RETURN_IF_ERROR(run_static(*compressor_, {&video, &audio}, int_inputs, out.kept_embeds, &ints));
  if (ints.size() != (valid_inputs ? 3u : 2u)) return BackendError("the compressor engine did not return kept positions and indices");
  if (valid_inputs) {   // the first kept_count rows are real: [3, 1, K] positions keep each row's first kept_count
    const int64_t full = static_cast<int64_t>(ints[1].size()), count = ints[2].empty() ? -1 : ints[2][0];
    if (count < 0 || count > full) return BackendError("the compressor engine returned a kept count outside [0, K]");
    std::vector<int64_t> positions;
    for (int row = 0; row < 3; ++row)
      positions.insert(positions.end(), ints[0].begin() + row * full, ints[0].begin() + row * full + count);
    ints[0] = std::move(positions);
    ints[1].resize(static_cast<size_t>(count));
    out.kept_embeds.resize(static_cast<size_t>(count) * manifest_.dims.hidden);
  }
  const int64_t k = static_cast<int64_t>(ints[1].size());
  out.kept_positions.n = k;
  out.kept_positions.data = std::move(ints[0]);   // [3, 1, K] has the layout of [3, K]
  out.kept_index = std::move(ints[1]);
  return Status::Ok();
}

Status TrtBackend::use_profile(int profile) {
  if (profile == current_profile_) return Status::Ok();
  if (!decoder_->context->setOptimizationProfileAsync(profile, stream_))
    return BackendError("TensorRT refused to switch the decoder to profile " + std::to_string(profile));
  current_profile_ = profile;
  return Status::Ok();
}

Status TrtBackend::feed_tokens(const std::vector<float>& embeds, const Positions& positions, int64_t start, int64_t take) {
  Engine& e = *decoder_;
  const auto& in = e.graph->inputs;
  const int64_t d = dims_.hidden;
  std::vector<int64_t> piece_positions;   // [3, 1, take]
  for (int row = 0; row < 3; ++row)
    for (int64_t i = start; i < start + take; ++i) piece_positions.push_back(positions.at(row, i));
  OMNISIFT_RETURN_IF_ERROR(upload(embeds.data() + start * d, static_cast<size_t>(take * d), e.types.at(in[0].name), embeds_.ptr));
  OMNISIFT_RETURN_IF_ERROR(upload_ints(piece_positions.data(), piece_positions.size(), positions_.ptr));
  OMNISIFT_RETURN_IF_ERROR(cuda(cudaStreamSynchronize(stream_), "decoder inputs"));   // piece_positions goes out of scope
  OMNISIFT_RETURN_IF_ERROR(e.set_shape(in[0], {1, take, d}));
  OMNISIFT_RETURN_IF_ERROR(e.set_shape(in[1], {3, 1, take}));
  OMNISIFT_RETURN_IF_ERROR(e.bind(in[0], embeds_.ptr));
  return e.bind(in[1], positions_.ptr);
}

Status TrtBackend::decode(const std::vector<float>& embeds, const Positions& positions, std::vector<float>* logits) {
  const int64_t n = positions.n;
  if (n <= 0 || static_cast<int64_t>(embeds.size()) != n * dims_.hidden) return InvalidArgument("decoder embeds are not [n, hidden]");
  OMNISIFT_RETURN_IF_ERROR(check_append(kv_.length(), n));
  if (scatter_) return decode_scatter(embeds, positions, logits);
  return decode_past_present(embeds, positions, logits);
}

// decoder_scatter: inputs embeds, positions, write_index [1], logits_index [L], then the caches
// [1, kv, cache_rows, hd], each bound to the same buffer as its aliased present output.
Status TrtBackend::decode_scatter(const std::vector<float>& embeds, const Positions& positions, std::vector<float>* logits) {
  OMNISIFT_ASSIGN_OR_RETURN(std::vector<trt::ScatterPiece> pieces, scatter_->plan(positions.n, logits != nullptr));
  Engine& e = *decoder_;
  const auto& in = e.graph->inputs;
  const auto& outs = e.graph->outputs;
  int64_t start = 0;
  for (const trt::ScatterPiece& piece : pieces) {
    const int64_t take = piece.tokens;
    write_index_host_[0] = kv_.length();   // the new rows go after the cached ones
    logits_index_host_[0] = take - 1;      // the piece's last row; no row at all when logits_rows is 0
    OMNISIFT_RETURN_IF_ERROR(use_profile(piece.profile));
    OMNISIFT_RETURN_IF_ERROR(feed_tokens(embeds, positions, start, take));
    if (!shared_->indices_on_host[0]) OMNISIFT_RETURN_IF_ERROR(upload_ints(write_index_host_, 1, write_index_.ptr));
    if (!shared_->indices_on_host[1] && piece.logits_rows > 0)
      OMNISIFT_RETURN_IF_ERROR(upload_ints(logits_index_host_, 1, logits_index_.ptr));
    OMNISIFT_RETURN_IF_ERROR(e.set_shape(in[2], {1}));
    OMNISIFT_RETURN_IF_ERROR(e.set_shape(in[3], {piece.logits_rows}));
    OMNISIFT_RETURN_IF_ERROR(e.bind(in[2], shared_->indices_on_host[0] ? static_cast<void*>(write_index_host_) : write_index_.ptr));
    OMNISIFT_RETURN_IF_ERROR(e.bind(in[3], shared_->indices_on_host[1] ? static_cast<void*>(logits_index_host_) : logits_index_.ptr));
    for (size_t i = 0; i + 4 < in.size(); ++i) {   // past i and present i: one buffer, written in place
      OMNISIFT_RETURN_IF_ERROR(e.set_shape(in[4 + i], {1, dims_.kv_heads, cache_rows_, dims_.head_dim}));
      OMNISIFT_RETURN_IF_ERROR(e.bind(in[4 + i], kv_.past(i)));
      OMNISIFT_RETURN_IF_ERROR(e.bind(outs[1 + i], kv_.present(i)));
    }
    OMNISIFT_RETURN_IF_ERROR(e.bind(outs[0], logits_.ptr));
    if (!e.context->enqueueV3(stream_)) return BackendError("TensorRT failed to run the decoder");
    OMNISIFT_RETURN_IF_ERROR(cuda(cudaStreamSynchronize(stream_), "decoder"));
    kv_.commit(take);
    start += take;
  }
  if (logits == nullptr) return Status::Ok();
  return download(logits_.ptr, static_cast<size_t>(dims_.vocab), e.types.at(outs[0].name), *logits);   // [1, 1, V]
}

// decoder: past [1, kv, P, hd] in one buffer set, present [1, kv, P + n, hd] written into the other.
Status TrtBackend::decode_past_present(const std::vector<float>& embeds, const Positions& positions,
                                       std::vector<float>* logits) {
  OMNISIFT_ASSIGN_OR_RETURN(std::vector<DecoderProfiles::Piece> pieces, profiles_->plan(kv_.length(), positions.n));
  Engine& e = *decoder_;
  const auto& in = e.graph->inputs;
  const auto& outs = e.graph->outputs;
  int64_t start = 0;
  for (const DecoderProfiles::Piece& piece : pieces) {   // a step no profile takes whole is fed in pieces
    const int64_t take = piece.tokens, past = kv_.length();
    OMNISIFT_RETURN_IF_ERROR(use_profile(piece.profile));
    OMNISIFT_RETURN_IF_ERROR(feed_tokens(embeds, positions, start, take));
    OMNISIFT_RETURN_IF_ERROR(e.set_shape(in[2], {1, past + take}));
    OMNISIFT_RETURN_IF_ERROR(e.bind(in[2], mask_.ptr));
    for (size_t i = 0; i + 3 < in.size(); ++i) {
      OMNISIFT_RETURN_IF_ERROR(e.set_shape(in[3 + i], {1, dims_.kv_heads, past, dims_.head_dim}));
      OMNISIFT_RETURN_IF_ERROR(e.bind(in[3 + i], kv_.past(i)));
      OMNISIFT_RETURN_IF_ERROR(e.bind(outs[1 + i], kv_.present(i)));
    }
    OMNISIFT_RETURN_IF_ERROR(e.bind(outs[0], logits_.ptr));
    if (!e.context->enqueueV3(stream_)) return BackendError("TensorRT failed to run the decoder");
    OMNISIFT_RETURN_IF_ERROR(cuda(cudaStreamSynchronize(stream_), "decoder"));
    kv_.commit(take);   // the sets swap: this present is the next past
    start += take;
  }
  if (logits == nullptr) return Status::Ok();
  return download(logits_.ptr, static_cast<size_t>(dims_.vocab), e.types.at(outs[0].name), *logits);   // the last piece's
}

// decoder_scatter's engine must write every present into its past (the same memory) and hold a
// static cache of the build's max_context rows; a library without aliasing cannot run it.
Status TrtEngines::check_in_place() {
  const EngineBuild& b = *build;
#if OMNISIFT_TRT_ALIASING
  const nvinfer1::ICudaEngine& engine = *decoder->engine;
  const auto& in = decoder->graph->inputs;
  const auto& outs = decoder->graph->outputs;
  for (int k = 0; k < 2; ++k)   // write_index, logits_index
    indices_on_host[k] = engine.getTensorLocation(in[2 + k].name.c_str()) == nvinfer1::TensorLocation::kHOST;
  for (size_t i = 0; i + 4 < in.size(); ++i) {
    const char* aliased = engine.getAliasedInputTensor(outs[1 + i].name.c_str());
    if (aliased == nullptr || in[4 + i].name != aliased)
      return Unsupported("the " + b.target + " decoder_scatter engine does not write " + outs[1 + i].name +
                         " in place of " + in[4 + i].name + " (TensorRT aliases it to " +
                         (aliased ? aliased : std::string("no input")) + "); build the engines again with omnisift-edge build");
    const nvinfer1::Dims shape = engine.getTensorShape(in[4 + i].name.c_str());
    bool fixed = shape.nbDims == 4 && shape.d[2] == cache_rows;
    if (shape.nbDims == 4 && shape.d[2] < 0) {   // dynamic in the ONNX graph: every profile pins it
      fixed = true;
      for (int p = 0; p < engine.getNbOptimizationProfiles(); ++p)
        for (auto select : {nvinfer1::OptProfileSelector::kMIN, nvinfer1::OptProfileSelector::kMAX})
          fixed = fixed && engine.getProfileShape(in[4 + i].name.c_str(), p, select).d[2] == cache_rows;
    }
    if (!fixed)
      return DataLoss("the " + b.target + " decoder_scatter engine's " + in[4 + i].name + " does not hold the build's " +
                      std::to_string(cache_rows) + " cache rows; build the engines again");
  }
  return Status::Ok();
#else
  return Unsupported("the " + b.target + " engines keep the KV cache in place (decoder_scatter), which needs TensorRT "
                     ">= 10.15 or TensorRT-RTX; this omnisift library was compiled against TensorRT " +
                     std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) +
                     ": build the engines with this TensorRT (they then hold decoder)");
#endif
}

Status TrtBackend::init_decoder() {
  const EngineBuild& build = *shared_->build;
  const Engine& dec = *decoder_;
  const auto& in = dec.graph->inputs;
  const bool in_place = scatter_.has_value();
  const size_t first_cache = in_place ? 4 : 3;
  const EngineEntry& entry = build.engines.at(in_place ? "decoder_scatter" : "decoder");
  int64_t s_max = 1;   // the longest piece: a profile's max sequence_length
  for (const EngineProfile& p : entry.profiles) s_max = std::max(s_max, p.axes.at("sequence_length")[2]);
  OMNISIFT_RETURN_IF_ERROR(embeds_.allocate(static_cast<size_t>(s_max * dims_.hidden) * dtype_bytes(dec.types.at(in[0].name))));
  OMNISIFT_RETURN_IF_ERROR(positions_.allocate(static_cast<size_t>(3 * s_max) * 8));
  OMNISIFT_RETURN_IF_ERROR(logits_.allocate(static_cast<size_t>(dims_.vocab) * dtype_bytes(dec.types.at(dec.graph->outputs[0].name))));
  const DataType cache_type = dec.types.at(in[first_cache].name);
  if (cache_type != DataType::kFLOAT && cache_type != DataType::kHALF)
    return Unsupported("the decoder's KV cache is neither fp32 nor fp16");
  const size_t tensors = in.size() - first_cache;
  if (in_place) {
    OMNISIFT_RETURN_IF_ERROR(write_index_.allocate(8));
    OMNISIFT_RETURN_IF_ERROR(logits_index_.allocate(8));
    OMNISIFT_RETURN_IF_ERROR(kv_.allocate(DeviceKv::Form::kInPlace, tensors, dims_.kv_heads, cache_rows_, dims_.head_dim,
                                          cache_type == DataType::kHALF, stream_));
  } else {
    OMNISIFT_RETURN_IF_ERROR(mask_.allocate(static_cast<size_t>(capacity_) * 8));
    const std::vector<int64_t> ones(static_cast<size_t>(capacity_), 1);
    OMNISIFT_RETURN_IF_ERROR(upload_ints(ones.data(), ones.size(), mask_.ptr));
    OMNISIFT_RETURN_IF_ERROR(cuda(cudaStreamSynchronize(stream_), "init"));   // `ones` goes out of scope
    OMNISIFT_RETURN_IF_ERROR(kv_.allocate(DeviceKv::Form::kPingPong, tensors, dims_.kv_heads, capacity_, dims_.head_dim,
                                          cache_type == DataType::kHALF, stream_));
  }
  if (!decoder_->context->setOptimizationProfileAsync(0, stream_)) return BackendError("cannot select decoder profile 0");
  current_profile_ = 0;
  return cuda(cudaStreamSynchronize(stream_), "init");
}

Status TrtEngines::load(const std::string& dir, const Manifest& given, double ratio, const TrtOptions& options) {
  manifest = given;
  const Manifest& m = manifest;
  if (m.builds.empty()) return NotFound("this export has no TensorRT engines (manifest builds is empty); run omnisift-edge build");
  if (options.target.empty() && m.builds.size() > 1) return InvalidArgument("the export has engines for several targets; name one");
  auto bit = options.target.empty() ? m.builds.begin() : m.builds.find(options.target);
  if (bit == m.builds.end()) return NotFound("no engines for target " + options.target + "; run omnisift-edge build --target " + options.target);
  build = &bit->second;
  OMNISIFT_RETURN_IF_ERROR(trt::check_library(*build, OMNISIFT_TRT_RTX, getInferLibMajorVersion(), getInferLibMinorVersion()));
  device = options.device;
  OMNISIFT_RETURN_IF_ERROR(cuda(cudaSetDevice(options.device), "cudaSetDevice"));
  if (options.check_device) {
    cudaDeviceProp prop{};
    OMNISIFT_RETURN_IF_ERROR(cuda(cudaGetDeviceProperties(&prop, options.device), "cudaGetDeviceProperties"));
    const std::string cc = std::to_string(prop.major) + "." + std::to_string(prop.minor);
    OMNISIFT_RETURN_IF_ERROR(trt::check_compute_capability(*build, prop.name, cc));
  }
  runtime.reset(nvinfer1::createInferRuntime(logger));
  if (!runtime) return BackendError("createInferRuntime failed");
  OMNISIFT_ASSIGN_OR_RETURN(RatioPlan plan, m.ratio_plan(ratio));
  // the in-place decoder when the build has it (TensorRT >= 10.15, TensorRT-RTX), else past/present
  const std::string decoder_key = build->engines.count("decoder_scatter") ? "decoder_scatter" : "decoder";
  const std::pair<std::unique_ptr<LoadedEngine>*, std::string> wanted[] = {
      {&vision, "vision_encoder"}, {&audio, "audio_encoder"}, {&compressor, plan.graph}, {&decoder, decoder_key}};
  for (const auto& [slot, key] : wanted) {
    auto entry = build->engines.find(key);
    if (entry == build->engines.end()) return NotFound("no engine for " + key + " in builds." + build->target);
    OMNISIFT_ASSIGN_OR_RETURN(const GraphInfo* graph, m.graph(key));
    OMNISIFT_ASSIGN_OR_RETURN(*slot, LoadedEngine::load(*runtime, (fs::path(dir) / entry->second.file).string(), *graph));
  }
  capacity = std::min(m.max_context, build->max_context);
  if (decoder_key == "decoder_scatter") {
    OMNISIFT_ASSIGN_OR_RETURN(trt::ScatterProfiles p, trt::ScatterProfiles::create(build->engines.at(decoder_key)));
    scatter.emplace(std::move(p));
    cache_rows = build->max_context;
    return check_in_place();
  }
  OMNISIFT_ASSIGN_OR_RETURN(DecoderProfiles p, DecoderProfiles::create(build->engines.at(decoder_key)));
  profiles.emplace(std::move(p));
  return Status::Ok();
}

Result<std::unique_ptr<Backend>> TrtEngines::open_backend() {
  auto backend = std::make_unique<TrtBackend>(shared_from_this());
  OMNISIFT_RETURN_IF_ERROR(backend->open());
  return std::unique_ptr<Backend>(std::move(backend));
}

// This session's part: a CUDA stream, an execution context per engine, I/O buffers, the KV cache.
Status TrtBackend::open() {
  OMNISIFT_RETURN_IF_ERROR(cuda(cudaSetDevice(shared_->device), "cudaSetDevice"));   // this thread's device
  OMNISIFT_RETURN_IF_ERROR(cuda(cudaStreamCreate(&stream_), "cudaStreamCreate"));
  const std::pair<std::unique_ptr<Engine>*, LoadedEngine*> wanted[] = {{&vision_, shared_->vision.get()},
                                                                      {&audio_, shared_->audio.get()},
                                                                      {&compressor_, shared_->compressor.get()},
                                                                      {&decoder_, shared_->decoder.get()}};
  for (const auto& [slot, loaded] : wanted) {
    OMNISIFT_ASSIGN_OR_RETURN(*slot, shared_->open_context(*loaded));
    if (slot == &decoder_) continue;
    const GraphInfo& graph = *loaded->graph;
    for (const auto* list : {&graph.inputs, &graph.outputs})
      for (const TensorInfo& t : *list) {
        OMNISIFT_ASSIGN_OR_RETURN(std::vector<int64_t> shape, fixed_shape(t));
        auto buf = std::make_unique<DeviceBuffer>();
        OMNISIFT_RETURN_IF_ERROR(buf->allocate(static_cast<size_t>(volume(shape)) * dtype_bytes((*slot)->types.at(t.name))));
        io_[graph.key + "/" + t.name] = std::move(buf);
      }
  }
  return init_decoder();
}

}  // namespace

bool trt_available() { return true; }

Result<std::shared_ptr<SharedEngines>> load_trt_engines(const std::string& export_dir, const Manifest& manifest,
                                                        double ratio, const TrtOptions& options) {
  auto engines = std::make_shared<TrtEngines>();
  OMNISIFT_RETURN_IF_ERROR(engines->load(export_dir, manifest, ratio, options));
  return std::shared_ptr<SharedEngines>(std::move(engines));
}

Result<std::unique_ptr<Backend>> create_trt_backend(const std::string& export_dir, const Manifest& manifest, double ratio,
                                                   const TrtOptions& options) {
  OMNISIFT_ASSIGN_OR_RETURN(std::shared_ptr<SharedEngines> engines, load_trt_engines(export_dir, manifest, ratio, options));
  return engines->open_backend();
}

}  // namespace omnisift
