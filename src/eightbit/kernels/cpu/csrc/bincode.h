/* Binary dynamic maps (eightbit.functional.codes.create_binary_dynamic_map) encoded and decoded with integer
 * arithmetic on float32 bits, exactly as the table search of the reference (quantize_blocks: nearest = number of
 * midpoints below n, ties to the lower index; stochastic: lower neighbour plus one with probability of the
 * fraction) and the table lookup of the decoder. Included by blocks.h after lut_t.
 *
 * Why it is exact: magnitude code c (> 0) in group t = floor(log2 c) has value bits off[t] + (c << shift[t]), so
 * within a group, and across a group's top edge, neighbouring codes are 2^shift[t] apart in the bit pattern and
 * the value is linear in the bits between them (a binade changes only at a code). Nearest is then a rounding of
 * the bits at shift[t], the stochastic fraction is (n - lo) times an exact power-of-two reciprocal of the gap,
 * and the block scale is a power of two, so n = x * (1 / scale) is the reference's x / scale. Below the
 * smallest code (bottom[0]) values are linear between 0 and it. The signed map stores magnitude c at index
 * 128 + c (positive) or 127 - c (negative): both 127 and 128 hold 0, and the reference puts +-0 at 127. */
#ifndef EIGHTBIT_BINCODE_H
#define EIGHTBIT_BINCODE_H

static inline uint32_t bin_f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bin_u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* 2^(floor(log2 amax) + 1), at most 2^127, from the bits of a finite amax > 0. */
static inline float bin_scale(uint32_t amax_bits) {
    const uint32_t e = (amax_bits >> 23) + 1;
    return bin_u2f((e > 254 ? 254 : e) << 23);
}

/* Code value of index idx (the 256-entry table's entry, +0.0 for both zeros). */
static inline float bin_value(const lut_t *L, uint32_t idx) {
    uint32_t mag = idx, neg = 0;
    if (L->bin_signed) {
        neg = idx < 128;
        mag = neg ? 127 - idx : idx - 128;
    }
    if (!mag) return 0.0f;
    const int t = 31 - __builtin_clz(mag);
    return bin_u2f(((uint32_t)L->bin_off[t] + (mag << L->bin_shift[t])) | (neg << 31));
}

static inline int bin_group(const lut_t *L, uint32_t a) {
    int t = 0;
    for (int g = 1; g < L->bin_groups; g++) t += a >= (uint32_t)L->bin_bottom[g];
    return t;
}

static inline int32_t bin_index(const lut_t *L, uint32_t mag, uint32_t neg) {
    return L->bin_signed ? (neg ? 127 - (int32_t)mag : 128 + (int32_t)mag) : (neg ? 0 : (int32_t)mag);
}

/* Index of the nearest code of n (ties to the lower index). */
static inline int32_t bin_nearest(const lut_t *L, float n) {
    const uint32_t bits = bin_f2u(n), neg = bits >> 31, a = bits & 0x7FFFFFFFu;
    const uint32_t cmin = (uint32_t)L->bin_bottom[0], maxmag = L->bin_signed ? 127u : 255u;
    if (a == 0) return L->bin_signed ? 127 : 0;
    uint32_t mag;
    if (a < cmin) {
        const uint32_t hm = cmin - (1u << 23); /* bits of cmin / 2 */
        mag = neg ? a >= hm : a > hm;
    } else {
        const int t = bin_group(L, a);
        const uint32_t s = (uint32_t)L->bin_shift[t];
        mag = (a - (uint32_t)L->bin_off[t] + (1u << (s - 1)) - (neg ? 0u : 1u)) >> s;
        mag = mag > maxmag ? maxmag : mag;
    }
    return bin_index(L, mag, neg);
}

/* Stochastic rounding of n with draw u, as the reference's stochastic_round. */
static inline int32_t bin_stochastic(const lut_t *L, float n, float u) {
    const uint32_t bits = bin_f2u(n), neg = bits >> 31, a = bits & 0x7FFFFFFFu;
    if (a == 0 || (neg && !L->bin_signed)) return L->bin_signed ? 127 : 0;
    uint32_t fl = 0, ce = 1;
    if (a >= (uint32_t)L->bin_bottom[0]) {
        const int t = bin_group(L, a);
        const uint32_t s = (uint32_t)L->bin_shift[t], rel = a - (uint32_t)L->bin_off[t];
        fl = rel >> s;
        ce = fl + ((rel & ((1u << s) - 1)) != 0);
    }
    int32_t lo = neg ? 127 - (int32_t)ce : (L->bin_signed ? 128 : 0) + (int32_t)fl;
    lo = lo < 0 ? 0 : (lo > 254 ? 254 : lo);
    const float c_lo = bin_value(L, (uint32_t)lo), c_hi = bin_value(L, (uint32_t)lo + 1);
    return lo + (u < (n - c_lo) / (c_hi - c_lo) ? 1 : 0);
}

#ifdef __AVX2__
typedef struct {
    __m256i off, shift, bottom[8], cmin, hm, one, m7f, sbit, maxmag, inv_cmin;
    __m256i cls_lo, cls_hi, cnear, cnegoff, cshift, cdshift, e95; /* the per-binade classes (valid when binade) */
    int is_signed, binade;
    const lut_t *lut; /* for the 16-lane tables of the same map (optim_fused.h) */
} bin_vec_t;

static inline bin_vec_t bin_vec(const lut_t *L) {
    bin_vec_t v;
    v.off = _mm256_loadu_si256((const __m256i *)L->bin_off);
    v.shift = _mm256_loadu_si256((const __m256i *)L->bin_shift);
    for (int g = 0; g < 8; g++) /* a >= b as a > b - 1; groups past the last never match */
        v.bottom[g] = _mm256_set1_epi32(g < L->bin_groups ? L->bin_bottom[g] - 1 : 0x7FFFFFFF);
    v.inv_cmin = _mm256_set1_epi32((254 << 23) - L->bin_bottom[0]); /* 1 / cmin, exact */
    v.cmin = _mm256_set1_epi32(L->bin_bottom[0]);
    v.hm = _mm256_set1_epi32(L->bin_bottom[0] - (1 << 23));
    v.one = _mm256_set1_epi32(1);
    v.m7f = _mm256_set1_epi32(0x7FFFFFFF);
    v.sbit = _mm256_set1_epi32((int32_t)0x80000000u);
    v.maxmag = _mm256_set1_epi32(L->bin_signed ? 127 : 255);
    v.lut = L;
    v.is_signed = L->bin_signed;
    v.binade = L->bin_ncls > 0;
    v.cls_lo = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)L->bin_cls));
    v.cls_hi = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(L->bin_cls + 16)));
    v.cnear = _mm256_loadu_si256((const __m256i *)L->bin_cnear);
    v.cnegoff = _mm256_loadu_si256((const __m256i *)L->bin_cnegoff);
    v.cshift = _mm256_loadu_si256((const __m256i *)L->bin_cshift);
    v.cdshift = _mm256_sub_epi32(_mm256_set1_epi32(32), v.cshift); /* a hash's shift to a draw's top s bits */
    v.e95 = _mm256_set1_epi32(95);
    return v;
}

/* Values of 8 indices (int32 lanes in 0..255). */
static inline __m256 bin_decode8(const bin_vec_t *V, __m256i idx) {
    __m256i mag = idx, neg = _mm256_setzero_si256();
    if (V->is_signed) {
        neg = _mm256_cmpgt_epi32(_mm256_set1_epi32(128), idx);
        mag = _mm256_xor_si256(_mm256_sub_epi32(idx, _mm256_set1_epi32(128)), neg); /* 127 - idx where negative */
    }
    /* t = floor(log2 mag) from the exponent of (float)mag; mag = 0 gives garbage, masked below */
    const __m256i t = _mm256_sub_epi32(_mm256_srli_epi32(_mm256_castps_si256(_mm256_cvtepi32_ps(mag)), 23),
                                       _mm256_set1_epi32(127));
    __m256i bits = _mm256_add_epi32(_mm256_permutevar8x32_epi32(V->off, t),
                                    _mm256_sllv_epi32(mag, _mm256_permutevar8x32_epi32(V->shift, t)));
    bits = _mm256_or_si256(bits, _mm256_and_si256(neg, V->sbit));
    bits = _mm256_andnot_si256(_mm256_cmpeq_epi32(mag, _mm256_setzero_si256()), bits);
    return _mm256_castsi256_ps(bits);
}

static inline __m256i bin_group8(const bin_vec_t *V, __m256i a) {
    __m256i t = _mm256_setzero_si256();
    for (int g = 1; g < 8; g++) t = _mm256_sub_epi32(t, _mm256_cmpgt_epi32(a, V->bottom[g]));
    return t;
}

/* Nearest indices of 8 values (bits). */
static inline __m256i bin_nearest8(const bin_vec_t *V, __m256i bits) {
    const __m256i neg = _mm256_srai_epi32(bits, 31), a = _mm256_and_si256(bits, V->m7f);
    const __m256i t = bin_group8(V, a);
    const __m256i s = _mm256_permutevar8x32_epi32(V->shift, t);
    /* half a gap, less one for positive n (ties to the lower index: toward zero if positive, away if negative) */
    const __m256i half = _mm256_sub_epi32(_mm256_sllv_epi32(V->one, _mm256_sub_epi32(s, V->one)),
                                          _mm256_andnot_si256(neg, V->one));
    __m256i mag = _mm256_srlv_epi32(_mm256_add_epi32(_mm256_sub_epi32(a, _mm256_permutevar8x32_epi32(V->off, t)), half), s);
    mag = _mm256_min_epu32(mag, V->maxmag);
    /* below the smallest code: 0 or the smallest code, split at half of it */
    const __m256i zmag = _mm256_sub_epi32(_mm256_setzero_si256(),
                                          _mm256_cmpgt_epi32(a, _mm256_add_epi32(V->hm, neg)));
    mag = _mm256_blendv_epi8(mag, zmag, _mm256_cmpgt_epi32(V->cmin, a));
    if (!V->is_signed) return _mm256_andnot_si256(neg, mag);
    const __m256i poszero = _mm256_andnot_si256(neg, _mm256_cmpeq_epi32(a, _mm256_setzero_si256()));
    return _mm256_add_epi32(_mm256_add_epi32(_mm256_set1_epi32(128), _mm256_xor_si256(mag, neg)), poszero);
}

/* Stochastic indices of 8 values n with 24-bit draws d (u = d / 2^24). From the smallest code up, n lies between
 * neighbours whose gap is 2^s in n's bit pattern (s of n's group; n and the lower one share a binade), so the
 * reference's fraction (n - lo) / (hi - lo) is exactly low / 2^s with low the bits below s (toward the upper
 * magnitude), or (2^s - low) / 2^s for negative n (where "up" is toward zero), and u < fraction is the integer
 * comparison d < fraction * 2^24. Below the smallest code cmin the reference's float expression is evaluated as
 * it is: (n - lo) * (1 / cmin), lo = 0 or -cmin. */
/* Magnitudes (0 or 1) of values below the smallest code, as the reference's float fraction decides: lower code 0
 * (positive n) or -cmin (negative n: neg all ones), up with probability (n - lo) / cmin for the draw d. */
static inline __m256i bin_below8(const bin_vec_t *V, __m256 n, __m256i d, __m256i neg) {
    const __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(1.0f / 16777216.0f));
    const __m256 c_lo = _mm256_castsi256_ps(_mm256_and_si256(neg, _mm256_or_si256(V->cmin, V->sbit)));
    const __m256 fz = _mm256_mul_ps(_mm256_sub_ps(n, c_lo), _mm256_castsi256_ps(V->inv_cmin));
    const __m256i upz = _mm256_castps_si256(_mm256_cmp_ps(u, fz, _CMP_LT_OQ));
    return _mm256_and_si256(_mm256_xor_si256(neg, upz), V->one); /* positive: up; negative: not up */
}

static inline __m256i bin_stochastic8(const bin_vec_t *V, __m256 n, __m256i d) {
    const __m256i bits = _mm256_castps_si256(n), zero = _mm256_setzero_si256();
    const __m256i neg = _mm256_srai_epi32(bits, 31), a = _mm256_and_si256(bits, V->m7f);
    const __m256i t = bin_group8(V, a);
    const __m256i s = _mm256_permutevar8x32_epi32(V->shift, t);
    const __m256i rel = _mm256_sub_epi32(a, _mm256_permutevar8x32_epi32(V->off, t));
    const __m256i gap = _mm256_sllv_epi32(V->one, s);
    const __m256i low = _mm256_and_si256(rel, _mm256_sub_epi32(gap, V->one));
    const __m256i fl = _mm256_min_epu32(_mm256_srlv_epi32(rel, s), V->maxmag);
    const __m256i exact = _mm256_cmpeq_epi32(low, zero);
    /* magnitude of the lower index's code: fl (positive n), the ceiling fl + 1 unless exact (negative n) */
    const __m256i base = _mm256_sub_epi32(_mm256_add_epi32(fl, V->one), _mm256_and_si256(exact, V->one));
    const __m256i mlo = _mm256_blendv_epi8(fl, base, neg);
    const __m256i num = _mm256_blendv_epi8(low, _mm256_andnot_si256(exact, _mm256_sub_epi32(gap, low)), neg);
    const __m256i up = _mm256_cmpgt_epi32(_mm256_sllv_epi32(num, _mm256_sub_epi32(_mm256_set1_epi32(24), s)), d);
    /* up moves the magnitude toward the upper code for positive n, toward zero for negative n */
    const __m256i du = _mm256_and_si256(up, V->one);
    __m256i mag = _mm256_add_epi32(mlo, _mm256_sub_epi32(_mm256_xor_si256(du, neg), neg)); /* mlo -+ du */
    mag = _mm256_blendv_epi8(mag, bin_below8(V, n, d, neg), _mm256_cmpgt_epi32(V->cmin, a)); /* below cmin */
    mag = _mm256_min_epu32(mag, V->maxmag);
    const __m256i z = _mm256_cmpeq_epi32(a, zero);
    if (!V->is_signed) return _mm256_andnot_si256(_mm256_or_si256(z, neg), mag);
    const __m256i idx = _mm256_add_epi32(_mm256_set1_epi32(128), _mm256_xor_si256(mag, neg));
    return _mm256_blendv_epi8(idx, _mm256_set1_epi32(127), z); /* +-0 -> the first zero */
}
#endif

#ifdef __AVX2__
/* The 8-lane encoders on the per-binade tables, as the 16-lane ones (bincode_avx512.h: same arithmetic, same
 * exactness argument, valid for |n| < 1): without 32-entry permutes, a binade's table row is found in two steps,
 * its class (<= 8 distinct rows; tables.binade_classes) by a byte shuffle of the exponent's low five bits, then
 * each value by an 8-entry permute of the class. About half the operations of the group search above. */
static inline __m256i bin_class8(const bin_vec_t *V, __m256i e) {
    /* byte 0 of each lane indexes the 16-entry tables (e & 15); bytes 1-3 have bit 7 set and read 0 */
    const __m256i b = _mm256_or_si256(_mm256_and_si256(e, _mm256_set1_epi32(15)), _mm256_set1_epi32((int32_t)0x80808000u));
    const __m256 lo = _mm256_castsi256_ps(_mm256_shuffle_epi8(V->cls_lo, b));
    const __m256 hi = _mm256_castsi256_ps(_mm256_shuffle_epi8(V->cls_hi, b));
    return _mm256_castps_si256(_mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(e, 27)))); /* bit 4 */
}

/* Index from magnitude; neg: the lanes with bits <= 0 (all ones), whose index is 127 - mag (signed) or 0. */
static inline __m256i bin_index8(const bin_vec_t *V, __m256i mag, __m256i neg) {
    mag = _mm256_min_epu32(mag, V->maxmag);
    if (!V->is_signed) return _mm256_andnot_si256(neg, mag);
    return _mm256_add_epi32(_mm256_set1_epi32(128), _mm256_xor_si256(mag, neg)); /* 128 + mag, or 127 - mag */
}

static inline __m256i bin_nearest8b(const bin_vec_t *V, __m256i bits) {
    const __m256i a = _mm256_and_si256(bits, V->m7f), neg = _mm256_cmpgt_epi32(V->one, bits);
    const __m256i c = bin_class8(V, _mm256_max_epi32(_mm256_srli_epi32(a, 23), V->e95));
    const __m256i t = _mm256_sub_epi32(_mm256_permutevar8x32_epi32(V->cnear, c), neg); /* ties, as bin_nearest16 */
    const __m256i mag = _mm256_srlv_epi32(_mm256_add_epi32(a, t), _mm256_permutevar8x32_epi32(V->cshift, c));
    return bin_index8(V, mag, neg);
}

/* Stochastic indices of 8 values n with 24-bit draws d: bin_carry16 and bin_below16 in 8 lanes. */
static inline __m256i bin_stochastic8b(const bin_vec_t *V, __m256 n, __m256i d) {
    const __m256i bits = _mm256_castps_si256(n);
    const __m256i a = _mm256_and_si256(bits, V->m7f), neg = _mm256_cmpgt_epi32(V->one, bits);
    const __m256i c = bin_class8(V, _mm256_max_epi32(_mm256_srli_epi32(a, 23), V->e95));
    const __m256i r = _mm256_add_epi32(a, _mm256_permutevar8x32_epi32(V->cnegoff, c));
    const __m256i dd = _mm256_xor_si256(d, _mm256_andnot_si256(neg, _mm256_set1_epi32(0xFFFFFF)));
    const __m256i sh = _mm256_permutevar8x32_epi32(V->cshift, c);
    /* the draw's shift is 24 - sh (bin_carry16); counts > 31 (below cmin, 24 - 31 < 0) give 0 */
    const __m256i frac = _mm256_srlv_epi32(dd, _mm256_sub_epi32(_mm256_set1_epi32(24), sh));
    __m256i mag = _mm256_srlv_epi32(_mm256_add_epi32(r, frac), sh);
    const __m256i below = _mm256_cmpgt_epi32(V->cmin, a);
    if (_mm256_movemask_ps(_mm256_castsi256_ps(below))) /* rare: the reference's float fraction there */
        mag = _mm256_blendv_epi8(mag, bin_below8(V, n, d, neg), below);
    return bin_index8(V, mag, neg);
}
#endif

#ifdef __AVX2__
/* bin_stochastic16up and bin_nearest16nz (bincode_avx512.h) in 8 lanes, on the per-binade classes: the streamlined
 * encoders of the optimizers' usual states, valid where every lane is inside the tables' range (bin_encode32_usual
 * checks that). h: the complemented hash. */
static inline __attribute__((always_inline)) __m256i bin_stochastic8up(const bin_vec_t *V, __m256 n, __m256i h) {
    const __m256i a = _mm256_castps_si256(n);
    const __m256i c = bin_class8(V, _mm256_srli_epi32(a, 23));
    const __m256i r = _mm256_add_epi32(a, _mm256_permutevar8x32_epi32(V->cnegoff, c));
    const __m256i frac = _mm256_srlv_epi32(h, _mm256_permutevar8x32_epi32(V->cdshift, c));
    return _mm256_srlv_epi32(_mm256_add_epi32(r, frac), _mm256_permutevar8x32_epi32(V->cshift, c));
}

static inline __attribute__((always_inline)) __m256i bin_nearest8nz(const bin_vec_t *V, __m256i bits) {
    const __m256i sg = _mm256_srai_epi32(bits, 31), a = _mm256_and_si256(bits, V->m7f);
    const __m256i c = bin_class8(V, _mm256_srli_epi32(a, 23));
    const __m256i t = _mm256_sub_epi32(_mm256_permutevar8x32_epi32(V->cnear, c), sg);
    const __m256i mag = _mm256_srlv_epi32(_mm256_add_epi32(a, t), _mm256_permutevar8x32_epi32(V->cshift, c));
    return _mm256_xor_si256(mag, sg);
}

/* The 32 values of r[0..4) (8 each, in order) as bytes: unsigned saturation (indices, magnitudes up to 256), or
 * for bin_nearest8nz's signed values signed saturation to [-128, 127] and + 128 (sg). Two rounds of packs
 * interleave the four vectors per 128-bit lane; one dword permute restores the order. */
static inline void bin_store32(const __m256i r[4], uint8_t *q, const int sg) {
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256i b;
    if (sg)
        b = _mm256_xor_si256(_mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3])),
                             _mm256_set1_epi8((char)0x80));
    else
        b = _mm256_packus_epi16(_mm256_packus_epi32(r[0], r[1]), _mm256_packus_epi32(r[2], r[3]));
    _mm256_storeu_si256((__m256i *)q, _mm256_permutevar8x32_epi32(b, order));
}

/* bin_encode64_usual in 8 lanes, 32 values x[0..32) * inv: stochastic on an unsigned map (*hv: the complemented
 * hashes, stepped down by step per 8) or nearest on a signed one; the streamlined encoders, then the full ones on
 * all 32 where a lane lies outside their range (with floor, as bin_encode64_usual). */
static inline void bin_encode32_usual(const bin_vec_t *V, const float *x, __m256 inv, const int stochastic,
                                      __m256i *hv, __m256i step, uint8_t *q, const int floor) {
    const __m256i e96 = _mm256_set1_epi32(96 << 23);
    __m256 n[4];
    __m256i h[4], r[4], out = _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
        n[j] = _mm256_mul_ps(_mm256_loadu_ps(x + 8 * j), inv);
        const __m256i bits = _mm256_castps_si256(n[j]);
        if (stochastic) {
            h[j] = *hv;
            *hv = _mm256_sub_epi32(*hv, step);
            r[j] = bin_stochastic8up(V, n[j], h[j]);
            out = _mm256_or_si256(out, _mm256_cmpgt_epi32(V->cmin, bits)); /* negative bits too */
        } else {
            r[j] = bin_nearest8nz(V, bits);
            out = _mm256_or_si256(out, _mm256_cmpgt_epi32(e96, _mm256_and_si256(bits, V->m7f)));
        }
    }
    if (_mm256_testz_si256(out, out)) {
        bin_store32(r, q, !stochastic);
        return;
    }
    for (int j = 0; j < 4; j++) {
        r[j] = stochastic ? bin_stochastic8b(V, n[j], _mm256_srli_epi32(_mm256_xor_si256(h[j], _mm256_set1_epi32(-1)), 8))
                          : bin_nearest8b(V, _mm256_castps_si256(n[j]));
        if (stochastic && floor) { /* a positive value keeps code 1 at least */
            const __m256i z = _mm256_setzero_si256();
            r[j] = _mm256_sub_epi32(r[j], _mm256_and_si256(_mm256_cmpgt_epi32(_mm256_castps_si256(n[j]), z),
                                                           _mm256_cmpeq_epi32(r[j], z)));
        }
    }
    bin_store32(r, q, 0);
}
#endif

#include "bincode_avx512.h"

#ifdef __AVX2__
static inline void bin_store8(__m256i idx, uint8_t *q) {
    const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(idx), _mm256_extracti128_si256(idx, 1));
    _mm_storel_epi64((__m128i *)q, _mm_packus_epi16(w, w));
}
#endif

#if defined(__AVX512F__) && defined(__AVX512CD__)
/* Hashes (i * phi + 2 seed mod 2^32, i = first + lane masked to 31 bits) of the 16 lanes from element first, and
 * their step per 16 elements (valid while first + lane does not pass 2^31). */
static inline __m512i bin_hashes16(uint32_t first, uint32_t seed) {
    const __m512i lane16 = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    return _mm512_add_epi32(_mm512_mullo_epi32(_mm512_add_epi32(_mm512_set1_epi32((int32_t)(first & M31)), lane16),
                                               _mm512_set1_epi32((int32_t)EB_PHI)),
                            _mm512_set1_epi32((int32_t)(seed << 1)));
}
static inline __m512i bin_hash_step16(void) { return _mm512_set1_epi32((int32_t)(16u * EB_PHI)); }
#endif

/* Codes of x[0..bs) * inv (inv: the exact reciprocal of the block's power-of-two scale) into q; floor:
 * quantize_blocks' floor (an unsigned map's positive values never take the zero code). */
static void bin_encode_block(const lut_t *L, const float *restrict x, int64_t bs, float inv, int64_t seed,
                             int64_t first, uint8_t *restrict q, const int floor) {
    const uint32_t base = (uint32_t)first, sd = (uint32_t)seed;
    int64_t i = 0, floored = 0; /* [0, floored): values whose encoder applied the floor itself */
#if defined(__AVX512F__) && defined(__AVX512CD__)
    if (inv != 0x1p-127f) { /* a block scaled by 2^127 may hold |n| >= 1: the 8-lane path clamps those */
        const bin_v16_t W = bin_v16(L);
        const __m512 winv = _mm512_set1_ps(inv);
        const __m512i lane16 = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        if (seed >= 0) {
            const __m512i m31 = _mm512_set1_epi32((int32_t)M31), phi = _mm512_set1_epi32((int32_t)EB_PHI);
            const __m512i off = _mm512_set1_epi32((int32_t)(sd << 1));
            if ((uint64_t)(base & M31) + (uint64_t)bs <= 0x80000000ull) {
                /* the counter does not wrap past 2^31 inside the block, so each lane's hash advances by 16 phi per
                 * 16 values: one add per 16 draws (an unsigned map takes the complement, e = d ^ 0xFFFFFF) */
                __m512i hv = bin_hashes16(base, sd);
                if (W.is_signed) {
                    for (; i + 64 <= bs; i += 64)
                        bin_encode64(&W, x + i, winv, BIN_STOCHASTIC_S, &hv, bin_hash_step16(), q + i, 0);
                } else {
                    hv = _mm512_xor_si512(hv, _mm512_set1_epi32(-1));
                    for (; i + 64 <= bs; i += 64)
                        bin_encode64(&W, x + i, winv, BIN_STOCHASTIC_U, &hv, bin_hash_step16(), q + i, floor);
#if defined(__AVX512BW__)
                    floored = i; /* (bin_encode64_usual) */
#endif
                    hv = _mm512_xor_si512(hv, _mm512_set1_epi32(-1));
                }
            }
            for (; i + 16 <= bs; i += 16) {
                const __m512i k = _mm512_and_si512(_mm512_add_epi32(_mm512_set1_epi32((int32_t)(base + (uint32_t)i)), lane16), m31);
                const __m512i d = _mm512_srli_epi32(_mm512_add_epi32(_mm512_mullo_epi32(k, phi), off), 8);
                const __m512i idx = bin_stochastic16(&W, _mm512_mul_ps(_mm512_loadu_ps(x + i), winv), d);
                _mm_storeu_si128((__m128i *)(q + i), _mm512_cvtepi32_epi8(idx));
            }
        } else {
            if (W.is_signed)
                for (; i + 64 <= bs; i += 64)
                    bin_encode64(&W, x + i, winv, BIN_NEAREST_S, NULL, _mm512_setzero_si512(), q + i, 0);
            else
                for (; i + 64 <= bs; i += 64)
                    bin_encode64(&W, x + i, winv, BIN_NEAREST_U, NULL, _mm512_setzero_si512(), q + i, 0);
            for (; i + 16 <= bs; i += 16) {
                const __m512i idx = bin_nearest16(&W, _mm512_castps_si512(_mm512_mul_ps(_mm512_loadu_ps(x + i), winv)));
                _mm_storeu_si128((__m128i *)(q + i), _mm512_cvtepi32_epi8(idx));
            }
        }
    }
#endif
#ifdef __AVX2__
    const bin_vec_t V = bin_vec(L);
    const __m256 vinv = _mm256_set1_ps(inv);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), m31 = _mm256_set1_epi32((int32_t)M31);
    const __m256i phi = _mm256_set1_epi32((int32_t)EB_PHI), off = _mm256_set1_epi32((int32_t)(sd << 1));
    if (V.binade && inv != 0x1p-127f) { /* |n| < 1: the per-binade encoders (a 2^127 scale takes the ones below) */
        if (seed < 0) {
            if (V.is_signed)
                for (; i + 32 <= bs; i += 32) bin_encode32_usual(&V, x + i, vinv, 0, NULL, _mm256_setzero_si256(), q + i, 0);
            for (; i + 8 <= bs; i += 8)
                bin_store8(bin_nearest8b(&V, _mm256_castps_si256(_mm256_mul_ps(_mm256_loadu_ps(x + i), vinv))), q + i);
        } else if ((uint64_t)((base + (uint32_t)i) & M31) + (uint64_t)(bs - i) <= 0x80000000ull) {
            /* no wrap of the counter past 2^31 in the block: each lane's hash advances by 8 phi per 8 values */
            const __m256i k = _mm256_add_epi32(_mm256_set1_epi32((int32_t)((base + (uint32_t)i) & M31)), lane);
            __m256i hv = _mm256_add_epi32(_mm256_mullo_epi32(k, phi), off);
            const __m256i step = _mm256_set1_epi32((int32_t)(8u * EB_PHI));
            if (!V.is_signed) {
                hv = _mm256_xor_si256(hv, _mm256_set1_epi32(-1));
                const int64_t from = i;
                for (; i + 32 <= bs; i += 32) bin_encode32_usual(&V, x + i, vinv, 1, &hv, step, q + i, floor);
                if (from == floored) floored = i;
                hv = _mm256_xor_si256(hv, _mm256_set1_epi32(-1));
            }
            for (; i + 8 <= bs; i += 8, hv = _mm256_add_epi32(hv, step))
                bin_store8(bin_stochastic8b(&V, _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv), _mm256_srli_epi32(hv, 8)),
                           q + i);
        }
    }
    if (seed >= 0) {
        for (; i + 8 <= bs; i += 8) {
            const __m256i k = _mm256_and_si256(_mm256_add_epi32(_mm256_set1_epi32((int32_t)(base + (uint32_t)i)), lane), m31);
            const __m256i d = _mm256_srli_epi32(_mm256_add_epi32(_mm256_mullo_epi32(k, phi), off), 8);
            bin_store8(bin_stochastic8(&V, _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv), d), q + i);
        }
    } else {
        for (; i + 8 <= bs; i += 8)
            bin_store8(bin_nearest8(&V, _mm256_castps_si256(_mm256_mul_ps(_mm256_loadu_ps(x + i), vinv))), q + i);
    }
#endif
    for (; i < bs; i++) {
        const float n = x[i] * inv;
        q[i] = (uint8_t)(seed >= 0 ? bin_stochastic(L, n, draw(base, i, sd)) : bin_nearest(L, n));
    }
    if (floor && floored < bs) floor_positive(x + floored, bs - floored, (uint8_t)L->zero_idx, q + floored);
}

/* A block onto a binary dynamic map, its absmax bits known (finite: below 0x7F800000): scale into *absmax;
 * floor as for bin_encode_block. */
static inline void bin_quantize_block(const lut_t *L, const float *restrict x, int64_t bs, uint32_t amax_bits,
                                      int64_t seed, int64_t first, uint8_t *restrict q, float *absmax, int floor) {
    const float scale = amax_bits ? bin_scale(amax_bits) : 1.0f;
    bin_encode_block(L, x, bs, 1.0f / scale, seed, first, q, floor);
    *absmax = amax_bits ? scale : 0.0f;
}

/* out[i] = value(q[i]) * a, as lookup_scale on the map's table. */
static inline void bin_decode_scale(const lut_t *L, const uint8_t *restrict q, float a, int64_t n, float *restrict out) {
    int64_t i = 0;
#if defined(__AVX512F__) && defined(__AVX512CD__)
    const bin_v16_t W = bin_v16(L);
    const __m512 wa = _mm512_set1_ps(a);
#if defined(__AVX512BW__)
    const bin_w32_t T = bin_w32(L); /* by table, 32 codes at a time: fewer operations than the arithmetic decode */
    for (; i + 32 <= n; i += 32) {
        __m512 lo, hi;
        bin_decode32(&T, q + i, &lo, &hi);
        _mm512_storeu_ps(out + i, _mm512_mul_ps(lo, wa));
        _mm512_storeu_ps(out + i + 16, _mm512_mul_ps(hi, wa));
    }
#endif
    for (; i + 16 <= n; i += 16) {
        const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + i)));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(bin_decode16(&W, idx), wa));
    }
#endif
#ifdef __AVX2__
    const bin_vec_t V = bin_vec(L);
    const __m256 va = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8) {
        const __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + i)));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(bin_decode8(&V, idx), va));
    }
#endif
    for (; i < n; i++) out[i] = bin_value(L, q[i]) * a;
}
#endif
