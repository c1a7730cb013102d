// bf16 GEMM for prefill-sized and batched-decode row counts: y[M, N] = x[M, K] @ w[N, K]^T
// (+ bias), with vdpbf16ps on a weight packed once (at first use, see platform.py).
// Included by kernels_avx512bf16.cpp only, inside its ISA namespace.
//
// Packed layout: w's rows go in panels of kNR = 64 output columns; panel p holds, for each
// pair of k (k even), the 64 columns' (w[n, k], w[n, k + 1]) side by side:
//   packed[p][k / 2][n % 64][k % 2] = w[p * 64 + n % 64][k]
// so one 64-byte load gives 16 columns' k-pairs, what vdpbf16ps multiplies against a
// broadcast pair of x. K is padded to even and N to a multiple of 64 with zeros (zero
// columns are computed but never stored).
//
// Micro-kernel: kMR rows of x times one panel (4 zmm of 16 fp32 columns) = 24 accumulators
// held in registers over the whole K (K <= a few thousand here; no K blocking, so each
// output is one fp32 sum rounded once, and no fp32 scratch is written). A thread walks its
// rows in kMR-row tiles; for each tile it sweeps a block of kNC columns whose packed weights
// (kNC * K * 2 bytes) stay in its L2 across all its tiles, while the tile's x rows stay in L1
// across the block's panels.

#include <omp.h>

#include <cstdint>

#include "kernels.h"

namespace octavo_cpu {
namespace OCTAVO_ISA {

constexpr int kNR = 64;  // columns per panel: 4 zmm of fp32
constexpr int kMR = 6;   // rows per tile: 6 x 4 accumulators + 4 weight vectors + 1 broadcast of 32 zmm
constexpr int kMC = 26 * kMR;  // rows per L2 block of x (~180 KiB at K = 576)

static inline int64_t gemm_panels(int64_t N) { return (N + kNR - 1) / kNR; }

int64_t gemm_packed_elems(int64_t N, int64_t K) { return gemm_panels(N) * ((K + 1) / 2) * kNR * 2; }

void gemm_pack(const GemmPackArgs& a) {
  const bf16* w = static_cast<const bf16*>(a.w);
  bf16* out = static_cast<bf16*>(a.out);
  const int64_t K2 = (a.K + 1) / 2, panels = gemm_panels(a.N);
#pragma omp parallel for num_threads(a.num_threads > 0 ? a.num_threads : 1) schedule(static)
  for (int64_t p = 0; p < panels; ++p) {
    bf16* dst = out + p * K2 * kNR * 2;
    for (int64_t k2 = 0; k2 < K2; ++k2) {
      for (int c = 0; c < kNR; ++c) {
        const int64_t n = p * kNR + c;
        for (int h = 0; h < 2; ++h) {
          const int64_t k = 2 * k2 + h;
          dst[(k2 * kNR + c) * 2 + h] = (n < a.N && k < a.K) ? w[n * a.w_stride + k] : (bf16)0;
        }
      }
    }
  }
}

// MR rows of x (row stride xs) times one packed panel; writes min(cols, 64) columns of y.
template <int MR>
static inline void gemm_tile(const bf16* x, int64_t xs, const bf16* wp, int64_t K, bf16* y, int64_t ys, int cols,
                             const float* bias) {
  __m512 acc[MR][4];
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < 4; ++j) acc[m][j] = _mm512_setzero_ps();
  const int64_t K2 = K / 2;
  for (int64_t k2 = 0; k2 < K2; ++k2) {
    const bf16* wk = wp + k2 * (kNR * 2);
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(wk), b1 = (__m512bh)_mm512_loadu_si512(wk + 32);
    const __m512bh b2 = (__m512bh)_mm512_loadu_si512(wk + 64), b3 = (__m512bh)_mm512_loadu_si512(wk + 96);
    for (int m = 0; m < MR; ++m) {
      int32_t pair;
      __builtin_memcpy(&pair, x + m * xs + 2 * k2, 4);
      const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
      acc[m][0] = _mm512_dpbf16_ps(acc[m][0], av, b0);
      acc[m][1] = _mm512_dpbf16_ps(acc[m][1], av, b1);
      acc[m][2] = _mm512_dpbf16_ps(acc[m][2], av, b2);
      acc[m][3] = _mm512_dpbf16_ps(acc[m][3], av, b3);
    }
  }
  if (K & 1) {  // the last k pairs with the packing's zero; x's element past the row is never read
    const bf16* wk = wp + K2 * (kNR * 2);
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(wk), b1 = (__m512bh)_mm512_loadu_si512(wk + 32);
    const __m512bh b2 = (__m512bh)_mm512_loadu_si512(wk + 64), b3 = (__m512bh)_mm512_loadu_si512(wk + 96);
    for (int m = 0; m < MR; ++m) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32((int32_t)x[m * xs + K - 1]);
      acc[m][0] = _mm512_dpbf16_ps(acc[m][0], av, b0);
      acc[m][1] = _mm512_dpbf16_ps(acc[m][1], av, b1);
      acc[m][2] = _mm512_dpbf16_ps(acc[m][2], av, b2);
      acc[m][3] = _mm512_dpbf16_ps(acc[m][3], av, b3);
    }
  }
  __m512 bv[4];
  for (int j = 0; j < 4; ++j) {
    const int n = cols - 16 * j;
    const __mmask16 k = n >= 16 ? (__mmask16)0xffff : n > 0 ? (__mmask16)((1u << n) - 1u) : (__mmask16)0;
    bv[j] = bias ? _mm512_maskz_loadu_ps(k, bias + 16 * j) : _mm512_setzero_ps();
  }
  for (int m = 0; m < MR; ++m) {
    bf16* yr = y + m * ys;
    for (int j = 0; j < 4; ++j) {
      const int n = cols - 16 * j;
      if (n <= 0) break;
      // vcvtneps2bf16 rounds to nearest even, as torch's bf16 output does
      const __m256i v = (__m256i)_mm512_cvtneps_pbh(_mm512_add_ps(acc[m][j], bv[j]));
      if (n >= 16) {
        _mm256_storeu_si256((__m256i*)(yr + 16 * j), v);
      } else {
        _mm256_mask_storeu_epi16(yr + 16 * j, (__mmask16)((1u << n) - 1u), v);
      }
    }
  }
}

static inline void gemm_tile_any(int mr, const bf16* x, int64_t xs, const bf16* wp, int64_t K, bf16* y, int64_t ys,
                                 int cols, const float* bias) {
  switch (mr) {
    case 6: return gemm_tile<6>(x, xs, wp, K, y, ys, cols, bias);
    case 5: return gemm_tile<5>(x, xs, wp, K, y, ys, cols, bias);
    case 4: return gemm_tile<4>(x, xs, wp, K, y, ys, cols, bias);
    case 3: return gemm_tile<3>(x, xs, wp, K, y, ys, cols, bias);
    case 2: return gemm_tile<2>(x, xs, wp, K, y, ys, cols, bias);
    default: return gemm_tile<1>(x, xs, wp, K, y, ys, cols, bias);
  }
}

// rows m0..m1 of y, panels q0..q1 (columns 64 q0 .. 64 q1)
static void gemm_block(const GemmArgs& a, const float* bias, int64_t m0, int64_t m1, int64_t q0, int64_t q1) {
  const bf16* x = static_cast<const bf16*>(a.x);
  const bf16* wp = static_cast<const bf16*>(a.w_packed);
  bf16* y = static_cast<bf16*>(a.y);
  const int64_t panel = ((a.K + 1) / 2) * kNR * 2;
  // a column block's packed weights stay in L2 (1 MiB a core on Zen 4) beside x's tiles
  int64_t nc = (256 * 1024) / (panel * 2);
  if (nc < 1) nc = 1;
  // and a row block's x (kMC rows) stays there while every column block passes
  for (int64_t mc = m0; mc < m1; mc += kMC) {
    const int64_t mc1 = mc + kMC < m1 ? mc + kMC : m1;
    for (int64_t p0 = q0; p0 < q1; p0 += nc) {
      const int64_t p1 = p0 + nc < q1 ? p0 + nc : q1;
      for (int64_t m = mc; m < mc1; m += kMR) {
        const int mr = mc1 - m < kMR ? (int)(mc1 - m) : kMR;
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t n = p * kNR;
          const int cols = a.N - n < kNR ? (int)(a.N - n) : kNR;
          gemm_tile_any(mr, x + m * a.x_stride, a.x_stride, wp + p * panel, a.K, y + m * a.y_stride + n, a.y_stride,
                        cols, bias ? bias + n : nullptr);
        }
      }
    }
  }
}

void gemm(const GemmArgs& a) {
  if (a.M <= 0 || a.N <= 0) return;
  // bias in fp32 once (N floats on the stack would not do for lm_head-sized N)
  Buf<float> bias_f(a.bias ? (size_t)gemm_panels(a.N) * kNR : 0);
  if (a.bias) {
    const bf16* b = static_cast<const bf16*>(a.bias);
    for (int64_t n = 0; n < a.N; ++n) bias_f.data()[n] = to_f32(b[n]);
  }
  const float* bias = a.bias ? bias_f.data() : nullptr;
  // Threads split w's panels, each reading its share of w once, in address order, against
  // all of x, for decode-sized M (x small beside w) and for a weight too big for the L3
  // (lm_head); for prefill-sized M they split the rows in kMR-aligned shares, each reading all
  // of w (from L2 or L3) against its own rows. SmolLM2's layers, 30 of each from memory, 2
  // threads, panels against rows: M = 1-8 5.4-7.2 ms against 9.8-15.7 (and the row GEMV's
  // 6.3-14.0), M = 16 12.5 against 20.6, M = 64 379 against 321 GFLOP/s, M = 128 400 against
  // 386; M = 192 417 against 434, M = 512 407 against 428.
  const int64_t tiles = (a.M + kMR - 1) / kMR, panels = gemm_panels(a.N);
  const bool by_cols = a.M <= 128 || a.N * a.K * 2 > (int64_t)8 << 20;
  int nt = a.num_threads > 0 ? a.num_threads : 1;
  const int64_t parts = by_cols ? panels : tiles;
  if (nt > parts) nt = (int)parts;
  if (nt == 1) return gemm_block(a, bias, 0, a.M, 0, panels);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), nth = omp_get_num_threads();
    const int64_t s0 = parts * t / nth, s1 = parts * (t + 1) / nth;
    if (by_cols) {
      gemm_block(a, bias, 0, a.M, s0, s1);
    } else {
      gemm_block(a, bias, s0 * kMR, s1 * kMR < a.M ? s1 * kMR : a.M, 0, panels);
    }
  }
}

}  // namespace OCTAVO_ISA
}  // namespace octavo_cpu
