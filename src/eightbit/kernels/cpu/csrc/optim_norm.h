/* The update-norm pass of the optimizer kernel (included at the end of optim_cpu.c): the squared norms of one step's
 * direction and of the parameter, which LAMB's and LARS's trust ratios and max_unorm scale the step by, with
 * nothing written. Per block, the states decoded and the rule applied as in the step; on binary maps with AVX-512,
 * Adam/LAMB and the one-state rules in one fused pass (optim_fused.h's arithmetic). The squares are exact in double
 * and summed there. */
#ifndef EIGHTBIT_OPTIM_NORM_H
#define EIGHTBIT_OPTIM_NORM_H
#if defined(__AVX512F__) && defined(__AVX512CD__) && defined(__AVX512BW__)
#define EB_NORM_FUSED 1
/* The squares of the 16 values of x added to a[0] (first 8) and a[1], in double: exact products, one rounding
 * each, as a multiply then an add. */
static inline __attribute__((always_inline)) void eb_square_acc16(__m512 x, __m512d *a) {
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(x));
    const __m512d hi = _mm512_cvtps_pd(_mm256_castsi256_ps(_mm512_extracti64x4_epi64(_mm512_castps_si512(x), 1)));
    a[0] = _mm512_fmadd_pd(lo, lo, a[0]);
    a[1] = _mm512_fmadd_pd(hi, hi, a[1]);
}

/* The prefetches of a 32-value round of p and g (esz bytes a value) into L1, EB_AHEAD floats ahead. */
#define EB_NORM_PREFETCH(p, g, i, esz)                                                                            \
    for (int64_t b_ = (i) * (esz); b_ < ((i) + 32) * (esz); b_ += 64) {                                           \
        _mm_prefetch((const char *)(p) + b_ + 4 * EB_AHEAD, _MM_HINT_T0);                                         \
        _mm_prefetch((const char *)(g) + b_ + 4 * EB_AHEAD, _MM_HINT_T0);                                         \
    }

/* Sums of the accumulators: out[0] += direction squares (ad), out[1] += parameter squares (ap). */
static inline void eb_norm_out(const __m512d *ad, const __m512d *ap, double *out) {
    out[0] += _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(ad[0], ad[1]), _mm512_add_pd(ad[2], ad[3])));
    out[1] += _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(ap[0], ap[1]), _mm512_add_pd(ap[2], ap[3])));
}

/* The update-norm pass of Adam / LAMB (wd_mode WD_LAMB) on a block with both states on binary maps (bs a multiple
 * of 32): adam_core16's direction and the parameter squared and summed in double into out[0..2), nothing written;
 * dt and wd_mode are constants in each instance (adam_norm_block). */
static inline __attribute__((always_inline)) void adam_norm_pass(const void *restrict p, const void *restrict g,
                                                                 const eb_hyper_t *h, const int wd_mode, const int dt,
                                                                 int64_t bs, const uint8_t *q0, const uint8_t *q1,
                                                                 float a0, float a1, const bin_w32_t *T0,
                                                                 const bin_w32_t *T1, double *out) {
    const adam16_k K = adam16_consts(h, wd_mode);
    const __m512 za0 = _mm512_set1_ps(a0), za1 = _mm512_set1_ps(a1);
    const int esz = dt == DT_F32 ? 4 : 2;
    __m512d ad[4], ap[4];
    for (int j = 0; j < 4; j++) ad[j] = ap[j] = _mm512_setzero_pd();
    for (int64_t i = 0; i < bs; i += 32) {
        EB_NORM_PREFETCH(p, g, i, esz)
        __m512 mo[2], vo[2];
        bin_decode32(T0, q0 + i, &mo[0], &mo[1]);
        bin_decode32(T1, q1 + i, &vo[0], &vo[1]);
        for (int j = 0; j < 2; j++) {
            const int64_t o = i + 16 * j;
            const __m512 pi = lowp_load16(p, o, dt);
            __m512 m, v;
            eb_square_acc16(adam_core16(&K, _mm512_mul_ps(mo[j], za0), _mm512_mul_ps(vo[j], za1), pi,
                                        lowp_load16(g, o, dt), wd_mode, 0, &m, &v), ad + 2 * j);
            eb_square_acc16(pi, ap + 2 * j);
        }
    }
    eb_norm_out(ad, ap, out);
}

/* adam_norm_pass instantiated per weight-decay mode (WD_NONE, WD_L2, WD_DECOUPLED: no effect on the direction, or
 * WD_LAMB) and dtype of p and g. */
static void adam_norm_block(const void *restrict p, const void *restrict g, int32_t dt, const eb_hyper_t *h,
                            int32_t wd_mode, int64_t bs, const uint8_t *q0, const uint8_t *q1, float a0, float a1,
                            const bin_w32_t *T0, const bin_w32_t *T1, double *out) {
    const int wd = wd_mode == WD_DECOUPLED ? WD_NONE : wd_mode;
#define EB_PASS(WD, DT) adam_norm_pass(p, g, h, (WD), (DT), bs, q0, q1, a0, a1, T0, T1, out)
#define EB_CASES(WD)                                                                                              \
    if (wd == (WD)) {                                                                                             \
        if (dt == DT_BF16)                                                                                        \
            EB_PASS(WD, DT_BF16);                                                                                 \
        else if (dt == DT_F16)                                                                                    \
            EB_PASS(WD, DT_F16);                                                                                  \
        else                                                                                                      \
            EB_PASS(WD, DT_F32);                                                                                  \
        return;                                                                                                   \
    }
    EB_CASES(WD_NONE)
    EB_CASES(WD_L2)
    EB_CASES(WD_LAMB)
#undef EB_CASES
#undef EB_PASS
}
#endif

#if EB_FUSED1 == 16
/* The update-norm pass of a one-state rule on a binary map (bs a multiple of 32): one_state_pass's direction and
 * the parameter squared and summed in double into out[0..2), nothing written; dt a constant in each instance
 * (one_state_norm_block). */
static inline __attribute__((always_inline)) void one_state_norm_pass(int32_t rule, const void *restrict p,
                                                                      const void *restrict g, const eb_hyper_t *h,
                                                                      int32_t wd_mode, int64_t bs, const uint8_t *q0,
                                                                      float a0, const bin_w32_t *T, const int dt,
                                                                      double *out) {
    const rule1_k16 k = rule1_consts16(h);
    const __m512 gs = _mm512_set1_ps(h->grad_scale), l2 = _mm512_set1_ps(wd_mode == WD_L2 ? h->weight_decay : 0.0f);
    const __m512 va = _mm512_set1_ps(a0);
    const int64_t esz = dt == DT_F32 ? 4 : 2;
    __m512d ad[4], ap[4];
    for (int j = 0; j < 4; j++) ad[j] = ap[j] = _mm512_setzero_pd();
    for (int64_t i = 0; i < bs; i += 32) {
        EB_NORM_PREFETCH(p, g, i, esz)
        __m512 old[2];
        bin_decode32(T, q0 + i, &old[0], &old[1]);
        for (int j = 0; j < 2; j++) {
            const int64_t o = i + 16 * j;
            const __m512 pi = lowp_load16(p, o, dt);
            __m512 gi = _mm512_mul_ps(lowp_load16(g, o, dt), gs), d, sn;
            if (wd_mode == WD_L2) gi = _mm512_fmadd_ps(l2, pi, gi);
            rule1_16(rule, &k, _mm512_mul_ps(old[j], va), gi, &d, &sn);
            eb_square_acc16(d, ad + 2 * j);
            eb_square_acc16(pi, ap + 2 * j);
        }
    }
    eb_norm_out(ad, ap, out);
}

/* one_state_norm_pass instantiated per dtype of p and g. */
static void one_state_norm_block(int32_t rule, const void *restrict p, const void *restrict g, int32_t dt,
                                 const eb_hyper_t *h, int32_t wd_mode, int64_t bs, const uint8_t *q0, float a0,
                                 const bin_w32_t *T, double *out) {
    if (dt == DT_BF16)
        one_state_norm_pass(rule, p, g, h, wd_mode, bs, q0, a0, T, DT_BF16, out);
    else if (dt == DT_F16)
        one_state_norm_pass(rule, p, g, h, wd_mode, bs, q0, a0, T, DT_F16, out);
    else
        one_state_norm_pass(rule, p, g, h, wd_mode, bs, q0, a0, T, DT_F32, out);
}
#endif
#undef EB_NORM_PREFETCH

/* The sum of the squares of x[0..n) in double (each square exact), in sixteen interleaved partial sums: fewer
 * running sums are chains of dependent additions (four cycles each) that cost more than the rest of the pass. */
static double sum_squares(const float *restrict x, int64_t n) {
    int64_t i = 0;
    double total = 0.0;
#if defined(__AVX2__) && defined(__FMA__)
    __m256d a[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 4; j++) {
            const __m256d v = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4 * j));
            a[j] = _mm256_fmadd_pd(v, v, a[j]); /* the product is exact in double: one rounding, as mul then add */
        }
    double t[4];
    _mm256_storeu_pd(t, _mm256_add_pd(_mm256_add_pd(a[0], a[1]), _mm256_add_pd(a[2], a[3])));
    total = (t[0] + t[1]) + (t[2] + t[3]);
#endif
    for (; i < n; i++) total += (double)x[i] * (double)x[i];
    return total;
}

/* The squared norms of the direction of one step and of the parameter (what LAMB's trust ratio and max_unorm read)
 * into out[0] and out[1], with nothing written: n values of one part (desc: eb_optim_many's fields; D_NBLOCKS,
 * D_S* and D_FIRST unused) in blocks of bs, the last partial; eight != 0: 8-bit states with their scales and maps,
 * else float32 states at D_Q*. Each value is squared and summed in double (exact products). */
void eb_optim_norm(int32_t rule, int32_t nstates, int32_t wd_mode, int64_t bs, int32_t eight, int64_t n,
                   const int64_t *desc, double *out) {
    optim_part_t x;
    optim_part(desc, &x);
    const eb_hyper_t hv = *x.h;
    const int64_t nb = (n + bs - 1) / bs;
    double dsum = 0.0, psum = 0.0;
#ifdef EB_NORM_FUSED
    /* Adam / LAMB on binary maps with p and g of one dtype: one fused pass per block (adam_norm_block) */
    const int fused = eight && nstates == 2 && (rule == RULE_ADAM || (rule == RULE_LAMB && wd_mode == WD_NONE)) &&
                      x.lut[0]->bin_groups && x.lut[1]->bin_groups && bs % 32 == 0 && x.pt == x.gt;
#if EB_FUSED1 == 16
    /* a one-state rule on a binary map likewise (one_state_norm_block) */
    const int fused1 = eight && nstates == 1 && x.lut[0]->bin_groups && bs % 32 == 0 && x.pt == x.gt &&
                       (rule == RULE_MOMENTUM || rule == RULE_RMSPROP || rule == RULE_ADAGRAD || rule == RULE_LION);
#else
    const int fused1 = 0;
#endif
    bin_w32_t T0, T1;
    if (fused || fused1) T0 = bin_w32(x.lut[0]);
    if (fused) T1 = bin_w32(x.lut[1]);
#endif
#pragma omp parallel for schedule(static) if (nb >= 16) reduction(+ : dsum, psum)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t o = b * bs, w = n - o < bs ? n - o : bs;
#ifdef EB_NORM_FUSED
        if ((fused || fused1) && w == bs) {
            double sums[2] = {0.0, 0.0};
            if (fused)
                adam_norm_block(lowp_at(x.p, x.pt, o), lowp_at(x.g, x.gt, o), x.pt, &hv,
                                rule == RULE_LAMB ? WD_LAMB : wd_mode, bs, x.q[0] + o, x.q[1] + o, x.absmax[0][b],
                                x.absmax[1][b], &T0, &T1, sums);
#if EB_FUSED1 == 16
            else
                one_state_norm_block(rule, lowp_at(x.p, x.pt, o), lowp_at(x.g, x.gt, o), x.pt, &hv, wd_mode, bs,
                                     x.q[0] + o, x.absmax[0][b], &T0, sums);
#endif
            dsum += sums[0];
            psum += sums[1];
            continue;
        }
#endif
        /* scratch arrays whose starts differ by more than a multiple of 4 KB: arrays at equal offsets modulo 4 KB
         * make the loads of one loop wait on the stores to another (4K aliasing) */
        float scratch[6 * (MAX_BLOCK + 48)];
        float *st[EB_MAX_STATES], *pbuf = scratch + 3 * (MAX_BLOCK + 48), *gbuf = pbuf + MAX_BLOCK + 48;
        float *d = gbuf + MAX_BLOCK + 48;
        for (int k = 0; k < EB_MAX_STATES; k++) st[k] = scratch + k * (MAX_BLOCK + 48);
        const float *pb = (const float *)x.p + o, *gb = (const float *)x.g + o;
        if (x.pt) lowp_widen(x.p, x.pt, o, w, pbuf), pb = pbuf;
        if (x.gt) lowp_widen(x.g, x.gt, o, w, gbuf), gb = gbuf;
        for (int32_t k = 0; k < nstates; k++) {
            if (eight)
                decode_state(x.lut[k], x.q[k] + o, x.absmax[k][b], w, st[k]);
            else
                memcpy(st[k], (const float *)x.q[k] + o, (size_t)w * sizeof(float));
        }
        rule_direction(rule, pb, gb, &hv, wd_mode, w, st[0], st[1], st[2], d);
        dsum += sum_squares(d, w);
        psum += sum_squares(pb, w);
    }
    out[0] = dsum;
    out[1] = psum;
}
#endif
