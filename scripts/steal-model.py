#!/usr/bin/env python3
# A model of the pipelined kernel's block claims (paged_attention_tc.cu, STEAL; branch gpusteal2) without a GPU: the units
# of one head, 4 warps each, claim the head's pool through one counter, each warp following steal_ensure / steal_step and
# the block loop's issue points as the kernel does, the warps interleaved at random (the atomics land in the order the
# scheduler runs them). Checks, over many random heads and schedules: every pool block is read exactly once and the
# last block's pieces once; a warp reads block j's descriptor from its ring where it wrote it and never overwrites a live
# one; each entry is issued once, in order, before its block is consumed, and only for a block that exists; no claim or
# copy is left pending when a warp leaves its loop.
#   scripts/steal-model.py [SEEDS]
import random
import sys

GRAIN, FIRST, QN, WARPS = 4, 8, 16, 4


class Warp:
    def __init__(self, head, pieces, nbar, pair):
        self.h, self.pair, self.nbar = head, pair, nbar
        self.ahead = nbar if pair else (nbar + 1) >> 1
        self.ring = {}  # slot -> block sequence index written there (and what it holds)
        self.seq = []   # the warp's blocks in order: ('piece', i) or ('block', b)
        self.issued = []
        for p in pieces:
            self.write(len(self.seq), ('piece', p), 0)
        base = head.claim(FIRST)
        cnt = max(0, min(FIRST, head.pool - base))
        for i in range(cnt):
            self.write(len(self.seq), ('block', base + i), 0)
        self.avail, self.craw, self.pending, self.pend, self.raw = len(self.seq), 0, False, 0, []
        self.done = base + FIRST >= head.pool
        self.j = 0
        e = 0
        while e < nbar and self.blk(e) < self.avail:
            self.issue(e)
            e += 1

    def blk(self, e):
        return e if self.pair else e >> 1

    def write(self, x, what, j):
        assert x == len(self.seq), "descriptors land in order"
        assert x < j + QN, f"ring overwrite: writing block {x} while block {j} is live (QN {QN})"
        self.seq.append(what)
        self.ring[x % QN] = x

    def read(self, x):
        assert self.ring.get(x % QN) == x, f"ring slot {x % QN} holds {self.ring.get(x % QN)}, not block {x}"
        return self.seq[x]

    def issue(self, e):
        assert e == len(self.issued), f"entry {e} issued out of order (next {len(self.issued)})"
        assert self.blk(e) < self.avail, "an entry for a block without a descriptor"
        self.read(self.blk(e))
        self.issued.append(e)

    def step(self, claim):
        if self.craw:
            for b in self.raw:
                self.write(self.avail, ('block', b), self.j)
                self.avail += 1
            self.craw, self.raw = 0, []
        if self.pending:
            base = self.pend
            cnt = max(0, min(GRAIN, self.h.pool - base))
            self.raw = [base + i for i in range(cnt)]
            self.craw = cnt
            self.pending = False
            if base + GRAIN >= self.h.pool:
                self.done = True
        elif claim and not self.done:
            self.pend = self.h.claim(GRAIN)
            self.pending = True

    def ensure(self, b):
        while self.avail <= b and (self.craw or self.pending or not self.done):
            self.step(True)

    def run(self):
        # One block of the loop a call; False when the warp has left its loop.
        j = self.j
        self.ensure(j + self.ahead)
        if j >= self.avail:
            assert not self.pending and not self.craw, "a claim or a copy left pending"
            return False
        self.step(self.avail + self.craw - j <= self.ahead + GRAIN)
        what = self.read(j)
        e = j if self.pair else 2 * j
        assert e < len(self.issued), f"block {j}'s keys (entry {e}) consumed before they were issued"
        if not self.pair:
            # The keys' slot takes entry e + nbar once they are scored; the values are waited for after that.
            bn = (e + self.nbar) >> 1
            if bn < self.avail:
                self.issue(e + self.nbar)
            assert e + 1 < len(self.issued), f"block {j}'s values (entry {e + 1}) consumed before they were issued"
        self.h.seen.append((what, self))
        ev = e if self.pair else e + 1
        bn = ev + self.nbar if self.pair else (ev + self.nbar) >> 1
        if bn < self.avail:
            self.issue(ev + self.nbar)
        self.j += 1
        return True


class Head:
    def __init__(self, blocks):
        self.pool, self.ctr, self.seen = blocks - 1, 0, []

    def claim(self, n):
        old = self.ctr
        self.ctr += n
        return old


def one(rnd):
    blocks = rnd.choice([0, 1, 2, 3, 5, 8, 9, 17, 31, 33, 64, 100, 257, 1000])
    units = rnd.randint(1, 12)
    pieces = rnd.randint(1, 8) if blocks > 0 else 0  # the last block's pieces (1: staged whole)
    nbar, pair = rnd.choice([(2, False), (3, False), (4, False), (8, False), (2, True), (4, True), (1, False)])
    head = Head(blocks)
    warps = []
    for u in range(units):
        last = u == units - 1
        for w in range(WARPS):
            mine = [p for p in range(pieces) if last and p % WARPS == w]
            warps.append(Warp(head, mine, nbar, pair))
    live = list(warps)
    while live:
        w = rnd.choice(live)
        if not w.run():
            live.remove(w)
    got = sorted(x for (kind, x), _ in head.seen if kind == 'block')
    assert got == list(range(max(0, blocks - 1))), f"pool blocks read {got[:20]}... of {blocks - 1}"
    ps = sorted(x for (kind, x), _ in head.seen if kind == 'piece')
    assert ps == list(range(pieces)), f"pieces read {ps} of {pieces}"
    for w in warps:
        last_e = (len(w.seq) if w.pair else 2 * len(w.seq)) - 1
        assert len(w.issued) == last_e + 1, f"entries issued {len(w.issued)}, blocks {len(w.seq)}"
    return blocks, units


def main():
    seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    for s in range(seeds):
        rnd = random.Random(s)
        try:
            one(rnd)
        except AssertionError as e:
            sys.exit(f"seed {s}: {e}")
    print(f"steal-model: {seeds} random heads and schedules, every block read once, every entry issued once in order")


if __name__ == "__main__":
    main()
