/* bfloat16 / float16 <-> float32 for kernels that compute in float32 on bf16/fp16 tensors (optim_cpu.c), with the
 * results torch's CPU casts give (`.float()`, `.to(torch.bfloat16)`, `.to(torch.float16)`), so a kernel that widens,
 * computes and narrows is bit-identical to a reference that casts:
 *   bf16 -> f32: the 16 bits on top (exact).   f32 -> bf16: round to nearest even on the bits; every NaN -> 0xFFFF.
 *   fp16 -> f32: exact; a NaN keeps its sign and payload and is made quiet (F16C's vcvtph2ps).
 *   f32 -> fp16: round to nearest even (subnormals included, overflow to Inf); a NaN keeps its sign and the top
 *   payload bits and is made quiet (F16C's vcvtps2ph).
 * A float16 NaN's payload is the one thing not pinned to torch: its casts give different payloads depending on the
 * tensor's size (vectorized or not); a NaN stays a NaN. */
#ifndef EIGHTBIT_LOWP_H
#define EIGHTBIT_LOWP_H
#include <stdint.h>
#include <string.h>

#include "common.h"

enum { DT_F32 = 0, DT_BF16 = 1, DT_F16 = 2 };

static inline float f32_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t bits_f32(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static inline float bf16_to_f32(uint16_t h) { return f32_bits((uint32_t)h << 16); }

static inline uint16_t f32_to_bf16(float f) {
    const uint32_t u = bits_f32(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0xFFFF;
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    if (e == 0x1F) return f32_bits(sign | 0x7F800000u | (m << 13) | (m ? 0x400000u : 0u));
    if (e) return f32_bits(sign | ((e + 112u) << 23) | (m << 13));
    const float mag = (float)m * 5.9604644775390625e-8f; /* m * 2^-24: exact */
    return f32_bits(sign | bits_f32(mag));
}

static inline uint16_t f32_to_f16(float f) {
    const uint32_t u = bits_f32(f), sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
    if (a >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); /* rounds to >= 65520: Inf */
    if (a < 0x38800000u) {                                   /* below 2^-14: a subnormal (or zero) result */
        /* the magnitude plus 0.5 has its ulp at 2^-24, the fp16 subnormal spacing: the float add rounds to
         * nearest even exactly there, and the low mantissa bits are the result */
        const float s = f32_bits(a) + 0.5f;
        return (uint16_t)(sign | (bits_f32(s) - 0x3F000000u));
    }
    const uint32_t r = a + 0xFFFu + ((a >> 13) & 1u) - 0x38000000u; /* exponent rebased from 127 to 15 */
    return (uint16_t)(sign | (r >> 13));
}

/* Address of element o of x (dtype dt). */
static inline void *lowp_at(const void *x, int32_t dt, int64_t o) { return (char *)x + o * (dt == DT_F32 ? 4 : 2); }

/* Whether the n values of g (dtype dt) from element o hold a NaN or an Inf (read ahead of a block's update: it
 * brings the block's gradient into L1, where the update then finds it). */
static inline int lowp_nonfinite(const void *g, int32_t dt, int64_t o, int64_t n) {
    if (dt == DT_F32) return absmax_bits((const float *)g + o, n) >= 0x7F800000u;
    const uint16_t *h = (const uint16_t *)g + o;
    const uint16_t inf = dt == DT_BF16 ? 0x7F80 : 0x7C00;
    uint16_t bad = 0; /* an or of comparisons: the loop vectorizes (a max of 16-bit values did not) */
    for (int64_t i = 0; i < n; i++) bad |= (uint16_t)((uint16_t)(h[i] & 0x7FFF) >= inf);
    return bad != 0;
}

#if defined(__AVX512F__)
/* 16 values of x (dtype dt, a constant where inlined) from element i, as float32. */
static inline __attribute__((always_inline)) __m512 lowp_load16(const void *x, int64_t i, const int dt) {
    if (dt == DT_F32) return _mm512_loadu_ps((const float *)x + i);
    const __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)x + i));
    if (dt == DT_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

/* The 16 float32 values v as bfloat16 bits (torch's rounding: nearest even, every NaN 0xFFFF). */
static inline __m256i lowp_bf16_16(__m512 v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)),
                                       _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)));
    return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), _mm512_set1_epi32(0xFFFF),
                                                         _mm512_srli_epi32(r, 16)));
}

/* v stored as 16 values of x (dtype dt) from element i. */
static inline __attribute__((always_inline)) void lowp_store16(void *x, int64_t i, __m512 v, const int dt) {
    if (dt == DT_F32)
        _mm512_storeu_ps((float *)x + i, v);
    else
        _mm256_storeu_si256((__m256i *)((uint16_t *)x + i),
                            dt == DT_BF16 ? lowp_bf16_16(v) : _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#endif

#if defined(__AVX2__) && defined(__F16C__)
#define EB_LOWP8 1 /* the 8-lane loads and stores below exist */
/* 8 values of x (dtype dt, a constant where inlined) from element i, as float32. */
static inline __attribute__((always_inline)) __m256 lowp_load8(const void *x, int64_t i, const int dt) {
    if (dt == DT_F32) return _mm256_loadu_ps((const float *)x + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)x + i));
    if (dt == DT_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

/* v stored as 8 values of x (dtype dt) from element i (bf16: torch's rounding, as lowp_bf16_16). */
static inline __attribute__((always_inline)) void lowp_store8(void *x, int64_t i, __m256 v, const int dt) {
    if (dt == DT_F32) {
        _mm256_storeu_ps((float *)x + i, v);
    } else if (dt == DT_F16) {
        _mm_storeu_si128((__m128i *)((uint16_t *)x + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    } else {
        const __m256i u = _mm256_castps_si256(v);
        __m256i r = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)),
                                     _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1)));
        r = _mm256_blendv_epi8(_mm256_set1_epi32(0xFFFF), _mm256_srli_epi32(r, 16),
                               _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_ORD_Q)));
        /* 32-bit lanes to 16: packus within 128-bit halves, then the halves' low quadwords together */
        const __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
        _mm_storeu_si128((__m128i *)((uint16_t *)x + i), _mm256_castsi256_si128(w));
    }
}
#else
#define EB_LOWP8 0
#endif

/* dst[0, n) = float32 of the n values of src (dtype dt) from element o. The source's next 16 KB are prefetched into
 * L2 on the way (the caller's passes over the converted copy read no memory). */
static void lowp_widen(const void *src, int32_t dt, int64_t o, int64_t n, float *restrict dst) {
    const uint16_t *s = (const uint16_t *)src + o;
    int64_t i = 0;
    for (int64_t b = 0; b < 2 * n; b += 64) __builtin_prefetch((const char *)s + b + 16384, 0, 2); /* into L2 */
#if defined(__AVX512F__)
    if (dt == DT_BF16)
        for (; i + 16 <= n; i += 16)
            _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(
                                          _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s + i))), 16)));
    else
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + i))));
#elif EB_LOWP8
    if (dt == DT_BF16)
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, lowp_load8(s, i, DT_BF16));
    else
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, lowp_load8(s, i, DT_F16));
#endif
    for (; i < n; i++) dst[i] = dt == DT_BF16 ? bf16_to_f32(s[i]) : f16_to_f32(s[i]);
}

/* The n float32 values of src rounded into dst (dtype dt) from element o. */
static void lowp_narrow(const float *restrict src, int64_t n, void *dst, int32_t dt, int64_t o) {
    uint16_t *d = (uint16_t *)dst + o;
    int64_t i = 0;
#if defined(__AVX512F__)
    if (dt == DT_BF16)
        for (; i + 16 <= n; i += 16) lowp_store16(d, i, _mm512_loadu_ps(src + i), DT_BF16);
    else
        for (; i + 16 <= n; i += 16) lowp_store16(d, i, _mm512_loadu_ps(src + i), DT_F16);
#elif EB_LOWP8
    if (dt == DT_BF16)
        for (; i + 8 <= n; i += 8) lowp_store8(d, i, _mm256_loadu_ps(src + i), DT_BF16);
    else
        for (; i + 8 <= n; i += 8) lowp_store8(d, i, _mm256_loadu_ps(src + i), DT_F16);
#endif
    for (; i < n; i++) d[i] = dt == DT_BF16 ? f32_to_bf16(src[i]) : f32_to_f16(src[i]);
}
#endif
