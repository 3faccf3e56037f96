// Typed access to nlohmann::json with the key path in every error (internal to the library).
// Accessors throw FieldError; the public functions catch it and return a Status.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace omnisift::detail {

using nlohmann::json;

struct FieldError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline const json& field(const json& obj, const std::string& key, const std::string& path) {
  if (!obj.is_object()) throw FieldError(path + " is not an object");
  auto it = obj.find(key);
  if (it == obj.end()) throw FieldError("missing key " + (path.empty() ? key : path + "." + key));
  return *it;
}

inline int64_t get_int(const json& obj, const std::string& key, const std::string& path) {
  const json& v = field(obj, key, path);
  if (!v.is_number_integer()) throw FieldError((path.empty() ? key : path + "." + key) + " is not an integer");
  return v.get<int64_t>();
}

inline double get_number(const json& obj, const std::string& key, const std::string& path) {
  const json& v = field(obj, key, path);
  if (!v.is_number()) throw FieldError((path.empty() ? key : path + "." + key) + " is not a number");
  return v.get<double>();
}

inline std::string get_string(const json& obj, const std::string& key, const std::string& path) {
  const json& v = field(obj, key, path);
  if (!v.is_string()) throw FieldError((path.empty() ? key : path + "." + key) + " is not a string");
  return v.get<std::string>();
}

inline bool get_bool(const json& obj, const std::string& key, const std::string& path, bool fallback) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) throw FieldError((path.empty() ? key : path + "." + key) + " is not a boolean");
  return it->get<bool>();
}

inline const json& get_array(const json& obj, const std::string& key, const std::string& path) {
  const json& v = field(obj, key, path);
  if (!v.is_array()) throw FieldError((path.empty() ? key : path + "." + key) + " is not a list");
  return v;
}

inline std::vector<int64_t> get_int_list(const json& obj, const std::string& key, const std::string& path) {
  std::vector<int64_t> out;
  for (const json& v : get_array(obj, key, path)) {
    if (!v.is_number_integer()) throw FieldError(path + "." + key + " holds a non-integer");
    out.push_back(v.get<int64_t>());
  }
  return out;
}

}  // namespace omnisift::detail
