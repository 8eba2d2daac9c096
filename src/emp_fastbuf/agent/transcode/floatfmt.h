/* float.__repr__ for the fixed-point range, without dtoa: the store's attribute JSON
   writes every float as Python's repr does (agent/transcode/_rows.pxi, json_f64), and
   this covers the common values at a fraction of PyOS_double_to_string's cost. */
#ifndef EMP_FASTBUF_FLOATFMT_H
#define EMP_FASTBUF_FLOATFMT_H

#include <stdint.h>
#include <string.h>
/* float.__repr__ of d when 1e-4 <= |d| < 2**53 (the fixed-point notation), found
   exactly with 128-bit integers, without dtoa's big numbers. With |d| = M * 2**-s,
   the numbers that read back as d lie within 2**-s / 2 of it (2**-s / 4 below it when
   M is a power of two). repr's digits are the fewest fraction digits f for which a
   decimal m / 10**f lies strictly inside that interval and, of the two candidates
   around d, the closer one. Writes at most 48 bytes; returns their count, or 0 to
   leave the value to PyOS_double_to_string: out of range, a candidate on the edge of
   the interval, or two candidates equally close. */
static int emp_fixed_repr(double d, char *out) {
#if defined(__SIZEOF_INT128__)
    typedef unsigned __int128 u128;
    uint64_t bits, frac, M, m = 0;
    double a = d < 0 ? -d : d;
    int s, f, nd, i, n = 0, low_shift, in_low, in_up;
    u128 X, p10 = 1, r, one, dl, du, q;
    char digits[24];
    if (!(a >= 1e-4 && a < 9007199254740992.0))
        return 0;
    memcpy(&bits, &a, 8);
    frac = bits & ((1ULL << 52) - 1);
    M = frac | (1ULL << 52);
    s = 1075 - (int)(bits >> 52);  /* |d| = M * 2**-s, 0 <= s <= 66 */
    low_shift = frac == 0 ? 2 : 1;  /* the gap below a power of two is half as wide */
    one = (u128)1 << s;
    X = M;
    for (f = 0; f <= 21; f++) {
        if (f) {
            X *= 10;  /* M * 10**f < 2**53 * 10**21 < 2**123 */
            p10 *= 10;
        }
        q = X >> s;
        r = X & (one - 1);
        if (q >= ((u128)1 << 62))
            return 0;
        if (r == 0) {  /* |d| * 10**f is an integer */
            m = (uint64_t)q;
            break;
        }
        /* candidates q (|d| * 10**f - r / 2**s) and q + 1 (+ (2**s - r) / 2**s):
           inside when their distance times 10**-f is below the gap on their side */
        dl = r << low_shift;
        du = (one - r) << 1;
        if (dl == p10 || du == p10)
            return 0;
        in_low = dl < p10;
        in_up = du < p10;
        if (in_low && in_up) {
            if (r == one - r)
                return 0;
            in_low = r < one - r;
            in_up = !in_low;
        }
        if (in_low) {
            m = (uint64_t)q;
            break;
        }
        if (in_up) {
            m = (uint64_t)q + 1;
            break;
        }
    }
    if (f > 21 || (f && m % 10 == 0))
        return 0;
    nd = 0;
    do {
        digits[nd++] = (char)('0' + m % 10);
        m /= 10;
    } while (m);
    if (d < 0)
        out[n++] = '-';
    if (nd > f) {
        for (i = nd - 1; i >= f; i--)
            out[n++] = digits[i];
        out[n++] = '.';
        if (f == 0)
            out[n++] = '0';
    } else {
        out[n++] = '0';
        out[n++] = '.';
        for (i = 0; i < f - nd; i++)
            out[n++] = '0';
    }
    for (i = f - 1 < nd - 1 ? f - 1 : nd - 1; i >= 0; i--)
        out[n++] = digits[i];
    return n;
#else
    (void)d;
    (void)out;
    return 0;
#endif
}

#endif /* EMP_FASTBUF_FLOATFMT_H */
