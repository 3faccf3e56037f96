#!/usr/bin/env bash
# Configure, build and test the TensorRT-free C++ parts (cpp/): library, example app, ctest (which
# also compiles the TensorRT backend against a stand-in TensorRT header: cmake/trt_compile_check.cmake).
#
#   bash cpp/ci.sh            # from anywhere; exits non-zero on any failure
#
# Installs what it needs with apt-get when missing (cmake, g++, nlohmann-json3-dev, libssl-dev,
# libicu-dev). When OMNISIFT_EXPORT_DIR is unset and the Python package is installed, it exports
# the embedded default (about 10 s) so the real_export and camera_app tests run too; otherwise
# those two are reported as skipped. Build folder: $OMNISIFT_CPP_BUILD or <repo>/build/cpp
# (git-ignored; incremental across runs).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build="${OMNISIFT_CPP_BUILD:-$here/../build/cpp}"

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v g++ >/dev/null 2>&1 || need+=(g++)
[ -f /usr/include/nlohmann/json.hpp ] || need+=(nlohmann-json3-dev)
[ -f /usr/include/openssl/evp.h ] || need+=(libssl-dev)
[ -f /usr/include/unicode/normalizer2.h ] || need+=(libicu-dev)
if [ "${#need[@]}" -gt 0 ]; then
  echo "cpp/ci.sh: installing ${need[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "cpp/ci.sh: need root (or sudo) to apt-get install ${need[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

mkdir -p "$build"
if command -v flock >/dev/null 2>&1; then   # one build at a time in a shared build folder
  exec 9>"$build/.ci.lock"
  flock 9
fi
# ctest's trt_compile_* checks compile the TensorRT backend against a stand-in NvInfer.h and CUDA's
# real cuda_runtime_api.h; without a CUDA toolkit, CUDA's headers come from pip (nvidia-cuda-runtime
# and nvidia-cuda-crt, about 3 MB) into the build folder. No pip: the checks are reported as skipped.
if ! ls /usr/local/cuda*/include/cuda_runtime_api.h >/dev/null 2>&1 && [ ! -d "$build/pip-cuda/nvidia" ] &&
   [ "${OMNISIFT_CPP_NO_PIP:-0}" != 1 ]; then
  python3 -m pip install -q --disable-pip-version-check --no-deps --target "$build/pip-cuda" \
    nvidia-cuda-runtime nvidia-cuda-crt >/dev/null 2>&1 ||
    echo "cpp/ci.sh: could not pip install CUDA's runtime headers; the TensorRT compile checks will be skipped" >&2
fi
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j"$(nproc)"

if [ -z "${OMNISIFT_EXPORT_DIR:-}" ] && command -v omnisift-edge >/dev/null 2>&1 && [ "${OMNISIFT_CPP_NO_EXPORT:-0}" != 1 ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  if omnisift-edge export --ratios 1,0.25 --resolution 112x84 -o "$tmp/export" >"$tmp/export.log" 2>&1; then
    export OMNISIFT_EXPORT_DIR="$tmp/export"
  else
    echo "cpp/ci.sh: omnisift-edge export failed; the real-export tests will be skipped:" >&2
    tail -5 "$tmp/export.log" >&2
  fi
fi

cd "$build"
ctest --output-on-failure
