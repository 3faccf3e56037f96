#!/bin/sh
# Compile (not link) the TensorRT backend, src/trt_backend.cpp and src/trt_kv.cpp, against one
# NvInfer.h folder and CUDA's runtime headers, with -Wall -Wextra -Werror:
#
#   sh cpp/tools/trt_compile_check.sh TRT_INCLUDE CUDA_INCLUDE [compiler flags...]
#
# TRT_INCLUDE: cpp/tests/trt_standin (what ctest uses; -DOMNISIFT_STANDIN_TRT_MINOR=3 or
# -DOMNISIFT_STANDIN_RTX pick the TensorRT it mimics), a TensorRT / TensorRT-RTX install's include/,
# or NVIDIA/TensorRT's include/ at a release tag. Exits 77 (ctest: skipped) without cuda_runtime_api.h.
# CXX picks the compiler (default c++).
set -eu
cpp="$(cd "$(dirname "$0")/.." && pwd)"
trt="$1"
cuda="$2"
shift 2
if [ ! -f "$cuda/cuda_runtime_api.h" ]; then
  echo "skipped: no cuda_runtime_api.h (CUDA toolkit, or pip install --target DIR nvidia-cuda-runtime nvidia-cuda-crt" \
       "and configure with -DOMNISIFT_CUDA_INCLUDE=DIR/nvidia/cu13/include); the TensorRT backend was not compiled"
  exit 77
fi
[ -f "$trt/NvInfer.h" ] || { echo "no NvInfer.h in $trt" >&2; exit 2; }
for src in trt_backend.cpp trt_kv.cpp; do
  "${CXX:-c++}" -std=c++17 -c -o /dev/null -Wall -Wextra -Werror "$@" -isystem "$trt" -isystem "$cuda" \
    -I"$cpp/include" -I"$cpp/src" "$cpp/src/$src"
done
echo "compiled src/trt_backend.cpp and src/trt_kv.cpp against $trt/NvInfer.h and $cuda/cuda_runtime_api.h $*"
