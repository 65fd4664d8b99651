"""Time generation plus validation of a large dataset (M=1000, N=10^5, lengths 2..16).

Prints seconds for each phase; no assertion (machines are shared and noisy).
Usage: python bench/bench_data.py [M N]
"""
import sys
import time

import refimpl as ri


def main(M=1000, N=100_000):
    for rep in range(3):
        t0 = time.perf_counter()
        ds = ri.generate(M, N, 2, 16, seed=rep)
        t1 = time.perf_counter()
        ri.validate(ds)
        t2 = time.perf_counter()
        print(f"M={M} N={N} lengths 2..16 seed={rep}: generate {t1 - t0:.2f} s, validate {t2 - t1:.2f} s, "
              f"total {t2 - t0:.2f} s")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
