// The blocked paged-attention kernel for AVX-512 (the avx512 and avx512bf16 files), included
// by kernels_impl.h inside its ISA namespace, after AttnUnit, finish_rows and Ops; it
// includes no headers itself. A unit (kernels_impl.h) is R query rows against a key range.
//
// Keys go 32 at a time, a chunk: two zmm hold a row's 32 scores. A chunk is 32
// consecutive positions (aligned to 32), its rows found through the block table, so any
// block size works and a chunk may straddle blocks. Per chunk:
//  1. K is transposed in registers, 16 keys at a time, so that one vector holds the same
//     head-dim element (bf16 cache: the same pair of elements) of 16 keys. A row's 32
//     scores are then 2 x D FMAs (D vdpbf16ps) against broadcast q elements, each
//     broadcast serving both halves: no horizontal sum per key, and the transpose is paid
//     once per chunk for all R rows.
//  2. Online softmax on each row's 32 scores (fp32). 32 keys rather than 16 halve the
//     per-row cost of the max, the rescale and the sum (prefill 8 x 256: -10% time).
//  3. P @ V: the output accumulators of a group of rows stay in registers while the 32 V
//     rows stream past; across chunks they live in L1 (acc, [R, D] fp32).
// With AVX512_BF16 and bf16 q and cache (the model's case), q and K enter vdpbf16ps as
// stored: products of bf16 are exact in fp32, and the scale multiplies the fp32 scores,
// so scores match an fp32 computation up to summation order. P @ V then takes P rounded to
// bf16 (as PyTorch's CPU flash attention does for bf16) against V with rows interleaved in
// pairs, so one vdpbf16ps does two keys; the accumulators come out in a permuted head-dim
// order (see unpermute) that is undone once per unit.

namespace blocked {

#ifdef __AVX512BF16__
constexpr bool kHaveDpBf16 = true;
#else
constexpr bool kHaveDpBf16 = false;
#endif

constexpr int kChunk = 32;  // keys per chunk (kernels_impl.h splits key ranges at multiples of it)
constexpr int kQkRows = 8;  // rows per register block of QK^T: 8 x 2 score accumulators
// Online softmax keeps a reference m per row and moves it only when a score exceeds it by
// more than this (natural log units): probabilities up to e^8 ~ 3000, sums far from fp32
// overflow. The result is the same softmax; only the rescaling steps are fewer.
constexpr float kRescaleSlack = 8.0f;

// Transpose a 16x16 matrix of 32-bit elements held one row per register.
static inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {  // per 128-bit lane: (a0 b0 a1 b1), (a2 b2 a3 b3)
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // r[4i + k], lane L: rows 4i..4i+3 of column 4L + k
    r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int k = 0; k < 4; ++k) {  // a 4x4 transpose of 128-bit lanes across r[k], r[4+k], r[8+k], r[12+k]
    const __m512i ab_lo = _mm512_shuffle_i32x4(r[k], r[4 + k], 0x44);
    const __m512i ab_hi = _mm512_shuffle_i32x4(r[k], r[4 + k], 0xEE);
    const __m512i cd_lo = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0x44);
    const __m512i cd_hi = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0xEE);
    t[k] = _mm512_shuffle_i32x4(ab_lo, cd_lo, 0x88);
    t[4 + k] = _mm512_shuffle_i32x4(ab_lo, cd_lo, 0xDD);
    t[8 + k] = _mm512_shuffle_i32x4(ab_hi, cd_hi, 0x88);
    t[12 + k] = _mm512_shuffle_i32x4(ab_hi, cd_hi, 0xDD);
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

static inline uint32_t bit_range(int lo, int hi) {  // bits lo..hi, 0 <= lo <= hi <= 31
  return ((2u << hi) - 1u) & ~((1u << lo) - 1u);  // 2u << 31 wraps to 0: all ones
}

// Scratch of one thread, carved from the workspace kernels_impl.h allocates (64-byte aligned).
static size_t ws_bytes(int R, int D) {
  const size_t f = 2 * (size_t)R * D  // acc, qf
                   + 4 * (size_t)R  // m, l, alpha, spare
                   + 2 * (size_t)R * kChunk  // scores, probabilities
                   + 16 * (size_t)R  // lane-wise sums
                   + (size_t)kChunk * D  // V rows as fp32
                   + 16 * (2 * (size_t)D + 2 * (size_t)D + (size_t)D)  // kt, ktf, vp
                   + 64;
  return sizeof(float) * f + sizeof(int) * 2 * (size_t)R + sizeof(void*) * (size_t)R + 4 * 64;
}

// ---- 1. QK^T: scores s[r][0..31] of RB rows --------------------------------------------

// fp32: kt[2d + h] = element d of keys 16h..16h+15; q rows scaled fp32 (qf + r * D).
template <int D, int RB>
static inline void qk_f32(const float* qf, const __m512* kt, float* s) {
  __m512 acc[RB][2];
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int d = 0; d < D; ++d) {
    const __m512 k0 = kt[2 * d], k1 = kt[2 * d + 1];
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) {
      const __m512 b = _mm512_set1_ps(qf[r * D + d]);
      acc[r][0] = _mm512_fmadd_ps(b, k0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(b, k1, acc[r][1]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r) {
    _mm512_storeu_ps(s + r * kChunk, acc[r][0]);
    _mm512_storeu_ps(s + r * kChunk + 16, acc[r][1]);
  }
}

#ifdef __AVX512BF16__
// bf16: kt[2i + h] = elements (2i, 2i+1) of keys 16h..16h+15; q rows as stored (qrows[r]), unscaled.
template <int D, int RB>
static inline void qk_dp(const bf16* const* qrows, const __m512i* kt, float scale, float* s) {
  const bf16* qp[RB];
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r) qp[r] = qrows[r];
  __m512 acc[RB][2];
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int i = 0; i < D / 2; ++i) {
    const __m512bh k0 = (__m512bh)kt[2 * i], k1 = (__m512bh)kt[2 * i + 1];
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) {
      int32_t pair;
      memcpy(&pair, qp[r] + 2 * i, sizeof(pair));
      const __m512bh b = (__m512bh)_mm512_set1_epi32(pair);
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], k0, b);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], k1, b);
    }
  }
  const __m512 sc = _mm512_set1_ps(scale);
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r) {
    _mm512_storeu_ps(s + r * kChunk, _mm512_mul_ps(acc[r][0], sc));
    _mm512_storeu_ps(s + r * kChunk + 16, _mm512_mul_ps(acc[r][1], sc));
  }
}
#endif

template <int D, bool kDp, int RB>
static inline void qk_block(int r, const float* qf, const bf16* const* qrows, const __m512* ktf, const __m512i* kt,
                            float scale, float* s) {
  if constexpr (kDp) {
#ifdef __AVX512BF16__
    qk_dp<D, RB>(qrows + r, kt, scale, s + r * kChunk);
#endif
  } else {
    (void)qrows, (void)kt, (void)scale;
    qk_f32<D, RB>(qf + (size_t)r * D, ktf, s + r * kChunk);
  }
}

// the last R % kQkRows rows, as one block of exactly that many
template <int D, bool kDp, int N>
static inline void qk_tail(int n, int r, const float* qf, const bf16* const* qrows, const __m512* ktf,
                           const __m512i* kt, float scale, float* s) {
  if constexpr (N > 0) {
    if (n == N)
      qk_block<D, kDp, N>(r, qf, qrows, ktf, kt, scale, s);
    else
      qk_tail<D, kDp, N - 1>(n, r, qf, qrows, ktf, kt, scale, s);
  }
}

template <int D, bool kDp>
static void qk_rows(int R, const float* qf, const bf16* const* qrows, const __m512* ktf, const __m512i* kt,
                    float scale, float* s) {
  int r = 0;
  for (; r + kQkRows <= R; r += kQkRows) qk_block<D, kDp, kQkRows>(r, qf, qrows, ktf, kt, scale, s);
  qk_tail<D, kDp, kQkRows - 1>(R - r, r, qf, qrows, ktf, kt, scale, s);
}

// ---- 3. P @ V for RG rows, accumulators in registers --------------------------------------

// rows whose accumulators fit in 24 of the 32 zmm registers
template <int D>
constexpr int pv_rows_per_block() {
  return D / 16 >= 24 ? 1 : 24 / (D / 16);
}

// acc = acc * alpha + P V; P fp32 [RG][32]; vrows[j] = V row j as fp32, keys j0..j1-1.
template <int D, int RG>
static inline void pv_f32(float* acc, const float* alpha, const float* p, const float* const* vrows, int j0, int j1) {
  constexpr int NV = D / 16;
  __m512 o[RG][NV];
#pragma GCC unroll 24
  for (int r = 0; r < RG; ++r) {
    const __m512 al = _mm512_set1_ps(alpha[r]);
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) o[r][v] = _mm512_mul_ps(_mm512_loadu_ps(acc + r * D + 16 * v), al);
  }
  for (int j = j0; j < j1; ++j) {
    const float* vr = vrows[j];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      const __m512 x = _mm512_loadu_ps(vr + 16 * v);
#pragma GCC unroll 24
      for (int r = 0; r < RG; ++r) o[r][v] = _mm512_fmadd_ps(_mm512_set1_ps(p[r * kChunk + j]), x, o[r][v]);
    }
  }
#pragma GCC unroll 24
  for (int r = 0; r < RG; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(acc + r * D + 16 * v, o[r][v]);
}

#ifdef __AVX512BF16__
// acc = acc * alpha + P V in the permuted order; pp[r][t] = P[r][2t], P[r][2t+1] as bf16
// (t < 16);
// vp[t * NV + v] = V rows 2t and 2t+1 interleaved (stage_v_pairs).
template <int D, int RG>
static inline void pv_dp(float* acc, const float* alpha, const uint32_t* pp, const __m512i* vp) {
  constexpr int NV = D / 16;
  __m512 o[RG][NV];
#pragma GCC unroll 24
  for (int r = 0; r < RG; ++r) {
    const __m512 al = _mm512_set1_ps(alpha[r]);
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) o[r][v] = _mm512_mul_ps(_mm512_loadu_ps(acc + r * D + 16 * v), al);
  }
#pragma GCC unroll 2
  for (int t = 0; t < kChunk / 2; ++t) {
#pragma GCC unroll 24
    for (int r = 0; r < RG; ++r) {
      const __m512bh b = (__m512bh)_mm512_set1_epi32((int)pp[r * (kChunk / 2) + t]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) o[r][v] = _mm512_dpbf16_ps(o[r][v], b, (__m512bh)vp[t * NV + v]);
    }
  }
#pragma GCC unroll 24
  for (int r = 0; r < RG; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(acc + r * D + 16 * v, o[r][v]);
}
#endif

template <int D, bool kDp, int RG>
static inline void pv_block(int r, float* acc, const float* alpha, const float* p, const uint32_t* pp,
                            const float* const* vrows, const __m512i* vp, int j0, int j1) {
  if constexpr (kDp) {
#ifdef __AVX512BF16__
    pv_dp<D, RG>(acc + (size_t)r * D, alpha + r, pp + r * (kChunk / 2), vp);
#endif
  } else {
    (void)pp, (void)vp;
    pv_f32<D, RG>(acc + (size_t)r * D, alpha + r, p + r * kChunk, vrows, j0, j1);
  }
}

template <int D, bool kDp, int N>
static inline void pv_tail(int n, int r, float* acc, const float* alpha, const float* p, const uint32_t* pp,
                           const float* const* vrows, const __m512i* vp, int j0, int j1) {
  if constexpr (N > 0) {
    if (n == N)
      pv_block<D, kDp, N>(r, acc, alpha, p, pp, vrows, vp, j0, j1);
    else
      pv_tail<D, kDp, N - 1>(n, r, acc, alpha, p, pp, vrows, vp, j0, j1);
  }
}

template <int D, bool kDp>
static void pv_rows(int R, float* acc, const float* alpha, const float* p, const uint32_t* pp,
                    const float* const* vrows, const __m512i* vp, int j0, int j1) {
  constexpr int RG = pv_rows_per_block<D>();
  int r = 0;
  for (; r + RG <= R; r += RG) pv_block<D, kDp, RG>(r, acc, alpha, p, pp, vrows, vp, j0, j1);
  pv_tail<D, kDp, RG - 1>(R - r, r, acc, alpha, p, pp, vrows, vp, j0, j1);
}

// ---- staging of one chunk's K and V rows (keys j0..j1-1 present, the rest read as zeros) ----

// kt[2i + h] = 32-bit column i of keys 16h..16h+15 (bf16 pairs, or fp32 elements)
template <int COLS, typename T>
static inline void stage_k(const T* const* rows, int j0, int j1, __m512i* kt) {
  constexpr int kPer = 64 / (int)sizeof(T);  // elements in one 16-column slab
#pragma GCC unroll 1
  for (int g = 0; g < COLS / 16; ++g) {
#pragma GCC unroll 1
    for (int h = 0; h < 2; ++h) {
      if (16 * h >= j1 || 16 * h + 16 <= j0) {  // no key of this half
        for (int c = 0; c < 16; ++c) kt[2 * (16 * g + c) + h] = _mm512_setzero_si512();
        continue;
      }
      __m512i r[16];
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j) {
        const int jj = 16 * h + j;
        r[j] = jj >= j0 && jj < j1 ? _mm512_loadu_si512(rows[jj] + kPer * g) : _mm512_setzero_si512();
      }
      transpose16(r);
#pragma GCC unroll 16
      for (int c = 0; c < 16; ++c) kt[2 * (16 * g + c) + h] = r[c];
    }
  }
}

// bf16 pairs -> fp32 elements: the low half of each pair is element 2i, the high half 2i+1
template <int D>
static inline void pairs_to_f32(const __m512i* kt, __m512* ktf) {
  const __m512i hi_mask = _mm512_set1_epi32((int)0xffff0000u);
#pragma GCC unroll 4
  for (int i = 0; i < D / 2; ++i) {
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      ktf[2 * (2 * i) + h] = _mm512_castsi512_ps(_mm512_slli_epi32(kt[2 * i + h], 16));
      ktf[2 * (2 * i + 1) + h] = _mm512_castsi512_ps(_mm512_and_si512(kt[2 * i + h], hi_mask));
    }
  }
}

#ifdef __AVX512BF16__
// vp[t * NV + v]: dword i holds (V[2t][d], V[2t+1][d]) for the d the unpack puts in lane i
// (see unpermute)
template <int D>
static inline void stage_v_pairs(const bf16* const* rows, int j0, int j1, __m512i* vp) {
  constexpr int NV = D / 16;
#pragma GCC unroll 2
  for (int t = 0; t < kChunk / 2; ++t) {
    const bool has0 = 2 * t >= j0 && 2 * t < j1, has1 = 2 * t + 1 >= j0 && 2 * t + 1 < j1;
#pragma GCC unroll 8
    for (int s = 0; s < D / 32; ++s) {
      const __m512i x = has0 ? _mm512_loadu_si512(rows[2 * t] + 32 * s) : _mm512_setzero_si512();
      const __m512i y = has1 ? _mm512_loadu_si512(rows[2 * t + 1] + 32 * s) : _mm512_setzero_si512();
      vp[t * NV + 2 * s] = _mm512_unpacklo_epi16(x, y);
      vp[t * NV + 2 * s + 1] = _mm512_unpackhi_epi16(x, y);
    }
  }
}

// The pair-interleaved accumulators hold, per 32 head-dim elements, two vectors: the unpack
// "lo" one has elements 0-3, 8-11, 16-19, 24-27 (one group per 128-bit lane), the "hi" one
// 4-7, 12-15, 20-23, 28-31. Put a row back in order, in place.
template <int D>
static inline void unpermute(float* row) {
  const __m512i i0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i i1 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  for (int s = 0; s < D / 32; ++s) {
    const __m512 lo = _mm512_loadu_ps(row + 32 * s), hi = _mm512_loadu_ps(row + 32 * s + 16);
    _mm512_storeu_ps(row + 32 * s, _mm512_permutex2var_ps(lo, i0, hi));
    _mm512_storeu_ps(row + 32 * s + 16, _mm512_permutex2var_ps(lo, i1, hi));
  }
}
#endif

// Pointers to the K (and V) rows of positions p0..p0+n-1 of a request, in rows[0..n-1].
template <typename TKV>
static inline void chunk_rows(const AttnArgs& a, const int32_t* table, int kvh, int p0, int n, const TKV** krows,
                              const TKV** vrows) {
  const TKV* kv = static_cast<const TKV*>(a.kv) + (int64_t)kvh * a.kv_stride_head;
  int b = p0 / a.block_size, o = p0 % a.block_size;
  for (int j = 0; j < n; ++b, o = 0) {  // one run of rows per cache block
    const TKV* k = kv + (int64_t)table[b] * a.kv_stride_block + (int64_t)o * a.kv_stride_tok;
    const int run = n - j < a.block_size - o ? n - j : a.block_size - o;
    for (int i = 0; i < run; ++i, ++j) {
      krows[j] = k + i * a.kv_stride_tok;
      vrows[j] = krows[j] + a.kv_stride_kv;
    }
  }
}

// K and V rows of keys p0..p0+n-1 of KV head kvh into L2. Into L2, not L1: a chunk is 128
// lines (D = 64, bf16), and as many L1 prefetches in flight stall the loads the current chunk
// needs (measured on Zen 4, 16-key chunks: decode 64 x 300 1.7 ms with L1 hints, 0.95 with L2).
// Always inlined: as a call inside the chunk loop it cost the kernel 1.2 -> 2.0 ms a layer
// (the unit's accumulators are spilled around it).
template <typename TKV, int D>
__attribute__((always_inline)) static inline void prefetch_chunk(const AttnArgs& a, const int32_t* table, int kvh,
                                                                  int p0, int n) {
  const TKV* pk[kChunk];
  const TKV* pv[kChunk];
  chunk_rows(a, table, kvh, p0, n, pk, pv);
  // the K rows, then the V rows: in the head-major cache each is one run of addresses a
  // block, and requests in address order stream faster than K and V rows alternating (one
  // layer's decode attention from memory, 64 x 320, alternating builds: 0.86-0.90 ms
  // against 0.98-1.08)
  for (int j = 0; j < n; ++j) {
#pragma GCC unroll 8
    for (int off = 0; off < D * (int)sizeof(TKV); off += 64)
      _mm_prefetch(reinterpret_cast<const char*>(pk[j]) + off, _MM_HINT_T1);
  }
  for (int j = 0; j < n; ++j) {
#pragma GCC unroll 8
    for (int off = 0; off < D * (int)sizeof(TKV); off += 64)
      _mm_prefetch(reinterpret_cast<const char*>(pv[j]) + off, _MM_HINT_T1);
  }
}

template <int D, typename TQ, typename TKV>
static void attend_blocked(const AttnArgs& a, const AttnUnit& u, char* ws, const PartialSlots& ps) {
  constexpr bool kDp = kHaveDpBf16 && std::is_same_v<TQ, bf16> && std::is_same_v<TKV, bf16>;
  constexpr bool kBf16Cache = std::is_same_v<TKV, bf16>;
  const int G = a.num_heads / a.num_kv_heads;
  const int kvh = u.kvh;
  const int qs = a.query_start_loc[u.seq];
  const int R = (u.q1 - u.q0) * G;

  float* acc = reinterpret_cast<float*>(ws);  // [R, D]
  float* qf = acc + (size_t)R * D;  // [R, D] scaled queries (fp32 path)
  float* m = qf + (size_t)R * D;  // [R] the reference of the exponentials (see kRescaleSlack)
  float* l = m + R;  // [R] running sum, at the end
  float* alpha = l + R;  // [R] this chunk's rescale of acc
  float* s = alpha + 2 * (size_t)R;  // [R, 32] scores
  float* p = s + (size_t)R * kChunk;  // [R, 32] probabilities (fp32 path) or [R, 16] bf16 pairs
  uint32_t* pp = reinterpret_cast<uint32_t*>(p);
  float* lv = p + (size_t)R * kChunk;  // [R, 16] running sum, lane-wise (reduced once, at the end)
  float* vf = lv + (size_t)R * 16;  // [32, D] V rows as fp32 (bf16 cache, fp32 path)
  // [2D] K transposed (see stage_k); vector-aligned, as the compiler's accesses to it are
  __m512i* kt = reinterpret_cast<__m512i*>((reinterpret_cast<uintptr_t>(vf + (size_t)kChunk * D) + 63) & ~(uintptr_t)63);
  __m512* ktf = reinterpret_cast<__m512*>(kt + 2 * D);  // [2D] bf16 K pairs split to fp32 (fp32 path)
  __m512i* vp = reinterpret_cast<__m512i*>(ktf + 2 * D);  // [16, D / 16] V row pairs, interleaved
  int* lo = reinterpret_cast<int*>(vp + D);  // [R] first visible position
  int* hi = lo + R;  // [R] last visible position (the query's own)
  const bf16** qrows = reinterpret_cast<const bf16**>(hi + R + (R & 1));  // [R] q rows (bf16 path)

  const TQ* q = static_cast<const TQ*>(a.q);
  for (int r = 0; r < R; ++r) {
    const int64_t t = qs + u.q0 + r / G;
    const int h = kvh * G + r % G;
    const TQ* qr = q + t * a.q_stride_t + h * a.q_stride_h;
    if constexpr (kDp)
      qrows[r] = qr;
    else
      Ops::load(qr, qf + (size_t)r * D, D, a.scale);
    memset(acc + (size_t)r * D, 0, sizeof(float) * D);
    m[r] = -INFINITY;
    _mm512_storeu_ps(lv + (size_t)r * 16, _mm512_setzero_ps());
    row_span(a, u.seq, u.q0, r, G, lo + r, hi + r);
  }
  const int kstart = lo[0] > u.kb ? lo[0] : u.kb;  // the unit's key range
  const int kend = hi[R - 1] + 1 < u.ke ? hi[R - 1] + 1 : u.ke;
  const int32_t* table = a.block_tables + (int64_t)u.seq * a.bt_stride;

  const TKV* krows[kChunk];
  const TKV* vrows[kChunk];
  const float* vrows_f[kChunk];
  constexpr int kPf = OCTAVO_PF;  // prefetch distance in chunks

  // the chunk loop below prefetches kPf chunks ahead, so a unit's first kPf chunks would be
  // demand misses, issued a row at a time: fetch them all now. Decode units are only ~10
  // chunks (64 requests x 320 keys, SmolLM2), so this is a fifth of their rows; one layer's
  // decode attention from memory, alternating builds: 0.93-0.99 ms against 1.03-1.19 ms.
  for (int p = kstart; p < kend && p < kstart + kPf * kChunk; p += kChunk)
    prefetch_chunk<TKV, D>(a, table, kvh, p, kend - p < kChunk ? kend - p : kChunk);
  for (int c0 = kstart - kstart % kChunk; kstart < kend && c0 < kend; c0 += kChunk) {
    const int j0 = kstart > c0 ? kstart - c0 : 0;
    const int j1 = kend - c0 < kChunk ? kend - c0 : kChunk;
    chunk_rows(a, table, kvh, c0 + j0, j1 - j0, krows + j0, vrows + j0);
    // blocks lie anywhere in memory, out of the hardware prefetcher's sight: fetch the rows of
    // a chunk a little ahead while this one computes (see prefetch_chunk)
    const int pf0 = c0 + kPf * kChunk;
    if (pf0 < kend) prefetch_chunk<TKV, D>(a, table, kvh, pf0, kend - pf0 < kChunk ? kend - pf0 : kChunk);

    // 1. scores
    if constexpr (kBf16Cache) {
      stage_k<D / 2>(reinterpret_cast<const bf16* const*>(krows), j0, j1, kt);
      if constexpr (!kDp) pairs_to_f32<D>(kt, ktf);
    } else {
      stage_k<D>(reinterpret_cast<const float* const*>(krows), j0, j1, kt);
      ktf = reinterpret_cast<__m512*>(kt);
    }
    qk_rows<D, kDp>(R, qf, qrows, ktf, kt, a.scale, s);

    // 2. online softmax per row
    for (int r = 0; r < R; ++r) {
      int v0 = (lo[r] > kstart ? lo[r] : kstart) - c0;
      int v1 = (hi[r] < kend - 1 ? hi[r] : kend - 1) - c0;
      v0 = v0 > j0 ? v0 : j0;
      v1 = v1 < j1 - 1 ? v1 : j1 - 1;
      if (v0 > v1) {  // nothing of this chunk is visible to row r
        alpha[r] = 1.0f;
        if constexpr (kDp) {
          _mm512_storeu_si512(pp + r * (kChunk / 2), _mm512_setzero_si512());
        } else {
          _mm512_storeu_ps(p + r * kChunk, _mm512_setzero_ps());
          _mm512_storeu_ps(p + r * kChunk + 16, _mm512_setzero_ps());
        }
        continue;
      }
      const uint32_t vis = bit_range(v0, v1);
      const __m512 ninf = _mm512_set1_ps(-INFINITY);
      const __m512 s0 = _mm512_mask_mov_ps(ninf, (__mmask16)vis, _mm512_loadu_ps(s + r * kChunk));
      const __m512 s1 = _mm512_mask_mov_ps(ninf, (__mmask16)(vis >> 16), _mm512_loadu_ps(s + r * kChunk + 16));
      const __m512 mx = _mm512_max_ps(s0, s1);
      __m512 sum = _mm512_loadu_ps(lv + (size_t)r * 16);
      alpha[r] = 1.0f;
      // A new reference only when a score exceeds the old one by more than the slack (on
      // the first visible chunk, where m = -inf, always): most chunks skip the horizontal
      // max and the rescale. Exponentials then reach e^slack at most, far from overflow.
      if (_mm512_cmp_ps_mask(mx, _mm512_set1_ps(m[r] + kRescaleSlack), _CMP_GT_OQ)) {
        const float mnew = _mm512_reduce_max_ps(mx);
        alpha[r] = expf(m[r] - mnew);  // 0 on the first visible chunk
        sum = _mm512_mul_ps(sum, _mm512_set1_ps(alpha[r]));
        m[r] = mnew;
      }
      const __m512 mv = _mm512_set1_ps(m[r]);
      const __m512 e0 = Ops::exp(_mm512_sub_ps(s0, mv));  // exp(-inf) = 0: hidden keys drop out
      const __m512 e1 = Ops::exp(_mm512_sub_ps(s1, mv));
      _mm512_storeu_ps(lv + (size_t)r * 16, _mm512_add_ps(sum, _mm512_add_ps(e0, e1)));
      if constexpr (kDp) {
#ifdef __AVX512BF16__
        // keys 0-15 in the low half, 16-31 in the high: dword t = keys 2t, 2t+1
        _mm512_storeu_si512(pp + r * (kChunk / 2), (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
#endif
      } else {
        _mm512_storeu_ps(p + r * kChunk, e0);
        _mm512_storeu_ps(p + r * kChunk + 16, e1);
      }
    }

    // 3. acc = acc * alpha + P V
    if constexpr (kDp) {
#ifdef __AVX512BF16__
      stage_v_pairs<D>(reinterpret_cast<const bf16* const*>(vrows), j0, j1, vp);
#endif
    } else {
      for (int j = j0; j < j1; ++j) {
        if constexpr (kBf16Cache) {
          Ops::load(vrows[j], vf + (size_t)j * D, D, 1.0f);
          vrows_f[j] = vf + (size_t)j * D;
        } else {
          vrows_f[j] = reinterpret_cast<const float*>(vrows[j]);
        }
      }
    }
    pv_rows<D, kDp>(R, acc, alpha, p, pp, vrows_f, vp, j0, j1);
  }
#ifdef __AVX512BF16__
  if constexpr (kDp)
    for (int r = 0; r < R; ++r) unpermute<D>(acc + (size_t)r * D);
#endif
  for (int r = 0; r < R; ++r) l[r] = _mm512_reduce_add_ps(_mm512_loadu_ps(lv + (size_t)r * 16));
  finish_rows<TQ>(a, u, R, acc, m, l, ps);
}

}  // namespace blocked
