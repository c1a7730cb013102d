// AVX2 + FMA kernels (x86-64-v3: Haswell and later, Zen). This file alone is compiled with
// -mavx2 -mfma -mf16c; ops.cpp calls into it only when the CPU has them. Eight fp32 lanes;
// tails run scalar (AVX2 has no masked byte/word loads).
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace octavo_cpu {
namespace avx2 {

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
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
  }
  static inline __m256 ld(const float* p) { return _mm256_loadu_ps(p); }
  // bf16 -> fp32 is a 16-bit left shift of the bits
  static inline __m256 ld(const uint16_t* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
  }
  static inline __m128i to_bf16(__m256 x) {  // round to nearest even (NaN inputs are not expected)
    __m256i b = _mm256_castps_si256(x);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
    b = _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    // pack works within 128-bit lanes: pack, then gather the two low quadwords
    __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(b, b), 0xD8);
    return _mm256_castsi256_si128(packed);
  }
  static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static inline float hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static inline float scalar(float x) { return x; }
  static inline float scalar(uint16_t x) { return bf16_to_f32(x); }

  template <typename T>
  static void load(const T* src, float* dst, int n, float mul) {
    const __m256 s = _mm256_set1_ps(mul);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_mul_ps(ld(src + i), s));
    for (; i < n; ++i) dst[i] = scalar(src[i]) * mul;
  }
  static void store(const float* src, float* dst, int n, float mul) {
    const __m256 s = _mm256_set1_ps(mul);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_mul_ps(ld(src + i), s));
    for (; i < n; ++i) dst[i] = src[i] * mul;
  }
  static void store(const float* src, uint16_t* dst, int n, float mul) {
    const __m256 s = _mm256_set1_ps(mul);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm_storeu_si128((__m128i*)(dst + i), to_bf16(_mm256_mul_ps(ld(src + i), s)));
    for (; i < n; ++i) dst[i] = f32_to_bf16(src[i] * mul);
  }
  static float dot(const float* a, const float* b, int n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
      acc0 = _mm256_fmadd_ps(ld(a + i), ld(b + i), acc0);
      acc1 = _mm256_fmadd_ps(ld(a + i + 8), ld(b + i + 8), acc1);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(ld(a + i), ld(b + i), acc0);
    float s = hsum(_mm256_add_ps(acc0, acc1));
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
  }
  static void axpy(float* y, float a, const float* x, int n) {
    const __m256 s = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(s, ld(x + i), ld(y + i)));
    for (; i < n; ++i) y[i] += a * x[i];
  }
  static void scal(float* y, float a, int n) {
    const __m256 s = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(ld(y + i), s));
    for (; i < n; ++i) y[i] *= a;
  }
  static void mul(float* y, const float* w, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(ld(y + i), ld(w + i)));
    for (; i < n; ++i) y[i] *= w[i];
  }
  static float max(const float* x, int n) {
    __m256 m = _mm256_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, ld(x + i));
    float r = hmax(m);
    for (; i < n; ++i) r = x[i] > r ? x[i] : r;
    return r;
  }
  // exp with Cephes' polynomial (about 1 ulp on [-87, 0]); inputs below -87 give 0
  static inline __m256 exp(__m256 x) {
    const __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ);
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    // 2^n through the exponent bits; x >= -87 keeps n >= -126, a normal float
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(tiny, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
  }
  static float exp_sum(float* x, int n, float m) {
    const __m256 mv = _mm256_set1_ps(m);
    __m256 s = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
      const __m256 e = exp(_mm256_sub_ps(ld(x + i), mv));
      _mm256_storeu_ps(x + i, e);
      s = _mm256_add_ps(s, e);
    }
    float r = hsum(s);
    for (; i < n; ++i) {
      x[i] = expf(x[i] - m);
      r += x[i];
    }
    return r;
  }
};

}  // namespace avx2
}  // namespace octavo_cpu

#define OCTAVO_ISA avx2
#include "kernels_impl.h"
#include "dense_impl.h"
#include "gemm_fma.h"
