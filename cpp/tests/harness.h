// A tiny test harness (no network, no dependency): TEST(name) { CHECK...; } and a main that runs
// every test, prints each failure with file:line, and exits 1 when any failed.
#pragma once

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "omnisift/status.h"

namespace harness {

struct Test {
  const char* name;
  std::function<void()> fn;
};
inline std::vector<Test>& registry() {
  static std::vector<Test> tests;
  return tests;
}
inline int& failures() {
  static int n = 0;
  return n;
}
struct Register {
  Register(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};
inline void fail(const char* file, int line, const std::string& what) {
  ++failures();
  std::cerr << file << ":" << line << ": FAILED " << what << "\n";
}

inline std::string golden(const std::string& name) { return std::string(OMNISIFT_GOLDEN_DIR) + "/" + name; }

inline nlohmann::json load_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    std::cerr << "cannot open golden file " << path << " (write it: python -m omnisift_edge.export.golden cpp/golden)\n";
    std::exit(1);
  }
  return nlohmann::json::parse(in);
}

template <typename A, typename B>
std::string show(const A& a, const B& b) {
  std::ostringstream s;
  s << a << " vs " << b;
  return s.str();
}

}  // namespace harness

#define TEST(name)                                                  \
  static void test_##name();                                        \
  static harness::Register register_##name(#name, test_##name);     \
  static void test_##name()

#define CHECK(cond) \
  do { if (!(cond)) harness::fail(__FILE__, __LINE__, #cond); } while (0)
#define CHECK_EQ(a, b) \
  do { if (!((a) == (b))) harness::fail(__FILE__, __LINE__, std::string(#a " == " #b ": ") + harness::show((a), (b))); } while (0)
#define CHECK_NEAR(a, b, tol) \
  do { if (!(std::fabs((a) - (b)) <= (tol))) harness::fail(__FILE__, __LINE__, std::string(#a " ~= " #b ": ") + harness::show((a), (b))); } while (0)
#define CHECK_OK(expr) \
  do { auto _s = (expr); if (!_s.ok()) harness::fail(__FILE__, __LINE__, std::string(#expr ": ") + _s.to_string()); } while (0)
// a Result's status must be OK
#define CHECK_RESULT(res) \
  do { if (!(res).ok()) harness::fail(__FILE__, __LINE__, std::string(#res ": ") + (res).status().to_string()); } while (0)
#define CHECK_CODE(status, want)                                                                                  \
  do {                                                                                                            \
    auto _s = (status);                                                                                           \
    if (_s.code() != (want))                                                                                      \
      harness::fail(__FILE__, __LINE__, std::string(#status " -> ") + _s.to_string() + ", want " +               \
                                            omnisift::status_code_name(want));                                    \
    else if (!_s.ok() && _s.message().empty())                                                                    \
      harness::fail(__FILE__, __LINE__, std::string(#status " has no message"));                                  \
  } while (0)

#define HARNESS_MAIN                                                                          \
  int main() {                                                                                \
    for (const auto& t : harness::registry()) {                                               \
      const int before = harness::failures();                                                 \
      t.fn();                                                                                 \
      std::cout << (harness::failures() == before ? "ok   " : "FAIL ") << t.name << "\n";   \
    }                                                                                         \
    std::cout << harness::registry().size() << " tests, " << harness::failures()            \
              << " failed checks\n";                                                          \
    return harness::failures() ? 1 : 0;                                                       \
  }
