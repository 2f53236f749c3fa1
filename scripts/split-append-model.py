#!/usr/bin/env python3
# A model of paged_cache.cu's paged_rope_append_split (the batch append's encode split over APPEND_SPLIT blocks per
# (sequence, KV head)), checked without a GPU (pure Python, ~1 min; exit status 1 on any difference):
#   python3 scripts/split-append-model.py [MUTATION]
# Each block (part) is emulated on its own, with its own shared staging initialised to a sentinel: its rotation loop's
# channel filter, its value copy, its staging of the residual's rows, its parameters pass and its codes pass with the
# kernel's index math, through int_group_params and int_code_word as written there (scripts/encode-model.py's model of
# them). Since gpusplitappend2 (stop 27; ran on an H100 in stop 28): the earlier rows staged before the rotation loop, the new row
# staged by the loops that store it, and the codes pass reading the block's own shared copy of the parameters (a read of
# one the block did not compute fails). Checked, for the shapes CudaPagedKernels.SplitsAppend takes (hd 64/128/256, value groups 16-128, blocks of
# 1-64 tokens, INT8/4/2 keys x values, both RoPE layouts): every channel of the new row written once, by the block that
# stages it (no block reads what another writes); no staged read outside the block's own channels; every key/value code
# word, scale and min written exactly once over the blocks; the bytes equal encode-model.py's element-order encode
# (= BlockCodec); a step that does not fill the residual encodes nothing.
# MUTATION (each must make the script fail): no-group-offset (value groups without the block's first group c0 / vg),
# no-word-offset (code words without the block's first channel), pair-filter (a rotation pair's second channel written by
# the block of its first).
import os
import random
import sys

MUTATE = sys.argv[1] if len(sys.argv) > 1 else ""
assert MUTATE in ("", "no-group-offset", "no-word-offset", "pair-filter"), MUTATE
# encode-model.py's definitions (its checks start at its `rng = random.Random(25)`): float32 rounding, its models of
# int_group_params and int_code_word, and the element-order encode.
source = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "encode-model.py")).read()
argv, sys.argv = sys.argv, sys.argv[:1]
model = {}
exec(source.split("rng = random.Random(25)")[0], model)
sys.argv = argv
f32, int_group_params, int_code_word, element_order = (model[k] for k in ("f32", "int_group_params", "int_code_word", "element_order"))
SPLIT, STAGE = 4, 4096  # APPEND_SPLIT, RESIDUAL_STAGE


class Staged:  # one block's shared staging: reading what the block did not stage fails
    def __init__(self):
        self.a = [None] * (2 * STAGE)

    def __getitem__(self, i):
        if self.a[i] is None:
            raise AssertionError(f"staged read of element {i}, not staged by this block")
        return self.a[i]

    def __setitem__(self, i, v):
        self.a[i] = v


class View:  # pointer arithmetic on a staging
    def __init__(self, s, off):
        self.s, self.off = s, off

    def __getitem__(self, i):
        return self.s[self.off + i]


class Out:  # a u16 or u32 array of a block in the pool, with write counts
    def __init__(self, n):
        self.v, self.w = [0] * n, [0] * n

    def set(self, i, x):
        self.v[i] = x
        self.w[i] += 1


class Local:  # a block's shared copy of the parameters: reading one the block did not compute fails
    def __init__(self, n):
        self.v = [None] * n

    def __getitem__(self, i):
        if self.v[i] is None:
            raise AssertionError(f"codes pass read parameter {i}, not computed by this block")
        return self.v[i]


def split_append(krows, vrows, newk, newv, at, tokens, hd, vg, kbits, vbits, interleaved):
    """One launch's K/V blocks of one head: row `at` of the residual (krows/vrows, None where unwritten) gets newk/newv;
    returns the encoded blocks ((scales, mins, words) of keys, of values) when the residual filled, else None."""
    half, w = hd // 2, hd // SPLIT
    full = at + 1 == tokens
    kwriter, vwriter = [[] for _ in range(hd)], [[] for _ in range(hd)]
    gk, gv = hd, tokens * (hd // vg)
    kw, ks, km = Out(tokens * hd * kbits // 32), Out(gk), Out(gk)
    vw, vs, vm = Out(tokens * hd * vbits // 32), Out(gv), Out(gv)
    staging = []
    for part in range(SPLIT):
        c0 = part * w
        st = Staged()
        if full:  # the earlier rows of the block's channels, read back before the rotation loop (the claimer aside)
            for i in range(at * w):
                r, c = i // w, c0 + i % w
                st[r * hd + c] = krows[r * hd + c]
                st[STAGE + r * hd + c] = vrows[r * hd + c]
        for i in range(half):  # the rotation loop's filter (a channel value stands for its rotated value)
            i0, i1 = (2 * i, 2 * i + 1) if interleaved else (i, i + half)
            in0, in1 = c0 <= i0 < c0 + w, c0 <= i1 < c0 + w
            if MUTATE == "pair-filter":
                in1 = in0
            if not in0 and not in1:
                continue
            if in0:
                krows[at * hd + i0] = newk[i0]
                kwriter[i0].append(part)
                if full:
                    st[at * hd + i0] = newk[i0]
            if in1:
                krows[at * hd + i1] = newk[i1]
                kwriter[i1].append(part)
                if full:
                    st[at * hd + i1] = newk[i1]
        for c in range(c0, c0 + w):
            vrows[at * hd + c] = newv[c]
            vwriter[c].append(part)
            if full:
                st[STAGE + at * hd + c] = newv[c]
        staging.append(st)
    assert all(len(x) == 1 for x in kwriter + vwriter), "a channel of the new row written other than once"
    if not full:
        return None
    for part in range(SPLIT):
        c0 = part * w
        st = staging[part]
        sk, sv = View(st, 0), View(st, STAGE)
        lks, lkm, lvs, lvm = Local(gk), Local(gk), Local(gv), Local(gv)
        vper, per_row = w // vg, hd // vg
        for i in range(w + tokens * vper):
            if i < w:
                s, m = int_group_params(sk, tokens, True, hd, vg, c0 + i, (1 << kbits) - 1)
                ks.set(c0 + i, s)
                km.set(c0 + i, m)
                lks.v[c0 + i], lkm.v[c0 + i] = s, m
            else:
                j = i - w
                g = (j // vper) * per_row + (0 if MUTATE == "no-group-offset" else c0 // vg) + j % vper
                s, m = int_group_params(sv, tokens, False, hd, vg, g, (1 << vbits) - 1)
                vs.set(g, s)
                vm.set(g, m)
                lvs.v[g], lvm.v[g] = s, m
        kwords, vwords = w // (32 // kbits), w // (32 // vbits)
        for i in range(tokens * (kwords + vwords)):
            key = i < tokens * kwords
            j = i if key else i - tokens * kwords
            per, bits = (kwords, kbits) if key else (vwords, vbits)
            r = j // per
            wi = (r * hd + (0 if MUTATE == "no-word-offset" else c0)) // (32 // bits) + j % per
            if key:
                kw.set(wi, int_code_word(bits, sk, tokens, True, hd, vg, lks, lkm, wi))
            else:
                vw.set(wi, int_code_word(bits, sv, tokens, False, hd, vg, lvs, lvm, wi))
    for name, o in (("key words", kw), ("key scales", ks), ("key mins", km), ("value words", vw), ("value scales", vs), ("value mins", vm)):
        assert o.w == [1] * len(o.w), f"{name}: written {sorted(set(o.w))} times"
    return (ks.v, km.v, kw.v), (vs.v, vm.v, vw.v)


def splits(hd, vg, tokens):  # CudaPagedKernels.SplitsAppend's shape rule
    quarter = hd // SPLIT
    return quarter % 16 == 0 and quarter % vg == 0 and tokens * hd <= STAGE


rng = random.Random(26)
cases = refused = 0
failures = []
for hd in (64, 128, 256):
    for vg in (16, 32, 64, 128):
        if vg > hd:
            continue
        for tokens in (1, 2, 8, 16, 32, 64):
            if not splits(hd, vg, tokens):
                refused += 1
                continue
            for kbits in (8, 4, 2):
                for vbits in (8, 4, 2):
                    for interleaved in (False, True):
                        what = f"hd {hd} vg {vg} tokens {tokens} INT{kbits}/INT{vbits} {'interleaved' if interleaved else 'half-split'}"

                        def row():
                            return [f32(rng.choice((0.5 * rng.randrange(31) + c % 5 - 2, rng.uniform(-3, 3), -0.0, 0.0))) for c in range(hd)]

                        K, V = [row() for _ in range(tokens)], [row() for _ in range(tokens)]
                        kr = [x for r in K[:-1] for x in r] + [None] * hd
                        vr = [x for r in V[:-1] for x in r] + [None] * hd
                        try:
                            if tokens >= 2:  # the step before: no encode
                                assert split_append(list(kr), list(vr), K[-2], V[-2], tokens - 2, tokens, hd, vg, kbits, vbits, interleaved) is None
                            got = split_append(kr, vr, K[-1], V[-1], tokens - 1, tokens, hd, vg, kbits, vbits, interleaved)
                        except AssertionError as e:
                            failures.append(f"{what}: {e}")
                            continue
                        want_k = element_order([x for r in K for x in r], tokens, kbits, True, tokens, hd, vg)
                        want_v = element_order([x for r in V for x in r], tokens, vbits, False, tokens, hd, vg)
                        if tuple(map(list, got[0])) != tuple(map(list, want_k)) or tuple(map(list, got[1])) != tuple(map(list, want_v)):
                            failures.append(f"{what}: bytes differ from the element-order encode")
                        cases += 1
print(f"split append: {cases} filling appends = the element-order encode's bytes, {len(failures)} failures; {refused} shapes refused by SplitsAppend")
for f in failures[:10]:
    print("  " + f)
sys.exit(1 if failures else 0)
