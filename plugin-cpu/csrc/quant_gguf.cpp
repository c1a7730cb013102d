// GGUF block types kept quantized on the CPU: Q4_0, Q4_1 and Q8_0 weights in llama.cpp's
// byte layout (octavo.quantization.scheme's "gguf" layout: each weight row its blocks of 32),
// multiplied with float32 activations. A module of its own (octavo_cpu._quant) so that it
// builds beside the dense kernels without sharing their dispatch table.
//
// Semantics are the kit's reference (octavo_plugin_kit.reference_quant): each weight is
// dequantized exactly (d * q, d * q + m, d * (q - 8)) and multiplied with the float32 input;
// no activation rounding (llama.cpp rounds activations to 8 bits; this does not, so results
// match the dequantized model up to float32 summation order). Per block and row the kernel
// computes d * sum(q * x) + m * sum(x), with sum(x) per block taken once per input row.
//
// gemv: up to kTile rows of x against all output rows, each weight block decoded once for
// the tile; the GEMM of a prefill dequantizes the weight (dequantize) and runs torch's.
// Tensors cross as data pointers (see ops.cpp); the GIL is released while a kernel runs.
#include <pybind11/pybind11.h>
#include <omp.h>

#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace py = pybind11;

namespace {

enum BlockType : int { kQ4_0 = 0, kQ4_1 = 1, kQ8_0 = 2 };
constexpr int kBlock = 32;
constexpr int kTile = 4;  // rows of x per pass over the weights

int block_bytes(int type) { return type == kQ4_0 ? 18 : type == kQ4_1 ? 20 : 34; }

float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: renormalize
      int e = -1;
      uint32_t m = man;
      do {
        ++e;
        m <<= 1;
      } while (!(m & 0x400));
      bits = sign | ((127 - 15 - e) << 23) | ((m & 0x3FF) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// a block's scale d, offset m (Q4_1; else 0) and 32 integer values (Q4_0 without its -8)
struct Decoded {
  float d, m;
  int32_t q[kBlock];
};

void decode(int type, const uint8_t* b, Decoded& out) {
  uint16_t h;
  std::memcpy(&h, b, 2);
  out.d = half_to_float(h);
  out.m = 0.0f;
  if (type == kQ8_0) {
    for (int j = 0; j < kBlock; ++j) out.q[j] = static_cast<int8_t>(b[2 + j]);
    return;
  }
  const uint8_t* qs = b + 2;
  if (type == kQ4_1) {
    std::memcpy(&h, b + 2, 2);
    out.m = half_to_float(h);
    qs = b + 4;
  }
  const int offset = type == kQ4_0 ? -8 : 0;
  for (int j = 0; j < 16; ++j) {
    out.q[j] = (qs[j] & 0xF) + offset;
    out.q[j + 16] = (qs[j] >> 4) + offset;
  }
}

// ---- portable kernels ------------------------------------------------------------------------
void dequantize_rows_generic(int type, const uint8_t* w, int64_t n0, int64_t n1, int64_t k, float* out) {
  const int64_t nb = k / kBlock, bytes = block_bytes(type);
  Decoded blk;
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t b = 0; b < nb; ++b) {
      decode(type, w + (n * nb + b) * bytes, blk);
      float* o = out + n * k + b * kBlock;
      for (int j = 0; j < kBlock; ++j) o[j] = blk.d * static_cast<float>(blk.q[j]) + blk.m;
    }
  }
}

void gemv_rows_generic(int type, const uint8_t* w, int64_t n0, int64_t n1, int64_t k, const float* x,
                       int64_t rows, int64_t x_stride, const float* xsum, float* y, int64_t y_stride) {
  const int64_t nb = k / kBlock, bytes = block_bytes(type);
  Decoded blk;
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t r = 0; r < rows; ++r) {
      float acc = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        decode(type, w + (n * nb + b) * bytes, blk);
        const float* xb = x + r * x_stride + b * kBlock;
        float dot = 0.0f;
        for (int j = 0; j < kBlock; ++j) dot += static_cast<float>(blk.q[j]) * xb[j];
        acc += blk.d * dot + blk.m * xsum[r * nb + b];
      }
      y[r * y_stride + n] = acc;
    }
  }
}

#if defined(__x86_64__)
// ---- AVX-512: one block is two vectors of 16 values -----------------------------------------
__attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma"))) inline void decode16x2(int type, const uint8_t* b,
                                                                                     __m512& lo, __m512& hi,
                                                                                     float& d, float& m) {
  uint16_t h;
  std::memcpy(&h, b, 2);
  d = _cvtsh_ss(h);
  m = 0.0f;
  if (type == kQ8_0) {
    lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2))));
    hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 18))));
    return;
  }
  const uint8_t* qs = b + 2;
  if (type == kQ4_1) {
    std::memcpy(&h, b + 2, 2);
    m = _cvtsh_ss(h);
    qs = b + 4;
  }
  // one byte-to-dword widening (the shuffle port is the bottleneck), then both nibbles of
  // each dword: the low one is input j, the high one input j + 16
  const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
  lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(0x0F)));
  hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
  // Q4_0's d * (q - 8) as d * q + m with m = -8d (exact: both terms and their sum fit float32)
  if (type == kQ4_0) m = -8.0f * d;
}

__attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma"))) void dequantize_rows_avx512(
    int type, const uint8_t* w, int64_t n0, int64_t n1, int64_t k, float* out) {
  const int64_t nb = k / kBlock, bytes = block_bytes(type);
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t b = 0; b < nb; ++b) {
      __m512 lo, hi;
      float d, m;
      decode16x2(type, w + (n * nb + b) * bytes, lo, hi, d, m);
      const __m512 vd = _mm512_set1_ps(d), vm = _mm512_set1_ps(m);
      float* o = out + n * k + b * kBlock;
      _mm512_storeu_ps(o, _mm512_fmadd_ps(lo, vd, vm));
      _mm512_storeu_ps(o + 16, _mm512_fmadd_ps(hi, vd, vm));
    }
  }
}

template <int R>
__attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma"))) void gemv_tile_avx512(
    int type, const uint8_t* w, int64_t n0, int64_t n1, int64_t k, const float* x, int64_t x_stride,
    const float* xsum, float* y, int64_t y_stride) {
  const int64_t nb = k / kBlock, bytes = block_bytes(type);
  for (int64_t n = n0; n < n1; ++n) {
    __m512 acc[R];
    float accm[R];
    for (int r = 0; r < R; ++r) {
      acc[r] = _mm512_setzero_ps();
      accm[r] = 0.0f;
    }
    const uint8_t* row = w + n * nb * bytes;
    for (int64_t b = 0; b < nb; ++b) {
      __m512 lo, hi;
      float d, m;
      decode16x2(type, row + b * bytes, lo, hi, d, m);
      const __m512 vd = _mm512_set1_ps(d);
      for (int r = 0; r < R; ++r) {
        const float* xb = x + r * x_stride + b * kBlock;
        const __m512 t = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb + 16), _mm512_mul_ps(lo, _mm512_loadu_ps(xb)));
        acc[r] = _mm512_fmadd_ps(vd, t, acc[r]);
        accm[r] += m * xsum[r * nb + b];
      }
    }
    for (int r = 0; r < R; ++r) y[r * y_stride + n] = _mm512_reduce_add_ps(acc[r]) + accm[r];
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma"))) void gemv_rows_avx512(
    int type, const uint8_t* w, int64_t n0, int64_t n1, int64_t k, const float* x, int64_t rows, int64_t x_stride,
    const float* xsum, float* y, int64_t y_stride) {
  const int64_t nb = k / kBlock;
  for (int64_t r = 0; r < rows; r += kTile) {
    const float* xr = x + r * x_stride;
    const float* sr = xsum + r * nb;
    float* yr = y + r * y_stride;
    switch (rows - r >= kTile ? kTile : rows - r) {
      case 1: gemv_tile_avx512<1>(type, w, n0, n1, k, xr, x_stride, sr, yr, y_stride); break;
      case 2: gemv_tile_avx512<2>(type, w, n0, n1, k, xr, x_stride, sr, yr, y_stride); break;
      case 3: gemv_tile_avx512<3>(type, w, n0, n1, k, xr, x_stride, sr, yr, y_stride); break;
      default: gemv_tile_avx512<kTile>(type, w, n0, n1, k, xr, x_stride, sr, yr, y_stride); break;
    }
  }
}

bool has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
}
#else
bool has_avx512() { return false; }
#endif

bool g_avx512 = has_avx512();

// output rows split evenly across threads, in chunks of 16 so no two threads share a cache line of y
template <typename F>
void parallel_rows(int64_t n, int threads, F&& body) {
  const int64_t chunks = (n + 15) / 16;
  const int nt = threads > 0 ? threads : 1;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t n0 = c * 16, n1 = n0 + 16 < n ? n0 + 16 : n;
    body(n0, n1);
  }
}

void check_type(int type) {
  if (type < kQ4_0 || type > kQ8_0) throw std::invalid_argument("unknown GGUF block type code");
}

}  // namespace

PYBIND11_MODULE(_quant, m) {
  m.doc() = "octavo-cpu kernels for GGUF Q4_0 / Q4_1 / Q8_0 weights (csrc/quant_gguf.cpp)";
  m.def("isa", []() { return std::string(g_avx512 ? "avx512" : "generic"); });
  m.def("set_generic", [](bool generic) { g_avx512 = !generic && has_avx512(); });
  // y[r, n] = sum_i dequant(w)[n, i] * x[r, i]; x float32 [rows, k] (row stride x_stride), y float32
  m.def(
      "gemv",
      [](int type, uintptr_t w, int64_t n, int64_t k, uintptr_t x, int64_t rows, int64_t x_stride, uintptr_t y,
         int64_t y_stride, int threads) {
        check_type(type);
        py::gil_scoped_release release;
        const float* xp = reinterpret_cast<const float*>(x);
        const int64_t nb = k / kBlock;
        std::vector<float> xsum(rows * nb);  // each row's sum over each block, for the offsets
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t b = 0; b < nb; ++b) {
            float s = 0.0f;
            for (int j = 0; j < kBlock; ++j) s += xp[r * x_stride + b * kBlock + j];
            xsum[r * nb + b] = s;
          }
        const uint8_t* wp = reinterpret_cast<const uint8_t*>(w);
        float* yp = reinterpret_cast<float*>(y);
        parallel_rows(n, threads, [&](int64_t n0, int64_t n1) {
#if defined(__x86_64__)
          if (g_avx512) return gemv_rows_avx512(type, wp, n0, n1, k, xp, rows, x_stride, xsum.data(), yp, y_stride);
#endif
          gemv_rows_generic(type, wp, n0, n1, k, xp, rows, x_stride, xsum.data(), yp, y_stride);
        });
      },
      py::arg("type"), py::arg("w"), py::arg("n"), py::arg("k"), py::arg("x"), py::arg("rows"), py::arg("x_stride"),
      py::arg("y"), py::arg("y_stride"), py::arg("threads"));
  // out float32 [n, k] = the weight, dequantized
  m.def(
      "dequantize",
      [](int type, uintptr_t w, int64_t n, int64_t k, uintptr_t out, int threads) {
        check_type(type);
        py::gil_scoped_release release;
        const uint8_t* wp = reinterpret_cast<const uint8_t*>(w);
        float* op = reinterpret_cast<float*>(out);
        parallel_rows(n, threads, [&](int64_t n0, int64_t n1) {
#if defined(__x86_64__)
          if (g_avx512) return dequantize_rows_avx512(type, wp, n0, n1, k, op);
#endif
          dequantize_rows_generic(type, wp, n0, n1, k, op);
        });
      },
      py::arg("type"), py::arg("w"), py::arg("n"), py::arg("k"), py::arg("out"), py::arg("threads"));
}
