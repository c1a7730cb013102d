// The AVX-512 vector-ops policy shared by the avx512 and avx512bf16 kernel files. Included
// inside each file's ISA namespace, after <immintrin.h> (so it includes no headers itself).
// Needs AVX-512 F, BW, VL, DQ and FMA; the avx512bf16 file adds AVX512_BF16, which the
// kernels use under `#ifdef __AVX512BF16__`.

struct Ops {
  static inline __mmask16 tail(int n) { return (__mmask16)((1u << n) - 1u); }
  static inline __m512 ld(const float* p) { return _mm512_loadu_ps(p); }
  static inline __m512 ld(const float* p, __mmask16 k) { return _mm512_maskz_loadu_ps(k, p); }
  // bf16 -> fp32 is a 16-bit left shift of the bits
  static inline __m512 ld(const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
  }
  static inline __m512 ld(const uint16_t* p, __mmask16 k) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p)), 16));
  }
  static inline __m256i to_bf16(__m512 x) {  // round to nearest even (NaN inputs are not expected)
    __m512i b = _mm512_castps_si512(x);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
    b = _mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(b, 16));
  }

  template <typename T>
  static void load(const T* src, float* dst, int n, float mul) {
    const __m512 s = _mm512_set1_ps(mul);
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_mul_ps(ld(src + i), s));
    if (i < n) _mm512_mask_storeu_ps(dst + i, tail(n - i), _mm512_mul_ps(ld(src + i, tail(n - i)), s));
  }
  static void store(const float* src, float* dst, int n, float mul) {
    const __m512 s = _mm512_set1_ps(mul);
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_mul_ps(ld(src + i), s));
    if (i < n) _mm512_mask_storeu_ps(dst + i, tail(n - i), _mm512_mul_ps(ld(src + i, tail(n - i)), s));
  }
  static void store(const float* src, uint16_t* dst, int n, float mul) {
    const __m512 s = _mm512_set1_ps(mul);
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm256_storeu_si256((__m256i*)(dst + i), to_bf16(_mm512_mul_ps(ld(src + i), s)));
    if (i < n) _mm256_mask_storeu_epi16(dst + i, tail(n - i), to_bf16(_mm512_mul_ps(ld(src + i, tail(n - i)), s)));
  }
  static float dot(const float* a, const float* b, int n) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
      acc0 = _mm512_fmadd_ps(ld(a + i), ld(b + i), acc0);
      acc1 = _mm512_fmadd_ps(ld(a + i + 16), ld(b + i + 16), acc1);
    }
    for (; i + 16 <= n; i += 16) acc0 = _mm512_fmadd_ps(ld(a + i), ld(b + i), acc0);
    if (i < n) acc1 = _mm512_fmadd_ps(ld(a + i, tail(n - i)), ld(b + i, tail(n - i)), acc1);
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  }
  static void axpy(float* y, float a, const float* x, int n) {
    const __m512 s = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(s, ld(x + i), ld(y + i)));
    if (i < n) {
      const __mmask16 k = tail(n - i);
      _mm512_mask_storeu_ps(y + i, k, _mm512_fmadd_ps(s, ld(x + i, k), ld(y + i, k)));
    }
  }
  static void scal(float* y, float a, int n) {
    const __m512 s = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_mul_ps(ld(y + i), s));
    if (i < n) _mm512_mask_storeu_ps(y + i, tail(n - i), _mm512_mul_ps(ld(y + i, tail(n - i)), s));
  }
  static void mul(float* y, const float* w, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_mul_ps(ld(y + i), ld(w + i)));
    if (i < n) _mm512_mask_storeu_ps(y + i, tail(n - i), _mm512_mul_ps(ld(y + i, tail(n - i)), ld(w + i, tail(n - i))));
  }
  static float max(const float* x, int n) {
    __m512 m = _mm512_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 16 <= n; i += 16) m = _mm512_max_ps(m, ld(x + i));
    if (i < n) m = _mm512_max_ps(m, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail(n - i), x + i));
    return _mm512_reduce_max_ps(m);
  }
  // exp with Cephes' polynomial (about 1 ulp on [-87, 0]); inputs below -87 give 0
  static inline __m512 exp(__m512 x) {
    const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_maskz_mov_ps((__mmask16)~tiny, _mm512_scalef_ps(p, n));
  }
  static float exp_sum(float* x, int n, float m) {
    const __m512 mv = _mm512_set1_ps(m);
    __m512 s = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
      const __m512 e = exp(_mm512_sub_ps(ld(x + i), mv));
      _mm512_storeu_ps(x + i, e);
      s = _mm512_add_ps(s, e);
    }
    if (i < n) {
      const __mmask16 k = tail(n - i);
      const __m512 e = _mm512_maskz_mov_ps(k, exp(_mm512_sub_ps(ld(x + i, k), mv)));
      _mm512_mask_storeu_ps(x + i, k, e);
      s = _mm512_add_ps(s, e);
    }
    return _mm512_reduce_add_ps(s);
  }
};

