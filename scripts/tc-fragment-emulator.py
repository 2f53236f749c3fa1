#!/usr/bin/env python3
# Emulation of the fragment arithmetic of src/KvSharp/Compute/Cuda/Kernels/paged_attention_tc.cu (the pipelined kernel's
# per-block scores and P·V of one warp) on the CPU, for kernel work without a GPU: the helpers are ported line by line
# (key_query, key_fragments, code_frag, value_fragments, value_chunk_t, value_units, pipe_add_output, the prmt selectors and
# masks), f16 rounding by struct's IEEE half (subnormals included), mma.sync.m16n8k16 as exact sums over the documented
# fragment layout (the GPU self-checks show whether the tensor cores take the subnormal RAW codes as exactly). Each case encodes a random
# 32-token key and value block (BlockLayout bytes), runs the emulated kernel and compares scores and outputs with float64
# (relative to the largest magnitude). The GPU self-checks (tests/KvSharp.GpuTests selftest --only paged) stay the
# reference for the kernel itself; this only shows that the fragment math as written is exact to ~1e-5.
#   python3 scripts/tc-fragment-emulator.py [SEED [MUTATION]]   (pure Python; exit status 1 above 1e-4; MUTATION: see MUTATE)
# P·V is the transposed one of branch gpuquant2 (values as the A operand, heads along n: hi columns 0..G-1, lo G..2G-1);
# the value mins' sums one more mma per step (pipe_min_terms, branch gpulowbit); codes as f16 subnormals masked in place
# (code_frag RAW, branch gpucodes): the key steps take 2^(code_top - K), the value accumulators' units change per format
# (value_exp, value_units; the mixed cases run a second value block of another format into the same accumulators).
# The transposed score mma of the INT2/INT4 specialized builds (PIPE_T, branch gputrans: keys as A, the query's parts as
# B columns, movmatrix to P·V's B layout, the F32 residual in the same layout) runs as run_t, after the old cases; its
# INT2 builds read the value codes by ldmatrix and a lane exchange (pipe_int2_values, branch gpuvalues: the value
# channels' quads permuted by pipe_value_quad through P·V, the F32 residual and the output).
import collections, struct, sys, random, math, bisect
random.seed(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
INF = float('inf')
F32, F16, BF16, FP8, INT8, INT4, INT2, TERN, BIN = range(9)
def bits(f): return 32 if f == F32 else 16 if f <= BF16 else 8 if f <= INT8 else 4 if f == INT4 else 2 if f <= TERN else 1
def quant(f): return f >= INT8
def nparams(f): return 1 if f == TERN else 2 if f >= INT8 else 0
M32 = 0xffffffff
def h2f(h): return struct.unpack('<e', struct.pack('<H', h & 0xffff))[0]
def f2h(x):
    try: return struct.unpack('<H', struct.pack('<e', x))[0]
    except OverflowError: return 0x7c00 if x > 0 else 0xfc00
def w2(w): return h2f(w), h2f(w >> 16)
def mk(lo, hi): return (f2h(lo) | (f2h(hi) << 16)) & M32
def f32(x): return struct.unpack('<f', struct.pack('<f', x))[0]
def prmt(a, b, sel):
    by = [(a >> (8 * i)) & 0xff for i in range(4)] + [(b >> (8 * i)) & 0xff for i in range(4)]
    r = 0
    for i in range(4): r |= by[(sel >> (4 * i)) & 7] << (8 * i)
    return r
def hmul2(a, b): x, y = w2(a); u, v = w2(b); return mk(x * u, y * v)
def hfma2(a, b, c): x, y = w2(a); u, v = w2(b); p, q = w2(c); return mk(x * u + p, y * v + q)  # exact then one rounding
def hneg2(a): return a ^ 0x80008000
def scaled_pair(xh, xl, s):
    hi = hmul2(xh, s); lo = hfma2(xl, s, hfma2(xh, s, hneg2(hi))); return hi, lo
def trunc11(x): return struct.unpack('<f', struct.pack('<I', struct.unpack('<I', struct.pack('<f', x))[0] & 0xffffe000))[0]
def split_f16x2(x0, x1):
    x0, x1 = f32(x0), f32(x1); h0, h1 = trunc11(x0), trunc11(x1)
    return mk(h0, h1), mk(f32(x0 - h0), f32(x1 - h1))
def code_frag(K, x, mask=M32): return x & mask  # RAW: the field c·2^K read as the f16 subnormal c·2^(K-24)
def code_shift(f, e): return 4 * (e & 1) if f == INT4 else 2 * (e & 3) if bits(f) == 2 else e & 7 if f == BIN else 0
def code_top(f): return 4 if f == INT4 else 6 if bits(f) == 2 else 7 if f == BIN else 0
def code_factor(f, r):
    c = 15 + code_top(f) + (1 if f == BIN else 0)
    return ((c - code_shift(f, 2 * r)) << 10) | ((c - code_shift(f, 2 * r + 1)) << 26)
def fp8_pair(y): return ((y >> 1) & 0x3f803f80) | (y & 0x80008000)  # older devices' path (value / 256), for the encoder's table
# cvt.rn.f16x2.e4m3x2 (the sm_89+ path the kernel takes on Hopper): the code pair in the low 16 bits, byte 0 -> low half.
def fp8_value(c): return h2f(fp8_pair(c << 8)) * 256.0 if (c & 0x7f) != 0x7f else float('nan')
def cvt_e4m3x2(x): return mk(fp8_value(x & 0xff), fp8_value((x >> 8) & 0xff))
def fp8_halves(x): return cvt_e4m3x2(x & 0xffff), cvt_e4m3x2(x >> 16)
def key_low_channel(f, r): return 2 * r if bits(f) >= 8 else 8 * (r >> 2) + (r & 3) if f == INT4 else 16 * (r >> 3) + (r & 7) if bits(f) == 2 else r
def key_step(f): return 1 if bits(f) >= 8 else 4 if f == INT4 else 8 if bits(f) == 2 else 16
def key_unit(f): return float(1 << (24 - code_top(f))) if quant(f) else 1.0
def key_channel(f, tig, i): return 8 * (4 * (i >> 3) + tig) + (i & 7) if f == F16 else 32 * tig + i
def u32(b, o): return int.from_bytes(b[o:o + 4], 'little')
def u16(b, o): return int.from_bytes(b[o:o + 2], 'little')

def mma(d, A, B):  # A[lane] = (a0..a3), B[lane] = (b0, b1); d[lane] = 4 floats; D += A·B (exact products, f32 result)
    Am = [[0.0] * 16 for _ in range(16)]; Bm = [[0.0] * 8 for _ in range(16)]
    for l in range(32):
        g, t = l >> 2, l & 3
        a = A[l]; b = B[l]
        for half in range(2):
            Am[g][2 * t + half] = w2(a[0])[half]; Am[g + 8][2 * t + half] = w2(a[1])[half]
            Am[g][2 * t + 8 + half] = w2(a[2])[half]; Am[g + 8][2 * t + 8 + half] = w2(a[3])[half]
            Bm[2 * t + half][g] = w2(b[0])[half]; Bm[2 * t + 8 + half][g] = w2(b[1])[half]
    D = [[math.fsum(Am[m][k] * Bm[k][n] for k in range(16)) for n in range(8)] for m in range(16)]
    for l in range(32):
        g, t = l >> 2, l & 3
        d[l] = [f32(d[l][0] + D[g][2 * t]), f32(d[l][1] + D[g][2 * t + 1]), f32(d[l][2] + D[g + 8][2 * t]), f32(d[l][3] + D[g + 8][2 * t + 1])]

# ---- block encoding (BlockLayout: codes [tokens, hd] LSB first, then f16 scales, then f16 mins/means) ----
FP8V = sorted((h2f(fp8_pair(c << 8)) * 256.0, c) for c in range(256) if (c & 0x7f) != 0x7f)
FP8X = [v for v, _ in FP8V]
def fp8_encode(x):
    i = bisect.bisect_left(FP8X, x)
    cands = [FP8V[j] for j in (i - 1, i) if 0 <= j < len(FP8V)]
    v, c = min(cands, key=lambda vc: abs(vc[0] - x)); return c, v
def rnd16(x): return h2f(f2h(x))
def encode(f, keys, X, vg):
    T, HD = len(X), len(X[0]); b = bits(f)
    if f == F16:
        return b''.join(struct.pack('<H', f2h(X[t][c])) for t in range(T) for c in range(HD)), [[rnd16(X[t][c]) for c in range(HD)] for t in range(T)]
    if f == FP8:
        codes = [[0] * HD for _ in range(T)]; dec = [[0.0] * HD for _ in range(T)]
        for t in range(T):
            for c in range(HD): codes[t][c], dec[t][c] = fp8_encode(X[t][c])
        return bytes(codes[t][c] for t in range(T) for c in range(HD)), dec
    qmax = 2 if f == TERN else (1 << b) - 1
    codes = [[0] * HD for _ in range(T)]; dec = [[0.0] * HD for _ in range(T)]
    G = HD if keys else T * (HD // vg)
    sc = [0] * G; mn = [0] * G
    for gi in range(G):
        if keys: idx = [(t, gi) for t in range(T)]
        else:
            t, g = divmod(gi, HD // vg); idx = [(t, c) for c in range(g * vg, (g + 1) * vg)]
        x = [X[i][j] for i, j in idx]
        if f == TERN:
            sv = rnd16(sum(abs(v) for v in x) / len(x)); sc[gi] = f2h(sv)
            for (i, j), v in zip(idx, x):
                q = max(-1, min(1, round(v / max(sv, 1e-8)))) + 1; codes[i][j] = q; dec[i][j] = (q - 1) * sv
        elif f == BIN:
            m = rnd16(sum(x) / len(x)); sv = rnd16(sum(abs(v - m) for v in x) / len(x)); sc[gi] = f2h(sv); mn[gi] = f2h(m)
            for (i, j), v in zip(idx, x):
                q = 1 if v >= m else 0; codes[i][j] = q; dec[i][j] = m + sv if q else m - sv
        else:
            lo, hi = min(x), max(x); sv = rnd16((hi - lo) / qmax); m = rnd16(lo); sc[gi] = f2h(sv); mn[gi] = f2h(m)
            for (i, j), v in zip(idx, x):
                q = max(0, min(qmax, round((v - m) / max(sv, 1e-8)))); codes[i][j] = q; dec[i][j] = m + q * sv
    buf = bytearray(T * HD * b // 8)
    for t in range(T):
        for c in range(HD):
            bit = (t * HD + c) * b; buf[bit >> 3] |= (codes[t][c] << (bit & 7)) & 0xff
    out = bytes(buf) + b''.join(struct.pack('<H', v) for v in sc) + (b''.join(struct.pack('<H', v) for v in mn) if nparams(f) == 2 else b'')
    return out, dec

# ---- ported kernel pieces ----
def key_query(f, qh, ql, sw, mw):
    bias = 0.0
    if quant(f):
        d = [[[0.0] * 4 for _ in range(32)] for _ in range(2)]  # even and odd k-steps
        for s in range(8):
            A = [(qh[l][2 * s], ql[l][2 * s], qh[l][2 * s + 1], ql[l][2 * s + 1]) for l in range(32)]
            if f == TERN: B = [(hneg2(sw[l][2 * s]), hneg2(sw[l][2 * s + 1])) for l in range(32)]
            else: B = [(mw[l][2 * s], mw[l][2 * s + 1]) for l in range(32)]
            mma(d[s & 1], A, B)
            if f == BIN: mma(d[s & 1], A, [(hneg2(sw[l][2 * s]), hneg2(sw[l][2 * s + 1])) for l in range(32)])
        bias = [(f32(d[0][l][0] + d[1][l][0]), f32(d[0][l][2] + d[1][l][2])) for l in range(32)]  # hi and lo rows (bh, bl)
        nh = [[0] * 16 for _ in range(32)]; nl = [[0] * 16 for _ in range(32)]
        for l in range(32):
            for r in range(16):
                s_ = hmul2(sw[l][r], code_factor(f, r)) if code_top(f) > 0 else sw[l][r]
                nh[l][r], nl[l][r] = scaled_pair(qh[l][r], ql[l][r], s_)
    else:
        bias = [(0.0, 0.0)] * 32; nh = qh; nl = ql
    ah = [[0] * 16 for _ in range(32)]; al = [[0] * 16 for _ in range(32)]
    S = key_step(f)
    for l in range(32):
        for r in range(16):
            if S == 1: ah[l][r] = nh[l][r]; al[l][r] = nl[l][r]
            else:
                c = key_low_channel(f, r); sel = 0x7632 if c & 1 else 0x5410
                ah[l][r] = prmt(nh[l][c >> 1], nh[l][(c >> 1) + S // 2], sel); al[l][r] = prmt(nl[l][c >> 1], nl[l][(c >> 1) + S // 2], sel)
    return bias, ah, al

def key_words(f, blk, row, tig):
    b = bits(f); ROW = 128 * b // 8
    if b >= 4:
        w = []
        for v in range(b // 4):
            o = row + (16 * (4 * v + tig) if f == F16 else tig * (ROW // 4) + 16 * v)
            w += [u32(blk, o + 4 * i) for i in range(4)]
        return w
    if b == 2: return [u32(blk, row + tig * 8), u32(blk, row + tig * 8 + 4)]
    return [u32(blk, row + tig * 4)]

def key_fragments(f, w):
    b = [0] * 16
    if f == F16: return list(w[:16])
    if f == FP8:
        for j in range(8): b[2 * j], b[2 * j + 1] = fp8_halves(w[j])
    elif f == INT8:
        for j in range(8): b[2 * j] = code_frag(0, prmt(w[j], 0, 0x4140)); b[2 * j + 1] = code_frag(0, prmt(w[j], 0, 0x4342))
    elif f == INT4:
        for j in range(4):
            x = w[j]; x8 = x >> 8
            b[4 * j] = code_frag(0, x, 0x000f000f); b[4 * j + 1] = code_frag(4, x, 0x00f000f0)
            b[4 * j + 2] = code_frag(0, x8, 0x000f000f); b[4 * j + 3] = code_frag(4, x8, 0x00f000f0)
    elif bits(f) == 2:
        for j in range(2):
            x = w[j]; x8 = x >> 8
            for i, K in enumerate((0, 2, 4, 6)):
                b[8 * j + i] = code_frag(K, x, (3 << K) | (3 << (K + 16)))
                b[8 * j + 4 + i] = code_frag(K, x8, (3 << K) | (3 << (K + 16)))
    else:
        x = w[0]; x8 = x >> 8
        for K in range(8):
            b[K] = code_frag(K, x, (1 << K) | (1 << (K + 16))); b[8 + K] = code_frag(K, x8, (1 << K) | (1 << (K + 16)))
    return b

def scores(f, blk, n, tokens, qhs, qls, G):
    # lane registers of the query (pipe_query): head gid mod G, elements in key_channel order
    qh = []; ql = []; sw = []; mw = []
    BITS = bits(f)
    for l in range(32):
        g, tig = (l >> 2) & (G - 1), l & 3
        ch = [key_channel(f, tig, i) for i in range(32)]
        qh.append([qhs[g][ch[2 * j]] | (qhs[g][ch[2 * j + 1]] << 16) for j in range(16)])
        ql.append([qls[g][ch[2 * j]] | (qls[g][ch[2 * j + 1]] << 16) for j in range(16)])
        sp = tokens * 128 // 8 * BITS + 64 * tig
        sw.append([u32(blk, sp + 4 * j) for j in range(16)] if quant(f) else [0] * 16)
        mw.append([u32(blk, sp + 256 + 4 * j) for j in range(16)] if nparams(f) == 2 else [0] * 16)
    bias, ah, al = key_query(f, qh, ql, sw, mw)
    ROW = 128 * BITS // 8
    s = [[[-INF, -INF] for _ in range(4)] for _ in range(32)]
    for u in range(4):
        if 8 * u >= n: continue
        B = []
        for l in range(32):
            g, tig = l >> 2, l & 3
            b = key_fragments(f, key_words(f, blk, min(8 * u + g, n - 1) * ROW, tig))
            B.append(b)
        # pipe_scores: the tile's accumulators start from the bias rows (in fragment units), one chain of 8 mma
        d = [[f32(bias[l][0] / key_unit(f)), f32(bias[l][0] / key_unit(f)), f32(bias[l][1] / key_unit(f)), f32(bias[l][1] / key_unit(f))] for l in range(32)]
        for k in range(8):
            mma(d, [(ah[l][2 * k], al[l][2 * k], ah[l][2 * k + 1], al[l][2 * k + 1]) for l in range(32)], [(B[l][2 * k], B[l][2 * k + 1]) for l in range(32)])
        for l in range(32):
            tk = 8 * u + 2 * (l & 3)
            if tk < n: s[l][u][0] = f32(f32(d[l][0] + d[l][2]) * key_unit(f))
            if tk + 1 < n: s[l][u][1] = f32(f32(d[l][1] + d[l][3]) * key_unit(f))
    return s

def value_piece(BITS, blk, row, k, gid):
    if BITS == 16: return [u32(blk, row + 64 * k + 8 * gid), u32(blk, row + 64 * k + 8 * gid + 4)]
    if BITS == 8: return [u32(blk, row + 32 * k + 4 * gid)]
    if BITS == 4: return [u16(blk, row + 16 * k + 2 * gid)]
    if BITS == 2: return [blk[row + 8 * k + gid]]
    return [blk[row + 4 * k + (gid >> 1)] >> (4 * (gid & 1))]

def value_fragments(f, a, b):
    if f == F16: return [prmt(a[0], b[0], 0x5410), prmt(a[0], b[0], 0x7632), prmt(a[1], b[1], 0x5410), prmt(a[1], b[1], 0x7632)]
    if f == FP8: return [*fp8_halves(prmt(a[0], b[0], 0x5140)), *fp8_halves(prmt(a[0], b[0], 0x7362))]
    if f == INT8: return [code_frag(0, prmt(a[0], b[0], s), 0x00ff00ff) for s in (0x4400, 0x5511, 0x6622, 0x7733)]
    if f == INT4:
        x = prmt(a[0], b[0], 0x5410); x8 = x >> 8
        return [code_frag(0, x, 0x000f000f), code_frag(4, x, 0x00f000f0), code_frag(0, x8, 0x000f000f), code_frag(4, x8, 0x00f000f0)]
    if bits(f) == 2:
        x = (a[0] | (b[0] << 16)) & M32
        return [code_frag(K, x, (3 << K) | (3 << (K + 16))) for K in (0, 2, 4, 6)]
    x = (a[0] & 0xf) | ((b[0] & 0xf) << 16)
    return [code_frag(K, x, (1 << K) | (1 << (K + 16))) for K in range(4)]

def row_params(blk, p, row, gpr):
    if gpr == 4: return (u32(blk, p + row * 8), u32(blk, p + row * 8 + 4))
    if gpr == 2: return (u32(blk, p + row * 4), 0)
    return (u16(blk, p + row * 2), 0)
def row_pair_params(blk, p, row, gpr):  # rows row (even) and row + 1 in one 16-, 8- or 4-byte load (full blocks)
    if gpr == 4: x = [u32(blk, p + row * 8 + 4 * i) for i in range(4)]; return (x[0], x[1]), (x[2], x[3])
    if gpr == 2: x = [u32(blk, p + row * 4 + 4 * i) for i in range(2)]; return (x[0], 0), (x[1], 0)
    x = u32(blk, p + row * 2); return (x & 0xffff, 0), (x >> 16, 0)
def chunk_param(x, k, gpr):
    g = k if gpr == 4 else k >> 1 if gpr == 2 else 0
    w = x[1] if g >= 2 else x[0]; return h2f(w >> (16 * (g & 1)))
def chunk_param_pair(a, b, k, gpr):
    g = k if gpr == 4 else k >> 1 if gpr == 2 else 0
    return prmt(a[1] if g >= 2 else a[0], b[1] if g >= 2 else b[0], 0x7632 if g & 1 else 0x5410)

def column_head(G, c): return c & (G - 1)
def column_hi(G, c): return G == 8 or c < G

def value_exp(f, i): return 24 - code_shift(f, i) if quant(f) else 0
def pow2i(e): return 2.0 ** e

def values(blocks, tokens, VG, G):
    # pipe_values with value_chunk_t (the transposed P·V: values as A, probabilities as B, heads along n) over the value
    # blocks (f, blk, n, p) in turn into one warp's accumulators (value_units between formats), then pipe_add_output with
    # the warp-merge factor 1
    o = [[[0.0] * 4 for _ in range(8)] for _ in range(32)]; md = [[0.0] * 4 for _ in range(32)]
    units = F32
    for f, blk, n, p in blocks:
        vu = (INT2 if f == TERN else f) if quant(f) else F32
        if vu != units:
            fr = [pow2i(value_exp(units, i) - value_exp(vu, i)) for i in range(4)]
            o = [[[f32(o[l][j][r] * fr[2 * (j & 1) + (r >> 1)]) for r in range(4)] for j in range(8)] for l in range(32)]
            units = vu
        BITS = bits(f); ROW = 128 * BITS // 8; gpr = 128 // VG
        scales = tokens * ROW; mins = scales + tokens * gpr * 2
        for h in range(2):
            if 16 * h >= n: break
            L = []
            for l in range(32):
                gid, tig = l >> 2, l & 3
                piece = []; sh = []; mh = []; pv = []
                full = n == 32 and tokens == 32  # pipe_values<..., FULL>: token pairs' parameters in one load
                for u in range(4):
                    row = min(16 * h + 2 * tig + (u & 1) + 8 * (u >> 1), n - 1)
                    piece.append([value_piece(BITS, blk, row * ROW, k, gid) for k in range(4)])
                    if full and (u & 1) == 0:
                        sh += list(row_pair_params(blk, scales, row, gpr)) if quant(f) else [(0, 0)] * 2
                        mh += list(row_pair_params(blk, mins, row, gpr)) if nparams(f) == 2 else [(0, 0)] * 2
                    elif not full:
                        sh.append(row_params(blk, scales, row, gpr) if quant(f) else (0, 0))
                        mh.append(row_params(blk, mins, row, gpr) if nparams(f) == 2 else (0, 0))
                    pv.append(p[l][2 * h + (u >> 1)][u & 1])
                c = 2.0 if f == BIN else 1.0
                P = split_f16x2(pv[0] * c, pv[1] * c) + split_f16x2(pv[2] * c, pv[3] * c)  # h01, l01, h89, l89
                L.append((piece, sh, mh, pv, P))
            if quant(f):
                # pipe_min_terms: row k of M·P^T (k = the lane's gid & 3) = Σ_t min_t(chunk k)·p_t per column, unscaled probabilities
                runs = []
                for run in range(2 if f == BIN else 1):
                    A = []; B = []
                    for l in range(32):
                        gid = l >> 2; piece, sh, mh, pv, P = L[l]; k = gid & 3
                        U = split_f16x2(pv[0], pv[1]) + split_f16x2(pv[2], pv[3]) if f == BIN else P
                        src = sh if f == TERN or run == 1 else mh
                        a0 = chunk_param_pair(src[0], src[1], k, gpr); a2 = chunk_param_pair(src[2], src[3], k, gpr)
                        if f == TERN or run == 1: a0, a2 = hneg2(a0), hneg2(a2)
                        A.append((a0, 0, a2, 0)); B.append((U[0], U[2], U[1], U[3]))  # h01, h89, l01, l89
                    if G == 8:
                        mma(md, A, [(b[0], b[1]) for b in B]); mma(md, A, [(b[2], b[3]) for b in B])
                    else:
                        mma(md, A, [((B[l][2], B[l][3]) if ((l >> 2) & G) else (B[l][0], B[l][1])) for l in range(32)])
            for k in range(4):
                Ps = []; VF = []
                for l in range(32):
                    piece, sh, mh, pv, P = L[l]
                    a0, a1, a2, a3 = P
                    if quant(f) and G == 8:
                        a0, a1 = scaled_pair(P[0], P[1], chunk_param_pair(sh[0], sh[1], k, gpr))
                        a2, a3 = scaled_pair(P[2], P[3], chunk_param_pair(sh[2], sh[3], k, gpr))
                    elif quant(f):
                        # step_side + side_scaled: the lane's own part x (hi, or lo where its column is a lo one), z = hi or 0
                        lo = ((l >> 2) & G) != 0
                        for i, s_ in ((0, chunk_param_pair(sh[0], sh[1], k, gpr)), (2, chunk_param_pair(sh[2], sh[3], k, gpr))):
                            x, z = (P[i + 1], P[i]) if lo else (P[i], 0)
                            r = hfma2(x, s_, hfma2(z, s_, hneg2(hmul2(z, s_))))
                            if lo: a1, a3 = (r, a3) if i == 0 else (a1, r)
                            else: a0, a2 = (r, a2) if i == 0 else (a0, r)
                    Ps.append((a0, a1, a2, a3))
                    VF.append((value_fragments(f, piece[0][k], piece[1][k]), value_fragments(f, piece[2][k], piece[3][k])))
                for j in range(2):
                    A = [(VF[l][0][2 * j], VF[l][0][2 * j + 1], VF[l][1][2 * j], VF[l][1][2 * j + 1]) for l in range(32)]
                    d = [o[l][2 * k + j] for l in range(32)]
                    if G == 8:
                        mma(d, A, [(Ps[l][0], Ps[l][2]) for l in range(32)])
                        mma(d, A, [(Ps[l][1], Ps[l][3]) for l in range(32)])
                    else:
                        mma(d, A, [((Ps[l][1], Ps[l][3]) if ((l >> 2) & G) else (Ps[l][0], Ps[l][2])) for l in range(32)])
                    for l in range(32): o[l][2 * k + j] = d[l]
    # pipe_add_output: hi + lo columns (column_sum), the min terms of chunk k from the lanes gid = k, same tig
    def column_sum(v, l, e): return f32(v[l][e] + v[l][e ^ 1]) if G == 1 else f32(v[l][e] + v[l ^ 1][e]) if G == 2 else f32(v[l][e] + v[l ^ 2][e]) if G == 4 else v[l][e]
    ms = [[column_sum(md, l, e) for e in range(2)] for l in range(32)]
    out = {}
    for l in range(32):
        gid, tig = l >> 2, l & 3
        mc = [[ms[4 * k + tig][e] for e in range(2)] for k in range(4)]
        for j in range(8):
            for r in range(4):
                x = o[l][j][r]
                if G == 1: x = f32(x + (0.0 if r & 1 else o[l][j][r | 1]))
                elif G == 2: x = f32(x + o[l ^ 1][j][r])
                elif G == 4: x = f32(x + o[l ^ 2][j][r])
                e = r & 1; c = 2 * tig + e; k = j >> 1
                if column_hi(G, c) and (G != 1 or e == 0):
                    key = (column_head(G, c), 32 * k + 4 * gid + 2 * (j & 1) + (r >> 1))
                    assert key not in out
                    out[key] = f32(f32(x * pow2i(value_exp(units, 2 * (j & 1) + (r >> 1)))) + mc[k][e])
    assert len(out) == G * 128
    return out

def run(kf, vf, G, VG, n, tokens=32, vf2=None):
    HD = 128
    cs = [random.uniform(0.5, 3) for _ in range(HD)]
    K = [[random.gauss(0, 1) * cs[c] for c in range(HD)] for _ in range(tokens)]
    kblk, Kd = encode(kf, True, K, VG)
    q = [[random.gauss(0, 1.5) for _ in range(HD)] for _ in range(G)]; scale = f32(f32(1 / math.sqrt(HD)) * f32(1.4426950408889634))
    qhs = []; qls = []; qx = []
    for g in range(G):
        xs = [f32(f32(q[g][c]) * scale) for c in range(HD)]
        hs = [trunc11(x) for x in xs]
        qx.append(xs); qhs.append([f2h(h) for h in hs]); qls.append([f2h(f32(x - h)) for x, h in zip(xs, hs)])
    s = scores(kf, kblk, n, tokens, qhs, qls, G)
    ref = [[math.fsum(qx[g][c] * Kd[t][c] for c in range(HD)) for t in range(n)] for g in range(G)]
    err = 0.0
    for l in range(32):
        g, tig = (l >> 2) & (G - 1), l & 3
        for u in range(4):
            for e in range(2):
                t = 8 * u + 2 * tig + e
                if t < n: err = max(err, abs(s[l][u][e] - ref[g][t]) / max(abs(v) for v in ref[g]))
                else: assert s[l][u][e] == -INF
    blocks = []; vref = [[0.0] * HD for _ in range(G)]
    for f in [vf] + ([vf2] if vf2 is not None else []):
        # each block its own values and probabilities (a second block of another format: the accumulators change units)
        V = [[random.gauss(0, 1) for c in range(HD)] for _ in range(tokens)]
        vblk, Vd = encode(f, False, V, VG)
        pt = [[random.uniform(0, 1) if t < n else 0.0 for t in range(tokens)] for _ in range(G)]
        p = [[[pt[(l >> 2) & (G - 1)][8 * u + 2 * (l & 3) + e] for e in range(2)] for u in range(4)] for l in range(32)]
        blocks.append((f, vblk, n, p))
        vref = [[vref[g][c] + math.fsum(pt[g][t] * Vd[t][c] for t in range(n)) for c in range(HD)] for g in range(G)]
    out = values(blocks, tokens, VG, G)
    vmax = max(abs(v) for r in vref for v in r)
    verr = max(abs(out[(g, c)] - vref[g][c]) for g in range(G) for c in range(HD)) / vmax
    return err, verr

# ---- PIPE_T: the transposed score mma of the INT2/INT4 specialized builds (G <= 4) ----
# The query copy is emulated as shared memory (G·164 words, garbage where the prologue writes nothing) with the kernel's
# addresses (pipe_qt, pipe_qt_word, pipe_qt_zero), so the layout, the zero words and the bank groups are checked too.
# MUTATE (python3 scripts/tc-fragment-emulator.py SEED MUTATION) changes one piece on purpose, to see the check fail:
#   zero_z: hi columns read the hi part as z (not the zero words); bias_pair: the bias mma's B in natural word order;
#   no_trans: movmatrix without the transpose; float_src: the F32 values' shuffle from lane 4·tig + tt;
#   no_swap: pipe_int2_values' high lanes with the low lanes' selector; quad_out: the INT2 build's output (and F32 residual
#   values) at quad gid instead of pipe_value_quad(gid); resid_quad: only the F32 residual's values at quad gid.
MUTATE = sys.argv[2] if len(sys.argv) > 2 else ""
QROW = 164
def pipe_qt_word(j): return (j & ~3) | ((j & 1) << 1) | ((j >> 1) & 1)
def pipe_qt(g, part, c): return 144 * g + 72 * part + 16 * (c >> 5) + 4 * (c >> 6) + pipe_qt_word((c & 31) >> 1)
def pipe_qt_zero(G): return 144 * G - 4
def side_scaled(x, z, s_): return hfma2(x, s_, hfma2(z, s_, hneg2(hmul2(z, s_))))
def movmatrix(words, trans=True):  # words[lane]: row lane >> 2, elements 2·(lane & 3) (low), + 1 (high)
    M = [[(words[4 * r + (c >> 1)] >> (16 * (c & 1))) & 0xffff for c in range(8)] for r in range(8)]
    if not trans: return list(words)
    return [M[2 * (l & 3)][l >> 2] | (M[2 * (l & 3) + 1][l >> 2] << 16) for l in range(32)]

def ldmatrix_trans(blk, addrs):  # .x4.trans: addrs[l] = byte offset of row l % 8 of matrix l // 8
    # lane l receives in r[i] the b16 elements (row 2·tig, column gid) low and (row 2·tig + 1, column gid) high of matrix i
    return [[u16(blk, addrs[8 * i + 2 * (l & 3)] + 2 * (l >> 2)) | (u16(blk, addrs[8 * i + 2 * (l & 3) + 1] + 2 * (l >> 2)) << 16)
             for i in range(4)] for l in range(32)]
def pipe_value_quad(t2, gid): return gid if not t2 or MUTATE == "quad_out" else 2 * (gid & 3) + (gid >> 2)
def pipe_int2_values(blk, n, h):  # pairs[l][k][s]: the lane's byte of chunk k of tokens 2·tig + 8s (bits 0-7) and + 1 (16-23)
    addrs = [min(16 * h + 8 * ((l >> 3) & 1) + (l & 7), n - 1) * 32 + 16 * (l >> 4) for l in range(32)]
    R = ldmatrix_trans(blk, addrs)
    pairs = []
    for l in range(32):
        sel = 0x3210 if (l >> 2) < 4 or MUTATE == "no_swap" else 0x7765
        pr = [[0, 0] for _ in range(4)]
        for i in range(4):
            z = R[l ^ 16][i]  # __shfl_xor_sync(r[i], 16): lane gid ^ 4, same tig
            pr[2 * (i >> 1)][i & 1] = prmt(R[l][i], z, sel); pr[2 * (i >> 1) + 1][i & 1] = prmt(z, R[l][i], sel)
        pairs.append(pr)
    return pairs, wavefronts([a >> 2 for a in addrs])
def int2_fragments(x): return [code_frag(K, x, (3 << K) | (3 << (K + 16))) for K in (0, 2, 4, 6)]

def query_copy_t(qhs, qls, G):
    assert pipe_qt(G - 1, 1, 127) < pipe_qt_zero(G) and pipe_qt_zero(G) + 16 <= G * QROW
    h16 = [random.getrandbits(16) for _ in range(2 * G * QROW)]  # halves; the prologue's writes below
    for g in range(G):
        for c in range(128):
            h16[2 * pipe_qt(g, 0, c & ~1) + (c & 1)] = qhs[g][c]; h16[2 * pipe_qt(g, 1, c & ~1) + (c & 1)] = qls[g][c]
    for i in range(16): h16[2 * (pipe_qt_zero(G) + i)] = h16[2 * (pipe_qt_zero(G) + i) + 1] = 0
    return [h16[2 * w] | (h16[2 * w + 1] << 16) for w in range(G * QROW)]

def wavefronts(addr):  # 16-byte rows (word addresses) of 32 lanes in 4 phases of 8 (ldmatrix: a matrix each): each phase
    # takes as many wavefronts as the most distinct rows in one bank group (4 banks)
    return sum(max(collections.Counter((w >> 2) & 7 for w in set(addr[8 * ph: 8 * ph + 8])).values()) for ph in range(4))

def conflicts(addr):  # 16-byte loads (word addresses) of 32 lanes: extra wavefronts over the 4 phases of 8 lanes
    extra = 0
    for ph in range(4):
        groups = {}
        for l in range(8 * ph, 8 * ph + 8): groups.setdefault((addr[l] >> 2) & 7, set()).add(addr[l])
        extra += sum(len(a) - 1 for a in groups.values())
    return extra

def scores_t(f, blk, n, tokens, qs, G):
    # pipe_query_t + pipe_scores_t: s[l][h][e] = token 16h + gid + 8e of head tig mod G (true units)
    BITS = bits(f); ROW = 128 * BITS // 8; S = key_step(f)
    X = []; Z = []; SW = []; MW = []; xa = []; za = []
    for l in range(32):
        gid, tig = l >> 2, l & 3; g = (gid >> 1) & (G - 1)
        xb = pipe_qt(g, gid & 1, 32 * tig)
        zb = pipe_qt(g, 0, 32 * tig) if (gid & 1) or MUTATE == "zero_z" else pipe_qt_zero(G)
        xa.append(xb); za.append(zb)
        x = [0] * 16; z = [0] * 16
        for v in range(4):
            a = qs[xb + 4 * v: xb + 4 * v + 4]; c = qs[zb + 4 * v: zb + 4 * v + 4]
            x[4 * v], x[4 * v + 2], x[4 * v + 1], x[4 * v + 3] = a
            z[4 * v], z[4 * v + 2], z[4 * v + 1], z[4 * v + 3] = c
        sp = tokens * 128 // 8 * BITS + 64 * tig
        X.append(x); Z.append(z); SW.append([u32(blk, sp + 4 * j) for j in range(16)]); MW.append([u32(blk, sp + 256 + 4 * j) for j in range(16)])
    cf = conflicts(xa) + conflicts(za)
    d = [[[0.0] * 4 for _ in range(32)] for _ in range(2)]
    for v in range(4):
        A = [tuple(MW[l][4 * v: 4 * v + 4]) for l in range(32)]
        if MUTATE == "bias_pair":
            mma(d[0], A, [(X[l][4 * v], X[l][4 * v + 1]) for l in range(32)]); mma(d[1], A, [(X[l][4 * v + 2], X[l][4 * v + 3]) for l in range(32)])
        else:
            mma(d[0], A, [(X[l][4 * v], X[l][4 * v + 2]) for l in range(32)]); mma(d[1], A, [(X[l][4 * v + 1], X[l][4 * v + 3]) for l in range(32)])
    ku = key_unit(f)
    bias = [(f32(f32(d[0][l][0] + d[1][l][2]) * f32(1 / ku)), f32(f32(d[0][l][1] + d[1][l][3]) * f32(1 / ku))) for l in range(32)]
    QB = []
    for l in range(32):
        nq = [side_scaled(X[l][r], Z[l][r], hmul2(SW[l][r], code_factor(f, r))) for r in range(16)]
        qb = []
        for r in range(16):
            c = key_low_channel(f, r); qb.append(prmt(nq[c >> 1], nq[(c >> 1) + S // 2], 0x7632 if c & 1 else 0x5410))
        QB.append(qb)
    s = [[[-INF, -INF] for _ in range(2)] for _ in range(32)]
    for h in range(2):
        if 16 * h >= n: continue
        K0 = []; K1 = []
        for l in range(32):
            gid, tig = l >> 2, l & 3
            K0.append(key_fragments(f, key_words(f, blk, min(16 * h + gid, n - 1) * ROW, tig)))
            K1.append(key_fragments(f, key_words(f, blk, min(16 * h + 8 + gid, n - 1) * ROW, tig)))
        dd = [[bias[l][0], bias[l][1], bias[l][0], bias[l][1]] for l in range(32)]
        for k in range(8):
            mma(dd, [(K0[l][2 * k], K1[l][2 * k], K0[l][2 * k + 1], K1[l][2 * k + 1]) for l in range(32)], [(QB[l][2 * k], QB[l][2 * k + 1]) for l in range(32)])
        for l in range(32):
            gid = l >> 2
            if 16 * h + gid < n: s[l][h][0] = f32(f32(dd[l][0] + dd[l][1]) * ku)
            if 16 * h + 8 + gid < n: s[l][h][1] = f32(f32(dd[l][2] + dd[l][3]) * ku)
    return s, cf

def scores_float_t(X, n, qs, G):
    # pipe_scores_float_t over an F32 block X (rows of 128 floats): the copy's hi + lo per channel, the lanes' selection
    qv = [[[0.0] * 4 for _ in range(G)] for _ in range(32)]
    for l in range(32):
        c = 4 * l
        for g in range(G):
            w = [qs[pipe_qt(g, 0, c)], qs[pipe_qt(g, 0, c + 2)], qs[pipe_qt(g, 1, c)], qs[pipe_qt(g, 1, c + 2)]]
            qv[l][g] = [f32(h2f(w[i >> 1] >> (16 * (i & 1))) + h2f(w[2 + (i >> 1)] >> (16 * (i & 1)))) for i in range(4)]
    s = [[[-INF, -INF] for _ in range(2)] for _ in range(32)]
    for r in range(n):
        for g in range(G):
            dot = f32(math.fsum(qv[l][g][i] * X[r][4 * l + i] for l in range(32) for i in range(4)))
            for l in range(32):
                if (l >> 2) == (r & 7) and ((l & 3) & (G - 1)) == g: s[l][r >> 4][(r >> 3) & 1] = dot
    return s

def values_t(blocks, tokens, VG, G, t2):
    # pipe_values_t (INT2/INT4 blocks, step_side_t's movmatrix) and pipe_values_float_t (F32 blocks) into one warp's
    # accumulators (value_units between formats), then pipe_add_output_t with the warp-merge factor 1;
    # blocks: (f, blk or rows, n, p) with p[l][h][e] the probability of token 16h + gid + 8e of head tig mod G;
    # t2: an INT2 build (PIPE_T2: pipe_int2_values, the quads in pipe_value_quad's order)
    o = [[[0.0] * 4 for _ in range(8)] for _ in range(32)]; md = [[0.0] * 4 for _ in range(32)]
    units = F32; vcf = 0
    for f, blk, n, p in blocks:
        vu = f if quant(f) else F32
        if vu != units:
            fr = [pow2i(value_exp(units, i) - value_exp(vu, i)) for i in range(4)]
            o = [[[f32(o[l][j][r] * fr[2 * (j & 1) + (r >> 1)]) for r in range(4)] for j in range(8)] for l in range(32)]
            units = vu
        if f == F32:
            for h in range(2):
                for e in range(2):
                    for tt in range(8):
                        t = 16 * h + 8 * e + tt
                        if t >= n: break
                        for l in range(32):
                            gid, tig = l >> 2, l & 3
                            src = 4 * tig + tt if MUTATE == "float_src" else 4 * tt + tig
                            pc = p[src][h][e]
                            for k in range(4):
                                for i in range(4):
                                    o[l][2 * k + (i >> 1)][2 * (i & 1)] = f32(o[l][2 * k + (i >> 1)][2 * (i & 1)] + f32(pc * blk[t][32 * k + 4 * pipe_value_quad(t2 and MUTATE != "resid_quad", gid) + i]))
            continue
        BITS = bits(f); ROW = 128 * BITS // 8; gpr = 128 // VG
        scales = tokens * ROW; mins = scales + tokens * gpr * 2
        full = n == 32 and tokens == 32
        for h in range(2):
            if 16 * h >= n: break
            w0 = []; w1 = []
            for l in range(32):
                p0, p1 = f32(p[l][h][0]), f32(p[l][h][1]); h0, h1 = trunc11(p0), trunc11(p1)
                w0.append(mk(h0, f32(p0 - h0))); w1.append(mk(h1, f32(p1 - h1)))
            tr = MUTATE != "no_trans"
            x01 = movmatrix(w0, tr); z01 = movmatrix([(w << 16) & M32 for w in w0], tr)
            x89 = movmatrix(w1, tr); z89 = movmatrix([(w << 16) & M32 for w in w1], tr)
            L = []
            if t2:
                assert f == INT2
                pairs, c = pipe_int2_values(blk, n, h); vcf += c
            for l in range(32):
                gid, tig = l >> 2, l & 3
                piece = []; sh = []; mh = []
                for u in range(4):
                    row = min(16 * h + 2 * tig + (u & 1) + 8 * (u >> 1), n - 1)
                    if not t2: piece.append([value_piece(BITS, blk, row * ROW, k, gid) for k in range(4)])
                    if full and (u & 1) == 0:
                        sh += list(row_pair_params(blk, scales, row, gpr)); mh += list(row_pair_params(blk, mins, row, gpr))
                    elif not full:
                        sh.append(row_params(blk, scales, row, gpr)); mh.append(row_params(blk, mins, row, gpr))
                L.append((piece, sh, mh))
            # pipe_min_terms with U = (x, x): the lane's unscaled part
            A = []
            for l in range(32):
                gid = l >> 2; piece, sh, mh = L[l]; k = gid & 3
                A.append((chunk_param_pair(mh[0], mh[1], k, gpr), 0, chunk_param_pair(mh[2], mh[3], k, gpr), 0))
            mma(md, A, [(x01[l], x89[l]) for l in range(32)])
            for k in range(4):
                Bs = []; VF = []
                for l in range(32):
                    piece, sh, mh = L[l]
                    Bs.append((side_scaled(x01[l], z01[l], chunk_param_pair(sh[0], sh[1], k, gpr)), side_scaled(x89[l], z89[l], chunk_param_pair(sh[2], sh[3], k, gpr))))
                    if t2: VF.append((int2_fragments(pairs[l][k][0]), int2_fragments(pairs[l][k][1])))
                    else: VF.append((value_fragments(f, piece[0][k], piece[1][k]), value_fragments(f, piece[2][k], piece[3][k])))
                for j in range(2):
                    d = [o[l][2 * k + j] for l in range(32)]
                    mma(d, [(VF[l][0][2 * j], VF[l][0][2 * j + 1], VF[l][1][2 * j], VF[l][1][2 * j + 1]) for l in range(32)], Bs)
                    for l in range(32): o[l][2 * k + j] = d[l]
    # pipe_add_output_t: the lane's two columns are its head's hi and lo parts; lanes tig >= G write nothing
    ms = [f32(md[l][0] + md[l][1]) for l in range(32)]
    out = {}
    for l in range(32):
        gid, tig = l >> 2, l & 3
        if tig >= G: continue
        mc = [ms[4 * k + tig] for k in range(4)]
        for j in range(8):
            for r in (0, 2):
                k = j >> 1; i = 2 * (j & 1) + (r >> 1)
                key = (tig, 32 * k + 4 * pipe_value_quad(t2, gid) + i)
                assert key not in out
                out[key] = f32(f32(f32(o[l][j][r] + o[l][j][r + 1]) * pow2i(value_exp(units, i))) + mc[k])
    assert len(out) == G * 128
    return out, vcf

def run_t(f, G, VG, n, tokens=32, resid=0):
    # one INT2/INT4 block (keys and values of format f, n visible tokens), then, where resid > 0, an F32 block of resid
    # tokens (the residual) into the same scores' layout and accumulators
    HD = 128
    cs = [random.uniform(0.5, 3) for _ in range(HD)]
    K = [[random.gauss(0, 1) * cs[c] for c in range(HD)] for _ in range(tokens)]
    kblk, Kd = encode(f, True, K, VG)
    q = [[random.gauss(0, 1.5) for _ in range(HD)] for _ in range(G)]; scale = f32(f32(1 / math.sqrt(HD)) * f32(1.4426950408889634))
    qhs = []; qls = []; qx = []
    for g in range(G):
        xs = [f32(f32(q[g][c]) * scale) for c in range(HD)]
        hs = [trunc11(x) for x in xs]
        qx.append(xs); qhs.append([f2h(h) for h in hs]); qls.append([f2h(f32(x - h)) for x, h in zip(xs, hs)])
    qs = query_copy_t(qhs, qls, G)
    s, cf = scores_t(f, kblk, n, tokens, qs, G)
    def score_err(s, Kd, n):
        ref = [[math.fsum(qx[g][c] * Kd[t][c] for c in range(HD)) for t in range(n)] for g in range(G)]
        err = 0.0
        for l in range(32):
            g = (l & 3) & (G - 1)
            for h in range(2):
                for e in range(2):
                    t = 16 * h + (l >> 2) + 8 * e
                    if t < n: err = max(err, abs(s[l][h][e] - ref[g][t]) / max(abs(v) for v in ref[g]))
                    else: assert s[l][h][e] == -INF
        return err
    err = score_err(s, Kd, n)
    blocks = []; vref = [[0.0] * HD for _ in range(G)]
    V = [[random.gauss(0, 1) for c in range(HD)] for _ in range(tokens)]
    vblk, Vd = encode(f, False, V, VG)
    specs = [(f, vblk, Vd, n)]
    if resid:
        KR = [[f32(random.gauss(0, 1) * cs[c]) for c in range(HD)] for _ in range(resid)]
        err = max(err, score_err(scores_float_t(KR, resid, qs, G), KR, resid))
        VR = [[f32(random.gauss(0, 1)) for c in range(HD)] for _ in range(resid)]
        specs.append((F32, VR, VR, resid))
    for fv, b, Vdec, nv in specs:
        pt = [[random.uniform(0, 1) if t < nv else 0.0 for t in range(tokens)] for _ in range(G)]
        p = [[[pt[(l & 3) & (G - 1)][16 * h + (l >> 2) + 8 * e] for e in range(2)] for h in range(2)] for l in range(32)]
        blocks.append((fv, b, nv, p))
        vref = [[vref[g][c] + math.fsum(pt[g][t] * Vdec[t][c] for t in range(nv)) for c in range(HD)] for g in range(G)]
    out, vcf = values_t(blocks, tokens, VG, G, f == INT2)
    vmax = max(abs(v) for r in vref for v in r)
    verr = max(abs(out[(g, c)] - vref[g][c]) for g in range(G) for c in range(HD)) / vmax
    return err, verr, cf, vcf

names = "F32 F16 BF16 FP8 INT8 INT4 INT2 TERN BIN".split()
if MUTATE:
    # only the transposed cases, with the mutation: the check must fail
    worst_t = 0
    for f, G, VG, n, resid in [(INT2, 4, 32, 32, 13), (INT4, 2, 64, 20, 0), (INT4, 4, 32, 32, 0)]:
        e, ve, cf, vcf = run_t(f, G, VG, n, resid=resid)
        worst_t = max(worst_t, e, ve)
        print(f"MUTATED ({MUTATE}) PIPE_T K/V {names[f]} G{G} VG{VG} n{n:2d} + F32 {resid:2d}: scores {e:.2e}, values {ve:.2e}", flush=True)
    print("worst (mutated)", worst_t, "FAILS as it should" if worst_t > 1e-4 else "PASSES: the mutation was not caught")
    sys.exit(0 if worst_t > 1e-4 else 1)
worst = 0
for kf, vf, G, VG, n, vf2 in [(INT2, INT2, 4, 32, 32, None), (INT4, INT4, 4, 32, 20, None), (INT8, INT8, 4, 64, 32, None), (FP8, FP8, 4, 32, 32, None),
                              (F16, F16, 4, 32, 17, None), (TERN, TERN, 2, 128, 32, None), (BIN, BIN, 8, 32, 32, None), (INT2, INT4, 1, 64, 9, None),
                              (BIN, INT2, 4, 128, 32, None), (INT4, TERN, 8, 32, 31, None), (FP8, BIN, 4, 64, 32, None), (F16, INT8, 2, 32, 32, None),
                              (INT2, INT2, 1, 32, 32, None), (INT4, INT4, 2, 32, 32, None),
                              (INT2, INT2, 4, 32, 32, F16), (INT4, INT4, 4, 32, 32, INT2), (INT2, BIN, 2, 64, 32, INT4), (INT8, F16, 8, 32, 32, TERN)]:
    e, ve = run(kf, vf, G, VG, n, vf2=vf2)
    worst = max(worst, e, ve)
    then = f" then {names[vf2]}" if vf2 is not None else ""
    print(f"K {names[kf]:4s} V {names[vf]:4s}{then} G{G} VG{VG} n{n:2d}: scores rel err {e:.2e}, values rel err {ve:.2e}", flush=True)
print("worst", worst)
worst_t = 0
for f, G, VG, n, resid in [(INT2, 4, 32, 32, 0), (INT2, 4, 32, 32, 13), (INT4, 4, 32, 32, 0), (INT4, 4, 32, 20, 32), (INT2, 2, 64, 17, 0),
                           (INT4, 2, 32, 32, 5), (INT2, 1, 128, 32, 8), (INT4, 1, 32, 9, 0), (INT2, 4, 128, 31, 1),
                           (INT2, 2, 32, 9, 20), (INT2, 4, 64, 32, 32)]:
    e, ve, cf, vcf = run_t(f, G, VG, n, resid=resid)
    worst_t = max(worst_t, e, ve)
    assert cf == 0, f"query copy loads with {cf} bank conflicts"
    vw = f", value ldmatrix wavefronts {vcf}" if f == INT2 else ""
    print(f"PIPE_T K/V {names[f]} G{G} VG{VG} n{n:2d} + F32 {resid:2d}: scores rel err {e:.2e}, values rel err {ve:.2e}, query bank conflicts {cf}{vw}", flush=True)
print("worst (transposed)", worst_t)
sys.exit(0 if max(worst, worst_t) <= 1e-4 else 1)
