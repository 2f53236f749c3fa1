# Naive, independent reference for byte-level BPE tokenizer.json files (generates test data).
import json, sys, regex
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~")+1))+list(range(ord("¡"), ord("¬")+1))+list(range(ord("®"), ord("ÿ")+1))
    cs = bs[:]; n = 0
    for b in range(256):
        if b not in bs: bs.append(b); cs.append(256+n); n += 1
    return dict(zip(bs, map(chr, cs)))
B2U = bytes_to_unicode()
def load(path):
    j = json.load(open(path, encoding='utf8'))
    v = j['model']['vocab']; ranks = {}
    for i, m in enumerate(j['model']['merges']):
        a, b = m.split(' ', 1) if isinstance(m, str) else m
        ranks.setdefault((a, b), i)
    pats = []
    def walk(p):
        t = p['type']
        if t == 'Sequence': [walk(x) for x in p['pretokenizers']]
        elif t == 'Split': pats.append(p['pattern']['Regex'])
        elif t == 'Digits': pats.append(r'\p{N}' if p['individual_digits'] else r'\p{N}+')
        elif t == 'ByteLevel':
            if p.get('use_regex', True): pats.append(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
        else: raise Exception(t)
    walk(j['pre_tokenizer'])
    return v, ranks, pats, j['model'].get('ignore_merges', False)
def split(text, pats):
    pieces = [text]
    for p in pats:
        r = regex.compile(p); out = []
        for s in pieces:
            cur = 0
            for m in r.finditer(s):
                if m.end() == m.start(): continue
                if m.start() > cur: out.append(s[cur:m.start()])
                out.append(m.group()); cur = m.end()
            if cur < len(s): out.append(s[cur:])
        pieces = out
    return pieces
def bpe(word, v, ranks, ignore):
    w = ''.join(B2U[b] for b in word.encode('utf8'))
    if ignore and w in v: return [v[w]]
    syms = list(w)
    while True:
        best = None
        for i in range(len(syms)-1):
            r = ranks.get((syms[i], syms[i+1]))
            if r is not None and (best is None or r < best[0]): best = (r, i)
        if best is None: break
        i = best[1]; syms[i:i+2] = [syms[i]+syms[i+1]]
    return [v[s] for s in syms]
if __name__ == '__main__':
    v, ranks, pats, ign = load(sys.argv[1])
    raw = open(sys.argv[2], encoding='utf8', newline='').read()
    sep = "\n__ggml_vocab_test__\n"
    parts = raw.split(sep)
    if parts and parts[-1] == '': parts = parts[:-1]
    for t in parts:
        ids = [i for p in split(t, pats) for i in bpe(p, v, ranks, ign)]
        print(' ' + ' '.join(map(str, ids)) if ids else '')
