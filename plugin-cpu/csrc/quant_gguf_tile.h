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
  for (int64_t n = n0; n < n1; ++n) {
    __m256 acc[R];
    float acc_offset[R];
    for (int r = 0; r < R; ++r) {
      acc[r] = _mm256_setzero_ps();
      acc_offset[r] = 0.0f;
    }
    const uint8_t* row = w + n * nb * bytes;
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = row + b * bytes;
      const float d = _cvtsh_ss(*reinterpret_cast<const uint16_t*>(blk));
      const float m = type == kQ4_1 ? _cvtsh_ss(*reinterpret_cast<const uint16_t*>(blk + 2)) : 0.0f;
      for (int r = 0; r < R; ++r) {
        const int64_t xr = (r0 + r) * nb + b;
        __m256i wu, xs;
        block_operands(type, blk, x.q.data() + xr * kBlock, wu, xs);
        const __m256i dot = OCTAVO_TILE_DOT(wu, xs);
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d * x.d[xr]), acc[r]);
        if (has_offset) acc_offset[r] += (m - off * d) * x.ds[xr];
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[r]), _mm256_extractf128_ps(acc[r], 1));
      const __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
      y[(r0 + r) * y_stride + n] = _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2))) + acc_offset[r];
    }
  }
}

#undef OCTAVO_TILE_NAME
#undef OCTAVO_TILE_TARGET
#undef OCTAVO_TILE_DOT
