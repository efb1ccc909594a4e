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
 * Two loop nests. Few rows (EB_ROWS_WIN: decode and small batches): groups of 4 weight rows are read in place, once
 * per call, and each loaded weight vector is multiplied with up to 4 activation rows (tile_rows; memory bound at
 * M = 1, so one pass over the weight is the cost). More rows (compute bound): each thread packs 16
 * weight rows into a panel of 4-byte k-groups, panel[q][j] = w[n0 + j][4q .. 4q+3], and a 4x16 register tile
 * broadcasts one k-group of an activation row against two panel vectors, accumulating vertically (no
 * horizontal sums), the structure of MLAS's u8s8 kernel. Where the compiler targets AVX-512 VNNI (-march=native on
 * such a CPU), both nests take x + 128 as unsigned bytes against the signed weight (vpdpbusd at 512 bits, a row- or
 * column-sum correction at the end; the panel tile is then 8x16): the same exact int32 sums. */
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
 * Measured (2 threads, hot cache, square K x K layers, M rows; rows vs panels, the 8x16 VNNI panel tile): K = 4096:
 * M = 16 1.44 vs 2.84 ms, 64 3.96 vs 6.03, 128 7.7 vs 8.4, 256 ~15.4 vs 12.5; K = 1024: M = 128 0.65 vs 0.76, 256
 * 1.26 vs 1.13; K = 384: M = 16 0.051 vs 0.055, 64 0.103 vs 0.099 (short rows: the tile's horizontal sums weigh
 * more, so panels win early). The AVX2 tiles keep the crossover measured for them before (16 rows). */
#if EB_TILE_ROWS >= 4
#define EB_ROWS_WIN(M, K) ((M) < 16 || ((K) >= 1024 && (M) < 160))
#else
#define EB_ROWS_WIN(M, K) ((M) < 16)
#endif

/* Few rows: weight rows split over threads in groups of 4 (each thread streams its own contiguous part of the
 * weight); each group is read from memory once and multiplied with EB_TILE_ROWS activation rows at a time (later
 * row tiles find it in L1/L2). */
static void gemm_rows(const int8_t *x, const int8_t *w, const float *xs, const float *ws, const float *xo,
                      const int64_t *cols, int64_t n_out, float *out, int64_t M, int64_t K, int64_t N) {
    const int64_t groups = (N + 3) / 4;
#pragma omp parallel for schedule(static) if (groups >= 16)
    for (int64_t g = 0; g < groups; g++) {
        const int64_t n0 = 4 * g;
        const int nn = N - n0 < 4 ? (int)(N - n0) : 4;
        const int8_t *wr[4];
        for (int j = 0; j < 4; j++) wr[j] = w + (n0 + (j < nn ? j : 0)) * K; /* spare rows: results discarded */
        for (int64_t m0 = 0; m0 < M; m0 += EB_TILE_ROWS) {
            const int mr = M - m0 < EB_TILE_ROWS ? (int)(M - m0) : EB_TILE_ROWS;
            const int8_t *xr[EB_TILE_ROWS];
            for (int r = 0; r < EB_TILE_ROWS; r++) xr[r] = x + (m0 + (r < mr ? r : 0)) * K;
            int32_t acc[EB_TILE_ROWS][4];
            eb_tile(xr, wr, mr, K, acc);
            for (int r = 0; r < mr; r++) {
                const int64_t m = m0 + r;
                for (int j = 0; j < nn; j++)
                    out[m * N + n0 + j] = finish(acc[r][j], wr[j], xs[m], ws[n0 + j], xo ? xo + m * n_out : xo,
                                                 cols, n_out);
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

void eb_int8_gemm(const int8_t *x, const int8_t *w, const float *xs, const float *ws, const float *xo,
                 const int64_t *cols, int64_t n_out, float *out, int64_t M, int64_t K, int64_t N) {
#ifdef __AVX2__
    if (!EB_ROWS_WIN(M, K) && gemm_panels(x, w, xs, ws, xo, cols, n_out, out, M, K, N) == 0) return;
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
