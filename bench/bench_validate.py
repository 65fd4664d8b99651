"""Loading and validating a dataset file: time and peak memory against file size.

Each case writes a realizable dataset file, then loads and validates it in a fresh
subprocess (``refimpl.load_dataset``: strict JSON read, ragged storage, validation) and
reports the wall time and the subprocess's peak resident memory, as a multiple of the
file size and above the bare interpreter with refimpl imported.

The files are built here, not with ``refimpl.generate``, so their size can be set
independently of M: sentence tokens are drawn from a pool of distinct tokens spread over
0..M-1, the collocation is n(x) = x + 1 mod M on the pool, and the optimal token of a
sentence is its largest token (so every query's induced order is part of the numeric
order and the file is realizable).

Usage: ``python bench/bench_validate.py [--quick]``.
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
import resource, sys, time
import refimpl as ri
from refimpl.data import validate
import refimpl.io
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
ds = ri.load_dataset(sys.argv[1])
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(dt, base * 1024, peak * 1024, ds.n_sentences, ds.vocab_size)
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


def run_case(path):
    out = subprocess.run([sys.executable, "-c", CHILD, path], capture_output=True, text=True, check=True)
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
    ]
    print(f"{'case':14s} {'file MB':>8s} {'load+validate s':>16s} {'MB/s':>7s} "
          f"{'peak MB':>8s} {'above import MB':>16s} {'x file':>7s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in cases:
            path = os.path.join(tmp, "case.json")
            size = write_case(path, **kw)
            dt, base, peak = run_case(path)
            extra = peak - base
            print(f"{name:14s} {size / 2**20:8.2f} {dt:16.3f} {size / 2**20 / dt:7.1f} "
                  f"{peak / 2**20:8.1f} {extra / 2**20:16.1f} {extra / size:7.1f}")
            sys.stdout.flush()


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.1f} s", file=sys.stderr)
