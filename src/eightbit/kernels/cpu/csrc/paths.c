/* Which instruction-set code paths this build of the native library contains (-march=native, narrowed by
 * EIGHTBIT_NATIVE_ISA), for `eightbit env`: a bit mask, named by eightbit.env.NATIVE_PATHS in bit order. */
int eb_code_paths(void) {
    int m = 0;
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    m |= 1 << 0; /* 8-lane passes: block-wise codes, optimizer, int8 GEMM */
#endif
#if defined(__AVX512F__) && defined(__AVX512CD__) && defined(__AVX512BW__)
    m |= 1 << 1; /* 16-lane optimizer passes and encoders */
#endif
#if defined(__AVX512VBMI__) && defined(__AVX512BW__) && defined(__AVX512CD__)
    m |= 1 << 2; /* optimizer: block scales folded into byte-table decoding */
#endif
#if defined(__AVX512VNNI__) && defined(__AVX512VL__) && defined(__AVX512BW__)
    m |= 1 << 3; /* int8 GEMM on VNNI tiles */
#endif
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    m |= 1 << 4; /* FP8 GEMM as bf16 dot products */
#endif
#if defined(__AVX2__) && defined(__AVX512F__) && defined(__AMX_TILE__) && defined(__AMX_INT8__)
    m |= 1 << 5; /* int8 GEMM on AMX tiles (int8_amx.h), where the OS grants the tile state */
#endif
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AMX_TILE__) && \
    defined(__AMX_BF16__)
    m |= 1 << 6; /* FP8 GEMM on AMX-BF16 tiles */
#endif
    return m;
}
