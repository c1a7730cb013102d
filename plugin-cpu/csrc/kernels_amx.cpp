// bf16 GEMM on AMX tiles (Sapphire Rapids and later): y[M, N] = x[M, K] @ w[N, K]^T (+ bias),
// on the weight gemm_bf16.h packs (its k-pair panels are exactly the tiles' B layout: a B
// tile is 16 k-pairs of 16 columns, 64 bytes a row, read out of a 64-column panel with a row
// stride of 256 bytes). This file alone is compiled with -mamx-tile -mamx-bf16 (and the
// AVX-512 BF16 flags, for the fp32 -> bf16 stores); ops.cpp calls it only at the "amx"
// level, which it offers only when the CPU has the tiles and Linux granted their state.
//
// A block is 32 rows x 32 columns: four C tiles (2 x 2), two A tiles of x (16 rows x 32 k
// each), two B tiles of the panel; each A tile serves two B tiles and each B tile two A
// tiles, the most reuse eight tiles allow. The C tiles hold fp32 sums over the whole K
// (one rounding to bf16 at the end, as the other GEMMs). Rows past M are padded with zeros
// in a copy of x's last rows, never read past x. Few rows (decode), or K not a multiple of
// 32, stay on avx512bf16::gemm, which streams the same packed weight.
#include <immintrin.h>
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kernels.h"

namespace octavo_cpu {
namespace amx {

using bf16 = uint16_t;
constexpr int kNR = 64;  // gemm_bf16.h's columns per panel
constexpr int kBM = 32;  // rows of a block: two A tiles
constexpr int kBK = 32;  // k of one tile step: 16 pairs of bf16
// Below this many rows the tiles do little but wait for the weight, which vdpbf16ps streams
// as fast; SmolLM2's layers, 2 threads, bench/gemm.py: docs/cpu.md
constexpr int64_t kMinRows = 32;

bool enable() {
#if defined(__linux__) && defined(SYS_arch_prctl)
  // ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA: without it the first tile instruction faults
  static const bool ok = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  return ok;
#else
  return false;
#endif
}

struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// every tile 16 rows of 64 bytes (the tile config is per thread)
static void configure() {
  TileConfig c;
  memset(&c, 0, sizeof(c));
  c.palette = 1;
  for (int t = 0; t < 8; ++t) {
    c.rows[t] = 16;
    c.colsb[t] = 64;
  }
  _tile_loadconfig(&c);
}

// 32 rows of x (row stride xs) times 32 columns of a panel (wp: their first k-pair) into
// c [32][32] fp32.
static inline void block(const bf16* x, int64_t xs, const bf16* wp, int64_t K, float* c) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t k = 0; k < K; k += kBK) {
    _tile_loadd(4, x + k, xs * 2);
    _tile_loadd(5, x + 16 * xs + k, xs * 2);
    const bf16* b = wp + (k / 2) * kNR * 2;
    _tile_loadd(6, b, kNR * 4);
    _tile_loadd(7, b + 32, kNR * 4);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, 128);
  _tile_stored(1, c + 16, 128);
  _tile_stored(2, c + 16 * 32, 128);
  _tile_stored(3, c + 16 * 32 + 16, 128);
}

// rows [0, rows) and columns [0, cols) of c (+ bias), rounded to nearest even, into y
static inline void store(const float* c, int rows, int cols, const float* bias, bf16* y, int64_t ys) {
  for (int h = 0; h < 2; ++h) {
    const int n = cols - 16 * h;
    if (n <= 0) break;
    const __mmask16 k = n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u);
    const __m512 bv = bias ? _mm512_maskz_loadu_ps(k, bias + 16 * h) : _mm512_setzero_ps();
    for (int r = 0; r < rows; ++r) {
      const __m512 v = _mm512_add_ps(_mm512_loadu_ps(c + r * 32 + 16 * h), bv);
      _mm256_mask_storeu_epi16(y + r * ys + 16 * h, k, (__m256i)_mm512_cvtneps_pbh(v));
    }
  }
}

// rows m0..m1 of y (m0 a multiple of kBM), panels q0..q1
static void gemm_rows(const GemmArgs& a, const float* bias, int64_t m0, int64_t m1, int64_t q0, int64_t q1,
                      bf16* pad, float* c) {
  const bf16* x = static_cast<const bf16*>(a.x);
  const bf16* wp = static_cast<const bf16*>(a.w_packed);
  bf16* y = static_cast<bf16*>(a.y);
  const int64_t panel = (a.K / 2) * kNR * 2;
  // a block of panels stays in L2 while every row block passes over it: the tiles take the
  // weight far faster than L3 delivers it (SmolLM2's gate_up, 1024 rows, one thread, panels
  // streamed per row block: 195 GFLOP/s, against oneDNN's 450)
  int64_t nc = (512 * 1024) / (panel * 2);
  if (nc < 1) nc = 1;
  for (int64_t p0 = q0; p0 < q1; p0 += nc) {
    const int64_t p1 = p0 + nc < q1 ? p0 + nc : q1;
    for (int64_t m = m0; m < m1; m += kBM) {
      const int rows = m1 - m < kBM ? (int)(m1 - m) : kBM;
      const bf16* xb = x + m * a.x_stride;
      int64_t xs = a.x_stride;
      if (rows < kBM) {  // the last rows, zero-padded to a block
        memset(pad, 0, sizeof(bf16) * kBM * a.K);
        for (int r = 0; r < rows; ++r) memcpy(pad + r * a.K, xb + r * a.x_stride, sizeof(bf16) * a.K);
        xb = pad;
        xs = a.K;
      }
      for (int64_t p = p0; p < p1; ++p) {
        for (int h = 0; h < 2; ++h) {
          const int64_t n = p * kNR + 32 * h;
          if (n >= a.N) break;
          block(xb, xs, wp + p * panel + 64 * h, a.K, c);  // 32 columns of k-pairs in
          store(c, rows, a.N - n < 32 ? (int)(a.N - n) : 32, bias ? bias + n : nullptr, y + m * a.y_stride + n,
                a.y_stride);
        }
      }
    }
  }
}

void gemm(const GemmArgs& a) {
  if (a.M <= 0 || a.N <= 0) return;
  if (a.M < kMinRows || a.K % kBK != 0 || !enable()) return avx512bf16::gemm(a);
  const int64_t panels = (a.N + kNR - 1) / kNR;
  float* bias = nullptr;
  if (a.bias) {
    bias = static_cast<float*>(calloc((size_t)panels * kNR, sizeof(float)));
    const bf16* b = static_cast<const bf16*>(a.bias);
    for (int64_t n = 0; n < a.N; ++n) {
      const uint32_t bits = (uint32_t)b[n] << 16;
      memcpy(bias + n, &bits, 4);
    }
  }
  // the thread split of gemm_bf16.h: panels for decode-sized M and weights past the L3,
  // block-aligned row shares otherwise
  const int64_t blocks = (a.M + kBM - 1) / kBM;
  const bool by_cols = a.M <= 128 || a.N * a.K * 2 > (int64_t)8 << 20;
  int nt = a.num_threads > 0 ? a.num_threads : 1;
  const int64_t parts = by_cols ? panels : blocks;
  if (nt > parts) nt = (int)parts;
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), nth = omp_get_num_threads();
    const int64_t s0 = parts * t / nth, s1 = parts * (t + 1) / nth;
    bf16* pad = static_cast<bf16*>(aligned_alloc(64, ((sizeof(bf16) * kBM * a.K + 63) / 64) * 64));
    float* c = static_cast<float*>(aligned_alloc(64, sizeof(float) * kBM * 32));
    configure();
    if (by_cols) {
      gemm_rows(a, bias, 0, a.M, s0, s1, pad, c);
    } else {
      gemm_rows(a, bias, s0 * kBM, s1 * kBM < a.M ? s1 * kBM : a.M, 0, panels, pad, c);
    }
    _tile_release();  // a thread holding tile state makes every context switch save 8 KiB
    free(pad);
    free(c);
  }
  free(bias);
}

}  // namespace amx
}  // namespace octavo_cpu
