# The cuda layer: device runtime, GPU kernels behind the ops contracts, cuBLASLt GEMMs and the
# NCCL communicator. Sets KILN_HAVE_CUDA (a cache-free variable) and, when built, defines
# KILN_HAVE_CUDA=1 on kiln_cuda for everything that links it.
# AUTO builds it only where it can run: the toolkit is found and a GPU is present (nvidia-smi
# lists one, or /dev/nvidia0 exists); ON builds it wherever the toolkit is, GPU or not (the test
# build does that, scripts/test.sh, to catch compile errors in kernels).
set(KILN_HAVE_CUDA OFF)
set(kiln_cuda_wanted ${KILN_CUDA})
if(KILN_CUDA STREQUAL "AUTO")
  set(kiln_gpu_present OFF)
  if(EXISTS /dev/nvidia0)
    set(kiln_gpu_present ON)
  else()
    find_program(kiln_nvidia_smi nvidia-smi NO_CACHE)
    if(kiln_nvidia_smi)
      execute_process(COMMAND ${kiln_nvidia_smi} -L RESULT_VARIABLE kiln_smi_rc
                      OUTPUT_QUIET ERROR_QUIET TIMEOUT 20)
      if(kiln_smi_rc EQUAL 0)
        set(kiln_gpu_present ON)
      endif()
    endif()
  endif()
  if(NOT kiln_gpu_present)
    set(kiln_cuda_wanted OFF)
    message(STATUS "No NVIDIA GPU here (nvidia-smi, /dev/nvidia0): building without the CUDA "
                   "backend (KILN_CUDA=AUTO); -DKILN_CUDA=ON builds it anyway")
  endif()
endif()
if(NOT kiln_cuda_wanted STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(KILN_HAVE_CUDA ON)
  elseif(KILN_CUDA STREQUAL "ON")
    message(FATAL_ERROR "KILN_CUDA=ON but no CUDA compiler was found: install the CUDA toolkit "
                        "(nvcc) or pass -DCMAKE_CUDA_COMPILER=/path/to/nvcc, or use -DKILN_CUDA=OFF")
  else()
    message(STATUS "CUDA toolkit not found: building without the CUDA backend (KILN_CUDA=AUTO)")
  endif()
endif()

if(KILN_HAVE_CUDA)
  # Ampere (A100) and Hopper (H100/H200); override with -DCMAKE_CUDA_ARCHITECTURES=...
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 80 90)
  endif()
  enable_language(CUDA)
  set(CMAKE_CUDA_STANDARD 17)  # CMake 3.25 knows no C++20 flag for nvcc; kernels need 17
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  find_package(CUDAToolkit REQUIRED)
  get_filename_component(cuda_lib_dir ${CUDAToolkit_LIBRARY_DIR} ABSOLUTE)
  find_library(NCCL_LIB nccl HINTS ${cuda_lib_dir} /usr/lib/x86_64-linux-gnu)
  find_path(NCCL_INCLUDE nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
  message(STATUS "CUDA backend: nvcc ${CMAKE_CUDA_COMPILER_VERSION}, archs "
                 "${CMAKE_CUDA_ARCHITECTURES}, NCCL ${NCCL_LIB}")

  file(GLOB_RECURSE cuda_srcs CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/src/kiln/cuda/*.cpp
       ${CMAKE_SOURCE_DIR}/src/kiln/cuda/*.cu)
  add_library(kiln_cuda STATIC ${cuda_srcs})
  target_include_directories(kiln_cuda PUBLIC ${CMAKE_SOURCE_DIR}/src)
  target_link_libraries(kiln_cuda PUBLIC kiln_ops kiln_dist CUDA::cudart CUDA::cublasLt
                        CUDA::cublas)
  target_compile_definitions(kiln_cuda PUBLIC KILN_HAVE_CUDA=1)
  # -Wall and friends are host-compiler flags: pass them through, and keep -march=native off
  # nvcc's own command line.
  target_compile_options(kiln_cuda PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -lineinfo -Xcompiler=-Wall>)
  if(NCCL_LIB AND NCCL_INCLUDE)
    target_link_libraries(kiln_cuda PUBLIC ${NCCL_LIB})
    target_include_directories(kiln_cuda PUBLIC ${NCCL_INCLUDE})
    target_compile_definitions(kiln_cuda PUBLIC KILN_HAVE_NCCL=1)
  else()
    message(STATUS "NCCL not found: the cuda layer builds without NcclComm")
  endif()
  set_target_properties(kiln_cuda PROPERTIES CUDA_SEPARABLE_COMPILATION OFF
                                             POSITION_INDEPENDENT_CODE ON)
endif()
