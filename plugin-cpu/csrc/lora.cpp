// Multi-LoRA kernels (FusedOps.lora_shrink / lora_expand, contract 2.3) on the CPU: every
// adapter of a batch on one layer in one call each, in float32 or bfloat16, sums in float32.
//
//   shrink: h[t, n, :] = A[slot t, n] @ x[t]        x [T, I], A [S, N, R, I], h [T, N, R]
//   expand: y[t, cols n] += h[t, n] @ B[slot t, :, cols n]    B [S, R, O], y [T, O]
//
// Core's torch definition groups the step's tokens by slot on the host and runs batched GEMMs
// over padded groups (a host sync and a dozen small torch launches per layer, in float32 copies
// of the weights). Here the grouping is a counting sort inside the call, the shrink runs each
// row of A once against every token of its slot (the row stays in cache across them) and the
// expand streams B's rows into a float32 accumulator per token and column block; threads split
// A's rows (shrink) and (token, column block) pairs (expand). Rounding is the definition's:
// float32 sums rounded once to the tensor's dtype, and the expand rounds d before adding it to y.
//
// Each loop body is compiled for AVX-512, AVX2 + FMA and the baseline (GCC's target_clones pick
// one at load time), so one build runs on any x86-64. Tensors cross as data pointers (see
// ops.cpp); the GIL is released while a kernel runs.
#include <pybind11/pybind11.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace py = pybind11;

namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define OCTAVO_LORA_CLONES __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#else
#define OCTAVO_LORA_CLONES
#endif

enum Dtype : int { kF32 = 0, kBf16 = 1 };  // as octavo_cpu._native's codes

inline float bf16_to_f32(uint16_t v) {
  uint32_t bits = (uint32_t)v << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// round to nearest even, as torch's float -> bfloat16 (NaN kept a quiet NaN)
inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);
  return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// the step's tokens in slot order: order[start[s] .. start[s + 1]) are slot s's tokens
struct Groups {
  std::vector<int64_t> order, start;
  std::vector<int> used;  // slots with tokens
  Groups(const int64_t* slots, int64_t tokens, int64_t num_slots) : start(num_slots + 1, 0) {
    for (int64_t t = 0; t < tokens; ++t)
      if (slots[t] >= 0 && slots[t] < num_slots) ++start[slots[t] + 1];
    for (int64_t s = 0; s < num_slots; ++s) {
      if (start[s + 1]) used.push_back((int)s);
      start[s + 1] += start[s];
    }
    order.resize(start[num_slots]);
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t t = 0; t < tokens; ++t)
      if (slots[t] >= 0 && slots[t] < num_slots) order[fill[slots[t]]++] = t;
  }
};

// Four tokens at a time against one row of A (shrink) or of B (expand): four independent sums
// (a single one would wait on the adder's latency) and each weight widened once for all four.
constexpr int kQuad = 4;

template <typename W>
inline float widen1(W v) {
  if constexpr (sizeof(W) == 2)
    return bf16_to_f32(v);
  else
    return v;
}

template <typename W>
OCTAVO_LORA_CLONES void dot4(const W* a, const float* const* x, int64_t n, float* out) {
  const float *x0 = x[0], *x1 = x[1], *x2 = x[2], *x3 = x[3];
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t i = 0; i < n; ++i) {
    const float av = widen1(a[i]);
    s0 += av * x0[i];
    s1 += av * x1[i];
    s2 += av * x2[i];
    s3 += av * x3[i];
  }
  out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
}

template <typename W>
OCTAVO_LORA_CLONES void axpy4(float* acc, int64_t ld, const float* h, const W* b, int64_t n) {
  const float h0 = h[0], h1 = h[1], h2 = h[2], h3 = h[3];
  float *a0 = acc, *a1 = acc + ld, *a2 = acc + 2 * ld, *a3 = acc + 3 * ld;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float bv = widen1(b[i]);
    a0[i] += h0 * bv;
    a1[i] += h1 * bv;
    a2[i] += h2 * bv;
    a3[i] += h3 * bv;
  }
}

// x rows as float32 (bf16 widened once per call, not once per row of A)
std::vector<float> widen(const void* x, int64_t stride, int64_t tokens, int64_t width, int dtype) {
  std::vector<float> out((size_t)(tokens * width));
  for (int64_t t = 0; t < tokens; ++t) {
    float* dst = out.data() + t * width;
    if (dtype == kF32) {
      std::memcpy(dst, (const float*)x + t * stride, (size_t)width * 4);
    } else {
      const uint16_t* src = (const uint16_t*)x + t * stride;
      for (int64_t i = 0; i < width; ++i) dst[i] = bf16_to_f32(src[i]);
    }
  }
  return out;
}

void shrink(void* h, const void* x, int64_t x_stride, const void* a, const int64_t* slots, int64_t tokens,
            int64_t num_slots, int64_t rows_per_slot, int64_t in, int dtype, int threads) {
  // h is [T, N * R] contiguous; rows_per_slot = N * R; a is [S, N * R, I] contiguous
  const int64_t hw = rows_per_slot;
  if (dtype == kF32)
    std::memset(h, 0, (size_t)(tokens * hw) * 4);
  else
    std::memset(h, 0, (size_t)(tokens * hw) * 2);
  Groups g(slots, tokens, num_slots);
  if (g.used.empty()) return;
  const std::vector<float> xf = widen(x, x_stride, tokens, in, dtype);
  const int64_t work = (int64_t)g.used.size() * hw;
#pragma omp parallel for schedule(static) num_threads(threads) if (work * in * (g.order.size()) > 65536)
  for (int64_t w = 0; w < work; ++w) {
    const int s = g.used[w / hw];
    const int64_t row = w % hw;
    for (int64_t k = g.start[s]; k < g.start[s + 1]; k += kQuad) {
      // up to four of the slot's tokens; a short quad repeats its last token and drops its sums
      const int64_t m = std::min<int64_t>(kQuad, g.start[s + 1] - k);
      const float* xs[kQuad];
      for (int q = 0; q < kQuad; ++q) xs[q] = xf.data() + g.order[k + std::min<int64_t>(q, m - 1)] * in;
      float sums[kQuad];
      if (dtype == kF32)
        dot4((const float*)a + ((int64_t)s * hw + row) * in, xs, in, sums);
      else
        dot4((const uint16_t*)a + ((int64_t)s * hw + row) * in, xs, in, sums);
      for (int64_t q = 0; q < m; ++q) {
        const int64_t t = g.order[k + q];
        if (dtype == kF32)
          ((float*)h)[t * hw + row] = sums[q];
        else
          ((uint16_t*)h)[t * hw + row] = f32_to_bf16(sums[q]);
      }
    }
  }
}

constexpr int64_t kCols = 512;  // the expand's column block: four float32 accumulators in L1

void expand(void* y, int64_t y_stride, const void* h, const void* b, const int64_t* slots, int64_t tokens,
            int64_t num_slots, int64_t slices, int64_t rank, int64_t out, const int64_t* slice_start, int dtype,
            int threads) {
  // h is [T, N, R] contiguous; b is [S, R, O] contiguous; slice n covers columns
  // slice_start[n] .. slice_start[n + 1]
  Groups g(slots, tokens, num_slots);
  if (g.used.empty()) return;
  // quads of one slot's tokens (they share B's rows), and column blocks that never straddle
  // two slices (each slice has its own h)
  std::vector<int64_t> quads;  // first place in g.order
  for (int s : g.used)
    for (int64_t k = g.start[s]; k < g.start[s + 1]; k += kQuad) quads.push_back(k);
  std::vector<int64_t> block_start, block_slice;
  for (int64_t n = 0; n < slices; ++n)
    for (int64_t c = slice_start[n]; c < slice_start[n + 1]; c += kCols) {
      block_start.push_back(c);
      block_slice.push_back(n);
    }
  const int64_t nb = (int64_t)block_start.size();
  const int64_t work = (int64_t)quads.size() * nb;
#pragma omp parallel for schedule(static) num_threads(threads) if (work * kCols * rank > 65536)
  for (int64_t w = 0; w < work; ++w) {
    const int64_t k = quads[w / nb], blk = w % nb, n = block_slice[blk];
    const int64_t s = slots[g.order[k]];
    const int64_t m = std::min<int64_t>(kQuad, g.start[s + 1] - k);
    const int64_t c0 = block_start[blk], c1 = std::min(c0 + kCols, slice_start[n + 1]), width = c1 - c0;
    float acc[kQuad * kCols];
    std::fill(acc, acc + kQuad * kCols, 0.f);
    for (int64_t r = 0; r < rank; ++r) {
      float hv[kQuad] = {0.f, 0.f, 0.f, 0.f};  // a short quad's missing tokens add nothing
      for (int64_t q = 0; q < m; ++q) {
        const int64_t hi = (g.order[k + q] * slices + n) * rank + r;
        hv[q] = dtype == kF32 ? ((const float*)h)[hi] : bf16_to_f32(((const uint16_t*)h)[hi]);
      }
      if (hv[0] == 0.f && hv[1] == 0.f && hv[2] == 0.f && hv[3] == 0.f) continue;  // a padded rank
      const int64_t bi = (s * rank + r) * out + c0;
      if (dtype == kF32)
        axpy4(acc, kCols, hv, (const float*)b + bi, width);
      else
        axpy4(acc, kCols, hv, (const uint16_t*)b + bi, width);
    }
    for (int64_t q = 0; q < m; ++q) {
      const int64_t t = g.order[k + q];
      const float* aq = acc + q * kCols;
      if (dtype == kF32) {
        float* yr = (float*)y + t * y_stride + c0;
        for (int64_t c = 0; c < width; ++c) yr[c] += aq[c];
      } else {
        uint16_t* yr = (uint16_t*)y + t * y_stride + c0;
        for (int64_t c = 0; c < width; ++c) yr[c] = f32_to_bf16(bf16_to_f32(yr[c]) + bf16_to_f32(f32_to_bf16(aq[c])));
      }
    }
  }
}

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

}  // namespace

PYBIND11_MODULE(_lora, m) {
  m.doc() = "multi-LoRA shrink and expand on the CPU (FusedOps.lora_shrink / lora_expand)";
  m.def(
      "lora_shrink",
      [](uintptr_t h, uintptr_t x, int64_t x_stride, uintptr_t a, uintptr_t slots, int64_t tokens,
         int64_t num_slots, int64_t rows_per_slot, int64_t in, int dtype, int threads) {
        py::gil_scoped_release nogil;
        shrink(ptr<void>(h), ptr<const void>(x), x_stride, ptr<const void>(a), ptr<const int64_t>(slots), tokens,
               num_slots, rows_per_slot, in, dtype, threads);
      },
      "h [T, N*R] = A[slot t] @ x[t] per token (zeros for slot -1); float32 sums, one rounding");
  m.def(
      "lora_expand",
      [](uintptr_t y, int64_t y_stride, uintptr_t h, uintptr_t b, uintptr_t slots, int64_t tokens, int64_t num_slots,
         int64_t slices, int64_t rank, int64_t out, uintptr_t slice_start, int dtype, int threads) {
        py::gil_scoped_release nogil;
        expand(ptr<void>(y), y_stride, ptr<const void>(h), ptr<const void>(b), ptr<const int64_t>(slots), tokens,
               num_slots, slices, rank, out, ptr<const int64_t>(slice_start), dtype, threads);
      },
      "y[t, cols of slice n] += round(h[t, n] @ B[slot t, :, those cols]) in place; float32 sums");
}
