/* The packed-panel nest on AMX-INT8 (included by int8_panels.c where the compiler targets AMX: -march=native on a
 * CPU with it). TDPBSSD multiplies signed by signed bytes and adds each group of four products to an int32 lane:
 * the exact sums of the panel nest with no +128 flip and no row-sum correction, 16 x 16 x 64 products per
 * instruction. The panel's layout (16 weight rows, 4-byte k-groups: panel[q][j] = w[n0 + j][4q .. 4q+3]) is the
 * B tile's, 16 k-groups (64 bytes of K) at a time; the A tile is 16 activation rows x 64 bytes. K is padded with
 * zeros to a multiple of 64 (the panel's tail, and a copy of x where its rows are not that long), the last rows
 * of M take a tile configuration of their own. The int32 sums go through the epilogue of finish(), vectorized:
 * the same operations in the same order, so the output is bit-identical to the reference as before.
 * Linux hands out AMX's tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM), once per process; where that
 * fails, or with EIGHTBIT_AMX=0, the VNNI nest runs. */
#ifndef EIGHTBIT_INT8_AMX_H
#define EIGHTBIT_INT8_AMX_H
#include "amx.h"

/* finish() for rows m0 .. m0 + mr - 1 and the 16 columns from n0, from their int32 sums acc[r][0..16), with the
 * outlier columns' dequantized weights in e->wo: finish()'s operations in its order, 16 columns at a time. */
static void amx_epilogue(const eb_epi *e, const int32_t acc[16][16], int mr, int64_t m0, int64_t n0) {
    const int64_t N = e->N, C = e->n_out;
    const __m512 ws16 = _mm512_loadu_ps(e->ws + n0);
    for (int r = 0; r < mr; r++) {
        const int64_t m = m0 + r;
        __m512 y = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512((const void *)acc[r])),
                                               _mm512_set1_ps(e->xs[m])), ws16);
        if (C) {
            __m512 o = _mm512_setzero_ps();
            for (int64_t c = 0; c < C; c++)
                o = _mm512_add_ps(o, _mm512_mul_ps(_mm512_set1_ps(e->xo[m * C + c]), _mm512_loadu_ps(e->wo + c * N + n0)));
            y = _mm512_add_ps(y, o);
        }
        if (e->add) y = _mm512_add_ps(y, _mm512_loadu_ps(e->add + m * N + n0));
        if (e->bias) y = _mm512_add_ps(y, _mm512_loadu_ps(e->bias + n0));
        _mm512_storeu_ps(e->out + m * N + n0, y);
    }
}

/* The sums of one 16-row block against one panel, finished into out. */
static void amx_finish(const eb_epi *e, const int32_t acc[16][16], const int8_t *w, int64_t K, int mr, int64_t m0,
                       int64_t n0, int nn) {
    if (nn == 16 && (!e->n_out || e->wo)) {
        amx_epilogue(e, acc, mr, m0, n0);
        return;
    }
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < nn; j++) finish(e, acc[r][j], w + (n0 + j) * K, m0 + r, n0 + j);
}

/* All M rows of x (rows ldx bytes apart, ldx a multiple of 64, zero beyond K) against one or two panels (p1 NULL:
 * one) of K64 k-groups (a multiple of 16), 16 rows at a time: each activation tile is loaded once for both panels
 * (it is the tile product's largest input stream: 512 x 4096 x 4096 reloaded it 256 times). The tile configuration
 * for 16 rows is loaded. */
static void amx_sweep(const int8_t *x, int64_t ldx, const int8_t *restrict p0, const int8_t *restrict p1, int64_t K64,
                      const int8_t *w, const eb_epi *e, int64_t M, int64_t K, int64_t n0, int nn0, int nn1) {
    int32_t acc[16][16] __attribute__((aligned(64)));
    for (int64_t m0 = 0; m0 < M; m0 += 16) {
        const int mr = M - m0 < 16 ? (int)(M - m0) : 16;
        if (mr < 16) amx_config(mr);
        _tile_zero(0);
        if (p1) _tile_zero(3);
        for (int64_t q = 0; q < K64; q += 16) {
            _tile_loadd(1, x + m0 * ldx + 4 * q, ldx);
            _tile_loadd(2, p0 + q * 64, 64);
            _tile_dpbssd(0, 1, 2);
            if (p1) {
                _tile_loadd(4, p1 + q * 64, 64);
                _tile_dpbssd(3, 1, 4);
            }
        }
        _tile_stored(0, acc, 64);
        amx_finish(e, (const int32_t(*)[16])acc, w, K, mr, m0, n0, nn0);
        if (p1) {
            _tile_stored(3, acc, 64);
            amx_finish(e, (const int32_t(*)[16])acc, w, K, mr, m0, n0 + 16, nn1);
        }
        if (mr < 16) amx_config(16);
    }
}

/* Few rows (M <= EB_AMX_FEW, K a multiple of 64): the roles swapped, so that no weight panel is packed (packing
 * every weight byte per call cost as much as the whole product at M = 32). The weight's rows are the A tile as they
 * lie (16 rows x 64 bytes of K), the activations the B tile: x transposed once per call into 4-byte k-groups,
 * xt[q][m] = x[m][4q .. 4q+3] for Mp (M rounded up to 16) columns. C tile j holds out[16 j + c][n0 + r] at (r, c):
 * the epilogue reads it by column. Up to 4 m-blocks share each A tile. */
#define EB_AMX_FEW 64
static void amx_config_few(int nrows, int mblocks) {
    uint8_t rows[8] = {0}; /* tiles 0..mblocks-1: the sums; 4: weight rows; 5: activations */
    for (int j = 0; j < mblocks; j++) rows[j] = (uint8_t)nrows;
    rows[4] = (uint8_t)nrows, rows[5] = 16;
    amx_config_rows(rows);
}

static int amx_gemm_few(const int8_t *x, const int8_t *w, const eb_epi *e, int64_t M, int64_t K, int64_t N) {
    const int64_t K4 = K / 4, Mp = (M + 15) / 16 * 16, nblocks = (N + 15) / 16, ldt = Mp * 4;
    const int mblocks = (int)(Mp / 16);
    int8_t *xt = (int8_t *)aligned_alloc(64, (size_t)(K4 * ldt));
    if (!xt) return 1;
    memset(xt, 0, (size_t)(K4 * ldt));
    for (int64_t m = 0; m < M; m++) /* 4-byte groups: a 32-bit copy each */
        for (int64_t q = 0; q < K4; q++) memcpy(xt + q * ldt + 4 * m, x + m * K + 4 * q, 4);
#pragma omp parallel if (nblocks >= 4)
    {
        int cfg_rows = 0;
        int32_t acc[4][16][16] __attribute__((aligned(64)));
#pragma omp for schedule(static)
        for (int64_t b = 0; b < nblocks; b++) {
            const int64_t n0 = 16 * b;
            const int nn = N - n0 < 16 ? (int)(N - n0) : 16;
            if (nn != cfg_rows) amx_config_few(nn, mblocks), cfg_rows = nn;
            _tile_zero(0);
            if (mblocks > 1) _tile_zero(1);
            if (mblocks > 2) _tile_zero(2);
            if (mblocks > 3) _tile_zero(3);
            for (int64_t q = 0; q < K4; q += 16) {
                _tile_loadd(4, w + n0 * K + 4 * q, K);
                _tile_loadd(5, xt + q * ldt, ldt);
                _tile_dpbssd(0, 4, 5);
                if (mblocks > 1) {
                    _tile_loadd(5, xt + q * ldt + 64, ldt);
                    _tile_dpbssd(1, 4, 5);
                }
                if (mblocks > 2) {
                    _tile_loadd(5, xt + q * ldt + 128, ldt);
                    _tile_dpbssd(2, 4, 5);
                }
                if (mblocks > 3) {
                    _tile_loadd(5, xt + q * ldt + 192, ldt);
                    _tile_dpbssd(3, 4, 5);
                }
            }
            _tile_stored(0, acc[0], 64);
            if (mblocks > 1) _tile_stored(1, acc[1], 64);
            if (mblocks > 2) _tile_stored(2, acc[2], 64);
            if (mblocks > 3) _tile_stored(3, acc[3], 64);
            if (e->wo) row_outlier_weights(e, w, K, n0, nn); /* (its rows were just read) */
            for (int64_t m = 0; m < M; m++) { /* output row m: column m % 16 of sum tile m / 16 */
                int32_t col[1][16] __attribute__((aligned(64)));
                for (int r = 0; r < 16; r++) col[0][r] = acc[m / 16][r][m % 16];
                amx_finish(e, (const int32_t(*)[16])col, w, K, 1, m, n0, nn);
            }
        }
        if (cfg_rows) _tile_release();
    }
    free(xt);
    return 0;
}

/* eb_gemm_panels on AMX (its contract; see there): returns 1 when it cannot run (no permission, or no memory for
 * the padded copy of x), and the caller's nest runs instead. */
static int amx_gemm_panels(const int8_t *x, int x_ready, const int8_t *w, const eb_epi *e, int64_t M, int64_t K,
                           int64_t N) {
    if (!amx_usable()) return 1;
    if (M <= EB_AMX_FEW && K % 64 == 0 && amx_gemm_few(x, w, e, M, K, N) == 0) return 0; /* (K % 4 == 0: x is K wide) */
    const int64_t K64 = (K + 63) / 64 * 16, ldx = K64 * 4, npanels = (N + 15) / 16; /* K64: k-groups, padded */
    const int64_t ld_in = x_ready ? (K + 3) / 4 * 4 : K; /* x's row stride (a ready x is padded to 4 bytes) */
    const int8_t *xp = x;
    int8_t *xpad = NULL;
    if (ldx != ld_in) { /* rows of whole 64-byte tiles: a zero-padded copy */
        xpad = (int8_t *)calloc((size_t)(M * ldx), 1);
        if (!xpad) return 1;
        for (int64_t m = 0; m < M; m++) memcpy(xpad + m * ldx, x + m * ld_in, (size_t)K);
        xp = xpad;
    }
    const int64_t npairs = (npanels + 1) / 2;
#pragma omp parallel if (npairs >= 2)
    {
        int8_t *panels = (int8_t *)aligned_alloc(64, (size_t)(2 * K64 * 64)); /* two panels, K64 k-groups each */
        if (panels) {
            amx_config(16);
            const int64_t K4 = (K + 3) / 4;
            for (int h = 0; h < 2; h++) memset(panels + h * K64 * 64 + K4 * 64, 0, (size_t)((K64 - K4) * 64));
        }
#pragma omp for schedule(static)
        for (int64_t pp = 0; pp < npairs; pp++) { /* panels 2 pp and 2 pp + 1 (if any) together */
            int nns[2] = {0, 0};
            for (int h = 0; h < 2 && 2 * pp + h < npanels; h++) {
                const int64_t n0 = 16 * (2 * pp + h);
                const int nn = nns[h] = N - n0 < 16 ? (int)(N - n0) : 16;
                if (!panels) { /* no memory for the panels */
                    columns_by_dots(xp, ldx, w, e, M, K, n0, nn);
                    continue;
                }
                int8_t *panel = panels + h * K64 * 64;
                pack_panel(w, K, n0, nn, (K + 3) / 4, 0x00u, panel);
                if (e->wo) panel_outlier_weights(e, panel, n0, nn, 0x00u);
            }
            if (panels)
                amx_sweep(xp, ldx, panels, nns[1] ? panels + K64 * 64 : NULL, K64, w, e, M, K, 32 * pp, nns[0], nns[1]);
        }
        if (panels) _tile_release();
        free(panels);
    }
    free(xpad);
    return 0;
}
#endif
