/* eightbit native CPU kernels: block-wise 8-bit quantize / dequantize and the fused 8-bit Adam update.
 *
 * Why C: on AVX2 CPUs inductor lowers the 256-entry code lookups to scalar gathers through int64
 * temporaries (~2.7 ns per element for a dequantize); a plain loop over one block held in L1 runs at
 * memory speed. Loops over blocks / rows run in parallel with OpenMP. The library is linked against
 * "libgomp.so.1", the soname of the runtime torch already loaded, so both share one thread pool:
 * torch.set_num_threads applies, and no second pool competes with torch's spinning workers.
 *
 * Numerics mirror the plain-PyTorch reference in eightbit.functional.blockwise / eightbit.optim.base
 * operation by operation in float32 (compiled with -ffp-contract=off, no fast-math), so the results
 * are bit-identical to it; tests/kernels/test_native_cpu.py checks that.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <float.h>

#define MAX_BLOCK 4096
#define M31 0x7FFFFFFFu

typedef struct {
    const float *code;     /* 256 sorted values */
    const int32_t *table;  /* 65536 entries: midpoints below each float cell */
    const float *midp;     /* 255 midpoints + padding of +inf */
    int32_t k;             /* extra comparisons per cell */
    int32_t zero_idx;      /* code used for blocks holding NaN/Inf */
} lut_t;

static inline uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* == torch.bucketize(n, midpoints): the index of the nearest code (ties to the lower one). */
static inline int32_t nearest(float n, const lut_t *L) {
    int32_t idx = L->table[(bits_of(n) >> 16) ^ 0x8000u];
    for (int j = 0; j < L->k; j++) idx += n > L->midp[idx + j];
    return idx;
}

/* Draw of element i under a step's 31-bit seed: a Weyl sequence, (i * 0x9E3779B9 + 2 * seed) mod 2^32, top 24
 * bits / 2^24 (the seed doubled so its offsets cover the whole circle).
 * One multiply per element; consecutive elements get well-spread draws and each element's draws over steps
 * are uniform because the seed is a hash of the step (eightbit.functional.rounding). */
#define EB_PHI 0x9E3779B9u
static inline void stochastic_block(const float *restrict n, int64_t bs, const float *restrict code, uint32_t seed,
                                    int64_t first, int32_t *restrict idx) {
    const uint32_t base = (uint32_t)first;
    for (int64_t i = 0; i < bs; i++) {
        uint32_t h = (((base + (uint32_t)i) & M31) * EB_PHI) + (seed << 1);
        float u = (float)(int32_t)(h >> 8) * (1.0f / 16777216.0f);
        int32_t lo = idx[i] - (code[idx[i]] > n[i] ? 1 : 0);
        lo = lo < 0 ? 0 : (lo > 254 ? 254 : lo);
        float c_lo = code[lo], c_hi = code[lo + 1];
        float frac = (n[i] - c_lo) / (c_hi - c_lo);
        idx[i] = lo + (u < frac ? 1 : 0);
    }
}

/* Nearest-code indices of n[0..bs) into idx; written as simple loops so the compiler vectorizes them
 * (AVX2 gathers for the table lookups). */
static inline void nearest_block(const float *restrict n, int64_t bs, const lut_t *L, int32_t *restrict idx) {
    const uint32_t *restrict u = (const uint32_t *)n; /* type pun: built with -fno-strict-aliasing */
    const int32_t *restrict table = L->table;
    const float *restrict midp = L->midp;
    for (int64_t i = 0; i < bs; i++) idx[i] = table[(u[i] >> 16) ^ 0x8000u];
    for (int j = 0; j < L->k; j++)
        for (int64_t i = 0; i < bs; i++) {
            float m = midp[idx[i] + j];
            idx[i] = n[i] > m ? idx[i] + 1 : idx[i];
        }
}

/* Quantize one block of ``bs`` float32 values; seed < 0 means round to nearest. */
static void quantize_block(const float *x, int64_t bs, const lut_t *L, int64_t seed, int64_t first,
                           uint8_t *q, float *absmax) {
    /* |x| compared as integers (monotone for non-negative floats): NaN and Inf show up as bits >= Inf's. */
    const uint32_t *restrict xu = (const uint32_t *)x;
    uint32_t amax_bits = 0;
    for (int64_t i = 0; i < bs; i++) {
        uint32_t a = xu[i] & 0x7FFFFFFFu;
        amax_bits = a > amax_bits ? a : amax_bits;
    }
    float amax;
    memcpy(&amax, &amax_bits, 4);
    if (amax_bits >= 0x7F800000u) {
        memset(q, L->zero_idx, (size_t)bs);
        *absmax = NAN;
        return;
    }
    const float scale = amax > 0.0f ? amax : 1.0f;
    float n[MAX_BLOCK];
    int32_t idx[MAX_BLOCK];
    for (int64_t i = 0; i < bs; i++) n[i] = x[i] / scale;
    nearest_block(n, bs, L, idx);
    if (seed >= 0) stochastic_block(n, bs, L->code, (uint32_t)seed, first, idx);
    for (int64_t i = 0; i < bs; i++) q[i] = (uint8_t)idx[i];
    *absmax = amax;
}

void eb_quantize_blocks(const float *x, int64_t nblocks, int64_t bs, const float *code, const int32_t *table,
                        const float *midp, int32_t k, int32_t zero_idx, int64_t seed, int64_t first,
                        uint8_t *q, float *absmax) {
    lut_t L = {code, table, midp, k, zero_idx};
#pragma omp parallel for schedule(static) if (nblocks >= 16)
    for (int64_t b = 0; b < nblocks; b++)
        quantize_block(x + b * bs, bs, &L, seed, first + b * bs, q + b * bs, absmax + b);
}

/* Per-block bodies live in functions with restrict parameters: OpenMP outlining of the parallel loops
 * would otherwise drop the no-alias information and the vectorizer with it. */
static void dequantize_block(const uint8_t *restrict q, float a, const float *restrict code, int64_t bs,
                             float *restrict out) {
    for (int64_t i = 0; i < bs; i++) out[i] = code[q[i]] * a;
}

void eb_dequantize_blocks(const uint8_t *restrict q, const float *restrict absmax, const float *restrict code,
                          int64_t nblocks, int64_t bs, float *restrict out) {
#pragma omp parallel for schedule(static) if (nblocks >= 16)
    for (int64_t b = 0; b < nblocks; b++) dequantize_block(q + b * bs, absmax[b], code, bs, out + b * bs);
}

/* hp layout (float32), shared with eightbit.optim.base / adam.py:
 * LR, WD, GRAD_SCALE, UPDATE_SCALE, b1, 1-b1, b2, 1-b2, eps, bc1, sqrt(bc2). wd_mode: 0 none, 1 L2, 2 decoupled. */
typedef struct {
    float lr, wd, gs, b1, c1, b2, c2, eps, bc1, bc2s, decay, step;
    int32_t wd_mode;
} adam_hp_t;

/* One block: the 32-bit Adam step from dequantized m, v (new m, v into m_out, v_out), parameter written. */
static void adam_block(float *restrict p, const float *restrict g, const uint8_t *restrict qm, float am_b,
                       const uint8_t *restrict qv, float av_b, const float *restrict code_m,
                       const float *restrict code_v, const adam_hp_t *h, int64_t bs, float *restrict m_out,
                       float *restrict v_out) {
    const float wd = h->wd, gs = h->gs, b1 = h->b1, c1 = h->c1, b2 = h->b2, c2 = h->c2, eps = h->eps;
    const float bc1 = h->bc1, bc2s = h->bc2s, decay = h->decay, step = h->step;
    const int32_t wd_mode = h->wd_mode;
    for (int64_t i = 0; i < bs; i++) {
        float pi = p[i];
        float gi = g[i] * gs;
        if (wd_mode == 1) gi = gi + wd * pi;
        float mi = (code_m[qm[i]] * am_b) * b1 + gi * c1;
        float vi = (code_v[qv[i]] * av_b) * b2 + gi * gi * c2;
        float d = (mi / bc1) / (sqrtf(vi) / bc2s + eps);
        if (wd_mode == 2) pi = pi * decay;
        p[i] = pi - step * d;
        m_out[i] = mi;
        v_out[i] = vi;
    }
}

void eb_adam8_blocks(float *p, const float *g, uint8_t *qm, float *am, uint8_t *qv, float *av,
                     const float *code_m, const int32_t *table_m, const float *midp_m, int32_t k_m, int32_t zero_m,
                     const float *code_v, const int32_t *table_v, const float *midp_v, int32_t k_v, int32_t zero_v,
                     const float *hp, int32_t wd_mode, int64_t seed_m, int64_t seed_v,
                     int64_t nblocks, int64_t bs) {
    const lut_t Lm = {code_m, table_m, midp_m, k_m, zero_m};
    const lut_t Lv = {code_v, table_v, midp_v, k_v, zero_v};
    const adam_hp_t h = {hp[0], hp[1], hp[2], hp[4], hp[5], hp[6], hp[7], hp[8], hp[9], hp[10],
                         1.0f - hp[0] * hp[1], hp[0] * hp[3], wd_mode};
#pragma omp parallel for schedule(static) if (nblocks >= 16)
    for (int64_t b = 0; b < nblocks; b++) {
        float m[MAX_BLOCK], v[MAX_BLOCK];
        const int64_t o = b * bs;
        adam_block(p + o, g + o, qm + o, am[b], qv + o, av[b], code_m, code_v, &h, bs, m, v);
        quantize_block(m, bs, &Lm, seed_m, o, qm + o, am + b);
        quantize_block(v, bs, &Lv, seed_v, o, qv + o, av + b);
    }
}

/* ------------------------------------------------------------------ exact int8 GEMM (LLM.int8())
 * out[m, n] = (sum_k x[m, k] * w[n, k]) * xs[m] * ws[n], exact int32 accumulation.
 * x: int8 (M, K) with values in [-127, 127] (vector-wise quantized activations); w: int8 (N, K), any value.
 * AVX2 has no signed x signed byte multiply; vpmaddubsw multiplies unsigned by signed bytes and SATURATES
 * its int16 pair sums. Feeding it |w| (<= 128) and x * sign(w) (<= 127 in magnitude) bounds every pair
 * sum by 2 * 128 * 127 = 32512 < 32767, so nothing saturates and the result is exact. 4x2 register tiles
 * (4 activation rows x 2 weight rows), activations in L2-sized row blocks: at small M the weight is read
 * once (memory speed), at large M the kernel is compute bound. */
#ifdef __AVX2__
#include <immintrin.h>

static inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}
#endif

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
        a = _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(wv), _mm256_sign_epi8(xv, wv)), ones));
    }
    acc = hsum_epi32(a);
#endif
    for (; k < K; k++) acc += (int32_t)x[k] * (int32_t)w[k];
    return acc;
}

#ifdef __AVX2__
/* acc[r][j] = dot(x_r, w_j) for 4 activation rows and 2 weight rows: 8 accumulators in registers, each
 * weight vector loaded (and its |w| computed) once for 4 rows, each activation vector once for 2 rows. */
#define EB_STEP(A, XV, WV, WA) A = _mm256_add_epi32(A, _mm256_madd_epi16(_mm256_maddubs_epi16(WA, _mm256_sign_epi8(XV, WV)), ones))
static void tile_4x2(const int8_t *restrict x, int64_t K, const int8_t *restrict w0, const int8_t *restrict w1,
                     int32_t acc[4][2]) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00,
            a31 = a00;
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        const __m256i wv0 = _mm256_loadu_si256((const __m256i *)(w0 + k));
        const __m256i wv1 = _mm256_loadu_si256((const __m256i *)(w1 + k));
        const __m256i wa0 = _mm256_abs_epi8(wv0), wa1 = _mm256_abs_epi8(wv1);
        __m256i xv = _mm256_loadu_si256((const __m256i *)(x + k));
        EB_STEP(a00, xv, wv0, wa0);
        EB_STEP(a01, xv, wv1, wa1);
        xv = _mm256_loadu_si256((const __m256i *)(x + K + k));
        EB_STEP(a10, xv, wv0, wa0);
        EB_STEP(a11, xv, wv1, wa1);
        xv = _mm256_loadu_si256((const __m256i *)(x + 2 * K + k));
        EB_STEP(a20, xv, wv0, wa0);
        EB_STEP(a21, xv, wv1, wa1);
        xv = _mm256_loadu_si256((const __m256i *)(x + 3 * K + k));
        EB_STEP(a30, xv, wv0, wa0);
        EB_STEP(a31, xv, wv1, wa1);
    }
    acc[0][0] = hsum_epi32(a00), acc[0][1] = hsum_epi32(a01), acc[1][0] = hsum_epi32(a10);
    acc[1][1] = hsum_epi32(a11), acc[2][0] = hsum_epi32(a20), acc[2][1] = hsum_epi32(a21);
    acc[3][0] = hsum_epi32(a30), acc[3][1] = hsum_epi32(a31);
    for (; k < K; k++)
        for (int r = 0; r < 4; r++) {
            acc[r][0] += (int32_t)x[r * K + k] * (int32_t)w0[k];
            acc[r][1] += (int32_t)x[r * K + k] * (int32_t)w1[k];
        }
}
#undef EB_STEP
#endif

/* Output rows m0.. of weight rows n, n+1 (nn of them): the int8 part, then the float outlier columns of
 * LLM.int8()'s decomposition, out += sum_j xo[m, j] * (w[n, cols[j]] * ws[n]), while the rows are in cache. */
static void gemm_tile(const int8_t *restrict x, const int8_t *restrict w, const float *restrict xs,
                      const float *restrict ws, const float *restrict xo, const int64_t *restrict cols,
                      int64_t n_out, float *restrict out, int64_t M, int64_t K, int64_t N, int64_t n, int nn) {
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
        const int64_t mr = M - m0 < 4 ? M - m0 : 4;
        int32_t acc[4][2];
#ifdef __AVX2__
        if (mr == 4 && nn == 2)
            tile_4x2(x + m0 * K, K, w + n * K, w + (n + 1) * K, acc);
        else
#endif
            for (int r = 0; r < mr; r++)
                for (int j = 0; j < nn; j++) acc[r][j] = dot_1x1(x + (m0 + r) * K, w + (n + j) * K, K);
        for (int r = 0; r < mr; r++)
            for (int j = 0; j < nn; j++) {
                const float wsn = ws[n + j];
                const int8_t *wn = w + (n + j) * K;
                float y = ((float)acc[r][j] * xs[m0 + r]) * wsn;
                if (n_out) {
                    float o = 0.0f;
                    for (int64_t c = 0; c < n_out; c++) o += xo[(m0 + r) * n_out + c] * ((float)wn[cols[c]] * wsn);
                    y = y + o;
                }
                out[(m0 + r) * N + n + j] = y;
            }
    }
}

void eb_int8_gemm(const int8_t *x, const int8_t *w, const float *xs, const float *ws, const float *xo,
                  const int64_t *cols, int64_t n_out, float *out, int64_t M, int64_t K, int64_t N) {
    const int64_t ntiles = (N + 1) / 2;
    /* Row blocks of x small enough to stay in L2 while every weight tile passes over them. */
    int64_t mb = (256 * 1024) / (K > 0 ? K : 1);
    mb = mb < 4 ? 4 : (mb - mb % 4);
    for (int64_t m0 = 0; m0 < M; m0 += mb) {
        const int64_t mrows = M - m0 < mb ? M - m0 : mb;
#pragma omp parallel for schedule(static) if (ntiles >= 32)
        for (int64_t t = 0; t < ntiles; t++) {
            const int64_t n = 2 * t;
            gemm_tile(x + m0 * K, w, xs + m0, ws, n_out ? xo + m0 * n_out : xo, cols, n_out, out + m0 * N,
                      mrows, K, N, n, n + 1 < N ? 2 : 1);
        }
    }
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

/* ------------------------------------------------------------------ fp8 casts
 * codes of x / scale in an 8-bit float format, round to nearest even; the same integer steps as
 * eightbit.kernels.fp8_cpu.fp32_to_fp8_bits (which documents them), one pass, vectorizable.
 * x: float32 (rows, cols); scale: one value per row (scale_stride 1) or one in all (scale_stride 0). */
typedef struct {
    int32_t shift, half, rebias, magic_bits, sub_limit, max_code, over, nan_code, fnuz01;
    float magic;
} fp8_params_t;

static void fp8_row(const float *restrict x, float s, int64_t cols, const fp8_params_t *P, uint8_t *restrict o) {
    const int32_t shift = P->shift, half = P->half, rebias = P->rebias, magic_bits = P->magic_bits;
    const int32_t sub_limit = P->sub_limit, max_code = P->max_code, over = P->over, nan_code = P->nan_code;
    const int32_t fnuz01 = P->fnuz01;
    const float magic = P->magic;
    for (int64_t c = 0; c < cols; c++) {
        float y = x[c] / s;
        int32_t b;
        memcpy(&b, &y, 4);
        int32_t sign = (b >> 24) & 0x80;
        int32_t a = b & 0x7FFFFFFF;
        int32_t n = a - rebias;
        n = (n + half + ((n >> shift) & 1)) >> shift;
        float af, sf;
        memcpy(&af, &a, 4);
        sf = af + magic;
        int32_t sub;
        memcpy(&sub, &sf, 4);
        sub -= magic_bits;
        int32_t u = a < sub_limit ? sub : n;
        u = u > max_code ? over : u;
        u = a > 0x7F800000 ? nan_code : u;
        int32_t res = u | sign;
        res &= ~(-((int32_t)(u == 0) & fnuz01)); /* fnuz formats have no negative zero */
        o[c] = (uint8_t)res;
    }
}

void eb_fp32_to_fp8(const float *x, const float *scale, int64_t scale_stride, int64_t rows, int64_t cols,
                    float magic, int32_t man_bits, int32_t bias, int32_t max_code, int32_t nan_code,
                    int32_t overflow_code, int32_t saturate, int32_t fnuz, uint8_t *out) {
    const fp8_params_t P = {23 - man_bits, (1 << (22 - man_bits)) - 1, (127 - bias) << 23,
                            (127 + 24 - bias - man_bits) << 23, (128 - bias) << 23, max_code,
                            saturate ? max_code : overflow_code, nan_code, fnuz ? 1 : 0, magic};
#pragma omp parallel for schedule(static) if (rows >= 16)
    for (int64_t r = 0; r < rows; r++) fp8_row(x + r * cols, scale[r * scale_stride], cols, &P, out + r * cols);
}

static void fp8_decode_row(const uint8_t *restrict codes, const float *restrict table, float s, int64_t cols,
                           float *restrict o) {
    for (int64_t c = 0; c < cols; c++) o[c] = table[codes[c]] * s;
}

/* out = table[codes] * scale (float32), scale per row or one in all. */
void eb_fp8_to_fp32(const uint8_t *codes, const float *table, const float *scale, int64_t scale_stride,
                    int64_t rows, int64_t cols, float *out) {
#pragma omp parallel for schedule(static) if (rows >= 16)
    for (int64_t r = 0; r < rows; r++)
        fp8_decode_row(codes + r * cols, table, scale[r * scale_stride], cols, out + r * cols);
}
