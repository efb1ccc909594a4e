/* eightbit native CPU kernel of the 8-bit optimizer step: per block, dequantize the states into L1, apply the
 * rule, write the parameter and requantize the states, in one pass over the data.
 *
 * One kernel serves every rule of eightbit.functional.optimizer that has states (adam, lamb, momentum, rmsprop,
 * adagrad, lion, ademamix: one to three states); the rule is chosen per call, so each rule's element loop is
 * compiled and vectorized on its own. optim_norm.h adds the update-norm pass (LAMB, LARS, max_unorm). Numerics
 * mirror the reference (eightbit.functional.optimizer._steps) operation by operation in float32 (no fast-math, no
 * FMA contraction): states bit-identical, parameters equal.
 *
 * Parameters and gradients may be bfloat16 or float16 (dtype codes of lowp.h, per tensor): each block (or run) is
 * widened into float32 scratch in L1, stepped there by the same code, and the parameter narrowed back, which is the
 * reference's arithmetic (the update in float32, one rounding of the result); a skipped block is not written.
 */
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "blocks.h"
#include "lowp.h"

/* The fused passes prefetch p and g on two horizons: EB_AHEAD floats ahead into L1 (2 KB: without it the streams
 * restart cold at every block; one thread 28-30 -> 26-27 ms per 20M-parameter step), and EB_NEXT floats ahead (two
 * 2048-value blocks) into L2. The encodes between two blocks' passes read no memory, so without the second the
 * memory idles through them and each pass waits on DRAM: AdamW8bit, 20M parameters, 2 threads, 11.4 -> 9.4 ms
 * (one block ahead 9.6, four 9.4-9.8). */
#define EB_AHEAD 512
#define EB_NEXT 4096
/* Both prefetches for the n bytes of p and of g from byte b (n a multiple of 64; the horizons in bytes are those of
 * float32 data, and reach the same bytes, twice as many values, ahead in bf16/fp16 data). */
#define EB_PREFETCH_BYTES(p, g, b, n)                                                                             \
    do {                                                                                                          \
        for (int64_t pf_ = (b); pf_ < (b) + (n); pf_ += 64) {                                                     \
            _mm_prefetch((const char *)(p) + pf_ + 4 * EB_AHEAD, _MM_HINT_T0);                                    \
            _mm_prefetch((const char *)(g) + pf_ + 4 * EB_AHEAD, _MM_HINT_T0);                                    \
            _mm_prefetch((const char *)(p) + pf_ + 4 * EB_NEXT, _MM_HINT_T1);                                     \
            _mm_prefetch((const char *)(g) + pf_ + 4 * EB_NEXT, _MM_HINT_T1);                                     \
        }                                                                                                         \
    } while (0)
/* Both prefetches for the 32 floats of p and of g from element i. */
#define EB_PREFETCH32(p, g, i) EB_PREFETCH_BYTES(p, g, 4 * (i), 128)

/* Field order of eightbit.functional.optimizer.OptimHyper (checked against the ctypes mirror at load). */
typedef struct {
    float lr, weight_decay, grad_scale, update_scale, beta1, one_minus_beta1, beta2, one_minus_beta2;
    float beta3, one_minus_beta3, alpha, eps, bias_correction1, bias_correction2_sqrt, lr_decay, nesterov;
} eb_hyper_t;

enum { RULE_ADAM = 0, RULE_LAMB = 1, RULE_MOMENTUM = 2, RULE_RMSPROP = 3, RULE_ADAGRAD = 4, RULE_LION = 5,
       RULE_ADEMAMIX = 6 };
#define EB_MAX_STATES 3 /* AdEMAMix's m1, m2, nu */
enum { WD_NONE = 0, WD_L2 = 1, WD_DECOUPLED = 2 };
/* Within the fused Adam passes only: LAMB's direction (Adam's plus weight_decay * p) with no decay of its own. */
#define WD_LAMB 3

int64_t eb_hyper_size(void) { return (int64_t)sizeof(eb_hyper_t); }
int64_t eb_lut_size(void) { return (int64_t)sizeof(lut_t); }

/* The rule on one block: s0, s1, s2 hold the dequantized states (as many as the rule has) and receive the new
 * ones; the parameter is written in the same loop (p = p * (1 - lr * wd) (decoupled only) - lr * update_scale * d,
 * as the reference rounds it), or, with to_dir (a constant in each instance: a branch in the loops would keep
 * them from vectorizing), p is left alone and the direction d goes to dout (the update-norm pass). */
static inline __attribute__((always_inline)) void rule_body(int32_t rule, float *restrict p, const float *restrict g,
                                                            const eb_hyper_t *h, int32_t wd_mode, int64_t bs,
                                                            float *restrict s0, float *restrict s1,
                                                            float *restrict s2, float *restrict dout,
                                                            const int to_dir) {
    const float gs = h->grad_scale, wd = h->weight_decay, b1 = h->beta1, c1 = h->one_minus_beta1;
    const float b2 = h->beta2, c2 = h->one_minus_beta2, eps = h->eps;
    const float l2 = wd_mode == WD_L2 ? wd : 0.0f;
    const float decay = 1.0f - h->lr * h->weight_decay, step = h->lr * h->update_scale;
    const int decoupled = wd_mode == WD_DECOUPLED;
/* L2 decay rounds once (fused), as torch.optim's grad.add(p, alpha=wd): two roundings differ from torch by an ulp of
 * |g| + |wd p|, which a cancelling sum g + wd p (|.| ~ eps) turns into a visible difference in Adam's first step. */
#define GRAD(i) (wd_mode == WD_L2 ? fmaf(l2, p[i], g[i] * gs) : g[i] * gs)
#define WRITE(i, d) (to_dir ? (void)(dout[i] = (d)) : (void)(p[i] = (decoupled ? p[i] * decay : p[i]) - step * (d)))
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
            WRITE(i, nesterov != 0.0f ? gi + b1 * buf : buf); /* chosen: 0 * Inf would be NaN */
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
    case RULE_ADEMAMIX: {
        const float r1 = 1.0f / h->bias_correction1, r2 = 1.0f / h->bias_correction2_sqrt;
        const float b3 = h->beta3, c3 = h->one_minus_beta3, alpha = h->alpha;
        for (int64_t i = 0; i < bs; i++) {
            const float gi = GRAD(i);
            const float m1 = s0[i] * b1 + gi * c1;
            const float m2 = s1[i] * b3 + gi * c3;
            const float nu = s2[i] * b2 + gi * gi * c2;
            WRITE(i, (m1 * r1 + alpha * m2) / (sqrtf(nu) * r2 + eps));
            s0[i] = m1;
            s1[i] = m2;
            s2[i] = nu;
        }
        break;
    }
    }
#undef GRAD
#undef WRITE
}

/* rule_body stepping the parameter. */
static void rule_block(int32_t rule, float *restrict p, const float *restrict g, const eb_hyper_t *h,
                       int32_t wd_mode, int64_t bs, float *restrict s0, float *restrict s1, float *restrict s2) {
    rule_body(rule, p, g, h, wd_mode, bs, s0, s1, s2, NULL, 0);
}

/* rule_body writing the direction to dout instead (p is only read). */
static void rule_direction(int32_t rule, const float *restrict p, const float *restrict g, const eb_hyper_t *h,
                           int32_t wd_mode, int64_t bs, float *restrict s0, float *restrict s1, float *restrict s2,
                           float *restrict dout) {
    rule_body(rule, (float *)p, g, h, wd_mode, bs, s0, s1, s2, dout, 1);
}

#include "optim_fused.h"

/* n codes of a state decoded and scaled by its block's absmax a: binary maps by their decoder, others by table. */
static inline void decode_state(const lut_t *L, const uint8_t *q, float a, int64_t n, float *out) {
    if (L->bin_groups)
        bin_decode_scale(L, q, a, n, out);
    else
        lookup_scale(q, L->code, a, n, out);
}

/* One step on 32-bit states (s[0..2]: float32 arrays of n values, those past the rule's count unused): the rule in place,
 * in runs of 2048 values (or one block of bs) over the threads. The reference makes the same float32 operations
 * per element. skip != 0: blocks of bs values whose gradient holds a NaN/Inf are left untouched; returns their
 * number. */
static int64_t optim_f32(int32_t rule, void *p, int32_t pt, const void *g, int32_t gt, float *const *s,
                         const eb_hyper_t *h, int32_t wd_mode, int64_t n, int64_t bs, int32_t skip) {
    const eb_hyper_t hv = *h;
    const int64_t run = bs > 2048 ? bs : 2048 / bs * bs, runs = (n + run - 1) / run; /* run <= MAX_BLOCK */
    int64_t nskip = 0;
#pragma omp parallel for schedule(static) if (runs >= 32) reduction(+ : nskip)
    for (int64_t r = 0; r < runs; r++) {
        const int64_t o = r * run, len = n - o < run ? n - o : run;
        float pbuf[MAX_BLOCK], gbuf[MAX_BLOCK];
        float *const pr = pt ? pbuf : (float *)p + o;
        const float *const gr = gt ? gbuf : (const float *)g + o;
        if (gt) lowp_widen(g, gt, o, len, gbuf);
        if (pt) lowp_widen(p, pt, o, len, pbuf);
        if (!skip) {
            rule_block(rule, pr, gr, &hv, wd_mode, len, s[0] + o, s[1] + o, s[2] + o);
            if (pt) lowp_narrow(pbuf, len, p, pt, o);
            continue;
        }
        for (int64_t b = 0; b < len; b += bs) {
            const int64_t w = len - b < bs ? len - b : bs;
            if (lowp_nonfinite(gr, DT_F32, b, w)) {
                nskip++;
                continue;
            }
            rule_block(rule, pr + b, gr + b, &hv, wd_mode, w, s[0] + o + b, s[1] + o + b, s[2] + o + b);
            if (pt) lowp_narrow(pbuf + b, w, p, pt, o + b);
        }
    }
    return nskip;
}

/* Fields of one part in eb_optim_f32_many's int64 descriptor array, in order (addresses as integers; a rule with
 * fewer than three states repeats its last in the unused fields; PT, GT: the parameter's and the gradient's dtype
 * codes, lowp.h). */
enum { F_P, F_G, F_S0, F_S1, F_S2, F_H, F_N, F_BS, F_PT, F_GT, F_FIELDS };
int64_t eb_optim_f32_fields(void) { return F_FIELDS; }

/* optim_f32 on nparts parameters in one call (a group's small tensors: one foreign call instead of one each),
 * one after the other, each over the threads as there: part t's fields at desc[F_FIELDS t + F_*], nskip[t]
 * receives its skipped blocks. */
void eb_optim_f32_many(int32_t rule, int32_t nstates, int32_t wd_mode, int32_t skip, int64_t nparts,
                       const int64_t *desc, int64_t *nskip) {
    for (int64_t t = 0; t < nparts; t++) {
        const int64_t *d = desc + F_FIELDS * t;
        float *const s[EB_MAX_STATES] = {(float *)(intptr_t)d[F_S0], (float *)(intptr_t)d[F_S1],
                                         (float *)(intptr_t)d[F_S2]};
        (void)nstates; /* the rule knows its states; the unused fields repeat the last */
        nskip[t] = optim_f32(rule, (void *)(intptr_t)d[F_P], (int32_t)d[F_PT], (const void *)(intptr_t)d[F_G],
                             (int32_t)d[F_GT], s, (const eb_hyper_t *)(intptr_t)d[F_H], wd_mode, d[F_N], d[F_BS],
                             skip);
    }
}

/* One tensor's part of a step on 8-bit states: its arrays, maps, hyperparameters and stochastic seeds (seed < 0:
 * nearest); ``first`` is the index of element 0 of p within the whole parameter (the draws are keyed on it). */
typedef struct {
    void *p; /* float32, bf16 or fp16 (pt) */
    const void *g; /* (gt) */
    int32_t pt, gt;
    uint8_t *q[EB_MAX_STATES];
    float *absmax[EB_MAX_STATES];
    const lut_t *lut[EB_MAX_STATES];
    const eb_hyper_t *h;
    int64_t seed[EB_MAX_STATES], first, nblocks;
} optim_part_t;

/* Blocks [b0, b1) of part t (nstates 1 to 3 states of blocks of bs values); returns the number of blocks left
 * untouched for a NaN/Inf gradient (skip != 0). fold: this thread's two folded decode tables (bin_b64_t, where
 * EB_FOLD), kept across calls and rebuilt when a block's scale or map differs from the last. */
static int64_t optim_range(int32_t rule, int32_t nstates, int32_t wd_mode, int64_t bs, int32_t skip,
                           const optim_part_t *t, int64_t b0, int64_t b1, void *fold) {
    lut_t luts[EB_MAX_STATES];
    int floors[EB_MAX_STATES];
    for (int k = 0; k < EB_MAX_STATES; k++) {
        luts[k] = *t->lut[k < nstates ? k : nstates - 1];
        floors[k] = luts[k].code[0] >= 0.0f; /* unsigned maps never round a positive value to the zero code */
    }
    const eb_hyper_t hv = *t->h;
    const int32_t pt = t->pt, gt = t->gt;
    uint8_t *const *q = t->q;
    float *const *absmax = t->absmax;
    const int64_t *seeds = t->seed, first = t->first;
    int64_t nskip = 0;
    (void)fold;
#ifdef EB_FOLD
    bin_b64_t *F = (bin_b64_t *)fold;
    for (int k = 0; k < 2; k++)
        if (F[k].lut != t->lut[nstates > 1 ? k : 0]) { /* tables of another map: rebuild at the first block */
            F[k].k = INT32_MIN;
            F[k].lut = t->lut[nstates > 1 ? k : 0];
        }
#endif
    /* Which fused pass (decode, rule, parameter write and the new states' absmax bits in one pass; the encodes
     * follow) takes this part's blocks: 0 none (the generic path), else the pass's state count. */
    int fused = 0;
#if defined(__AVX2__) && defined(__FMA__) && EB_LOWP8
    const int32_t fwd = rule == RULE_LAMB ? WD_LAMB : wd_mode; /* the Adam pass's weight-decay mode */
    if ((rule == RULE_ADAM || (rule == RULE_LAMB && wd_mode == WD_NONE)) && nstates == 2 && luts[0].bin_groups &&
        luts[1].bin_groups && bs % 8 == 0)
        fused = 2;
#ifdef EB_FUSED3 /* AdEMAMix's three states on binary maps, in 16 lanes */
    if (rule == RULE_ADEMAMIX && nstates == 3 && luts[0].bin_groups && luts[1].bin_groups && luts[2].bin_groups &&
        bs % 32 == 0)
        fused = 3;
#endif
#ifdef EB_FUSED1 /* the one-state pass in 16 lanes needs blocks of 32 values, in 8 lanes of 8 */
    if (nstates == 1 && luts[0].bin_groups && bs % (EB_FUSED1 == 16 ? 32 : 8) == 0 &&
        (rule == RULE_MOMENTUM || rule == RULE_RMSPROP || rule == RULE_ADAGRAD || rule == RULE_LION))
        fused = 1;
#endif
    bin_vec_t V[2];
    if (fused == 2) {
        V[0] = bin_vec(&luts[0]);
        V[1] = bin_vec(&luts[1]);
    }
#endif
    (void)fused; /* (no fused pass in a build without AVX2) */
    /* Under skip, a block whose new states are not all finite is left untouched: every rule's new state takes the
     * gradient times a constant (0 * Inf is NaN), so a NaN/Inf gradient always shows there, and so does a finite
     * gradient whose square overflows, which would otherwise make the block's scale Inf and every code of the
     * block NaN from the next step on. The update runs first, with the old parameter values kept in scratch
     * (pold) where it writes them in place; a skipped block gets them back, and its states and scales are not
     * written. (A read of the gradient before each pass cost ~10 % of a 20M AdamW8bit step: BENCHMARKS.md.) */
    for (int64_t b = b0; b < b1; b++) {
        float s0[MAX_BLOCK], s1[MAX_BLOCK], s2[MAX_BLOCK], pbuf[MAX_BLOCK], gbuf[MAX_BLOCK], pold[MAX_BLOCK];
        float *s[EB_MAX_STATES] = {s0, s1, s2};
        const int64_t o = b * bs;
        /* The block's parameter and gradient as float32: in place, or (low precision) widened into L1 scratch on
         * first use and the parameter narrowed back at the end; the fused passes read and write p and g of one
         * dtype themselves ("direct") and need neither. */
        float *pb = (float *)t->p + o;
        const float *gb = (const float *)t->g + o;
#define EB_WIDEN()                                                                                                \
    do {                                                                                                          \
        if (gt) lowp_widen(t->g, gt, o, bs, gbuf), gb = gbuf;                                                     \
        if (pt) lowp_widen(t->p, pt, o, bs, pbuf), pb = pbuf;                                                     \
    } while (0)
#if defined(__AVX2__) && defined(__FMA__) && EB_LOWP8
        if (fused) {
            uint32_t amax[EB_MAX_STATES];
            const int direct = pt == gt; /* the passes read and write p and g in their dtype */
            if (!direct) EB_WIDEN();
            void *const pp = direct ? lowp_at(t->p, pt, o) : pb;
            const void *const gg = direct ? lowp_at(t->g, gt, o) : gb;
            const int32_t dt = direct ? pt : DT_F32, inplace = direct || !pt; /* else pp is the widened pbuf */
            void *const keep_old = skip && inplace ? pold : NULL;
            if (fused == 2) {
#ifdef EB_FOLD
                const bin_b64_t *F0 = bin_fold(&luts[0], absmax[0][b], bs, &F[0]);
                const bin_b64_t *F1 = bin_fold(&luts[1], absmax[1][b], bs, &F[1]);
                if (F0 && F1)
                    adam_fold_block(pp, gg, dt, &hv, fwd, bs, q[0] + o, q[1] + o, F0, F1, s0, s1, &amax[0], &amax[1],
                                    keep_old);
                else
#endif
                    adam_binary_block(pp, gg, dt, &hv, fwd, bs, q[0] + o, q[1] + o, absmax[0][b], absmax[1][b], &V[0],
                                      &V[1], s0, s1, &amax[0], &amax[1], keep_old);
            }
#ifdef EB_FUSED1
            if (fused == 1) {
                const bin_b64_t *F0 = NULL;
#ifdef EB_FOLD
                F0 = bin_fold(&luts[0], absmax[0][b], bs, &F[0]);
#endif
                one_state_binary_block(rule, pp, gg, dt, &hv, wd_mode, bs, q[0] + o, absmax[0][b], &luts[0], F0, s0,
                                       &amax[0], keep_old);
            }
#endif
#ifdef EB_FUSED3
            if (fused == 3) {
                uint8_t *const qs[3] = {q[0] + o, q[1] + o, q[2] + o};
                const float as[3] = {absmax[0][b], absmax[1][b], absmax[2][b]};
                ademamix_binary_block(pp, gg, dt, &hv, wd_mode, bs, qs, as, luts, s, amax, keep_old);
            }
#endif
            /* under skip, a block with a NaN/Inf new state: its parameter restored where the pass wrote it */
            int bad = 0;
            for (int32_t k = 0; k < nstates; k++) bad |= amax[k] >= 0x7F800000u;
            if (skip && bad) {
                if (inplace) memcpy(pp, pold, (size_t)bs * (dt == DT_F32 ? 4 : 2));
                nskip++;
                continue;
            }
            for (int32_t k = 0; k < nstates; k++)
                quantize_block_known(s[k], bs, &luts[k], amax[k], seeds[k], first + o, q[k] + o, absmax[k] + b, 0,
                                     floors[k]);
            if (!direct && pt) lowp_narrow(pbuf, bs, t->p, pt, o);
            continue;
        }
#endif
        EB_WIDEN();
#undef EB_WIDEN
        for (int32_t k = 0; k < nstates; k++) decode_state(&luts[k], q[k] + o, absmax[k][b], bs, s[k]);
        if (skip && !pt) memcpy(pold, pb, (size_t)bs * sizeof(float)); /* pb is the parameter itself */
        rule_block(rule, pb, gb, &hv, wd_mode, bs, s0, s1, s2);
        if (skip) {
            int bad = 0;
            for (int32_t k = 0; k < nstates; k++) bad |= lowp_nonfinite(s[k], DT_F32, 0, bs);
            if (bad) {
                if (!pt) memcpy(pb, pold, (size_t)bs * sizeof(float));
                nskip++;
                continue;
            }
        }
        if (pt) lowp_narrow(pbuf, bs, t->p, pt, o);
        /* the next block's inputs start loading while this one is requantized (L1-only work; a low-precision
         * block's widening prefetches its own) */
        for (int64_t i = 0; !pt && !gt && i < bs; i += 16) {
            __builtin_prefetch((const float *)t->p + o + bs + i);
            __builtin_prefetch((const float *)t->g + o + bs + i);
        }
        for (int32_t k = 0; k < nstates; k++) {
            for (int64_t i = 0; i < bs; i += 64) __builtin_prefetch(q[k] + o + bs + i);
            quantize_block(s[k], bs, &luts[k], seeds[k], first + o, q[k] + o, absmax[k] + b, 0, floors[k]);
        }
    }
    return nskip;
}

/* The step over the blocks of nparts parts as one parallel region: the concatenated blocks are split into one
 * contiguous run per thread (what schedule(static) gives one tensor), so a model's many tensors cost one fork and
 * one join, and a thread's run may span several tensors. nskip[t] receives part t's skipped blocks. */
static void optim_parts(int32_t rule, int32_t nstates, int32_t wd_mode, int64_t bs, int32_t skip,
                        const optim_part_t *parts, int64_t nparts, int64_t *nskip) {
    int64_t total = 0;
    for (int64_t t = 0; t < nparts; t++) {
        nskip[t] = 0;
        total += parts[t].nblocks;
    }
#pragma omp parallel if (total >= 16)
    {
#ifdef EB_FOLD
        bin_b64_t fold[2];
        fold[0].k = fold[1].k = INT32_MIN;
        fold[0].lut = fold[1].lut = NULL;
#else
        void *fold = NULL;
#endif
#ifdef _OPENMP
        const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
#else
        const int64_t nt = 1, id = 0;
#endif
        /* this thread's run [lo, hi) of the concatenated blocks, as schedule(static) splits a loop */
        const int64_t chunk = total / nt, extra = total % nt;
        const int64_t lo = id * chunk + (id < extra ? id : extra), hi = lo + chunk + (id < extra);
        int64_t start = 0;
        for (int64_t t = 0; t < nparts && start < hi; start += parts[t].nblocks, t++) {
            const int64_t b0 = lo > start ? lo - start : 0;
            const int64_t b1 = hi - start < parts[t].nblocks ? hi - start : parts[t].nblocks;
            if (b0 >= b1) continue;
            const int64_t n = optim_range(rule, nstates, wd_mode, bs, skip, &parts[t], b0, b1, fold);
            if (n) {
#pragma omp atomic
                nskip[t] += n;
            }
        }
    }
}

/* Fields of one part in eb_optim_many's int64 descriptor array, in order (addresses as integers; a rule with fewer
 * than three states repeats its last in the unused fields; S*: the states' stochastic seeds, < 0 for nearest;
 * FIRST: the index of the part's element 0 within the whole parameter, on which the draws are keyed, so that a
 * partial last block can be passed as a part of its own; PT, GT: dtype codes, lowp.h). */
enum { D_P, D_G, D_Q0, D_Q1, D_Q2, D_A0, D_A1, D_A2, D_L0, D_L1, D_L2, D_H, D_S0, D_S1, D_S2, D_FIRST, D_NBLOCKS,
       D_PT, D_GT, D_FIELDS };
int64_t eb_optim_desc_fields(void) { return D_FIELDS; }

static void optim_part(const int64_t *d, optim_part_t *x) {
    x->p = (void *)(intptr_t)d[D_P];
    x->g = (const void *)(intptr_t)d[D_G];
    x->pt = (int32_t)d[D_PT];
    x->gt = (int32_t)d[D_GT];
    for (int k = 0; k < EB_MAX_STATES; k++) {
        x->q[k] = (uint8_t *)(intptr_t)d[D_Q0 + k];
        x->absmax[k] = (float *)(intptr_t)d[D_A0 + k];
        x->lut[k] = (const lut_t *)(intptr_t)d[D_L0 + k];
        x->seed[k] = d[D_S0 + k];
    }
    x->h = (const eb_hyper_t *)(intptr_t)d[D_H];
    x->first = d[D_FIRST];
    x->nblocks = d[D_NBLOCKS];
}

/* One step over the blocks of nparts parts (a group's tensors with equal rule, state count (1 to 3), weight decay
 * mode, block size bs and skip flag) in one parallel region: part t's fields at desc[D_FIELDS t + D_*]; nskip[t]
 * receives its blocks left untouched for a NaN/Inf gradient (skip != 0: parameter, codes and absmax). Returns 0,
 * or -1 when the part list cannot be allocated (nothing was stepped). */
int64_t eb_optim_many(int32_t rule, int32_t nstates, int32_t wd_mode, int64_t bs, int32_t skip, int64_t nparts,
                      const int64_t *desc, int64_t *nskip) {
    optim_part_t *parts = (optim_part_t *)malloc(sizeof(optim_part_t) * (size_t)(nparts ? nparts : 1));
    if (!parts) return -1;
    for (int64_t t = 0; t < nparts; t++) optim_part(desc + D_FIELDS * t, &parts[t]);
    optim_parts(rule, nstates, wd_mode, bs, skip, parts, nparts, nskip);
    free(parts);
    return 0;
}

#include "optim_norm.h" /* the update-norm pass (eb_optim_norm) */
