#include "omnisift/manifest.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "json_util.h"

namespace omnisift {

namespace fs = std::filesystem;
using detail::FieldError;
using detail::get_array;
using detail::get_int;
using detail::get_number;
using detail::get_string;
using detail::json;

int LayoutSpec::time_ids_per_grid() const {
  return static_cast<int>(std::lround(temporal_patch_size / fps * position_id_per_seconds));
}
int LayoutSpec::grids_per_chunk() const {
  return static_cast<int>(std::lround(seconds_per_chunk / (temporal_patch_size / fps)));
}
int LayoutSpec::time_ids_per_chunk() const {
  return static_cast<int>(position_id_per_seconds * seconds_per_chunk);
}
int LayoutSpec::samples_per_chunk() const { return static_cast<int>(sample_rate * seconds_per_chunk); }
int LayoutSpec::raw_frames_per_chunk() const { return static_cast<int>(std::lround(fps * seconds_per_chunk)); }

Result<RatioPlan> Manifest::ratio_plan(double ratio) const {
  std::string have;
  for (const RatioPlan& plan : ratios) {
    if (std::fabs(plan.ratio - ratio) < 1e-9) return plan;
    std::ostringstream s;
    s << (have.empty() ? "" : ", ") << plan.ratio;
    have += s.str();
  }
  std::ostringstream msg;
  msg << "this export has no compressor for ratio " << ratio << " (it has " << have
      << "); export again with --ratios including it";
  return NotFound(msg.str());
}

Result<const GraphInfo*> Manifest::graph(const std::string& key) const {
  if (auto it = graphs.find(key); it != graphs.end()) return &it->second;
  for (const auto& [form_key, form] : kv_cache)
    if (form.graph == key && !form.entry.key.empty()) return &form.entry;
  return NotFound("manifest.json has no graph '" + key + "'; export again");
}

Result<std::string> read_file(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return NotFound(path + " is missing (or not a file)");
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot open " + path);
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad()) return DataLoss("error while reading " + path);
  return buf.str();
}

namespace {

struct MdCtxDeleter {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};

std::string to_hex(const unsigned char* digest, unsigned int n) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < n; ++i) {
    out += kHex[digest[i] >> 4];
    out += kHex[digest[i] & 15];
  }
  return out;
}

TensorInfo parse_tensor(const json& t, const std::string& path) {
  TensorInfo info;
  info.name = get_string(t, "name", path);
  info.dtype = get_string(t, "dtype", path);
  for (const json& a : get_array(t, "axes", path)) info.axes.push_back(a.get<std::string>());
  for (const json& d : get_array(t, "shape", path)) {
    if (d.is_number_integer()) info.shape.push_back(d.get<int64_t>());
    else if (d.is_string()) info.shape.push_back(-1);
    else throw FieldError(path + ".shape holds neither a size nor an axis name");
  }
  if (info.shape.size() != info.axes.size()) throw FieldError(path + ": shape and axes differ in length");
  return info;
}

GraphInfo parse_graph(const std::string& key, const json& g) {
  const std::string path = "graphs." + key;
  GraphInfo info;
  info.key = key;
  info.file = get_string(g, "file", path);
  info.opset = static_cast<int>(get_int(g, "opset", path));
  size_t i = 0;
  for (const json& t : get_array(g, "inputs", path)) info.inputs.push_back(parse_tensor(t, path + ".inputs[" + std::to_string(i++) + "]"));
  i = 0;
  for (const json& t : get_array(g, "outputs", path)) info.outputs.push_back(parse_tensor(t, path + ".outputs[" + std::to_string(i++) + "]"));
  return info;
}

void parse_layout(const json& l, LayoutSpec& spec) {
  const json& t = detail::field(l, "tokens", "layout");
  TokenIds& ids = spec.tokens;
  const std::string tp = "layout.tokens";
  ids.endoftext = get_int(t, "endoftext", tp);
  ids.im_start = get_int(t, "im_start", tp);
  ids.im_end = get_int(t, "im_end", tp);
  ids.audio = get_int(t, "audio", tp);
  ids.audio_bos = get_int(t, "audio_bos", tp);
  ids.audio_eos = get_int(t, "audio_eos", tp);
  ids.vision_bos = get_int(t, "vision_bos", tp);
  ids.vision_eos = get_int(t, "vision_eos", tp);
  ids.image = get_int(t, "image", tp);
  ids.video = get_int(t, "video", tp);
  spec.patch_size = static_cast<int>(get_int(l, "patch_size", "layout"));
  spec.temporal_patch_size = static_cast<int>(get_int(l, "temporal_patch_size", "layout"));
  spec.spatial_merge_size = static_cast<int>(get_int(l, "spatial_merge_size", "layout"));
  spec.fps = get_number(l, "fps", "layout");
  spec.position_id_per_seconds = static_cast<int>(get_int(l, "position_id_per_seconds", "layout"));
  spec.seconds_per_chunk = get_number(l, "seconds_per_chunk", "layout");
  spec.sample_rate = static_cast<int>(get_int(l, "sample_rate", "layout"));
  spec.n_mels = static_cast<int>(get_int(l, "n_mels", "layout"));
  spec.n_fft = static_cast<int>(get_int(l, "n_fft", "layout"));
  spec.hop_length = static_cast<int>(get_int(l, "hop_length", "layout"));
  spec.audio_window_frames = static_cast<int>(get_int(l, "audio_window_frames", "layout"));
}

void parse_dims(const json& d, Dims& dims) {
  auto geti = [&](const char* k) { return static_cast<int>(get_int(d, k, "dims")); };
  dims.hidden = geti("hidden");
  dims.patch_dim = geti("patch_dim");
  dims.grid_h = geti("grid_h");
  dims.grid_w = geti("grid_w");
  dims.spatial_merge = geti("spatial_merge");
  dims.grids_per_chunk = geti("grids_per_chunk");
  dims.n_mels = geti("n_mels");
  dims.window_frames = geti("window_frames");
  dims.window_audio_tokens = geti("window_audio_tokens");
  dims.num_layers = geti("num_layers");
  dims.kv_heads = geti("kv_heads");
  dims.head_dim = geti("head_dim");
  dims.vocab = get_int(d, "vocab", "dims");
}

EngineBuild parse_build(const std::string& target, const json& b) {
  const std::string path = "builds." + target;
  EngineBuild build;
  build.target = target;
  build.tensorrt = get_string(b, "tensorrt", path);
  if (auto f = b.find("flavour"); f != b.end() && !f->is_null()) {
    build.flavour = get_string(b, "flavour", path);
    if (build.flavour != "tensorrt" && build.flavour != "tensorrt_rtx")
      throw FieldError(path + ".flavour is '" + build.flavour + "', expected tensorrt or tensorrt_rtx");
  }
  const json& cc = detail::field(b, "compute_capability", path);
  build.compute_capability = cc.is_string() ? cc.get<std::string>() : cc.dump();
  build.precision = get_string(b, "precision", path);
  build.max_context = get_int(b, "max_context", path);
  build.max_prefill_tokens = get_int(b, "max_prefill_tokens", path);
  const json& engines = detail::field(b, "engines", path);
  if (!engines.is_object()) throw FieldError(path + ".engines is not an object");
  for (auto it = engines.begin(); it != engines.end(); ++it) {
    const std::string ep = path + ".engines." + it.key();
    EngineEntry e;
    e.file = get_string(it.value(), "file", ep);
    e.precision = get_string(it.value(), "precision", ep);
    for (const json& p : get_array(it.value(), "profiles", ep)) {
      EngineProfile profile;
      profile.name = get_string(p, "name", ep + ".profiles");
      const json& axes = detail::field(p, "axes", ep + ".profiles");
      if (!axes.is_object()) throw FieldError(ep + ".profiles[].axes is not an object");
      for (auto a = axes.begin(); a != axes.end(); ++a) {
        std::vector<int64_t> range;
        for (const json& v : a.value()) range.push_back(v.get<int64_t>());
        if (range.size() != 3) throw FieldError(ep + ": axis " + a.key() + " is not [min, opt, max]");
        profile.axes[a.key()] = range;
      }
      e.profiles.push_back(profile);
    }
    build.engines[it.key()] = e;
  }
  return build;
}

bool has_tensorrt_runtime(const KvCacheForm& f) {
  for (const std::string& r : f.runtimes)
    if (r.rfind("tensorrt", 0) == 0) return true;   // "tensorrt>=10.15", "tensorrt_rtx"
  return false;
}

// kv_cache.decoder_scatter (the TensorRT in-place form), when declared: its kind, its write_index
// input and, where its tensors are listed, the decoder's inputs in order: embeds, positions,
// write_index, logits_index, then a key/value cache pair per layer; outputs logits + a pair per layer.
void check_scatter_form(const Manifest& m) {
  auto it = m.kv_cache.find("decoder_scatter");
  if (it == m.kv_cache.end()) return;
  const KvCacheForm& f = it->second;
  const std::string path = "kv_cache.decoder_scatter";
  if (f.graph != "decoder_scatter" || f.kind != "in_place_scatter" || !has_tensorrt_runtime(f))
    throw FieldError(path + " is not the in_place_scatter form for tensorrt (graph decoder_scatter)");
  if (f.cache_axes.size() != 4) throw FieldError(path + ".cache_axes is not [batch, kv_heads, cache_length, head_dim]");
  if (f.write_index.empty()) throw FieldError(path + " names no write_index input");
  auto g = m.graph("decoder_scatter");
  if (!g.ok()) return;   // declared without its tensors: only a build that holds its engine needs them
  const GraphInfo& graph = **g;
  const size_t pairs = 2 * static_cast<size_t>(m.dims.num_layers);
  if (graph.inputs.size() != 4 + pairs || graph.outputs.size() != 1 + pairs)
    throw FieldError("graphs.decoder_scatter does not have 4 + 2*num_layers inputs and 1 + 2*num_layers outputs");
  if (graph.inputs[2].name != f.write_index)
    throw FieldError("graphs.decoder_scatter's third input is " + graph.inputs[2].name + ", not " + path +
                     ".write_index (" + f.write_index + ")");
  for (size_t i = 0; i < pairs; ++i)
    if (graph.inputs[4 + i].shape.size() != 4 || graph.outputs[1 + i].shape.size() != 4)
      throw FieldError("graphs.decoder_scatter has a KV-cache tensor that is not [batch, kv_heads, cache_length, head_dim]");
}

// A build holds one decoder engine: decoder_scatter (TensorRT >= 10.15, TensorRT-RTX) or decoder.
void check_build_decoder(const Manifest& m, const EngineBuild& b) {
  const std::string path = "builds." + b.target + ".engines";
  if (!b.engines.count("decoder_scatter")) return;
  if (b.engines.count("decoder"))
    throw FieldError(path + " holds both decoder and decoder_scatter; a build holds one of them");
  if (!m.kv_cache.count("decoder_scatter") || !m.graph("decoder_scatter").ok())
    throw FieldError(path + ".decoder_scatter has no kv_cache.decoder_scatter record with its tensors");
}

// Entries that must agree with each other; a mismatch means a hand-edited or foreign manifest.
void check_consistency(const Manifest& m) {
  const Dims& d = m.dims;
  const LayoutSpec& l = m.layout;
  if (d.hidden <= 0 || d.grid_h <= 0 || d.grid_w <= 0 || d.spatial_merge <= 0 || d.num_layers <= 0 ||
      d.kv_heads <= 0 || d.head_dim <= 0 || d.vocab <= 0 || d.window_audio_tokens <= 0)
    throw FieldError("dims holds a size <= 0");
  if (d.grid_h % d.spatial_merge || d.grid_w % d.spatial_merge)
    throw FieldError("dims.grid_h/grid_w are not multiples of dims.spatial_merge");
  if (l.fps <= 0 || l.seconds_per_chunk <= 0 || l.temporal_patch_size <= 0)
    throw FieldError("layout holds a non-positive fps, seconds_per_chunk or temporal_patch_size");
  const double per_grid = l.temporal_patch_size / l.fps * l.position_id_per_seconds;
  if (per_grid != std::floor(per_grid) || l.time_ids_per_grid() * l.grids_per_chunk() != l.time_ids_per_chunk())
    throw FieldError("layout timing: grid steps must tile a chunk (use fps 2 with temporal_patch_size 2)");
  if (l.grids_per_chunk() != d.grids_per_chunk || l.spatial_merge_size != d.spatial_merge ||
      l.time_ids_per_chunk() != d.window_audio_tokens || l.n_mels != d.n_mels || l.audio_window_frames != d.window_frames)
    throw FieldError("layout and dims disagree (grids per chunk, merge size, audio tokens or mel frames)");
  if (m.height != d.grid_h * l.patch_size || m.width != d.grid_w * l.patch_size)
    throw FieldError("resolution does not match dims.grid_h/grid_w * layout.patch_size");
  if (m.max_context <= 0) throw FieldError("max_context must be > 0");
  for (const char* key : {"vision_encoder", "audio_encoder", "decoder"})
    if (!m.graphs.count(key)) throw FieldError(std::string("graphs.") + key + " is missing");
  const GraphInfo& dec = m.graphs.at("decoder");
  if (dec.inputs.size() != 3 + 2 * static_cast<size_t>(d.num_layers) ||
      dec.outputs.size() != 1 + 2 * static_cast<size_t>(d.num_layers))
    throw FieldError("graphs.decoder does not have 3 + 2*num_layers inputs and 1 + 2*num_layers outputs");
  // the audio graph and the compressors take a clip's short last chunk through valid-length inputs since
  // issue 25 (audio: + valid_frames; compressor: + valid_grids, valid_audio_tokens -> + kept_count); older
  // exports have neither, and an export has both or none
  const bool valid_inputs = m.graphs.at("audio_encoder").inputs.size() == 2;
  const GraphInfo& vision = m.graphs.at("vision_encoder");
  if (vision.inputs.size() != 1 || vision.outputs.size() != 1)
    throw FieldError("graphs.vision_encoder is not one input, one output");
  const GraphInfo& audio = m.graphs.at("audio_encoder");
  if (audio.inputs.size() != (valid_inputs ? 2u : 1u) || audio.outputs.size() != 1)
    throw FieldError("graphs.audio_encoder is not one input (+ valid_frames), one output");
  if (m.ratios.empty()) throw FieldError("ratios is empty");
  for (const RatioPlan& p : m.ratios) {
    auto it = m.graphs.find(p.graph);
    if (it == m.graphs.end()) throw FieldError("ratios names graph " + p.graph + ", which graphs does not list");
    const GraphInfo& g = it->second;
    const size_t n_in = valid_inputs ? 5 : 3, n_out = valid_inputs ? 4 : 3;
    if (g.inputs.size() != n_in || g.outputs.size() != n_out || g.outputs[0].shape.size() != 3)
      throw FieldError("graphs." + p.graph + " is not the compressor's " + std::to_string(n_in) + " inputs, " +
                       std::to_string(n_out) + " outputs (as its audio_encoder)");
    if (g.outputs[0].shape[1] != p.kept_total || p.kept_video + p.kept_audio != p.kept_total)
      throw FieldError("graphs." + p.graph + " keeps " + std::to_string(g.outputs[0].shape[1]) +
                       " tokens but its ratio plan says " + std::to_string(p.kept_total));
    if (p.kept_total <= 0 || p.kept_total > d.chunk_tokens())
      throw FieldError("ratio plan of " + p.graph + " keeps an impossible number of tokens");
  }
  if (!m.kv_cache.empty()) {   // the TensorRT backend runs graphs.decoder as past in, present out
    auto it = m.kv_cache.find("decoder");
    if (it == m.kv_cache.end() || it->second.graph != "decoder" || it->second.kind != "past_present" ||
        std::find(it->second.runtimes.begin(), it->second.runtimes.end(), "tensorrt") == it->second.runtimes.end())
      throw FieldError("kv_cache.decoder is not the past_present form for tensorrt that this library runs");
  }
  check_scatter_form(m);
  for (const auto& [target, build] : m.builds) check_build_decoder(m, build);
  if (m.embeddings_shape.size() != 2 || m.embeddings_shape[0] != d.vocab || m.embeddings_shape[1] != d.hidden)
    throw FieldError("text_embeddings.shape is not [dims.vocab, dims.hidden]");
}

bool safe_relative(const std::string& name) {
  fs::path p(name);
  if (name.empty() || p.is_absolute() || name.find('\\') != std::string::npos || name.find(':') != std::string::npos)
    return false;
  for (const fs::path& part : p)
    if (part == "..") return false;
  return true;
}

// Graph keys and build targets form file names (engines/<target>/<graph>.engine): letters, digits, _ . -
bool plain_name(const std::string& name) {
  if (name.empty() || name.size() > 128 || name == "." || name == ".." || name[0] == '.' || name[0] == '-') return false;
  for (char ch : name)
    if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '.' || ch == '-')) return false;
  return true;
}

// (key, path) of the files a runtime opens: graphs, in-place decoder forms, embeddings, tokenizer files.
std::vector<std::pair<std::string, std::string>> opened_files(const Manifest& m) {
  std::vector<std::pair<std::string, std::string>> found;
  for (const auto& [key, g] : m.graphs) found.emplace_back("graphs." + key + ".file", g.file);
  for (const auto& [key, f] : m.kv_cache) {
    if (!f.file.empty()) found.emplace_back("kv_cache." + key + ".file", f.file);
    if (!f.entry.key.empty()) found.emplace_back("kv_cache." + key + ".entry.file", f.entry.file);
  }
  found.emplace_back("text_embeddings.file", m.embeddings_file);
  for (const std::string& f : m.tokenizer_files) found.emplace_back("tokenizer.files", m.tokenizer_folder + "/" + f);
  return found;
}

// Every path the manifest names, for the containment checks.
std::vector<std::pair<std::string, std::string>> all_paths(const Manifest& m) {
  std::vector<std::pair<std::string, std::string>> found = opened_files(m);
  found.emplace_back("tokenizer.folder", m.tokenizer_folder);
  for (const auto& [name, entry] : m.files) found.emplace_back("files." + name, name);
  for (const auto& [target, b] : m.builds)
    for (const auto& [graph, e] : b.engines) found.emplace_back("builds." + target + ".engines." + graph + ".file", e.file);
  return found;
}

// Paths relative and without `..`, graph keys and build targets plain names (no folder needed).
void check_paths(const Manifest& m) {
  for (const auto& [key, g] : m.graphs)
    if (!plain_name(key)) throw FieldError("graphs names '" + key + "', not a plain name (it could form a path outside the export folder)");
  for (const auto& [target, b] : m.builds) {
    if (!plain_name(target)) throw FieldError("builds names '" + target + "', not a plain name (it could form a path outside the export folder)");
    for (const auto& [graph, e] : b.engines)
      if (!plain_name(graph)) throw FieldError("builds." + target + ".engines names '" + graph + "', not a plain name");
  }
  for (const auto& [key, path] : all_paths(m))
    if (!safe_relative(path)) throw FieldError(key + " is '" + path + "', a path outside the export folder");
}

Manifest parse_manifest_fields(const json& j) {
  Manifest m;
  m.schema_version = static_cast<int>(get_int(j, "schema_version", ""));
  m.dtype = get_string(j, "dtype", "");
  if (m.dtype != "fp32" && m.dtype != "fp16") throw FieldError("dtype is '" + m.dtype + "', expected fp32 or fp16");
  std::vector<int64_t> res = detail::get_int_list(j, "resolution", "");
  if (res.size() != 2) throw FieldError("resolution is not [height, width]");
  m.height = static_cast<int>(res[0]);
  m.width = static_cast<int>(res[1]);
  m.max_context = get_int(j, "max_context", "");
  parse_dims(detail::field(j, "dims", ""), m.dims);
  parse_layout(detail::field(j, "layout", ""), m.layout);
  if (auto rope = j.find("rope"); rope != j.end() && !rope->is_null()) {   // Python: rope.get(...) or the default
    if (!rope->is_object()) throw FieldError("rope is not an object");
    if (auto t = rope->find("rope_theta"); t != rope->end() && !t->is_null()) m.rope.theta = get_number(*rope, "rope_theta", "rope");
    if (auto p = rope->find("max_position_embeddings"); p != rope->end() && !p->is_null())
      m.rope.max_position_embeddings = get_int(*rope, "max_position_embeddings", "rope");
    if (!(m.rope.theta > 0) || m.rope.max_position_embeddings <= 0)
      throw FieldError("rope.rope_theta and rope.max_position_embeddings must be > 0");
  }
  size_t i = 0;
  for (const json& r : get_array(j, "ratios", "")) {
    const std::string path = "ratios[" + std::to_string(i++) + "]";
    RatioPlan p;
    p.graph = get_string(r, "graph", path);
    p.ratio = get_number(r, "ratio", path);
    p.rho_video = get_number(r, "rho_video", path);
    p.rho_audio = get_number(r, "rho_audio", path);
    p.achieved = get_number(r, "achieved", path);
    const json& kept = detail::field(r, "kept_per_chunk", path);
    p.kept_video = static_cast<int>(get_int(kept, "video", path + ".kept_per_chunk"));
    p.kept_audio = static_cast<int>(get_int(kept, "audio", path + ".kept_per_chunk"));
    p.kept_total = static_cast<int>(get_int(kept, "total", path + ".kept_per_chunk"));
    m.ratios.push_back(p);
  }
  const json& graphs = detail::field(j, "graphs", "");
  if (!graphs.is_object()) throw FieldError("graphs is not an object");
  for (auto it = graphs.begin(); it != graphs.end(); ++it) m.graphs[it.key()] = parse_graph(it.key(), it.value());
  if (auto kv = j.find("kv_cache"); kv != j.end() && !kv->is_null()) {
    if (!kv->is_object()) throw FieldError("kv_cache is not an object");
    if (!kv->contains("decoder")) throw FieldError("kv_cache does not declare the decoder (past_present) form");
    for (auto it = kv->begin(); it != kv->end(); ++it) {
      const std::string path = "kv_cache." + it.key();
      KvCacheForm f;
      f.graph = get_string(it.value(), "graph", path);
      f.kind = get_string(it.value(), "kind", path);
      for (const json& r : get_array(it.value(), "runtimes", path)) f.runtimes.push_back(r.get<std::string>());
      for (const json& a : get_array(it.value(), "cache_axes", path)) f.cache_axes.push_back(a.get<std::string>());
      if (it.value().contains("file")) f.file = get_string(it.value(), "file", path);
      if (it.value().contains("write_index")) f.write_index = get_string(it.value(), "write_index", path);
      if (auto e = it.value().find("entry"); e != it.value().end() && !e->is_null()) f.entry = parse_graph(f.graph, *e);
      m.kv_cache[it.key()] = f;
    }
  }
  const json& emb = detail::field(j, "text_embeddings", "");
  m.embeddings_file = get_string(emb, "file", "text_embeddings");
  m.embeddings_tensor = get_string(emb, "tensor", "text_embeddings");
  m.embeddings_dtype = get_string(emb, "dtype", "text_embeddings");
  m.embeddings_shape = detail::get_int_list(emb, "shape", "text_embeddings");
  const json& tok = detail::field(j, "tokenizer", "");
  m.tokenizer_folder = get_string(tok, "folder", "tokenizer");
  for (const json& f : get_array(tok, "files", "tokenizer")) m.tokenizer_files.push_back(f.get<std::string>());
  m.stop_token_ids = detail::get_int_list(j, "stop_token_ids", "");
  const json& files = detail::field(j, "files", "");
  if (!files.is_object()) throw FieldError("files is not an object");
  for (auto it = files.begin(); it != files.end(); ++it) {
    FileEntry e;
    e.sha256 = get_string(it.value(), "sha256", "files." + it.key());
    e.bytes = get_int(it.value(), "bytes", "files." + it.key());
    m.files[it.key()] = e;
  }
  if (auto builds = j.find("builds"); builds != j.end() && !builds->is_null()) {
    if (!builds->is_object()) throw FieldError("builds is not an object");
    for (auto it = builds->begin(); it != builds->end(); ++it) m.builds[it.key()] = parse_build(it.key(), it.value());
  }
  check_consistency(m);
  check_paths(m);
  return m;
}

}  // namespace

std::string sha256_hex(const void* data, size_t n) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data, n, digest, &len, EVP_sha256(), nullptr);
  return to_hex(digest, len);
}

Result<std::string> sha256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound(path + " is missing or unreadable");
  std::unique_ptr<EVP_MD_CTX, MdCtxDeleter> ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) return Internal("OpenSSL SHA-256 init failed");
  std::vector<char> block(1 << 20);
  while (in) {
    in.read(block.data(), static_cast<std::streamsize>(block.size()));
    if (in.gcount() > 0) EVP_DigestUpdate(ctx.get(), block.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) return DataLoss("error while reading " + path);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &len);
  return to_hex(digest, len);
}

Result<Manifest> parse_manifest(const std::string& json_text) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return DataLoss("manifest.json is corrupt (not a JSON object); export again");
  auto version = j.find("schema_version");
  if (version == j.end() || !version->is_number_integer() || version->get<int64_t>() != kSchemaVersion) {
    std::string got = version == j.end() ? "none" : version->dump();
    return Unsupported("manifest.json has schema version " + got + ", this omnisift C++ library reads " +
                       std::to_string(kSchemaVersion) + "; export again with a matching omnisift-edge");
  }
  try {
    return parse_manifest_fields(j);
  } catch (const FieldError& e) {
    return DataLoss(std::string("manifest.json: ") + e.what() + "; export again (was it edited by hand?)");
  } catch (const json::exception& e) {
    return DataLoss(std::string("manifest.json: unexpected value (") + e.what() + "); export again");
  }
}

Status verify_files(const std::string& folder, const Manifest& manifest) {
  for (const auto& [name, entry] : manifest.files) {
    if (!safe_relative(name)) return DataLoss("manifest.json lists a file outside the export folder: " + name);
    const std::string path = (fs::path(folder) / name).string();
    std::error_code ec;
    if (!fs::is_regular_file(path, ec))
      return NotFound(path + " is missing from the export; copy the whole folder or export again");
    const auto size = fs::file_size(path, ec);
    if (ec || static_cast<int64_t>(size) != entry.bytes)
      return DataLoss(path + " has " + std::to_string(size) + " bytes, manifest.json says " +
                      std::to_string(entry.bytes) + " (modified or partly copied); copy it again or export again");
    Result<std::string> digest = sha256_file(path);
    if (!digest.ok()) return digest.status();
    if (*digest != entry.sha256)
      return DataLoss(path + " does not match its SHA-256 in manifest.json (modified or partly copied); "
                      "copy it again or export again");
  }
  return Status::Ok();
}

Status check_contained(const std::string& folder, const Manifest& manifest) {
  std::error_code ec;
  const fs::path root = fs::weakly_canonical(fs::absolute(folder, ec), ec);
  if (ec) return NotFound("cannot resolve " + folder);
  for (const auto& [key, path] : all_paths(manifest)) {
    if (!safe_relative(path)) return DataLoss("manifest.json: " + key + " is '" + path + "', a path outside the export folder");
    const fs::path resolved = fs::weakly_canonical(root / path, ec);
    if (ec) return DataLoss("manifest.json: " + key + " (" + path + ") cannot be resolved: " + ec.message());
    const auto rel = resolved.lexically_relative(root);
    if (rel.empty() || *rel.begin() == "..")
      return DataLoss("manifest.json: " + key + " (" + path + ") resolves to " + resolved.string() +
                      ", outside the export folder (a symlink?); copy the export without links that point out of it");
  }
  for (const auto& [key, path] : opened_files(manifest))
    if (!manifest.files.count(path))
      return DataLoss("manifest.json: " + key + " names " + path + ", which files (the checksums) does not cover; export again");
  return Status::Ok();
}

Result<Manifest> read_manifest(const std::string& folder, bool verify) {
  const std::string path = (fs::path(folder) / "manifest.json").string();
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    return NotFound(folder + " has no manifest.json; it is not a complete export (run omnisift-edge export)");
  OMNISIFT_ASSIGN_OR_RETURN(std::string text, read_file(path));
  OMNISIFT_ASSIGN_OR_RETURN(Manifest manifest, parse_manifest(text));
  OMNISIFT_RETURN_IF_ERROR(check_contained(folder, manifest));
  if (verify) OMNISIFT_RETURN_IF_ERROR(verify_files(folder, manifest));
  return manifest;
}

}  // namespace omnisift
