/* The one-state rules' float32 arithmetic (momentum, RMSprop, Adagrad, Lion) on one vector, written once for both
 * vector widths: rule_block's operations in its order, so the fused passes stay bit-identical to it. Included by
 * optim_fused.h once per width, with EB_V (the vector type), EB_W (its lanes: the names' suffix) and the
 * operations EB_SET1, EB_MUL, EB_ADD, EB_SUB, EB_DIV, EB_SQRT and EB_SIGN (Lion's sign: 1, -1, or 0 for +-0 and
 * NaN) defined, which it undefines at its end; no include guard on purpose. */
#define EB_CAT2(a, b) a##b
#define EB_CAT(a, b) EB_CAT2(a, b)

/* A group's hyperparameters of the rules, broadcast. */
typedef struct {
    EB_V b1, c1, b2, c2, eps, lr_decay;
    int nesterov;
} EB_CAT(rule1_k, EB_W);

static inline EB_CAT(rule1_k, EB_W) EB_CAT(rule1_consts, EB_W)(const eb_hyper_t *h) {
    EB_CAT(rule1_k, EB_W) k;
    k.b1 = EB_SET1(h->beta1);
    k.c1 = EB_SET1(h->one_minus_beta1);
    k.b2 = EB_SET1(h->beta2);
    k.c2 = EB_SET1(h->one_minus_beta2);
    k.eps = EB_SET1(h->eps);
    k.nesterov = h->nesterov != 0.0f;
    k.lr_decay = EB_SET1(h->lr_decay);
    return k;
}

/* The rule on state s and gradient gi (grad_scale and L2 decay applied): the parameter's step direction *d (the
 * parameter moves by -lr * update_scale * d) and the new state *sn. */
static inline __attribute__((always_inline)) void EB_CAT(rule1_, EB_W)(int32_t rule, const EB_CAT(rule1_k, EB_W) *k,
                                                                      EB_V s, EB_V gi, EB_V *d, EB_V *sn) {
    switch (rule) {
    case RULE_MOMENTUM: {
        const EB_V buf = EB_ADD(EB_MUL(s, k->b1), EB_MUL(gi, k->c1));
        *d = k->nesterov ? EB_ADD(gi, EB_MUL(k->b1, buf)) : buf; /* chosen per call: 0 * Inf would be NaN */
        *sn = buf;
        break;
    }
    case RULE_RMSPROP:
        *sn = EB_ADD(EB_MUL(s, k->b2), EB_MUL(EB_MUL(gi, gi), k->c2));
        *d = EB_DIV(gi, EB_ADD(EB_SQRT(*sn), k->eps));
        break;
    case RULE_ADAGRAD:
        *sn = EB_ADD(s, EB_MUL(gi, gi));
        *d = EB_MUL(EB_DIV(gi, EB_ADD(EB_SQRT(*sn), k->eps)), k->lr_decay);
        break;
    default: /* RULE_LION: the sign of the interpolation, then the slow EMA */
        *d = EB_SIGN(EB_ADD(EB_MUL(s, k->b1), EB_MUL(gi, k->c1)));
        *sn = EB_ADD(EB_MUL(s, k->b2), EB_MUL(gi, k->c2));
        break;
    }
}
#undef EB_CAT
#undef EB_CAT2
#undef EB_V
#undef EB_W
#undef EB_SET1
#undef EB_MUL
#undef EB_ADD
#undef EB_SUB
#undef EB_DIV
#undef EB_SQRT
#undef EB_SIGN
