#!/usr/bin/env python3
# The control flow of gemv_mma's weight ring (src/KvSharp/Compute/Cuda/Kernels/gemv_mma.cuh) on the CPU, for changing the
# ring's depth without a GPU: the preload before the wait (steps min(i, steps - 1)), the groups of D steps with their
# refills (unclamped, clamped at the tile's end, or chained into the next tile's first steps where the steps are a
# multiple of D), the last steps % D from the ring, and the reload at a new tile when not chained. For every ring depth,
# step count and strided grid below, each block must consume every step of each of its tiles exactly once, from a slot
# holding that tile's step. Exit status 1 on a mismatch.
#   python3 scripts/mma-ring-model.py
import sys


def block_ok(D, steps, tiles, grid, b):
    tile = b
    if tile >= tiles:
        return True
    chain = steps % D == 0
    nxt = lambda t: t + grid if t + grid < tiles else t
    wa, na = tile, nxt(tile)
    ring = [(wa, min(i, steps - 1)) for i in range(D)]
    while True:
        has_next = tile + grid < tiles
        got = []

        def group(s0, pa, base, clamp):
            for i in range(D):
                got.append((s0 + i, ring[i]))
                ring[i] = (pa, min(base + i, steps - 1) if clamp else base + i)

        s0 = 0
        while s0 + 2 * D <= steps:
            group(s0, wa, s0 + D, False)
            s0 += D
        if s0 + D <= steps:
            if chain and has_next:
                group(s0, na, 0, False)
            else:
                group(s0, wa, s0 + D, True)
            s0 += D
        for i in range(D - 1):
            if s0 + i < steps:
                got.append((s0 + i, ring[i]))
        if sorted(got) != [(s, (tile, s)) for s in range(steps)]:
            print(f"ring {D}, {steps} steps, {tiles} tiles over {grid} blocks: block {b} tile {tile} consumed {sorted(got)}")
            return False
        if not has_next:
            return True
        tile += grid
        wa, na = na, nxt(tile)
        if not chain:
            ring = [(wa, min(i, steps - 1)) for i in range(D)]


bad = sum(not block_ok(D, steps, tiles, grid, b)
          for D in (4, 6, 8) for steps in range(1, 80)
          for tiles, grid in ((1, 1), (5, 4), (8, 4), (16, 3), (7, 7), (256, 264), (1792, 264))
          for b in range(min(grid, tiles)))
print("ring model:", "every step of every tile from the right slot" if bad == 0 else f"{bad} blocks wrong")
sys.exit(1 if bad else 0)
