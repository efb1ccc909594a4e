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
    __m512i near_lo, near_hi, neg_lo, neg_hi, sh_lo, sh_hi, dsh_lo, dsh_hi, off, shift, cmin, one, maxmag,
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
    v.dsh_lo = _mm512_sub_epi32(_mm512_set1_epi32(32), v.sh_lo); /* a hash's shift to a draw's top s bits */
    v.dsh_hi = _mm512_sub_epi32(_mm512_set1_epi32(32), v.sh_hi);
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

/* Stores the 64 indices (0..255) of r[0..4) (16 each, in order) as bytes: two saturating packs interleave the
 * four vectors per 128-bit lane (dword 4 L + j of the result holds r[j]'s values 4 L .. 4 L + 3), one dword
 * permute restores the order (vpmovdb costs two uops per 16). */
static inline void bin_store64(const __m512i r[4], uint8_t *q) {
#if !defined(__AVX512BW__)
    for (int j = 0; j < 4; j++) _mm_storeu_si128((__m128i *)(q + 16 * j), _mm512_cvtepi32_epi8(r[j]));
    return;
#endif
    const __m512i b = _mm512_packus_epi16(_mm512_packus_epi32(r[0], r[1]), _mm512_packus_epi32(r[2], r[3]));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_storeu_si512(q, _mm512_permutexvar_epi32(order, b));
}

/* Index from magnitude; "neg" holds the lanes with bits <= 0 (+0 included: both zeros go to index 127). sg: the
 * map is signed (V->is_signed; a constant where the caller knows it, so the loop carries no test). */
static inline __attribute__((always_inline)) __m512i bin_index16(const bin_v16_t *V, __m512i mag, __mmask16 neg,
                                                                 const int sg) {
    mag = _mm512_min_epu32(mag, V->maxmag);
    if (!sg) return _mm512_maskz_mov_epi32((__mmask16)~neg, mag);
    return _mm512_mask_sub_epi32(_mm512_add_epi32(mag, _mm512_set1_epi32(128)), neg, _mm512_set1_epi32(127), mag);
}

static inline __attribute__((always_inline)) __m512i bin_nearest16s(const bin_v16_t *V, __m512i bits, const int sg) {
    const __m512i a = _mm512_and_si512(bits, V->m7f);
    const __mmask16 neg = _mm512_cmple_epi32_mask(bits, _mm512_setzero_si512());
    const __m512i e = _mm512_max_epi32(_mm512_srli_epi32(a, 23), V->e95);
    __m512i t = _mm512_permutex2var_epi32(V->near_lo, e, V->near_hi);
    t = _mm512_mask_add_epi32(t, neg, t, V->one); /* ties: toward zero if positive, away if negative */
    const __m512i mag = _mm512_srlv_epi32(_mm512_add_epi32(a, t), _mm512_permutex2var_epi32(V->sh_lo, e, V->sh_hi));
    return bin_index16(V, mag, neg, sg);
}

static inline __m512i bin_nearest16(const bin_v16_t *V, __m512i bits) { return bin_nearest16s(V, bits, V->is_signed); }

/* From the smallest code up: with r = a - offset, the lower magnitude is r >> s (s = shift, at most 23: a gap
 * is at most 2^23 in the bits) and the fraction is low / 2^s, low = r mod 2^s. The reference moves up
 * (positive n) iff u = d / 2^24 < low / 2^s, i.e. D < low with D = d >> (24 - s) (low * 2^(24 - s) is a multiple
 * of 2^(24 - s)); that is the carry of low + (2^s - 1 - D) out of bit s, and 2^s - 1 - D = d' >> (24 - s) for
 * d' = d ^ 0xFFFFFF. For negative n (lower index = larger magnitude) the larger magnitude is kept iff
 * d >= 2^24 - W, the same carry with d' = d. So the magnitude is (r + (d' >> (24 - s))) >> s. Below the smallest
 * code the reference's float fraction decides (lanes there are rare: that part is skipped when none is). */
static inline __m512i bin_carry16(const bin_v16_t *V, __m512i r, __m512i e, __m512i dd) {
    /* the draw's shift 24 - s is computed (below cmin, s = 31: a negative count, read as > 31, shifts it out) */
    const __m512i sh = _mm512_permutex2var_epi32(V->sh_lo, e, V->sh_hi);
    const __m512i frac = _mm512_srlv_epi32(dd, _mm512_sub_epi32(_mm512_set1_epi32(24), sh));
    return _mm512_srlv_epi32(_mm512_add_epi32(r, frac), sh);
}

/* The magnitudes of the lanes below the smallest code (mask below), where the reference's float fraction decides:
 * lower code 0 (positive) or -cmin (negative), up with probability (n - lo) / cmin. */
static inline __m512i bin_below16(const bin_v16_t *V, __m512 n, __m512i d, __mmask16 neg, __mmask16 below,
                                  __m512i mag) {
    const __m512 u = _mm512_mul_ps(_mm512_cvtepi32_ps(d), _mm512_set1_ps(1.0f / 16777216.0f));
    const __m512 c_lo = _mm512_castsi512_ps(_mm512_maskz_mov_epi32(neg, _mm512_or_si512(V->cmin, V->sbit)));
    const __m512 fz = _mm512_mul_ps(_mm512_sub_ps(n, c_lo), _mm512_castsi512_ps(V->inv_cmin));
    const __mmask16 upz = _mm512_cmp_ps_mask(u, fz, _CMP_LT_OQ);
    mag = _mm512_mask_mov_epi32(mag, below, _mm512_setzero_si512());
    return _mm512_mask_mov_epi32(mag, below & (neg ^ upz), V->one); /* positive: up; negative: not up */
}

static inline __m512i bin_stochastic16(const bin_v16_t *V, __m512 n, __m512i d) {
    const __m512i bits = _mm512_castps_si512(n), zero = _mm512_setzero_si512();
    const __m512i a = _mm512_and_si512(bits, V->m7f);
    const __mmask16 neg = _mm512_cmple_epi32_mask(bits, zero);
    const __m512i e = _mm512_max_epi32(_mm512_srli_epi32(a, 23), V->e95);
    const __m512i r = _mm512_add_epi32(a, _mm512_permutex2var_epi32(V->neg_lo, e, V->neg_hi));
    const __m512i dd = _mm512_mask_xor_epi32(d, (__mmask16)~neg, d, _mm512_set1_epi32(0xFFFFFF));
    __m512i mag = bin_carry16(V, r, e, dd);
    const __mmask16 below = _mm512_cmplt_epu32_mask(a, V->cmin);
    if (below) mag = bin_below16(V, n, d, neg, below, mag);
    return bin_index16(V, mag, neg, V->is_signed);
}

/* bin_stochastic16 for an unsigned map, the draw given as e = d ^ 0xFFFFFF: every lane that is not "negative"
 * (bits <= 0, index 0 whatever the draw) uses d' = e, and no sign bit needs clearing (a negative lane's garbage
 * magnitude is masked to index 0, and it is never below the smallest code as an unsigned integer). */
static inline __m512i bin_stochastic16u(const bin_v16_t *V, __m512 n, __m512i e24) {
    const __m512i a = _mm512_castps_si512(n), zero = _mm512_setzero_si512();
    const __mmask16 neg = _mm512_cmple_epi32_mask(a, zero);
    const __m512i e = _mm512_max_epi32(_mm512_srli_epi32(a, 23), V->e95);
    const __m512i r = _mm512_add_epi32(a, _mm512_permutex2var_epi32(V->neg_lo, e, V->neg_hi));
    __m512i mag = bin_carry16(V, r, e, e24);
    const __mmask16 below = _mm512_cmplt_epu32_mask(a, V->cmin);
    if (below) mag = bin_below16(V, n, _mm512_xor_si512(e24, _mm512_set1_epi32(0xFFFFFF)), neg, below, mag);
    return _mm512_maskz_mov_epi32((__mmask16)~neg, _mm512_min_epu32(mag, V->maxmag));
}

/* The streamlined encoders of the optimizers' usual states, valid where every lane is inside the per-binade
 * tables' range (bin_encode64_usual checks that): bin_stochastic16u and bin_nearest16s without the exponent clamp,
 * the masks of zero, negative and below-the-smallest-code lanes, and the magnitude clamp, which the saturating
 * packs of the store take over (bin_store64 / bin_store64s). Stochastic, unsigned map, every n at least the
 * smallest code: h is the complemented hash itself (d' = h >> 8, so d' >> (24 - s) = h >> (32 - s), s <= 23
 * there); a magnitude of 256 saturates to 255. */
static inline __attribute__((always_inline)) __m512i bin_stochastic16up(const bin_v16_t *V, __m512 n, __m512i h) {
    const __m512i a = _mm512_castps_si512(n), e = _mm512_srli_epi32(a, 23);
    const __m512i r = _mm512_add_epi32(a, _mm512_permutex2var_epi32(V->neg_lo, e, V->neg_hi));
    const __m512i frac = _mm512_srlv_epi32(h, _mm512_permutex2var_epi32(V->dsh_lo, e, V->dsh_hi));
    return _mm512_srlv_epi32(_mm512_add_epi32(r, frac), _mm512_permutex2var_epi32(V->sh_lo, e, V->sh_hi));
}

/* Nearest, signed map, every |n| >= 2^-31 (no zero): the magnitude, or -magnitude - 1 where n is negative (the
 * tie rule's one added there as well); bin_store64s saturates that to [-128, 127] and adds 128, which is
 * 128 + min(mag, 127) or 127 - min(mag, 127), bin_index16's index. */
static inline __attribute__((always_inline)) __m512i bin_nearest16nz(const bin_v16_t *V, __m512i bits) {
    const __m512i sg = _mm512_srai_epi32(bits, 31), a = _mm512_and_si512(bits, V->m7f);
    const __m512i e = _mm512_srli_epi32(a, 23);
    const __m512i t = _mm512_sub_epi32(_mm512_permutex2var_epi32(V->near_lo, e, V->near_hi), sg);
    const __m512i mag = _mm512_srlv_epi32(_mm512_add_epi32(a, t), _mm512_permutex2var_epi32(V->sh_lo, e, V->sh_hi));
    return _mm512_xor_si512(mag, sg);
}
#endif
/* Codes of the 64 values x[0..64) * inv into q[0..64): mode BIN_NEAREST_S / _U nearest on a signed / unsigned map,
 * BIN_STOCHASTIC_U stochastic on an unsigned map (*hv: the complemented hashes of the 16 lanes, stepped down by step
 * per 16 values), BIN_STOCHASTIC_S on a signed map (*hv: the hashes, stepped up); bin_encode_block explains the
 * hashes. floor: an unsigned map's positive values keep code 1 at least (quantize_blocks' floor), where the
 * streamlined path (AVX-512BW) is taken; bin_encode_block covers the others. */
#if defined(__AVX512F__) && defined(__AVX512CD__)
enum { BIN_NEAREST_S = 0, BIN_STOCHASTIC_U = 1, BIN_STOCHASTIC_S = 2, BIN_NEAREST_U = 3 };

#if defined(__AVX512BW__)
/* bin_store64 for bin_nearest16nz's signed values: signed saturation to [-128, 127], then + 128 per byte. */
static inline void bin_store64s(const __m512i r[4], uint8_t *q) {
    const __m512i b = _mm512_xor_si512(_mm512_packs_epi16(_mm512_packs_epi32(r[0], r[1]), _mm512_packs_epi32(r[2], r[3])),
                                       _mm512_set1_epi8((char)0x80));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_storeu_si512(q, _mm512_permutexvar_epi32(order, b));
}

/* bin_encode64 for BIN_STOCHASTIC_U and BIN_NEAREST_S, the optimizers' usual states (second moments and sums
 * rounded stochastically, first moments to nearest): the streamlined encoder on all 64 values, then, where some
 * lane lies outside its range (rare: below the smallest code, zero or negative for the stochastic one; zero or
 * below 2^-31 for the nearest one), the full encoder on all 64, with floor for the stochastic one (the streamlined
 * range starts at the smallest code, so it needs none). One test per 64 keeps the loop free of branches (a test per
 * 16 made the compiler spill the results). */
static inline void bin_encode64_usual(const bin_v16_t *W, const float *x, __m512 inv, int mode, __m512i *hv,
                                      __m512i step, uint8_t *q, const int floor) {
    const int stochastic = mode == BIN_STOCHASTIC_U;
    const __m512i e96 = _mm512_set1_epi32(96 << 23);
    __m512 n[4];
    __m512i h[4], r[4];
    __mmask16 out = 0;
    for (int j = 0; j < 4; j++) {
        n[j] = _mm512_mul_ps(_mm512_loadu_ps(x + 16 * j), inv);
        const __m512i bits = _mm512_castps_si512(n[j]);
        if (stochastic) {
            h[j] = *hv;
            *hv = _mm512_sub_epi32(*hv, step);
            r[j] = bin_stochastic16up(W, n[j], h[j]);
            out |= _mm512_cmplt_epi32_mask(bits, W->cmin);
        } else {
            r[j] = bin_nearest16nz(W, bits);
            out |= _mm512_cmplt_epu32_mask(_mm512_and_si512(bits, W->m7f), e96);
        }
    }
    if (!out) {
        if (stochastic)
            bin_store64(r, q);
        else
            bin_store64s(r, q);
        return;
    }
    for (int j = 0; j < 4; j++) {
        r[j] = stochastic ? bin_stochastic16u(W, n[j], _mm512_srli_epi32(h[j], 8))
                          : bin_nearest16s(W, _mm512_castps_si512(n[j]), 1);
        if (stochastic && floor) /* a positive value keeps code 1 at least (quantize_blocks' floor) */
            r[j] = _mm512_mask_mov_epi32(r[j], _mm512_cmpgt_epi32_mask(_mm512_castps_si512(n[j]), _mm512_setzero_si512()) &
                                                   _mm512_cmpeq_epi32_mask(r[j], _mm512_setzero_si512()), W->one);
    }
    bin_store64(r, q);
}
#endif

static inline void bin_encode64(const bin_v16_t *W, const float *x, __m512 inv, int mode, __m512i *hv, __m512i step,
                                uint8_t *q, const int floor) {
#if defined(__AVX512BW__)
    if (mode == BIN_STOCHASTIC_U || mode == BIN_NEAREST_S) {
        bin_encode64_usual(W, x, inv, mode, hv, step, q, floor);
        return;
    }
#endif
    (void)floor;
    __m512i r[4];
    for (int j = 0; j < 4; j++) {
        const __m512 n = _mm512_mul_ps(_mm512_loadu_ps(x + 16 * j), inv);
        if (mode == BIN_NEAREST_S || mode == BIN_NEAREST_U) {
            r[j] = bin_nearest16s(W, _mm512_castps_si512(n), mode == BIN_NEAREST_S);
        } else if (mode == BIN_STOCHASTIC_U) {
            r[j] = bin_stochastic16u(W, n, _mm512_srli_epi32(*hv, 8));
            *hv = _mm512_sub_epi32(*hv, step);
        } else {
            r[j] = bin_stochastic16(W, n, _mm512_srli_epi32(*hv, 8));
            *hv = _mm512_add_epi32(*hv, step);
        }
    }
    bin_store64(r, q);
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
#if defined(__AVX512VBMI__) && defined(__AVX512BW__)
/* Decoding with the block's scale folded into the table: for a scale 2^k, code value * 2^k is the code's bfloat16
 * with k added to its exponent (exact while every nonzero code stays a normal float: bin_fold_exponent), so the
 * scaled values of 64 codes come from two byte tables (high and low byte of the bfloat16; two vpermi2b each,
 * bit 7 choosing the half) and two rounds of unpacking, with no multiply. lo[0..1] / hi[0..1] hold codes 0..127,
 * lo[2..3] / hi[2..3] codes 128..255. */
typedef struct {
    __m512i lo[4], hi[4];
    int32_t k; /* the scale exponent the tables hold (tables are rebuilt only when it changes) */
    const lut_t *lut; /* the map they were built from (optim_range resets k when it changes) */
} bin_b64_t;

/* k of a block scale that can be folded (a positive power of two 2^k with cmin * 2^k normal), else INT32_MIN:
 * zero, NaN, a scale that is not a power of two (a state loaded from elsewhere) or one small enough to make the
 * smallest code subnormal decode by multiplying. */
static inline int32_t bin_fold_exponent(const lut_t *L, float scale) {
    uint32_t u;
    memcpy(&u, &scale, 4);
    const int32_t e = (int32_t)(u >> 23);
    if ((u & 0x807FFFFFu) || e == 0 || e == 255 || (L->bin_bottom[0] >> 23) + e - 127 < 1) return INT32_MIN;
    return e - 127;
}

static inline void bin_b64(const lut_t *L, int32_t k, bin_b64_t *T) {
    const __m512i add = _mm512_set1_epi16((int16_t)(k * 128)), m7f = _mm512_set1_epi16(0x7FFF);
    for (int j = 0; j < 4; j++) {
        __m512i w0 = _mm512_loadu_si512(L->bin_bf16 + 64 * j), w1 = _mm512_loadu_si512(L->bin_bf16 + 64 * j + 32);
        w0 = _mm512_mask_add_epi16(w0, _mm512_test_epi16_mask(w0, m7f), w0, add); /* zeros stay +0 */
        w1 = _mm512_mask_add_epi16(w1, _mm512_test_epi16_mask(w1, m7f), w1, add);
        T->lo[j] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi16_epi8(w0)), _mm512_cvtepi16_epi8(w1), 1);
        T->hi[j] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi16_epi8(_mm512_srli_epi16(w0, 8))),
                                      _mm512_cvtepi16_epi8(_mm512_srli_epi16(w1, 8)), 1);
    }
    T->k = k;
}

/* T holding scale's tables (rebuilt only when its exponent changed), or NULL when the scale does not fold
 * (bin_fold_exponent) or bs is not a multiple of 64. */
static inline const bin_b64_t *bin_fold(const lut_t *L, float scale, int64_t bs, bin_b64_t *T) {
    const int32_t k = bin_fold_exponent(L, scale);
    if (bs % 64 || k == INT32_MIN) return NULL;
    if (T->k != k) bin_b64(L, k, T);
    return T;
}

/* Byte order that makes the unpacks below come out in element order: the byte at 16 L + 4 r + j (128-bit lane
 * L) is code 16 r + 4 L + j. */
static const uint8_t bin_unpack_order[64] __attribute__((aligned(64))) = {
    0, 1, 2, 3, 16, 17, 18, 19, 32, 33, 34, 35, 48, 49, 50, 51, 4, 5, 6, 7, 20, 21, 22, 23, 36, 37, 38, 39,
    52, 53, 54, 55, 8, 9, 10, 11, 24, 25, 26, 27, 40, 41, 42, 43, 56, 57, 58, 59, 12, 13, 14, 15, 28, 29, 30, 31,
    44, 45, 46, 47, 60, 61, 62, 63};

/* Scaled values of the 64 codes q[0..64) into out[0..4) (16 each, in order). */
static inline void bin_decode64(const bin_b64_t *T, const uint8_t *q, __m512 out[4]) {
    const __m512i c = _mm512_permutexvar_epi8(_mm512_load_si512(bin_unpack_order), _mm512_loadu_si512(q));
    const __mmask64 top = _mm512_movepi8_mask(c);
    const __m512i lo = _mm512_mask_blend_epi8(top, _mm512_permutex2var_epi8(T->lo[0], c, T->lo[1]),
                                              _mm512_permutex2var_epi8(T->lo[2], c, T->lo[3]));
    const __m512i hi = _mm512_mask_blend_epi8(top, _mm512_permutex2var_epi8(T->hi[0], c, T->hi[1]),
                                              _mm512_permutex2var_epi8(T->hi[2], c, T->hi[3]));
    const __m512i wl = _mm512_unpacklo_epi8(lo, hi), wh = _mm512_unpackhi_epi8(lo, hi), z = _mm512_setzero_si512();
    out[0] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(z, wl));
    out[1] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(z, wl));
    out[2] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(z, wh));
    out[3] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(z, wh));
}
#endif
#endif
