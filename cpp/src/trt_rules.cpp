#include "trt_rules.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "omnisift/embeddings.h"   // half_to_float

namespace omnisift::trt {

namespace {

std::vector<std::string> split_list(const std::string& text) {   // "8.6, 8.9,12.0" -> {"8.6", "8.9", "12.0"}
  std::vector<std::string> out;
  size_t begin = 0;
  while (begin <= text.size()) {
    size_t end = text.find(',', begin);
    if (end == std::string::npos) end = text.size();
    std::string item = text.substr(begin, end - begin);
    item.erase(0, item.find_first_not_of(' '));
    item.erase(item.find_last_not_of(' ') + 1);
    if (!item.empty()) out.push_back(item);
    begin = end + 1;
  }
  return out;
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& s : items) out += (out.empty() ? "" : ", ") + s;
  return out;
}

bool is_rtx(const EngineBuild& b) { return b.flavour == "tensorrt_rtx"; }

}  // namespace

Status check_compute_capability(const EngineBuild& b, const std::string& gpu_name, const std::string& gpu_cc) {
  if (is_rtx(b)) {
    const std::vector<std::string> ccs = split_list(b.compute_capability);
    if (std::find(ccs.begin(), ccs.end(), gpu_cc) != ccs.end()) return Status::Ok();
    return Unsupported("the " + b.target + " engines were built with TensorRT-RTX " + b.tensorrt +
                       " for compute capability " + join(ccs) + "; this GPU is " + gpu_name + " (" + gpu_cc +
                       "): rebuild them with omnisift-edge build EXPORT_DIR --target " + b.target +
                       " --compute-capability " + gpu_cc + " (TensorRT-RTX runs on RTX-class GPUs, not Hopper or Jetson)");
  }
  if (b.compute_capability == gpu_cc) return Status::Ok();
  return Unsupported("the " + b.target + " engines were built with TensorRT " + b.tensorrt + " for compute capability " +
                     b.compute_capability + "; this GPU is " + gpu_name + " (" + gpu_cc +
                     "): rebuild them on this device with omnisift-edge build EXPORT_DIR --target auto");
}

Status check_library(const EngineBuild& b, bool rtx_library, int major, int minor) {
  const std::string have = std::to_string(major) + "." + std::to_string(minor);
  const std::string lib = std::string(rtx_library ? "TensorRT-RTX " : "TensorRT ") + have;
  if (is_rtx(b) && !rtx_library)
    return Unsupported("the " + b.target + " engines are TensorRT-RTX engines and this omnisift library runs " + lib +
                       "; configure it with -DTENSORRT_RTX_ROOT=/path/to/TensorRT-RTX, or build engines for " + lib +
                       " (omnisift-edge build EXPORT_DIR --target auto)");
  if (!is_rtx(b) && rtx_library)
    return Unsupported("the " + b.target + " engines are TensorRT engines and this omnisift library runs " + lib +
                       "; build TensorRT-RTX engines (omnisift-edge build EXPORT_DIR --target rtx), or configure the "
                       "library with -DTENSORRT_ROOT=/path/to/TensorRT");
  if (b.tensorrt != have && b.tensorrt.rfind(have + ".", 0) != 0)
    return Unsupported("the " + b.target + " engines were built with " + (is_rtx(b) ? "TensorRT-RTX " : "TensorRT ") +
                       b.tensorrt + " and this library runs " + lib + "; build the engines again with " + lib);
  return Status::Ok();
}

Result<ScatterProfiles> ScatterProfiles::create(const EngineEntry& e) {
  if (e.profiles.empty())
    return DataLoss("the decoder_scatter engine's build record lists no optimization profiles; build the engines again");
  bool decode = false;
  for (const EngineProfile& p : e.profiles) {
    if (!p.axes.count("sequence_length") || !p.axes.count("logits_length"))
      return DataLoss("the decoder_scatter engine's profile \"" + p.name + "\" has no sequence_length / logits_length "
                      "ranges; build the engines again with this omnisift-edge");
    const auto& seq = p.axes.at("sequence_length");
    const auto& lg = p.axes.at("logits_length");
    decode = decode || (seq[0] <= 1 && 1 <= seq[2] && lg[0] <= 1 && 1 <= lg[2]);
  }
  if (!decode)
    return DataLoss("no decoder_scatter profile takes one token with its logits (a decode step); build the engines again");
  ScatterProfiles s;
  s.profiles_ = e.profiles;
  return s;
}

int64_t ScatterProfiles::max_tokens() const {
  int64_t m = 1;
  for (const EngineProfile& p : profiles_) m = std::max(m, p.axes.at("sequence_length")[2]);
  return m;
}

Result<std::vector<ScatterPiece>> ScatterProfiles::plan(int64_t n, bool want_logits) const {
  std::vector<ScatterPiece> pieces;
  while (n > 0) {
    int best = -1;
    ScatterPiece pick{0, 0, 0};
    bool pick_decode = false;
    for (size_t i = 0; i < profiles_.size(); ++i) {
      const auto& seq = profiles_[i].axes.at("sequence_length");
      const auto& lg = profiles_[i].axes.at("logits_length");
      const int64_t take = std::min(n, seq[2]);
      if (take < 1 || take < seq[0]) continue;
      const bool need = want_logits && take == n;   // the step's last row is in this piece
      const bool one_row = lg[0] <= 1 && 1 <= lg[2];
      int64_t rows;
      if (need) {
        if (!one_row) continue;
        rows = 1;
      } else if (lg[0] == 0) {
        rows = 0;
      } else if (one_row) {
        rows = 1;   // the profile always computes a row: computed and ignored
      } else {
        continue;
      }
      const bool decode = n == 1 && seq[2] == 1;
      const bool better = best < 0 || take > pick.tokens ||
                          (take == pick.tokens && decode && !pick_decode) ||
                          (take == pick.tokens && decode == pick_decode && rows < pick.logits_rows);
      if (better) {
        best = static_cast<int>(i);
        pick = ScatterPiece{best, take, rows};
        pick_decode = decode;
      }
    }
    if (best < 0)
      return ContextFull("no decoder_scatter profile of these engines takes " + std::to_string(n) +
                         " more tokens; build the engines again");
    pieces.push_back(pick);
    n -= pick.tokens;
  }
  return pieces;
}

Status check_drop(int64_t start, int64_t stop, int64_t length) {
  if (0 <= start && start <= stop && stop <= length) return Status::Ok();
  return InvalidArgument("cannot drop cached rows [" + std::to_string(start) + ", " + std::to_string(stop) + ") of " +
                         std::to_string(length));
}

Status check_rotate(int64_t head_dim, const std::vector<double>& inv_freq) {
  if (head_dim % 2 == 0 && static_cast<int64_t>(inv_freq.size()) * 2 == head_dim) return Status::Ok();
  return InvalidArgument("rotate_kv needs head_dim / 2 = " + std::to_string(head_dim / 2) + " inverse frequencies, got " +
                         std::to_string(inv_freq.size()));
}

std::vector<unsigned char> drop_rows(const std::vector<unsigned char>& packed, int64_t heads, int64_t length,
                                     size_t row_bytes, int64_t start, int64_t stop) {
  const int64_t kept = length - (stop - start);
  std::vector<unsigned char> out(static_cast<size_t>(heads * kept) * row_bytes);
  for (int64_t h = 0; h < heads; ++h) {
    const unsigned char* src = packed.data() + static_cast<size_t>(h * length) * row_bytes;
    unsigned char* dst = out.data() + static_cast<size_t>(h * kept) * row_bytes;
    std::memcpy(dst, src, static_cast<size_t>(start) * row_bytes);                                   // rows [0, start)
    std::memcpy(dst + static_cast<size_t>(start) * row_bytes, src + static_cast<size_t>(stop) * row_bytes,
                static_cast<size_t>(length - stop) * row_bytes);                                       // rows [stop, length)
  }
  return out;
}

namespace {

// The angle's cosine and sine per frequency: angle -delta * inv_freq[j], [head_dim / 2].
void angles(int64_t delta, const std::vector<double>& inv_freq, std::vector<double>& c, std::vector<double>& s) {
  c.resize(inv_freq.size());
  s.resize(inv_freq.size());
  for (size_t j = 0; j < inv_freq.size(); ++j) {
    const double angle = -static_cast<double>(delta) * inv_freq[j];
    c[j] = std::cos(angle);
    s[j] = std::sin(angle);
  }
}

template <typename T, typename Load, typename Store>
void rotate(T* keys, int64_t rows, int64_t head_dim, int64_t delta, const std::vector<double>& inv_freq, Load load,
            Store store) {
  std::vector<double> c, s;
  angles(delta, inv_freq, c, s);
  const int64_t half = head_dim / 2;
  for (int64_t r = 0; r < rows; ++r) {
    T* k = keys + r * head_dim;
    for (int64_t j = 0; j < half; ++j) {
      const double k1 = load(k[j]), k2 = load(k[j + half]);
      const double a = k1 * c[j], b = k2 * s[j], d = k2 * c[j], e = k1 * s[j];   // no fused multiply-add
      k[j] = store(a - b);
      k[j + half] = store(d + e);
    }
  }
}

}  // namespace

void rotate_rows_f32(float* keys, int64_t rows, int64_t head_dim, int64_t delta, const std::vector<double>& inv_freq) {
  rotate(keys, rows, head_dim, delta, inv_freq, [](float v) { return static_cast<double>(v); },
         [](double v) { return static_cast<float>(v); });
}

void rotate_rows_f16(uint16_t* keys, int64_t rows, int64_t head_dim, int64_t delta, const std::vector<double>& inv_freq) {
  rotate(keys, rows, head_dim, delta, inv_freq, [](uint16_t v) { return static_cast<double>(half_to_float(v)); },
         double_to_half);
}

uint16_t double_to_half(double value) {
  uint64_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  const uint16_t sign = static_cast<uint16_t>((bits >> 48) & 0x8000u);
  const int exp = static_cast<int>((bits >> 52) & 0x7ff);
  const uint64_t mant = bits & ((uint64_t{1} << 52) - 1);
  if (exp == 0x7ff) return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u : 0u));   // inf, nan
  if (exp == 0) return sign;                                        // double subnormals are far below half's
  const int e = exp - 1023;                                         // value = 1.mant * 2^e
  if (e > 15) return static_cast<uint16_t>(sign | 0x7c00u);        // >= 65536: inf
  const uint64_t sig = mant | (uint64_t{1} << 52);                  // 53 significant bits
  const int shift = e >= -14 ? 42 : 42 + (-14 - e);                 // bits dropped: 11 kept, fewer when subnormal
  if (shift >= 54) return sign;                                     // below half the smallest subnormal: 0
  uint64_t kept = sig >> shift;
  const uint64_t rem = sig & ((uint64_t{1} << shift) - 1), halfway = uint64_t{1} << (shift - 1);
  if (rem > halfway || (rem == halfway && (kept & 1))) ++kept;      // to nearest, ties to even
  if (e < -14) return static_cast<uint16_t>(sign | kept);           // subnormal (1024: rounded up to the smallest normal)
  int he = e + 15;
  if (kept == 2048) {                                               // rounded up to the next power of two
    kept = 1024;
    ++he;
  }
  if (he >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  return static_cast<uint16_t>(sign | (he << 10) | (kept - 1024));
}

}  // namespace omnisift::trt
