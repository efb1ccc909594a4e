/* eightbit native CPU kernels: fp8 casts.
 * Built together with the other C files in csrc/ into one library (eightbit.kernels.native_cpu).
 * Numerics mirror the plain-PyTorch references operation by operation in float32 (no fast-math,
 * -ffp-contract=off), so results are bit-identical to them; tests/kernels/test_native_cpu.py checks that. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

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
    lookup_scale(codes, table, s, cols, o);
}

/* out = table[codes] * scale (float32), scale per row or one in all. */
void eb_fp8_to_fp32(const uint8_t *codes, const float *table, const float *scale, int64_t scale_stride,
                    int64_t rows, int64_t cols, float *out) {
#pragma omp parallel for schedule(static) if (rows >= 16)
    for (int64_t r = 0; r < rows; r++)
        fp8_decode_row(codes + r * cols, table, scale[r * scale_stride], cols, out + r * cols);
}

/* ------------------------------------------------------------------ max |x| for per-tensor scales
 * Bits of max |x[i]| over n float32 values, compared as integers (monotone for non-negative floats), so
 * NaN and Inf show up as results >= 0x7F800000 (the caller then takes its finite-only path). One read of x,
 * no |x|-sized temporary. */
uint32_t eb_absmax_bits(const float *x, int64_t n) {
    const int64_t chunk = 1 << 16, chunks = (n + chunk - 1) / chunk;
    uint32_t m = 0;
#pragma omp parallel for schedule(static) reduction(max : m) if (chunks >= 16)
    for (int64_t c = 0; c < chunks; c++) {
        const int64_t start = c * chunk, len = n - start < chunk ? n - start : chunk;
        const uint32_t r = absmax_bits(x + start, len);
        m = r > m ? r : m;
    }
    return m;
}
