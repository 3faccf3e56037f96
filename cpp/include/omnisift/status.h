// Status and Result<T>: how every fallible call in the library reports failure.
//
// No exception crosses the library boundary: functions return a Status (or a Result<T> holding
// either a value or a Status). Messages are one line and name the fix, like the Python side's
// UsageError ("... ; export again with ...").
#pragma once

#include <optional>
#include <string>
#include <utility>

namespace omnisift {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,   // the caller passed something wrong (frame size, chunk shape, order of calls)
  kNotFound,          // a file or a manifest entry is missing
  kDataLoss,          // a checksum mismatch or a corrupt/truncated file
  kUnsupported,       // schema version, tokenizer feature or chat template this library does not read
  kContextFull,       // the KV cache would grow past the manifest's max_context
  kFailedPrecondition,// a call out of order (chunk after the question, ...)
  kBackend,           // the inference backend (TensorRT, CUDA) failed
  kInternal,          // a bug in this library
};

const char* status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "CODE: message", or "OK"
  std::string to_string() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status DataLoss(std::string m) { return {StatusCode::kDataLoss, std::move(m)}; }
inline Status Unsupported(std::string m) { return {StatusCode::kUnsupported, std::move(m)}; }
inline Status ContextFull(std::string m) { return {StatusCode::kContextFull, std::move(m)}; }
inline Status FailedPrecondition(std::string m) { return {StatusCode::kFailedPrecondition, std::move(m)}; }
inline Status BackendError(std::string m) { return {StatusCode::kBackend, std::move(m)}; }
inline Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

// A value or the Status that explains why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}                 // NOLINT: implicit on purpose
  Result(Status status) : status_(std::move(status)) {          // NOLINT
    if (status_.ok()) status_ = Internal("Result built from an OK status without a value");
  }

  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace omnisift

// Return early with the Status of a failed call.
#define OMNISIFT_RETURN_IF_ERROR(expr)           \
  do {                                           \
    ::omnisift::Status _st = (expr);             \
    if (!_st.ok()) return _st;                   \
  } while (0)

#define OMNISIFT_CONCAT_INNER(a, b) a##b
#define OMNISIFT_CONCAT(a, b) OMNISIFT_CONCAT_INNER(a, b)
// `OMNISIFT_ASSIGN_OR_RETURN(auto x, f());` declares x from a Result or returns its Status.
#define OMNISIFT_ASSIGN_OR_RETURN(decl, expr) \
  OMNISIFT_ASSIGN_OR_RETURN_IMPL(OMNISIFT_CONCAT(_res_, __LINE__), decl, expr)
#define OMNISIFT_ASSIGN_OR_RETURN_IMPL(tmp, decl, expr) \
  auto tmp = (expr);                                    \
  if (!tmp.ok()) return tmp.status();                   \
  decl = std::move(tmp).value()
