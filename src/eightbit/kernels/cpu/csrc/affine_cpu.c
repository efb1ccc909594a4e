/* eightbit native CPU kernels: affine INT8 codes (the quantize_int8 op), mirroring its PyTorch reference operation
 * by operation in float32: y = rint(x / scale) (the division, not a reciprocal multiply, and round half to even as
 * torch.round), NaN -> 0, then symmetric: clamp to [-127, 127] as int8; asymmetric: y + zero_point clamped to
 * [0, 255] as uint8. +-Inf saturate (the reference's nan_to_num maps them to +-float32 max first; the clamp
 * gives the same codes). Bit-identical to the reference (tests/kernels/test_native_cpu.py). */
#include <math.h>
#include <stdint.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

/* rows of cols float32 values; scale[r * stride] and zero_point[r * stride] (stride 0: one each) */
void eb_quantize_int8(const float *x, const float *scale, const int32_t *zero_point, int64_t stride, int64_t rows,
                      int64_t cols, int32_t symmetric, uint8_t *out) {
#pragma omp parallel for schedule(static) if (rows * cols >= 65536 && rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        const float s = scale[r * stride], z = (float)zero_point[r * stride];
        const float *restrict xr = x + r * cols;
        uint8_t *restrict o = out + r * cols;
        if (symmetric) {
            for (int64_t c = 0; c < cols; c++) {
                float v = rintf(xr[c] / s);
                v = v != v ? 0.0f : v;
                v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
                o[c] = (uint8_t)(int8_t)v;
            }
        } else {
            for (int64_t c = 0; c < cols; c++) {
                float v = rintf(xr[c] / s);
                v = (v != v ? 0.0f : v) + z;
                v = v > 255.0f ? 255.0f : (v < 0.0f ? 0.0f : v);
                o[c] = (uint8_t)v;
            }
        }
    }
}

/* Per row of cols float32 values: lo = min and hi = max over the finite values; a row without any gives
 * lo = +Inf, hi = -Inf, or 0 and 0 with zero_empty (the finite_minmax op's convention; without it the caller
 * reduces several rows of one slice first). Exact (min and max round nothing), up to the sign of a zero result
 * where +0 and -0 both occur: like torch's amin/amax, which zero is returned then depends on the order. */
void eb_finite_minmax(const float *x, int64_t rows, int64_t cols, int32_t zero_empty, float *lo, float *hi) {
#pragma omp parallel for schedule(static) if (rows * cols >= 65536 && rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        const float *restrict xr = x + r * cols;
        float l = INFINITY, h = -INFINITY;
        int64_t c = 0;
#ifdef __AVX2__
        const __m256 inf = _mm256_set1_ps(INFINITY), ninf = _mm256_set1_ps(-INFINITY);
        const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
        __m256 vl = inf, vh = ninf;
        for (; c + 8 <= cols; c += 8) {
            const __m256 v = _mm256_loadu_ps(xr + c);
            const __m256 finite = _mm256_cmp_ps(_mm256_and_ps(v, abs_mask), inf, _CMP_LT_OQ); /* false for NaN */
            vl = _mm256_min_ps(vl, _mm256_blendv_ps(inf, v, finite));
            vh = _mm256_max_ps(vh, _mm256_blendv_ps(ninf, v, finite));
        }
        float bl[8], bh[8];
        _mm256_storeu_ps(bl, vl), _mm256_storeu_ps(bh, vh);
        for (int i = 0; i < 8; i++) l = bl[i] < l ? bl[i] : l, h = bh[i] > h ? bh[i] : h;
#endif
        for (; c < cols; c++) {
            const float v = xr[c];
            if (fabsf(v) < INFINITY) l = v < l ? v : l, h = v > h ? v : h; /* false for NaN too */
        }
        if (zero_empty && l == INFINITY) l = 0.0f, h = 0.0f;
        lo[r] = l, hi[r] = h;
    }
}
