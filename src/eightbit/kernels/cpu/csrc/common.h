/* Helpers shared by the native kernels (one copy each, included by the C files in csrc/ that use them). */
#ifndef EIGHTBIT_COMMON_H
#define EIGHTBIT_COMMON_H
#include <stdint.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

/* Bits of max |x[i]| over n float32 values, compared as integers (monotone for non-negative floats), so NaN
 * and Inf show up as results >= 0x7F800000. */
static inline uint32_t absmax_bits(const float *restrict x, int64_t n) {
    const uint32_t *restrict u = (const uint32_t *)x; /* type pun: built with -fno-strict-aliasing */
    uint32_t m = 0;
    int64_t i = 0;
#if defined(__AVX512F__) /* the compiler keeps this loop at 256 bits (-mprefer-vector-width=256) */
    const __m512i m7f = _mm512_set1_epi32(0x7FFFFFFF);
    __m512i acc = _mm512_setzero_si512();
    for (; i + 16 <= n; i += 16) acc = _mm512_max_epu32(acc, _mm512_and_si512(_mm512_loadu_si512(u + i), m7f));
    m = (uint32_t)_mm512_reduce_max_epu32(acc);
#endif
    for (; i < n; i++) {
        const uint32_t a = u[i] & 0x7FFFFFFFu;
        m = a > m ? a : m;
    }
    return m;
}

/* out[i] = table[q[i]] * a for byte codes q (a 256-entry float table in L1).
 * Why not vpgatherdd: on this project's Zen 3 machine eight scalar loads assembled into a vector ran 1.7x
 * faster than one 8-lane gather (0.29 vs 0.50 ns per value), the load ports being wider than the gather unit.
 * Bit-identical to the plain loop (the same float multiply). */
static inline void lookup_scale(const uint8_t *restrict q, const float *restrict table, float a, int64_t n,
                                float *restrict out) {
    int64_t i = 0;
#ifdef __AVX2__
    const __m256 va = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_setr_ps(table[q[i]], table[q[i + 1]], table[q[i + 2]], table[q[i + 3]],
                                        table[q[i + 4]], table[q[i + 5]], table[q[i + 6]], table[q[i + 7]]);
        _mm256_storeu_ps(out + i, _mm256_mul_ps(v, va));
    }
#endif
    for (; i < n; i++) out[i] = table[q[i]] * a;
}
#endif
