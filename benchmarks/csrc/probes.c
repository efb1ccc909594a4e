/* Hardware ceilings for BENCHMARKS.md, measured on the machine that runs the benchmarks (one core each):
 *   eb_probe_int8_tile: int8 multiply-accumulate rate of a register-resident 4x16 tile (data in L1), either the
 *     exact step eightbit uses on AVX2 (vpsignb, vpmaddubsw, vpmaddwd, vpaddd per 32 products) or the
 *     saturating u8s8 step of MLAS / ONNX Runtime (vpmaddubsw, vpmaddwd, vpaddd). Written in assembly so both
 *     get the same scheduling (the compiler spills registers in the saturating form).
 *   eb_probe_gather: 8-lane vpgatherdd lookups into a 1 KB table (the code maps of the 8-bit formats).
 *   eb_probe_divide: 8-lane float32 divisions (vdivps) in independent chains, the divider's throughput; the 8-bit
 *     optimizer step divides 6 times per parameter to match its reference bit for bit.
 * Returns 0 where AVX2 or x86-64 GNU assembly is unavailable. */
#include <stdint.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

#if defined(__AVX2__) && defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define EB_K 256
static int8_t A[4][EB_K] __attribute__((aligned(64)));
static int8_t B[EB_K * 16] __attribute__((aligned(64)));
static const int16_t ONES[16] __attribute__((aligned(32))) = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};

#define ACC_INIT                                                                                                 \
    "vmovdqa (%[ones]), %%ymm12\n\t"                                                                             \
    "vpxor %%ymm4,%%ymm4,%%ymm4\n\t vpxor %%ymm5,%%ymm5,%%ymm5\n\t vpxor %%ymm6,%%ymm6,%%ymm6\n\t"              \
    "vpxor %%ymm7,%%ymm7,%%ymm7\n\t vpxor %%ymm8,%%ymm8,%%ymm8\n\t vpxor %%ymm9,%%ymm9,%%ymm9\n\t"              \
    "vpxor %%ymm10,%%ymm10,%%ymm10\n\t vpxor %%ymm11,%%ymm11,%%ymm11\n\t"
#define LOOP_END "add $4, %[a]\n\t add $4, %[a3]\n\t add $64, %[b]\n\t dec %[nq]\n\t jnz 1b\n\t"
#define EXACT_ROW(ADDR, C0, C1)                                                                                  \
    "vpbroadcastd " ADDR ", %%ymm2\n\t"                                                                          \
    "vpsignb %%ymm0, %%ymm2, %%ymm3\n\t vpmaddubsw %%ymm3, %%ymm13, %%ymm3\n\t"                                 \
    "vpmaddwd %%ymm12, %%ymm3, %%ymm3\n\t vpaddd %%ymm3, " C0 ", " C0 "\n\t"                                     \
    "vpsignb %%ymm1, %%ymm2, %%ymm2\n\t vpmaddubsw %%ymm2, %%ymm14, %%ymm2\n\t"                                 \
    "vpmaddwd %%ymm12, %%ymm2, %%ymm2\n\t vpaddd %%ymm2, " C1 ", " C1 "\n\t"
#define SAT_ROW(ADDR, C0, C1)                                                                                    \
    "vpbroadcastd " ADDR ", %%ymm2\n\t"                                                                          \
    "vpmaddubsw %%ymm0, %%ymm2, %%ymm3\n\t vpmaddwd %%ymm12, %%ymm3, %%ymm3\n\t vpaddd %%ymm3, " C0 ", " C0 "\n\t" \
    "vpmaddubsw %%ymm1, %%ymm2, %%ymm2\n\t vpmaddwd %%ymm12, %%ymm2, %%ymm2\n\t vpaddd %%ymm2, " C1 ", " C1 "\n\t"
#define CLOBBERS "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", \
                 "xmm11", "xmm12", "xmm13", "xmm14"

/* One 4x16 tile over nq k-groups; ROW is the per-row step (exact or saturating), PREP what each k-group needs. */
#define DEFINE_TILE(NAME, PREP, ROW)                                                                             \
    static void NAME(const int8_t *a, const int8_t *b, int64_t nq) {                                            \
        const int8_t *a3 = a + 3 * EB_K;                                                                         \
        const int64_t lda = EB_K;                                                                                \
        __asm__ volatile(ACC_INIT "1:\n\t"                                                                       \
                         "vmovdqu (%[b]), %%ymm0\n\t vmovdqu 32(%[b]), %%ymm1\n\t" PREP                         \
                         ROW("(%[a])", "%%ymm4", "%%ymm5") ROW("(%[a],%[lda])", "%%ymm6", "%%ymm7")             \
                         ROW("(%[a],%[lda],2)", "%%ymm8", "%%ymm9") ROW("(%[a3])", "%%ymm10", "%%ymm11")        \
                         LOOP_END                                                                               \
                         : [a] "+r"(a), [a3] "+r"(a3), [b] "+r"(b), [nq] "+r"(nq)                               \
                         : [lda] "r"(lda), [ones] "r"(ONES)                                                     \
                         : CLOBBERS);                                                                           \
    }
DEFINE_TILE(tile_exact, "vpabsb %%ymm0, %%ymm13\n\t vpabsb %%ymm1, %%ymm14\n\t", EXACT_ROW)
DEFINE_TILE(tile_saturating, "", SAT_ROW)

/* Products per second (x 1e9) of the 4x16 tile over K = 256, repeated ``reps`` times. */
double eb_probe_int8_tile(int exact, int64_t reps) {
    for (int i = 0; i < 4 * EB_K; i++) (&A[0][0])[i] = (int8_t)((i * 7) % 255 - 127);
    for (int i = 0; i < EB_K * 16; i++) B[i] = (int8_t)((i * 13) % 255 - 127);
    for (int r = 0; r < 1000; r++) exact ? tile_exact(&A[0][0], B, EB_K / 4) : tile_saturating(&A[0][0], B, EB_K / 4);
    const double t0 = now();
    for (int64_t r = 0; r < reps; r++) exact ? tile_exact(&A[0][0], B, EB_K / 4) : tile_saturating(&A[0][0], B, EB_K / 4);
    return (double)reps * EB_K * 64 / (now() - t0) * 1e-9;
}

/* Gathered 32-bit lanes per second (x 1e9): 8-lane gathers from a 256-entry float table, indices from bytes. */
double eb_probe_gather(int64_t reps) {
    static float table[256] __attribute__((aligned(64)));
    static uint8_t idx[4096] __attribute__((aligned(64)));
    for (int i = 0; i < 256; i++) table[i] = (float)i;
    for (int i = 0; i < 4096; i++) idx[i] = (uint8_t)((i * 167) & 255);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    const double t0 = now();
    for (int64_t r = 0; r < reps; r++)
        for (int i = 0; i < 4096; i += 16) {
            const __m256i i0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(idx + i)));
            const __m256i i1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(idx + i + 8)));
            acc0 = _mm256_add_ps(acc0, _mm256_i32gather_ps(table, i0, 4));
            acc1 = _mm256_add_ps(acc1, _mm256_i32gather_ps(table, i1, 4));
        }
    const double t = now() - t0;
    float sink[8];
    _mm256_storeu_ps(sink, _mm256_add_ps(acc0, acc1));
    return sink[0] < 0 ? 0.0 : (double)reps * 4096 / t * 1e-9;
}

/* Float32 divisions per second (x 1e9), 8 lanes at a time in 8 independent chains (throughput, not latency). */
double eb_probe_divide(int64_t reps) {
    __m256 x[8];
    const __m256 d = _mm256_set1_ps(1.0000001f);
    for (int j = 0; j < 8; j++) x[j] = _mm256_set1_ps(1.0f + (float)j);
    const double t0 = now();
    for (int64_t r = 0; r < reps; r++) {
        x[0] = _mm256_div_ps(x[0], d), x[1] = _mm256_div_ps(x[1], d), x[2] = _mm256_div_ps(x[2], d);
        x[3] = _mm256_div_ps(x[3], d), x[4] = _mm256_div_ps(x[4], d), x[5] = _mm256_div_ps(x[5], d);
        x[6] = _mm256_div_ps(x[6], d), x[7] = _mm256_div_ps(x[7], d);
    }
    const double t = now() - t0;
    float sink[8];
    __m256 s = x[0];
    for (int j = 1; j < 8; j++) s = _mm256_add_ps(s, x[j]);
    _mm256_storeu_ps(sink, s);
    return sink[0] < 0 ? 0.0 : (double)reps * 64 / t * 1e-9;
}
#else
double eb_probe_int8_tile(int exact, int64_t reps) { (void)exact, (void)reps; return 0.0; }
double eb_probe_gather(int64_t reps) { (void)reps; return 0.0; }
double eb_probe_divide(int64_t reps) { (void)reps; return 0.0; }
#endif
