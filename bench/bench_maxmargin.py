"""Time the max-margin solvers: float W_kq* (with its KKT certificate) at the benchmark sizes
S (M=20, N=200) and L (M=200, N=10^4), and the exact rational solver on M=6, 30 rows.

Prints seconds (best of 3); no assertion (machines are shared and noisy). These timings
used to be wall-clock assertions in tests/test_maxmargin.py and tests/test_proofs.py.
Usage: python bench/bench_maxmargin.py
"""
import random
import time

import refimpl as ri
from refimpl_proofs import exact
from refimpl import maxmargin as mm


def best_of(f, reps=3):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    for name, M, N in (("S", 20, 200), ("L", 200, 10_000)):
        ds = ri.generate(vocab_size=M, n_sentences=N, seed=0)
        ds.optimal                                   # validation outside the timing
        print(f"W_kq* size {name} (M={M}, N={N}): {best_of(lambda: mm.w_kq_star(ds)):.3f} s")
    rng = random.Random(1)
    rows = []
    for _ in range(30):                              # difference rows e_upper - e_lower
        lo, up = rng.sample(range(6), 2)
        rows.append([1 if v == up else -1 if v == lo else 0 for v in range(6)])
    try:
        exact.exact_least_distance(rows)
    except ValueError:                               # a random cycle makes it infeasible
        rows = [r for r in rows if r.index(1) > r.index(-1)]
    print(f"exact rational least distance, M=6, {len(rows)} rows: "
          f"{best_of(lambda: exact.exact_least_distance(rows)):.3f} s")


if __name__ == "__main__":
    main()
