/* The update-norm pass of the optimizer kernel (included at the end of optim_cpu.c): the squared norm of one step's
 * direction, which LAMB's and LARS's trust ratios and max_unorm scale the step by, with nothing written. Per
 * block, the states decoded and the rule applied as in the step; on binary maps with AVX-512, Adam/LAMB and the
 * one-state rules in one fused pass (optim_fused.h's arithmetic). The squares are exact in double and summed there. */
#ifndef EIGHTBIT_OPTIM_NORM_H
#define EIGHTBIT_OPTIM_NORM_H
#if defined(__AVX512F__) && defined(__AVX512CD__) && defined(__AVX512BW__)
#define EB_NORM_FUSED 1
/* The update-norm pass of Adam / LAMB (wd_mode WD_LAMB) on a block with both states on binary maps (bs a multiple
 * of 32): adam_core16's direction squared and summed in double, nothing written; dt and wd_mode are constants in
 * each instance (adam_norm_block). */
static inline __attribute__((always_inline)) double adam_norm_pass(const void *restrict p, const void *restrict g,
                                                                   const eb_hyper_t *h, const int wd_mode,
                                                                   const int dt, int64_t bs, const uint8_t *q0,
                                                                   const uint8_t *q1, float a0, float a1,
                                                                   const bin_w32_t *T0, const bin_w32_t *T1) {
    const adam16_k K = adam16_consts(h, wd_mode);
    const __m512 za0 = _mm512_set1_ps(a0), za1 = _mm512_set1_ps(a1);
    const int reads_p = wd_mode == WD_L2 || wd_mode == WD_LAMB, esz = dt == DT_F32 ? 4 : 2;
    __m512d acc[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd()};
    for (int64_t i = 0; i < bs; i += 32) {
        for (int64_t b = i * esz; b < (i + 32) * esz; b += 64) {
            if (reads_p) _mm_prefetch((const char *)p + b + 4 * EB_AHEAD, _MM_HINT_T0);
            _mm_prefetch((const char *)g + b + 4 * EB_AHEAD, _MM_HINT_T0);
        }
        __m512 mo[2], vo[2];
        bin_decode32(T0, q0 + i, &mo[0], &mo[1]);
        bin_decode32(T1, q1 + i, &vo[0], &vo[1]);
        for (int j = 0; j < 2; j++) {
            const int64_t o = i + 16 * j;
            const __m512 pi = reads_p ? lowp_load16(p, o, dt) : _mm512_setzero_ps();
            __m512 m, v;
            const __m512 d = adam_core16(&K, _mm512_mul_ps(mo[j], za0), _mm512_mul_ps(vo[j], za1), pi,
                                         lowp_load16(g, o, dt), wd_mode, 0, &m, &v);
            const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(d));
            const __m512d hi = _mm512_cvtps_pd(_mm256_castsi256_ps(_mm512_extracti64x4_epi64(_mm512_castps_si512(d), 1)));
            acc[2 * j] = _mm512_fmadd_pd(lo, lo, acc[2 * j]); /* exact products: one rounding, as mul then add */
            acc[2 * j + 1] = _mm512_fmadd_pd(hi, hi, acc[2 * j + 1]);
        }
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(acc[0], acc[1]), _mm512_add_pd(acc[2], acc[3])));
}

/* adam_norm_pass instantiated per weight-decay mode (WD_NONE, WD_L2, WD_DECOUPLED: no effect on the direction, or
 * WD_LAMB) and dtype of p and g. */
static double adam_norm_block(const void *restrict p, const void *restrict g, int32_t dt, const eb_hyper_t *h,
                              int32_t wd_mode, int64_t bs, const uint8_t *q0, const uint8_t *q1, float a0, float a1,
                              const bin_w32_t *T0, const bin_w32_t *T1) {
    const int wd = wd_mode == WD_DECOUPLED ? WD_NONE : wd_mode;
#define EB_PASS(WD, DT) return adam_norm_pass(p, g, h, (WD), (DT), bs, q0, q1, a0, a1, T0, T1)
#define EB_CASES(WD)                                                                                              \
    if (wd == (WD)) {                                                                                             \
        if (dt == DT_BF16) EB_PASS(WD, DT_BF16);                                                                  \
        if (dt == DT_F16) EB_PASS(WD, DT_F16);                                                                    \
        EB_PASS(WD, DT_F32);                                                                                      \
    }
    EB_CASES(WD_NONE)
    EB_CASES(WD_L2)
    EB_CASES(WD_LAMB)
#undef EB_CASES
#undef EB_PASS
    return 0.0; /* not reached: every mode is a case above */
}
#endif


#if EB_FUSED1 == 16
/* The update-norm pass of a one-state rule on a binary map (bs a multiple of 32): one_state_pass's direction
 * squared and summed in double, nothing written; dt a constant in each instance (one_state_norm_block). */
static inline __attribute__((always_inline)) double one_state_norm_pass(int32_t rule, const void *restrict p,
                                                                        const void *restrict g, const eb_hyper_t *h,
                                                                        int32_t wd_mode, int64_t bs,
                                                                        const uint8_t *q0, float a0,
                                                                        const bin_w32_t *T, const int dt) {
    const rule1_k16 k = rule1_consts16(h);
    const __m512 gs = _mm512_set1_ps(h->grad_scale), l2 = _mm512_set1_ps(wd_mode == WD_L2 ? h->weight_decay : 0.0f);
    const __m512 va = _mm512_set1_ps(a0);
    const int64_t esz = dt == DT_F32 ? 4 : 2;
    __m512d acc[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd()};
    for (int64_t i = 0; i < bs; i += 32) {
        for (int64_t b = i * esz; b < (i + 32) * esz; b += 64) {
            if (wd_mode == WD_L2) _mm_prefetch((const char *)p + b + 4 * EB_AHEAD, _MM_HINT_T0);
            _mm_prefetch((const char *)g + b + 4 * EB_AHEAD, _MM_HINT_T0);
        }
        __m512 old[2];
        bin_decode32(T, q0 + i, &old[0], &old[1]);
        for (int j = 0; j < 2; j++) {
            const int64_t o = i + 16 * j;
            __m512 gi = _mm512_mul_ps(lowp_load16(g, o, dt), gs), d, sn;
            if (wd_mode == WD_L2) gi = _mm512_fmadd_ps(l2, lowp_load16(p, o, dt), gi);
            rule1_16(rule, &k, _mm512_mul_ps(old[j], va), gi, &d, &sn);
            const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(d));
            const __m512d hi = _mm512_cvtps_pd(_mm256_castsi256_ps(_mm512_extracti64x4_epi64(_mm512_castps_si512(d), 1)));
            acc[2 * j] = _mm512_fmadd_pd(lo, lo, acc[2 * j]); /* exact products: one rounding, as mul then add */
            acc[2 * j + 1] = _mm512_fmadd_pd(hi, hi, acc[2 * j + 1]);
        }
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(acc[0], acc[1]), _mm512_add_pd(acc[2], acc[3])));
}

/* one_state_norm_pass instantiated per dtype of p and g. */
static double one_state_norm_block(int32_t rule, const void *restrict p, const void *restrict g, int32_t dt,
                                   const eb_hyper_t *h, int32_t wd_mode, int64_t bs, const uint8_t *q0, float a0,
                                   const bin_w32_t *T) {
    if (dt == DT_BF16) return one_state_norm_pass(rule, p, g, h, wd_mode, bs, q0, a0, T, DT_BF16);
    if (dt == DT_F16) return one_state_norm_pass(rule, p, g, h, wd_mode, bs, q0, a0, T, DT_F16);
    return one_state_norm_pass(rule, p, g, h, wd_mode, bs, q0, a0, T, DT_F32);
}
#endif

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

/* The squared norm of the direction of one step (what LAMB's trust ratio and max_unorm read), with nothing written:
 * n values of one part (desc: eb_optim_many's fields; D_NBLOCKS, D_S* and D_FIRST unused) in blocks of bs, the last
 * partial; eight != 0: 8-bit states with their scales and maps, else float32 states at D_Q*. Each direction is
 * squared and summed in double (exact products; the reference sums float32 squares). */
double eb_optim_norm(int32_t rule, int32_t nstates, int32_t wd_mode, int64_t bs, int32_t eight, int64_t n,
                     const int64_t *desc) {
    optim_part_t x;
    optim_part(desc, &x);
    const eb_hyper_t hv = *x.h;
    const int64_t nb = (n + bs - 1) / bs;
    double total = 0.0;
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
#pragma omp parallel for schedule(static) if (nb >= 16) reduction(+ : total)
    for (int64_t b = 0; b < nb; b++) {
#ifdef EB_NORM_FUSED
        if (fused && (b + 1) * bs <= n) {
            const int64_t o = b * bs;
            total += adam_norm_block(lowp_at(x.p, x.pt, o), lowp_at(x.g, x.gt, o), x.pt, &hv,
                                     rule == RULE_LAMB ? WD_LAMB : wd_mode, bs, x.q[0] + o, x.q[1] + o, x.absmax[0][b],
                                     x.absmax[1][b], &T0, &T1);
            continue;
        }
#if EB_FUSED1 == 16
        if (fused1 && (b + 1) * bs <= n) {
            const int64_t o = b * bs;
            total += one_state_norm_block(rule, lowp_at(x.p, x.pt, o), lowp_at(x.g, x.gt, o), x.pt, &hv, wd_mode, bs,
                                          x.q[0] + o, x.absmax[0][b], &T0);
            continue;
        }
#endif
#endif
        /* scratch arrays whose starts differ by more than a multiple of 4 KB: arrays at equal offsets modulo 4 KB
         * make the loads of one loop wait on the stores to another (4K aliasing) */
        float scratch[6 * (MAX_BLOCK + 48)];
        float *st[EB_MAX_STATES], *pbuf = scratch + 3 * (MAX_BLOCK + 48), *gbuf = pbuf + MAX_BLOCK + 48;
        float *d = gbuf + MAX_BLOCK + 48;
        for (int k = 0; k < EB_MAX_STATES; k++) st[k] = scratch + k * (MAX_BLOCK + 48);
        const int64_t o = b * bs, w = n - o < bs ? n - o : bs;
        const float *pb = (const float *)x.p + o, *gb = (const float *)x.g + o;
        if (x.pt) lowp_widen(x.p, x.pt, o, w, pbuf), pb = pbuf;
        if (x.gt) lowp_widen(x.g, x.gt, o, w, gbuf), gb = gbuf;
        for (int32_t k = 0; k < nstates; k++) {
            if (!eight)
                memcpy(st[k], (const float *)x.q[k] + o, (size_t)w * sizeof(float));
            else if (x.lut[k]->bin_groups)
                bin_decode_scale(x.lut[k], x.q[k] + o, x.absmax[k][b], w, st[k]);
            else
                lookup_scale(x.q[k] + o, x.lut[k]->code, x.absmax[k][b], w, st[k]);
        }
        rule_direction(rule, pb, gb, &hv, wd_mode, w, st[0], st[1], st[2], d);
        total += sum_squares(d, w);
    }
    return total;
}
#endif
