"""Loading and validating a dataset file: time and peak memory against file size.

Each case writes a realizable dataset file, then, each in a fresh subprocess, loads it
without validation (``refimpl.load_dataset(path, check=False)``: strict JSON read into
ragged int64 arrays) and loads and validates it (``check=True``). For both it reports
the wall time and the peak resident memory above the interpreter with refimpl
imported, in MB and as a multiple of the file size. The peak is measured from a reset
high-water mark (``/proc/self/clear_refs``, Linux) after the imports; elsewhere
``ru_maxrss`` is used, which also counts the parent's memory at the fork and so
underestimates small peaks.

The files are built here, not with ``refimpl.generate``, so their size can be set
independently of M: sentence tokens are drawn from a pool of distinct tokens spread over
0..M-1, the collocation is n(x) = x + 1 mod M on the pool, and the optimal token of a
sentence is its largest token (so every query's induced order is part of the numeric
order and the file is realizable).

"+MB" is the peak above the baseline; "x file" is that over the file size.

Usage: ``python bench/bench_validate.py [--quick]`` (``--quick``: files a tenth the size,
no 100 MB case).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

CHILD = r"""
import re, resource, sys, time
import refimpl as ri
from refimpl.data import validate
import refimpl.io

def status(key):
    with open("/proc/self/status") as f:
        return int(re.search(key + r":\s+(\d+)", f.read()).group(1)) * 1024

try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark of this process's resident memory
    base, peak = status("VmRSS"), lambda: status("VmHWM")
except OSError:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t = time.perf_counter()
ds = ri.load_dataset(sys.argv[1], check=sys.argv[2] == "check")
dt = time.perf_counter() - t
print(dt, base, peak(), ds.n_sentences, ds.vocab_size)
"""


def write_case(path, M, N, min_len, max_len, pool_size, seed=0, long_len=0):
    """Write a realizable dataset file; returns its size in bytes."""
    rng = np.random.default_rng(seed)
    pool = np.unique(rng.choice(M, size=min(pool_size, M), replace=False) if M <= 10**7
                     else rng.integers(0, M, size=pool_size))
    lengths = rng.integers(min_len, max_len + 1, size=N)
    sents = [pool[rng.integers(0, len(pool), size=L)].tolist() for L in lengths]
    if long_len:
        sents.append(pool[rng.integers(0, len(pool), size=long_len)].tolist())
    nxt = [(max(s) + 1) % M for s in sents]
    with open(path, "w") as f:
        f.write('{"format": "refimpl/realizable-dataset@1", "vocab_size": %d,\n' % M)
        f.write(' "collocation": %s,\n' % json.dumps([[int(x), int((x + 1) % M)] for x in pool],
                                                      separators=(",", ":")))
        f.write(' "sentences": [\n  ')
        f.write(",\n  ".join(json.dumps(s, separators=(",", ":")) for s in sents))
        f.write('\n ],\n "next_tokens": %s}\n' % json.dumps(nxt, separators=(",", ":")))
    return os.path.getsize(path)


def run_case(path, check):
    """(seconds, baseline bytes, peak bytes) of ``load_dataset(path, check=check)`` in a fresh process."""
    out = subprocess.run([sys.executable, "-c", CHILD, path, "check" if check else "no-check"],
                         capture_output=True, text=True, check=True)
    dt, base, peak, N, M = out.stdout.split()
    return float(dt), int(base), int(peak)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller files")
    args = ap.parse_args()
    scale = 10 if args.quick else 1
    cases = [
        ("M=1e3", dict(M=1000, N=200_000 // scale, min_len=2, max_len=16, pool_size=1000)),
        ("M=1e5", dict(M=100_000, N=200_000 // scale, min_len=2, max_len=16, pool_size=100_000)),
        ("M=1e8", dict(M=100_000_000, N=200_000 // scale, min_len=2, max_len=16, pool_size=100_000)),
        ("M=1e8 small", dict(M=100_000_000, N=3, min_len=2, max_len=3, pool_size=10)),
        ("long sentence", dict(M=1000, N=20_000, min_len=2, max_len=6, pool_size=1000, long_len=200_001)),
        ("M=10", dict(M=10, N=200_000 // scale, min_len=2, max_len=16, pool_size=10)),
    ]
    if not args.quick:
        cases.append(("M=1e8 100MB", dict(M=100_000_000, N=1_000_000, min_len=2, max_len=16, pool_size=100_000)))
    print(f"{'':22s} {'----- load (check=False) -----':>30s}  {'------- load + validate -------':>31s}")
    print(f"{'case':14s} {'file MB':>7s} {'s':>6s} {'MB/s':>6s} {'+MB':>7s} {'x file':>7s}  "
          f"{'s':>7s} {'MB/s':>6s} {'+MB':>7s} {'x file':>7s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in cases:
            path = os.path.join(tmp, "case.json")
            size = write_case(path, **kw)
            row = f"{name:14s} {size / 2**20:7.2f}"
            for check in (False, True):
                dt, base, peak = run_case(path, check)
                extra = peak - base
                row += (f" {dt:{7 if check else 6}.2f} {size / 2**20 / dt:6.1f} {extra / 2**20:7.1f} "
                        f"{extra / size:7.2f} ")
            print(row.rstrip())
            sys.stdout.flush()


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.1f} s", file=sys.stderr)
