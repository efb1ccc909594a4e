/* eightbit native CPU kernels: the packed-panel loop nest of the exact int8 GEMM (many rows; see int8_gemm.h for
 * the exactness argument and int8_cpu.c for the row tiles and the entry point that chooses between them). */
#include "int8_gemm.h"

#if defined(__AVX2__) && defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AVX512F__)
#define EB_AMX 1
#endif

#ifdef __AVX2__
/* panel[q * 64 + j * 4 + t] = w[(n0 + j) * K + 4q + t] ^ flip for j < nn, 4q + t < K; flip (0 ^ flip) elsewhere
 * (q < K4). */
static void pack_panel(const int8_t *restrict w, int64_t K, int64_t n0, int nn, int64_t K4, uint8_t flip,
                       int8_t *restrict panel) {
    const int64_t blocks = K / 32; /* 8 k-groups of 8 rows at a time: an 8x8 transpose of 32-bit words */
    const __m256i zero = _mm256_setzero_si256(), vflip = _mm256_set1_epi8((char)flip);
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
                r[j] = _mm256_xor_si256(live[j] ? _mm256_loadu_si256((const __m256i *)(rows[j] + 32 * b)) : zero, vflip);
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
                panel[q * 64 + j * 4 + t] = (int8_t)((uint8_t)((j < nn && k < K) ? w[(n0 + j) * K + k] : 0) ^ flip);
            }
}

#if defined(__AVX512VNNI__) && defined(__AVX512VL__) && defined(__AVX512BW__)
/* With VNNI the panel holds the weight as unsigned bytes u = w ^ 0x80 = w + 128 and the activations stay signed
 * (-127..127): vpdpbusd adds each group of four u * x products to an int32 lane without saturation, with the
 * activation's 4 bytes as its broadcast operand, so a k-group of the 8x16 tile is one panel load, 8 broadcasts and
 * 8 vpdpbusd (no sign or abs work); register-resident that runs at one vpdpbusd per cycle (3.64 G/s per core
 * here, a standalone loop over an L1-resident panel). sum u * x = sum w * x + 128 * rowsum(x); the int32 lanes wrap (two's
 * complement), and since the true sum fits in int32 (K <= MAX_K), starting each accumulator at -128 * rowsum in
 * wrapping arithmetic makes it end at that sum exactly. */
#define EB_U8S8 1
#define EB_PANEL_FLIP 0x80u
/* Exact sum of K int8 values. */
static int32_t row_sum(const int8_t *restrict x, int64_t K) {
    const __m512i ones = _mm512_set1_epi8(1);
    __m512i s = _mm512_setzero_si512();
    for (int64_t k = 0; k < K; k += 64) {
        const __mmask64 live = K - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (K - k)) - 1);
        s = _mm512_dpbusd_epi32(s, ones, _mm512_maskz_loadu_epi8(live, x + k));
    }
    return _mm512_reduce_add_epi32(s);
}

/* The VNNI tile is up to 12 rows x 16 columns at 512 bits: one k-group of the panel (16 columns x 4 bytes) is one
 * zmm, multiplied with one activation row per accumulator. Measured against the 4x16 ymm tile (2 threads, hot):
 * 1152 x 384 x 384 0.86 -> 0.65 ms, 512 x 4096 x 4096 33.3 -> 23.1 ms (8 rows). Each row count has its own
 * instance (tile_rows_u8 with a literal), so the last tile costs only its rows: with 8-row tiles alone, 12 rows
 * (MiniLM at batch 1) computed 16 (M = 12, kernel only: 384 x 384 23.2 -> 20.3 us, 1536 x 384 54.8 -> 48.5 us).
 * Full tiles are 8 rows (EB_PANEL_STEP) and the last takes up to 12, so 12 rows are one tile: 12-row tiles
 * throughout measured 1-2 % slower at M = 1152 (MiniLM's 36 layers, medians of 41 interleaved runs). The panel nest
 * runs from 8 rows (EB_ROWS_WIN), so last tiles have 5 to 12 rows; the smaller instances are there for any caller. */
#define EB_PANEL_ROWS 12
#define EB_PANEL_STEP 8
/* Inline asm because GCC 12 copies every accumulator of the intrinsic's form through another register each
 * iteration (16 extra vmovdqa per 8 vpdpbusd) and does not fold the broadcast; here the accumulator is tied ("+v")
 * and the activation's 4 bytes are an embedded {1to16} broadcast. The loop went from 37 to 13 instructions per 8
 * vpdpbusd. Measured (2 threads, MiniLM's shapes at M = 1152, builds interleaved): while the VM's cores were
 * contended 1152 x 384 x 384 0.70 -> 0.56 ms and 1152 x 1536 x 384 2.72 -> 2.25 ms; on quiet cores within 2 %.
 * Row r of the tile is addressed from base pointer b[r / 4] (rows 0, 4, 8, advanced 4 bytes per k-group) plus
 * (r % 4) rows of ldx bytes: 3 base and 2 index registers for 12 rows. The "memory" clobber stands for the
 * activation bytes the asm reads. */
#define EB_DP0(A, B) __asm__("vpdpbusd (%2)%{1to16%}, %1, %0" : "+v"(A) : "v"(wq), "r"(B) : "memory");
#define EB_DP1(A, B) __asm__("vpdpbusd (%2,%3,1)%{1to16%}, %1, %0" : "+v"(A) : "v"(wq), "r"(B), "r"(ld) : "memory");
#define EB_DP2(A, B) __asm__("vpdpbusd (%2,%3,2)%{1to16%}, %1, %0" : "+v"(A) : "v"(wq), "r"(B), "r"(ld) : "memory");
#define EB_DP3(A, B) __asm__("vpdpbusd (%2,%3,1)%{1to16%}, %1, %0" : "+v"(A) : "v"(wq), "r"(B), "r"(ld3) : "memory");
/* rows R .. R + 3 of the tile (those below MR), all from base pointer B */
#define EB_ROWS4(R, A0, A1, A2, A3, B)                                                                            \
    if (MR > R) EB_DP0(A0, B) if (MR > R + 1) EB_DP1(A1, B) if (MR > R + 2) EB_DP2(A2, B) if (MR > R + 3) EB_DP3(A3, B)
#define EB_ALL(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
/* finish() on the tile's rows, 16 columns each, straight from the accumulators: the same operations in the same
 * order. The outlier sums of the rows advance together, one weight column at a time (independent add chains). */
#define EB_ROW_SCALE(R)                                                                                           \
    const int64_t row##R = m0 + (R < MR ? R : 0);                                                                 \
    __m512 y##R = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(a##R), _mm512_set1_ps(e->xs[row##R])), ws16),         \
           o##R = _mm512_setzero_ps();
#define EB_ROW_OUTLIER(R)                                                                                         \
    if (R < MR) o##R = _mm512_add_ps(o##R, _mm512_mul_ps(_mm512_set1_ps(xo[row##R * C + c]), wc));
#define EB_ROW_STORE(R)                                                                                           \
    if (R < MR) {                                                                                                 \
        if (C) y##R = _mm512_add_ps(y##R, o##R);                                                                  \
        if (add) y##R = _mm512_add_ps(y##R, _mm512_loadu_ps(add + row##R * N));                                     \
        if (bias) y##R = _mm512_add_ps(y##R, _mm512_loadu_ps(bias));                                              \
        _mm512_storeu_ps(out + row##R * N, y##R);                                                                   \
    }
#define EB_ROW_OUT(R)                                                                                             \
    if (R < MR) _mm512_storeu_si512((void *)acc[R], a##R);
/* each accumulator starts at -128 * rowsum (wrapping), so it ends at the exact sum of w * x (see above) */
#define EB_ROW_INIT(R) __m512i a##R = _mm512_set1_epi32((int32_t)(0u - 128u * (uint32_t)rowsum[R < MR ? R : 0]));
/* The exact sums of MR consecutive activation rows (x: the first, rows ldx apart) with one panel; with e (16 live
 * columns, outliers given as wo) finished into the output from the registers, else written to acc for finish().
 * (Storing the 512-bit sums and reading them back in 256-bit halves stalled on store forwarding: measured, 2
 * threads, 1152 x 384 x 1536 with 7 outlier columns 2.22 -> 2.01 ms, without outliers 1.81 -> 1.73 ms.) */
static inline __attribute__((always_inline)) void tile_rows_u8(const int MR, const int8_t *x, int64_t ldx,
                                                               const int8_t *restrict panel, int64_t K4,
                                                               const int32_t *rowsum, const eb_epi *e, int64_t m0,
                                                               int64_t n0, int32_t acc[EB_PANEL_ROWS][16]) {
    const int64_t ld = ldx, ld3 = 3 * ldx;
    const int8_t *b0 = x, *b1 = MR > 4 ? x + 4 * ldx : x, *b2 = MR > 8 ? x + 8 * ldx : x; /* only rows that exist */
    EB_ALL(EB_ROW_INIT)
    for (int64_t q = 0; q < K4; q++) {
        const __m512i wq = _mm512_loadu_si512((const void *)(panel + q * 64));
        EB_ROWS4(0, a0, a1, a2, a3, b0) EB_ROWS4(4, a4, a5, a6, a7, b1) EB_ROWS4(8, a8, a9, a10, a11, b2)
        b0 += 4, b1 += 4, b2 += 4;
    }
    if (!e) {
        EB_ALL(EB_ROW_OUT)
        return;
    }
    const int64_t N = e->N, C = e->n_out;
    const float *restrict xo = e->xo, *restrict wo = e->wo ? e->wo + n0 : NULL;
    const float *restrict add = e->add ? e->add + n0 : NULL, *restrict bias = e->bias ? e->bias + n0 : NULL;
    float *restrict out = e->out + n0;
    const __m512 ws16 = _mm512_loadu_ps(e->ws + n0);
    EB_ALL(EB_ROW_SCALE)
    for (int64_t c = 0; c < C; c++) {
        const __m512 wc = _mm512_loadu_ps(wo + c * N);
        EB_ALL(EB_ROW_OUTLIER)
    }
    EB_ALL(EB_ROW_STORE)
}
#undef EB_DP0
#undef EB_DP1
#undef EB_DP2
#undef EB_DP3
#undef EB_ROWS4
#undef EB_ALL
#undef EB_ROW_INIT
#undef EB_ROW_OUT
#undef EB_ROW_SCALE
#undef EB_ROW_OUTLIER
#undef EB_ROW_STORE
/* tile_rows_u8 for mr (1 .. EB_PANEL_ROWS) rows, each count its own unrolled instance. */
static void micro_tile(int mr, const int8_t *x, int64_t ldx, const int8_t *restrict panel, int64_t K4,
                       const int32_t *rowsum, const eb_epi *e, int64_t m0, int64_t n0, int32_t acc[EB_PANEL_ROWS][16]) {
    switch (mr) {
#define EB_CASE(R) case R: tile_rows_u8(R, x, ldx, panel, K4, rowsum, e, m0, n0, acc); break;
    EB_CASE(12) EB_CASE(11) EB_CASE(10) EB_CASE(9) EB_CASE(8) EB_CASE(7) EB_CASE(6) EB_CASE(5) EB_CASE(4) EB_CASE(3)
    EB_CASE(2) EB_CASE(1)
#undef EB_CASE
    default: break;
    }
}
#else
#define EB_U8S8 0
#define EB_PANEL_FLIP 0x00u
#define EB_PANEL_ROWS 4
#define EB_PANEL_STEP 4
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

#if !EB_U8S8
/* finish() for a whole register tile (rows m0 .. m0 + mr - 1, the 16 columns from n0), 8 columns at a time: the
 * same operations in the same order, with the outlier columns' sums of all rows in flight together (one sum per
 * output element is a chain of dependent adds; interleaving the rows hides their latency). */
static void tile_epilogue(const eb_epi *e, const int32_t acc[EB_PANEL_ROWS][16], int mr, int64_t m0, int64_t n0) {
    const int64_t N = e->N, C = e->n_out;
    const float *restrict xo = e->xo, *restrict wo = e->wo, *restrict add = e->add, *restrict bias = e->bias;
    float *restrict out = e->out;
    int64_t rows[EB_PANEL_ROWS];
    for (int r = 0; r < EB_PANEL_ROWS; r++) rows[r] = m0 + (r < mr ? r : 0); /* spare rows: computed, not stored */
    for (int j = 0; j < 16; j += 8) {
        const __m256 wsj = _mm256_loadu_ps(e->ws + n0 + j);
        __m256 y[EB_PANEL_ROWS], o[EB_PANEL_ROWS];
        for (int r = 0; r < EB_PANEL_ROWS; r++) {
            const __m256 a = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(acc[r] + j)));
            y[r] = _mm256_mul_ps(_mm256_mul_ps(a, _mm256_set1_ps(e->xs[rows[r]])), wsj);
            o[r] = _mm256_setzero_ps();
        }
        if (C) {
            for (int64_t c = 0; c < C; c++) {
                const __m256 wc = _mm256_loadu_ps(wo + c * N + n0 + j);
                for (int r = 0; r < EB_PANEL_ROWS; r++)
                    o[r] = _mm256_add_ps(o[r], _mm256_mul_ps(_mm256_set1_ps(xo[rows[r] * C + c]), wc));
            }
            for (int r = 0; r < EB_PANEL_ROWS; r++) y[r] = _mm256_add_ps(y[r], o[r]);
        }
        for (int r = 0; r < mr; r++) {
            __m256 v = y[r];
            if (add) v = _mm256_add_ps(v, _mm256_loadu_ps(add + rows[r] * N + n0 + j));
            if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + n0 + j));
            _mm256_storeu_ps(out + rows[r] * N + n0 + j, v);
        }
    }
}
#endif

/* All M rows against one packed panel (columns n0 .. n0 + nn - 1), EB_PANEL_ROWS at a time through the register
 * tile and its epilogue. */
static void panel_sweep(const int8_t *xp, int64_t ldx, const int32_t *rowsum, const int8_t *restrict panel,
                        const int8_t *w, const eb_epi *e, int64_t M, int64_t K, int64_t n0, int nn) {
    const int64_t K4 = ldx / 4;
    const int fast = nn == 16 && (!e->n_out || e->wo); /* the vector epilogue applies */
    for (int64_t m0 = 0, mr; m0 < M; m0 += mr) {
        mr = M - m0 <= EB_PANEL_ROWS ? (int)(M - m0) : EB_PANEL_STEP;
        int32_t acc[EB_PANEL_ROWS][16];
#if EB_U8S8
        int32_t rs[EB_PANEL_ROWS];
        for (int r = 0; r < mr; r++) rs[r] = rowsum ? rowsum[m0 + r] : row_sum(xp + (m0 + r) * ldx, K);
        micro_tile(mr, xp + m0 * ldx, ldx, panel, K4, rs, fast ? e : NULL, m0, n0, acc);
        if (fast) continue;
#else
        const int8_t *xr[EB_PANEL_ROWS];
        for (int r = 0; r < EB_PANEL_ROWS; r++) xr[r] = xp + (m0 + (r < mr ? r : 0)) * ldx; /* spare rows: discarded */
        (void)rowsum;
        micro_4x16(xr[0], xr[1], xr[2], xr[3], panel, K4, acc);
        if (fast) {
            tile_epilogue(e, acc, mr, m0, n0);
            continue;
        }
#endif
        for (int r = 0; r < mr; r++)
            for (int j = 0; j < nn; j++) finish(e, acc[r][j], w + (n0 + j) * K, m0 + r, n0 + j);
    }
}

/* The dequantized outlier weights e->wo of the columns n0 .. n0 + nn - 1, read from their packed panel in L1 (a
 * byte of each 4-byte group; flip: the panel's byte flip, undone). From the weight rows they cost a cache miss each:
 * M = 12, 1536 x 384, 3 outlier columns, kernel only 45.2 -> 40.7 us; 4 outlier columns cost 15 % of the AMX nest
 * at 512 x 4096 x 4096. */
static void panel_outlier_weights(const eb_epi *e, const int8_t *restrict panel, int64_t n0, int nn, uint8_t flip) {
    const int64_t N = e->N;
    for (int64_t j = 0; j < e->n_out; j++) {
        const int64_t q = e->cols[j] / 4, t = e->cols[j] % 4;
#if EB_U8S8
        if (nn == 16) { /* byte t of each 4-byte group to the top, the flip undone, shifted down signed */
            const __m512i g = _mm512_slli_epi32(_mm512_load_si512((const void *)(panel + q * 64)), (unsigned)(24 - 8 * t));
            const __m512i v = _mm512_srai_epi32(_mm512_xor_si512(g, _mm512_set1_epi32((int32_t)((uint32_t)flip << 24))), 24);
            _mm512_storeu_ps(e->wo + j * N + n0, _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_loadu_ps(e->ws + n0)));
            continue;
        }
#endif
        for (int i = 0; i < nn; i++)
            e->wo[j * N + n0 + i] = (float)(int8_t)((uint8_t)panel[q * 64 + 4 * i + t] ^ flip) * e->ws[n0 + i];
    }
}

/* The dequantized outlier weights e->wo of the columns n0 .. n0 + nn - 1, from the weight rows. */
static void row_outlier_weights(const eb_epi *e, const int8_t *w, int64_t K, int64_t n0, int nn) {
    for (int64_t j = 0; j < e->n_out; j++)
        for (int64_t n = n0; n < n0 + nn; n++) e->wo[j * e->N + n] = (float)w[n * K + e->cols[j]] * e->ws[n];
}

/* The columns n0 .. n0 + nn - 1 without a panel (no memory for one): plain dot products over x's rows (ldx apart). */
static void columns_by_dots(const int8_t *xp, int64_t ldx, const int8_t *w, const eb_epi *e, int64_t M, int64_t K,
                            int64_t n0, int nn) {
    if (e->wo) row_outlier_weights(e, w, K, n0, nn);
    for (int j = 0; j < nn; j++)
        for (int64_t m = 0; m < M; m++) finish(e, dot_1x1(xp + m * ldx, w + (n0 + j) * K, K), w + (n0 + j) * K, m, n0 + j);
}

#ifdef EB_AMX
#include "int8_amx.h"
#endif

/* Many rows: 16-column panels split over threads; each panel is packed and swept over all rows. (Blocking the
 * rows so that a block of x stays in L2 while a thread's panels sweep it measured no faster at MiniLM's shapes or
 * at 512 x 4096 x 4096: the tile reads 32 bytes of x per 8 vpdpbusd, far below L3's bandwidth. Tried again with the
 * asm tile: each thread packing all its panels once and sweeping them over 128 KB blocks of x took MiniLM's 36
 * layers from 36.2 to 39.7 ms; a two-panel 8 x 32 tile, which reads x once per 32 columns, measured equal without
 * outliers and slower with them, 36.7-37.1 -> 42.1-43.3 ms.) Returns 1 (nothing
 * written) when the zero-padded copy of x it needs (x not ready and K % 4) cannot be allocated; so with x_ready it
 * never fails. A thread without memory for its panel computes its columns with a plain dot product instead. */
int eb_gemm_panels(const int8_t *x, int x_ready, const int8_t *w, const eb_epi *e, int64_t M, int64_t K, int64_t N) {
#ifdef EB_AMX
    if (amx_gemm_panels(x, x_ready, w, e, M, K, N) == 0) return 0;
#endif
    const int64_t K4 = (K + 3) / 4, npanels = (N + 15) / 16, ldx = K4 * 4;
    const int8_t *xp = x;
    int8_t *xpad = NULL;
    if (!x_ready && K % 4) { /* the tile reads whole 4-byte k-groups: rows padded with zeros */
        xpad = (int8_t *)calloc((size_t)(M * ldx), 1);
        if (!xpad) return 1;
        for (int64_t m = 0; m < M; m++) memcpy(xpad + m * ldx, x + m * K, (size_t)K);
        xp = xpad;
    }
    int32_t *rowsum = NULL;
#if EB_U8S8
    rowsum = (int32_t *)malloc((size_t)M * sizeof(int32_t)); /* NULL: each tile sums its rows itself */
#endif
#pragma omp parallel if (npanels >= 4)
    {
#if EB_U8S8
        if (rowsum) { /* split over the threads too (serial, 1152 x 384 spent ~10 us here) */
#pragma omp for schedule(static)
            for (int64_t m = 0; m < M; m++) rowsum[m] = row_sum(xp + m * ldx, K);
        }
#endif
        int8_t *panel = (int8_t *)aligned_alloc(64, (size_t)(K4 * 64));
#pragma omp for schedule(static)
        for (int64_t p = 0; p < npanels; p++) {
            const int64_t n0 = 16 * p;
            const int nn = N - n0 < 16 ? (int)(N - n0) : 16;
            if (panel) {
                pack_panel(w, K, n0, nn, K4, EB_PANEL_FLIP, panel);
                if (e->wo) panel_outlier_weights(e, panel, n0, nn, EB_PANEL_FLIP);
                if (p + 1 < npanels) /* the next panel's weight rows into L2 while this one computes */
                    for (int64_t off = 16 * K; off < 32 * K && n0 * K + off < N * K; off += 64)
                        _mm_prefetch((const char *)(w + n0 * K + off), _MM_HINT_T1);
                panel_sweep(xp, ldx, rowsum, panel, w, e, M, K, n0, nn);
                continue;
            }
            columns_by_dots(xp, ldx, w, e, M, K, n0, nn);
        }
        free(panel);
    }
    free(rowsum);
    free(xpad);
    return 0;
}
#endif

/* Whether the panel nest runs on AMX here (compiled for it, permitted, not switched off by EIGHTBIT_AMX=0). */
int64_t eb_amx_usable(void) {
#ifdef EB_AMX
    return amx_usable();
#else
    return 0;
#endif
}
