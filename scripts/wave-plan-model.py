#!/usr/bin/env python3
# Model of a per-layer plan for the pipelined paged attention tried in branch gpukvzip8 (stop 21; its wave_split at commit
# cf2f029, not kept: 7-11% slower a step on an H200, docs/benchmarks.md) and of the plan main keeps (stop 20's chunks;
# paged_attention_tc.cu, wave_split), on the CPU: (1) the tried plan's invariants over random layers
# and plans (every item of every pair served exactly once, a pair's splits consecutive units 0..live-1 with live <= splits,
# at most the plan's Chunk blocks a split, every unit index inside the grid), for host plans (CudaPagedKernels.WaveUnits,
# ported) and the checks' few-blocks plans; (2) the balance of the benchmark's KVzip 0.3 caches (bench-paged: per-head
# lengths drawn by .NET's Random(context) in [0.1, 0.5] of the context, scaled to a mean of 0.3; ported, so the lengths
# are the bench's own) under both plans: mean / longest unit of a layer, with a unit's time modelled as its blocks
# (F16 2.44 us, INT4 1.44 us a block a unit: stop 20's batch-8 rows on an H100), its residual rows by their bytes and
# a fixed part a split of 4.5 us (this branch's estimate) or 10 us (gpugap's measured cost of a round of units).
#   python3 scripts/wave-plan-model.py [TRIALS [SEED]]   (exit status 1 when an invariant fails)
import random, sys, statistics as st

def cdiv(a, b): return -(-a // b)
BIG = 1 << 30
PAIR_BLOCKS, PAIR_COST = 2, 256  # PIPE_PAIR_BLOCKS, PIPE_PAIR_COST

class NetRandom:  # System.Random(seed) (the legacy seeded algorithm: Knuth's subtractive generator)
    MBIG, MSEED = 2147483647, 161803398
    def __init__(s, seed):
        a = [0] * 56; mj = s.MSEED - abs(seed); a[55] = mj; mk = 1
        for i in range(1, 55):
            ii = (21 * i) % 55; a[ii] = mk; mk = mj - mk
            if mk < 0: mk += s.MBIG
            mj = a[ii]
        for _ in range(4):
            for i in range(1, 56):
                a[i] -= a[1 + (i + 30) % 55]
                if a[i] < 0: a[i] += s.MBIG
        s.a, s.i, s.j = a, 0, 21
    def next_double(s):
        s.i = s.i % 55 + 1; s.j = s.j % 55 + 1
        r = s.a[s.i] - s.a[s.j]
        if r == s.MBIG: r -= 1
        if r < 0: r += s.MBIG
        s.a[s.i] = r
        return r / s.MBIG

def bench_lengths(context, batch, layers=32, kvh=8, keep=0.3):  # PagedDecodeBench.Create
    heads = layers * batch * kvh; rnd = NetRandom(context)
    w = [0.1 + 0.4 * rnd.next_double() for _ in range(heads)]
    scale = keep * heads / sum(w)
    return [int(min(context, round(context * x * scale))) for x in w]

def wave_units(blocks, wave, rows, kvh, maxchunk=256):  # CudaPagedKernels.WaveUnits as cf2f029 changed it (2 splits a head at least, the room's last term)
    pairs = rows * kvh
    waves = lambda least: max(1, cdiv(least, wave)) * wave
    def room(u):
        pp, sp = u // pairs, u // rows
        fit = cdiv(blocks, pp)
        if u > pairs: fit = min(fit, cdiv(pairs * blocks, u - pairs))
        return max(fit, cdiv(blocks, sp), blocks // max(sp - 1, 1) + 1)
    units = waves(max(pairs, 2 * rows)); r = room(units)
    if r > maxchunk:
        units = max(units, waves(pairs * cdiv(blocks, maxchunk))); r = min(maxchunk, room(units))
    return units, units // rows, max(1, r)

def weights(b, rows, wb, mode, c):  # wave_weights: (first item, full block, residual, total)
    if mode != 'bytes': return (1, 1, 1, max(b, 1) if mode == 'blocks' else cdiv(max(b, 1), c) * c)
    wr = 16 * rows
    if b <= 0: return (PAIR_COST, 1, 0, PAIR_COST)
    if b == 1: return (PAIR_COST + wr, 1, wr, PAIR_COST + wr)
    return (PAIR_BLOCKS * wb + wb, wb, wr, PAIR_BLOCKS * wb + (b - 1) * wb + wr)

def below(x, s, b, w):  # wave_below: items whose midpoints lie below x
    w0, wb, wr, _ = w
    if x <= s + w0 // 2: return 0
    if b <= 1: return 1
    a = x - s - w0 - wb // 2
    full = min(cdiv(a, wb) if a > 0 else 0, b - 2)
    return 1 + full + (1 if full == b - 2 and x > s + w0 + (b - 2) * wb + wr // 2 else 0)

def plan(bs, rr, wbs, gx, gy, splits, chunk):
    """wave_split for every unit of a grid (gx, gy): per unit, its splits (pair, split, live, b0, nb, items end)."""
    units, P = gx * gy, len(bs)
    n = sum(max(b, 1) for b in bs); chunked = sum(cdiv(max(b, 1), chunk) for b in bs)
    total = ln = lw = 0; gap = 1; light = BIG
    for b, r, wb in zip(bs, rr, wbs):
        w = weights(b, r, wb, 'bytes', chunk); total += w[3]; ln = max(ln, b); lw = max(lw, w[3])
        if b >= 2:
            gap = max(gap, w[0] - w[0] // 2 + (w[1] if b >= 3 else w[2]) // 2)
            if b >= 3: gap = max(gap, w[1] - w[1] // 2 + w[2] // 2)
            light = min(light, w[1])
    equal = min(bs) == ln
    used = units if gy == 1 else min(units, cdiv(chunked if equal else cdiv(n, max(chunk - 2, 1)), gx) * gx)
    per = max(splits - 1, 1)
    mode, r, al, c = 'bytes', max(cdiv(total, used), gap, lw // per + 1), total, chunk
    if equal:
        mode = 'chunks'; r = min(max(cdiv(max(ln, 1), max(used // P, 1)), cdiv(ln, splits), 1), chunk); al = P * cdiv(max(ln, 1), r) * r; c = r
    elif light < BIG and r // light + 2 > chunk:
        mode, r, al = 'blocks', max(cdiv(n, used), 1, max(ln, 1) // per + 1), n
    if mode == 'blocks' and r > chunk: mode, r, al, c = 'chunks', chunk, chunked * chunk, chunk
    last = (al - 1) // r
    assert last < units, ('units', last, units, mode)
    out = []
    for p in range(min(units, last + 1)):
        lo, hi, base, mine = p * r, p * r + r, 0, []
        for i, (b, rw, wb) in enumerate(zip(bs, rr, wbs)):
            w = weights(b, rw, wb, mode, c); s = base; items = max(b, 1)
            first = min((s + w[0] // 2) // r, last)
            lmid = s + w[0] // 2 if items == 1 else s + w[0] + (b - 2) * w[1] + w[2] // 2
            end = min(lmid // r, last)
            if first <= p <= end:
                k0 = below(lo, s, b, w); k1 = items if p == last else below(hi, s, b, w)
                mine.append((i, p - first, end - first + 1, k0, min(k1, b) - k0, k1))
            base += w[3]
        out.append(mine)
    return out, mode

def check(bs, rr, wbs, gx, gy, splits, chunk):
    subs, mode = plan(bs, rr, wbs, gx, gy, splits, chunk)
    seen = {}
    for p, mine in enumerate(subs):
        for i, sp, live, b0, nb, k1 in mine:
            assert 0 <= nb <= chunk, ('room', mode, p, i, nb, chunk)
            assert 0 <= sp < live <= splits, ('splits', mode, i, sp, live, splits)
            assert k1 > b0, ('empty split', mode, p, i)
            seen.setdefault(i, []).append((sp, b0, k1, live))
    for i, b in enumerate(bs):
        got = sorted(seen.get(i, []))
        assert got and [x[0] for x in got] == list(range(got[0][3])), ('split order', mode, i, got)
        items = [k for x in got for k in range(x[1], x[2])]
        assert items == list(range(max(b, 1))), ('coverage', mode, i, items, b)
    return subs, mode

def invariants(trials, seed):
    rnd = random.Random(seed); modes = {}
    for t in range(trials):
        rows, kvh = rnd.choice([1, 1, 2, 3, 8, 16]), rnd.choice([1, 2, 4, 8]); P = rows * kvh
        maxb = rnd.choice([1, 2, 3, 10, 30, 100, 300, 1100, 4100])
        if rnd.random() < 0.5: bs = [rnd.choice([0, 1, 2, 3, maxb]) if rnd.random() < 0.2 else rnd.randint(maxb // 10, maxb // 2) for _ in range(P)]
        else: bs = [rnd.choice([0, 1, 2, maxb]) if rnd.random() < 0.3 else rnd.randint(0, maxb) for _ in range(P)]
        bs = [min(b, maxb) for b in bs]
        if rnd.random() < 0.25: bs = [bs[0]] * P
        rr = [rnd.randint(0, 32) if b >= 1 else 0 for b in bs]
        wbs = [rnd.choice([256, 128, 80, 48])] * P if rnd.random() < 0.7 else [rnd.choice([256, 128, 80, 48]) for _ in range(P)]
        if rnd.random() < 0.65:
            wave = rnd.choice([5, 132, 396, 528, rnd.randint(1, 1200)])
            units, splits, chunk = wave_units(maxb, wave, rows, kvh); gx, gy = wave, units // wave
        else:  # PagedChecks.FewBlocksPlan: grid (splits, KV heads, rows), units never planned by WaveUnits
            few = 1
            while cdiv(maxb, few) > few * 32: few += 1
            chunk, splits = few, cdiv(maxb, few); gx, gy = splits, kvh * rows
        try: _, mode = check(bs, rr, wbs, gx, gy, splits, chunk)
        except AssertionError as e:
            print(f"FAIL trial {t}: rows {rows} kvh {kvh} max {maxb} grid {gx}x{gy} splits {splits} room {chunk}: {e}"); return False
        modes[mode] = modes.get(mode, 0) + 1
    print(f"{trials} random layers and plans: every invariant holds (plans by mode: {modes})")
    return True

def balance(context, batch, fmt, split_us=4.5, res=8):
    """Mean / longest unit of the bench's KVzip 0.3 layers, stop 20's plan and this one ('res': residual rows the 16 steps add, mean)."""
    L = bench_lengths(context, batch); kvh = 8
    tb, bb = {'F16': (2.44, 16384), 'INT4': (1.44, 5120)}[fmt]; tr = tb * 1024 / bb
    wave = 396 if fmt == 'F16' else 528
    units, splits, chunk = wave_units(max(L) // 32 + 2, wave, batch, kvh); gy = units // wave
    old, new, olong, nlong = [], [], [], []
    for l in range(32):
        hl = L[l * batch * kvh:(l + 1) * batch * kvh]
        bs = [x // 32 + 1 for x in hl]; rr = [min(x % 32 + res, 31) for x in hl]
        # stop 20: the smallest chunk c with Σ max(1, ceil(b / c)) <= the target, at least ceil(longest / splits)
        least = max(cdiv(max(bs), splits), 1); target = units
        need = lambda c: sum(max(1, cdiv(b, c)) for b in bs)
        if gy > 1: target = min(units, cdiv(need(chunk), wave) * wave)
        hi = min(cdiv(max(bs), units // len(bs)), cdiv(sum(bs), units - len(bs))) if gy == 1 else chunk
        hi = max(hi, least); lo = max(cdiv(sum(bs), target), least) if (batch > 1 or gy > 1) else hi
        while lo < hi:
            mid = (lo + hi) // 2
            if need(mid) <= target: hi = mid
            else: lo = mid + 1
        c = min(hi, chunk); w = []
        for b, r in zip(bs, rr):
            k = max(1, cdiv(b, c))
            w += [split_us + min(c, b - s * c) * tb + ((r * tr - tb) if s == k - 1 else 0) for s in range(k)]
        old.append(sum(w) / units / max(w)); olong.append(max(w))
        subs, _ = check(bs, rr, [bb // 64] * len(bs), wave, gy, splits, chunk)
        w = [sum(split_us + sum(rr[i] * tr if k == bs[i] - 1 else tb for k in range(b0, b0 + nb)) for i, _, _, b0, nb, _ in mine) for mine in subs]
        new.append(sum(w) / units / max(w)); nlong.append(max(w))
    print(f"| {batch} | {context} | KVzip 0.3{' + INT4' if fmt == 'INT4' else ''} | {st.mean(old):.3f} | {st.mean(new):.3f} | "
          f"{st.mean(olong):.1f} | {st.mean(nlong):.1f} | {st.mean(nlong) / st.mean(olong) * 100 - 100:+.1f}% |")

if __name__ == '__main__':
    ok = invariants(int(sys.argv[1]) if len(sys.argv) > 1 else 2000, int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    for split_us in (4.5, 10.0):  # 10 us: stop 16's fixed part of a round of units (gpugap, on an H200)
        print(f"a split's fixed part {split_us} us")
        print("| batch | context | cache | balance, stop 20 | balance, shares | longest unit (model us), stop 20 | shares | change |")
        for context in (32768, 131072):
            for batch in (1, 8):
                for fmt in ('F16', 'INT4'): balance(context, batch, fmt, split_us)
    sys.exit(0 if ok else 1)
