/* Fused per-block passes of the optimizer kernel (included by optim_cpu.c after rule_block): for states on binary
 * dynamic maps, decode, rule, parameter write and the new states' absmax in one pass, then the caller encodes. */
#ifndef EIGHTBIT_OPTIM_FUSED_H
#define EIGHTBIT_OPTIM_FUSED_H
/* The W old parameter values from element o (pi: them as float32, stored by STORE_PS; dtype dt) kept at pold + o,
 * where pold is not NULL: a pass that writes the parameter in place can then be undone for a block whose new
 * states turn out not finite (optim_range), instead of reading the gradient once more before the pass. A bf16/fp16
 * parameter keeps its own bits (a copy of 2 W bytes of constant size: one vector move). */
#define EB_SAVE_OLD(pold, p, o, pi, dt, STORE_PS, W)                                                              \
    do {                                                                                                          \
        if (pold) {                                                                                               \
            if ((dt) == DT_F32)                                                                                   \
                STORE_PS((float *)(pold) + (o), (pi));                                                            \
            else                                                                                                  \
                memcpy((uint16_t *)(pold) + (o), (const uint16_t *)(p) + (o), 2 * (W));                           \
        }                                                                                                         \
    } while (0)
#define EB_SAVE8(pold, p, o, pi, dt) EB_SAVE_OLD(pold, p, o, pi, dt, _mm256_storeu_ps, 8)

#if defined(__AVX512F__) && defined(__AVX512CD__)
#define EB_SAVE16(pold, p, o, pi, dt) EB_SAVE_OLD(pold, p, o, pi, dt, _mm512_storeu_ps, 16)

/* Adam's hyperparameters broadcast to 16 lanes. */
typedef struct {
    __m512 gs, b1, c1, b2, c2, eps, r1, r2, l2, wd, decay, step;
    __m512i m7f;
} adam16_k;

static inline adam16_k adam16_consts(const eb_hyper_t *h, int32_t wd_mode) {
    adam16_k k;
    k.gs = _mm512_set1_ps(h->grad_scale);
    k.b1 = _mm512_set1_ps(h->beta1);
    k.c1 = _mm512_set1_ps(h->one_minus_beta1);
    k.b2 = _mm512_set1_ps(h->beta2);
    k.c2 = _mm512_set1_ps(h->one_minus_beta2);
    k.eps = _mm512_set1_ps(h->eps);
    k.r1 = _mm512_set1_ps(1.0f / h->bias_correction1);
    k.r2 = _mm512_set1_ps(1.0f / h->bias_correction2_sqrt);
    k.l2 = _mm512_set1_ps(wd_mode == WD_L2 ? h->weight_decay : 0.0f);
    k.wd = _mm512_set1_ps(h->weight_decay);
    k.decay = _mm512_set1_ps(1.0f - h->lr * h->weight_decay);
    k.step = _mm512_set1_ps(h->lr * h->update_scale);
    k.m7f = _mm512_set1_epi32(0x7FFFFFFF);
    return k;
}

/* Adam on the 16 values from element o, given their decoded (scaled) states: the parameter written, the new
 * states stored to s0 + o and s1 + o, their absmax bits folded into *x0 and *x1; rule_block's float32 operations
 * in its order (bit-identical). unit_gs: grad_scale is 1 (g * 1 is g, the multiply is dropped). dt: p's and g's
 * dtype (lowp.h), read and written in it (the rounding of lowp_store16). pold: where the old parameter values
 * are kept (dtype dt), or NULL (EB_SAVE16). */
/* Adam's (LAMB's: wd_mode WD_LAMB) direction from the decoded states, the parameter pi and the gradient gi; the new
 * states into *m and *v. */
static inline __attribute__((always_inline)) __m512 adam_core16(const adam16_k *K, __m512 m_old, __m512 v_old,
                                                                __m512 pi, __m512 gi, const int wd_mode,
                                                                const int unit_gs, __m512 *m, __m512 *v) {
    if (!unit_gs) gi = _mm512_mul_ps(gi, K->gs);
    if (wd_mode == WD_L2) gi = _mm512_fmadd_ps(K->l2, pi, gi);
    *m = _mm512_add_ps(_mm512_mul_ps(m_old, K->b1), _mm512_mul_ps(gi, K->c1));
    *v = _mm512_add_ps(_mm512_mul_ps(v_old, K->b2), _mm512_mul_ps(_mm512_mul_ps(gi, gi), K->c2));
    const __m512 a = _mm512_div_ps(_mm512_mul_ps(*m, K->r1),
                                   _mm512_add_ps(_mm512_mul_ps(_mm512_sqrt_ps(*v), K->r2), K->eps));
    return wd_mode == WD_LAMB ? _mm512_add_ps(a, _mm512_mul_ps(K->wd, pi)) : a;
}

static inline __attribute__((always_inline)) void adam16(const adam16_k *K, __m512 m_old, __m512 v_old,
                                                          void *restrict p, const void *restrict g, int64_t o,
                                                          const int wd_mode, const int unit_gs, const int dt,
                                                          float *restrict s0, float *restrict s1, __m512i *x0,
                                                          __m512i *x1, void *restrict pold) {
    __m512 pi = lowp_load16(p, o, dt), m, v;
    EB_SAVE16(pold, p, o, pi, dt);
    const __m512 a = adam_core16(K, m_old, v_old, pi, lowp_load16(g, o, dt), wd_mode, unit_gs, &m, &v);
    if (wd_mode == WD_DECOUPLED) pi = _mm512_mul_ps(pi, K->decay);
    lowp_store16(p, o, _mm512_sub_ps(pi, _mm512_mul_ps(K->step, a)), dt);
    _mm512_storeu_ps(s0 + o, m);
    _mm512_storeu_ps(s1 + o, v);
    *x0 = _mm512_max_epu32(*x0, _mm512_and_si512(_mm512_castps_si512(m), K->m7f));
    *x1 = _mm512_max_epu32(*x1, _mm512_and_si512(_mm512_castps_si512(v), K->m7f));
}
#endif

#if defined(__AVX2__) && defined(__FMA__) && EB_LOWP8
/* Adam (both states on binary dynamic maps, bs a multiple of 8): decode, rule, parameter write and the new
 * states' absmax bits in one pass where the generic path makes five, with rule_block's float32 operations in
 * its order (bit-identical). dt: p's and g's dtype, read and written in it; a constant in each instance
 * (adam_binary_block). */
static inline __attribute__((always_inline)) void adam_binary_pass(
    void *restrict p, const void *restrict g, const eb_hyper_t *h, int32_t wd_mode, int64_t bs, const uint8_t *q0,
    const uint8_t *q1, float a0, float a1, const bin_vec_t *V0, const bin_vec_t *V1, float *restrict s0,
    float *restrict s1, uint32_t *amax0, uint32_t *amax1, void *restrict pold, const int dt) {
    const int64_t esz = dt == DT_F32 ? 4 : 2;
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
        const adam16_k K = adam16_consts(h, wd_mode);
        const __m512 za0 = _mm512_set1_ps(a0), za1 = _mm512_set1_ps(a1);
        __m512i zx0 = _mm512_setzero_si512(), zx1 = _mm512_setzero_si512();
#define ADAM16(M_CODE, V_CODE, J) \
    adam16(&K, _mm512_mul_ps((M_CODE), za0), _mm512_mul_ps((V_CODE), za1), p, g, (J), wd_mode, 0, dt, s0, s1, &zx0, \
           &zx1, pold)
#if defined(__AVX512BW__)
        const bin_w32_t T0 = bin_w32(V0->lut), T1 = bin_w32(V1->lut);
        for (; i + 32 <= bs; i += 32) { /* decoding by table: 32 codes per four word permutes */
            __m512 m_lo, m_hi, v_lo, v_hi;
            EB_PREFETCH_BYTES(p, g, i * esz, 32 * esz);
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
        if (!(i & 31)) EB_PREFETCH_BYTES(p, g, i * esz, 32 * esz);
        const __m256 m_old = _mm256_mul_ps(bin_decode8(V0, _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q0 + i)))), va0);
        const __m256 v_old = _mm256_mul_ps(bin_decode8(V1, _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q1 + i)))), va1);
        __m256 pi = lowp_load8(p, i, dt), gi = _mm256_mul_ps(lowp_load8(g, i, dt), gs);
        EB_SAVE8(pold, p, i, pi, dt);
        if (wd_mode == WD_L2) gi = _mm256_fmadd_ps(l2, pi, gi);
        const __m256 m = _mm256_add_ps(_mm256_mul_ps(m_old, b1), _mm256_mul_ps(gi, c1));
        const __m256 v = _mm256_add_ps(_mm256_mul_ps(v_old, b2), _mm256_mul_ps(_mm256_mul_ps(gi, gi), c2));
        __m256 a = _mm256_div_ps(_mm256_mul_ps(m, r1), _mm256_add_ps(_mm256_mul_ps(_mm256_sqrt_ps(v), r2), eps));
        if (wd_mode == WD_LAMB) a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_set1_ps(h->weight_decay), pi));
        if (wd_mode == WD_DECOUPLED) pi = _mm256_mul_ps(pi, decay);
        lowp_store8(p, i, _mm256_sub_ps(pi, _mm256_mul_ps(step, a)), dt);
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

/* adam_binary_pass instantiated per dtype of p and g; pold as for adam16. */
static void adam_binary_block(void *restrict p, const void *restrict g, int32_t dt, const eb_hyper_t *h,
                              int32_t wd_mode, int64_t bs, const uint8_t *q0, const uint8_t *q1, float a0, float a1,
                              const bin_vec_t *V0, const bin_vec_t *V1, float *restrict s0, float *restrict s1,
                              uint32_t *amax0, uint32_t *amax1, void *restrict pold) {
#define EB_PASS(DT) adam_binary_pass(p, g, h, wd_mode, bs, q0, q1, a0, a1, V0, V1, s0, s1, amax0, amax1, pold, (DT))
    if (dt == DT_BF16)
        EB_PASS(DT_BF16);
    else if (dt == DT_F16)
        EB_PASS(DT_F16);
    else
        EB_PASS(DT_F32);
#undef EB_PASS
}
#endif

#if defined(__AVX512VBMI__) && defined(__AVX512BW__) && defined(__AVX512CD__)
#define EB_FOLD 1
/* Adam's pass for a block whose two scales fold into the decode tables (bin_b64): adam16 without the two scale
 * multiplies, 64 values per round. wd_mode, unit_gs (grad_scale == 1: g * 1 is g, so the multiply is dropped) and
 * dt (p's and g's dtype: a bf16/fp16 block is read and written as such, with no float32 copy) are constants in
 * each instance (adam_fold_block). */
static inline __attribute__((always_inline)) void adam_fold_pass(void *restrict p, const void *restrict g,
                                                                  const eb_hyper_t *h, const int wd_mode,
                                                                  const int unit_gs, const int dt, int64_t bs,
                                                                  const uint8_t *q0,
                                                                  const uint8_t *q1, const bin_b64_t *T0,
                                                                  const bin_b64_t *T1, float *restrict s0,
                                                                  float *restrict s1, uint32_t *amax0,
                                                                  uint32_t *amax1, void *restrict pold) {
    const adam16_k K = adam16_consts(h, wd_mode);
    __m512i x0 = _mm512_setzero_si512(), x1 = _mm512_setzero_si512();
    const int esz = dt == DT_F32 ? 4 : 2;
    for (int64_t i = 0; i < bs; i += 64) {
        EB_PREFETCH_BYTES(p, g, i * esz, 64 * esz);
        __m512 mo[4], vo[4];
        bin_decode64(T0, q0 + i, mo);
        bin_decode64(T1, q1 + i, vo);
        for (int j = 0; j < 4; j++)
            adam16(&K, mo[j], vo[j], p, g, i + 16 * j, wd_mode, unit_gs, dt, s0, s1, &x0, &x1, pold);
    }
    *amax0 = (uint32_t)_mm512_reduce_max_epu32(x0);
    *amax1 = (uint32_t)_mm512_reduce_max_epu32(x1);
}

/* adam_fold_pass instantiated per weight-decay mode, unit gradient scale and dtype of p and g (bs a multiple of
 * 64); pold as for adam16. */
static void adam_fold_block(void *restrict p, const void *restrict g, int32_t dt, const eb_hyper_t *h,
                            int32_t wd_mode, int64_t bs, const uint8_t *q0, const uint8_t *q1, const bin_b64_t *T0,
                            const bin_b64_t *T1, float *restrict s0, float *restrict s1, uint32_t *amax0,
                            uint32_t *amax1, void *restrict pold) {
    const int unit = h->grad_scale == 1.0f;
#define EB_PASS(WD, U, DT) adam_fold_pass(p, g, h, (WD), (U), (DT), bs, q0, q1, T0, T1, s0, s1, amax0, amax1, pold)
#define EB_CASE(WD, DT)                                                                                           \
    if (wd_mode == (WD) && dt == (DT)) {                                                                          \
        if (unit)                                                                                                 \
            EB_PASS(WD, 1, DT);                                                                                   \
        else                                                                                                      \
            EB_PASS(WD, 0, DT);                                                                                   \
        return;                                                                                                   \
    }
#define EB_CASES(DT) EB_CASE(WD_NONE, DT) EB_CASE(WD_L2, DT) EB_CASE(WD_DECOUPLED, DT) EB_CASE(WD_LAMB, DT)
    EB_CASES(DT_F32)
    EB_CASES(DT_BF16)
    EB_CASES(DT_F16)
#undef EB_CASES
#undef EB_CASE
#undef EB_PASS
}
#endif

/* The one-state rules' arithmetic in 16 lanes (AVX-512) and in 8 (AVX2): optim_rule1.h, written once. */
#if defined(__AVX512F__) && defined(__AVX512CD__) && defined(__AVX512BW__)
static inline __m512 eb_sign16(__m512 u) { /* 1, -1, or 0 for +-0 and NaN */
    const __m512 zero = _mm512_setzero_ps();
    return _mm512_mask_mov_ps(_mm512_mask_mov_ps(zero, _mm512_cmp_ps_mask(u, zero, _CMP_GT_OQ), _mm512_set1_ps(1.0f)),
                              _mm512_cmp_ps_mask(u, zero, _CMP_LT_OQ), _mm512_set1_ps(-1.0f));
}
#define EB_V __m512
#define EB_W 16
#define EB_SET1 _mm512_set1_ps
#define EB_MUL _mm512_mul_ps
#define EB_ADD _mm512_add_ps
#define EB_SUB _mm512_sub_ps
#define EB_DIV _mm512_div_ps
#define EB_SQRT _mm512_sqrt_ps
#define EB_SIGN eb_sign16
#include "optim_rule1.h" /* (which undefines these) */
#define EB_FUSED1 16 /* the one-state fused pass: 16 lanes */
#elif defined(__AVX2__) && defined(__FMA__) && EB_LOWP8
static inline __m256 eb_sign8(__m256 u) {
    const __m256 zero = _mm256_setzero_ps();
    return _mm256_blendv_ps(_mm256_blendv_ps(zero, _mm256_set1_ps(1.0f), _mm256_cmp_ps(u, zero, _CMP_GT_OQ)),
                            _mm256_set1_ps(-1.0f), _mm256_cmp_ps(u, zero, _CMP_LT_OQ));
}
#define EB_V __m256
#define EB_W 8
#define EB_SET1 _mm256_set1_ps
#define EB_MUL _mm256_mul_ps
#define EB_ADD _mm256_add_ps
#define EB_SUB _mm256_sub_ps
#define EB_DIV _mm256_div_ps
#define EB_SQRT _mm256_sqrt_ps
#define EB_SIGN eb_sign8
#include "optim_rule1.h" /* (which undefines these) */
#define EB_FUSED1 8 /* the one-state fused pass: 8 lanes */
#endif

#if EB_FUSED1 == 16
/* One-state rules (momentum, rmsprop, adagrad, lion) with the state on a binary dynamic map, bs a multiple of 32:
 * decode, rule, parameter write and the new state's absmax bits in one pass, with rule_block's float32 operations
 * in its order (bit-identical). F: the block's scale folded into byte tables (bin_b64; bs a multiple of 64), or
 * NULL to decode by word table and multiply. dt: p's and g's dtype (lowp.h), read and written in it; a constant
 * in each instance (one_state_binary_block). */
#if !(defined(__AVX512VBMI__) && defined(__AVX512BW__)) /* no folded tables here: F is always NULL */
typedef struct bin_b64_unused bin_b64_t;
#endif
static inline __attribute__((always_inline)) void one_state_pass(int32_t rule, void *restrict p,
                                                                  const void *restrict g, const eb_hyper_t *h,
                                                                  int32_t wd_mode, int64_t bs, const uint8_t *q0,
                                                                  float a0, const lut_t *L0, const bin_b64_t *F,
                                                                  float *restrict s0, uint32_t *amax0,
                                                                  void *restrict pold, const int dt) {
    const rule1_k16 k = rule1_consts16(h);
    const __m512 gs = _mm512_set1_ps(h->grad_scale), l2 = _mm512_set1_ps(wd_mode == WD_L2 ? h->weight_decay : 0.0f);
    const __m512 decay = _mm512_set1_ps(1.0f - h->lr * h->weight_decay), step = _mm512_set1_ps(h->lr * h->update_scale);
    const __m512 va = _mm512_set1_ps(a0);
    const __m512i m7f = _mm512_set1_epi32(0x7FFFFFFF);
    const bin_w32_t T = bin_w32(L0);
    __m512i mx = _mm512_setzero_si512();
    const int64_t round = F ? 64 : 32, esz = dt == DT_F32 ? 4 : 2;
    for (int64_t i = 0; i < bs; i += round) {
        __m512 old[4];
        int parts = 2;
        EB_PREFETCH_BYTES(p, g, i * esz, 32 * esz);
#ifdef EB_FOLD
        if (F) {
            EB_PREFETCH_BYTES(p, g, (i + 32) * esz, 32 * esz);
            bin_decode64(F, q0 + i, old);
            parts = 4;
        } else
#endif
            bin_decode32(&T, q0 + i, &old[0], &old[1]);
        for (int half = 0; half < parts; half++) {
            const int64_t j = i + 16 * half;
            const __m512 s = F ? old[half] : _mm512_mul_ps(old[half], va);
            __m512 pi = lowp_load16(p, j, dt), gi = _mm512_mul_ps(lowp_load16(g, j, dt), gs);
            EB_SAVE16(pold, p, j, pi, dt);
            if (wd_mode == WD_L2) gi = _mm512_fmadd_ps(l2, pi, gi);
            __m512 d, sn;
            rule1_16(rule, &k, s, gi, &d, &sn);
            if (wd_mode == WD_DECOUPLED) pi = _mm512_mul_ps(pi, decay);
            lowp_store16(p, j, _mm512_sub_ps(pi, _mm512_mul_ps(step, d)), dt);
            _mm512_storeu_ps(s0 + j, sn);
            mx = _mm512_max_epu32(mx, _mm512_and_si512(_mm512_castps_si512(sn), m7f));
        }
    }
    *amax0 = (uint32_t)_mm512_reduce_max_epu32(mx);
}

#elif EB_FUSED1 == 8
/* one_state_pass in 8 lanes (AVX2 without AVX-512), bs a multiple of 8: the codes decoded arithmetically
 * (bin_decode8) and scaled by a0; F is unused (no folded tables here). */
typedef struct bin_b64_unused bin_b64_t;
static inline __attribute__((always_inline)) void one_state_pass(int32_t rule, void *restrict p,
                                                                  const void *restrict g, const eb_hyper_t *h,
                                                                  int32_t wd_mode, int64_t bs, const uint8_t *q0,
                                                                  float a0, const lut_t *L0, const bin_b64_t *F,
                                                                  float *restrict s0, uint32_t *amax0,
                                                                  void *restrict pold, const int dt) {
    (void)F;
    const rule1_k8 k = rule1_consts8(h);
    const bin_vec_t V = bin_vec(L0);
    const __m256 gs = _mm256_set1_ps(h->grad_scale), l2 = _mm256_set1_ps(wd_mode == WD_L2 ? h->weight_decay : 0.0f);
    const __m256 decay = _mm256_set1_ps(1.0f - h->lr * h->weight_decay), step = _mm256_set1_ps(h->lr * h->update_scale);
    const __m256 va = _mm256_set1_ps(a0);
    const __m256i m7f = _mm256_set1_epi32(0x7FFFFFFF);
    const int64_t esz = dt == DT_F32 ? 4 : 2;
    __m256i mx = _mm256_setzero_si256();
    for (int64_t i = 0; i < bs; i += 8) {
        if (!(i & 31)) EB_PREFETCH_BYTES(p, g, i * esz, 32 * esz);
        const __m256 s = _mm256_mul_ps(bin_decode8(&V, _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q0 + i)))), va);
        __m256 pi = lowp_load8(p, i, dt), gi = _mm256_mul_ps(lowp_load8(g, i, dt), gs);
        EB_SAVE8(pold, p, i, pi, dt);
        if (wd_mode == WD_L2) gi = _mm256_fmadd_ps(l2, pi, gi);
        __m256 d, sn;
        rule1_8(rule, &k, s, gi, &d, &sn);
        if (wd_mode == WD_DECOUPLED) pi = _mm256_mul_ps(pi, decay);
        lowp_store8(p, i, _mm256_sub_ps(pi, _mm256_mul_ps(step, d)), dt);
        _mm256_storeu_ps(s0 + i, sn);
        mx = _mm256_max_epu32(mx, _mm256_and_si256(_mm256_castps_si256(sn), m7f));
    }
    uint32_t t[8];
    _mm256_storeu_si256((__m256i *)t, mx);
    *amax0 = 0;
    for (int j = 0; j < 8; j++) *amax0 = t[j] > *amax0 ? t[j] : *amax0;
}
#endif

#if EB_FUSED1 == 16
#define EB_FUSED3 1
/* AdEMAMix (three states on binary maps, bs a multiple of 32): decode by word table and scale, rule_block's float32
 * operations in its order (bit-identical), the parameter written, the new states stored to s[0..3) and their
 * absmax bits into amax[0..3). dt: p's and g's dtype, a constant in each instance (ademamix_binary_block); pold as
 * for adam16. */
static inline __attribute__((always_inline)) void ademamix_pass(void *restrict p, const void *restrict g,
                                                                 const eb_hyper_t *h, int32_t wd_mode, int64_t bs,
                                                                 uint8_t *const *q, const float *a,
                                                                 const lut_t *L, float *const *s, uint32_t *amax,
                                                                 void *restrict pold, const int dt) {
    const __m512 gs = _mm512_set1_ps(h->grad_scale), l2 = _mm512_set1_ps(wd_mode == WD_L2 ? h->weight_decay : 0.0f);
    const __m512 decay = _mm512_set1_ps(1.0f - h->lr * h->weight_decay), step = _mm512_set1_ps(h->lr * h->update_scale);
    const __m512 b1 = _mm512_set1_ps(h->beta1), c1 = _mm512_set1_ps(h->one_minus_beta1);
    const __m512 b2 = _mm512_set1_ps(h->beta2), c2 = _mm512_set1_ps(h->one_minus_beta2);
    const __m512 b3 = _mm512_set1_ps(h->beta3), c3 = _mm512_set1_ps(h->one_minus_beta3);
    const __m512 alpha = _mm512_set1_ps(h->alpha), eps = _mm512_set1_ps(h->eps);
    const __m512 r1 = _mm512_set1_ps(1.0f / h->bias_correction1), r2 = _mm512_set1_ps(1.0f / h->bias_correction2_sqrt);
    const __m512i m7f = _mm512_set1_epi32(0x7FFFFFFF);
    bin_w32_t T[3];
    __m512 za[3];
    __m512i mx[3];
    for (int k = 0; k < 3; k++) {
        T[k] = bin_w32(&L[k]);
        za[k] = _mm512_set1_ps(a[k]);
        mx[k] = _mm512_setzero_si512();
    }
    const int64_t esz = dt == DT_F32 ? 4 : 2;
    for (int64_t i = 0; i < bs; i += 32) {
        EB_PREFETCH_BYTES(p, g, i * esz, 32 * esz);
        __m512 old[3][2];
        for (int k = 0; k < 3; k++) bin_decode32(&T[k], q[k] + i, &old[k][0], &old[k][1]);
        for (int j = 0; j < 2; j++) {
            const int64_t o = i + 16 * j;
            __m512 pi = lowp_load16(p, o, dt), gi = _mm512_mul_ps(lowp_load16(g, o, dt), gs);
            EB_SAVE16(pold, p, o, pi, dt);
            if (wd_mode == WD_L2) gi = _mm512_fmadd_ps(l2, pi, gi);
            const __m512 m1 = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(old[0][j], za[0]), b1), _mm512_mul_ps(gi, c1));
            const __m512 m2 = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(old[1][j], za[1]), b3), _mm512_mul_ps(gi, c3));
            const __m512 nu = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(old[2][j], za[2]), b2),
                                            _mm512_mul_ps(_mm512_mul_ps(gi, gi), c2));
            const __m512 d = _mm512_div_ps(_mm512_add_ps(_mm512_mul_ps(m1, r1), _mm512_mul_ps(alpha, m2)),
                                           _mm512_add_ps(_mm512_mul_ps(_mm512_sqrt_ps(nu), r2), eps));
            if (wd_mode == WD_DECOUPLED) pi = _mm512_mul_ps(pi, decay);
            lowp_store16(p, o, _mm512_sub_ps(pi, _mm512_mul_ps(step, d)), dt);
            const __m512 nw[3] = {m1, m2, nu};
            for (int k = 0; k < 3; k++) {
                _mm512_storeu_ps(s[k] + o, nw[k]);
                mx[k] = _mm512_max_epu32(mx[k], _mm512_and_si512(_mm512_castps_si512(nw[k]), m7f));
            }
        }
    }
    for (int k = 0; k < 3; k++) amax[k] = (uint32_t)_mm512_reduce_max_epu32(mx[k]);
}

/* ademamix_pass instantiated per dtype of p and g. */
static void ademamix_binary_block(void *restrict p, const void *restrict g, int32_t dt, const eb_hyper_t *h,
                                  int32_t wd_mode, int64_t bs, uint8_t *const *q, const float *a, const lut_t *L,
                                  float *const *s, uint32_t *amax, void *restrict pold) {
    if (dt == DT_BF16)
        ademamix_pass(p, g, h, wd_mode, bs, q, a, L, s, amax, pold, DT_BF16);
    else if (dt == DT_F16)
        ademamix_pass(p, g, h, wd_mode, bs, q, a, L, s, amax, pold, DT_F16);
    else
        ademamix_pass(p, g, h, wd_mode, bs, q, a, L, s, amax, pold, DT_F32);
}
#endif

#ifdef EB_FUSED1
/* one_state_pass instantiated per dtype of p and g; pold as for adam16. */
static void one_state_binary_block(int32_t rule, void *restrict p, const void *restrict g, int32_t dt,
                                   const eb_hyper_t *h, int32_t wd_mode, int64_t bs, const uint8_t *q0, float a0,
                                   const lut_t *L0, const bin_b64_t *F, float *restrict s0, uint32_t *amax0,
                                   void *restrict pold) {
    if (dt == DT_BF16)
        one_state_pass(rule, p, g, h, wd_mode, bs, q0, a0, L0, F, s0, amax0, pold, DT_BF16);
    else if (dt == DT_F16)
        one_state_pass(rule, p, g, h, wd_mode, bs, q0, a0, L0, F, s0, amax0, pold, DT_F16);
    else
        one_state_pass(rule, p, g, h, wd_mode, bs, q0, a0, L0, F, s0, amax0, pold, DT_F32);
}
#endif
#endif
