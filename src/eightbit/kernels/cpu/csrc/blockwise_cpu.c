/* eightbit native CPU kernels: block-wise 8-bit quantize / dequantize.
 *
 * Why C: on AVX2 CPUs inductor lowers the 256-entry code lookups to scalar gathers through int64
 * temporaries (~2.7 ns per element for a dequantize); a plain loop over one block held in L1 runs at
 * memory speed. Loops over blocks / rows run in parallel with OpenMP. The library is linked against
 * "libgomp.so.1", the soname of the runtime torch already loaded, so both share one thread pool:
 * torch.set_num_threads applies, and no second pool competes with torch's spinning workers.
 *
 * Numerics mirror the plain-PyTorch reference in eightbit.functional.blockwise
 * operation by operation in float32 (compiled with -ffp-contract=off, no fast-math), so the results
 * are bit-identical to it; tests/kernels/test_native_cpu.py checks that.
 */
#include "blocks.h"

#ifdef __AVX2__
/* acc = max(acc, |x[0..8)| as integers), the vector step of absmax_bits. */
static inline __m256i absmax_step8(__m256i acc, const float *x) {
    return _mm256_max_epu32(acc, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)x), _mm256_set1_epi32(0x7FFFFFFF)));
}

static inline uint32_t hmax_epu32(__m256i v) {
    __m128i m = _mm_max_epu32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0x4E));
    m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0xB1));
    return (uint32_t)_mm_cvtsi128_si32(m);
}

/* Round-to-nearest quantization of nb consecutive blocks, software-pipelined: while block b is divided and
 * looked up (L1-only work), the same loop reads block b + 1 for its absmax, so the memory stream and the
 * lookups overlap instead of alternating. Same results as quantize_block. */
static void quantize_run_nearest(const float *x, int64_t nb, int64_t bs, const lut_t *L, uint8_t *q, float *absmax) {
    const __m256i vklo = _mm256_set1_epi32(L->klo), vspan = _mm256_set1_epi32(L->span);
    uint32_t amax_bits = absmax_bits(x, bs);
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * bs;
        const float *xn = b + 1 < nb ? xb + bs : xb; /* the last block re-reads itself (result unused) */
        uint8_t *qb = q + b * bs;
        __m256i an = _mm256_setzero_si256();
        if (amax_bits >= 0x7F800000u) { /* NaN/Inf in the block: flagged, codes zero_idx */
            memset(qb, L->zero_idx, (size_t)bs);
            absmax[b] = NAN;
            for (int64_t i = 0; i < bs; i += 8) an = absmax_step8(an, xn + i);
        } else {
            float amax;
            memcpy(&amax, &amax_bits, 4);
            const __m256 vs = _mm256_set1_ps(amax > 0.0f ? amax : 1.0f);
            for (int64_t i = 0; i < bs; i += 8) {
                an = absmax_step8(an, xn + i);
                nearest_store8(xb + i, vs, L, vklo, vspan, qb + i);
            }
            absmax[b] = amax;
        }
        amax_bits = hmax_epu32(an);
    }
}
#endif

void eb_quantize_blocks(const float *x, int64_t nblocks, int64_t bs, const lut_t *lut, int64_t seed, int64_t first,
                        uint8_t *q, float *absmax) {
    const lut_t L = *lut;
#ifdef __AVX2__
    if (seed < 0 && L.near && !L.bin_groups && bs % 8 == 0) { /* runs of 16 blocks (128 KB of x for 2048-value blocks) per task */
        const int64_t run = 16, runs = (nblocks + run - 1) / run;
#pragma omp parallel for schedule(static) if (runs >= 2)
        for (int64_t r = 0; r < runs; r++) {
            const int64_t b0 = r * run, nb = nblocks - b0 < run ? nblocks - b0 : run;
            quantize_run_nearest(x + b0 * bs, nb, bs, &L, q + b0 * bs, absmax + b0);
        }
        return;
    }
#endif
#pragma omp parallel for schedule(static) if (nblocks >= 16)
    for (int64_t b = 0; b < nblocks; b++)
        quantize_block(x + b * bs, bs, &L, seed, first + b * bs, q + b * bs, absmax + b, 1, 0);
}

/* Per-block bodies live in functions with restrict parameters: OpenMP outlining of the parallel loops
 * would otherwise drop the no-alias information and the vectorizer with it. */
static void dequantize_block(const uint8_t *restrict q, float a, const float *restrict code, int64_t bs,
                             float *restrict out) {
    lookup_scale(q, code, a, bs, out);
}

void eb_dequantize_blocks(const uint8_t *restrict q, const float *restrict absmax, const float *restrict code,
                          int64_t nblocks, int64_t bs, float *restrict out) {
#pragma omp parallel for schedule(static) if (nblocks >= 16)
    for (int64_t b = 0; b < nblocks; b++) dequantize_block(q + b * bs, absmax[b], code, bs, out + b * bs);
}
