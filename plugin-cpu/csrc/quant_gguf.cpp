// GGUF block types kept quantized on the CPU: Q4_0, Q4_1 and Q8_0 weights in llama.cpp's
// byte layout (octavo.quantization.scheme's "gguf" layout: each weight row its blocks of 32).
//
// The GEMV of a decode (up to 16 rows of x) multiplies in integers, as llama.cpp does: each
// row of x is rounded once per call to blocks of 32 int8 values with a float32 scale
// (dx = max|x| / 127, qx = round-to-nearest-even(x * 127 / max|x|)), then each weight block's
// integers meet the activation block's in one integer dot product and a block contributes
//   dw * dx * sum(qw * qx) + (m - off * dw) * dx * sum(qx)
// where qw are the stored unsigned nibbles (Q4_0: off = 8, m = 0; Q4_1: off = 0, m its offset)
// or the signed bytes of Q8_0 (off = m = 0). So the result is the kit's reference on the
// rounded activations (tests/.. compare exactly that), not on x itself: this is what makes the
// kernel read 4.5-5 bits per weight and spend one multiply-add instruction per 4 of them
// (AVX-512 VNNI vpdpbusd on 8 lanes of a block; AVX2 vpmaddubsw + vpmaddwd) instead of
// widening every weight to float32.
//
// The GEMM of a prefill dequantizes the weight (dequantize) and runs torch's on float32 x
// (no activation rounding there). Tensors cross as data pointers (see ops.cpp); the GIL is
// released while a kernel runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace py = pybind11;

namespace {

enum BlockType : int { kQ4_0 = 0, kQ4_1 = 1, kQ8_0 = 2 };
enum Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512Vnni = 2 };
constexpr int kBlock = 32;
constexpr int kTile = 4;  // rows of x per pass over the weights

int block_bytes(int type) { return type == kQ4_0 ? 18 : type == kQ4_1 ? 20 : 34; }
// the constant subtracted from a stored weight integer (see the header)
int weight_offset(int type) { return type == kQ4_0 ? 8 : 0; }

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

float load_half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return half_to_float(h);
}

// a block's scale d, offset m (Q4_1; else 0) and its 32 stored integers (Q4 nibbles unsigned)
struct Decoded {
  float d, m;
  int32_t q[kBlock];
};

void decode(int type, const uint8_t* b, Decoded& out) {
  out.d = load_half(b);
  out.m = type == kQ4_1 ? load_half(b + 2) : 0.0f;
  if (type == kQ8_0) {
    for (int j = 0; j < kBlock; ++j) out.q[j] = static_cast<int8_t>(b[2 + j]);
    return;
  }
  const uint8_t* qs = b + (type == kQ4_1 ? 4 : 2);
  for (int j = 0; j < 16; ++j) {
    out.q[j] = qs[j] & 0xF;
    out.q[j + 16] = qs[j] >> 4;
  }
}

// x rounded to int8 blocks: per row and block its scale dx and dx * sum(qx)
struct QuantizedRows {
  int64_t rows, nb;
  std::vector<int8_t> q;  // [rows, nb * 32]
  std::vector<float> d, ds;  // [rows, nb]
};

void quantize_rows(const float* x, int64_t rows, int64_t x_stride, int64_t k, QuantizedRows& out) {
  const int64_t nb = k / kBlock;
  out.rows = rows;
  out.nb = nb;
  out.q.resize(rows * k);
  out.d.resize(rows * nb);
  out.ds.resize(rows * nb);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < nb; ++b) {
      const float* xb = x + r * x_stride + b * kBlock;
      float amax = 0.0f;
      for (int j = 0; j < kBlock; ++j) amax = std::fmax(amax, std::fabs(xb[j]));
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      int8_t* q = out.q.data() + r * k + b * kBlock;
      int32_t sum = 0;
      for (int j = 0; j < kBlock; ++j) {
        q[j] = static_cast<int8_t>(std::nearbyint(xb[j] * inv));  // the default mode: to nearest, ties to even
        sum += q[j];
      }
      out.d[r * nb + b] = amax / 127.0f;
      out.ds[r * nb + b] = out.d[r * nb + b] * static_cast<float>(sum);
    }
}

// ---- portable kernels ------------------------------------------------------------------------
void dequantize_rows_generic(int type, const uint8_t* w, int64_t n0, int64_t n1, int64_t k, float* out) {
  const int64_t nb = k / kBlock, bytes = block_bytes(type);
  const int off = weight_offset(type);
  Decoded blk;
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t b = 0; b < nb; ++b) {
      decode(type, w + (n * nb + b) * bytes, blk);
      float* o = out + n * k + b * kBlock;
      for (int j = 0; j < kBlock; ++j) o[j] = blk.d * static_cast<float>(blk.q[j] - off) + blk.m;
    }
  }
}

void gemv_rows_generic(int type, const uint8_t* w, int64_t n0, int64_t n1, int64_t k, const QuantizedRows& x,
                       float* y, int64_t y_stride) {
  const int64_t nb = k / kBlock, bytes = block_bytes(type);
  const int off = weight_offset(type);
  Decoded blk;
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t r = 0; r < x.rows; ++r) {
      float acc = 0.0f, acc_offset = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        decode(type, w + (n * nb + b) * bytes, blk);
        const int8_t* qx = x.q.data() + r * k + b * kBlock;
        int32_t dot = 0;
        for (int j = 0; j < kBlock; ++j) dot += blk.q[j] * qx[j];
        acc += blk.d * x.d[r * nb + b] * static_cast<float>(dot);
        acc_offset += (blk.m - static_cast<float>(off) * blk.d) * x.ds[r * nb + b];
      }
      y[r * y_stride + n] = acc + acc_offset;
    }
  }
}

#if defined(__x86_64__)
// ---- AVX2 / AVX-512 VNNI: one block of 32 integers is one 256-bit vector --------------------
// The weight block as unsigned bytes and the activation block as signed ones, as the unsigned x
// signed byte products (vpmaddubsw, vpdpbusd) take them. Q8_0's signed weights become |w| and
// x carries their signs (vpsignb), so every product keeps its value.
#define OCTAVO_X86_INT "avx2,fma,f16c"
__attribute__((target(OCTAVO_X86_INT))) inline void block_operands(int type, const uint8_t* b, const int8_t* qx,
                                                                  __m256i& wu, __m256i& xs) {
  const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx));
  if (type == kQ8_0) {
    const __m256i ws = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2));
    wu = _mm256_sign_epi8(ws, ws);
    xs = _mm256_sign_epi8(x, ws);
    return;
  }
  // 16 bytes of nibble pairs: the low nibbles are inputs 0-15, the high ones 16-31
  const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + (type == kQ4_1 ? 4 : 2)));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
  wu = _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
  xs = x;
}

__attribute__((target(OCTAVO_X86_INT))) inline __m256i dot_avx2(__m256i wu, __m256i xs) {
  // pairs of products (at most 2 * 128 * 127, no saturation) then quads, in int32 lanes
  return _mm256_madd_epi16(_mm256_maddubs_epi16(wu, xs), _mm256_set1_epi16(1));
}

__attribute__((target(OCTAVO_X86_INT ",avx512f,avx512vl,avx512vnni"))) inline __m256i dot_vnni(__m256i wu,
                                                                                                 __m256i xs) {
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), wu, xs);
}

// the tile kernel once per instruction set (each its own target: an AVX2 build must not pick up
// EVEX encodings the VNNI one may use)
#define OCTAVO_TILE_NAME gemv_tile_avx2
#define OCTAVO_TILE_TARGET OCTAVO_X86_INT
#define OCTAVO_TILE_DOT dot_avx2
#include "quant_gguf_tile.h"
#define OCTAVO_TILE_NAME gemv_tile_vnni
#define OCTAVO_TILE_TARGET OCTAVO_X86_INT ",avx512f,avx512vl,avx512vnni"
#define OCTAVO_TILE_DOT dot_vnni
#include "quant_gguf_tile.h"

template <bool Vnni>
void gemv_rows_int(int type, const uint8_t* w, int64_t n0, int64_t n1, int64_t k, const QuantizedRows& x, float* y,
                   int64_t y_stride) {
  for (int64_t r = 0; r < x.rows; r += kTile) {
    switch (x.rows - r >= kTile ? kTile : x.rows - r) {
      case 1: (Vnni ? gemv_tile_vnni<1> : gemv_tile_avx2<1>)(type, w, n0, n1, k, x, r, y, y_stride); break;
      case 2: (Vnni ? gemv_tile_vnni<2> : gemv_tile_avx2<2>)(type, w, n0, n1, k, x, r, y, y_stride); break;
      case 3: (Vnni ? gemv_tile_vnni<3> : gemv_tile_avx2<3>)(type, w, n0, n1, k, x, r, y, y_stride); break;
      default: (Vnni ? gemv_tile_vnni<kTile> : gemv_tile_avx2<kTile>)(type, w, n0, n1, k, x, r, y, y_stride); break;
    }
  }
}

// ---- AVX-512 dequantization (prefill): one block is two vectors of 16 floats -----------------
__attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma"))) void dequantize_rows_avx512(
    int type, const uint8_t* w, int64_t n0, int64_t n1, int64_t k, float* out) {
  const int64_t nb = k / kBlock, bytes = block_bytes(type);
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = w + (n * nb + b) * bytes;
      const float d = _cvtsh_ss(*reinterpret_cast<const uint16_t*>(blk));
      float m = type == kQ4_1 ? _cvtsh_ss(*reinterpret_cast<const uint16_t*>(blk + 2)) : 0.0f;
      __m512 lo, hi;
      if (type == kQ8_0) {
        lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2))));
        hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 18))));
      } else {
        // one byte-to-dword widening, then both nibbles of each dword (inputs j and j + 16)
        const __m512i v =
            _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + (type == kQ4_1 ? 4 : 2))));
        lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(0x0F)));
        hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
        // Q4_0's d * (q - 8) as d * q + m with m = -8d (exact: both terms and their sum fit float32)
        if (type == kQ4_0) m = -8.0f * d;
      }
      const __m512 vd = _mm512_set1_ps(d), vm = _mm512_set1_ps(m);
      float* o = out + n * k + b * kBlock;
      _mm512_storeu_ps(o, _mm512_fmadd_ps(lo, vd, vm));
      _mm512_storeu_ps(o + 16, _mm512_fmadd_ps(hi, vd, vm));
    }
  }
}

bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool cpu_has_avx512() {
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
}
bool cpu_has_avx512_vnni() { return cpu_has_avx512() && __builtin_cpu_supports("avx512vnni"); }
#else
bool cpu_has_avx2() { return false; }
bool cpu_has_avx512() { return false; }
bool cpu_has_avx512_vnni() { return false; }
#endif

const char* kIsaNames[] = {"generic", "avx2", "avx512_vnni"};

int best_isa() { return cpu_has_avx512_vnni() ? kAvx512Vnni : cpu_has_avx2() ? kAvx2 : kGeneric; }

int g_isa = best_isa();

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
  m.def("isa", []() { return std::string(kIsaNames[g_isa]); });
  m.def("supported_isas", []() {
    std::vector<std::string> out;
    for (int i = 0; i <= best_isa(); ++i) out.emplace_back(kIsaNames[i]);
    return out;
  });
  m.def("set_isa", [](const std::string& name) {
    for (int i = 0; i <= best_isa(); ++i)
      if (name == kIsaNames[i]) {
        g_isa = i;
        return;
      }
    throw std::invalid_argument("octavo_cpu._quant: instruction set '" + name +
                                "' is not one this CPU runs; use one of supported_isas()");
  });
  // y[r, n] = sum_i dequant(w)[n, i] * round_q8(x)[r, i]; x float32 [rows, k] (row stride x_stride), y float32
  m.def(
      "gemv",
      [](int type, uintptr_t w, int64_t n, int64_t k, uintptr_t x, int64_t rows, int64_t x_stride, uintptr_t y,
         int64_t y_stride, int threads) {
        check_type(type);
        py::gil_scoped_release release;
        QuantizedRows qx;
        quantize_rows(reinterpret_cast<const float*>(x), rows, x_stride, k, qx);
        const uint8_t* wp = reinterpret_cast<const uint8_t*>(w);
        float* yp = reinterpret_cast<float*>(y);
        const int isa = g_isa;
        parallel_rows(n, threads, [&](int64_t n0, int64_t n1) {
#if defined(__x86_64__)
          if (isa == kAvx512Vnni) return gemv_rows_int<true>(type, wp, n0, n1, k, qx, yp, y_stride);
          if (isa == kAvx2) return gemv_rows_int<false>(type, wp, n0, n1, k, qx, yp, y_stride);
#endif
          gemv_rows_generic(type, wp, n0, n1, k, qx, yp, y_stride);
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
        const bool avx512 = g_isa == kAvx512Vnni;
        parallel_rows(n, threads, [&](int64_t n0, int64_t n1) {
#if defined(__x86_64__)
          if (avx512) return dequantize_rows_avx512(type, wp, n0, n1, k, op);
#endif
          dequantize_rows_generic(type, wp, n0, n1, k, op);
        });
      },
      py::arg("type"), py::arg("w"), py::arg("n"), py::arg("k"), py::arg("out"), py::arg("threads"));
}
