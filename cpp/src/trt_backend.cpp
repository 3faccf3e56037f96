// TensorRT 10 backend (see trt_backend.h). Compiled only where TensorRT and CUDA are found.
#include "omnisift/trt_backend.h"

#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <filesystem>
#include <iostream>
#include <map>
#include <optional>

#include "omnisift/embeddings.h"
#include "omnisift/plan.h"

namespace omnisift {

namespace {

namespace fs = std::filesystem;
using nvinfer1::DataType;

class Logger : public nvinfer1::ILogger {
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << msg << "\n";
  }
};

Status cuda(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status::Ok();
  return BackendError(std::string(what) + ": " + cudaGetErrorString(err));
}

size_t dtype_bytes(DataType t) {
  switch (t) {
    case DataType::kFLOAT: case DataType::kINT32: return 4;
    case DataType::kHALF: case DataType::kBF16: return 2;
    case DataType::kINT64: return 8;
    default: return 1;
  }
}

struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { if (ptr) cudaFree(ptr); }
  Status allocate(size_t n) {
    if (n <= bytes) return Status::Ok();
    if (ptr) cudaFree(ptr);
    ptr = nullptr;
    bytes = 0;
    OMNISIFT_RETURN_IF_ERROR(cuda(cudaMalloc(&ptr, n), "cudaMalloc"));
    bytes = n;
    return Status::Ok();
  }
};

// One deserialized engine, its execution context and the manifest's view of its tensors.
struct Engine {
  std::unique_ptr<nvinfer1::ICudaEngine> engine;
  std::unique_ptr<nvinfer1::IExecutionContext> context;
  const GraphInfo* graph = nullptr;
  std::map<std::string, DataType> types;

  static Result<std::unique_ptr<Engine>> load(nvinfer1::IRuntime& runtime, const std::string& path, const GraphInfo& graph) {
    OMNISIFT_ASSIGN_OR_RETURN(std::string blob, read_file(path));
    auto e = std::make_unique<Engine>();
    e->graph = &graph;
    e->engine.reset(runtime.deserializeCudaEngine(blob.data(), blob.size()));
    if (!e->engine)
      return BackendError("TensorRT could not deserialize " + path + " (built for another GPU or TensorRT version?); "
                          "build the engines on this device with omnisift-edge build");
    e->context.reset(e->engine->createExecutionContext());
    if (!e->context) return BackendError("TensorRT could not create an execution context for " + path);
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

class TrtBackend : public Backend {
 public:
  Status init(const std::string& dir, const Manifest& m, double ratio, const TrtOptions& options);

  Status encode_video(const std::vector<float>& pixels, std::vector<float>& out) override {
    return run_static(*vision_, {&pixels}, {}, out);
  }
  Status encode_audio(const std::vector<float>& mel, std::vector<float>& out) override {
    return run_static(*audio_, {&mel}, {}, out);
  }
  Status compress(const std::vector<float>& video, const std::vector<float>& audio, const Positions& chunk_positions,
                  CompressorOutput& out) override;
  Status decode(const std::vector<float>& embeds, const Positions& positions, std::vector<float>* logits) override;
  Status drop_kv(int64_t start, int64_t stop) override;
  Status rotate_kv(int64_t delta, const std::vector<double>& inv_freq) override;
  Status reset() override { kv_length_ = 0; return Status::Ok(); }
  int64_t kv_length() const override { return kv_length_; }
  Status check_append(int64_t past, int64_t n) const override {
    if (past + n > capacity_) return ContextFull("the engines hold " + std::to_string(capacity_) + " tokens of context");
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

  Manifest manifest_;   // the engines' graph entries point into it
  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<Engine> vision_, audio_, compressor_, decoder_;
  std::optional<DecoderProfiles> profiles_;
  cudaStream_t stream_ = nullptr;
  Dims dims_;
  int64_t capacity_ = 0, kv_length_ = 0;
  int current_profile_ = 0;
  std::map<std::string, std::unique_ptr<DeviceBuffer>> io_;   // per tensor name, static engines
  DeviceBuffer embeds_, positions_, mask_, logits_;
  std::vector<std::unique_ptr<DeviceBuffer>> kv_[2];        // [set][layer*2 + key/value]
  int past_set_ = 0;
  std::vector<uint16_t> half_staging_;
  std::vector<char> host_staging_;
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
                            const Positions& chunk_positions, CompressorOutput& out) {
  std::vector<std::vector<int64_t>> ints;
  OMNISIFT_RETURN_IF_ERROR(run_static(*compressor_, {&video, &audio}, {&chunk_positions.data}, out.kept_embeds, &ints));
  if (ints.size() != 2) return BackendError("the compressor engine did not return kept positions and indices");
  const int64_t k = static_cast<int64_t>(ints[1].size());
  out.kept_positions.n = k;
  out.kept_positions.data = std::move(ints[0]);   // [3, 1, K] has the layout of [3, K]
  out.kept_index = std::move(ints[1]);
  return Status::Ok();
}

Status TrtBackend::decode(const std::vector<float>& embeds, const Positions& positions, std::vector<float>* logits) {
  const int64_t n = positions.n, d = dims_.hidden;
  if (n <= 0 || static_cast<int64_t>(embeds.size()) != n * d) return InvalidArgument("decoder embeds are not [n, hidden]");
  OMNISIFT_RETURN_IF_ERROR(check_append(kv_length_, n));
  OMNISIFT_ASSIGN_OR_RETURN(std::vector<DecoderProfiles::Piece> pieces, profiles_->plan(kv_length_, n));
  Engine& e = *decoder_;
  const auto& in = e.graph->inputs;
  const auto& outs = e.graph->outputs;
  const size_t n_kv = in.size() - 3;
  std::vector<int64_t> piece_positions;
  int64_t start = 0;
  for (const DecoderProfiles::Piece& piece : pieces) {   // a step no profile takes whole is fed in pieces
    const int64_t take = piece.tokens, past = kv_length_;
    if (piece.profile != current_profile_) {
      if (!e.context->setOptimizationProfileAsync(piece.profile, stream_))
        return BackendError("TensorRT refused to switch the decoder to profile " + std::to_string(piece.profile));
      current_profile_ = piece.profile;
    }
    piece_positions.clear();
    for (int row = 0; row < 3; ++row)
      for (int64_t i = start; i < start + take; ++i) piece_positions.push_back(positions.at(row, i));
    OMNISIFT_RETURN_IF_ERROR(upload(embeds.data() + start * d, static_cast<size_t>(take * d), e.types.at(in[0].name), embeds_.ptr));
    OMNISIFT_RETURN_IF_ERROR(upload_ints(piece_positions.data(), piece_positions.size(), positions_.ptr));
    OMNISIFT_RETURN_IF_ERROR(e.set_shape(in[0], {1, take, d}));
    OMNISIFT_RETURN_IF_ERROR(e.set_shape(in[1], {3, 1, take}));
    OMNISIFT_RETURN_IF_ERROR(e.set_shape(in[2], {1, past + take}));
    OMNISIFT_RETURN_IF_ERROR(e.bind(in[0], embeds_.ptr));
    OMNISIFT_RETURN_IF_ERROR(e.bind(in[1], positions_.ptr));
    OMNISIFT_RETURN_IF_ERROR(e.bind(in[2], mask_.ptr));
    for (size_t i = 0; i < n_kv; ++i) {   // past i -> present i: the same [1, kv, P, hd] memory layout
      OMNISIFT_RETURN_IF_ERROR(e.set_shape(in[3 + i], {1, dims_.kv_heads, past, dims_.head_dim}));
      OMNISIFT_RETURN_IF_ERROR(e.bind(in[3 + i], kv_[past_set_][i]->ptr));
      OMNISIFT_RETURN_IF_ERROR(e.bind(outs[1 + i], kv_[1 - past_set_][i]->ptr));
    }
    OMNISIFT_RETURN_IF_ERROR(e.bind(outs[0], logits_.ptr));
    if (!e.context->enqueueV3(stream_)) return BackendError("TensorRT failed to run the decoder");
    OMNISIFT_RETURN_IF_ERROR(cuda(cudaStreamSynchronize(stream_), "decoder"));   // piece_positions is reused
    past_set_ = 1 - past_set_;
    kv_length_ += take;
    start += take;
  }
  if (logits == nullptr) return Status::Ok();
  return download(logits_.ptr, static_cast<size_t>(dims_.vocab), e.types.at(outs[0].name), *logits);   // the last piece's
}

Status TrtBackend::drop_kv(int64_t, int64_t) {
  return Unsupported("the TensorRT backend cannot evict cached rows yet");
}

Status TrtBackend::rotate_kv(int64_t, const std::vector<double>&) {
  return Unsupported("the TensorRT backend cannot re-base cached keys yet");
}

Status TrtBackend::init(const std::string& dir, const Manifest& manifest, double ratio, const TrtOptions& options) {
  manifest_ = manifest;
  const Manifest& m = manifest_;
  dims_ = m.dims;
  if (m.builds.empty()) return NotFound("this export has no TensorRT engines (manifest builds is empty); run omnisift-edge build");
  if (options.target.empty() && m.builds.size() > 1) return InvalidArgument("the export has engines for several targets; name one");
  auto bit = options.target.empty() ? m.builds.begin() : m.builds.find(options.target);
  if (bit == m.builds.end()) return NotFound("no engines for target " + options.target + "; run omnisift-edge build --target " + options.target);
  const EngineBuild& build = bit->second;
  OMNISIFT_RETURN_IF_ERROR(cuda(cudaSetDevice(options.device), "cudaSetDevice"));
  if (options.check_device) {
    cudaDeviceProp prop{};
    OMNISIFT_RETURN_IF_ERROR(cuda(cudaGetDeviceProperties(&prop, options.device), "cudaGetDeviceProperties"));
    const std::string cc = std::to_string(prop.major) + "." + std::to_string(prop.minor);
    if (cc != build.compute_capability)
      return Unsupported("the engines were built for compute capability " + build.compute_capability + ", this GPU is " +
                         cc + "; build them on this device (omnisift-edge build --target auto)");
  }
  const int32_t lib = getInferLibVersion();
  const int major = lib >= 100000 ? lib / 10000 : lib / 1000, minor = lib >= 100000 ? (lib / 100) % 100 : (lib / 100) % 10;
  const std::string have = std::to_string(major) + "." + std::to_string(minor);
  if (build.tensorrt.rfind(have + ".", 0) != 0 && build.tensorrt != have)
    return Unsupported("the engines were built with TensorRT " + build.tensorrt + ", this library is " + have +
                       "; build the engines again with this TensorRT");
  runtime_.reset(nvinfer1::createInferRuntime(logger_));
  if (!runtime_) return BackendError("createInferRuntime failed");
  OMNISIFT_RETURN_IF_ERROR(cuda(cudaStreamCreate(&stream_), "cudaStreamCreate"));
  OMNISIFT_ASSIGN_OR_RETURN(RatioPlan plan, m.ratio_plan(ratio));
  const std::pair<std::unique_ptr<Engine>*, std::string> wanted[] = {
      {&vision_, "vision_encoder"}, {&audio_, "audio_encoder"}, {&compressor_, plan.graph}, {&decoder_, "decoder"}};
  for (const auto& [slot, key] : wanted) {
    auto entry = build.engines.find(key);
    if (entry == build.engines.end()) return NotFound("no engine for " + key + " in builds." + build.target);
    OMNISIFT_ASSIGN_OR_RETURN(const GraphInfo* graph, m.graph(key));
    OMNISIFT_ASSIGN_OR_RETURN(*slot, Engine::load(*runtime_, (fs::path(dir) / entry->second.file).string(), *graph));
    if (key == "decoder") continue;
    for (const auto* list : {&graph->inputs, &graph->outputs})
      for (const TensorInfo& t : *list) {
        OMNISIFT_ASSIGN_OR_RETURN(std::vector<int64_t> shape, fixed_shape(t));
        auto buf = std::make_unique<DeviceBuffer>();
        OMNISIFT_RETURN_IF_ERROR(buf->allocate(static_cast<size_t>(volume(shape)) * dtype_bytes((*slot)->types.at(t.name))));
        io_[key + "/" + t.name] = std::move(buf);
      }
  }
  OMNISIFT_ASSIGN_OR_RETURN(DecoderProfiles profiles, DecoderProfiles::create(build.engines.at("decoder")));
  profiles_.emplace(std::move(profiles));
  capacity_ = std::min(m.max_context, build.max_context);
  const Engine& dec = *decoder_;
  const auto& in = dec.graph->inputs;
  int64_t s_max = 1;   // the longest piece: a profile's max sequence_length
  for (const EngineProfile& p : build.engines.at("decoder").profiles) s_max = std::max(s_max, p.axes.at("sequence_length")[2]);
  OMNISIFT_RETURN_IF_ERROR(embeds_.allocate(static_cast<size_t>(s_max * dims_.hidden) * dtype_bytes(dec.types.at(in[0].name))));
  OMNISIFT_RETURN_IF_ERROR(positions_.allocate(static_cast<size_t>(3 * s_max) * 8));
  OMNISIFT_RETURN_IF_ERROR(mask_.allocate(static_cast<size_t>(capacity_) * 8));
  const std::vector<int64_t> ones(static_cast<size_t>(capacity_), 1);
  OMNISIFT_RETURN_IF_ERROR(upload_ints(ones.data(), ones.size(), mask_.ptr));
  OMNISIFT_RETURN_IF_ERROR(logits_.allocate(static_cast<size_t>(dims_.vocab) * dtype_bytes(dec.types.at(dec.graph->outputs[0].name))));
  const size_t kv_bytes = static_cast<size_t>(dims_.kv_heads) * capacity_ * dims_.head_dim * dtype_bytes(dec.types.at(in[3].name));
  for (auto& set : kv_)
    for (size_t i = 3; i < in.size(); ++i) {
      set.push_back(std::make_unique<DeviceBuffer>());
      OMNISIFT_RETURN_IF_ERROR(set.back()->allocate(kv_bytes));
    }
  if (!decoder_->context->setOptimizationProfileAsync(0, stream_)) return BackendError("cannot select decoder profile 0");
  current_profile_ = 0;
  return cuda(cudaStreamSynchronize(stream_), "init");
}

}  // namespace

bool trt_available() { return true; }

Result<std::unique_ptr<Backend>> create_trt_backend(const std::string& export_dir, const Manifest& manifest, double ratio,
                                                   const TrtOptions& options) {
  auto backend = std::make_unique<TrtBackend>();
  OMNISIFT_RETURN_IF_ERROR(backend->init(export_dir, manifest, ratio, options));
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace omnisift
