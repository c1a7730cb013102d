// The GEMV tile of quant_gguf.cpp, included there once per instruction set with
// OCTAVO_TILE_NAME (the function), OCTAVO_TILE_TARGET (its target attribute) and
// OCTAVO_TILE_DOT (the block's integer dot product) defined; no include guard on purpose.
// R rows of x against output rows [n0, n1); one decode of each weight block serves the R rows
template <int R>
__attribute__((target(OCTAVO_TILE_TARGET))) void OCTAVO_TILE_NAME(
    int type, const uint8_t* w, int64_t n0, int64_t n1, int64_t k, const QuantizedRows& x, int64_t r0, float* y,
    int64_t y_stride) {
  const int64_t nb = k / kBlock, bytes = block_bytes(type);
  const float off = static_cast<float>(weight_offset(type));
  const bool has_offset = type != kQ8_0;
  // the first 4 bytes of 8 consecutive blocks (the scale d, and Q4_1's m after it) in one gather
  const __m256i starts = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(bytes));
  const __m256i low_halves = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 4, 5,
                                               8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1);
  for (int64_t n = n0; n < n1; ++n) {
    __m256 acc[R], acc_offset[R];
    float tail_offset[R];
    for (int r = 0; r < R; ++r) {
      acc[r] = _mm256_setzero_ps();
      acc_offset[r] = _mm256_setzero_ps();
      tail_offset[r] = 0.0f;
    }
    const uint8_t* row = w + n * nb * bytes;
    int64_t b = 0;
    // 8 blocks at a time: their scales and offsets as vectors, each block's scale broadcast by a permute
    for (; b + 8 <= nb; b += 8) {
      const uint8_t* blk0 = row + b * bytes;
      const __m256i heads = _mm256_i32gather_epi32(reinterpret_cast<const int*>(blk0), starts, 1);
      const __m256i d16 = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(heads, low_halves), 0x08);
      const __m256 d = _mm256_cvtph_ps(_mm256_castsi256_si128(d16));
      __m256 mo = _mm256_mul_ps(d, _mm256_set1_ps(-off));  // m - off * d
      if (type == kQ4_1) {
        const __m256i m16 = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(_mm256_srli_epi32(heads, 16), low_halves), 0x08);
        mo = _mm256_add_ps(mo, _mm256_cvtph_ps(_mm256_castsi256_si128(m16)));
      }
      for (int r = 0; r < R; ++r) {
        const int64_t xr = (r0 + r) * nb + b;
        const __m256 scale = _mm256_mul_ps(d, _mm256_loadu_ps(x.d.data() + xr));
        if (has_offset) acc_offset[r] = _mm256_fmadd_ps(mo, _mm256_loadu_ps(x.ds.data() + xr), acc_offset[r]);
        for (int j = 0; j < 8; ++j) {
          __m256i wu, xs;
          block_operands(type, blk0 + j * bytes, x.q.data() + (xr + j) * kBlock, wu, xs);
          const __m256 s = _mm256_permutevar8x32_ps(scale, _mm256_set1_epi32(j));
          acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(OCTAVO_TILE_DOT(wu, xs)), s, acc[r]);
        }
      }
    }
    for (; b < nb; ++b) {
      const uint8_t* blk = row + b * bytes;
      const float d = _cvtsh_ss(*reinterpret_cast<const uint16_t*>(blk));
      const float m = type == kQ4_1 ? _cvtsh_ss(*reinterpret_cast<const uint16_t*>(blk + 2)) : 0.0f;
      for (int r = 0; r < R; ++r) {
        const int64_t xr = (r0 + r) * nb + b;
        __m256i wu, xs;
        block_operands(type, blk, x.q.data() + xr * kBlock, wu, xs);
        const __m256i dot = OCTAVO_TILE_DOT(wu, xs);
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d * x.d[xr]), acc[r]);
        if (has_offset) tail_offset[r] += (m - off * d) * x.ds[xr];
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m256 t = _mm256_add_ps(acc[r], acc_offset[r]);
      const __m128 s = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
      const __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
      y[(r0 + r) * y_stride + n] = _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2))) + tail_offset[r];
    }
  }
}

#undef OCTAVO_TILE_NAME
#undef OCTAVO_TILE_TARGET
#undef OCTAVO_TILE_DOT
