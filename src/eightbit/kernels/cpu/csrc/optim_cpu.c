/* eightbit native CPU kernel of the 8-bit optimizer step: per block, dequantize the states into L1, apply the
 * rule, write the parameter and requantize the states, in one pass over the data.
 *
 * One kernel serves every rule of eightbit.functional.optimizer that has 8-bit states (adam, lamb, momentum,
 * rmsprop, adagrad, lion); the rule is chosen per call, so each rule's element loop is compiled and vectorized
 * on its own. Numerics mirror the reference (eightbit.functional.optimizer._steps) operation by operation in
 * float32 (no fast-math, no FMA contraction): states bit-identical, parameters equal.
 */
#include "blocks.h"

/* Floats ahead that the fused Adam pass prefetches p and g (2 KB): the encodes between two blocks' passes read no
 * memory, so without it the streams restart cold at every block (measured: one thread 28-30 -> 26-27 ms per
 * 20M-parameter step; 1024-4096 ahead were no better). */
#define EB_AHEAD 512

/* Field order of eightbit.functional.optimizer.OptimHyper (checked against the ctypes mirror at load). */
typedef struct {
    float lr, weight_decay, grad_scale, update_scale, beta1, one_minus_beta1, beta2, one_minus_beta2;
    float beta3, one_minus_beta3, alpha, eps, bias_correction1, bias_correction2_sqrt, lr_decay, nesterov;
} eb_hyper_t;

enum { RULE_ADAM = 0, RULE_LAMB = 1, RULE_MOMENTUM = 2, RULE_RMSPROP = 3, RULE_ADAGRAD = 4, RULE_LION = 5 };
enum { WD_NONE = 0, WD_L2 = 1, WD_DECOUPLED = 2 };

int64_t eb_hyper_size(void) { return (int64_t)sizeof(eb_hyper_t); }
int64_t eb_lut_size(void) { return (int64_t)sizeof(lut_t); }

/* The rule on one block: s0, s1 hold the dequantized states and receive the new ones; the parameter is written in
 * the same loop (p = p * (1 - lr * wd) (decoupled only) - lr * update_scale * d, as the reference rounds it). */
static void rule_block(int32_t rule, float *restrict p, const float *restrict g, const eb_hyper_t *h,
                       int32_t wd_mode, int64_t bs, float *restrict s0, float *restrict s1) {
    const float gs = h->grad_scale, wd = h->weight_decay, b1 = h->beta1, c1 = h->one_minus_beta1;
    const float b2 = h->beta2, c2 = h->one_minus_beta2, eps = h->eps;
    const float l2 = wd_mode == WD_L2 ? wd : 0.0f;
    const float decay = 1.0f - h->lr * h->weight_decay, step = h->lr * h->update_scale;
    const int decoupled = wd_mode == WD_DECOUPLED;
/* L2 decay rounds once (fused), as torch.optim's grad.add(p, alpha=wd): two roundings differ from torch by an ulp of
 * |g| + |wd p|, which a cancelling sum g + wd p (|.| ~ eps) turns into a visible difference in Adam's first step. */
#define GRAD(i) (wd_mode == WD_L2 ? fmaf(l2, p[i], g[i] * gs) : g[i] * gs)
#define WRITE(i, d) (p[i] = (decoupled ? p[i] * decay : p[i]) - step * (d))
    switch (rule) {
    case RULE_ADAM:
    case RULE_LAMB: {
        const float r1 = 1.0f / h->bias_correction1, r2 = 1.0f / h->bias_correction2_sqrt;
        const float lamb = rule == RULE_LAMB ? 1.0f : 0.0f;
        for (int64_t i = 0; i < bs; i++) {
            const float gi = GRAD(i);
            const float m = s0[i] * b1 + gi * c1;
            const float v = s1[i] * b2 + gi * gi * c2;
            const float a = (m * r1) / (sqrtf(v) * r2 + eps);
            WRITE(i, lamb != 0.0f ? a + wd * p[i] : a);
            s0[i] = m;
            s1[i] = v;
        }
        break;
    }
    case RULE_MOMENTUM: {
        const float nesterov = h->nesterov;
        for (int64_t i = 0; i < bs; i++) {
            const float gi = GRAD(i);
            const float buf = s0[i] * b1 + gi * c1;
            WRITE(i, buf + nesterov * (gi + b1 * buf - buf));
            s0[i] = buf;
        }
        break;
    }
    case RULE_RMSPROP:
        for (int64_t i = 0; i < bs; i++) {
            const float gi = GRAD(i);
            const float v = s0[i] * b2 + gi * gi * c2;
            WRITE(i, gi / (sqrtf(v) + eps));
            s0[i] = v;
        }
        break;
    case RULE_ADAGRAD: {
        const float lr_decay = h->lr_decay;
        for (int64_t i = 0; i < bs; i++) {
            const float gi = GRAD(i);
            const float acc = s0[i] + gi * gi;
            WRITE(i, gi / (sqrtf(acc) + eps) * lr_decay);
            s0[i] = acc;
        }
        break;
    }
    case RULE_LION:
        for (int64_t i = 0; i < bs; i++) {
            const float gi = GRAD(i);
            const float u = s0[i] * b1 + gi * c1;
            WRITE(i, u > 0.0f ? 1.0f : (u < 0.0f ? -1.0f : 0.0f)); /* torch.sign: 0 for +-0 and NaN */
            s0[i] = s0[i] * b2 + gi * c2;
        }
        break;
    }
#undef GRAD
#undef WRITE
}

#if defined(__AVX2__) && defined(__FMA__)
/* Adam (both states on binary dynamic maps, bs a multiple of 8): decode, rule, parameter write and the new
 * states' absmax bits in one pass where the generic path makes five, with rule_block's float32 operations in
 * its order (bit-identical). */
static void adam_binary_block(float *restrict p, const float *restrict g, const eb_hyper_t *h, int32_t wd_mode,
                              int64_t bs, const uint8_t *q0, const uint8_t *q1, float a0, float a1,
                              const bin_vec_t *V0, const bin_vec_t *V1, float *restrict s0, float *restrict s1,
                              uint32_t *amax0, uint32_t *amax1) {
    const __m256 gs = _mm256_set1_ps(h->grad_scale), b1 = _mm256_set1_ps(h->beta1), c1 = _mm256_set1_ps(h->one_minus_beta1);
    const __m256 b2 = _mm256_set1_ps(h->beta2), c2 = _mm256_set1_ps(h->one_minus_beta2), eps = _mm256_set1_ps(h->eps);
    const __m256 r1 = _mm256_set1_ps(1.0f / h->bias_correction1), r2 = _mm256_set1_ps(1.0f / h->bias_correction2_sqrt);
    const __m256 l2 = _mm256_set1_ps(wd_mode == WD_L2 ? h->weight_decay : 0.0f);
    const __m256 decay = _mm256_set1_ps(1.0f - h->lr * h->weight_decay), step = _mm256_set1_ps(h->lr * h->update_scale);
    const __m256 va0 = _mm256_set1_ps(a0), va1 = _mm256_set1_ps(a1);
    const __m256i m7f = _mm256_set1_epi32(0x7FFFFFFF);
    __m256i mx0 = _mm256_setzero_si256(), mx1 = _mm256_setzero_si256();
    int64_t i = 0;
#if defined(__AVX512F__) && defined(__AVX512CD__)
    {   /* 16 lanes: the same operations */
        const bin_v16_t W0 = bin_v16(V0->lut), W1 = bin_v16(V1->lut);
        const __m512 zgs = _mm512_set1_ps(h->grad_scale), zb1 = _mm512_set1_ps(h->beta1), zc1 = _mm512_set1_ps(h->one_minus_beta1);
        const __m512 zb2 = _mm512_set1_ps(h->beta2), zc2 = _mm512_set1_ps(h->one_minus_beta2), zeps = _mm512_set1_ps(h->eps);
        const __m512 zr1 = _mm512_set1_ps(1.0f / h->bias_correction1), zr2 = _mm512_set1_ps(1.0f / h->bias_correction2_sqrt);
        const __m512 zl2 = _mm512_set1_ps(wd_mode == WD_L2 ? h->weight_decay : 0.0f);
        const __m512 zdecay = _mm512_set1_ps(1.0f - h->lr * h->weight_decay), zstep = _mm512_set1_ps(h->lr * h->update_scale);
        const __m512 za0 = _mm512_set1_ps(a0), za1 = _mm512_set1_ps(a1);
        const __m512i z7f = _mm512_set1_epi32(0x7FFFFFFF);
        __m512i zx0 = _mm512_setzero_si512(), zx1 = _mm512_setzero_si512();
#define ADAM16(M_CODE, V_CODE, J)                                                                                     \
    do {                                                                                                              \
        const __m512 m_old = _mm512_mul_ps((M_CODE), za0), v_old = _mm512_mul_ps((V_CODE), za1);                      \
        __m512 pi = _mm512_loadu_ps(p + (J)), gi = _mm512_mul_ps(_mm512_loadu_ps(g + (J)), zgs);                      \
        if (wd_mode == WD_L2) gi = _mm512_fmadd_ps(zl2, pi, gi);                                                      \
        const __m512 m = _mm512_add_ps(_mm512_mul_ps(m_old, zb1), _mm512_mul_ps(gi, zc1));                           \
        const __m512 v = _mm512_add_ps(_mm512_mul_ps(v_old, zb2), _mm512_mul_ps(_mm512_mul_ps(gi, gi), zc2));        \
        const __m512 a = _mm512_div_ps(_mm512_mul_ps(m, zr1), _mm512_add_ps(_mm512_mul_ps(_mm512_sqrt_ps(v), zr2), zeps)); \
        if (wd_mode == WD_DECOUPLED) pi = _mm512_mul_ps(pi, zdecay);                                                  \
        _mm512_storeu_ps(p + (J), _mm512_sub_ps(pi, _mm512_mul_ps(zstep, a)));                                        \
        _mm512_storeu_ps(s0 + (J), m);                                                                                \
        _mm512_storeu_ps(s1 + (J), v);                                                                                \
        zx0 = _mm512_max_epu32(zx0, _mm512_and_si512(_mm512_castps_si512(m), z7f));                                   \
        zx1 = _mm512_max_epu32(zx1, _mm512_and_si512(_mm512_castps_si512(v), z7f));                                   \
    } while (0)
#if defined(__AVX512BW__)
        const bin_w32_t T0 = bin_w32(V0->lut), T1 = bin_w32(V1->lut);
        for (; i + 32 <= bs; i += 32) { /* decoding by table: 32 codes per four word permutes */
            __m512 m_lo, m_hi, v_lo, v_hi;
            _mm_prefetch((const char *)(p + i + EB_AHEAD), _MM_HINT_T0);
            _mm_prefetch((const char *)(p + i + EB_AHEAD + 16), _MM_HINT_T0);
            _mm_prefetch((const char *)(g + i + EB_AHEAD), _MM_HINT_T0);
            _mm_prefetch((const char *)(g + i + EB_AHEAD + 16), _MM_HINT_T0);
            bin_decode32(&T0, q0 + i, &m_lo, &m_hi);
            bin_decode32(&T1, q1 + i, &v_lo, &v_hi);
            ADAM16(m_lo, v_lo, i);
            ADAM16(m_hi, v_hi, i + 16);
        }
#endif
        for (; i + 16 <= bs; i += 16)
            ADAM16(bin_decode16(&W0, _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q0 + i)))),
                   bin_decode16(&W1, _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q1 + i)))), i);
#undef ADAM16
        mx0 = _mm256_max_epu32(_mm512_castsi512_si256(zx0), _mm512_extracti64x4_epi64(zx0, 1));
        mx1 = _mm256_max_epu32(_mm512_castsi512_si256(zx1), _mm512_extracti64x4_epi64(zx1, 1));
    }
#endif
    for (; i < bs; i += 8) {
        const __m256 m_old = _mm256_mul_ps(bin_decode8(V0, _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q0 + i)))), va0);
        const __m256 v_old = _mm256_mul_ps(bin_decode8(V1, _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q1 + i)))), va1);
        __m256 pi = _mm256_loadu_ps(p + i), gi = _mm256_mul_ps(_mm256_loadu_ps(g + i), gs);
        if (wd_mode == WD_L2) gi = _mm256_fmadd_ps(l2, pi, gi);
        const __m256 m = _mm256_add_ps(_mm256_mul_ps(m_old, b1), _mm256_mul_ps(gi, c1));
        const __m256 v = _mm256_add_ps(_mm256_mul_ps(v_old, b2), _mm256_mul_ps(_mm256_mul_ps(gi, gi), c2));
        const __m256 a = _mm256_div_ps(_mm256_mul_ps(m, r1), _mm256_add_ps(_mm256_mul_ps(_mm256_sqrt_ps(v), r2), eps));
        if (wd_mode == WD_DECOUPLED) pi = _mm256_mul_ps(pi, decay);
        _mm256_storeu_ps(p + i, _mm256_sub_ps(pi, _mm256_mul_ps(step, a)));
        _mm256_storeu_ps(s0 + i, m);
        _mm256_storeu_ps(s1 + i, v);
        mx0 = _mm256_max_epu32(mx0, _mm256_and_si256(_mm256_castps_si256(m), m7f));
        mx1 = _mm256_max_epu32(mx1, _mm256_and_si256(_mm256_castps_si256(v), m7f));
    }
    uint32_t t0[8], t1[8];
    _mm256_storeu_si256((__m256i *)t0, mx0);
    _mm256_storeu_si256((__m256i *)t1, mx1);
    *amax0 = *amax1 = 0;
    for (int k = 0; k < 8; k++) {
        *amax0 = t0[k] > *amax0 ? t0[k] : *amax0;
        *amax1 = t1[k] > *amax1 ? t1[k] : *amax1;
    }
}
#endif

/* One step on 32-bit states (s0, s1: float32 arrays of n values, s1 unused by one-state rules): the rule in place,
 * in runs of 2048 values over the threads. The reference makes the same float32 operations per element. */
void eb_optim_f32(int32_t rule, float *p, const float *g, float *s0, float *s1, const eb_hyper_t *h, int32_t wd_mode,
                  int64_t n) {
    const eb_hyper_t hv = *h;
    const int64_t run = 2048, runs = (n + run - 1) / run;
#pragma omp parallel for schedule(static) if (runs >= 32)
    for (int64_t r = 0; r < runs; r++) {
        const int64_t o = r * run, len = n - o < run ? n - o : run;
        rule_block(rule, p + o, g + o, &hv, wd_mode, len, s0 + o, s1 ? s1 + o : s0 + o);
    }
}

/* One step over nblocks blocks of bs values. q[s], absmax[s], luts[s], seeds[s] for each of the nstates
 * (1 or 2) 8-bit states; seeds[s] < 0 rounds state s to nearest. ``first``: the index of the first element
 * passed within the whole tensor (the stochastic draws are keyed on it), so a partial last block can be
 * passed on its own. */
void eb_optim_blocks(int32_t rule, float *p, const float *g, int32_t nstates, uint8_t *const *q, float *const *absmax,
                     const lut_t *luts, const eb_hyper_t *h, int32_t wd_mode, const int64_t *seeds, int64_t first,
                     int64_t nblocks, int64_t bs) {
    const eb_hyper_t hv = *h;
#if defined(__AVX2__) && defined(__FMA__)
    const int fused = rule == RULE_ADAM && nstates == 2 && luts[0].bin_groups && luts[1].bin_groups && bs % 8 == 0;
    bin_vec_t V[2];
    if (fused) {
        V[0] = bin_vec(&luts[0]);
        V[1] = bin_vec(&luts[1]);
    }
#endif
#pragma omp parallel for schedule(static) if (nblocks >= 16)
    for (int64_t b = 0; b < nblocks; b++) {
        float s0[MAX_BLOCK], s1[MAX_BLOCK];
        float *s[2] = {s0, s1};
        const int64_t o = b * bs;
#if defined(__AVX2__) && defined(__FMA__)
        if (fused) {
            uint32_t amax[2];
            adam_binary_block(p + o, g + o, &hv, wd_mode, bs, q[0] + o, q[1] + o, absmax[0][b], absmax[1][b], &V[0],
                              &V[1], s0, s1, &amax[0], &amax[1]);
            for (int32_t k = 0; k < 2; k++) {
                if (amax[k] >= 0x7F800000u) /* NaN/Inf: the generic quantizer flags the block */
                    quantize_block(s[k], bs, &luts[k], seeds[k], first + o, q[k] + o, absmax[k] + b, 0);
                else
                    bin_quantize_block(&luts[k], s[k], bs, amax[k], seeds[k], first + o, q[k] + o, absmax[k] + b);
            }
            continue;
        }
#endif
        for (int32_t k = 0; k < nstates; k++) {
            if (luts[k].bin_groups)
                bin_decode_scale(&luts[k], q[k] + o, absmax[k][b], bs, s[k]);
            else
                lookup_scale(q[k] + o, luts[k].code, absmax[k][b], bs, s[k]);
        }
        rule_block(rule, p + o, g + o, &hv, wd_mode, bs, s0, s1);
        /* the next block's inputs start loading while this one is requantized (L1-only work) */
        for (int64_t i = 0; i < bs; i += 16) {
            __builtin_prefetch(p + o + bs + i);
            __builtin_prefetch(g + o + bs + i);
        }
        for (int32_t k = 0; k < nstates; k++) {
            for (int64_t i = 0; i < bs; i += 64) __builtin_prefetch(q[k] + o + bs + i);
            quantize_block(s[k], bs, &luts[k], seeds[k], first + o, q[k] + o, absmax[k] + b, 0);
        }
    }
}
