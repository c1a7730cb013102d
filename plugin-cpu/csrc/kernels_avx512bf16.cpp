// AVX-512 kernels with the AVX512_BF16 instructions (vdpbf16ps, vcvtne2ps2bf16), and the
// bf16 GEMM that needs them (gemm_bf16.h). This file alone is compiled with its
// ISA's flags (CMakeLists.txt); ops.cpp calls into it only when the CPU has them.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace octavo_cpu {
namespace avx512bf16 {
#include "ops_avx512.h"
}  // namespace avx512bf16
}  // namespace octavo_cpu

#define OCTAVO_ISA avx512bf16
#include "kernels_impl.h"
#include "dense_impl.h"
#include "gemm_fma.h"
#include "gemm_bf16.h"
