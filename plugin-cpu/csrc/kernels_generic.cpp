// Portable kernels: plain loops for the baseline ISA, used on CPUs without AVX-512
// (and on non-x86 machines). Correctness first; the compiler vectorizes what it can.
#include <cmath>
#include <cstdint>
#include <cstring>

namespace octavo_cpu {
namespace generic {

struct Ops {
  static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  static inline uint16_t f32_to_bf16(float f) {  // round to nearest even, as torch does
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);  // quiet NaN
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
  }
  static void load(const float* src, float* dst, int n, float mul) {
    for (int i = 0; i < n; ++i) dst[i] = src[i] * mul;
  }
  static void load(const uint16_t* src, float* dst, int n, float mul) {
    for (int i = 0; i < n; ++i) dst[i] = bf16_to_f32(src[i]) * mul;
  }
  static void store(const float* src, float* dst, int n, float mul) {
    for (int i = 0; i < n; ++i) dst[i] = src[i] * mul;
  }
  static void store(const float* src, uint16_t* dst, int n, float mul) {
    for (int i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i] * mul);
  }
  static float dot(const float* a, const float* b, int n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; ++i) s += a[i] * b[i];
    return s;
  }
  static void axpy(float* y, float a, const float* x, int n) {
    for (int i = 0; i < n; ++i) y[i] += a * x[i];
  }
  static void scal(float* y, float a, int n) {
    for (int i = 0; i < n; ++i) y[i] *= a;
  }
  static void mul(float* y, const float* w, int n) {
    for (int i = 0; i < n; ++i) y[i] *= w[i];
  }
  static float max(const float* x, int n) {
    float m = -INFINITY;
    for (int i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
    return m;
  }
  // x[i] = exp(x[i] - m) (exp(-inf) = 0); returns the sum
  static float exp_sum(float* x, int n, float m) {
    float s = 0.0f;
    for (int i = 0; i < n; ++i) {
      x[i] = std::exp(x[i] - m);
      s += x[i];
    }
    return s;
  }
};

}  // namespace generic
}  // namespace octavo_cpu

#define OCTAVO_ISA generic
#include "kernels_impl.h"
#include "dense_impl.h"
#include "gemm_fma.h"
