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
