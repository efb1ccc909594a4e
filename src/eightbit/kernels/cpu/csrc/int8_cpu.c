/* eightbit native CPU kernels: the exact int8 GEMM of LLM.int8() and its activation preparation.
 * Built together with the other C files in csrc/ into one library (eightbit.kernels.native_cpu).
 * Numerics mirror the plain-PyTorch references operation by operation in float32 (no fast-math,
 * -ffp-contract=off), so results are bit-identical to them; tests/kernels/test_native_cpu.py checks that. */
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
 * Two loop nests. Few rows (M < EB_PANEL_MIN_ROWS): each weight row is read in place once and dotted with every
 * activation row (memory bound: the weight read is the cost). More rows (compute bound): each thread packs 16
 * weight rows into a panel of 4-byte k-groups, panel[q][j] = w[n0 + j][4q .. 4q+3], and a 4x16 register tile
 * broadcasts one k-group of an activation row against two panel vectors, accumulating vertically (no
 * horizontal sums), the structure of MLAS's u8s8 kernel. Where the compiler targets AVX-512 VNNI (-march=native on
 * such a CPU), the exact step is vpsignb + vpdpbusd and the tile takes x + 128 as unsigned bytes against the signed
 * panel (one vpdpbusd per 32 products, a column-sum correction at the end): same exact int32 sums. */
#ifdef __AVX2__
#include <immintrin.h>

/* rows below which reading each weight row in place beats packing panels: measured on 4096x4096 (AVX-512 VNNI
 * machine, 2 threads): M = 4 1.19 vs 2.00 ms, M = 8 1.88 vs 2.29, M = 12 2.47 vs 2.78, M = 16 3.23 vs 2.94 */
#define EB_PANEL_MIN_ROWS 16

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

/* Float result of one output element: the int8 part scaled, plus the outlier columns' float part,
 * sum_j xo[m, j] * (w[n, cols[j]] * ws[n]) (the operation order of the PyTorch reference). */
static inline float finish(int32_t acc, const int8_t *restrict wn, float xsm, float wsn, const float *restrict xom,
                           const int64_t *restrict cols, int64_t n_out) {
    float y = ((float)acc * xsm) * wsn;
    if (n_out) {
        float o = 0.0f;
        for (int64_t c = 0; c < n_out; c++) o += xom[c] * ((float)wn[cols[c]] * wsn);
        y = y + o;
    }
    return y;
}

/* Exact int32 dot product of two int8 rows of length K (x in [-127, 127]). */
static int32_t dot_1x1(const int8_t *restrict x, const int8_t *restrict w, int64_t K) {
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
/* acc[j] = dot(x, w_j) for one activation row and 4 weight rows (K a multiple of 32 handled here, the rest by
 * the caller): four independent accumulators, each activation vector loaded once for four rows. */
static void dot_1x4(const int8_t *restrict x, const int8_t *restrict w0, const int8_t *restrict w1,
                    const int8_t *restrict w2, const int8_t *restrict w3, int64_t K32, int32_t acc[4]) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t k = 0; k < K32; k += 32) {
        const __m256i xv = _mm256_loadu_si256((const __m256i *)(x + k));
#define EB_DOT(A, W)                                                                                              \
    do {                                                                                                          \
        const __m256i wv = _mm256_loadu_si256((const __m256i *)((W) + k));                                       \
        A = exact_step(A, xv, wv, _mm256_abs_epi8(wv), ones);                                                   \
    } while (0)
        EB_DOT(a0, w0);
        EB_DOT(a1, w1);
        EB_DOT(a2, w2);
        EB_DOT(a3, w3);
#undef EB_DOT
    }
    acc[0] = hsum_epi32(a0), acc[1] = hsum_epi32(a1), acc[2] = hsum_epi32(a2), acc[3] = hsum_epi32(a3);
}
#endif

/* Few rows: weight rows split over threads in groups of 4, each read once while every activation row is dotted
 * with it. */
static void gemm_rows(const int8_t *x, const int8_t *w, const float *xs, const float *ws, const float *xo,
                      const int64_t *cols, int64_t n_out, float *out, int64_t M, int64_t K, int64_t N) {
    const int64_t groups = (N + 3) / 4;
#pragma omp parallel for schedule(static) if (groups >= 16)
    for (int64_t g = 0; g < groups; g++) {
        const int64_t n0 = 4 * g;
        const int nn = N - n0 < 4 ? (int)(N - n0) : 4;
        for (int64_t m = 0; m < M; m++) {
            const int8_t *xm = x + m * K;
            int32_t acc[4] = {0, 0, 0, 0};
            int64_t done = 0; /* leading products already summed into acc */
#ifdef __AVX2__
            if (nn == 4) {
                done = K - K % 32;
                dot_1x4(xm, w + n0 * K, w + (n0 + 1) * K, w + (n0 + 2) * K, w + (n0 + 3) * K, done, acc);
            }
#endif
            for (int j = 0; j < nn; j++) {
                const int8_t *wn = w + (n0 + j) * K;
                int32_t a = acc[j];
                if (done) {
                    for (int64_t k = done; k < K; k++) a += (int32_t)xm[k] * (int32_t)wn[k];
                } else {
                    a = dot_1x1(xm, wn, K);
                }
                out[m * N + n0 + j] = finish(a, wn, xs[m], ws[n0 + j], xo ? xo + m * n_out : xo, cols, n_out);
            }
        }
    }
}

#ifdef __AVX2__
/* panel[q * 64 + j * 4 + t] = w[(n0 + j) * K + 4q + t] for j < nn, 4q + t < K; zero elsewhere (q < K4). */
static void pack_panel(const int8_t *restrict w, int64_t K, int64_t n0, int nn, int64_t K4, int8_t *restrict panel) {
    const int64_t blocks = K / 32; /* 8 k-groups of 8 rows at a time: an 8x8 transpose of 32-bit words */
    const __m256i zero = _mm256_setzero_si256();
    for (int j0 = 0; j0 < 16; j0 += 8) {
        const int8_t *rows[8];
        int live[8];
        for (int j = 0; j < 8; j++) {
            live[j] = j0 + j < nn;
            rows[j] = w + (n0 + (live[j] ? j0 + j : 0)) * K;
        }
        for (int64_t b = 0; b < blocks; b++) {
            __m256i r[8];
            for (int j = 0; j < 8; j++)
                r[j] = live[j] ? _mm256_loadu_si256((const __m256i *)(rows[j] + 32 * b)) : zero;
            const __m256i t0 = _mm256_unpacklo_epi32(r[0], r[1]), t1 = _mm256_unpackhi_epi32(r[0], r[1]);
            const __m256i t2 = _mm256_unpacklo_epi32(r[2], r[3]), t3 = _mm256_unpackhi_epi32(r[2], r[3]);
            const __m256i t4 = _mm256_unpacklo_epi32(r[4], r[5]), t5 = _mm256_unpackhi_epi32(r[4], r[5]);
            const __m256i t6 = _mm256_unpacklo_epi32(r[6], r[7]), t7 = _mm256_unpackhi_epi32(r[6], r[7]);
            const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
            const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
            const __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
            const __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
            int8_t *dst = panel + 8 * b * 64 + j0 * 4;
            _mm256_storeu_si256((__m256i *)(dst + 0 * 64), _mm256_permute2x128_si256(u0, u4, 0x20));
            _mm256_storeu_si256((__m256i *)(dst + 1 * 64), _mm256_permute2x128_si256(u1, u5, 0x20));
            _mm256_storeu_si256((__m256i *)(dst + 2 * 64), _mm256_permute2x128_si256(u2, u6, 0x20));
            _mm256_storeu_si256((__m256i *)(dst + 3 * 64), _mm256_permute2x128_si256(u3, u7, 0x20));
            _mm256_storeu_si256((__m256i *)(dst + 4 * 64), _mm256_permute2x128_si256(u0, u4, 0x31));
            _mm256_storeu_si256((__m256i *)(dst + 5 * 64), _mm256_permute2x128_si256(u1, u5, 0x31));
            _mm256_storeu_si256((__m256i *)(dst + 6 * 64), _mm256_permute2x128_si256(u2, u6, 0x31));
            _mm256_storeu_si256((__m256i *)(dst + 7 * 64), _mm256_permute2x128_si256(u3, u7, 0x31));
        }
    }
    for (int64_t q = 8 * blocks; q < K4; q++)
        for (int j = 0; j < 16; j++)
            for (int t = 0; t < 4; t++) {
                const int64_t k = 4 * q + t;
                panel[q * 64 + j * 4 + t] = (j < nn && k < K) ? w[(n0 + j) * K + k] : 0;
            }
}

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
/* With VNNI the tile takes the activations as unsigned bytes u = x + 128 (x ^ 0x80) and the panel as it is
 * (signed, -128 included): vpdpbusd adds each group of four u * w products to an int32 lane without saturation,
 * one instruction per 32 products and no sign or abs work. sum u * w = sum x * w + 128 * colsum(w); the int32
 * lanes wrap (two's complement), and since the true sum fits in int32 (K <= MAX_K), subtracting 128 * colsum in
 * wrapping (unsigned) arithmetic gives it exactly. */
#define EB_U8S8 1
static void panel_colsum(const int8_t *restrict panel, int64_t K4, int32_t colsum[16]) {
    for (int j = 0; j < 16; j++) colsum[j] = 0;
    for (int64_t q = 0; q < K4; q++)
        for (int j = 0; j < 16; j++)
            for (int t = 0; t < 4; t++) colsum[j] += panel[q * 64 + j * 4 + t];
}

#define EB_ROW_U8(A0, A1, XP)                                                                                      \
    do {                                                                                                           \
        const __m256i xb = _mm256_set1_epi32(*(const int32_t *)(XP));                                              \
        A0 = _mm256_dpbusd_epi32(A0, xb, w0);                                                                    \
        A1 = _mm256_dpbusd_epi32(A1, xb, w1);                                                                    \
    } while (0)
static void micro_4x16_u8(const uint8_t *restrict x0, const uint8_t *restrict x1, const uint8_t *restrict x2,
                          const uint8_t *restrict x3, const int8_t *restrict panel, int64_t K4,
                          const int32_t colsum[16], int32_t acc[4][16]) {
    __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00,
            a31 = a00;
    for (int64_t q = 0; q < K4; q++) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(panel + q * 64));
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(panel + q * 64 + 32));
        EB_ROW_U8(a00, a01, x0 + 4 * q);
        EB_ROW_U8(a10, a11, x1 + 4 * q);
        EB_ROW_U8(a20, a21, x2 + 4 * q);
        EB_ROW_U8(a30, a31, x3 + 4 * q);
    }
    const __m256i c0 = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)colsum), 7);
    const __m256i c1 = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(colsum + 8)), 7);
    _mm256_storeu_si256((__m256i *)acc[0], _mm256_sub_epi32(a00, c0));
    _mm256_storeu_si256((__m256i *)(acc[0] + 8), _mm256_sub_epi32(a01, c1));
    _mm256_storeu_si256((__m256i *)acc[1], _mm256_sub_epi32(a10, c0));
    _mm256_storeu_si256((__m256i *)(acc[1] + 8), _mm256_sub_epi32(a11, c1));
    _mm256_storeu_si256((__m256i *)acc[2], _mm256_sub_epi32(a20, c0));
    _mm256_storeu_si256((__m256i *)(acc[2] + 8), _mm256_sub_epi32(a21, c1));
    _mm256_storeu_si256((__m256i *)acc[3], _mm256_sub_epi32(a30, c0));
    _mm256_storeu_si256((__m256i *)(acc[3] + 8), _mm256_sub_epi32(a31, c1));
}
#undef EB_ROW_U8
#else
#define EB_U8S8 0
#endif

/* acc[r][j] = sum over K4 k-groups of x_r . panel column j, for 4 activation rows (ldx apart) and 16 columns. */
#define EB_ROW(A0, A1, XP)                                                                                         \
    do {                                                                                                           \
        const __m256i xb = _mm256_set1_epi32(*(const int32_t *)(XP));                                              \
        A0 = exact_step(A0, xb, w0, wa0, ones);                                                                  \
        A1 = exact_step(A1, xb, w1, wa1, ones);                                                                  \
    } while (0)
static void micro_4x16(const int8_t *restrict x0, const int8_t *restrict x1, const int8_t *restrict x2,
                       const int8_t *restrict x3, const int8_t *restrict panel, int64_t K4, int32_t acc[4][16]) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00,
            a31 = a00;
    for (int64_t q = 0; q < K4; q++) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(panel + q * 64));
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(panel + q * 64 + 32));
        const __m256i wa0 = _mm256_abs_epi8(w0), wa1 = _mm256_abs_epi8(w1);
        EB_ROW(a00, a01, x0 + 4 * q);
        EB_ROW(a10, a11, x1 + 4 * q);
        EB_ROW(a20, a21, x2 + 4 * q);
        EB_ROW(a30, a31, x3 + 4 * q);
    }
    _mm256_storeu_si256((__m256i *)acc[0], a00), _mm256_storeu_si256((__m256i *)(acc[0] + 8), a01);
    _mm256_storeu_si256((__m256i *)acc[1], a10), _mm256_storeu_si256((__m256i *)(acc[1] + 8), a11);
    _mm256_storeu_si256((__m256i *)acc[2], a20), _mm256_storeu_si256((__m256i *)(acc[2] + 8), a21);
    _mm256_storeu_si256((__m256i *)acc[3], a30), _mm256_storeu_si256((__m256i *)(acc[3] + 8), a31);
}
#undef EB_ROW

/* Many rows: 16-column panels split over threads; every 4 activation rows run the register tile over a panel.
 * Returns 1 (nothing written) when the padded copy of x cannot be allocated; a thread without memory for its
 * panel computes its columns with the row kernel instead. */
static int gemm_panels(const int8_t *x, const int8_t *w, const float *xs, const float *ws, const float *xo,
                        const int64_t *cols, int64_t n_out, float *out, int64_t M, int64_t K, int64_t N) {
    const int64_t K4 = (K + 3) / 4, npanels = (N + 15) / 16;
    const int8_t *xp = x;
    int64_t ldx = K;
    int8_t *xpad = NULL;
    if (EB_U8S8) { /* x + 128 as unsigned bytes, rows padded to whole k-groups (padding meets zero weights) */
        xpad = (int8_t *)calloc((size_t)(M * K4 * 4), 1);
        if (!xpad) return 1;
        for (int64_t m = 0; m < M; m++)
            for (int64_t k = 0; k < K; k++) xpad[m * K4 * 4 + k] = (int8_t)((uint8_t)x[m * K + k] ^ 0x80u);
        xp = xpad, ldx = K4 * 4;
    } else if (K % 4) { /* the tile reads whole 4-byte k-groups: give every row a zero-padded tail */
        xpad = (int8_t *)calloc((size_t)(M * K4 * 4), 1);
        if (!xpad) return 1;
        for (int64_t m = 0; m < M; m++) memcpy(xpad + m * K4 * 4, x + m * K, (size_t)K);
        xp = xpad, ldx = K4 * 4;
    }
#pragma omp parallel if (npanels >= 4)
    {
        int8_t *panel = (int8_t *)aligned_alloc(64, (size_t)(K4 * 64));
#pragma omp for schedule(static)
        for (int64_t p = 0; p < npanels; p++) {
            const int64_t n0 = 16 * p;
            const int nn = N - n0 < 16 ? (int)(N - n0) : 16;
            if (!panel) {
                for (int j = 0; j < nn; j++)
                    for (int64_t m = 0; m < M; m++)
                        out[m * N + n0 + j] = finish(dot_1x1(x + m * K, w + (n0 + j) * K, K), w + (n0 + j) * K, xs[m],
                                                     ws[n0 + j], xo ? xo + m * n_out : xo, cols, n_out);
                continue;
            }
            pack_panel(w, K, n0, nn, K4, panel);
#if EB_U8S8
            int32_t colsum[16];
            panel_colsum(panel, K4, colsum);
#endif
            for (int64_t m0 = 0; m0 < M; m0 += 4) {
                const int mr = M - m0 < 4 ? (int)(M - m0) : 4;
                const int8_t *xr[4];
                for (int r = 0; r < 4; r++) xr[r] = xp + (m0 + (r < mr ? r : 0)) * ldx; /* spare rows: discarded */
                int32_t acc[4][16];
#if EB_U8S8
                micro_4x16_u8((const uint8_t *)xr[0], (const uint8_t *)xr[1], (const uint8_t *)xr[2],
                              (const uint8_t *)xr[3], panel, K4, colsum, acc);
#else
                micro_4x16(xr[0], xr[1], xr[2], xr[3], panel, K4, acc);
#endif
                for (int r = 0; r < mr; r++) {
                    const int64_t m = m0 + r;
                    if (nn == 16 && !n_out) { /* the same two multiplies as finish(), 8 outputs at a time */
                        const __m256 xsm = _mm256_set1_ps(xs[m]);
                        for (int j = 0; j < 16; j += 8) {
                            const __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(acc[r] + j))), xsm);
                            _mm256_storeu_ps(out + m * N + n0 + j, _mm256_mul_ps(y, _mm256_loadu_ps(ws + n0 + j)));
                        }
                        continue;
                    }
                    for (int j = 0; j < nn; j++)
                        out[m * N + n0 + j] = finish(acc[r][j], w + (n0 + j) * K, xs[m], ws[n0 + j],
                                                     xo ? xo + m * n_out : xo, cols, n_out);
                }
            }
        }
        free(panel);
    }
    free(xpad);
    return 0;
}
#endif

void eb_int8_gemm(const int8_t *x, const int8_t *w, const float *xs, const float *ws, const float *xo,
                 const int64_t *cols, int64_t n_out, float *out, int64_t M, int64_t K, int64_t N) {
#ifdef __AVX2__
    if (M >= EB_PANEL_MIN_ROWS && gemm_panels(x, w, xs, ws, xo, cols, n_out, out, M, K, N) == 0) return;
#endif
    gemm_rows(x, w, xs, ws, xo, cols, n_out, out, M, K, N);
}

/* LLM.int8() activation preparation for M rows of K float32 values, mirroring the PyTorch reference
 * (eightbit.functional.int8.outlier_columns + quantize_vectorwise on the outlier-zeroed input):
 * col_flag[c] = any |x[:, c]| >= threshold (threshold > 0; NaN never counts); per row, absmax over the other
 * columns, step = absmax / 127, q = clamp(rint(x / step), -127, 127) with NaN (0/0 of a zero row) -> 0 and
 * flagged columns -> 0. Returns 1 without finishing when a row needs the reference's special handling
 * (a NaN/Inf left in the row, or a subnormal step: the reference then computes in float64), else 0. */
static int prepare_row(const float *restrict x, const uint8_t *restrict flag, int64_t K, int8_t *restrict q,
                       float *restrict absmax) {
    /* |x| compared as integers (monotone for non-negative floats); NaN and Inf show up as bits >= Inf's */
    const uint32_t *restrict xu = (const uint32_t *)x;
    uint32_t amax_bits = 0;
    for (int64_t c = 0; c < K; c++) {
        uint32_t a = (xu[c] & 0x7FFFFFFFu) & ((uint32_t)flag[c] - 1u); /* flagged column: mask 0 */
        amax_bits = a > amax_bits ? a : amax_bits;
    }
    float amax;
    memcpy(&amax, &amax_bits, 4);
    if (amax_bits >= 0x7F800000u || (amax > 0.0f && amax < 0x1p-100f)) return 1;
    const float step = amax / 127.0f;
    for (int64_t c = 0; c < K; c++) {
        float v = flag[c] ? 0.0f : x[c] / step;
        v = v != v ? 0.0f : v;
        v = rintf(v);
        v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
        q[c] = (int8_t)v;
    }
    *absmax = amax;
    return 0;
}

/* col_flag[c0..c1) |= |x[m, c]| >= threshold over all rows (NaN compares false: never an outlier). */
static void flag_columns(const float *restrict x, int64_t M, int64_t K, float threshold, int64_t c0, int64_t c1,
                         uint8_t *restrict col_flag) {
    for (int64_t m = 0; m < M; m++) {
        const float *restrict xr = x + m * K;
        for (int64_t c = c0; c < c1; c++) col_flag[c] |= (uint8_t)(fabsf(xr[c]) >= threshold);
    }
}

int eb_int8_prepare(const float *x, int64_t M, int64_t K, float threshold, int8_t *q, float *absmax,
                    uint8_t *col_flag) {
    memset(col_flag, 0, (size_t)K);
    if (threshold > 0.0f) {
        const int64_t chunks = (K + 255) / 256;
#pragma omp parallel for schedule(static) if (M * K >= 65536)
        for (int64_t t = 0; t < chunks; t++)
            flag_columns(x, M, K, threshold, t * 256, (t + 1) * 256 < K ? (t + 1) * 256 : K, col_flag);
    }
    int fail = 0;
#pragma omp parallel for schedule(static) reduction(| : fail) if (M * K >= 65536)
    for (int64_t m = 0; m < M; m++) fail |= prepare_row(x + m * K, col_flag, K, q + m * K, absmax + m);
    return fail;
}


/* The whole LLM.int8() forward of float32 x [M, K] with int8 w [N, K] (row absmax w_absmax [N]) in one call, so
 * that a small layer pays one foreign call instead of a dozen tensor ops: eb_int8_prepare, the scales
 * (absmax / 127, as the Python path divides), the outlier columns gathered (up to xo_cap of them: xo is M x xo_cap),
 * eb_int8_gemm with them fused when M <= fused_rows, then the bias. Returns -1 when a row needs the reference
 * (nothing usable written); otherwise C, the number of outlier columns (indices in cols). When C > 0 and the
 * outliers were not fused (M > fused_rows or C > xo_cap) the returned out holds the int8 part only and the
 * caller adds the outlier product and then the bias; else out is complete. */
int64_t eb_int8_linear(const float *x, int64_t M, int64_t K, const int8_t *w, const float *w_absmax,
                       const float *bias, int64_t N, float threshold, int64_t fused_rows, int64_t xo_cap,
                       int8_t *q, float *xs, float *ws, uint8_t *flags, int64_t *cols, float *xo, float *out) {
    if (eb_int8_prepare(x, M, K, threshold, q, xs, flags)) return -1;
    int64_t C = 0;
    for (int64_t c = 0; c < K; c++)
        if (flags[c]) cols[C++] = c;
    for (int64_t m = 0; m < M; m++) xs[m] = xs[m] / 127.0f;
    for (int64_t n = 0; n < N; n++) ws[n] = w_absmax[n] / 127.0f;
    const int fused = C > 0 && M <= fused_rows && C <= xo_cap;
    if (fused)
        for (int64_t m = 0; m < M; m++)
            for (int64_t j = 0; j < C; j++) xo[m * C + j] = x[m * K + cols[j]];
    eb_int8_gemm(q, w, xs, ws, fused ? xo : NULL, fused ? cols : NULL, fused ? C : 0, out, M, K, N);
    if (C > 0 && !fused) return C;
    if (bias)
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) out[m * N + n] += bias[n];
    return C;
}
