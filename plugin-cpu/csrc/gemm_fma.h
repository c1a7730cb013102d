// Packed GEMM on plain fp32 FMAs, for the ISA levels without bf16 dot products (generic,
// AVX2 + FMA + F16C, AVX-512 without BF16, NEON) and for fp32 weights on every level:
// y[M, N] = x[M, K] @ w[N, K]^T (+ bias). Included by each per-ISA kernel file after
// dense_impl.h (it uses DV, Buf, to_f32 and from_f32), inside nothing: it opens the ISA
// namespace itself. No include guard: each translation unit includes it once.
//
// bf16 weights stay bf16 in memory (half the bytes of fp32) and widen to fp32 in registers
// as they load: the kernel reads half the bytes at fp32's arithmetic, where torch's bf16
// matmul on a CPU without AVX512_BF16 has no fast kernel at all (issue 16: 15 tok/s on C1).
//
// Packed layout: w's rows in panels of kFNR output columns; panel p holds, for each k, the
// panel's columns side by side: packed[p][k][c] = w[p * kFNR + c][k], in w's dtype. N is
// padded to a multiple of kFNR with zeros (computed, never stored). One packed row is
// kFNV vector loads, each multiplied against a broadcast x[m, k] for kFMR rows of x:
// kFMR x kFNV accumulators stay in registers over the whole K (each output is one fp32 sum,
// rounded once). x is widened to fp32 once per call.

#include <omp.h>

#include <cstdint>

#include "kernels.h"

namespace octavo_cpu {
namespace OCTAVO_ISA {

#if defined(__AVX512F__)
constexpr int kFNV = 4;  // 6 x 4 accumulators + 4 weight vectors + 1 broadcast of 32 zmm
constexpr int kFMR = 6;
#elif defined(__AVX2__)
constexpr int kFNV = 2;  // 6 x 2 accumulators + 2 weight vectors + 1 broadcast of 16 ymm
constexpr int kFMR = 6;
#elif defined(OCTAVO_ISA_NEON)
constexpr int kFNV = 4;  // DV = one q register of 4 lanes: 6 x 4 + 4 + 1 of 32
constexpr int kFMR = 6;
#else
constexpr int kFNV = 2;  // the portable DV: 8-lane arrays the compiler keeps where it can
constexpr int kFMR = 4;
#endif
constexpr int kFNR = kFNV * DV::L;  // columns per panel
constexpr int kFMC = 26 * kFMR;  // rows per L2 block of x

static inline int64_t fgemm_panels(int64_t N) { return (N + kFNR - 1) / kFNR; }

int64_t fgemm_packed_elems(int64_t N, int64_t K) { return fgemm_panels(N) * K * kFNR; }

template <typename T>
static void fgemm_pack_impl(const GemmPackArgs& a) {
  const T* w = static_cast<const T*>(a.w);
  T* out = static_cast<T*>(a.out);
  const int64_t panels = fgemm_panels(a.N);
#pragma omp parallel for num_threads(a.num_threads > 0 ? a.num_threads : 1) schedule(static)
  for (int64_t p = 0; p < panels; ++p) {
    T* dst = out + p * a.K * kFNR;
    for (int64_t k = 0; k < a.K; ++k)
      for (int c = 0; c < kFNR; ++c) {
        const int64_t n = p * kFNR + c;
        dst[k * kFNR + c] = n < a.N ? w[n * a.w_stride + k] : (T)0;
      }
  }
}

void fgemm_pack(const GemmPackArgs& a) {
  if (a.dtype == kF32) return fgemm_pack_impl<float>(a);
  fgemm_pack_impl<bf16>(a);
}

// MR rows of fp32 x (row stride xs) times one packed panel; writes min(cols, kFNR) columns.
template <typename T, int MR>
static inline void fgemm_tile(const float* x, int64_t xs, const T* wp, int64_t K, T* y, int64_t ys, int cols,
                              const float* bias) {
  using V = typename DV::V;
  V acc[MR][kFNV];
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < kFNV; ++j) acc[m][j] = DV::zero();
  for (int64_t k = 0; k < K; ++k) {
    const T* wk = wp + k * kFNR;
    V b[kFNV];
    for (int j = 0; j < kFNV; ++j) b[j] = DV::ld(wk + j * DV::L);
    for (int m = 0; m < MR; ++m) {
      const V av = DV::set1(x[m * xs + k]);
      for (int j = 0; j < kFNV; ++j) acc[m][j] = DV::fma(av, b[j], acc[m][j]);
    }
  }
  for (int j = 0; j < kFNV; ++j) {
    const int n = cols - DV::L * j;
    if (n <= 0) break;
    const V bv = bias ? (n >= DV::L ? DV::ld(bias + DV::L * j) : DV::ld(bias + DV::L * j, n)) : DV::zero();
    for (int m = 0; m < MR; ++m) {
      T* yr = y + m * ys + DV::L * j;
      if (n >= DV::L) {
        DV::st(yr, DV::add(acc[m][j], bv));
      } else {
        DV::st(yr, DV::add(acc[m][j], bv), n);
      }
    }
  }
}

template <typename T, int MR = kFMR>
static inline void fgemm_tile_any(int mr, const float* x, int64_t xs, const T* wp, int64_t K, T* y, int64_t ys,
                                  int cols, const float* bias) {
  if constexpr (MR > 1) {
    if (mr < MR) return fgemm_tile_any<T, MR - 1>(mr, x, xs, wp, K, y, ys, cols, bias);
  }
  fgemm_tile<T, MR>(x, xs, wp, K, y, ys, cols, bias);
}

// rows m0..m1 of y, panels q0..q1 (as gemm_bf16.h's gemm_block: a column block's panels
// stay in L2 while a row block's x tiles pass over them)
template <typename T>
static void fgemm_block(const GemmArgs& a, const float* x, int64_t xs, const float* bias, int64_t m0, int64_t m1,
                        int64_t q0, int64_t q1) {
  const T* wp = static_cast<const T*>(a.w_packed);
  T* y = static_cast<T*>(a.y);
  const int64_t panel = a.K * kFNR;
  int64_t nc = (256 * 1024) / (panel * (int64_t)sizeof(T));
  if (nc < 1) nc = 1;
  for (int64_t mc = m0; mc < m1; mc += kFMC) {
    const int64_t mc1 = mc + kFMC < m1 ? mc + kFMC : m1;
    for (int64_t p0 = q0; p0 < q1; p0 += nc) {
      const int64_t p1 = p0 + nc < q1 ? p0 + nc : q1;
      for (int64_t m = mc; m < mc1; m += kFMR) {
        const int mr = mc1 - m < kFMR ? (int)(mc1 - m) : kFMR;
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t n = p * kFNR;
          const int cols = a.N - n < kFNR ? (int)(a.N - n) : kFNR;
          fgemm_tile_any<T>(mr, x + m * xs, xs, wp + p * panel, a.K, y + m * a.y_stride + n, a.y_stride, cols,
                            bias ? bias + n : nullptr);
        }
      }
    }
  }
}

template <typename T>
static void fgemm_impl(const GemmArgs& a) {
  // x and bias as fp32 once; fp32 x is read in place
  const T* xin = static_cast<const T*>(a.x);
  Buf<float> xbuf(std::is_same_v<T, float> ? 0 : (size_t)a.M * a.K);
  const float* x;
  int64_t xs;
  if constexpr (std::is_same_v<T, float>) {
    x = xin;
    xs = a.x_stride;
  } else {
    for (int64_t m = 0; m < a.M; ++m) Ops::load(xin + m * a.x_stride, xbuf.data() + m * a.K, (int)a.K, 1.0f);
    x = xbuf.data();
    xs = a.K;
  }
  Buf<float> bias_f(a.bias ? (size_t)fgemm_panels(a.N) * kFNR : 0);
  if (a.bias) {
    const T* b = static_cast<const T*>(a.bias);
    for (int64_t n = 0; n < a.N; ++n) bias_f.data()[n] = to_f32(b[n]);
  }
  const float* bias = a.bias ? bias_f.data() : nullptr;
  // the thread split of gemm_bf16.h: panels for decode-sized M and weights past the L3,
  // kFMR-aligned row shares for prefill-sized M
  const int64_t tiles = (a.M + kFMR - 1) / kFMR, panels = fgemm_panels(a.N);
  const bool by_cols = a.M <= 128 || a.N * a.K * (int64_t)sizeof(T) > (int64_t)8 << 20;
  int nt = a.num_threads > 0 ? a.num_threads : 1;
  const int64_t parts = by_cols ? panels : tiles;
  if (nt > parts) nt = (int)parts;
  if (nt == 1) return fgemm_block<T>(a, x, xs, bias, 0, a.M, 0, panels);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), nth = omp_get_num_threads();
    const int64_t s0 = parts * t / nth, s1 = parts * (t + 1) / nth;
    if (by_cols) {
      fgemm_block<T>(a, x, xs, bias, 0, a.M, s0, s1);
    } else {
      fgemm_block<T>(a, x, xs, bias, s0 * kFMR, s1 * kFMR < a.M ? s1 * kFMR : a.M, 0, panels);
    }
  }
}

void fgemm(const GemmArgs& a) {
  if (a.M <= 0 || a.N <= 0) return;
  if (a.dtype == kF32) return fgemm_impl<float>(a);
  fgemm_impl<bf16>(a);
}

}  // namespace OCTAVO_ISA
}  // namespace octavo_cpu
