/* The binary dynamic maps' encoders and decoder in 16 lanes (AVX-512F + CD), included by bincode.h after the
 * scalar forms and lut_t; the arithmetic and its exactness argument are those of bincode.h. */
#ifndef EIGHTBIT_BINCODE_AVX512_H
#define EIGHTBIT_BINCODE_AVX512_H
#if defined(__AVX512F__) && defined(__AVX512CD__)
/* The same in 16 lanes, with per-binade tables (lut_t.bin_k*, built by tables.binade_params) looked up at the
 * low five bits of the exponent field with one vpermi2d each, so a rounding is an add and a shift: nearest
 * magnitude (a + near + negative) >> shift, the region below the smallest code included. Valid for |n| < 1
 * (the encoder takes the 8-lane path for a block scaled by 2^127, whose values may reach 2). */
typedef struct {
    __m512i near_lo, near_hi, neg_lo, neg_hi, sh_lo, sh_hi, sh2_lo, sh2_hi, off, shift, cmin, one, maxmag,
        inv_cmin, m7f, sbit, e95;
    int is_signed;
} bin_v16_t;

static inline bin_v16_t bin_v16(const lut_t *L) {
    bin_v16_t v;
    v.near_lo = _mm512_loadu_si512(L->bin_knear);
    v.near_hi = _mm512_loadu_si512(L->bin_knear + 16);
    v.neg_lo = _mm512_loadu_si512(L->bin_knegoff);
    v.neg_hi = _mm512_loadu_si512(L->bin_knegoff + 16);
    v.sh_lo = _mm512_loadu_si512(L->bin_kshift);
    v.sh_hi = _mm512_loadu_si512(L->bin_kshift + 16);
    v.sh2_lo = _mm512_loadu_si512(L->bin_kshift2);
    v.sh2_hi = _mm512_loadu_si512(L->bin_kshift2 + 16);
    v.off = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)L->bin_off));
    v.shift = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)L->bin_shift));
    v.cmin = _mm512_set1_epi32(L->bin_bottom[0]);
    v.one = _mm512_set1_epi32(1);
    v.maxmag = _mm512_set1_epi32(L->bin_signed ? 127 : 255);
    v.inv_cmin = _mm512_set1_epi32((254 << 23) - L->bin_bottom[0]);
    v.m7f = _mm512_set1_epi32(0x7FFFFFFF);
    v.sbit = _mm512_set1_epi32((int32_t)0x80000000u);
    v.e95 = _mm512_set1_epi32(95); /* exponents below 2^-32 share binade 31's entry (below every code) */
    v.is_signed = L->bin_signed;
    return v;
}

static inline __m512 bin_decode16(const bin_v16_t *V, __m512i idx) {
    __m512i mag = idx;
    __mmask16 neg = 0;
    if (V->is_signed) {
        neg = _mm512_cmplt_epi32_mask(idx, _mm512_set1_epi32(128));
        mag = _mm512_mask_sub_epi32(_mm512_sub_epi32(idx, _mm512_set1_epi32(128)), neg, _mm512_set1_epi32(127), idx);
    }
    const __m512i t = _mm512_sub_epi32(_mm512_set1_epi32(31), _mm512_lzcnt_epi32(mag));
    __m512i bits = _mm512_add_epi32(_mm512_permutexvar_epi32(t, V->off),
                                    _mm512_sllv_epi32(mag, _mm512_permutexvar_epi32(t, V->shift)));
    bits = _mm512_mask_or_epi32(bits, neg, bits, V->sbit);
    return _mm512_castsi512_ps(_mm512_maskz_mov_epi32(_mm512_test_epi32_mask(mag, mag), bits));
}

/* Index from magnitude; "neg" holds the lanes with bits <= 0 (+0 included: both zeros go to index 127). */
static inline __m512i bin_index16(const bin_v16_t *V, __m512i mag, __mmask16 neg) {
    mag = _mm512_min_epu32(mag, V->maxmag);
    if (!V->is_signed) return _mm512_maskz_mov_epi32((__mmask16)~neg, mag);
    return _mm512_mask_sub_epi32(_mm512_add_epi32(mag, _mm512_set1_epi32(128)), neg, _mm512_set1_epi32(127), mag);
}

static inline __m512i bin_nearest16(const bin_v16_t *V, __m512i bits) {
    const __m512i a = _mm512_and_si512(bits, V->m7f);
    const __mmask16 neg = _mm512_cmple_epi32_mask(bits, _mm512_setzero_si512());
    const __m512i e = _mm512_max_epi32(_mm512_srli_epi32(a, 23), V->e95);
    __m512i t = _mm512_permutex2var_epi32(V->near_lo, e, V->near_hi);
    t = _mm512_mask_add_epi32(t, neg, t, V->one); /* ties: toward zero if positive, away if negative */
    const __m512i mag = _mm512_srlv_epi32(_mm512_add_epi32(a, t), _mm512_permutex2var_epi32(V->sh_lo, e, V->sh_hi));
    return bin_index16(V, mag, neg);
}

/* From the smallest code up: with r = a - offset, the lower magnitude is r >> shift and the fraction's top 24
 * bits W = (r << (32 - shift)) >> 8 (exact: a gap is at most 2^23 in the bits); the reference moves up
 * (positive) iff d < W, and for negative n (lower index = larger magnitude) keeps the larger magnitude iff
 * d >= 2^24 - W: both are a carry out of bit 24 of W + d', d' = d or 2^24 - 1 - d. Below the smallest code the
 * reference's float fraction decides (lanes there are rare: that part is skipped when none is). */
static inline __m512i bin_stochastic16(const bin_v16_t *V, __m512 n, __m512i d) {
    const __m512i bits = _mm512_castps_si512(n), zero = _mm512_setzero_si512();
    const __m512i a = _mm512_and_si512(bits, V->m7f);
    const __mmask16 neg = _mm512_cmple_epi32_mask(bits, zero);
    const __m512i e = _mm512_max_epi32(_mm512_srli_epi32(a, 23), V->e95);
    const __m512i r = _mm512_add_epi32(a, _mm512_permutex2var_epi32(V->neg_lo, e, V->neg_hi));
    const __m512i fl = _mm512_srlv_epi32(r, _mm512_permutex2var_epi32(V->sh_lo, e, V->sh_hi));
    const __m512i w = _mm512_srli_epi32(_mm512_sllv_epi32(r, _mm512_permutex2var_epi32(V->sh2_lo, e, V->sh2_hi)), 8);
    const __m512i dd = _mm512_mask_xor_epi32(d, (__mmask16)~neg, d, _mm512_set1_epi32(0xFFFFFF));
    __m512i mag = _mm512_add_epi32(fl, _mm512_srli_epi32(_mm512_add_epi32(w, dd), 24));
    const __mmask16 below = _mm512_cmplt_epu32_mask(a, V->cmin);
    if (below) {
        const __m512 u = _mm512_mul_ps(_mm512_cvtepi32_ps(d), _mm512_set1_ps(1.0f / 16777216.0f));
        const __m512 c_lo = _mm512_castsi512_ps(_mm512_maskz_mov_epi32(neg, _mm512_or_si512(V->cmin, V->sbit)));
        const __m512 fz = _mm512_mul_ps(_mm512_sub_ps(n, c_lo), _mm512_castsi512_ps(V->inv_cmin));
        const __mmask16 upz = _mm512_cmp_ps_mask(u, fz, _CMP_LT_OQ);
        mag = _mm512_mask_mov_epi32(mag, below, zero);
        mag = _mm512_mask_mov_epi32(mag, below & (neg ^ upz), V->one); /* positive: up; negative: not up */
    }
    return bin_index16(V, mag, neg);
}
#endif
#if defined(__AVX512BW__)
/* Values of 32 codes q[0..32) (unscaled) into lo (first 16) and hi: every code of a binary map is a bfloat16,
 * so its top 16 bits come from a 256-entry table of words (four vpermi2w over 64 entries each). */
typedef struct {
    __m512i t[8];
} bin_w32_t;

static inline bin_w32_t bin_w32(const lut_t *L) {
    bin_w32_t w;
    for (int j = 0; j < 8; j++) w.t[j] = _mm512_loadu_si512(L->bin_bf16 + 32 * j);
    return w;
}

static inline void bin_decode32(const bin_w32_t *W, const uint8_t *q, __m512 *lo, __m512 *hi) {
    const __m512i c = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)q));
    const __mmask32 b6 = _mm512_test_epi16_mask(c, _mm512_set1_epi16(64));
    const __mmask32 b7 = _mm512_test_epi16_mask(c, _mm512_set1_epi16(128));
    const __m512i r0 = _mm512_mask_mov_epi16(_mm512_permutex2var_epi16(W->t[0], c, W->t[1]), b6,
                                             _mm512_permutex2var_epi16(W->t[2], c, W->t[3]));
    const __m512i r1 = _mm512_mask_mov_epi16(_mm512_permutex2var_epi16(W->t[4], c, W->t[5]), b6,
                                             _mm512_permutex2var_epi16(W->t[6], c, W->t[7]));
    const __m512i r = _mm512_mask_mov_epi16(r0, b7, r1);
    *lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(r)), 16));
    *hi = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(r, 1)), 16));
}
#endif
#endif
