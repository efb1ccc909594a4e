/* Shared by the exact int8 GEMM's two loop nests (int8_cpu.c: the row tiles and the entry points; int8_panels.c:
 * the packed-panel nest). Numerics mirror the plain-PyTorch references operation by operation in float32 (no
 * fast-math, -ffp-contract=off), so results are bit-identical to them; tests/kernels/test_native_cpu.py checks that. */
#ifndef EIGHTBIT_INT8_GEMM_H
#define EIGHTBIT_INT8_GEMM_H
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ exact int8 GEMM (LLM.int8())
 * out[m, n] = (sum_k x[m, k] * w[n, k]) * xs[m] * ws[n], exact int32 accumulation, plus (optionally) LLM.int8()'s
 * float outlier columns. x: int8 (M, K) in [-127, 127] (vector-wise quantized activations); w: int8 (N, K), any value.
 *
 * AVX2 has no signed x signed byte multiply; vpmaddubsw multiplies unsigned by signed bytes and SATURATES its
 * int16 pair sums. Feeding it |w| (<= 128) and x * sign(w) (<= 127 in magnitude) bounds every pair sum by
 * 2 * 128 * 127 = 32512 < 32767, so nothing saturates and the result is exact. That costs one vpsignb per
 * 32 products on top of a saturating u8s8 kernel's three ops (vpmaddubsw, vpmaddwd, vpaddd); measured on this
 * project's Zen 3 machine, register-resident (benchmarks/csrc/probes.c): ~70 G products/s per core for the exact
 * step vs ~100 G/s for the saturating one.
 *
 * Two loop nests. Few rows (EB_ROWS_WIN: decode and small batches): groups of 4 weight rows are read in place, once
 * per call, and each loaded weight vector is multiplied with up to 4 activation rows (tile_rows; memory bound at
 * M = 1, so one pass over the weight is the cost). More rows (compute bound): each thread packs 16
 * weight rows into a panel of 4-byte k-groups, panel[q][j] = w[n0 + j][4q .. 4q+3], and a 4x16 register tile
 * broadcasts one k-group of an activation row against two panel vectors, accumulating vertically (no
 * horizontal sums), the structure of MLAS's u8s8 kernel. Where the compiler targets AVX-512 VNNI (-march=native on
 * such a CPU), both nests take x + 128 as unsigned bytes against the signed weight (vpdpbusd at 512 bits, a row- or
 * column-sum correction at the end; the panel tile is then 8x16, the last tile of rows up to 12x16): the same
 * exact int32 sums. */
#ifdef __AVX2__
#include <immintrin.h>



/* acc += the exact products of 32 byte pairs, summed in fours: |w| (unsigned, <= 128) times x * sign(w)
 * (|.| <= 127), so no int16 pair sum exceeds 32512 (the exactness argument above). wabs = |w|.
 * With AVX-512 VNNI (chosen by -march=native where the CPU has it), vpdpbusd multiplies the same unsigned and
 * signed bytes and adds each group of four products to the int32 lane directly, without an int16 stage and
 * without saturation: the same exact sums in two instructions instead of four. */
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
static inline __m256i exact_step(__m256i acc, __m256i x, __m256i w, __m256i wabs, __m256i ones) {
    (void)ones;
    return _mm256_dpbusd_epi32(acc, wabs, _mm256_sign_epi8(x, w));
}
#else
static inline __m256i exact_step(__m256i acc, __m256i x, __m256i w, __m256i wabs, __m256i ones) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, _mm256_sign_epi8(x, w)), ones));
}
#endif

static inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}
#endif

/* Everything an output element gets after its exact int32 sum, in the PyTorch reference's order:
 * y = ((float)acc * xs[m]) * ws[n]; then either the outlier columns' float part, o = 0, o = o + xo[m, j] * wo[j, n]
 * for j = 0 .. n_out - 1 with wo[j, n] = w[n, cols[j]] * ws[n] (eightbit.functional.int8.outlier_product), or
 * add[m, n] (a product the caller computed); then bias[n]. Each stage is skipped where its pointer is NULL
 * (n_out == 0 for the outlier part; wo NULL: computed from the weight row, which the row nest has in cache). */
typedef struct {
    const float *xs, *ws;     /* row scales [M] and column scales [N] (absmax / 127) */
    const float *xo;          /* [M, n_out] outlier activations */
    const int64_t *cols;      /* [n_out] their column indices */
    float *wo;                /* [n_out, N] the dequantized weight columns, filled by the panel nest (each thread
                                 its panels' columns, before reading them), or NULL */
    int64_t n_out;
    const float *add, *bias;  /* [M, N] and [N], or NULL */
    float *out;               /* [M, N] */
    int64_t N;
} eb_epi;

static inline void finish(const eb_epi *e, int32_t acc, const int8_t *restrict wn, int64_t m, int64_t n) {
    const float wsn = e->ws[n];
    float y = ((float)acc * e->xs[m]) * wsn;
    if (e->n_out) {
        const float *xom = e->xo + m * e->n_out;
        float o = 0.0f;
        for (int64_t c = 0; c < e->n_out; c++)
            o = o + xom[c] * (e->wo ? e->wo[c * e->N + n] : (float)wn[e->cols[c]] * wsn);
        y = y + o;
    }
    if (e->add) y = y + e->add[m * e->N + n];
    if (e->bias) y = y + e->bias[n];
    e->out[m * e->N + n] = y;
}

/* Exact int32 dot product of two int8 rows of length K (x in [-127, 127]). */
static inline int32_t dot_1x1(const int8_t *restrict x, const int8_t *restrict w, int64_t K) {
    int64_t k = 0;
    int32_t acc = 0;
#ifdef __AVX2__
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i a = _mm256_setzero_si256();
    for (; k + 32 <= K; k += 32) {
        const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + k));
        const __m256i xv = _mm256_loadu_si256((const __m256i *)(x + k));
        a = exact_step(a, xv, wv, _mm256_abs_epi8(wv), ones);
    }
    acc = hsum_epi32(a);
#endif
    for (; k < K; k++) acc += (int32_t)x[k] * (int32_t)w[k];
    return acc;
}


#ifdef __AVX2__
/* The packed-panel nest (int8_panels.c). x is int8 [M, K] with rows K apart (x_ready = 0: where K % 4 the nest
 * makes a zero-padded copy), or rows already padded with zeros to whole 4-byte k-groups (x_ready = 1, rows
 * 4 * ceil(K / 4) apart). Returns 1 (nothing written) when its copy of x cannot be allocated (never with x_ready). */
int eb_gemm_panels(const int8_t *x, int x_ready, const int8_t *w, const eb_epi *e, int64_t M, int64_t K, int64_t N);
#endif
#endif
