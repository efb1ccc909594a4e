/* eightbit native CPU kernels: affine INT8 codes (the quantize_int8 op), mirroring its PyTorch reference operation
 * by operation in float32: y = rint(x / scale) (the division, not a reciprocal multiply, and round half to even as
 * torch.round), NaN -> 0, then symmetric: clamp to [-127, 127] as int8; asymmetric: y + zero_point clamped to
 * [0, 255] as uint8. +-Inf saturate (the reference's nan_to_num maps them to +-float32 max first; the clamp
 * gives the same codes). Bit-identical to the reference (tests/kernels/test_native_cpu.py). */
#include <math.h>
#include <stdint.h>

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
