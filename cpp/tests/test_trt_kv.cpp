// The TensorRT decoder's device KV cache (src/trt_kv.cpp) on host CUDA (tests/cuda_host): both
// forms fed by a stand-in engine that reads and writes the layouts the engines use (in place:
// [kv, rows, hd] with rows = the static cache length, new rows at write_index; ping-pong: past
// [kv, P, hd] packed in one set, present [kv, P + n, hd] packed into the other), then drop and
// rotate checked against the rows the engine would read next.
#include <cstring>

#include "harness.h"
#include "trt_kv.h"
#include "trt_rules.h"

using namespace omnisift;
using trt::DeviceKv;

namespace {

constexpr int64_t kHeads = 2, kRows = 8, kHd = 4;

float value(size_t tensor, int64_t head, int64_t row, int64_t e) {   // distinct per tensor, head, row, element
  return static_cast<float>(1000 * tensor + 100 * head + 10 * row) + 0.25f * static_cast<float>(e);
}

int64_t pitch(const DeviceKv& kv) { return kv.form() == DeviceKv::Form::kInPlace ? kRows : kv.length(); }

// What the engine reads: the valid rows of tensor i, packed [kv, length, hd].
std::vector<float> valid(const DeviceKv& kv, size_t i) {
  std::vector<float> out;
  const float* base = static_cast<const float*>(kv.past(i));
  for (int64_t h = 0; h < kHeads; ++h)
    for (int64_t r = 0; r < kv.length(); ++r)
      for (int64_t e = 0; e < kHd; ++e) out.push_back(base[(h * pitch(kv) + r) * kHd + e]);
  return out;
}

// One enqueue of n new rows numbered from `first`: in place at write_index = length; or the
// past concatenated with the new rows, packed, into the present set.
void engine_step(DeviceKv& kv, size_t tensors, int64_t n, int64_t first) {
  for (size_t i = 0; i < tensors; ++i) {
    const std::vector<float> past = valid(kv, i);
    float* present = static_cast<float*>(kv.present(i));
    const int64_t len = kv.length();
    const int64_t out_pitch = kv.form() == DeviceKv::Form::kInPlace ? kRows : len + n;
    for (int64_t h = 0; h < kHeads; ++h) {
      if (kv.form() == DeviceKv::Form::kPingPong)
        std::memcpy(present + h * out_pitch * kHd, past.data() + h * len * kHd, static_cast<size_t>(len * kHd) * 4);
      for (int64_t r = 0; r < n; ++r)
        for (int64_t e = 0; e < kHd; ++e) present[(h * out_pitch + len + r) * kHd + e] = value(i, h, first + r, e);
    }
  }
  kv.commit(n);
}

// The expected rows: tensor i holds rows `ids` (by number) in every head.
std::vector<float> rows_of(size_t i, const std::vector<int64_t>& ids) {
  std::vector<float> out;
  for (int64_t h = 0; h < kHeads; ++h)
    for (int64_t id : ids)
      for (int64_t e = 0; e < kHd; ++e) out.push_back(value(i, h, id, e));
  return out;
}

void check_form(DeviceKv::Form form) {
  DeviceKv kv;
  CHECK_OK(kv.allocate(form, 4, kHeads, kRows, kHd, /*fp16=*/false, nullptr));   // 2 layers: key, value, key, value
  CHECK((kv.past(0) == kv.present(0)) == (form == DeviceKv::Form::kInPlace));
  engine_step(kv, 4, 3, 0);   // a prefill of 3
  engine_step(kv, 4, 2, 3);   // and 2 more
  CHECK_EQ(kv.length(), 5);
  for (size_t i = 0; i < 4; ++i) CHECK(valid(kv, i) == rows_of(i, {0, 1, 2, 3, 4}));

  const int before = host_cuda_copies();
  CHECK_CODE(kv.drop(2, 6), StatusCode::kInvalidArgument);   // past the cached rows: nothing changes
  CHECK_EQ(kv.length(), 5);
  CHECK_EQ(host_cuda_copies(), before);
  CHECK_OK(kv.drop(1, 3));                                   // rows 1, 2 out; 3, 4 move down per head
  CHECK_EQ(kv.length(), 3);
  for (size_t i = 0; i < 4; ++i) CHECK(valid(kv, i) == rows_of(i, {0, 3, 4}));
  engine_step(kv, 4, 1, 5);                                  // the next step appends after the kept rows
  for (size_t i = 0; i < 4; ++i) CHECK(valid(kv, i) == rows_of(i, {0, 3, 4, 5}));

  const std::vector<double> inv_freq = {1.0, 0.01};
  CHECK_CODE(kv.rotate(3, {1.0}), StatusCode::kInvalidArgument);
  CHECK_OK(kv.rotate(7, inv_freq));
  for (size_t i = 0; i < 4; ++i) {
    std::vector<float> want = rows_of(i, {0, 3, 4, 5});
    if (i % 2 == 0) trt::rotate_rows_f32(want.data(), kHeads * 4, kHd, 7, inv_freq);   // keys turn, values stay
    CHECK(valid(kv, i) == want);
  }
  CHECK_OK(kv.drop(0, 4));
  CHECK_EQ(kv.length(), 0);
  kv.reset();
  engine_step(kv, 4, 2, 9);
  for (size_t i = 0; i < 4; ++i) CHECK(valid(kv, i) == rows_of(i, {9, 10}));
}

}  // namespace

TEST(in_place_cache) { check_form(DeviceKv::Form::kInPlace); }

TEST(ping_pong_cache) { check_form(DeviceKv::Form::kPingPong); }

TEST(fp16_keys_rotate_as_python) {
  DeviceKv kv;
  CHECK_OK(kv.allocate(DeviceKv::Form::kInPlace, 2, 1, 4, 4, /*fp16=*/true, nullptr));
  // the keys of test_trt_rules (fp16 bit patterns) written as two cached rows
  const uint16_t keys[8] = {0x3800, 0xbd00, 0x4000, 0x3a00, 0x4200, 0x3000, 0xb800, 0x3e00};
  std::memcpy(kv.present(0), keys, sizeof keys);
  std::memcpy(kv.present(1), keys, sizeof keys);
  kv.commit(2);
  CHECK_OK(kv.rotate(7, {1.0, 0.01}));
  uint16_t got[8], values[8];
  std::memcpy(got, kv.past(0), sizeof got);
  std::memcpy(values, kv.past(1), sizeof values);
  const uint16_t want[8] = {0x3ec4, 0xbcc7, 0x3cb8, 0x3aaf, 0x3fbc, 0x3359, 0xc0b2, 0x3df3};   // Python's rotate_keys
  CHECK(std::memcmp(got, want, sizeof want) == 0);
  CHECK(std::memcmp(values, keys, sizeof keys) == 0);
}

HARNESS_MAIN
