#!/usr/bin/env python3
"""Issue 7's point-5 targets, row by row, from the logs of one `scripts/gpu-tests.sh issue7 DIR` run.

    python3 scripts/issue7-scorecard.py DIR

Reads DIR/dense.txt (`bench`), DIR/paged1.txt and DIR/paged8.txt (`bench-paged`), DIR/hf.txt (transformers) and prints:

- dense F16 decode at batch 1 against the roofline (target >= 90%), once with the copy bandwidth its own process measured
  and once with the fastest copy any process of the run measured (each process measures its own; on an H200 they spread
  4150-4237 GB/s in one session, enough to move a row across the line);
- our dense step against transformers' eager one on the same shapes (target >= 10x), and where 10x is out of reach
  because a tenth of transformers' step is under the roofline;
- every compressed row that has a float16 reference: its speedup as a share of the factor its bytes predict (target
  >= 90%), against the dense float16 step and against the fastest full float16 step of its process (dense or paged);
- the counts, for the issue's four formats plus KIVI-4 at 1 × 32K, 1 × 128K and 8 × 32K ("the fifteen rows" of
  docs/benchmarks.md) and for every row.

The numbers are the logs' own (rounded as printed); nothing is re-measured. Exit code 0 whatever the verdicts: a missing
or unreadable log is reported and skipped (exit 2 only when none of the four can be read).
"""
import re
import sys
from pathlib import Path

# The compressed caches issue 7 names (and KIVI-4, which the tables have always carried), with the pipelined kernel.
FORMATS = [
    ("KVzip 0.3", "KVzip 0.3 (F16)"),
    ("KIVI-2", "KIVI-2 (INT2 K per channel, V per token, g32)"),
    ("KIVI-4", "KIVI-4 (INT4, g32)"),
    ("FP8", "FP8 E4M3"),
    ("KVzip 0.3 + INT4", "KVzip 0.3 + INT4"),
]
# The batch sizes and contexts of "the fifteen rows" (docs/benchmarks.md): 8 × 128K has no float16 cache to divide by.
FIFTEEN_SHAPES = {("1", "32768"), ("1", "131072"), ("8", "32768")}
ROOFLINE_TARGET = 90.0
TRANSFORMERS_TARGET = 10.0
FACTOR_TARGET = 90.0


def table_rows(text, first_cell):
    """Cells of every markdown table row whose first cell matches the regular expression first_cell."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and re.fullmatch(first_cell, cells[0]):
            rows.append(cells)
    return rows


def copy_bandwidth(text):
    m = re.search(r"device-to-device copy: (\d+) GB/s", text)
    return float(m.group(1)) if m else None


def read(path):
    try:
        return path.read_text(errors="replace")
    except OSError as e:
        print(f"(cannot read {path}: {e.strerror})")
        return None


def mark(ok):
    return "pass" if ok else "FAIL"


def main(argv):
    if len(argv) != 2:
        print("usage: scripts/issue7-scorecard.py DIR  (the logs of scripts/gpu-tests.sh issue7)", file=sys.stderr)
        return 64
    d = Path(argv[1])
    dense, paged1, paged8, hf = (read(d / n) for n in ("dense.txt", "paged1.txt", "paged8.txt", "hf.txt"))
    if all(t is None for t in (dense, paged1, paged8, hf)):
        print(f"no issue 7 logs in {d}", file=sys.stderr)
        return 2
    copies = [c for c in (copy_bandwidth(t) for t in (dense, paged1, paged8) if t) if c]
    best_copy = max(copies) if copies else None

    # Dense F16 at batch 1 against the roofline, and our steps by shape for the transformers comparison.
    ours = {}
    own = copy_bandwidth(dense) if dense else None
    if dense and own is None:
        print("(dense.txt logs no copy bandwidth: no roofline)")
    if dense and own is not None:
        print(f"## Dense F16 decode against the roofline (bench; this process's copy {own:.0f} GB/s, the run's fastest {best_copy:.0f})")
        print("| batch | context | ms/step | GB read/step | % (own copy) | % (fastest copy) | batch 1 >= 90% |")
        print("|---|---|---|---|---|---|---|")
        # | batch | context | ms/step | tokens/s | GB read/step | roofline steps/s | % of roofline | achieved GB/s |
        for cells in table_rows(dense, r"[18]"):
            if len(cells) != 8 or not re.fullmatch(r"\d+", cells[1]):
                continue
            batch, context, ms, gb = int(cells[0]), int(cells[1]), float(cells[2]), float(cells[4])
            ours[(batch, context)] = (ms, 1000.0 / float(cells[5]))
            own_pct = gb / own * 1000.0 / ms * 100.0
            best_pct = gb / best_copy * 1000.0 / ms * 100.0
            verdict = (f"{mark(own_pct >= ROOFLINE_TARGET)} / {mark(best_pct >= ROOFLINE_TARGET)}" if batch == 1 else "(batch 8: no target)")
            print(f"| {batch} | {context} | {ms:.3f} | {gb:.2f} | {own_pct:.1f}% | {best_pct:.1f}% | {verdict} |")
        print()

    if hf and ours:
        print("## Against transformers' eager decode (target >= 10x)")
        print("| batch | context | transformers ms | ours ms | speedup | verdict |")
        print("|---|---|---|---|---|---|")
        # | attention | batch | context | ms/step | tokens/s |
        for cells in table_rows(hf, r"eager"):
            if len(cells) < 4 or not (cells[1].isdigit() and cells[2].isdigit()):
                continue  # a cut-off row
            batch, context = int(cells[1]), int(cells[2])
            if (batch, context) not in ours:
                continue
            if not re.fullmatch(r"[\d.]+", cells[3]):
                print(f"| {batch} | {context} | {cells[3]} | {ours[(batch, context)][0]:.3f} | — | transformers did not run |")
                continue
            theirs = float(cells[3])
            ms, roofline_ms = ours[(batch, context)]
            speedup = theirs / ms
            if speedup >= TRANSFORMERS_TARGET:
                verdict = "pass"
            elif theirs / TRANSFORMERS_TARGET < roofline_ms:
                verdict = f"out of reach (10x = {theirs / TRANSFORMERS_TARGET:.2f} ms, the roofline {roofline_ms:.2f})"
            else:
                verdict = "FAIL"
            print(f"| {batch} | {context} | {theirs:.2f} | {ms:.3f} | {speedup:.1f}x | {verdict} |")
        print()

    # rows, >= 90% against dense, >= 90% against the fastest F16, rows that log the fastest F16 column
    counts = {"fifteen": [0, 0, 0, 0], "all": [0, 0, 0, 0]}
    for name, text in (("batch 1", paged1), ("batch 8", paged8)):
        if not text:
            continue
        print(f"## Compressed caches, {name} (bench-paged; of the byte factor: against the dense F16 step / the fastest F16 step)")
        print("| batch | context | cache | ms/step | predicted | of predicted (dense) | (fastest F16) | verdict |")
        print("|---|---|---|---|---|---|---|---|")
        # | batch | context | cache | kernel | KV GB | ms | tok/s | roofline tok/s | % | speedup | predicted | of predicted | of predicted, fastest F16 |
        for cells in table_rows(text, r"[18]"):
            if len(cells) < 12 or cells[3] != "Pipelined":
                continue
            short = next((s for s, full in FORMATS if cells[2] == full), None)
            if short is None:
                continue
            vs_dense = float(cells[11].rstrip("%")) if cells[11] not in ("", "—") else None
            vs_fastest = float(cells[12].rstrip("%")) if len(cells) > 12 and cells[12] not in ("", "—") else None
            if vs_dense is None and vs_fastest is None:
                continue  # no float16 step fits at this batch and context
            ok_dense = vs_dense is not None and vs_dense >= FACTOR_TARGET
            ok_fastest = vs_fastest is not None and vs_fastest >= FACTOR_TARGET
            dense_cell = f"{vs_dense:.1f}%" if vs_dense is not None else "(no dense step)"
            fastest = f"{vs_fastest:.1f}%" if vs_fastest is not None else "(not logged)"
            verdict = f"{mark(ok_dense) if vs_dense is not None else '—'} / {mark(ok_fastest) if vs_fastest is not None else '—'}"
            print(f"| {cells[0]} | {cells[1]} | {short} | {cells[5]} | {cells[10]} | {dense_cell} | {fastest} | {verdict} |")
            groups = ["all"] + (["fifteen"] if (cells[0], cells[1]) in FIFTEEN_SHAPES else [])
            for g in groups:
                counts[g][0] += 1
                counts[g][1] += ok_dense
                counts[g][2] += ok_fastest
                counts[g][3] += vs_fastest is not None
        print()

    for g, label in (("fifteen", "at 1 x 32K, 1 x 128K and 8 x 32K (the fifteen rows)"), ("all", "every row with a float16 reference")):
        n, a, b, logged = counts[g]
        if not n:
            continue
        fastest = (f"{b} of {logged} against the fastest F16 step" if logged
                   else "the fastest-F16 column not logged (bench-paged before b59edaa)")
        print(f"compressed rows {label}: {a} of {n} at >= 90% of their byte factor against the dense F16 step, {fastest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
