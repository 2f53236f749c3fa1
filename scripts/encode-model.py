#!/usr/bin/env python3
# A model of paged_cache.cu's INT encode, checked without a GPU (pure Python; exit status 1 on any difference):
#   python3 scripts/encode-model.py [CASES [MUTATION]]     (CASES numerators per code range, default 5000: ~1 min)
# 1. nearest_code (BlockCodec's rint(RN(d / s)) from a float32 quotient and the exact signs of d - (q ± 0.5)·s) against
#    float64 division rounded half to even, and that against the exact rational quotient: for every code range (INT8/4/2,
#    ternary), float16 scales of every magnitude (subnormal ones too), numerators at and 1-50 ulps beside exact ties,
#    encode-like numerators (float32 x minus a float16 min), the half grid, huge and tiny values and ±inf. The float32
#    quotient is taken 0, ±1 and ±2 ulps off (__fdividef's bound) and with subnormal numerators flushed to zero.
# 2. int_group_params + int_codes<BITS> (the unrolled passes paged_rope_append takes) against the element-order loops,
#    byte for byte: hd 16-128, value groups 16-128, blocks of 1-64 tokens, n < tokens (rows past n must not count),
#    signed zeros (PTX min/max order -0 below +0, as .NET's Math.Min/Max do; a first-wins min would differ).
# 3. How many codes of the GPU check "paged: device append = CPU codec bytes" rows on a grid of halves are exact ties.
# MUTATION (each must make the script fail): half-up (ties round up), no-settle (the float32 quotient's rint as the code),
# no-wrap (value groups read from member g mod vg on without wrapping).
import math
import random
import struct
import sys
from fractions import Fraction as F

CASES = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
MUTATE = sys.argv[2] if len(sys.argv) > 2 else ""
assert MUTATE in ("", "half-up", "no-settle", "no-wrap"), MUTATE


def f32(x):
    if math.isnan(x) or math.isinf(x):
        return x
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def f32_step(x, up):
    if math.isnan(x) or math.isinf(x):
        return x
    b = struct.unpack("<I", struct.pack("<f", x))[0]
    if x == 0:
        b = 1 if up else 0x80000001
    elif (x > 0) == up:
        b += 1
    else:
        b -= 1
    return struct.unpack("<f", struct.pack("<I", b))[0]


def f16_saturated(x):  # paged_cache.cu f16_saturated / ScalarFormats.ToF16Saturated: bits
    if x != x:
        x = 0.0
    x = -65504.0 if x < -65504.0 else 65504.0 if x > 65504.0 else x
    return struct.unpack("<H", struct.pack("<e", x))[0]


def f16(bits):
    return struct.unpack("<e", struct.pack("<H", bits))[0]


def clamp(v, lo, hi):
    return lo if v < lo else hi if v > hi else v


def codec_code(d, s, lo, hi):
    """BlockCodec: (int)Math.Clamp(Math.Round(d / s, ToEven), lo, hi) in float64."""
    q = d / s
    if math.isnan(q):
        return 0  # .NET's (int)NaN
    if math.isinf(q):
        return hi if q > 0 else lo
    return clamp(round(q), lo, hi)


def exact_code(d, s, lo, hi):
    q = F(d) / F(s)
    fl = math.floor(q)
    fr = q - fl
    return clamp(fl + (1 if fr > F(1, 2) or (fr == F(1, 2) and fl % 2) else 0), lo, hi)


def nearest_code(d, s, lo, hi, ulps=0, ftz=False):
    """paged_cache.cu nearest_code; ulps: the float32 quotient's error, ftz: subnormal numerators flushed."""
    df = f32(d)
    if ftz and abs(df) < 2.0**-126:
        df = math.copysign(0.0, df)
    qf = f32(df / f32(s))
    for _ in range(abs(ulps)):
        qf = f32_step(qf, ulps > 0)
    r = qf if math.isnan(qf) or math.isinf(qf) else float(round(qf))
    r = float(lo - 1) if math.isnan(r) else max(r, float(lo - 1))  # fmaxf returns the other operand for NaN
    q = int(min(r, float(hi + 1)))
    if MUTATE == "no-settle":
        return clamp(q, lo, hi)

    def sign(a):  # fma(-a, s, d): d - a·s rounded once, so its sign and zero are the exact ones
        if math.isnan(d):
            return None
        if math.isinf(d):
            return 1 if d > 0 else -1
        v = F(d) - F(a) * F(s)
        return (v > 0) - (v < 0)

    above, below = sign(q + 0.5), sign(q - 0.5)
    odd = True if MUTATE == "half-up" else bool(q & 1)
    if above is not None and (above > 0 or (above == 0 and odd)):
        q += 1
    elif below is not None and (below < 0 or (below == 0 and (False if MUTATE == "half-up" else q & 1))):
        q -= 1
    return clamp(q, lo, hi)


def check_codes(rng):
    scales = [f16(b) for b in range(1, 0x7C00)]  # every positive finite float16
    cases = ties = 0
    failures = []

    def one(d, s, lo, hi):
        nonlocal cases, ties
        cases += 1
        want = codec_code(d, s, lo, hi)
        if math.isfinite(d):
            if exact_code(d, s, lo, hi) != want:
                failures.append(f"float64 division {d!r} / {s!r} in [{lo}, {hi}]: {want}, exact {exact_code(d, s, lo, hi)}")
            ties += (F(d) / F(s)).denominator == 2
        for ulps in (-2, -1, 0, 1, 2):
            for ftz in (False, True):
                got = nearest_code(d, s, lo, hi, ulps, ftz)
                if got != want:
                    failures.append(f"nearest_code({d!r}, {s!r}, {lo}, {hi}) = {got} ({ulps:+d} ulps, ftz {ftz}), BlockCodec {want}")
                    return

    for lo, hi in ((0, 255), (0, 15), (0, 3), (-1, 1)):
        for _ in range(CASES):
            s = rng.choice(scales)
            d = rng.randint(2 * (lo - 3), 2 * (hi + 3)) / 2 * s  # an integer or a tie (exact: at most 21 bits)
            for _ in range(rng.choice((0, 0, 1, 2, 3, 50))):
                d = math.nextafter(d, rng.choice((math.inf, -math.inf)))
            one(d, s, lo, hi)
            x = f32(rng.uniform(-1, 1) * 10 ** rng.uniform(-45, 38))
            one(x if lo < 0 else x - rng.choice(scales) * rng.choice((1, -1)), s, lo, hi)
            one(0.5 * rng.randint(0, 60) * rng.choice((1, 2.0**-20, 2.0**10)), s, lo, hi)
        for s in (2.0**-24, 6.1e-5, 1.0, 5.0, 65504.0):
            for d in (math.inf, -math.inf, 0.0, -0.0, 3.4028234663852886e38 + 65504, 2.0**-149, -(2.0**-149), 1e-300):
                one(d, s, lo, hi)
            if lo == 0:  # a NaN numerator: lo, as BlockCodec's (int)NaN; the ternary scale of a group with a NaN is 0
                one(math.nan, s, lo, hi)
    return cases, ties, failures


def ptx_min(a, b):  # min.f32 / min.f64: -0.0 below +0.0 (NaN is not in the data)
    return a if a < b or (a == b and math.copysign(1, a) < 0) else b


def ptx_max(a, b):
    return a if a > b or (a == b and math.copysign(1, a) > 0) else b


def element_order(rows, n, bits, keys, tokens, hd, vg):
    """encode_block's element-order INT passes (pass 1 per group in member order, pass 2 per word)."""
    qmax, per_row = (1 << bits) - 1, hd // vg
    groups = hd if keys else tokens * per_row
    sc, mn = [0] * groups, [0] * groups
    for g in range(groups):
        count, lo, hi = 0, 1e300, -1e300
        for k in range(tokens if keys else vg):
            t = k if keys else g // per_row
            if t >= n:
                break
            x = rows[k * hd + g] if keys else rows[t * hd + (g % per_row) * vg + k]
            count += 1
            lo, hi = ptx_min(lo, x), ptx_max(hi, x)
        if count:
            sc[g], mn[g] = f16_saturated((hi - lo) / qmax), f16_saturated(lo)
    per_word, words = 32 // bits, tokens * hd * bits // 32
    out = []
    for wi in range(words):
        word = 0
        for i in range(per_word):
            t, c = divmod(wi * per_word + i, hd)
            if t >= n:
                break
            g = c if keys else t * per_row + c // vg
            s = f16(sc[g])
            word |= (nearest_code(rows[t * hd + c] - f16(mn[g]), s, 0, qmax) if s > 0 else 0) << (i * bits)
        out.append(word)
    return sc, mn, out


def int_group_params(rows, n, keys, hd, vg, g, qmax):
    """paged_cache.cu's int_group_params: group g's (scale, min) bits, four min/max chains, a value group's members taken
    from member g mod vg on (scripts/split-append-model.py runs it per block too)."""
    per_row = hd // vg
    t = 0 if keys else g // per_row
    count = n if keys else vg if t < n else 0
    stride = hd if keys else 1
    base = g if keys else t * hd + (g % per_row) * vg
    first = 0 if keys or count == 0 else g % count

    def member(k):
        i = first + k
        if i >= count:
            if MUTATE == "no-wrap":  # the next group's members (or the block's last element)
                return rows[min(base + i * stride, len(rows) - 1)]
            i -= count
        return rows[base + i * stride]

    lo, hi = [math.inf] * 4, [-math.inf] * 4
    k = 0
    while k + 4 <= count:
        for j in range(4):
            x = member(k + j)
            lo[j], hi[j] = ptx_min(lo[j], x), ptx_max(hi[j], x)
        k += 4
    while k < count:
        lo[0], hi[0] = ptx_min(lo[0], member(k)), ptx_max(hi[0], member(k))
        k += 1
    if count == 0:
        return 0, 0
    lo_ = ptx_min(ptx_min(lo[0], lo[1]), ptx_min(lo[2], lo[3]))
    hi_ = ptx_max(ptx_max(hi[0], hi[1]), ptx_max(hi[2], hi[3]))
    return f16_saturated((hi_ - lo_) / qmax), f16_saturated(lo_)


def int_code_word(bits, rows, n, keys, hd, vg, scales, mins, wi):
    """paged_cache.cu's int_code_word<BITS>: word wi (one token's 32 / bits channels) of the block's codes."""
    per_word, qmax, per_row = 32 // bits, (1 << bits) - 1, hd // vg
    e0 = wi * per_word
    t, c0 = divmod(e0, hd)
    word = 0
    if t < n:
        for i in range(per_word):
            c = c0 + i
            g = c if keys else t * per_row + c // vg
            s = f16(scales[g])
            word |= (nearest_code(rows[e0 + i] - f16(mins[g]), s, 0, qmax) if s > 0 else 0) << (i * bits)
    return word


def unrolled(rows, n, bits, keys, tokens, hd, vg):
    """int_group_params over every group, then int_code_word over every word (int_codes<BITS>)."""
    groups = hd if keys else tokens * (hd // vg)
    params = [int_group_params(rows, n, keys, hd, vg, g, (1 << bits) - 1) for g in range(groups)]
    sc, mn = [p[0] for p in params], [p[1] for p in params]
    return sc, mn, [int_code_word(bits, rows, n, keys, hd, vg, sc, mn, wi) for wi in range(tokens * hd // (32 // bits))]


def check_passes(rng):
    blocks, failures = 0, []
    for hd in (16, 32, 64, 128):
        for vg in (16, 32, 64, 128):
            if vg > hd:
                continue
            for tokens in (1, 4, 16, 32, 64):
                for bits in (8, 4, 2):
                    for keys in (True, False):
                        for n in sorted({1, max(1, tokens // 2), max(1, tokens - 1), tokens}):
                            rows = [f32(rng.choice((0.5 * rng.randrange(31) + i % hd % 5 - 2, rng.uniform(-3, 3), -0.0, 0.0, 1e-40)))
                                    for i in range(n * hd)]
                            rows += [f32(rng.uniform(-9, 9)) for _ in range((tokens - n) * hd)]  # past n: must not count
                            blocks += 1
                            if element_order(rows, n, bits, keys, tokens, hd, vg) != unrolled(rows, n, bits, keys, tokens, hd, vg):
                                failures.append(f"INT{bits} {'keys' if keys else 'values'} hd {hd} vg {vg} tokens {tokens} n {n}: bytes differ")
    return blocks, failures


def check_rows_ties(rng, blocks=100):
    """The GPU check's rows on a grid of halves (hd 128, 32-token blocks, value groups of 32): tie codes per format and axis."""
    hd, tokens, report = 128, 32, []
    for bits in (4, 2):
        qmax = (1 << bits) - 1
        counts = {"keys": [0, 0], "values": [0, 0]}
        for _ in range(blocks):
            rows = [[0.5 * rng.randrange(31) + c % 5 - 2 for c in range(hd)] for _ in range(tokens)]
            axes = {"keys": [[rows[t][c] for t in range(tokens)] for c in range(hd)],
                    "values": [rows[t][j:j + 32] for t in range(tokens) for j in range(0, hd, 32)]}
            for axis, groups in axes.items():
                for g in groups:
                    s, m = f16(f16_saturated((max(g) - min(g)) / qmax)), f16(f16_saturated(min(g)))
                    counts[axis][0] += len(g)
                    counts[axis][1] += sum(s > 0 and (F(x - m) / F(s)).denominator == 2 for x in g)
        report.append(f"INT{bits} ties: keys {100 * counts['keys'][1] / counts['keys'][0]:.1f}%, "
                      f"values {100 * counts['values'][1] / counts['values'][0]:.1f}%")
    return report


rng = random.Random(25)
cases, ties, failures = check_codes(rng)
print(f"nearest_code: {cases} numerators ({ties} exact ties), each at 5 quotient errors x 2 flush modes; {len(failures)} differ")
blocks, pass_failures = check_passes(rng)
print(f"unrolled INT passes: {blocks} blocks against the element-order loops; {len(pass_failures)} differ")
for line in check_rows_ties(rng):
    print(f"GPU check rows on the half grid, {line}")
for f in (failures + pass_failures)[:10]:
    print("  " + f)
sys.exit(1 if failures or pass_failures else 0)
