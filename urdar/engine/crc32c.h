/* CRC-32C (Castagnoli), the checksum of every Prometheus TSDB file section.
 *
 * Hardware path: SSE4.2's crc32 instruction, chosen at run time (the build machine
 * and the CI machine may differ). Software path: slice-by-8 tables built once.
 * All functions are pure C and safe to call without the GIL. */
#ifndef URDAR_CRC32C_H
#define URDAR_CRC32C_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

static uint32_t urdar_crc32c_table[8][256];
static int urdar_crc32c_mode = 0; /* 0 = not initialised, 1 = software, 2 = sse4.2 */

static void urdar_crc32c_init(void) {
    const uint32_t poly = 0x82F63B78u; /* reflected Castagnoli polynomial */
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ poly : (c >> 1);
        urdar_crc32c_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = urdar_crc32c_table[0][i];
        for (int t = 1; t < 8; t++) {
            c = urdar_crc32c_table[0][c & 0xff] ^ (c >> 8);
            urdar_crc32c_table[t][i] = c;
        }
    }
    urdar_crc32c_mode = 1;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2")) urdar_crc32c_mode = 2;
#endif
}

static uint32_t urdar_crc32c_sw(uint32_t crc, const uint8_t *p, size_t n) {
    crc = ~crc;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        w = __builtin_bswap64(w);
#endif
        w ^= crc;
        crc = urdar_crc32c_table[7][w & 0xff] ^ urdar_crc32c_table[6][(w >> 8) & 0xff] ^
              urdar_crc32c_table[5][(w >> 16) & 0xff] ^ urdar_crc32c_table[4][(w >> 24) & 0xff] ^
              urdar_crc32c_table[3][(w >> 32) & 0xff] ^ urdar_crc32c_table[2][(w >> 40) & 0xff] ^
              urdar_crc32c_table[1][(w >> 48) & 0xff] ^ urdar_crc32c_table[0][w >> 56];
        p += 8; n -= 8;
    }
    while (n--) crc = urdar_crc32c_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("sse4.2")))
static uint32_t urdar_crc32c_hw(uint32_t crc, const uint8_t *p, size_t n) {
    uint64_t c = ~crc;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
        p += 8; n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}
#endif

/* Continue a CRC: pass 0 to start. crc32c(crc32c(0, a), b) == crc32c(0, a+b). */
static inline uint32_t urdar_crc32c(uint32_t crc, const uint8_t *p, size_t n) {
    if (urdar_crc32c_mode == 0) urdar_crc32c_init();
#if defined(__x86_64__) && defined(__GNUC__)
    if (urdar_crc32c_mode == 2) return urdar_crc32c_hw(crc, p, n);
#endif
    return urdar_crc32c_sw(crc, p, n);
}

#endif
