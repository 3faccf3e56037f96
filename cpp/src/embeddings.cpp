#include "omnisift/embeddings.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "json_util.h"

namespace omnisift {

struct TextEmbeddings::Mapping {
  void* addr = MAP_FAILED;
  size_t size = 0;
  ~Mapping() {
    if (addr != MAP_FAILED) munmap(addr, size);
  }
};

TextEmbeddings::TextEmbeddings(TextEmbeddings&&) noexcept = default;
TextEmbeddings& TextEmbeddings::operator=(TextEmbeddings&&) noexcept = default;
TextEmbeddings::~TextEmbeddings() = default;

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {   // subnormal: normalize
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) { mant <<= 1; --exp; }
      bits = sign | (exp << 23) | ((mant & 0x3FF) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000 | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t abs = x & 0x7FFFFFFF;
  if (abs >= 0x7F800000) return sign | 0x7C00 | (abs > 0x7F800000 ? 0x200 : 0);   // inf / nan
  if (abs >= 0x477FF000) return sign | 0x7C00;                                     // overflow -> inf
  if (abs < 0x38800000) {                                                          // subnormal or zero
    if (abs < 0x33000000) return sign;
    const uint32_t mant = (abs & 0x7FFFFF) | 0x800000;
    const int shift = 126 - static_cast<int>(abs >> 23);   // 14 + (113 - exp)
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) ++h;
    return sign | static_cast<uint16_t>(h);
  }
  uint32_t h = ((abs >> 13) - (112u << 10));
  const uint32_t rem = abs & 0x1FFF;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;
  return sign | static_cast<uint16_t>(h);
}

Result<TextEmbeddings> TextEmbeddings::open(const std::string& path, const std::string& tensor, int64_t vocab,
                                            int hidden) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return NotFound(path + " is missing or unreadable; copy the whole export folder");
  struct stat st {};
  if (fstat(fd, &st) != 0 || st.st_size < 8) {
    ::close(fd);
    return DataLoss(path + " is too short to be a safetensors file; export again");
  }
  auto map = std::make_unique<Mapping>();
  map->size = static_cast<size_t>(st.st_size);
  map->addr = mmap(nullptr, map->size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map->addr == MAP_FAILED) return DataLoss("cannot map " + path);
  const auto* bytes = static_cast<const unsigned char*>(map->addr);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > map->size - 8) return DataLoss(path + ": safetensors header runs past the end; export again");
  detail::json header = detail::json::parse(std::string(reinterpret_cast<const char*>(bytes) + 8, header_len), nullptr, false);
  if (header.is_discarded() || !header.is_object() || !header.contains(tensor))
    return DataLoss(path + " has no tensor '" + tensor + "'; export again");
  TextEmbeddings e;
  try {
    const detail::json& t = header[tensor];
    const std::string dtype = detail::get_string(t, "dtype", tensor);
    const std::vector<int64_t> shape = detail::get_int_list(t, "shape", tensor);
    const std::vector<int64_t> offsets = detail::get_int_list(t, "data_offsets", tensor);
    if (dtype != "F32" && dtype != "F16") return Unsupported(path + ": embeddings of dtype " + dtype + " (want F32 or F16)");
    if (shape.size() != 2 || shape[0] != vocab || shape[1] != hidden)
      return DataLoss(path + ": embeddings are not [" + std::to_string(vocab) + ", " + std::to_string(hidden) + "]");
    e.fp16_ = dtype == "F16";
    const uint64_t need = static_cast<uint64_t>(vocab) * static_cast<uint64_t>(hidden) * (e.fp16_ ? 2 : 4);
    if (offsets.size() != 2 || offsets[0] < 0 || static_cast<uint64_t>(offsets[1] - offsets[0]) != need ||
        8 + header_len + static_cast<uint64_t>(offsets[1]) > map->size)
      return DataLoss(path + ": embedding data is truncated or mislabelled; export again");
    e.data_ = bytes + 8 + header_len + offsets[0];
  } catch (const std::exception& ex) {
    return DataLoss(path + ": bad safetensors header (" + ex.what() + ")");
  }
  e.map_ = std::move(map);
  e.vocab_ = vocab;
  e.hidden_ = hidden;
  return e;
}

TextEmbeddings TextEmbeddings::from_table(std::vector<float> table, int64_t vocab, int hidden) {
  TextEmbeddings e;
  e.table_ = std::move(table);
  e.table_.resize(static_cast<size_t>(vocab) * hidden);
  e.vocab_ = vocab;
  e.hidden_ = hidden;
  return e;
}

Status TextEmbeddings::lookup(const std::vector<int64_t>& ids, std::vector<float>& out) const {
  const size_t h = static_cast<size_t>(hidden_);
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_)
      return InvalidArgument("token id " + std::to_string(id) + " is outside the embedding table [0, " +
                             std::to_string(vocab_) + ")");
    const size_t row = static_cast<size_t>(id) * h;
    if (!table_.empty()) {
      out.insert(out.end(), table_.begin() + static_cast<std::ptrdiff_t>(row), table_.begin() + static_cast<std::ptrdiff_t>(row + h));
    } else if (fp16_) {
      for (size_t k = 0; k < h; ++k) {
        uint16_t v;
        std::memcpy(&v, data_ + (row + k) * 2, 2);
        out.push_back(half_to_float(v));
      }
    } else {
      const size_t start = out.size();
      out.resize(start + h);
      std::memcpy(out.data() + start, data_ + row * 4, h * 4);
    }
  }
  return Status::Ok();
}

}  // namespace omnisift
