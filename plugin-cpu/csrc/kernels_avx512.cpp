// AVX-512 kernels (F, BW, VL, DQ + FMA). This file alone is compiled with its
// ISA's flags (CMakeLists.txt); ops.cpp calls into it only when the CPU has them.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace octavo_cpu {
namespace avx512 {
#include "ops_avx512.h"
}  // namespace avx512
}  // namespace octavo_cpu

#define OCTAVO_ISA avx512
#include "kernels_impl.h"
#include "dense_impl.h"
#include "gemm_fma.h"
