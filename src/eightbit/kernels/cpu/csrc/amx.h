/* AMX's shared pieces (included by int8_amx.h and fp8_gemm.c where the compiler targets AMX): the process's
 * permission to use the tile state, and the one tile configuration both GEMMs use. */
#ifndef EIGHTBIT_AMX_H
#define EIGHTBIT_AMX_H
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define EB_AMX_ARCH_REQ_XCOMP_PERM 0x1023
#define EB_AMX_XFEATURE_XTILEDATA 18

/* Whether this process may use AMX's tiles (asked once) and EIGHTBIT_AMX is not "0" (read on every call: tests
 * switch it to compare both nests). */
static int amx_usable(void) {
    static int granted = -1; /* racing first callers both ask: the request is idempotent */
    if (granted < 0) granted = syscall(SYS_arch_prctl, EB_AMX_ARCH_REQ_XCOMP_PERM, EB_AMX_XFEATURE_XTILEDATA) == 0;
    const char *env = getenv("EIGHTBIT_AMX");
    return granted && !(env && env[0] == '0' && env[1] == 0);
}

/* The 64-byte tile configuration: palette 1; tiles 0 and 3 the sums (rows x 16 int32 or float32), tile 1 the
 * activations (rows x 64 bytes), tiles 2 and 4 16 rows of a panel (16 x 64 bytes: 16 k-groups of 4 bytes, or 16
 * pairs of bfloat16, for 16 columns); 3 and 4 serve a second panel swept with the same activation tiles. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed, aligned(64))) amx_cfg_t;

/* Loads a configuration of tiles 0..7 with rows[i] rows (0: unused) of 64 bytes each. */
static void amx_config_rows(const uint8_t rows[8]) {
    amx_cfg_t c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int i = 0; i < 8; i++)
        if (rows[i]) c.rows[i] = rows[i], c.colsb[i] = 64;
    _tile_loadconfig(&c);
}

static void amx_config(int rows) {
    const uint8_t r = (uint8_t)rows, t[8] = {r, r, 16, r, 16, 0, 0, 0};
    amx_config_rows(t);
}
#endif
