// NEON (Advanced SIMD) kernels for AArch64: Graviton, Ampere, Apple silicon, Raspberry Pi 4+.
// Advanced SIMD is part of AArch64, so this file needs no extra flags; ops.cpp runs it on
// every aarch64 CPU ("neon"; OCTAVO_CPU_ISA=generic lowers it). Four fp32 lanes a register;
// tails run scalar. bf16 widens to fp32 in registers (a 16-bit shift), as on x86.
// OCTAVO_ISA_NEON picks the NEON vector type in the shared headers: the compiler defines
// __ARM_NEON for kernels_generic.cpp too, which must stay the portable path.
#define OCTAVO_ISA_NEON 1
#include <arm_neon.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace octavo_cpu {
namespace neon {

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
  static inline float32x4_t ld(const float* p) { return vld1q_f32(p); }
  static inline float32x4_t ld(const uint16_t* p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }
  static inline uint16x4_t to_bf16(float32x4_t x) {  // round to nearest even (NaN inputs are not expected)
    uint32x4_t b = vreinterpretq_u32_f32(x);
    const uint32x4_t lsb = vandq_u32(vshrq_n_u32(b, 16), vdupq_n_u32(1));
    b = vaddq_u32(b, vaddq_u32(lsb, vdupq_n_u32(0x7fff)));
    return vshrn_n_u32(b, 16);
  }
  static inline float scalar(float x) { return x; }
  static inline float scalar(uint16_t x) { return bf16_to_f32(x); }

  template <typename T>
  static void load(const T* src, float* dst, int n, float mul) {
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, vmulq_n_f32(ld(src + i), mul));
    for (; i < n; ++i) dst[i] = scalar(src[i]) * mul;
  }
  static void store(const float* src, float* dst, int n, float mul) {
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, vmulq_n_f32(ld(src + i), mul));
    for (; i < n; ++i) dst[i] = src[i] * mul;
  }
  static void store(const float* src, uint16_t* dst, int n, float mul) {
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1_u16(dst + i, to_bf16(vmulq_n_f32(ld(src + i), mul)));
    for (; i < n; ++i) dst[i] = f32_to_bf16(src[i] * mul);
  }
  static float dot(const float* a, const float* b, int n) {
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
      acc0 = vfmaq_f32(acc0, ld(a + i), ld(b + i));
      acc1 = vfmaq_f32(acc1, ld(a + i + 4), ld(b + i + 4));
    }
    for (; i + 4 <= n; i += 4) acc0 = vfmaq_f32(acc0, ld(a + i), ld(b + i));
    float s = vaddvq_f32(vaddq_f32(acc0, acc1));
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
  }
  static void axpy(float* y, float a, const float* x, int n) {
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(ld(y + i), ld(x + i), a));
    for (; i < n; ++i) y[i] += a * x[i];
  }
  static void scal(float* y, float a, int n) {
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vmulq_n_f32(ld(y + i), a));
    for (; i < n; ++i) y[i] *= a;
  }
  static void mul(float* y, const float* w, int n) {
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vmulq_f32(ld(y + i), ld(w + i)));
    for (; i < n; ++i) y[i] *= w[i];
  }
  static float max(const float* x, int n) {
    float32x4_t m = vdupq_n_f32(-INFINITY);
    int i = 0;
    for (; i + 4 <= n; i += 4) m = vmaxq_f32(m, ld(x + i));
    float r = vmaxvq_f32(m);
    for (; i < n; ++i) r = x[i] > r ? x[i] : r;
    return r;
  }
  // exp with Cephes' polynomial (about 1 ulp on [-87, 0]), as the x86 files; inputs below -87 give 0
  static inline float32x4_t exp(float32x4_t x) {
    const uint32x4_t tiny = vcltq_f32(x, vdupq_n_f32(-87.0f));
    x = vmaxq_f32(x, vdupq_n_f32(-87.0f));
    const float32x4_t n = vrndnq_f32(vmulq_n_f32(x, 1.44269504088896341f));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
    r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
    p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
    p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), p, vmulq_f32(r, r));
    // 2^n through the exponent bits; x >= -87 keeps n >= -126, a normal float
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    const float32x4_t out = vmulq_f32(p, vreinterpretq_f32_s32(e));
    return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(out), tiny));
  }
  static float exp_sum(float* x, int n, float m) {
    const float32x4_t mv = vdupq_n_f32(m);
    float32x4_t s = vdupq_n_f32(0.0f);
    int i = 0;
    for (; i + 4 <= n; i += 4) {
      const float32x4_t e = exp(vsubq_f32(ld(x + i), mv));
      vst1q_f32(x + i, e);
      s = vaddq_f32(s, e);
    }
    float r = vaddvq_f32(s);
    for (; i < n; ++i) {
      x[i] = expf(x[i] - m);
      r += x[i];
    }
    return r;
  }
};

}  // namespace neon
}  // namespace octavo_cpu

#define OCTAVO_ISA neon
#include "kernels_impl.h"
#include "dense_impl.h"
#include "gemm_fma.h"
