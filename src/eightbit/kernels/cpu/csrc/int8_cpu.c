/* eightbit native CPU kernels: the exact int8 GEMM of LLM.int8() (its entry point and few-rows register tiles; the
 * packed-panel nest for many rows is int8_panels.c, the shared exactness argument and helpers int8_gemm.h) and its
 * activation preparation. Built together with the other C files in csrc/ into one library
 * (eightbit.kernels.native_cpu); bit-identical to the PyTorch references (tests/kernels/test_native_cpu.py). */
#include "int8_gemm.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* The few-rows tile: acc[r][j] = exact int32 dot products of mr (<= EB_TILE_ROWS) activation rows xr[r] with 4
 * weight rows wr[j], all of length K. Each weight vector is loaded once and used for every activation row, so M
 * rows cost one pass over the weight plus M times the multiply work, not M passes. ``mr`` is a literal at every
 * call site (eb_tile dispatches), so the loops unroll and the accumulators stay in registers. */
#ifdef __AVX2__
/* The same bytes of the next group of 4 weight rows (4 K further on), into L2: measured cold (32 layers of 4096 x 4096,
 * 512 MB, 2 threads), M = 1 24.4 -> 19.1 ms, M = 4 27.5 -> 19.0, M = 8 35.5 -> 23.6; prefetching 2 rows ahead
 * gained half as much, 16 rows ahead no more. The hardware prefetcher alone keeps too few lines in flight for four
 * streams per core. (A prefetch past the end of the weight is a no-op: it never faults.) */
#define EB_PREFETCH_NEXT_GROUP(k)                                                                                 \
    _mm_prefetch((const char *)(r0 + 4 * K + (k)), _MM_HINT_T1), _mm_prefetch((const char *)(r1 + 4 * K + (k)), _MM_HINT_T1); \
    _mm_prefetch((const char *)(r2 + 4 * K + (k)), _MM_HINT_T1), _mm_prefetch((const char *)(r3 + 4 * K + (k)), _MM_HINT_T1);
#endif
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
/* AVX-512 VNNI: 64 bytes per step. The activations go in as unsigned bytes u = x ^ 0x80 = x + 128 against the signed
 * weight (vpdpbusd: four u * w products into each int32 lane, no int16 stage, no saturation), and
 * sum x * w = sum u * w - 128 * sum w, the weight row sums coming from one more vpdpbusd of ones per weight vector.
 * The lanes wrap (two's complement); the true sum fits in int32 (K <= MAX_K), so the wrapping subtraction gives it
 * exactly. AVX-512 has no vpsignb, so this is also the cheapest exact step at 512 bits: 1 + 1/mr instructions
 * per 64 products. The K % 64 tail is loaded under a mask: zero weights contribute nothing. */
#define EB_TILE_ROWS 4
/* (Named accumulators, not arrays: GCC keeps an array of vectors on the stack even when every index is constant.) */
#define EB_Z_ROW(R, XR)                                                                                           \
    if (mr > R) {                                                                                                 \
        const __m512i xv = _mm512_xor_si512(_mm512_maskz_loadu_epi8(live, (XR) + k), bias);                     \
        a##R##0 = _mm512_dpbusd_epi32(a##R##0, xv, w0), a##R##1 = _mm512_dpbusd_epi32(a##R##1, xv, w1);          \
        a##R##2 = _mm512_dpbusd_epi32(a##R##2, xv, w2), a##R##3 = _mm512_dpbusd_epi32(a##R##3, xv, w3);          \
    }
#define EB_Z_OUT(R)                                                                                               \
    if (mr > R) {                                                                                                 \
        acc[R][0] = (int32_t)((uint32_t)_mm512_reduce_add_epi32(a##R##0) - c0);                                   \
        acc[R][1] = (int32_t)((uint32_t)_mm512_reduce_add_epi32(a##R##1) - c1);                                   \
        acc[R][2] = (int32_t)((uint32_t)_mm512_reduce_add_epi32(a##R##2) - c2);                                   \
        acc[R][3] = (int32_t)((uint32_t)_mm512_reduce_add_epi32(a##R##3) - c3);                                   \
    }
static inline __attribute__((always_inline)) void tile_rows(const int8_t *const xr[EB_TILE_ROWS],
                                                            const int8_t *const wr[4], int mr, int64_t K,
                                                            int32_t acc[EB_TILE_ROWS][4]) {
    const __m512i ones = _mm512_set1_epi8(1), bias = _mm512_set1_epi8((char)0x80);
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    __m512i a00 = s0, a01 = s0, a02 = s0, a03 = s0, a10 = s0, a11 = s0, a12 = s0, a13 = s0;
    __m512i a20 = s0, a21 = s0, a22 = s0, a23 = s0, a30 = s0, a31 = s0, a32 = s0, a33 = s0;
    const int8_t *x0 = xr[0], *x1 = xr[1], *x2 = xr[2], *x3 = xr[3];
    const int8_t *r0 = wr[0], *r1 = wr[1], *r2 = wr[2], *r3 = wr[3];
    for (int64_t k = 0; k < K; k += 64) {
        const __mmask64 live = K - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (K - k)) - 1);
        const __m512i w0 = _mm512_maskz_loadu_epi8(live, r0 + k), w1 = _mm512_maskz_loadu_epi8(live, r1 + k);
        const __m512i w2 = _mm512_maskz_loadu_epi8(live, r2 + k), w3 = _mm512_maskz_loadu_epi8(live, r3 + k);
        EB_PREFETCH_NEXT_GROUP(k)
        s0 = _mm512_dpbusd_epi32(s0, ones, w0), s1 = _mm512_dpbusd_epi32(s1, ones, w1);
        s2 = _mm512_dpbusd_epi32(s2, ones, w2), s3 = _mm512_dpbusd_epi32(s3, ones, w3);
        EB_Z_ROW(0, x0)
        EB_Z_ROW(1, x1)
        EB_Z_ROW(2, x2)
        EB_Z_ROW(3, x3)
    }
    const uint32_t c0 = 128u * (uint32_t)_mm512_reduce_add_epi32(s0), c1 = 128u * (uint32_t)_mm512_reduce_add_epi32(s1);
    const uint32_t c2 = 128u * (uint32_t)_mm512_reduce_add_epi32(s2), c3 = 128u * (uint32_t)_mm512_reduce_add_epi32(s3);
    EB_Z_OUT(0)
    EB_Z_OUT(1)
    EB_Z_OUT(2)
    EB_Z_OUT(3)
}
#undef EB_Z_ROW
#undef EB_Z_OUT
#elif defined(__AVX2__)
/* AVX2: the exact step of exact_step() (|w| against x * sign(w)), 32 bytes per step, |w| computed once per weight
 * vector for both activation rows; two rows keep the eight accumulators and the operands within 16 registers. */
#define EB_TILE_ROWS 2
#define EB_Y_COL(J, RJ)                                                                                           \
    {                                                                                                             \
        const __m256i wv = _mm256_loadu_si256((const __m256i *)((RJ) + k)), wa = _mm256_abs_epi8(wv);            \
        a0##J = exact_step(a0##J, xv0, wv, wa, ones);                                                             \
        if (mr > 1) a1##J = exact_step(a1##J, xv1, wv, wa, ones);                                                 \
    }
static inline __attribute__((always_inline)) void tile_rows(const int8_t *const xr[EB_TILE_ROWS],
                                                            const int8_t *const wr[4], int mr, int64_t K,
                                                            int32_t acc[EB_TILE_ROWS][4]) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i a00 = _mm256_setzero_si256(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    const int8_t *x0 = xr[0], *x1 = xr[1];
    const int8_t *r0 = wr[0], *r1 = wr[1], *r2 = wr[2], *r3 = wr[3];
    const int64_t K32 = K - K % 32;
    for (int64_t k = 0; k < K32; k += 32) {
        if (!(k & 63)) {
            EB_PREFETCH_NEXT_GROUP(k)
        }
        const __m256i xv0 = _mm256_loadu_si256((const __m256i *)(x0 + k));
        const __m256i xv1 = mr > 1 ? _mm256_loadu_si256((const __m256i *)(x1 + k)) : xv0;
        EB_Y_COL(0, r0)
        EB_Y_COL(1, r1)
        EB_Y_COL(2, r2)
        EB_Y_COL(3, r3)
    }
    const __m256i a[2][4] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}};
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < 4; j++) {
            int32_t t = hsum_epi32(a[r][j]);
            for (int64_t k = K32; k < K; k++) t += (int32_t)xr[r][k] * (int32_t)wr[j][k];
            acc[r][j] = t;
        }
}
#undef EB_Y_COL
#else
#define EB_TILE_ROWS 1
static inline void tile_rows(const int8_t *const xr[1], const int8_t *const wr[4], int mr, int64_t K,
                             int32_t acc[1][4]) {
    (void)mr;
    for (int j = 0; j < 4; j++) acc[0][j] = dot_1x1(xr[0], wr[j], K);
}
#endif

/* tile_rows with a literal row count, so each count gets its own unrolled, register-allocated loop. */
static void eb_tile(const int8_t *const xr[EB_TILE_ROWS], const int8_t *const wr[4], int mr, int64_t K,
                    int32_t acc[EB_TILE_ROWS][4]) {
    switch (mr) {
#if EB_TILE_ROWS >= 4
    case 4: tile_rows(xr, wr, 4, K, acc); break;
    case 3: tile_rows(xr, wr, 3, K, acc); break;
#endif
#if EB_TILE_ROWS >= 2
    case 2: tile_rows(xr, wr, 2, K, acc); break;
#endif
    default: tile_rows(xr, wr, 1, K, acc); break;
    }
}

/* Whether the row tiles (each weight row read in place once per call) beat packing panels for the panel tile.
 * Measured with the VNNI tiles (2 threads, hot cache, the whole int8_linear call, microseconds, rows vs panels,
 * M rows): K x N = 384 x 384: M = 4 14.7 vs 16.5, 8 18.5 vs 17.1, 12 22.0 vs 20.4; 384 x 1536: M = 8 37.9 vs 32.1;
 * 1536 x 384: M = 12 43.6 vs 45.8, 16 53.6 vs 48.7, 64 163 vs 122; 4096 x 4096: M = 16 908 vs 941, 24 1362 vs 1298,
 * 64 3615 vs 2933 (short rows: the row tile's horizontal sums weigh more, so panels win early). The AVX2 tiles keep
 * the crossover measured for them before (16 rows). */
#if EB_TILE_ROWS >= 4
#define EB_ROWS_WIN(M, K) ((M) < 8 || ((K) >= 1024 && (M) < 16) || ((K) >= 4096 && (M) < 20))
#else
#define EB_ROWS_WIN(M, K) ((M) < 16)
#endif

#define EB_ROW_OUTLIERS 32 /* outlier columns the row nest's vector epilogue holds (more: finish() per element) */

#ifdef __AVX2__
/* finish() on an mr x 4 tile of the row nest (4 live columns), 4 columns at a time: the same operations in the same
 * order. wo4[c][j]: column j's dequantized weight in outlier column c, built once per weight group. */
static void finish_tile4(const eb_epi *e, const int32_t acc[EB_TILE_ROWS][4], int mr, int64_t m0, int64_t n0,
                         const float *restrict wo4) {
    const int64_t N = e->N, C = e->n_out;
    const __m128 ws4 = _mm_loadu_ps(e->ws + n0);
    for (int r = 0; r < mr; r++) {
        const int64_t m = m0 + r;
        __m128 y = _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(_mm_loadu_si128((const __m128i *)acc[r])), _mm_set1_ps(e->xs[m])), ws4);
        if (C) {
            __m128 o = _mm_setzero_ps();
            for (int64_t c = 0; c < C; c++) o = _mm_add_ps(o, _mm_mul_ps(_mm_set1_ps(e->xo[m * C + c]), _mm_loadu_ps(wo4 + 4 * c)));
            y = _mm_add_ps(y, o);
        }
        if (e->add) y = _mm_add_ps(y, _mm_loadu_ps(e->add + m * N + n0));
        if (e->bias) y = _mm_add_ps(y, _mm_loadu_ps(e->bias + n0));
        _mm_storeu_ps(e->out + m * N + n0, y);
    }
}
#endif

/* Few rows: weight rows split over threads in groups of 4 (each thread streams its own contiguous part of the
 * weight); each group is read from memory once and multiplied with EB_TILE_ROWS activation rows at a time (later
 * row tiles find it in L1/L2). */
static void gemm_rows(const int8_t *x, const int8_t *w, const eb_epi *e, int64_t M, int64_t K, int64_t N) {
    const int64_t groups = (N + 3) / 4;
#pragma omp parallel for schedule(static) if (groups >= 16)
    for (int64_t g = 0; g < groups; g++) {
        const int64_t n0 = 4 * g;
        const int nn = N - n0 < 4 ? (int)(N - n0) : 4;
        const int8_t *wr[4];
        for (int j = 0; j < 4; j++) wr[j] = w + (n0 + (j < nn ? j : 0)) * K; /* spare rows: results discarded */
#ifdef __AVX2__
        const int vec = nn == 4 && e->n_out <= EB_ROW_OUTLIERS;
        float wo4[EB_ROW_OUTLIERS * 4];
        if (vec)
            for (int64_t c = 0; c < e->n_out; c++)
                for (int j = 0; j < 4; j++) wo4[4 * c + j] = (float)wr[j][e->cols[c]] * e->ws[n0 + j];
#endif
        for (int64_t m0 = 0; m0 < M; m0 += EB_TILE_ROWS) {
            const int mr = M - m0 < EB_TILE_ROWS ? (int)(M - m0) : EB_TILE_ROWS;
            const int8_t *xr[EB_TILE_ROWS];
            for (int r = 0; r < EB_TILE_ROWS; r++) xr[r] = x + (m0 + (r < mr ? r : 0)) * K;
            int32_t acc[EB_TILE_ROWS][4];
            eb_tile(xr, wr, mr, K, acc);
#ifdef __AVX2__
            if (vec) {
                finish_tile4(e, acc, mr, m0, n0, wo4);
                continue;
            }
#endif
            for (int r = 0; r < mr; r++)
                for (int j = 0; j < nn; j++) finish(e, acc[r][j], wr[j], m0 + r, n0 + j);
        }
    }
}

/* Whether M x K activations go through the packed-panel nest (and so are prepared in its layout). */
static int use_panels(int64_t M, int64_t K) {
#ifdef __AVX2__
    return !EB_ROWS_WIN(M, K);
#else
    (void)M, (void)K;
    return 0;
#endif
}

/* The GEMM with its epilogue; x is int8 [M, K], or in the panel layout when x_ready (only where use_panels). */
static void gemm(const int8_t *x, int x_ready, const int8_t *w, const eb_epi *e, int64_t M, int64_t K, int64_t N) {
#ifdef __AVX2__
    if (use_panels(M, K) && eb_gemm_panels(x, x_ready, w, e, M, K, N) == 0) return;
#endif
    gemm_rows(x, w, e, M, K, N); /* with x_ready the panel nest never fails (it allocates nothing it needs) */
}

/* out [M, N] = (x @ w.T) * outer(xs, ws), exact int32 sums (int8_matmul_dequant). */
void eb_int8_gemm(const int8_t *x, const int8_t *w, const float *xs, const float *ws, float *out, int64_t M, int64_t K,
                  int64_t N) {
    const eb_epi e = {xs, ws, NULL, NULL, NULL, 0, NULL, NULL, out, N};
    gemm(x, 0, w, &e, M, K, N);
}

/* LLM.int8() activation preparation for M rows of K float32 values, mirroring the PyTorch reference
 * (eightbit.functional.int8.outlier_columns + quantize_vectorwise on the outlier-zeroed input):
 * col_flag[c] = any |x[:, c]| >= threshold (threshold > 0; NaN never counts); per row, absmax over the other
 * columns, step = absmax / 127, q = clamp(rint(x / step), -127, 127) with NaN (0/0 of a zero row) -> 0 and
 * flagged columns -> 0. Rows of q are ldq >= K bytes apart, zero padded (the panel nest's layout).
 * Returns 1 without finishing when a row needs the reference's special handling (a NaN/Inf left in the row, or a
 * subnormal step: the reference then computes in float64), else 0. */
static int row_absmax_bits(const float *restrict x, const uint8_t *restrict flag, int64_t K, uint32_t *bits) {
    /* |x| compared as integers (monotone for non-negative floats); NaN and Inf show up as bits >= Inf's */
    const uint32_t *restrict xu = (const uint32_t *)x;
    uint32_t amax_bits = 0;
    int64_t c = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    __m512i vmax = _mm512_setzero_si512();
    const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
    for (; c + 16 <= K; c += 16) { /* whole vectors; the scalar loop takes the tail (masked tails cost more) */
        const __m512i a = _mm512_and_si512(_mm512_loadu_si512((const void *)(xu + c)), abs_mask);
        vmax = flag ? _mm512_mask_max_epu32(vmax, _mm_testn_epi8_mask(_mm_loadu_si128((const __m128i *)(flag + c)),
                                                                      _mm_set1_epi8(-1)), vmax, a)
                    : _mm512_max_epu32(vmax, a);
    }
    amax_bits = (uint32_t)_mm512_reduce_max_epu32(vmax);
#endif
    for (; c < K; c++) {
        uint32_t a = (xu[c] & 0x7FFFFFFFu) & (flag ? (uint32_t)flag[c] - 1u : ~0u); /* flagged column: mask 0 */
        amax_bits = a > amax_bits ? a : amax_bits;
    }
    *bits = amax_bits;
    float amax;
    memcpy(&amax, &amax_bits, 4);
    return amax_bits >= 0x7F800000u || (amax > 0.0f && amax < 0x1p-100f);
}

static int prepare_row(const float *restrict x, const uint8_t *restrict flag, int64_t K, int8_t *restrict q,
                       int64_t ldq, float *restrict absmax) {
    uint32_t amax_bits;
    if (row_absmax_bits(x, flag, K, &amax_bits)) return 1;
    float amax;
    memcpy(&amax, &amax_bits, 4);
    const float step = amax / 127.0f;
    int64_t c = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    /* the division itself (as the reference): x * (1 / step) with a division only for products near a half-integer
     * measured slower (1152 x 384, one thread: 104 vs 92 us); so did masked loads and stores for the tail (the
     * scalar loop takes it) */
    const __m512 vstep = _mm512_set1_ps(step), hi = _mm512_set1_ps(127.0f), lo = _mm512_set1_ps(-127.0f);
    for (; c + 16 <= K; c += 16) { /* whole vectors; the scalar loop takes the tail */
        const __mmask16 keep = flag ? _mm_testn_epi8_mask(_mm_loadu_si128((const __m128i *)(flag + c)), _mm_set1_epi8(-1))
                                    : (__mmask16)0xFFFF;
        const __m512 xv = _mm512_loadu_ps(x + c);
        __m512 v = _mm512_div_ps(xv, vstep);
        v = _mm512_maskz_mov_ps(keep & _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v); /* flagged or NaN (0/0) -> 0 */
        v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
        _mm_storeu_si128((__m128i *)(q + c), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
    }
#endif
    for (; c < K; c++) {
        float v = flag && flag[c] ? 0.0f : x[c] / step;
        v = v != v ? 0.0f : v;
        v = rintf(v);
        v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
        q[c] = (int8_t)v;
    }
    for (c = K; c < ldq; c++) q[c] = 0;
    *absmax = amax;
    return 0;
}

/* colmax[c] = max(colmax[c], |x[m, c]|) over rows m0 .. m1 - 1; a NaN never replaces the running maximum (the
 * comparison is false), so NaN is never an outlier; Inf is. */
static void column_maxima(const float *restrict x, int64_t m0, int64_t m1, int64_t K, float *restrict colmax) {
    for (int64_t m = m0; m < m1; m++) {
        const float *restrict xr = x + m * K;
        for (int64_t c = 0; c < K; c++) {
            const float a = fabsf(xr[c]);
            colmax[c] = a > colmax[c] ? a : colmax[c];
        }
    }
}

/* The flagged columns' indices into cols; returns their number. */
static int64_t flagged_columns(const uint8_t *flags, int64_t K, int64_t *cols) {
    int64_t C = 0;
    for (int64_t c = 0; c < K; c++)
        if (flags[c]) {
            if (cols) cols[C] = c;
            C++;
        }
    return C;
}

/* Row m's outlier values, xo[m * C + j] = x[m, cols[j]], gathered by the row's thread while the row is in L1 (the
 * former serial gathers of xo and wo after the prepare: MiniLM's 36 layers, kernel only, 36.8 -> 36.4 ms). */
static inline void gather_row(const float *restrict x, int64_t m, int64_t K, const int64_t *restrict cols, int64_t C,
                              float *restrict xo) {
    for (int64_t j = 0; j < C; j++) xo[m * C + j] = x[m * K + cols[j]];
}

/* Row m's codes against the C flagged columns cols (flags[cols[j]] set; no flags read when C = 0), and its values
 * in them when xo is given and C <= xo_cap. Returns prepare_row's result. */
static inline int quantize_row(const float *x, int64_t m, int64_t K, const uint8_t *flags, const int64_t *cols,
                               int64_t C, int8_t *q, int64_t ldq, float *absmax, float *xo, int64_t xo_cap) {
    const int fail = prepare_row(x + m * K, C ? flags : NULL, K, q + m * ldq, ldq, absmax + m);
    if (xo && C && C <= xo_cap) gather_row(x, m, K, cols, C, xo);
    return fail;
}

/* One pass that quantizes every row against guessed flags (flags: 0/1 per column, C of them set, their indices in
 * cols) and checks the guess on the way, with no column maxima: the guess is the flags exactly when no row has an
 * unflagged |x| >= threshold (the row's absmax over the unflagged columns, which the quantizer computes anyway) and
 * every flagged column has some |x| >= threshold (a running maximum over the C flagged values per thread, NaN never
 * counting, as in column_maxima). A row with NaN/Inf among its unflagged columns, or one the reference must serve,
 * counts as a miss. Returns 0 when the guess is confirmed (q, absmax and xo are then exactly what the flags give),
 * 1 when it is not (the rows written are not to be used; a thread stops at its first miss). */
static int prepare_guessed(const float *x, int64_t M, int64_t K, float threshold, const uint8_t *flags,
                           const int64_t *cols, int64_t C, int8_t *q, int64_t ldq, float *absmax, float *xo,
                           int64_t xo_cap, int nt_max) {
    float *fmax = C ? (float *)calloc((size_t)(nt_max * C), sizeof(float)) : NULL;
    if (C && !fmax) return 1;
    int miss = 0, nt_used = 1;
#pragma omp parallel num_threads(nt_max) reduction(| : miss)
    {
        int tid = 0, nt = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num(), nt = omp_get_num_threads();
#pragma omp single nowait
        nt_used = nt;
#endif
        const int64_t m0 = M * tid / nt, m1 = M * (tid + 1) / nt;
        float *restrict fm = C ? fmax + tid * C : NULL;
        for (int64_t m = m0; m < m1 && !miss; m++) {
            miss = quantize_row(x, m, K, flags, cols, C, q, ldq, absmax, xo, xo_cap) || !(absmax[m] < threshold);
            for (int64_t j = 0; j < C; j++) {
                const float a = fabsf(x[m * K + cols[j]]);
                fm[j] = a > fm[j] ? a : fm[j];
            }
        }
    }
    for (int64_t j = 0; j < C && !miss; j++) {
        float mx = fmax[j];
        for (int t = 1; t < nt_used; t++) mx = fmax[t * C + j] > mx ? fmax[t * C + j] : mx;
        miss = !(mx >= threshold);
    }
    free(fmax);
    return miss;
}

/* Both passes in one parallel region with the same static split of the rows, so that the second pass finds each
 * thread's rows in its own cache: (1) per-thread column maxima of |x|, merged into col_flag[c] = max >= threshold
 * (threshold > 0); (2) per row, absmax over the unflagged columns and the codes. (The former first pass flagged
 * columns a byte at a time over column chunks split between threads; measured, 1152 x 384 with an outlier column,
 * 2 threads: 0.123 -> 0.092 ms hot, 0.243 -> 0.209 ms with x evicted from the caches.)
 *
 * With a guess of the flags (guess[0 .. K) and guess[K] = 1; the caller keeps the previous call's flags of the same
 * weight: outlier features sit in the same columns call after call) prepare_guessed reads x once, with neither the
 * column maxima nor their merge (MiniLM's 36 layers, kernel only: about 1 % faster than the former one pass that
 * also kept the column maxima; the pass is bound by reading x).
 * A guess it cannot confirm costs the two passes above on top, so the result never depends on the guess. The flags
 * found are written back to guess (guess[K] = 1) for the next call. Out: the flagged columns in cols (K entries;
 * may be NULL) and their number in n_cols; with xo (M x n_cols) and n_cols <= xo_cap, each row's values in them,
 * gathered in the pass that quantizes the row. */
static int prepare(const float *x, int64_t M, int64_t K, float threshold, int8_t *q, int64_t ldq, float *absmax,
                   uint8_t *col_flag, uint8_t *guess, int64_t *cols, int64_t *n_cols, float *xo, int64_t xo_cap) {
    const int outliers = threshold > 0.0f;
    int nt_max = 1;
#ifdef _OPENMP
    nt_max = M * K >= 65536 ? omp_get_max_threads() : 1;
#endif
    if (outliers && guess && guess[K] == 1 && cols) {
        for (int64_t c = 0; c < K; c++) col_flag[c] = guess[c] != 0; /* any nonzero byte is a flag */
        const int64_t C = flagged_columns(col_flag, K, cols);
        if (!prepare_guessed(x, M, K, threshold, col_flag, cols, C, q, ldq, absmax, xo, xo_cap, nt_max)) {
            *n_cols = C;
            return 0;
        }
    }
    memset(col_flag, 0, (size_t)K);
    float *colmax = NULL;
    if (outliers) {
        colmax = (float *)calloc((size_t)(nt_max * K), sizeof(float));
        if (!colmax) { /* without scratch: one thread, one buffer-free pass per row over all columns */
            for (int64_t m = 0; m < M; m++)
                for (int64_t c = 0; c < K; c++) col_flag[c] |= (uint8_t)(fabsf(x[m * K + c]) >= threshold);
        }
    }
    int fail = 0;
    int64_t C = colmax ? 0 : flagged_columns(col_flag, K, cols);
#pragma omp parallel num_threads(nt_max) reduction(| : fail)
    {
        int tid = 0, nt = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num(), nt = omp_get_num_threads();
#endif
        const int64_t m0 = M * tid / nt, m1 = M * (tid + 1) / nt;
        if (colmax) {
            column_maxima(x, m0, m1, K, colmax + tid * K);
#pragma omp barrier
#pragma omp single
            {
                for (int64_t c = 0; c < K; c++) {
                    float mx = colmax[c];
                    for (int t = 1; t < nt; t++) mx = colmax[t * K + c] > mx ? colmax[t * K + c] : mx;
                    col_flag[c] = (uint8_t)(mx >= threshold);
                }
                C = flagged_columns(col_flag, K, cols); /* no thread reads cols until the barrier */
            }
        }
        for (int64_t m = m0; m < m1; m++) fail |= quantize_row(x, m, K, col_flag, cols, C, q, ldq, absmax, xo, xo_cap);
    }
    free(colmax);
    if (guess && outliers) {
        memcpy(guess, col_flag, (size_t)K);
        guess[K] = 1;
    }
    *n_cols = C;
    return fail;
}

int eb_int8_prepare(const float *x, int64_t M, int64_t K, float threshold, int8_t *q, float *absmax,
                    uint8_t *col_flag) {
    int64_t n_cols;
    return prepare(x, M, K, threshold, q, K, absmax, col_flag, NULL, NULL, &n_cols, NULL, 0);
}


/* The scratch of one eb_int8_linear call in one buffer: offsets[0..7) of q (M rows of whole 4-byte groups, int8),
 * xs (M float), ws (N float), flags (K bytes), cols (K int64), xo (M x cap float), wo (cap x N float), each 64-byte
 * aligned from a 64-byte aligned base; returns the total bytes. The one definition of the layout: the Python kernel
 * (kernels/cpu/int8.py) and the C++ one (cpp/int8_linear_op.cpp) both ask here. */
int64_t eb_int8_linear_scratch(int64_t M, int64_t K, int64_t N, int64_t cap, int64_t *offsets) {
    const int64_t sizes[7] = {M * ((K + 3) / 4 * 4), 4 * M, 4 * N, K, 8 * K, 4 * M * cap, 4 * cap * N};
    int64_t total = 0;
    for (int i = 0; i < 7; i++) {
        offsets[i] = total;
        total += i < 6 ? (sizes[i] + 63) / 64 * 64 : sizes[i];
    }
    return total;
}

/* The whole LLM.int8() forward of float32 x [M, K] with int8 w [N, K] (row absmax w_absmax [N]) in one call, so
 * that a small layer pays one foreign call instead of a dozen tensor ops: the activations prepared (in the panel
 * layout where the panel nest runs, q then holding M rows of whole k-groups: at least M * 4 * ceil(K / 4) bytes),
 * the scales (absmax / 127, as the Python path divides), and up to xo_cap outlier columns gathered (xo: M x xo_cap;
 * for the panel nest also their dequantized weight columns, wo: xo_cap x N) and summed in the GEMM's epilogue in
 * the reference's order, the bias last. Returns -1 when a row needs the reference (nothing usable written);
 * otherwise C, the number of outlier columns (indices in cols). When C > xo_cap it stops before the GEMM: the
 * caller computes the outlier product and hands it to eb_int8_linear_finish. guess (K + 1 bytes, or NULL): the
 * outlier flags of this weight's previous call, read as prepare's guess and overwritten with the flags found. */
int64_t eb_int8_linear(const float *x, int64_t M, int64_t K, const int8_t *w, const float *w_absmax,
                       const float *bias, int64_t N, float threshold, int64_t xo_cap, int8_t *q, float *xs, float *ws,
                       uint8_t *flags, int64_t *cols, float *xo, float *wo, float *out, uint8_t *guess) {
    const int panels = use_panels(M, K);
    const int64_t ldq = panels ? (K + 3) / 4 * 4 : K;
    int64_t C; /* prepare gathers xo (C <= xo_cap); the panel nest fills wo, each thread its own panels */
    if (prepare(x, M, K, threshold, q, ldq, xs, flags, guess, cols, &C, xo, xo_cap)) return -1;
    if (C > xo_cap) return C;
    for (int64_t m = 0; m < M; m++) xs[m] = xs[m] / 127.0f;
    for (int64_t n = 0; n < N; n++) ws[n] = w_absmax[n] / 127.0f;
    const eb_epi e = {xs, ws, xo, cols, panels && C ? wo : NULL, C, NULL, bias, out, N};
    gemm(q, panels, w, &e, M, K, N);
    return C;
}

/* The rest of an eb_int8_linear call that returned C > xo_cap, with the same q and scratch: the scales, then
 * out = the int8 part, plus add [M, N] (the outlier columns' product), plus bias. */
void eb_int8_linear_finish(const int8_t *q, int64_t M, int64_t K, const int8_t *w, const float *w_absmax, float *xs,
                           float *ws, const float *add, const float *bias, int64_t N, float *out) {
    for (int64_t m = 0; m < M; m++) xs[m] = xs[m] / 127.0f;
    for (int64_t n = 0; n < N; n++) ws[n] = w_absmax[n] / 127.0f;
    const eb_epi e = {xs, ws, NULL, NULL, NULL, 0, add, bias, out, N};
    gemm(q, use_panels(M, K), w, &e, M, K, N);
}
