// The kernels, written once over a vector-ops policy `Ops` and compiled once per ISA:
// kernels_generic.cpp (baseline x86-64 / any CPU) and kernels_avx512.cpp define `Ops`
// in namespace octavo_cpu::OCTAVO_ISA, then include this file. No include guard: each
// translation unit includes it exactly once.
//
// Ops works on fp32 buffers: load/store convert from/to the storage dtype (float or
// bf16 as uint16_t), dot/axpy/scal/max/exp_sum are the attention inner loops.

#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "kernels.h"

namespace octavo_cpu {
namespace OCTAVO_ISA {

// No std:: containers or inline std:: math here: their out-of-line copies are shared
// between translation units by the linker, and the one compiled with AVX-512 flags
// could end up serving the generic path. Only this namespace's own code and C calls.
using bf16 = uint16_t;
#ifndef OCTAVO_PF
#define OCTAVO_PF 2  // prefetch distance in blocks
#endif

template <typename T>
struct Buf {  // a heap array freed at scope exit
  T* p;
  explicit Buf(size_t n) : p(static_cast<T*>(calloc(n ? n : 1, sizeof(T)))) {}
  ~Buf() { free(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  T& operator[](size_t i) { return p[i]; }
  T* data() { return p; }
};

// K or V row of the cache as fp32: fp32 rows are read in place, bf16 rows converted.
template <typename T>
static inline const float* row_f32(const T* p, float* buf, int n) {
  if constexpr (std::is_same_v<T, float>) {
    (void)buf;
    (void)n;
    return p;
  } else {
    Ops::load(p, buf, n, 1.0f);
    return buf;
  }
}

// One work item: request `seq`, KV head `kvh`, query tokens q0..q1-1 of the request.
// All query heads of the KV head's group (and all tokens of the tile) are processed
// together, so each K/V row is read and converted once per item. Online softmax over
// one cache block at a time, fp32 accumulation.
template <typename TQ, typename TKV>
static void attend_item(const AttnArgs& a, int seq, int kvh, int q0, int q1, float* ws, int* pos_ws) {
  const int G = a.num_heads / a.num_kv_heads;
  const int D = a.head_dim;
  const int bs = a.block_size;
  const int qs = a.query_start_loc[seq];
  const int q_len = a.query_start_loc[seq + 1] - qs;
  const int S = a.seq_lens[seq];
  const int R = (q1 - q0) * G;  // rows: token-major, then head within the group
  const int W = a.sliding_window;

  float* qf = ws;  // [R, D] scaled queries
  float* acc = qf + (size_t)R * D;  // [R, D]
  float* m = acc + (size_t)R * D;  // [R] running max
  float* l = m + R;  // [R] running sum
  float* sc = l + R;  // [R, bs] scores, then probabilities, of one block
  float* kbuf = sc + (size_t)R * bs;  // [D]
  float* vbuf = kbuf + D;  // [D]
  int* hi = pos_ws;  // [R] last visible position (the query's own)
  int* lo = pos_ws + R;  // [R] first visible position

  const TQ* q = static_cast<const TQ*>(a.q);
  for (int r = 0; r < R; ++r) {
    const int qi = r / G, h = kvh * G + r % G;
    const int64_t t = qs + q0 + qi;
    Ops::load(q + t * a.q_stride_t + h * a.q_stride_h, qf + (size_t)r * D, D, a.scale);
    memset(acc + (size_t)r * D, 0, sizeof(float) * D);
    m[r] = -INFINITY;
    l[r] = 0.0f;
    hi[r] = S - q_len + q0 + qi;
    lo[r] = (W > 0 && hi[r] - W + 1 > 0) ? hi[r] - W + 1 : 0;
  }
  const int kstart = lo[0], kend = hi[R - 1] + 1;  // the tile's key range
  const bool all_visible = (R == G) || (lo[R - 1] == kstart && hi[0] == kend - 1);

  const TKV* kv = static_cast<const TKV*>(a.kv);
  const int32_t* table = a.block_tables + (int64_t)seq * a.bt_stride;
  for (int b = kstart / bs; (int64_t)b * bs < kend; ++b) {
    const int t0 = b * bs > kstart ? b * bs : kstart;
    const int t1 = (b + 1) * bs < kend ? (b + 1) * bs : kend;
    const int n = t1 - t0;
    const TKV* kbase = kv + (int64_t)table[b] * a.kv_stride_block + (int64_t)kvh * a.kv_stride_head +
                       (int64_t)(t0 - b * bs) * a.kv_stride_tok;
    const TKV* vbase = kbase + a.kv_stride_kv;
    if ((int64_t)(b + OCTAVO_PF) * bs < kend) {
      // blocks lie anywhere in memory, out of the hardware prefetcher's sight: fetch the
      // rows of a block a little ahead while this one computes
      const TKV* next = kv + (int64_t)table[b + OCTAVO_PF] * a.kv_stride_block + (int64_t)kvh * a.kv_stride_head;
      const int row_bytes = D * (int)sizeof(TKV);
      for (int j = 0; j < bs; ++j) {
        const char* kp = reinterpret_cast<const char*>(next + (int64_t)j * a.kv_stride_tok);
        const char* vp = reinterpret_cast<const char*>(next + a.kv_stride_kv + (int64_t)j * a.kv_stride_tok);
        for (int off = 0; off < row_bytes; off += 64) {
          __builtin_prefetch(kp + off);
          __builtin_prefetch(vp + off);
        }
      }
    }

    for (int j = 0; j < n; ++j) {
      const float* k = row_f32(kbase + (int64_t)j * a.kv_stride_tok, kbuf, D);
      const int p = t0 + j;
      for (int r = 0; r < R; ++r) {
        const bool vis = all_visible || (p >= lo[r] && p <= hi[r]);
        sc[(size_t)r * bs + j] = vis ? Ops::dot(qf + (size_t)r * D, k, D) : -INFINITY;
      }
    }
    for (int r = 0; r < R; ++r) {
      float* s = sc + (size_t)r * bs;
      const float bmax = Ops::max(s, n);
      if (bmax == -INFINITY) {  // nothing of this block is visible to row r
        memset(s, 0, sizeof(float) * n);
        continue;
      }
      const float mnew = m[r] > bmax ? m[r] : bmax;
      const float alpha = expf(m[r] - mnew);  // 0 on the first visible block
      l[r] = l[r] * alpha + Ops::exp_sum(s, n, mnew);
      if (alpha != 1.0f) Ops::scal(acc + (size_t)r * D, alpha, D);
      m[r] = mnew;
    }
    for (int j = 0; j < n; ++j) {
      const float* v = row_f32(vbase + (int64_t)j * a.kv_stride_tok, vbuf, D);
      for (int r = 0; r < R; ++r) {
        const float pr = sc[(size_t)r * bs + j];
        if (pr != 0.0f) Ops::axpy(acc + (size_t)r * D, pr, v, D);
      }
    }
  }

  TQ* out = static_cast<TQ*>(a.out);
  for (int r = 0; r < R; ++r) {
    const int qi = r / G, h = kvh * G + r % G;
    const int64_t t = qs + q0 + qi;
    // a query sees at least itself, so l > 0; padding rows (seq_len 0, as padded decode
    // batches may carry) see nothing and get zeros rather than 0/0
    Ops::store(acc + (size_t)r * D, out + t * a.o_stride_t + h * a.o_stride_h, D, l[r] > 0.0f ? 1.0f / l[r] : 0.0f);
  }
}

template <typename TQ, typename TKV>
static void attention_impl(const AttnArgs& a) {
  const int G = a.num_heads / a.num_kv_heads;
  const int tile = a.q_tile > 0 ? a.q_tile : 1;
  // work items: (request, first query token); each runs for every KV head
  int64_t num_tiles = 0;
  for (int s = a.first_seq; s < a.first_seq + a.num_seqs; ++s)
    num_tiles += (a.query_start_loc[s + 1] - a.query_start_loc[s] + tile - 1) / tile;
  Buf<int> item_seq(num_tiles), item_q0(num_tiles);
  int64_t it = 0;
  for (int s = a.first_seq; s < a.first_seq + a.num_seqs; ++s) {
    const int q_len = a.query_start_loc[s + 1] - a.query_start_loc[s];
    for (int q0 = 0; q0 < q_len; q0 += tile, ++it) {
      item_seq[it] = s;
      item_q0[it] = q0;
    }
  }
  const int64_t num_items = num_tiles * a.num_kv_heads;
  const int64_t rows = (int64_t)tile * G;
  const size_t ws_floats = rows * (2 * (size_t)a.head_dim + 2 + a.block_size) + 2 * (size_t)a.head_dim + 16;
  int nt = a.num_threads > 0 ? a.num_threads : omp_get_max_threads();
  if (num_items < nt) nt = (int)(num_items > 0 ? num_items : 1);

#pragma omp parallel num_threads(nt)
  {
    Buf<float> ws(ws_floats);
    Buf<int> pos(2 * rows);
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < num_items; ++w) {
      const int64_t i = w / a.num_kv_heads;
      const int kvh = (int)(w % a.num_kv_heads);
      const int s = item_seq[i], q0 = item_q0[i];
      const int q_len = a.query_start_loc[s + 1] - a.query_start_loc[s];
      const int q1 = q0 + tile < q_len ? q0 + tile : q_len;
      attend_item<TQ, TKV>(a, s, kvh, q0, q1, ws.data(), pos.data());
    }
  }
}

void paged_attention(const AttnArgs& a) {
  if (a.q_dtype == kF32 && a.kv_dtype == kF32) return attention_impl<float, float>(a);
  if (a.q_dtype == kF32 && a.kv_dtype == kBF16) return attention_impl<float, bf16>(a);
  if (a.q_dtype == kBF16 && a.kv_dtype == kF32) return attention_impl<bf16, float>(a);
  return attention_impl<bf16, bf16>(a);
}

template <typename TS, typename TC>
static void write_kv_impl(const WriteKvArgs& a) {
  const TS* k = static_cast<const TS*>(a.k);
  const TS* v = static_cast<const TS*>(a.v);
  TC* kv = static_cast<TC*>(a.kv);
  const int D = a.head_dim;
#pragma omp parallel for num_threads(a.num_threads > 0 ? a.num_threads : 1) schedule(static) if (a.num_tokens * a.num_kv_heads * D > 32768)
  for (int64_t t = 0; t < a.num_tokens; ++t) {
    const int64_t slot = a.slot_mapping[t];
    if (slot < 0) continue;
    TC* dst = kv + (slot / a.block_size) * a.kv_stride_block + (slot % a.block_size) * a.kv_stride_tok;
    for (int h = 0; h < a.num_kv_heads; ++h) {
      const TS* ks = k + t * a.k_stride_t + h * a.k_stride_h;
      const TS* vs = v + t * a.v_stride_t + h * a.v_stride_h;
      TC* kd = dst + h * a.kv_stride_head;
      TC* vd = kd + a.kv_stride_kv;
      if constexpr (std::is_same_v<TS, TC>) {
        std::memcpy(kd, ks, sizeof(TC) * D);
        std::memcpy(vd, vs, sizeof(TC) * D);
      } else {
        float buf[512];
        for (int d0 = 0; d0 < D; d0 += 512) {
          const int n = D - d0 < 512 ? D - d0 : 512;
          Ops::load(ks + d0, buf, n, 1.0f);
          Ops::store(buf, kd + d0, n, 1.0f);
          Ops::load(vs + d0, buf, n, 1.0f);
          Ops::store(buf, vd + d0, n, 1.0f);
        }
      }
    }
  }
}

void write_kv(const WriteKvArgs& a) {
  if (a.src_dtype == kF32 && a.kv_dtype == kF32) return write_kv_impl<float, float>(a);
  if (a.src_dtype == kF32 && a.kv_dtype == kBF16) return write_kv_impl<float, bf16>(a);
  if (a.src_dtype == kBF16 && a.kv_dtype == kF32) return write_kv_impl<bf16, float>(a);
  return write_kv_impl<bf16, bf16>(a);
}

template <typename T, typename TW>
static void rms_norm_impl(const RmsNormArgs& a) {
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  const T* res = static_cast<const T*>(a.residual);
  T* res_out = static_cast<T*>(a.res_out);
  const int H = (int)a.hidden;
  Buf<float> w(H);
  Ops::load(static_cast<const TW*>(a.weight), w.data(), H, 1.0f);
  const int nt = a.num_threads > 0 ? a.num_threads : 1;
#pragma omp parallel num_threads(nt) if (a.rows * H > 65536)
  {
    Buf<float> buf(2 * (size_t)H);
    float* xf = buf.data();
    float* rf = xf + H;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < a.rows; ++i) {
      Ops::load(x + i * a.x_stride, xf, H, 1.0f);
      if (res) {
        Ops::load(res + i * a.res_stride, rf, H, 1.0f);
        Ops::axpy(xf, 1.0f, rf, H);
        T* ro = res_out + i * a.res_stride;
        Ops::store(xf, ro, H, 1.0f);
        if constexpr (!std::is_same_v<T, float>) Ops::load(ro, xf, H, 1.0f);  // norm the rounded sum
      }
      const float inv = 1.0f / sqrtf(Ops::dot(xf, xf, H) / (float)H + a.eps);
      T* o = out + i * a.out_stride;
      if constexpr (std::is_same_v<T, float>) {
        Ops::scal(xf, inv, H);
      } else {  // round the normed row before the weight, as the reference layer does
        Ops::store(xf, o, H, inv);
        Ops::load(o, xf, H, 1.0f);
      }
      Ops::mul(xf, w.data(), H);
      Ops::store(xf, o, H, 1.0f);
    }
  }
}

void rms_norm(const RmsNormArgs& a) {
  if (a.dtype == kF32) {
    if (a.weight_dtype == kF32) return rms_norm_impl<float, float>(a);
    return rms_norm_impl<float, bf16>(a);
  }
  if (a.weight_dtype == kF32) return rms_norm_impl<bf16, float>(a);
  return rms_norm_impl<bf16, bf16>(a);
}

}  // namespace OCTAVO_ISA
}  // namespace octavo_cpu
