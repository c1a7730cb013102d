// The per-token dense kernels: linear for small M (decode GEMV), neox rotary in place, and
// SiLU-and-mul. Written once here and compiled per ISA like kernels_impl.h: each per-ISA
// file includes this header last, after its `Ops` and kernels_impl.h. No include guard.
//
// The ISA of the including file decides the vector type below (__AVX512F__, __AVX2__,
// OCTAVO_ISA_NEON, or none); __AVX512BF16__ adds the vdpbf16ps path for bf16 x bf16 linears.

#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels.h"

namespace octavo_cpu {
namespace OCTAVO_ISA {

// ---- one vector of fp32 lanes, per ISA -------------------------------------------------
// ld/st convert from/to the storage dtype (bf16 rounds to nearest even on store); the `n`
// overloads touch only the first n < L lanes (the rest load as 0).
#if defined(__AVX512F__)
struct DV {
  using V = __m512;
  static constexpr int L = 16;
  static inline V zero() { return _mm512_setzero_ps(); }
  static inline V set1(float a) { return _mm512_set1_ps(a); }
  static inline V ld(const float* p) { return Ops::ld(p); }
  static inline V ld(const bf16* p) { return Ops::ld(p); }
  static inline V ld(const float* p, int n) { return Ops::ld(p, Ops::tail(n)); }
  static inline V ld(const bf16* p, int n) { return Ops::ld(p, Ops::tail(n)); }
  static inline void st(float* p, V v) { _mm512_storeu_ps(p, v); }
  static inline void st(bf16* p, V v) { _mm256_storeu_si256((__m256i*)p, Ops::to_bf16(v)); }
  static inline void st(float* p, V v, int n) { _mm512_mask_storeu_ps(p, Ops::tail(n), v); }
  static inline void st(bf16* p, V v, int n) { _mm256_mask_storeu_epi16(p, Ops::tail(n), Ops::to_bf16(v)); }
  static inline V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static inline V add(V a, V b) { return _mm512_add_ps(a, b); }
  static inline V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static inline V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static inline V div(V a, V b) { return _mm512_div_ps(a, b); }
  static inline V min(V a, V b) { return _mm512_min_ps(a, b); }
  static inline V max(V a, V b) { return _mm512_max_ps(a, b); }
  static inline float hmax(V v) { return _mm512_reduce_max_ps(v); }
  static inline V exp(V a) { return Ops::exp(a); }
  static inline float sum(V v) { return _mm512_reduce_add_ps(v); }
};
#elif defined(__AVX2__)
struct DV {
  using V = __m256;
  static constexpr int L = 8;
  static inline __m256i mask(int n) {  // lanes < n set, for the 32-bit masked moves
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static inline V zero() { return _mm256_setzero_ps(); }
  static inline V set1(float a) { return _mm256_set1_ps(a); }
  static inline V ld(const float* p) { return Ops::ld(p); }
  static inline V ld(const bf16* p) { return Ops::ld(p); }
  static inline V ld(const float* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
  static inline V ld(const bf16* p, int n) {  // no 16-bit masked loads in AVX2
    bf16 b[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    memcpy(b, p, sizeof(bf16) * n);
    return Ops::ld(b);
  }
  static inline void st(float* p, V v) { _mm256_storeu_ps(p, v); }
  static inline void st(bf16* p, V v) { _mm_storeu_si128((__m128i*)p, Ops::to_bf16(v)); }
  static inline void st(float* p, V v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
  static inline void st(bf16* p, V v, int n) {
    bf16 b[8];
    _mm_storeu_si128((__m128i*)b, Ops::to_bf16(v));
    memcpy(p, b, sizeof(bf16) * n);
  }
  static inline V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static inline V add(V a, V b) { return _mm256_add_ps(a, b); }
  static inline V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static inline V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static inline V div(V a, V b) { return _mm256_div_ps(a, b); }
  static inline V min(V a, V b) { return _mm256_min_ps(a, b); }
  static inline V max(V a, V b) { return _mm256_max_ps(a, b); }
  static inline float hmax(V v) { return Ops::hmax(v); }
  static inline V exp(V a) { return Ops::exp(a); }
  static inline float sum(V v) { return Ops::hsum(v); }
};
#elif defined(OCTAVO_ISA_NEON)
struct DV {
  using V = float32x4_t;
  static constexpr int L = 4;
  static inline V zero() { return vdupq_n_f32(0.0f); }
  static inline V set1(float a) { return vdupq_n_f32(a); }
  static inline V ld(const float* p) { return Ops::ld(p); }
  static inline V ld(const bf16* p) { return Ops::ld(p); }
  template <typename T>
  static inline V ld(const T* p, int n) {  // no masked loads: through a zeroed copy
    T b[4] = {0, 0, 0, 0};
    memcpy(b, p, sizeof(T) * n);
    return ld(b);
  }
  static inline void st(float* p, V v) { vst1q_f32(p, v); }
  static inline void st(bf16* p, V v) { vst1_u16(p, Ops::to_bf16(v)); }
  template <typename T>
  static inline void st(T* p, V v, int n) {
    T b[4];
    st(b, v);
    memcpy(p, b, sizeof(T) * n);
  }
  static inline V fma(V a, V b, V c) { return vfmaq_f32(c, a, b); }
  static inline V add(V a, V b) { return vaddq_f32(a, b); }
  static inline V sub(V a, V b) { return vsubq_f32(a, b); }
  static inline V mul(V a, V b) { return vmulq_f32(a, b); }
  static inline V div(V a, V b) { return vdivq_f32(a, b); }
  static inline V min(V a, V b) { return vminq_f32(a, b); }
  static inline V max(V a, V b) { return vmaxq_f32(a, b); }
  static inline float hmax(V v) { return vmaxvq_f32(v); }
  static inline V exp(V a) { return Ops::exp(a); }
  static inline float sum(V v) { return vaddvq_f32(v); }
};
#else
// Portable: eight lanes as a plain array; the loops are short and fixed, so the compiler
// keeps them in SSE registers where it can.
struct DV {
  struct V {
    float v[8];
  };
  static constexpr int L = 8;
  static inline float f(float a) { return a; }
  static inline float f(bf16 a) { return Ops::bf16_to_f32(a); }
  static inline void put(float* p, float a) { *p = a; }
  static inline void put(bf16* p, float a) { *p = Ops::f32_to_bf16(a); }
  static inline V zero() { return set1(0.0f); }
  static inline V set1(float a) {
    V r;
    for (int i = 0; i < L; ++i) r.v[i] = a;
    return r;
  }
  template <typename T>
  static inline V ld(const T* p, int n = L) {
    V r;
    for (int i = 0; i < L; ++i) r.v[i] = i < n ? f(p[i]) : 0.0f;
    return r;
  }
  template <typename T>
  static inline void st(T* p, V v, int n = L) {
    for (int i = 0; i < n; ++i) put(p + i, v.v[i]);
  }
#define OCTAVO_DV_BINOP(name, expr)          \
  static inline V name(V a, V b) {           \
    V r;                                     \
    for (int i = 0; i < L; ++i) r.v[i] = expr; \
    return r;                                \
  }
  OCTAVO_DV_BINOP(add, a.v[i] + b.v[i])
  OCTAVO_DV_BINOP(sub, a.v[i] - b.v[i])
  OCTAVO_DV_BINOP(mul, a.v[i] * b.v[i])
  OCTAVO_DV_BINOP(div, a.v[i] / b.v[i])
  OCTAVO_DV_BINOP(min, a.v[i] < b.v[i] ? a.v[i] : b.v[i])
  OCTAVO_DV_BINOP(max, a.v[i] > b.v[i] ? a.v[i] : b.v[i])
#undef OCTAVO_DV_BINOP
  static inline V fma(V a, V b, V c) {
    V r;
    for (int i = 0; i < L; ++i) r.v[i] = a.v[i] * b.v[i] + c.v[i];
    return r;
  }
  static inline V exp(V a) {
    V r;
    for (int i = 0; i < L; ++i) r.v[i] = expf(a.v[i]);
    return r;
  }
  static inline float hmax(V v) {
    float m = v.v[0];
    for (int i = 1; i < L; ++i) m = v.v[i] > m ? v.v[i] : m;
    return m;
  }
  static inline float sum(V v) {
    return ((v.v[0] + v.v[4]) + (v.v[1] + v.v[5])) + ((v.v[2] + v.v[6]) + (v.v[3] + v.v[7]));
  }
};
#endif

// ---- linear for small M: y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]) -----------------
//
// Decode-sized M makes this a GEMV: every weight byte is used M times, so the kernel's job
// is to stream W from memory at full bandwidth. Each thread takes one contiguous range of
// W's rows and reads it strictly in address order, one row at a time: a row meets every
// kMB-token group of x while it sits in L1, so W is read from memory once whatever M is.
// One row at a time, not a tile of several rows advanced side by side: interleaved row
// streams defeat the hardware prefetchers (2-core Zen 4, the 30 layers' GEMVs of SmolLM2,
// 212 MB of bf16: 4-row tiles 20 GB/s with a software-prefetch burst, 2-row 16, one row 30
// at M = 1; single-stream decode 13.5 -> 10.1 ms a token in bf16, 24.1 -> 18.9 in fp32,
// with no software prefetch needed; plugin-cpu/bench/dense_linear.py, decode_step.py).
// Accumulation is fp32; each output rounds once.
#if defined(__AVX2__) || defined(OCTAVO_ISA_NEON)  // AVX-512 too: 8 tokens a pass measured no faster than 2 x 4
constexpr int kMB = 4;  // 4 accumulators + 4 x vectors + 1 w of 16 ymm / 32 zmm / 32 q
#else
constexpr int kMB = 2;  // each V is two SSE registers
#endif

// One row of w times MB rows of x (fp32, row stride xs): the fp32 sums into out[0..MB).
template <typename TW, int MB>
static inline void gemv_row(const TW* w, const float* x, int64_t xs, int K, float* out) {
  using V = typename DV::V;
  V acc[MB];
  for (int m = 0; m < MB; ++m) acc[m] = DV::zero();
  int k = 0;
  for (; k + DV::L <= K; k += DV::L) {
    const V wv = DV::ld(w + k);
    for (int m = 0; m < MB; ++m) acc[m] = DV::fma(wv, DV::ld(x + m * xs + k), acc[m]);
  }
  if (k < K) {
    const int n = K - k;
    const V wv = DV::ld(w + k, n);
    for (int m = 0; m < MB; ++m) acc[m] = DV::fma(wv, DV::ld(x + m * xs + k, n), acc[m]);
  }
  for (int m = 0; m < MB; ++m) out[m] = DV::sum(acc[m]);
}

#ifdef __AVX512BF16__
// bf16 x bf16 with vdpbf16ps: 32 products per instruction, pairs summed into 16 fp32 lanes,
// straight from the stored bf16 rows of w and x (no conversion; bf16 products are exact in
// fp32). K tails load as zeros, which add nothing, so odd K needs no special pairing.
template <int MB>
static inline void gemv_row_dp(const bf16* w, const bf16* x, int64_t xs, int K, float* out) {
  __m512 acc[MB];
  for (int m = 0; m < MB; ++m) acc[m] = _mm512_setzero_ps();
  int k = 0;
  for (; k + 32 <= K; k += 32) {
    const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + k);
    for (int m = 0; m < MB; ++m)
      acc[m] = _mm512_dpbf16_ps(acc[m], wv, (__m512bh)_mm512_loadu_si512(x + m * xs + k));
  }
  if (k < K) {
    const __mmask32 t = (__mmask32)((1ull << (K - k)) - 1ull);
    const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(t, w + k);
    for (int m = 0; m < MB; ++m)
      acc[m] = _mm512_dpbf16_ps(acc[m], wv, (__m512bh)_mm512_maskz_loadu_epi16(t, x + m * xs + k));
  }
  for (int m = 0; m < MB; ++m) out[m] = _mm512_reduce_add_ps(acc[m]);
}
#endif

// One row times mb <= kMB tokens: the token count picks the unrolled kernel. With kDp, x is
// the bf16 input itself; otherwise an fp32 copy.
template <typename TW, typename TX, bool kDp, int MB>
static inline void row_call(const TW* w, const TX* x, int64_t xs, int K, float* out) {
#ifdef __AVX512BF16__
  if constexpr (kDp) {
    gemv_row_dp<MB>(w, x, xs, K, out);
    return;
  }
#endif
  if constexpr (!kDp) gemv_row<TW, MB>(w, x, xs, K, out);
}

template <typename TW, typename TX, bool kDp, int MB = kMB>
static inline void row_any_m(int mb, const TW* w, const TX* x, int64_t xs, int K, float* out) {
  if constexpr (MB > 1) {
    if (mb < MB) return row_any_m<TW, TX, kDp, MB - 1>(mb, w, x, xs, K, out);
  }
  row_call<TW, TX, kDp, MB>(w, x, xs, K, out);
}

template <typename T>
static inline float to_f32(T v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    const uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
  }
}
template <typename T>
static inline T from_f32(float v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {  // round to nearest even, as torch does (no NaN expected from a dot product)
    uint32_t bits;
    memcpy(&bits, &v, 4);
    return (bf16)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
  }
}

template <typename T, typename TX, bool kDp>
static void linear_rows(const LinearArgs& a, const TX* x, int64_t xs, int64_t n0, int64_t n1) {
  const T* w = static_cast<const T*>(a.w);
  const T* bias = static_cast<const T*>(a.bias);
  T* y = static_cast<T*>(a.y);
  const int K = (int)a.K;
  float out[kMB];
  for (int64_t n = n0; n < n1; ++n) {
    const T* wr = w + n * a.w_stride;
    const float b = bias ? to_f32(bias[n]) : 0.0f;
    for (int64_t m0 = 0; m0 < a.M; m0 += kMB) {
      const int mb = a.M - m0 < kMB ? (int)(a.M - m0) : kMB;
      row_any_m<T, TX, kDp>(mb, wr, x + m0 * xs, xs, K, out);
      for (int m = 0; m < mb; ++m) y[(m0 + m) * a.y_stride + n] = from_f32<T>(bias ? out[m] + b : out[m]);
    }
  }
}

template <typename T, typename TX, bool kDp>
static void linear_run(const LinearArgs& a, const TX* x, int64_t xs) {
  // one contiguous range of rows a thread; below ~64 rows each, waking another thread costs
  // more than it saves
  int nt = a.num_threads > 0 ? a.num_threads : 1;
  if (nt > a.N / 64) nt = a.N / 64 > 0 ? (int)(a.N / 64) : 1;
  if (nt == 1) return linear_rows<T, TX, kDp>(a, x, xs, 0, a.N);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), nth = omp_get_num_threads();
    linear_rows<T, TX, kDp>(a, x, xs, a.N * t / nth, a.N * (t + 1) / nth);
  }
}

template <typename T>
static void linear_impl(const LinearArgs& a) {
#ifdef __AVX512BF16__
  if constexpr (std::is_same_v<T, bf16>) {
    return linear_run<T, bf16, true>(a, static_cast<const bf16*>(a.x), a.x_stride);
  }
#endif
  // x as fp32 rows, converted once for all of W's rows
  const int K = (int)a.K;
  Buf<float> xf((size_t)a.M * K);
  const T* x = static_cast<const T*>(a.x);
  for (int64_t m = 0; m < a.M; ++m) Ops::load(x + m * a.x_stride, xf.data() + m * K, K, 1.0f);
  linear_run<T, float, false>(a, xf.data(), K);
}

void linear(const LinearArgs& a) {
  if (a.M <= 0 || a.N <= 0) return;
  if (a.dtype == kF32) return linear_impl<float>(a);
  return linear_impl<bf16>(a);
}

// ---- rotary (neox, rotate-half), in place -----------------------------------------------
// As Platform.rotary: features i and i + rot/2 of each head turn by the position's angle,
// x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin, in fp32 with the products and the sum
// rounded separately (the build passes -ffp-contract=off so no FMA merges them), rounded
// once to the dtype. Features past rot_dim stay as they are.
template <typename T>
static inline void rotate_head(T* x, const float* cs, int half) {
  using V = typename DV::V;
  int i = 0;
  for (; i + DV::L <= half; i += DV::L) {
    const V c = DV::ld(cs + i), s = DV::ld(cs + half + i);
    const V x1 = DV::ld(x + i), x2 = DV::ld(x + half + i);
    DV::st(x + i, DV::sub(DV::mul(x1, c), DV::mul(x2, s)));
    DV::st(x + half + i, DV::add(DV::mul(x2, c), DV::mul(x1, s)));
  }
  if (i < half) {
    const int n = half - i;
    const V c = DV::ld(cs + i, n), s = DV::ld(cs + half + i, n);
    const V x1 = DV::ld(x + i, n), x2 = DV::ld(x + half + i, n);
    DV::st(x + i, DV::sub(DV::mul(x1, c), DV::mul(x2, s)), n);
    DV::st(x + half + i, DV::add(DV::mul(x2, c), DV::mul(x1, s)), n);
  }
}

template <typename T>
static void rotary_impl(const RotaryArgs& a) {
  T* q = static_cast<T*>(a.q);
  T* k = static_cast<T*>(a.k);
  const int half = a.rot_dim / 2;
  const int64_t work = a.num_tokens * (a.num_q_heads + a.num_k_heads) * (int64_t)a.rot_dim;
  const int nt = a.num_threads > 0 ? a.num_threads : 1;
#pragma omp parallel for num_threads(nt) schedule(static) if (work > 65536)
  for (int64_t t = 0; t < a.num_tokens; ++t) {
    const float* cs = a.cos_sin + a.positions[t] * a.cs_stride;
    for (int h = 0; h < a.num_q_heads; ++h) rotate_head(q + t * a.q_stride_t + h * a.q_stride_h, cs, half);
    for (int h = 0; h < a.num_k_heads; ++h) rotate_head(k + t * a.k_stride_t + h * a.k_stride_h, cs, half);
  }
}

void rotary(const RotaryArgs& a) {
  if (a.dtype == kF32) return rotary_impl<float>(a);
  return rotary_impl<bf16>(a);
}

// ---- SiLU-and-mul: out = silu(x[:, :d]) * x[:, d:] ---------------------------------------
// fp32 math, one rounding, as the reference op (gate * sigmoid(gate) * up) does. The exp
// argument is capped at 88 (exp stays finite); below that cap silu(g) is already ~ -0.
template <typename T>
static void silu_and_mul_impl(const SiluMulArgs& a) {
  using V = typename DV::V;
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  const int64_t d = a.d;
  const int nt = a.num_threads > 0 ? a.num_threads : 1;
  const V one = DV::set1(1.0f), cap = DV::set1(88.0f), neg = DV::set1(-1.0f);
  auto silu_mul = [&](V g, V u) { return DV::mul(DV::div(g, DV::add(one, DV::exp(DV::min(DV::mul(g, neg), cap)))), u); };
#pragma omp parallel for num_threads(nt) schedule(static) if (a.rows * d > 65536)
  for (int64_t r = 0; r < a.rows; ++r) {
    const T* g = x + r * a.x_stride;
    const T* u = g + d;
    T* o = out + r * a.out_stride;
    int64_t i = 0;
    for (; i + DV::L <= d; i += DV::L) DV::st(o + i, silu_mul(DV::ld(g + i), DV::ld(u + i)));
    if (i < d) {
      const int n = (int)(d - i);
      DV::st(o + i, silu_mul(DV::ld(g + i, n), DV::ld(u + i, n)), n);
    }
  }
}

void silu_and_mul(const SiluMulArgs& a) {
  if (a.dtype == kF32) return silu_and_mul_impl<float>(a);
  return silu_and_mul_impl<bf16>(a);
}

// ---- RMSNorm, with the residual add fused ------------------------------------------------
//
// Two passes over a row, both from L1: (1) x (+ residual), the sum rounded to the dtype and
// written as the new residual stream, and its sum of squares; (2) the normed row, rounded to
// the dtype before the weight multiplies (as the reference layer does), times the weight.
// The per-row cost matters at decode sizes (64 rows x 576 take microseconds), where an
// earlier version's ten passes through fp32 scratch took 3x as long.
template <typename T, typename TW>
static inline void rms_row(const T* x, const T* res, T* res_out, T* out, const TW* w, int64_t H, float eps) {
  using V = typename DV::V;
  const T* src = x;
  V acc = DV::zero();
  int64_t i = 0;
  const int64_t full = H - H % DV::L;
  if (res) {
    for (; i < full; i += DV::L) {
      V s = DV::add(DV::ld(x + i), DV::ld(res + i));
      DV::st(res_out + i, s);
      if constexpr (!std::is_same_v<T, float>) s = DV::ld(res_out + i);  // norm the rounded sum
      acc = DV::fma(s, s, acc);
    }
    if (i < H) {
      const int n = (int)(H - i);
      V s = DV::add(DV::ld(x + i, n), DV::ld(res + i, n));
      DV::st(res_out + i, s, n);
      if constexpr (!std::is_same_v<T, float>) s = DV::ld(res_out + i, n);
      acc = DV::fma(s, s, acc);
    }
    src = res_out;
  } else {
    for (; i < full; i += DV::L) {
      const V s = DV::ld(x + i);
      acc = DV::fma(s, s, acc);
    }
    if (i < H) {
      const V s = DV::ld(x + i, (int)(H - i));
      acc = DV::fma(s, s, acc);
    }
  }
  const V inv = DV::set1(1.0f / sqrtf(DV::sum(acc) / (float)H + eps));
  for (i = 0; i < full; i += DV::L) {
    V v = DV::mul(DV::ld(src + i), inv);
    if constexpr (!std::is_same_v<T, float>) {  // round the normed row before the weight
      DV::st(out + i, v);
      v = DV::ld(out + i);
    }
    DV::st(out + i, DV::mul(v, DV::ld(w + i)));
  }
  if (i < H) {
    const int n = (int)(H - i);
    V v = DV::mul(DV::ld(src + i, n), inv);
    if constexpr (!std::is_same_v<T, float>) {
      DV::st(out + i, v, n);
      v = DV::ld(out + i, n);
    }
    DV::st(out + i, DV::mul(v, DV::ld(w + i, n)), n);
  }
}

template <typename T, typename TW>
static void rms_norm_impl(const RmsNormArgs& a) {
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  const T* res = static_cast<const T*>(a.residual);
  T* res_out = static_cast<T*>(a.res_out);
  const TW* w = static_cast<const TW*>(a.weight);
  const int nt = a.num_threads > 0 ? a.num_threads : 1;
#pragma omp parallel for num_threads(nt) schedule(static) if (a.rows * a.hidden > 65536)
  for (int64_t r = 0; r < a.rows; ++r)
    rms_row(x + r * a.x_stride, res ? res + r * a.res_stride : nullptr, res ? res_out + r * a.res_stride : nullptr,
            out + r * a.out_stride, w, a.hidden, a.eps);
}

void rms_norm(const RmsNormArgs& a) {
  if (a.dtype == kF32) {
    if (a.weight_dtype == kF32) return rms_norm_impl<float, float>(a);
    return rms_norm_impl<float, bf16>(a);
  }
  if (a.weight_dtype == kF32) return rms_norm_impl<bf16, float>(a);
  return rms_norm_impl<bf16, bf16>(a);
}

// ---- sampling by inverse CDF -------------------------------------------------------------
//
// The torch path (max, a shifted exp written out, block sums, cumulative sums, searches) is
// five passes over [rows, vocab] plus temporaries: about 6 ms for 64 x 49,152 on the
// development machine. Here a row is read twice from cache, its weights never stored: one pass
// for the max, one for the sums of blocks of kSampleBlock weights, then the one block the
// target lands in is recomputed and scanned. The same two-level search as the torch path, and
// the same clamps: the target stays below each level's total, so a token of weight 0 is never
// the first to exceed it.
constexpr int kSampleBlock = 256;

template <typename T>
static inline int64_t sample_row(const T* x, int64_t vocab, float inv_t, float u, float* bsum, float* w) {
  using V = typename DV::V;
  V vm = DV::set1(-INFINITY);
  int64_t i = 0;
  for (; i + DV::L <= vocab; i += DV::L) vm = DV::max(vm, DV::ld(x + i));
  float mx = DV::hmax(vm);
  for (; i < vocab; ++i) {
    float xi;
    DV::st(&xi, DV::ld(x + i, 1), 1);
    mx = xi > mx ? xi : mx;
  }
  if (!(mx > -INFINITY)) return 0;  // every token banned (or NaN): nothing to draw from
  const V vmx = DV::set1(mx), vit = DV::set1(inv_t);
  // weights of tokens [b, e): exp((x - max) / t); a masked tail loads 0 and is zeroed
  auto weights = [&](int64_t b, int64_t e, float* out) {
    int64_t j = b;
    for (; j + DV::L <= e; j += DV::L) DV::st(out + (j - b), DV::exp(DV::mul(DV::sub(DV::ld(x + j), vmx), vit)));
    if (j < e) DV::st(out + (j - b), DV::exp(DV::mul(DV::sub(DV::ld(x + j, (int)(e - j)), vmx), vit)), (int)(e - j));
  };
  const int64_t nb = (vocab + kSampleBlock - 1) / kSampleBlock;
  float total = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t e = (b + 1) * kSampleBlock < vocab ? (b + 1) * kSampleBlock : vocab;
    V acc = DV::zero();
    int64_t j = b * kSampleBlock;
    for (; j + DV::L <= e; j += DV::L) acc = DV::add(acc, DV::exp(DV::mul(DV::sub(DV::ld(x + j), vmx), vit)));
    float s = DV::sum(acc);
    if (j < e) {
      weights(j, e, w);
      for (int64_t k = 0; k < e - j; ++k) s += w[k];
    }
    total += s;
    bsum[b] = total;  // cumulative
  }
  // the block: csum[j - 1] <= t < csum[j]
  const float t = fminf(u * total, nextafterf(total, 0.0f));
  int64_t jb = 0;
  while (jb < nb - 1 && !(bsum[jb] > t)) ++jb;
  const float before = jb > 0 ? bsum[jb - 1] : 0.0f;
  const int64_t b0 = jb * kSampleBlock, e0 = b0 + kSampleBlock < vocab ? b0 + kSampleBlock : vocab;
  weights(b0, e0, w);
  float local = 0.0f;
  for (int64_t k = 0; k < e0 - b0; ++k) local += w[k];
  float tin = t - before > 0.0f ? t - before : 0.0f;
  tin = fminf(tin, nextafterf(local, 0.0f));
  float c = 0.0f;
  for (int64_t k = 0; k < e0 - b0; ++k) {
    c += w[k];
    if (c > tin) return b0 + k;
  }
  return e0 - 1;
}

template <typename T>
static void sample_impl(const SampleArgs& a) {
  const T* x = static_cast<const T*>(a.logits);
  const int64_t nb = (a.vocab + kSampleBlock - 1) / kSampleBlock;
  const int nt = a.num_threads > 0 ? a.num_threads : 1;
#pragma omp parallel num_threads(nt) if (a.rows * a.vocab > 65536)
  {
    // block sums, then one block's weights: the thread's kept scratch, no allocation per step
    float* buf = reinterpret_cast<float*>(thread_scratch(sizeof(float) * ((size_t)nb + kSampleBlock)));
#pragma omp for schedule(dynamic, 1)
    for (int64_t r = 0; r < a.rows; ++r) {
      const float t = a.temperatures ? a.temperatures[r] : 1.0f;
      a.out[r] = sample_row(x + r * a.stride, a.vocab, 1.0f / t, a.u[r], buf, buf + nb);
    }
  }
}

void sample(const SampleArgs& a) {
  if (a.dtype == kF32) return sample_impl<float>(a);
  return sample_impl<bf16>(a);
}

}  // namespace OCTAVO_ISA
}  // namespace octavo_cpu
