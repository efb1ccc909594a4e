/* Block quantization shared by the native kernels (blockwise_cpu.c, optim_cpu.c): the code-table
 * lookups (packed and 65536-entry), stochastic rounding and the one-block quantizer. Mirrors the reference
 * eightbit.functional.blockwise.quantize_blocks operation by operation in float32. */
#ifndef EIGHTBIT_BLOCKS_H
#define EIGHTBIT_BLOCKS_H
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <float.h>

#include "common.h"

#define MAX_BLOCK 4096
#define M31 0x7FFFFFFFu

/* Mirrored by eightbit.kernels.cpu.tables.Lut (ctypes.Structure): keep the field order. */
typedef struct {
    const float *code;     /* 256 sorted values */
    const int32_t *table;  /* 65536 entries: midpoints below each float cell */
    const float *midp;     /* 255 midpoints + padding of +inf */
    int32_t k;             /* extra comparisons per cell */
    int32_t zero_idx;      /* code used for blocks holding NaN/Inf */
    const int32_t *near;   /* packed nearest-code table (or NULL), see packed_index */
    const int32_t *floor_; /* packed floor table: 1 + index of the largest code <= n (or NULL) */
    int32_t klo, span;     /* smallest magnitude cell of the packed tables; cells per sign */
    int32_t bin_groups;    /* binary dynamic map (bincode.h): its number of groups, else 0 */
    int32_t bin_signed;
    int32_t bin_off[8], bin_shift[8], bin_bottom[8]; /* per group t = floor(log2 magnitude code) */
    int32_t bin_knear[32], bin_knegoff[32], bin_kshift[32]; /* per binade (tables.binade_params) */
    uint16_t bin_bf16[256];                           /* each code's top 16 bits (its low 16 are zero) */
    int32_t bin_ncls; /* the per-binade tables as <= 8 classes (tables.binade_classes), else 0: */
    uint8_t bin_cls[32];                                                       /* position e & 31 -> class */
    int32_t bin_cnear[8], bin_cnegoff[8], bin_cshift[8];                      /* class -> bin_k* value */
} lut_t;

/* Packed tables (eightbit.kernels.cpu.tables.packed_lut): one entry per sign and float cell of |n| (the
 * top 16 bits of |n|, cells below klo merged into klo), entry = (base << 17) | t. The result for n is
 * base + (r >= t), r being the low 16 bits of |n| in the cell's value order (reversed for negative n): every
 * cell holds at most one threshold, so one lookup in a table of a few KB (L1) replaces the 256 KB table and
 * the dependent midpoint lookup. t = 0x10000 means no threshold in the cell. */
static inline int32_t packed_index(uint32_t bits, const int32_t *restrict tab, uint32_t klo, uint32_t span) {
    const uint32_t s = bits >> 31, a = bits & 0x7FFFFFFFu;
    uint32_t ka = a >> 16;
    ka = ka < klo ? klo : ka;
    const int32_t j = (int32_t)(ka - klo) + (int32_t)((0u - s) & span);
    const uint32_t e = (uint32_t)tab[j];
    const uint32_t r = (a ^ (0u - s)) & 0xFFFFu;
    return (int32_t)((e >> 17) + (r >= (e & 0x1FFFFu) ? 1u : 0u));
}

/* Draw of element i under a step's 31-bit seed: a Weyl sequence, (i * 0x9E3779B9 + 2 * seed) mod 2^32, top 24
 * bits / 2^24 (the seed doubled so its offsets cover the whole circle).
 * One multiply per element; consecutive elements get well-spread draws and each element's draws over steps
 * are uniform because the seed is a hash of the step (eightbit.functional.rounding). */
#define EB_PHI 0x9E3779B9u
static inline float draw(uint32_t base, int64_t i, uint32_t seed) {
    const uint32_t h = (((base + (uint32_t)i) & M31) * EB_PHI) + (seed << 1);
    return (float)(int32_t)(h >> 8) * (1.0f / 16777216.0f);
}

/* Round n between code[lo] and code[lo + 1] (lo clamped to [0, 254]) up with probability of its fraction. */
static inline int32_t round_between(float n, int32_t lo, const float *restrict code, float u) {
    lo = lo < 0 ? 0 : (lo > 254 ? 254 : lo);
    const float c_lo = code[lo], c_hi = code[lo + 1];
    const float frac = (n - c_lo) / (c_hi - c_lo);
    return lo + (u < frac ? 1 : 0);
}

static inline void stochastic_block(const float *restrict n, int64_t bs, const float *restrict code, uint32_t seed,
                                    int64_t first, int32_t *restrict idx) {
    const uint32_t base = (uint32_t)first;
    for (int64_t i = 0; i < bs; i++)
        idx[i] = round_between(n[i], idx[i] - (code[idx[i]] > n[i] ? 1 : 0), code, draw(base, i, seed));
}

#ifdef __AVX2__
#include <immintrin.h>
/* packed_index for 8 lanes (the compiler does not turn the scalar form into a gather). */
static inline __m256i packed_index8(__m256i bits, const int32_t *tab, __m256i klo, __m256i span) {
    const __m256i zero = _mm256_setzero_si256();
    const __m256i neg = _mm256_sub_epi32(zero, _mm256_srli_epi32(bits, 31)); /* all ones for negative n */
    const __m256i a = _mm256_and_si256(bits, _mm256_set1_epi32(0x7FFFFFFF));
    const __m256i ka = _mm256_max_epi32(_mm256_srli_epi32(a, 16), klo);
    const __m256i j = _mm256_add_epi32(_mm256_sub_epi32(ka, klo), _mm256_and_si256(neg, span));
    const __m256i e = _mm256_i32gather_epi32(tab, j, 4);
    const __m256i r = _mm256_and_si256(_mm256_xor_si256(a, neg), _mm256_set1_epi32(0xFFFF));
    const __m256i t = _mm256_and_si256(e, _mm256_set1_epi32(0x1FFFF));
    const __m256i ge = _mm256_andnot_si256(_mm256_cmpgt_epi32(t, r), _mm256_set1_epi32(1)); /* r >= t */
    return _mm256_add_epi32(_mm256_srli_epi32(e, 17), ge);
}
#endif

#ifdef __AVX2__
/* q[0..8) = nearest codes of x[0..8) / scale (vs: scale broadcast): divide, packed lookup, narrow, store. */
static inline void nearest_store8(const float *x, __m256 vs, const lut_t *L, __m256i vklo, __m256i vspan,
                                  uint8_t *q) {
    const __m256 nv = _mm256_div_ps(_mm256_loadu_ps(x), vs);
    const __m256i idx = packed_index8(_mm256_castps_si256(nv), L->near, vklo, vspan);
    const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(idx), _mm256_extracti128_si256(idx, 1));
    _mm_storel_epi64((__m128i *)q, _mm_packus_epi16(w, w));
}
#endif

static void packed_block(const uint32_t *restrict u, int64_t bs, const int32_t *restrict tab, uint32_t klo,
                         uint32_t span, int32_t *restrict idx) {
    int64_t i = 0;
#ifdef __AVX2__
    const __m256i vklo = _mm256_set1_epi32((int32_t)klo), vspan = _mm256_set1_epi32((int32_t)span);
    for (; i + 8 <= bs; i += 8)
        _mm256_storeu_si256((__m256i *)(idx + i),
                            packed_index8(_mm256_loadu_si256((const __m256i *)(u + i)), tab, vklo, vspan));
#endif
    for (; i < bs; i++) idx[i] = packed_index(u[i], tab, klo, span);
}

/* Stochastic rounding straight from the packed floor table: lo = largest code <= n (clamped to [0, 254]),
 * then the same draw and comparison as stochastic_block (bit-identical: lo is the same index). -0.0 counts
 * as +0.0 (as float comparisons do) for the lookup. */
static inline void stochastic_floor_block(const float *restrict n, int64_t bs, const lut_t *L, uint32_t seed,
                                          int64_t first, int32_t *restrict idx) {
    const uint32_t base = (uint32_t)first;
    const float *restrict code = L->code;
    const int32_t *restrict tab = L->floor_;
    const uint32_t *restrict nb = (const uint32_t *)n; /* type pun: built with -fno-strict-aliasing */
    const uint32_t klo = (uint32_t)L->klo, span = (uint32_t)L->span;
    int64_t i = 0;
#ifdef __AVX2__
    const __m256i vklo = _mm256_set1_epi32((int32_t)klo), vspan = _mm256_set1_epi32((int32_t)span);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), m31 = _mm256_set1_epi32((int32_t)M31);
    const __m256i phi = _mm256_set1_epi32((int32_t)EB_PHI), off = _mm256_set1_epi32((int32_t)(seed << 1));
    const __m256i negzero = _mm256_set1_epi32((int32_t)0x80000000u), one = _mm256_set1_epi32(1);
    const __m256i top = _mm256_set1_epi32(254), zero = _mm256_setzero_si256();
    const __m256 inv24 = _mm256_set1_ps(1.0f / 16777216.0f);
    for (; i + 8 <= bs; i += 8) {
        const __m256i k = _mm256_and_si256(_mm256_add_epi32(_mm256_set1_epi32((int32_t)(base + (uint32_t)i)), lane), m31);
        const __m256i h = _mm256_add_epi32(_mm256_mullo_epi32(k, phi), off);
        const __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(h, 8)), inv24);
        __m256i bits = _mm256_loadu_si256((const __m256i *)(nb + i));
        bits = _mm256_andnot_si256(_mm256_cmpeq_epi32(bits, negzero), bits);
        __m256i lo = _mm256_sub_epi32(packed_index8(bits, tab, vklo, vspan), one);
        lo = _mm256_min_epi32(_mm256_max_epi32(lo, zero), top);
        const __m256 c_lo = _mm256_i32gather_ps(code, lo, 4), c_hi = _mm256_i32gather_ps(code + 1, lo, 4);
        const __m256 frac = _mm256_div_ps(_mm256_sub_ps(_mm256_loadu_ps(n + i), c_lo), _mm256_sub_ps(c_hi, c_lo));
        const __m256i up = _mm256_castps_si256(_mm256_cmp_ps(u, frac, _CMP_LT_OQ));
        _mm256_storeu_si256((__m256i *)(idx + i), _mm256_sub_epi32(lo, up)); /* up is -1 where rounding up */
    }
#endif
    for (; i < bs; i++) {
        const uint32_t bits = nb[i] == 0x80000000u ? 0u : nb[i];
        idx[i] = round_between(n[i], packed_index(bits, tab, klo, span) - 1, code, draw(base, i, seed));
    }
}

/* Nearest-code indices of n[0..bs) into idx; written as simple loops so the compiler vectorizes them
 * (AVX2 gathers for the table lookups). */
static inline void nearest_block(const float *restrict n, int64_t bs, const lut_t *L, int32_t *restrict idx) {
    const uint32_t *restrict u = (const uint32_t *)n; /* type pun: built with -fno-strict-aliasing */
    if (L->near) {
        packed_block(u, bs, L->near, (uint32_t)L->klo, (uint32_t)L->span, idx);
        return;
    }
    const int32_t *restrict table = L->table;
    const float *restrict midp = L->midp;
    for (int64_t i = 0; i < bs; i++) idx[i] = table[(u[i] >> 16) ^ 0x8000u];
    for (int j = 0; j < L->k; j++)
        for (int64_t i = 0; i < bs; i++) {
            float m = midp[idx[i] + j];
            idx[i] = n[i] > m ? idx[i] + 1 : idx[i];
        }
}

/* floor_positive: the codes of x's positive values that are z (the zero code) become z + 1, the map's smallest
 * positive code (quantize_blocks' floor, for states on unsigned maps). */
static void floor_positive(const float *restrict x, int64_t n, uint8_t z, uint8_t *restrict q) {
    for (int64_t i = 0; i < n; i++) q[i] = (uint8_t)(q[i] + (q[i] == z && x[i] > 0.0f));
}

#include "bincode.h"

/* Quantize one block of ``bs`` float32 values whose absmax_bits are known (a fused pass computed them while writing
 * x; NaN and Inf show up as bits >= Inf's and flag the block); seed < 0 means round to nearest. ``stream`` says x
 * is a block of a streamed array whose next block follows it (then it is prefetched); the optimizer passes its L1
 * scratch (0). floor: quantize_blocks' floor (a positive value never takes the zero code; the optimizers'
 * states on unsigned maps). */
static void quantize_block_known(const float *x, int64_t bs, const lut_t *L, uint32_t amax_bits, int64_t seed,
                                 int64_t first, uint8_t *q, float *absmax, int stream, int floor) {
    float amax;
    memcpy(&amax, &amax_bits, 4);
    if (amax_bits >= 0x7F800000u) {
        memset(q, L->zero_idx, (size_t)bs);
        *absmax = NAN;
        return;
    }
    if (L->bin_groups) { /* binary dynamic map: power-of-two scale, arithmetic encoding */
        if (stream)
            for (int64_t i = 0; i < bs; i += 16) __builtin_prefetch(x + bs + i);
        bin_quantize_block(L, x, bs, amax_bits, seed, first, q, absmax, floor);
        return;
    }
    const float scale = amax > 0.0f ? amax : 1.0f;
    /* Start fetching the next block now: the lookups below touch no memory beyond L1, so the loads overlap
     * them instead of stalling the next block's first pass (measured: ~30 % of a block's time). */
    if (stream)
        for (int64_t i = 0; i < bs; i += 16) __builtin_prefetch(x + bs + i);
#ifdef __AVX2__
    if (seed < 0 && L->near && bs % 8 == 0) { /* nearest code in one pass: divide, look up, narrow, store */
        const __m256 vs = _mm256_set1_ps(scale);
        const __m256i vklo = _mm256_set1_epi32(L->klo), vspan = _mm256_set1_epi32(L->span);
        for (int64_t i = 0; i < bs; i += 8) nearest_store8(x + i, vs, L, vklo, vspan, q + i);
        if (floor) floor_positive(x, bs, (uint8_t)L->zero_idx, q);
        *absmax = amax;
        return;
    }
#endif
    float n[MAX_BLOCK];
    int32_t idx[MAX_BLOCK];
    for (int64_t i = 0; i < bs; i++) n[i] = x[i] / scale;
    if (seed >= 0 && L->floor_) {
        stochastic_floor_block(n, bs, L, (uint32_t)seed, first, idx);
    } else {
        nearest_block(n, bs, L, idx);
        if (seed >= 0) stochastic_block(n, bs, L->code, (uint32_t)seed, first, idx);
    }
    for (int64_t i = 0; i < bs; i++) q[i] = (uint8_t)idx[i];
    if (floor) floor_positive(x, bs, (uint8_t)L->zero_idx, q);
    *absmax = amax;
}
/* quantize_block_known after a pass for the block's absmax. */
static void quantize_block(const float *x, int64_t bs, const lut_t *L, int64_t seed, int64_t first, uint8_t *q,
                           float *absmax, int stream, int floor) {
    quantize_block_known(x, bs, L, absmax_bits(x, bs), seed, first, q, absmax, stream, floor);
}
#endif
