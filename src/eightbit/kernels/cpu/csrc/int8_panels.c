/* eightbit native CPU kernels: the packed-panel loop nest of the exact int8 GEMM (many rows; see int8_gemm.h for
 * the exactness argument and int8_cpu.c for the row tiles and the entry point that chooses between them). */
#include "int8_gemm.h"

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
 * one instruction per 64 products (8x16 tile below) and no sign or abs work. sum u * w = sum x * w + 128 * colsum(w); the int32
 * lanes wrap (two's complement), and since the true sum fits in int32 (K <= MAX_K), subtracting 128 * colsum in
 * wrapping (unsigned) arithmetic gives it exactly. */
#define EB_U8S8 1
static void panel_colsum(const int8_t *restrict panel, int64_t K4, int32_t colsum[16]) {
    for (int j = 0; j < 16; j++) colsum[j] = 0;
    for (int64_t q = 0; q < K4; q++)
        for (int j = 0; j < 16; j++)
            for (int t = 0; t < 4; t++) colsum[j] += panel[q * 64 + j * 4 + t];
}

/* The VNNI tile is 8 rows x 16 columns at 512 bits: one k-group of the panel (16 columns x 4 bytes) is one zmm,
 * so each row costs one broadcast and one vpdpbusd per 64 products. Measured against the 4x16 ymm tile (2 threads,
 * hot): 1152 x 384 x 384 0.86 -> 0.65 ms, 512 x 4096 x 4096 33.3 -> 23.1 ms. */
#define EB_PANEL_ROWS 8
#define EB_ROW_U8(R)                                                                                              \
    a##R = _mm512_dpbusd_epi32(a##R, _mm512_set1_epi32(*(const int32_t *)(x##R + 4 * q)), wq);
static void micro_tile(const int8_t *const xr[EB_PANEL_ROWS], const int8_t *restrict panel, int64_t K4,
                       const int32_t colsum[16], int32_t acc[EB_PANEL_ROWS][16]) {
    const int8_t *x0 = xr[0], *x1 = xr[1], *x2 = xr[2], *x3 = xr[3], *x4 = xr[4], *x5 = xr[5], *x6 = xr[6],
                 *x7 = xr[7];
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (int64_t q = 0; q < K4; q++) {
        const __m512i wq = _mm512_loadu_si512((const void *)(panel + q * 64));
        EB_ROW_U8(0) EB_ROW_U8(1) EB_ROW_U8(2) EB_ROW_U8(3) EB_ROW_U8(4) EB_ROW_U8(5) EB_ROW_U8(6) EB_ROW_U8(7)
    }
    const __m512i c = _mm512_slli_epi32(_mm512_loadu_si512((const void *)colsum), 7);
    _mm512_storeu_si512((void *)acc[0], _mm512_sub_epi32(a0, c)), _mm512_storeu_si512((void *)acc[1], _mm512_sub_epi32(a1, c));
    _mm512_storeu_si512((void *)acc[2], _mm512_sub_epi32(a2, c)), _mm512_storeu_si512((void *)acc[3], _mm512_sub_epi32(a3, c));
    _mm512_storeu_si512((void *)acc[4], _mm512_sub_epi32(a4, c)), _mm512_storeu_si512((void *)acc[5], _mm512_sub_epi32(a5, c));
    _mm512_storeu_si512((void *)acc[6], _mm512_sub_epi32(a6, c)), _mm512_storeu_si512((void *)acc[7], _mm512_sub_epi32(a7, c));
}
#undef EB_ROW_U8
#else
#define EB_U8S8 0
#define EB_PANEL_ROWS 4
#endif

#if !EB_U8S8
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
#endif

/* Many rows: 16-column panels split over threads; every 4 activation rows run the register tile over a panel.
 * Returns 1 (nothing written) when the padded copy of x cannot be allocated; a thread without memory for its
 * panel computes its columns with the row kernel instead. */
int eb_gemm_panels(const int8_t *x, const int8_t *w, const float *xs, const float *ws, const float *xo,
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
            for (int64_t m0 = 0; m0 < M; m0 += EB_PANEL_ROWS) {
                const int mr = M - m0 < EB_PANEL_ROWS ? (int)(M - m0) : EB_PANEL_ROWS;
                const int8_t *xr[EB_PANEL_ROWS];
                for (int r = 0; r < EB_PANEL_ROWS; r++) xr[r] = xp + (m0 + (r < mr ? r : 0)) * ldx; /* spare rows: discarded */
                int32_t acc[EB_PANEL_ROWS][16];
#if EB_U8S8
                micro_tile(xr, panel, K4, colsum, acc);
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
