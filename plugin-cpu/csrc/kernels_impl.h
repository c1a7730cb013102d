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

// ---------------------------------------------------------------------------------------
// Paged attention
//
// The work is cut into units: (request, KV head, tile of up to q_tile query tokens, range
// of key positions). A unit's rows are all query heads of the KV head's group for every
// token of the tile, so each K/V row is read once per unit. A unit normally covers its
// tile's whole visible key range and writes the output rows. When there are too few
// (tile, KV head) items to keep every thread busy (a few long decodes), each item's key
// range is split (split-K): its units leave partial softmax states (unnormalized fp32
// accumulator, running max m, running sum l per row) that a second pass merges.
//
// Two kernels run a unit: attend_blocked (attention_blocked.h; AVX-512 and common head
// sizes) and attend_rows below (any ISA, any head size; the portable path and the
// baseline the blocked kernel is measured and tested against).

struct AttnUnit {
  int seq, kvh, q0, q1;  // request, KV head, its query tokens q0..q1-1
  int kb, ke;  // key positions [kb, ke) this unit covers (clipped to what its rows see)
  int nsplit;  // units sharing the item (consecutive in the unit list); 1 = not split
  int64_t part;  // < 0: write the output rows; else this unit's partial-state slot
};

// A partial-state slot holds rmax rows: acc [rmax, D], then m [rmax], then l [rmax].
struct PartialSlots {
  float* base;
  size_t floats;  // per slot
  int rmax;
  float* acc(int64_t s) const { return base + (size_t)s * floats; }
  float* m(int64_t s, int D) const { return acc(s) + (size_t)rmax * D; }
  float* l(int64_t s, int D) const { return m(s, D) + rmax; }
};

using AttnKernelFn = void (*)(const AttnArgs&, const AttnUnit&, char* ws, const PartialSlots&);

// Row r of a unit is token q0 + r / G, query head kvh * G + r % G. It sees positions
// lo..hi: hi is the token's own position (causal) or the context's last (not causal), lo the
// start of its sliding window (causal layers only: callers refuse a window without causality).
static inline void row_span(const AttnArgs& a, int seq, int q0, int r, int G, int* lo, int* hi) {
  const int q_len = a.query_start_loc[seq + 1] - a.query_start_loc[seq];
  const int h = a.seq_lens[seq] - q_len + q0 + r / G;
  *hi = a.causal ? h : a.seq_lens[seq] - 1;
  *lo = (a.sliding_window > 0 && h - a.sliding_window + 1 > 0) ? h - a.sliding_window + 1 : 0;
}

// A unit's rows are done: write them out (normalized) or leave the partial state.
template <typename TQ>
static void finish_rows(const AttnArgs& a, const AttnUnit& u, int R, const float* acc, const float* m,
                        const float* l, const PartialSlots& ps) {
  const int G = a.num_heads / a.num_kv_heads;
  const int D = a.head_dim;
  if (u.part >= 0) {
    memcpy(ps.acc(u.part), acc, sizeof(float) * R * D);
    memcpy(ps.m(u.part, D), m, sizeof(float) * R);
    memcpy(ps.l(u.part, D), l, sizeof(float) * R);
    return;
  }
  TQ* out = static_cast<TQ*>(a.out);
  const int qs = a.query_start_loc[u.seq];
  for (int r = 0; r < R; ++r) {
    const int64_t t = qs + u.q0 + r / G;
    const int h = u.kvh * G + r % G;
    // a query sees at least itself, so l > 0; padding rows (seq_len 0, as padded decode
    // batches may carry) see nothing and get zeros rather than 0/0
    Ops::store(acc + (size_t)r * D, out + t * a.o_stride_t + h * a.o_stride_h, D, l[r] > 0.0f ? 1.0f / l[r] : 0.0f);
  }
}

// Combine the partial states of one item's split units (us[0..nsplit-1]) into its rows:
// out = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s with M the largest m_s.
template <typename TQ>
static void merge_splits(const AttnArgs& a, const AttnUnit* us, const PartialSlots& ps, float* tmp) {
  const int G = a.num_heads / a.num_kv_heads;
  const int D = a.head_dim;
  const AttnUnit& u = us[0];
  const int R = (u.q1 - u.q0) * G;
  TQ* out = static_cast<TQ*>(a.out);
  const int qs = a.query_start_loc[u.seq];
  for (int r = 0; r < R; ++r) {
    float M = -INFINITY;
    for (int s = 0; s < u.nsplit; ++s) M = ps.m(us[s].part, D)[r] > M ? ps.m(us[s].part, D)[r] : M;
    memset(tmp, 0, sizeof(float) * D);
    float L = 0.0f;
    if (M != -INFINITY) {
      for (int s = 0; s < u.nsplit; ++s) {
        const float w = expf(ps.m(us[s].part, D)[r] - M);  // 0 for a split that saw nothing
        if (w == 0.0f) continue;
        L += w * ps.l(us[s].part, D)[r];
        Ops::axpy(tmp, w, ps.acc(us[s].part) + (size_t)r * D, D);
      }
    }
    const int64_t t = qs + u.q0 + r / G;
    const int h = u.kvh * G + r % G;
    Ops::store(tmp, out + t * a.o_stride_t + h * a.o_stride_h, D, L > 0.0f ? 1.0f / L : 0.0f);
  }
}

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

static size_t attend_rows_ws_bytes(int rows, int D, int bs) {
  return sizeof(float) * (rows * (2 * (size_t)D + 2 + bs) + 2 * (size_t)D + 16) + sizeof(int) * 2 * (size_t)rows;
}

// The per-row kernel: one cache block at a time; per key, one dot product per row (with a
// horizontal reduction each) and one axpy per row for V, K/V rows converted to fp32.
// Simple and ISA-neutral; the blocked kernel is several times faster where it applies.
template <typename TQ, typename TKV>
static void attend_rows(const AttnArgs& a, const AttnUnit& u, char* ws_bytes, const PartialSlots& ps) {
  const int G = a.num_heads / a.num_kv_heads;
  const int D = a.head_dim;
  const int bs = a.block_size;
  const int kvh = u.kvh;
  const int qs = a.query_start_loc[u.seq];
  const int R = (u.q1 - u.q0) * G;  // rows: token-major, then head within the group

  float* qf = reinterpret_cast<float*>(ws_bytes);  // [R, D] scaled queries
  float* acc = qf + (size_t)R * D;  // [R, D]
  float* m = acc + (size_t)R * D;  // [R] running max
  float* l = m + R;  // [R] running sum
  float* sc = l + R;  // [R, bs] scores, then probabilities, of one block
  float* kbuf = sc + (size_t)R * bs;  // [D]
  float* vbuf = kbuf + D;  // [D]
  int* lo = reinterpret_cast<int*>(vbuf + D + 16);  // [R] first visible position
  int* hi = lo + R;  // [R] last visible position (the query's own)

  const TQ* q = static_cast<const TQ*>(a.q);
  for (int r = 0; r < R; ++r) {
    const int64_t t = qs + u.q0 + r / G;
    const int h = kvh * G + r % G;
    Ops::load(q + t * a.q_stride_t + h * a.q_stride_h, qf + (size_t)r * D, D, a.scale);
    memset(acc + (size_t)r * D, 0, sizeof(float) * D);
    m[r] = -INFINITY;
    l[r] = 0.0f;
    row_span(a, u.seq, u.q0, r, G, lo + r, hi + r);
  }
  const int kstart = lo[0] > u.kb ? lo[0] : u.kb;  // the unit's key range
  const int kend = hi[R - 1] + 1 < u.ke ? hi[R - 1] + 1 : u.ke;
  const bool all_visible = lo[R - 1] <= kstart && hi[0] >= kend - 1;

  const TKV* kv = static_cast<const TKV*>(a.kv);
  const int32_t* table = a.block_tables + (int64_t)u.seq * a.bt_stride;
  for (int b = kstart / bs; kstart < kend && (int64_t)b * bs < kend; ++b) {
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
      for (int kvi = 0; kvi < 2; ++kvi) {  // K rows, then V rows: in address order (see attention_blocked.h)
        const TKV* rows = next + kvi * a.kv_stride_kv;
        for (int j = 0; j < bs; ++j) {
          const char* p = reinterpret_cast<const char*>(rows + (int64_t)j * a.kv_stride_tok);
          for (int off = 0; off < row_bytes; off += 64) __builtin_prefetch(p + off);
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
  finish_rows<TQ>(a, u, R, acc, m, l, ps);
}

#ifdef __AVX512F__
#include "attention_blocked.h"
#endif

// A thread's attention scratch, kept from call to call (OpenMP's threads persist) and grown
// as needed: no allocation or zeroing per call. 64-byte aligned. The kernels write every
// scratch element before reading it.
static char* thread_scratch(size_t bytes) {
  struct Scratch {
    char* p = nullptr;
    size_t n = 0;
    ~Scratch() { free(p); }
  };
  static thread_local Scratch s;
  if (s.n < bytes) {
    free(s.p);
    s.n = (bytes + 63) & ~(size_t)63;
    s.p = static_cast<char*>(aligned_alloc(64, s.n));
    memset(s.p, 0xff, s.n);  // NaNs: a read before a write would show in the tests' results
  }
  return s.p;
}

template <typename TQ, typename TKV>
static AttnKernelFn pick_kernel(const AttnArgs& a) {
#ifdef __AVX512F__
  if (a.kernel != kAttnRows) {
    switch (a.head_dim) {
      case 32: return &blocked::attend_blocked<32, TQ, TKV>;  // MiniLM-shaped encoders
      case 64: return &blocked::attend_blocked<64, TQ, TKV>;
      case 96: return &blocked::attend_blocked<96, TQ, TKV>;
      case 128: return &blocked::attend_blocked<128, TQ, TKV>;
      case 256: return &blocked::attend_blocked<256, TQ, TKV>;
      default: break;
    }
  }
#else
  (void)a;
#endif
  return &attend_rows<TQ, TKV>;
}

template <typename TQ, typename TKV>
static void attention_impl(const AttnArgs& a) {
  const int G = a.num_heads / a.num_kv_heads;
  const int D = a.head_dim;
  const int nkv = a.num_kv_heads;
  const int tile = a.q_tile > 0 ? a.q_tile : 1;
  const int rmax = tile * G;
  int nt = a.num_threads > 0 ? a.num_threads : omp_get_max_threads();

  // items: (tile, KV head); how many units each item's key range is split into
  int64_t num_tiles = 0, work = 0;  // work: query rows x keys they see, summed
  for (int s = a.first_seq; s < a.first_seq + a.num_seqs; ++s) {
    const int q_len = a.query_start_loc[s + 1] - a.query_start_loc[s];
    num_tiles += (q_len + tile - 1) / tile;
    const int64_t ctx = a.seq_lens[s] > 0 ? a.seq_lens[s] : 0;
    work += (int64_t)q_len * ctx * a.num_heads;
  }
  const int64_t items = num_tiles * nkv;
  // Waking a second thread costs microseconds on a quiet machine and far more on a busy
  // one: work of a few tens of microseconds (one short decode) runs on one thread.
  constexpr int64_t kWorkPerThread = 8192;  // rows x keys, about 20 us of the blocked kernel
  if (nt > 1 && work / kWorkPerThread < nt) nt = (int)(work / kWorkPerThread > 1 ? work / kWorkPerThread : 1);
  int want = 1;
  if (a.kv_splits > 0) {
    want = a.kv_splits;
  } else if (nt > 1 && items > 0 && items < 2 * (int64_t)nt) {
    // aim at 4 units per thread, so dynamic scheduling evens out unequal lengths
    want = (int)((4 * (int64_t)nt + items - 1) / items);
  }
  constexpr int kMinSplitKeys = 64;  // below this a split's merge costs more than it saves
  constexpr int kSplitAlign = 32;  // split points at multiples of the blocked kernel's chunk

  // units tile-major, then KV head, then split; called once to count (null arrays), once to fill
  int64_t num_units = 0, num_parts = 0, num_merges = 0;
  auto build = [&](AttnUnit* units, int64_t* merges) {
    int64_t iu = 0, ip = 0, im = 0;
    for (int s = a.first_seq; s < a.first_seq + a.num_seqs; ++s) {
      const int q_len = a.query_start_loc[s + 1] - a.query_start_loc[s];
      for (int q0 = 0; q0 < q_len; q0 += tile) {
        const int q1 = q0 + tile < q_len ? q0 + tile : q_len;
        int lo0, hi0, lo1, hi1;
        row_span(a, s, q0, 0, G, &lo0, &hi0);
        row_span(a, s, q1 - 1, 0, G, &lo1, &hi1);
        const int kend = hi1 + 1 > 0 ? hi1 + 1 : 0;
        const int span = kend > lo0 ? kend - lo0 : 0;
        int ns = want;
        if (a.kv_splits <= 0 && ns > span / kMinSplitKeys) ns = span / kMinSplitKeys;
        const int c0 = lo0 / kSplitAlign, nc = (kend + kSplitAlign - 1) / kSplitAlign - c0;
        if (ns > nc) ns = nc;  // at least a chunk each
        if (ns < 1) ns = 1;
        for (int kvh = 0; kvh < nkv; ++kvh) {
          if (ns > 1) {
            if (merges) merges[im] = iu;
            ++im;
          }
          for (int k = 0; k < ns; ++k, ++iu) {
            const int64_t part = ns > 1 ? ip++ : -1;
            if (!units) continue;
            AttnUnit& u = units[iu];
            u.seq = s;
            u.kvh = kvh;
            u.q0 = q0;
            u.q1 = q1;
            u.nsplit = ns;
            const int b = (c0 + (int)((int64_t)k * nc / ns)) * kSplitAlign;
            const int e = (c0 + (int)((int64_t)(k + 1) * nc / ns)) * kSplitAlign;
            u.kb = k == 0 ? lo0 : b;
            u.ke = k == ns - 1 ? kend : e;
            u.part = part;
          }
        }
      }
    }
    num_units = iu;
    num_parts = ip;
    num_merges = im;
  };
  build(nullptr, nullptr);
  Buf<AttnUnit> units(num_units);
  Buf<int64_t> merges(num_merges);
  build(units.data(), merges.data());
  PartialSlots ps{nullptr, (size_t)rmax * (D + 2), rmax};
  Buf<float> parts(num_parts * ps.floats);
  ps.base = parts.data();

  const AttnKernelFn kernel = pick_kernel<TQ, TKV>(a);
  size_t ws_bytes = attend_rows_ws_bytes(rmax, D, a.block_size);
#ifdef __AVX512F__
  if (kernel != &attend_rows<TQ, TKV>) ws_bytes = blocked::ws_bytes(rmax, D);
#endif
  if (num_units < nt) nt = (int)(num_units > 0 ? num_units : 1);

#pragma omp parallel num_threads(nt)
  {
    char* w64 = thread_scratch(ws_bytes);
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < num_units; ++w) kernel(a, units[w], w64, ps);
    if (num_merges > 0) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t i = 0; i < num_merges; ++i) merge_splits<TQ>(a, &units[merges[i]], ps, reinterpret_cast<float*>(w64));
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

}  // namespace OCTAVO_ISA
}  // namespace octavo_cpu
