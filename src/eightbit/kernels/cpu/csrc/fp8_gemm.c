/* eightbit native CPU kernels: the FP8 linear (the fp8_linear op) on AVX-512 BF16, and on AMX-BF16 tiles for 16 rows
 * and more where the CPU has them (amx_bf16_sweep: the same packed layout, padded to 32 values of K).
 *
 * Every fp8 code (e4m3fn, e5m2 and their fnuz variants) is exactly a bfloat16, and the product of two bfloat16
 * values is exact in float32, so vdpbf16ps multiplies the codes exactly and adds each product to a float32
 * accumulator (one rounding per add; inputs are never bfloat16 subnormals, so its DAZ/FTZ changes nothing):
 *   out[m, n] = ((sum_k x[m, k] * w[n, k]) * x_scale[m]) * w_scale[n] + bias[n]
 * with the codes' values, summed in this kernel's order: not the bits of the reference's float32 GEMM of the
 * dequantized values, within the same rounding bound (tests/kernels/test_fp8_gemm.py derives it). One vdpbf16ps
 * is 32 products, twice an FMA's 16 at 512 bits: measured 3.6 G instructions/s per core on this project's Zen 4
 * (116 G products/s; float32 FMAs peak at 58).
 *
 * Layout as the int8 panel nest (int8_panels.c): activations as bfloat16 rows of whole pairs (zero padded), 16-column
 * weight panels of pairs, panel[q][j] = the two bfloat16 of w[n0 + j][2q .. 2q + 1] (one zmm per pair of k), packed
 * per call, and an 8 x 16 register tile that broadcasts one pair of an activation row against a panel vector.
 * Codes become bfloat16 through the format's 256-entry table (NaN and Inf codes included), 32 at a time with four
 * 64-entry permutes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>

/* bfloat16 bits of 32 codes; tab holds the table as 8 vectors of 32 entries */
static inline __m512i codes_to_bf16(__m256i codes, const __m512i tab[8]) {
    const __m512i idx = _mm512_cvtepu8_epi16(codes);
    const __m512i r0 = _mm512_permutex2var_epi16(tab[0], idx, tab[1]), r1 = _mm512_permutex2var_epi16(tab[2], idx, tab[3]);
    const __m512i r2 = _mm512_permutex2var_epi16(tab[4], idx, tab[5]), r3 = _mm512_permutex2var_epi16(tab[6], idx, tab[7]);
    const __mmask32 b6 = _mm512_test_epi16_mask(idx, _mm512_set1_epi16(0x40));
    const __mmask32 b7 = _mm512_test_epi16_mask(idx, _mm512_set1_epi16(0x80));
    return _mm512_mask_mov_epi16(_mm512_mask_mov_epi16(r0, b6, r1), b7, _mm512_mask_mov_epi16(r2, b6, r3));
}

static inline __mmask32 live32(int64_t left) { return left >= 32 ? ~(__mmask32)0 : (((__mmask32)1 << left) - 1); }

/* dst[0 .. 2 * K2) = bfloat16 of src[0 .. K), zeros after K */
static void convert_row(const uint8_t *restrict src, int64_t K, int64_t K2, const __m512i tab[8], uint16_t *restrict dst) {
    for (int64_t k = 0; k < 2 * K2; k += 32) {
        const __m256i c = _mm256_maskz_loadu_epi8(k < K ? live32(K - k) : 0, src + k); /* code 0 is +0 in every format */
        _mm512_mask_storeu_epi16(dst + k, live32(2 * K2 - k), codes_to_bf16(c, tab));
    }
}

/* 16 x 16 transpose of 32-bit words: r[j] word q -> r[q] word j */
static inline void transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]), t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    for (int i = 0; i < 16; i += 4) {
        u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]), u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]), u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    /* u[4g + i], 128-bit lane L: rows 4g .. 4g + 3 of column 4L + i */
    for (int i = 0; i < 4; i++) {
        const __m512i v0 = _mm512_shuffle_i32x4(u[i], u[4 + i], 0x88), w0 = _mm512_shuffle_i32x4(u[i], u[4 + i], 0xDD);
        const __m512i v1 = _mm512_shuffle_i32x4(u[8 + i], u[12 + i], 0x88), w1 = _mm512_shuffle_i32x4(u[8 + i], u[12 + i], 0xDD);
        r[i] = _mm512_shuffle_i32x4(v0, v1, 0x88), r[8 + i] = _mm512_shuffle_i32x4(v0, v1, 0xDD);
        r[4 + i] = _mm512_shuffle_i32x4(w0, w1, 0x88), r[12 + i] = _mm512_shuffle_i32x4(w0, w1, 0xDD);
    }
}

/* panel[q * 16 + j] = 32-bit pair q of bfloat16(w[n0 + j]) for j < nn (0 for spare columns), q < K2 */
static void pack_panel_bf16(const uint8_t *restrict w, int64_t K, int64_t K2, int64_t n0, int nn, const __m512i tab[8],
                            uint32_t *restrict panel) {
    for (int64_t q0 = 0; q0 < K2; q0 += 16) {
        __m512i r[16];
        const int64_t k = 2 * q0;
        for (int j = 0; j < 16; j++) {
            const __m256i c = j < nn && k < K ? _mm256_maskz_loadu_epi8(live32(K - k), w + (n0 + j) * K + k) : _mm256_setzero_si256();
            r[j] = codes_to_bf16(c, tab);
        }
        transpose16(r);
        const int64_t nq = K2 - q0 < 16 ? K2 - q0 : 16;
        for (int64_t q = 0; q < nq; q++) _mm512_storeu_si512((void *)(panel + (q0 + q) * 16), r[q]);
    }
}

typedef struct {
    const float *xs, *ws, *bias; /* scales (strides 0: one value, 1: per row / per column) and bias [N] or NULL */
    int64_t xs_stride, ws_stride, N;
    float *out;
} fp8_epi;

#define EB_BF_ROW(R)                                                                                              \
    if (mr > R) a##R = _mm512_dpbf16_ps(a##R, (__m512bh)wq, (__m512bh)_mm512_set1_epi32(*(const int32_t *)(x##R + 2 * q)));
/* The epilogue of one panel's columns n0 .. n0 + nn - 1: their mask, column scales and bias. */
typedef struct {
    __mmask16 cols;
    __m512 ws16, b16;
    int nn;
} fp8_cols_t;

static inline fp8_cols_t fp8_cols(const fp8_epi *e, int64_t n0, int nn) {
    fp8_cols_t c;
    c.cols = nn >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nn) - 1u);
    c.ws16 = e->ws_stride ? _mm512_maskz_loadu_ps(c.cols, e->ws + n0) : _mm512_set1_ps(e->ws[0]);
    c.b16 = e->bias ? _mm512_maskz_loadu_ps(c.cols, e->bias + n0) : _mm512_setzero_ps();
    c.nn = nn;
    return c;
}

/* out[m, n0 ..] = (sums * x_scale[m]) * w_scale + bias for the panel's columns. */
static inline __attribute__((always_inline)) void fp8_store_row(const fp8_epi *e, const fp8_cols_t *c, __m512 sums,
                                                                int64_t m, int64_t n0) {
    __m512 y = _mm512_mul_ps(_mm512_mul_ps(sums, _mm512_set1_ps(e->xs[m * e->xs_stride])), c->ws16);
    if (e->bias) y = _mm512_add_ps(y, c->b16);
    if (c->nn >= 16) /* plain stores where the panel is whole: masked ones are slower on Zen 4 */
        _mm512_storeu_ps(e->out + m * e->N + n0, y);
    else
        _mm512_mask_storeu_ps(e->out + m * e->N + n0, c->cols, y);
}
#define EB_BF_OUT(R)                                                                                              \
    if (mr > R) fp8_store_row(e, &c, a##R, m0 + R, n0);
/* mr (<= 8) rows from m0 of the bfloat16 activations (ld apart) times one panel, finished into out. mr is a literal
 * at every call site (tile()), so the row tests fold away. */
static inline __attribute__((always_inline)) void tile_rows(const uint16_t *x, int64_t ld, const uint32_t *restrict panel,
                                                            int64_t K2, const fp8_epi *e, int mr, int64_t m0, int64_t n0,
                                                            int nn) {
    const uint16_t *x0 = x + m0 * ld, *x1 = x0 + (mr > 1) * ld, *x2 = x0 + (mr > 2) * 2 * ld,
                   *x3 = x0 + (mr > 3) * 3 * ld, *x4 = x0 + (mr > 4) * 4 * ld, *x5 = x0 + (mr > 5) * 5 * ld,
                   *x6 = x0 + (mr > 6) * 6 * ld, *x7 = x0 + (mr > 7) * 7 * ld;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (int64_t q = 0; q < K2; q++) {
        const __m512i wq = _mm512_loadu_si512((const void *)(panel + q * 16));
        EB_BF_ROW(0) EB_BF_ROW(1) EB_BF_ROW(2) EB_BF_ROW(3) EB_BF_ROW(4) EB_BF_ROW(5) EB_BF_ROW(6) EB_BF_ROW(7)
    }
    const fp8_cols_t c = fp8_cols(e, n0, nn);
    EB_BF_OUT(0) EB_BF_OUT(1) EB_BF_OUT(2) EB_BF_OUT(3) EB_BF_OUT(4) EB_BF_OUT(5) EB_BF_OUT(6) EB_BF_OUT(7)
}
#undef EB_BF_ROW
#undef EB_BF_OUT

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define EB_FP8_AMX 1
#include "amx.h"
/* All M rows of the bfloat16 activations (ld apart, ld a multiple of 32, zero beyond K) times one panel of K2 pairs
 * (a multiple of 16) on AMX-BF16, finished into out: tdpbf16ps multiplies 16 rows x 32 values by 32 x 16 and adds
 * the exact products into float32 sums (in its own order: the same rounding bound as the vdpbf16ps tile), the
 * epilogue is tile_rows'. The tile configuration for 16 rows is loaded; the last rows take their own. */
static void amx_bf16_sweep(const uint16_t *xb, int64_t ld, const uint32_t *panel, int64_t K2, const fp8_epi *e,
                           int64_t M, int64_t n0, int nn) {
    float acc[16][16] __attribute__((aligned(64)));
    const fp8_cols_t c = fp8_cols(e, n0, nn);
    for (int64_t m0 = 0; m0 < M; m0 += 16) {
        const int mr = M - m0 < 16 ? (int)(M - m0) : 16;
        if (mr < 16) amx_config(mr);
        _tile_zero(0);
        for (int64_t q = 0; q < K2; q += 16) {
            _tile_loadd(1, xb + m0 * ld + 2 * q, ld * 2);
            _tile_loadd(2, panel + q * 16, 64);
            _tile_dpbf16ps(0, 1, 2);
        }
        _tile_stored(0, acc, 64);
        if (mr < 16) amx_config(16);
        for (int r = 0; r < mr; r++) fp8_store_row(e, &c, _mm512_load_ps(acc[r]), m0 + r, n0);
    }
}
#endif

static void tile(const uint16_t *x, int64_t ld, const uint32_t *panel, int64_t K2, const fp8_epi *e, int mr, int64_t m0,
                 int64_t n0, int nn) {
    switch (mr) {
    case 8: tile_rows(x, ld, panel, K2, e, 8, m0, n0, nn); break;
    case 7: tile_rows(x, ld, panel, K2, e, 7, m0, n0, nn); break;
    case 6: tile_rows(x, ld, panel, K2, e, 6, m0, n0, nn); break;
    case 5: tile_rows(x, ld, panel, K2, e, 5, m0, n0, nn); break;
    case 4: tile_rows(x, ld, panel, K2, e, 4, m0, n0, nn); break;
    case 3: tile_rows(x, ld, panel, K2, e, 3, m0, n0, nn); break;
    case 2: tile_rows(x, ld, panel, K2, e, 2, m0, n0, nn); break;
    default: tile_rows(x, ld, panel, K2, e, 1, m0, n0, nn); break;
    }
}
#endif

int eb_fp8_gemm_supported(void) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    return 1;
#else
    return 0;
#endif
}

/* out [M, N] float32 = the FP8 linear of codes x [M, K] and w [N, K] (uint8 bit patterns) whose values are
 * table[code] (bfloat16 bits), with x_scale (xs_stride 0: one value; 1: [M]), w_scale (ws_stride 0 or 1: [N]) and
 * bias [N] or NULL. Returns 1 (out then holds nothing usable) where this build has no AVX-512 BF16 or memory runs
 * out, else 0. */
int eb_fp8_linear(const uint8_t *x, const uint8_t *w, const uint16_t *table, const float *xs, int64_t xs_stride,
                  const float *ws, int64_t ws_stride, const float *bias, float *out, int64_t M, int64_t K, int64_t N) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#ifdef EB_FP8_AMX
    /* 16 rows and more on AMX (rows and the panel padded to 32 values of K, 16 pairs), fewer on the tile below */
    const int amx = M >= 16 && amx_usable();
    const int64_t K2 = amx ? (K + 31) / 32 * 16 : (K + 1) / 2, ld = 2 * K2, npanels = (N + 15) / 16;
#else
    const int64_t K2 = (K + 1) / 2, ld = 2 * K2, npanels = (N + 15) / 16;
#endif
    __m512i tab[8];
    for (int i = 0; i < 8; i++) tab[i] = _mm512_loadu_si512((const void *)(table + 32 * i));
    uint16_t *xb = (uint16_t *)malloc((size_t)(M * ld) * sizeof(uint16_t));
    if (!xb) return 1;
#pragma omp parallel for schedule(static) if (M * K >= 65536)
    for (int64_t m = 0; m < M; m++) convert_row(x + m * K, K, K2, tab, xb + m * ld);
    const fp8_epi e = {xs, ws, bias, xs_stride, ws_stride, N, out};
    int failed = 0;
#pragma omp parallel if (npanels >= 4) reduction(| : failed)
    {
        uint32_t *panel = (uint32_t *)aligned_alloc(64, (size_t)(K2 * 64));
        failed |= !panel;
#ifdef EB_FP8_AMX
        if (amx && panel) amx_config(16);
#endif
#pragma omp for schedule(static)
        for (int64_t p = 0; p < npanels; p++) {
            if (!panel) continue;
            const int64_t n0 = 16 * p;
            const int nn = N - n0 < 16 ? (int)(N - n0) : 16;
            pack_panel_bf16(w, K, K2, n0, nn, tab, panel);
#ifdef EB_FP8_AMX
            if (amx) {
                amx_bf16_sweep(xb, ld, panel, K2, &e, M, n0, nn);
                continue;
            }
#endif
            for (int64_t m0 = 0; m0 < M; m0 += 8) tile(xb, ld, panel, K2, &e, M - m0 < 8 ? (int)(M - m0) : 8, m0, n0, nn);
        }
#ifdef EB_FP8_AMX
        if (amx && panel) _tile_release();
#endif
        free(panel);
    }
    free(xb);
    return failed;
#else
    (void)x, (void)w, (void)table, (void)xs, (void)xs_stride, (void)ws, (void)ws_stride, (void)bias, (void)out, (void)M,
        (void)K, (void)N;
    return 1;
#endif
}
