// read_manifest against the manifest the Python writer produces (golden/export_mini), JSON
// Patches of it that break one thing each, and damaged folders.
#include <filesystem>
#include <fstream>

#include "harness.h"
#include "omnisift/manifest.h"

using namespace omnisift;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// A fresh copy of golden/export_mini in a temporary folder.
fs::path copy_mini(const std::string& tag) {
  const fs::path dst = fs::temp_directory_path() / ("omnisift_manifest_test_" + tag);
  fs::remove_all(dst);
  fs::copy(harness::golden("export_mini"), dst, fs::copy_options::recursive);
  return dst;
}

void write(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

StatusCode code_of(const std::string& name) {
  for (StatusCode c : {StatusCode::kOk, StatusCode::kInvalidArgument, StatusCode::kNotFound, StatusCode::kDataLoss,
                       StatusCode::kUnsupported, StatusCode::kContextFull, StatusCode::kFailedPrecondition,
                       StatusCode::kBackend, StatusCode::kInternal})
    if (name == status_code_name(c)) return c;
  return StatusCode::kInternal;
}

}  // namespace

TEST(reads_the_python_manifest) {
  auto m = read_manifest(harness::golden("export_mini"));
  CHECK_RESULT(m);
  if (!m.ok()) return;
  CHECK_EQ(m->schema_version, 1);
  CHECK_EQ(m->height, 112);
  CHECK_EQ(m->width, 84);
  CHECK_EQ(m->dims.tokens_per_frame(), 12);
  CHECK_EQ(m->dims.chunk_tokens(), 74);
  CHECK_EQ(m->layout.tokens.video, 151656);
  CHECK_EQ(m->layout.grids_per_chunk(), 2);
  CHECK_EQ(m->layout.time_ids_per_chunk(), 50);
  CHECK_EQ(m->max_context, 1024);
  auto r = m->ratio_plan(0.25);
  CHECK_RESULT(r);
  CHECK_EQ(r->kept_total, 19);
  CHECK_EQ(r->graph, std::string("compressor_r0.25"));
  CHECK_CODE(m->ratio_plan(0.5).status(), StatusCode::kNotFound);
  // names come from the manifest, in tensors.py's order
  auto dec = m->graph("decoder");
  CHECK_RESULT(dec);
  CHECK_EQ((*dec)->inputs[0].name, std::string("inputs_embeds"));
  CHECK_EQ((*dec)->inputs.size(), 7u);
  CHECK((*dec)->inputs[0].is_dynamic(1));
  CHECK_EQ((*dec)->outputs[0].shape[2], 152064);
  CHECK_EQ(m->stop_token_ids.size(), 2u);
  // the decoder form this library runs, declared in kv_cache
  CHECK(m->kv_cache.count("decoder") == 1);
  CHECK_EQ(m->kv_cache.at("decoder").kind, std::string("past_present"));
  CHECK_EQ(m->kv_cache.at("decoder").cache_axes.size(), 4u);
  // the engines stage's build record
  CHECK_EQ(m->builds.size(), 2u);
  const EngineBuild& b = m->builds.at("golden-sm00");
  CHECK_EQ(b.max_context, 1024);
  CHECK(b.engines.count("decoder") == 1);
  CHECK_EQ(b.engines.at("decoder").profiles.size(), 2u);
  CHECK_EQ(b.engines.at("decoder").profiles[1].name, std::string("decode"));
  CHECK_EQ(b.engines.at("vision_encoder").profiles[0].name, std::string("static"));
  // a TensorRT-RTX build as the engines stage writes it: decoder_scatter, one in_place profile
  CHECK(m->kv_cache.count("decoder_scatter") == 1);
  CHECK_EQ(m->kv_cache.at("decoder_scatter").kind, std::string("in_place_scatter"));
  CHECK_EQ(m->kv_cache.at("decoder_scatter").write_index, std::string("write_index"));
  const EngineBuild& rtx = m->builds.at("golden-rtx");
  CHECK_EQ(rtx.flavour, std::string("tensorrt_rtx"));
  CHECK(rtx.engines.count("decoder") == 0 && rtx.engines.count("decoder_scatter") == 1);
  CHECK_EQ(rtx.engines.at("decoder_scatter").profiles.size(), 1u);
  CHECK_EQ(rtx.engines.at("decoder_scatter").profiles[0].name, std::string("in_place"));
  auto scatter = m->graph("decoder_scatter");
  CHECK_RESULT(scatter);
  if (scatter.ok()) CHECK_EQ((*scatter)->inputs[2].name, std::string("write_index"));
}

// JSON Patches (RFC 6902) of the Python-written manifest -> the status read_manifest must give.
const char* const kManifestCases = R"([
  {"name": "as_written", "patch": [], "expect": "OK"},
  {"name": "schema_2", "patch": [{"op": "replace", "path": "/schema_version", "value": 2}], "expect": "UNSUPPORTED"},
  {"name": "no_schema", "patch": [{"op": "remove", "path": "/schema_version"}], "expect": "UNSUPPORTED"},
  {"name": "schema_text", "patch": [{"op": "replace", "path": "/schema_version", "value": "1"}], "expect": "UNSUPPORTED"},
  {"name": "missing_dims_hidden", "patch": [{"op": "remove", "path": "/dims/hidden"}], "expect": "DATA_LOSS"},
  {"name": "hidden_is_text", "patch": [{"op": "replace", "path": "/dims/hidden", "value": "8"}], "expect": "DATA_LOSS"},
  {"name": "k_disagrees", "patch": [{"op": "replace", "path": "/ratios/1/kept_per_chunk/total", "value": 20}], "expect": "DATA_LOSS"},
  {"name": "unknown_graph", "patch": [{"op": "replace", "path": "/ratios/0/graph", "value": "compressor_r9"}], "expect": "DATA_LOSS"},
  {"name": "no_decoder", "patch": [{"op": "remove", "path": "/graphs/decoder"}], "expect": "DATA_LOSS"},
  {"name": "odd_grid", "patch": [{"op": "replace", "path": "/dims/grid_w", "value": 7}], "expect": "DATA_LOSS"},
  {"name": "resolution_off", "patch": [{"op": "replace", "path": "/resolution/0", "value": 140}], "expect": "DATA_LOSS"},
  {"name": "bad_build", "patch": [{"op": "remove", "path": "/builds/golden-sm00/engines/decoder/profiles"}], "expect": "DATA_LOSS"},
  {"name": "file_outside", "patch": [{"op": "add", "path": "/files/..~1secret", "value": {"sha256": "00", "bytes": 1}}], "expect": "DATA_LOSS"},
  {"name": "wrong_checksum", "patch": [{"op": "replace", "path": "/files/decoder.graph/sha256", "value": "00"}], "expect": "DATA_LOSS"},
  {"name": "wrong_size", "patch": [{"op": "replace", "path": "/files/decoder.graph/bytes", "value": 1}], "expect": "DATA_LOSS"},
  {"name": "decoder_in_place", "patch": [{"op": "replace", "path": "/kv_cache/decoder/kind", "value": "shared_buffer"}], "expect": "DATA_LOSS"},
  {"name": "kv_cache_no_decoder", "patch": [{"op": "remove", "path": "/kv_cache/decoder"}], "expect": "DATA_LOSS"},
  {"name": "kv_cache_absent", "patch": [{"op": "remove", "path": "/kv_cache"}, {"op": "remove", "path": "/builds/golden-rtx"}], "expect": "OK"},
  {"name": "rtx_build_without_scatter_record", "patch": [{"op": "remove", "path": "/kv_cache/decoder_scatter"}], "expect": "DATA_LOSS"},
  {"name": "missing_file", "patch": [{"op": "add", "path": "/files/gone.graph", "value": {"sha256": "00", "bytes": 1}}], "expect": "NOT_FOUND"},
  {"name": "graph_absolute", "patch": [{"op": "replace", "path": "/graphs/decoder/file", "value": "/etc/passwd"}], "expect": "DATA_LOSS"},
  {"name": "graph_dotdot", "patch": [{"op": "replace", "path": "/graphs/decoder/file", "value": "../other/decoder.graph"}], "expect": "DATA_LOSS"},
  {"name": "graph_not_checksummed", "patch": [{"op": "replace", "path": "/graphs/decoder/file", "value": "tokenizer"}], "expect": "DATA_LOSS"},
  {"name": "graph_key_path", "patch": [{"op": "move", "from": "/graphs/audio_encoder", "path": "/graphs/..~1..~1x"}], "expect": "DATA_LOSS"},
  {"name": "build_target_path", "patch": [{"op": "move", "from": "/builds/golden-sm00", "path": "/builds/..~1t"}], "expect": "DATA_LOSS"},
  {"name": "engine_absolute", "patch": [{"op": "replace", "path": "/builds/golden-sm00/engines/decoder/file", "value": "/tmp/e.engine"}], "expect": "DATA_LOSS"},
  {"name": "tokenizer_outside", "patch": [{"op": "replace", "path": "/tokenizer/folder", "value": "/tmp"}], "expect": "DATA_LOSS"},
  {"name": "embeddings_outside", "patch": [{"op": "replace", "path": "/text_embeddings/file", "value": "../../embed.safetensors"}], "expect": "DATA_LOSS"},
  {"name": "scatter_file_outside", "patch": [{"op": "replace", "path": "/kv_cache/decoder_scatter/file", "value": "/x/decoder_scatter.graph"}], "expect": "DATA_LOSS"}
])";

TEST(bad_manifests) {
  const json original = harness::load_json(harness::golden("export_mini/manifest.json"));
  for (const json& c : json::parse(kManifestCases)) {
    const fs::path dir = copy_mini(c["name"].get<std::string>());
    write(dir / "manifest.json", original.patch(c["patch"]).dump(1));
    auto m = read_manifest(dir.string());
    const StatusCode want = code_of(c["expect"]);
    if (m.status().code() != want)
      harness::fail(__FILE__, __LINE__, c["name"].get<std::string>() + ": " + m.status().to_string() +
                                            ", want " + c["expect"].get<std::string>());
    fs::remove_all(dir);
  }
}

// The TensorRT in-place form as the contract declares it, written by hand on top of the golden
// manifest (2 layers, kv_heads 2, head_dim 4, max_context 1024): kv_cache.decoder_scatter with its
// tensors in `entry`, and the build's decoder engine replaced by a decoder_scatter engine.
const char* const kScatterPatch = R"([
  {"op": "add", "path": "/kv_cache/decoder_scatter", "value": {
    "graph": "decoder_scatter", "file": "decoder_scatter.onnx", "kind": "in_place_scatter",
    "runtimes": ["tensorrt>=10.15", "tensorrt_rtx"], "cache_axes": ["batch_size", "kv_heads", "cache_length", "head_dim"],
    "write_index": "write_index",
    "entry": {"file": "decoder_scatter.onnx", "opset": 24,
      "inputs": [
        {"name": "inputs_embeds", "dtype": "float32", "axes": ["batch_size", "sequence_length", "hidden"], "shape": ["batch_size", "sequence_length", 8]},
        {"name": "position_ids", "dtype": "int64", "axes": ["rope_rows", "batch_size", "sequence_length"], "shape": [3, "batch_size", "sequence_length"]},
        {"name": "write_index", "dtype": "int64", "axes": ["one"], "shape": [1]},
        {"name": "logits_index", "dtype": "int64", "axes": ["logits_length"], "shape": ["logits_length"]},
        {"name": "past_key_values.0.key", "dtype": "float32", "axes": ["batch_size", "kv_heads", "cache_length", "head_dim"], "shape": ["batch_size", 2, "cache_length", 4]},
        {"name": "past_key_values.0.value", "dtype": "float32", "axes": ["batch_size", "kv_heads", "cache_length", "head_dim"], "shape": ["batch_size", 2, "cache_length", 4]},
        {"name": "past_key_values.1.key", "dtype": "float32", "axes": ["batch_size", "kv_heads", "cache_length", "head_dim"], "shape": ["batch_size", 2, "cache_length", 4]},
        {"name": "past_key_values.1.value", "dtype": "float32", "axes": ["batch_size", "kv_heads", "cache_length", "head_dim"], "shape": ["batch_size", 2, "cache_length", 4]}],
      "outputs": [
        {"name": "logits", "dtype": "float32", "axes": ["batch_size", "logits_length", "vocab"], "shape": ["batch_size", "logits_length", 152064]},
        {"name": "present.0.key", "dtype": "float32", "axes": ["batch_size", "kv_heads", "cache_length", "head_dim"], "shape": ["batch_size", 2, "cache_length", 4]},
        {"name": "present.0.value", "dtype": "float32", "axes": ["batch_size", "kv_heads", "cache_length", "head_dim"], "shape": ["batch_size", 2, "cache_length", 4]},
        {"name": "present.1.key", "dtype": "float32", "axes": ["batch_size", "kv_heads", "cache_length", "head_dim"], "shape": ["batch_size", 2, "cache_length", 4]},
        {"name": "present.1.value", "dtype": "float32", "axes": ["batch_size", "kv_heads", "cache_length", "head_dim"], "shape": ["batch_size", 2, "cache_length", 4]}]}}},
  {"op": "remove", "path": "/builds/golden-sm00/engines/decoder"},
  {"op": "add", "path": "/builds/golden-sm00/flavour", "value": "tensorrt_rtx"},
  {"op": "replace", "path": "/builds/golden-sm00/compute_capability", "value": "8.6,8.9,12.0"},
  {"op": "add", "path": "/builds/golden-sm00/engines/decoder_scatter", "value": {
    "file": "engines/golden-sm00/decoder_scatter.engine", "precision": "fp32",
    "profiles": [{"name": "prefill", "axes": {"sequence_length": [1, 19, 74], "logits_length": [0, 1, 1]}},
                 {"name": "decode", "axes": {"sequence_length": [1, 1, 1], "logits_length": [0, 1, 1]}}]}}
])";

// Patches on top of kScatterPatch -> the status parse_manifest must give.
const char* const kScatterCases = R"([
  {"name": "scatter_as_declared", "patch": [], "expect": "OK"},
  {"name": "scatter_without_entry_unbuilt", "patch": [{"op": "remove", "path": "/kv_cache/decoder_scatter/entry"},
     {"op": "remove", "path": "/builds/golden-sm00/engines/decoder_scatter"}, {"op": "remove", "path": "/builds/golden-rtx"}], "expect": "OK"},
  {"name": "scatter_tensors_in_graphs", "patch": [{"op": "move", "from": "/kv_cache/decoder_scatter/entry", "path": "/graphs/decoder_scatter"}], "expect": "OK"},
  {"name": "scatter_engine_without_tensors", "patch": [{"op": "remove", "path": "/kv_cache/decoder_scatter/entry"}], "expect": "DATA_LOSS"},
  {"name": "scatter_engine_without_record", "patch": [{"op": "remove", "path": "/kv_cache/decoder_scatter"}], "expect": "DATA_LOSS"},
  {"name": "scatter_wrong_kind", "patch": [{"op": "replace", "path": "/kv_cache/decoder_scatter/kind", "value": "shared_buffer"}], "expect": "DATA_LOSS"},
  {"name": "scatter_for_onnxruntime", "patch": [{"op": "replace", "path": "/kv_cache/decoder_scatter/runtimes", "value": ["onnxruntime"]}], "expect": "DATA_LOSS"},
  {"name": "scatter_no_write_index", "patch": [{"op": "remove", "path": "/kv_cache/decoder_scatter/write_index"}], "expect": "DATA_LOSS"},
  {"name": "scatter_write_index_elsewhere", "patch": [{"op": "replace", "path": "/kv_cache/decoder_scatter/write_index", "value": "position_ids"}], "expect": "DATA_LOSS"},
  {"name": "scatter_missing_layer", "patch": [{"op": "remove", "path": "/kv_cache/decoder_scatter/entry/inputs/7"}], "expect": "DATA_LOSS"},
  {"name": "scatter_three_cache_axes", "patch": [{"op": "remove", "path": "/kv_cache/decoder_scatter/cache_axes/0"}], "expect": "DATA_LOSS"},
  {"name": "both_decoder_engines", "patch": [{"op": "copy", "from": "/builds/golden-sm00/engines/decoder_scatter", "path": "/builds/golden-sm00/engines/decoder"}], "expect": "DATA_LOSS"},
  {"name": "unknown_flavour", "patch": [{"op": "replace", "path": "/builds/golden-sm00/flavour", "value": "tensorrt_llm"}], "expect": "DATA_LOSS"},
  {"name": "still_needs_past_present", "patch": [{"op": "remove", "path": "/kv_cache/decoder"}], "expect": "DATA_LOSS"}
])";

TEST(reads_the_in_place_scatter_form) {
  const json original = harness::load_json(harness::golden("export_mini/manifest.json"));
  const json scatter = original.patch(json::parse(kScatterPatch));
  auto m = parse_manifest(scatter.dump());
  CHECK_RESULT(m);
  if (!m.ok()) return;
  const KvCacheForm& f = m->kv_cache.at("decoder_scatter");
  CHECK_EQ(f.kind, std::string("in_place_scatter"));
  CHECK_EQ(f.file, std::string("decoder_scatter.onnx"));
  CHECK_EQ(f.write_index, std::string("write_index"));
  CHECK_EQ(f.cache_axes[2], std::string("cache_length"));
  auto g = m->graph("decoder_scatter");   // found in the kv_cache record, not in graphs
  CHECK_RESULT(g);
  if (g.ok()) {
    CHECK_EQ((*g)->inputs.size(), 8u);
    CHECK_EQ((*g)->inputs[3].name, std::string("logits_index"));
    CHECK((*g)->inputs[3].is_dynamic(0));
    CHECK_EQ((*g)->outputs[1].name, std::string("present.0.key"));
  }
  CHECK(m->graphs.count("decoder_scatter") == 0);
  const EngineBuild& b = m->builds.at("golden-sm00");
  CHECK_EQ(b.flavour, std::string("tensorrt_rtx"));
  CHECK_EQ(b.compute_capability, std::string("8.6,8.9,12.0"));
  CHECK(b.engines.count("decoder_scatter") == 1 && b.engines.count("decoder") == 0);
  CHECK_EQ(b.engines.at("decoder_scatter").profiles[0].axes.at("logits_length")[0], 0);
  // the golden build record predates flavours: plain TensorRT
  auto plain = parse_manifest(original.dump());
  CHECK_RESULT(plain);
  if (plain.ok()) CHECK_EQ(plain->builds.at("golden-sm00").flavour, std::string("tensorrt"));
  for (const json& c : json::parse(kScatterCases)) {
    auto r = parse_manifest(scatter.patch(c["patch"]).dump());
    if (r.status().code() != code_of(c["expect"]))
      harness::fail(__FILE__, __LINE__, c["name"].get<std::string>() + ": " + r.status().to_string() +
                                            ", want " + c["expect"].get<std::string>());
  }
}

TEST(damaged_folders) {
  {  // no manifest at all
    const fs::path dir = copy_mini("no_manifest");
    fs::remove(dir / "manifest.json");
    CHECK_CODE(read_manifest(dir.string()).status(), StatusCode::kNotFound);
    fs::remove_all(dir);
  }
  {  // not JSON
    const fs::path dir = copy_mini("corrupt");
    write(dir / "manifest.json", "{\"schema_version\": 1, \"dims\": ");
    CHECK_CODE(read_manifest(dir.string()).status(), StatusCode::kDataLoss);
    write(dir / "manifest.json", "[1, 2]");
    CHECK_CODE(read_manifest(dir.string()).status(), StatusCode::kDataLoss);
    write(dir / "manifest.json", "");
    CHECK_CODE(read_manifest(dir.string()).status(), StatusCode::kDataLoss);
    fs::remove_all(dir);
  }
  {  // a listed file is missing
    const fs::path dir = copy_mini("missing_file");
    fs::remove(dir / "decoder.graph");
    CHECK_CODE(read_manifest(dir.string()).status(), StatusCode::kNotFound);
    CHECK_RESULT(read_manifest(dir.string(), /*verify=*/false));
    fs::remove_all(dir);
  }
  {  // same size, other bytes
    const fs::path dir = copy_mini("modified");
    std::string text = *read_file((dir / "decoder.graph").string());
    text[0] = text[0] == 'x' ? 'y' : 'x';
    write(dir / "decoder.graph", text);
    auto m = read_manifest(dir.string());
    CHECK_CODE(m.status(), StatusCode::kDataLoss);
    CHECK(m.status().message().find("decoder.graph") != std::string::npos);
    fs::remove_all(dir);
  }
  {  // a graph that is a symlink out of the export: same bytes, same checksum, refused all the same
    const fs::path dir = copy_mini("symlink_out");
    const fs::path outside = fs::temp_directory_path() / "omnisift_manifest_test_outside.graph";
    fs::remove(outside);
    fs::copy_file(dir / "decoder.graph", outside);
    fs::remove(dir / "decoder.graph");
    fs::create_symlink(outside, dir / "decoder.graph");
    auto m = read_manifest(dir.string(), /*verify=*/false);
    CHECK_CODE(m.status(), StatusCode::kDataLoss);
    CHECK(m.status().message().find("outside the export folder") != std::string::npos);
    fs::remove_all(dir);
    fs::remove(outside);
  }
  CHECK_CODE(read_manifest("/nonexistent/omnisift").status(), StatusCode::kNotFound);
}

TEST(sha256) {
  CHECK_EQ(sha256_hex("abc", 3), std::string("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
  CHECK_EQ(sha256_hex("", 0), std::string("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
  CHECK_CODE(sha256_file("/nonexistent/file").status(), StatusCode::kNotFound);
}

HARNESS_MAIN
