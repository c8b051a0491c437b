/* Shortest round-trip decimal digits of a double (what repr() and Go's
 * strconv.AppendFloat(v, fmt, -1, 64) print), by Ulf Adams' Ryu method: the interval of
 * decimals that read back as v is scaled by one 128-bit power of five and the shortest
 * decimal inside it is found with 64-bit integer arithmetic only. The power tables are
 * filled from exact big-integer arithmetic at import (kernels.pyx, _shortest_tables), so no
 * table is written out here. Among several shortest candidates the one nearest to v is taken
 * (ties to even), as repr() does; tests/promql/test_format_value.py checks that against
 * repr() over millions of values. */
#ifndef URDAR_SHORTEST_H
#define URDAR_SHORTEST_H
#include <stdint.h>
#include <string.h>

#define URDAR_POW5_INV_N 342
#define URDAR_POW5_N 326
#define URDAR_POW5_BITS 125

/* [i][0] low 64 bits, [i][1] high 64 bits:
 * inv[i] = floor(2^(bitlen(5^i) - 1 + 125) / 5^i) + 1; pow5[i] = 5^i scaled to 125 bits. */
static uint64_t urdar_pow5_inv[URDAR_POW5_INV_N][2];
static uint64_t urdar_pow5[URDAR_POW5_N][2];

static inline int32_t urdar_pow5bits(int32_t e) {   /* bit length of 5^e, 0 <= e <= 3528 */
    return (int32_t)(((uint32_t)e * 1217359u) >> 19) + 1;
}
static inline uint32_t urdar_log10_pow2(int32_t e) {  /* floor(log10(2^e)), 0 <= e <= 1650 */
    return ((uint32_t)e * 78913u) >> 18;
}
static inline uint32_t urdar_log10_pow5(int32_t e) {  /* floor(log10(5^e)), 0 <= e <= 2620 */
    return ((uint32_t)e * 732923u) >> 20;
}
static inline uint32_t urdar_pow5_factor(uint64_t v) {
    uint32_t n = 0;
    while (v % 5 == 0) { v /= 5; n++; }
    return n;
}
/* (m * mul) >> j for a 128-bit mul, j > 64. */
static inline uint64_t urdar_mul_shift(uint64_t m, const uint64_t *mul, int32_t j) {
    unsigned __int128 lo = (unsigned __int128)m * mul[0];
    unsigned __int128 hi = (unsigned __int128)m * mul[1];
    return (uint64_t)(((lo >> 64) + hi) >> (j - 64));
}

/* For finite v > 0: the shortest digits as an integer and its power of ten. */
static inline void urdar_shortest(double v, uint64_t *digits, int32_t *exp10) {
    if (v < 9007199254740992.0 && v == (double)(uint64_t)v) {
        /* A whole number below 2^53: its neighbours are at most 1 away, so no other decimal
         * with as few digits reads back as it; its own digits, trailing zeros as exponent. */
        uint64_t d = (uint64_t)v;
        int32_t e = 0;
        while (d % 10 == 0) { d /= 10; e++; }
        *digits = d;
        *exp10 = e;
        return;
    }
    uint64_t bits;
    memcpy(&bits, &v, 8);
    uint64_t frac = bits & ((1ull << 52) - 1);
    uint32_t bexp = (uint32_t)((bits >> 52) & 0x7ff);
    int32_t e2;
    uint64_t m2;
    if (bexp == 0) {
        e2 = 1 - 1023 - 52 - 2;
        m2 = frac;
    } else {
        e2 = (int32_t)bexp - 1023 - 52 - 2;
        m2 = (1ull << 52) | frac;
    }
    /* v = m2 * 2^(e2+2); the midpoints to its neighbours are (4m2 +- 2) * 2^e2, the lower one
     * nearer when v is a power of two (but not the smallest normal). Round-half-even reading
     * includes the bounds when m2 is even. */
    int accept = (m2 & 1) == 0;
    uint64_t mv = 4 * m2;
    uint32_t mm_shift = frac != 0 || bexp <= 1;
    uint64_t vr, vp, vm;
    int32_t e10;
    int vm_tz = 0, vr_tz = 0;
    if (e2 >= 0) {
        uint32_t q = urdar_log10_pow2(e2) - (e2 > 3);
        e10 = (int32_t)q;
        int32_t k = URDAR_POW5_BITS + urdar_pow5bits((int32_t)q) - 1;
        int32_t i = -e2 + (int32_t)q + k;
        const uint64_t *mul = urdar_pow5_inv[q];
        vr = urdar_mul_shift(4 * m2, mul, i);
        vp = urdar_mul_shift(4 * m2 + 2, mul, i);
        vm = urdar_mul_shift(4 * m2 - 1 - mm_shift, mul, i);
        if (q <= 21) {
            /* Only here can the scaled values be exact integers (trailing zeros matter). */
            if (mv % 5 == 0) {
                vr_tz = urdar_pow5_factor(mv) >= q;
            } else if (accept) {
                vm_tz = urdar_pow5_factor(mv - 1 - mm_shift) >= q;
            } else {
                vp -= urdar_pow5_factor(mv + 2) >= q;
            }
        }
    } else {
        uint32_t q = urdar_log10_pow5(-e2) - (-e2 > 1);
        e10 = (int32_t)q + e2;
        int32_t i = -e2 - (int32_t)q;
        int32_t k = urdar_pow5bits(i) - URDAR_POW5_BITS;
        int32_t j = (int32_t)q - k;
        const uint64_t *mul = urdar_pow5[i];
        vr = urdar_mul_shift(4 * m2, mul, j);
        vp = urdar_mul_shift(4 * m2 + 2, mul, j);
        vm = urdar_mul_shift(4 * m2 - 1 - mm_shift, mul, j);
        if (q <= 1) {
            vr_tz = 1;
            if (accept) {
                vm_tz = mm_shift == 1;
            } else {
                --vp;
            }
        } else if (q < 63) {
            vr_tz = (mv & ((1ull << q) - 1)) == 0;
        }
    }
    /* Drop digits while the interval [vm, vp] still holds a shorter decimal. */
    int32_t removed = 0;
    uint32_t last = 0;
    uint64_t out;
    if (vm_tz || vr_tz) {
        for (;;) {
            uint64_t vp10 = vp / 10, vm10 = vm / 10;
            if (vp10 <= vm10) break;
            uint32_t vm_mod = (uint32_t)(vm - 10 * vm10);
            uint64_t vr10 = vr / 10;
            uint32_t vr_mod = (uint32_t)(vr - 10 * vr10);
            vm_tz &= vm_mod == 0;
            vr_tz &= last == 0;
            last = vr_mod;
            vr = vr10; vp = vp10; vm = vm10;
            ++removed;
        }
        if (vm_tz) {
            for (;;) {
                uint64_t vm10 = vm / 10;
                uint32_t vm_mod = (uint32_t)(vm - 10 * vm10);
                if (vm_mod != 0) break;
                uint64_t vp10 = vp / 10, vr10 = vr / 10;
                uint32_t vr_mod = (uint32_t)(vr - 10 * vr10);
                vr_tz &= last == 0;
                last = vr_mod;
                vr = vr10; vp = vp10; vm = vm10;
                ++removed;
            }
        }
        if (vr_tz && last == 5 && vr % 2 == 0) {
            last = 4;   /* exactly halfway: round to even */
        }
        out = vr + ((vr == vm && (!accept || !vm_tz)) || last >= 5);
    } else {
        int round_up = 0;
        while (vp / 10 > vm / 10) {
            round_up = vr % 10 >= 5;
            vr /= 10; vp /= 10; vm /= 10;
            ++removed;
        }
        out = vr + (vr == vm || round_up);
    }
    *digits = out;
    *exp10 = e10 + removed;
}

/* Decimal text of a (no sign) into out (>= 20 bytes), two digits per division; its length. */
static inline int urdar_u64_text(char *out, uint64_t a) {
    static const char pairs[201] =
        "0001020304050607080910111213141516171819202122232425262728293031323334353637383940414243444546474849"
        "5051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";
    char tmp[24];
    char *p = tmp + 24;
    while (a >= 100) {
        unsigned r = (unsigned)(a % 100);
        a /= 100;
        p -= 2;
        memcpy(p, pairs + 2 * r, 2);
    }
    if (a >= 10) {
        p -= 2;
        memcpy(p, pairs + 2 * a, 2);
    } else {
        *--p = (char)('0' + a);
    }
    int n = (int)(tmp + 24 - p);
    memcpy(out, p, n);
    return n;
}

#endif
