# ctest compiles the TensorRT backend where no TensorRT is installed (CI, dev machines): against the
# committed stand-in header tests/trt_standin/NvInfer.h (the calls the backend makes, with the real
# signatures), once per TensorRT it mimics, and against any real NvInfer.h folders named in
# OMNISIFT_TRT_CHECK_HEADERS. CUDA's real cuda_runtime_api.h is needed: from the CUDA toolkit, or
# the pip wheels nvidia-cuda-runtime + nvidia-cuda-crt (cpp/ci.sh installs them into the build
# folder when no toolkit is found); without it the checks are reported as skipped, with the reason.
set(OMNISIFT_CUDA_INCLUDE "" CACHE PATH "folder with CUDA's cuda_runtime_api.h for the TensorRT compile checks (searched when empty)")
set(OMNISIFT_TRT_CHECK_HEADERS "" CACHE STRING "folders with a real NvInfer.h to compile the TensorRT backend against too (;-separated)")

set(_omnisift_cuda_include "${OMNISIFT_CUDA_INCLUDE}")
if(NOT _omnisift_cuda_include)
  file(GLOB _omnisift_cuda_dirs /usr/local/cuda/include /usr/local/cuda-*/include /usr/local/cuda/targets/*/include
                                ${CMAKE_BINARY_DIR}/pip-cuda/nvidia/*/include)
  find_path(OMNISIFT_CUDA_RUNTIME_API_DIR cuda_runtime_api.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ${_omnisift_cuda_dirs})
  if(OMNISIFT_CUDA_RUNTIME_API_DIR)
    set(_omnisift_cuda_include "${OMNISIFT_CUDA_RUNTIME_API_DIR}")
  else()
    set(_omnisift_cuda_include "none-found")
  endif()
endif()
message(STATUS "omnisift: TensorRT compile checks use cuda_runtime_api.h from ${_omnisift_cuda_include}")

function(omnisift_trt_compile_test name trt_include)
  add_test(NAME ${name} COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/tools/trt_compile_check.sh ${trt_include}
                                   ${_omnisift_cuda_include} ${ARGN})
  set_tests_properties(${name} PROPERTIES SKIP_RETURN_CODE 77 ENVIRONMENT "CXX=${CMAKE_CXX_COMPILER}")
endfunction()

set(_omnisift_standin ${CMAKE_CURRENT_SOURCE_DIR}/tests/trt_standin)
omnisift_trt_compile_test(trt_compile_standin_10.15 ${_omnisift_standin})
omnisift_trt_compile_test(trt_compile_standin_10.3 ${_omnisift_standin} -DOMNISIFT_STANDIN_TRT_MINOR=3)
omnisift_trt_compile_test(trt_compile_standin_rtx ${_omnisift_standin} -DOMNISIFT_STANDIN_RTX)
set(_omnisift_i 0)
foreach(dir IN LISTS OMNISIFT_TRT_CHECK_HEADERS)
  math(EXPR _omnisift_i "${_omnisift_i} + 1")
  omnisift_trt_compile_test(trt_compile_real_${_omnisift_i} ${dir})
endforeach()
