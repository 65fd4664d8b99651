"""This machine's float64 FMA and exp throughput, and how close the stage-2 step at size L
comes to the limit they set.

Micro-benchmarks (Numba, float64, no fastmath, best of several runs):

  fma       a compiled loop over 256 doubles, each updated by a chain of 8 FMAs
            (``kernels_math.fma``) per pass: 64 independent 4-wide chains, vectorized, so
            the FMA units, not latency, bound it. GFLOP/s counts 2 flops per FMA. Also on
            2 threads (``prange`` over two arrays): on a VM whose 2 vCPUs are hyperthreads
            of one core, 2 threads give about the throughput of 1.
  exp       the kernels' vectorized exp (``kernels_math.exp_shifted``, one loop over M
            logits, no libm call) on M = 200 and on 4096 values; libm ``exp`` called per
            element from a compiled loop (``math.exp``); NumPy ``np.exp`` for reference.

Then one stage-2 step at size L (M = 200, N = 10^4, lengths 2..16), counted from
``kernels_chunk._chunk`` (``want_k`` only): per sentence of length L_i,
  L_i M multiply-adds for the logits z = sum_l phi_l O[:, x_l], L_i M for the dot products
  g_l = O[:, x_l]^T r, M vectorized exps (the softmax of the logits), ~L_i scalar exps
  (attention), and O(M + L_i) other adds, compares and divisions;
plus O(M^2) per step for the chunk reduction, the norm and the update. The machine limit
is FMAs / FMA rate + exps / exp rate (both use the same FP units, so they add), on one
thread and on the threads the kernel would use; printed next to the measured step
(``Stage2Direction`` + ``compensated_step``, median, serial and default threading).

    python bench/bench_machine.py [--repeats R]
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
from numba import get_num_threads, njit, prange

import refimpl as ri
from refimpl import kernels
from refimpl.kernels_math import exp_shifted, fma

LANES = 256          # doubles per FMA array (2 KB: L1-resident)
CHAIN = 8            # dependent FMAs per element per pass
A, B = 0.999999, 1e-9  # x -> A x + B stays finite and normal


@njit(cache=True)
def _fma_passes(acc, passes):
    for _ in range(passes):
        for j in range(acc.shape[0]):
            x = acc[j]
            x = fma(x, A, B)
            x = fma(x, A, B)
            x = fma(x, A, B)
            x = fma(x, A, B)
            x = fma(x, A, B)
            x = fma(x, A, B)
            x = fma(x, A, B)
            x = fma(x, A, B)
            acc[j] = x


@njit(cache=True, parallel=True)
def _fma_passes_threads(accs, passes):
    for t in prange(accs.shape[0]):
        _fma_passes(accs[t], passes)


@njit(cache=True)
def _exp_kernel(z, w, reps):
    for _ in range(reps):
        exp_shifted(z, 0.0, w)


@njit(cache=True)
def _exp_libm(z, w, reps):
    for _ in range(reps):
        for v in range(z.shape[0]):
            w[v] = math.exp(z[v])


def best_time(f, repeats):
    f()
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def fma_rate(repeats, threads=1):
    """FMAs per second (best of ``repeats``), on ``threads`` threads."""
    passes = 20_000
    if threads == 1:
        acc = np.ones(LANES)
        t = best_time(lambda: _fma_passes(acc, passes), repeats)
    else:
        accs = np.ones((threads, LANES))
        t = best_time(lambda: _fma_passes_threads(accs, passes), repeats)
    return threads * passes * LANES * CHAIN / t


def exp_rates(repeats):
    rng = np.random.default_rng(0)
    out = {}
    for n in (200, 4096):
        z = -rng.uniform(0.0, 40.0, n)
        w = np.empty(n)
        reps = max(1, 400_000 // n)         # ~0.3 ms (kernel) to ~4 ms (libm) per timing
        out[f"kernel exp_shifted, n={n}"] = n * reps / best_time(lambda: _exp_kernel(z, w, reps), repeats)
        out[f"libm exp (math.exp in njit), n={n}"] = n * reps / best_time(lambda: _exp_libm(z, w, reps), repeats)
        out[f"numpy np.exp, n={n}"] = n * reps / best_time(
            lambda: [np.exp(z, out=w) for _ in range(reps)], repeats)
    return out


def step_counts(ds, M, nc):
    """(FMAs, vectorized exps, scalar exps) of one stage-2 step (``_chunk`` with want_k)."""
    sum_l = int(ds.lengths.sum())
    N = ds.n_sentences
    fmas = 2 * sum_l * M                       # logits + g_l dots
    fmas += (nc + 2) * M * M                   # chunk reduction, norm, Kahan update (about)
    return fmas, N * M, sum_l


def measured_step(ds, M, O, K, mode, repeats):
    old = os.environ.pop(kernels.THREADS_ENV, None)
    if mode:
        os.environ[kernels.THREADS_ENV] = mode
    try:
        sd = kernels.Stage2Direction(O, ds.tokens, ds.lengths, ds.next_tokens)
    finally:
        os.environ.pop(kernels.THREADS_ENV, None)
        if old is not None:
            os.environ[kernels.THREADS_ENV] = old
    c, out = np.zeros((M, M)), np.empty((M, M))
    ts = []
    for i in range(repeats + 8):               # the first 8: compile, start-up timings
        t = time.perf_counter()
        D = sd.direction(K)[0]
        kernels.compensated_step(K, c, D, 0.01, out)
        if i >= 8:
            ts.append(time.perf_counter() - t)
    return float(np.median(ts)), float(np.min(ts)), sd._p.chooser.counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    nt = get_num_threads()
    print(f"cpus={os.cpu_count()} numba threads={nt} load={os.getloadavg()[0]:.2f}")
    f1 = fma_rate(args.repeats)
    fn = fma_rate(args.repeats, nt) if nt > 1 else f1
    print(f"fma, 1 thread : {f1 / 1e9:7.2f} G FMA/s = {2 * f1 / 1e9:7.2f} GFLOP/s")
    print(f"fma, {nt} threads: {fn / 1e9:7.2f} G FMA/s = {2 * fn / 1e9:7.2f} GFLOP/s  "
          f"({fn / f1:.2f}x one thread; ~1x: the threads share one core's FMA units, or the "
          f"other vCPU is busy)")
    exps = exp_rates(args.repeats)
    for k, v in exps.items():
        print(f"exp, {k:34}: {v / 1e9:6.3f} G exp/s")
    e1 = exps["kernel exp_shifted, n=200"]

    M, N = 200, 10_000
    ds = ri.generate(M, N, 2, 16, seed=0)
    O, K = np.random.default_rng(0).standard_normal((2, M, M))
    nc = kernels.n_chunks(N, ds.max_len, M)
    fmas, vexp, sexp = step_counts(ds, M, nc)
    lim1 = fmas / f1 + vexp / e1 + sexp / e1
    limn = fmas / fn + (vexp + sexp) / (e1 * fn / f1)
    print(f"\nstage-2 step, size L (M={M}, N={N}, lengths 2..16, sum L_i = {int(ds.lengths.sum())}, "
          f"{nc} chunks): {fmas / 1e6:.1f} M FMAs, {vexp / 1e6:.2f} M vector exps, "
          f"{sexp / 1e6:.2f} M scalar exps")
    print(f"machine limit: {lim1 * 1e3:.2f} ms on 1 thread ({fmas / f1 * 1e3:.2f} FMA + "
          f"{(vexp + sexp) / e1 * 1e3:.2f} exp), {limn * 1e3:.2f} ms on {nt} threads")
    for label, mode, lim in (("serial", "serial", lim1), ("default", None, limn)):
        t, tmin, counts = measured_step(ds, M, O, K, mode, args.repeats)
        print(f"measured ({label:7}): median {t * 1e3:7.2f} ms, best {tmin * 1e3:7.2f} ms, "
              f"median / limit = {t / lim:5.1f}x (serial/threaded calls {counts[0]}/{counts[1]})")


if __name__ == "__main__":
    main()
