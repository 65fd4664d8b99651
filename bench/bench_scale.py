"""Time Algorithm 1 at a large vocabulary, phase by phase, and report the peak memory.

Generates ``ri.generate(vocab_size=M, n_sentences=N, min_len=2, max_len=6)`` (default
M = 5000, N = 2e5), trains with ``T0 = T = 100`` through :func:`refimpl.train_two_stage`
(the trainer's own path, no progress bar) and prints the seconds of each phase:

    generate   dataset generation and validation (not part of training)
    stage 1    the T0 stage-1 steps with their recorded metrics
    W_ov*      refimpl.maxmargin.w_ov_star, certificate included
    W_kq*      refimpl.maxmargin.w_kq_star, certificate included
    floor      the stage-2 floor (refimpl.floor.stage2_floor)
    stage 2    the T stage-2 steps with their recorded metrics

Wall seconds and CPU seconds (this process plus finished worker processes) are printed;
on a shared machine the CPU seconds are the steadier figure.

The phases inside the trainer are timed by wrapping the functions it calls in the
``refimpl.train`` namespace (``w_ov_star``, ``w_kq_star``, ``stage2_floor``, ``_stage1``,
``_stage2``).
The peak resident set size is ``ru_maxrss`` of this process (so it includes generation).

Usage::

    python bench/bench_scale.py                      # M = 5000, N = 200000
    python bench/bench_scale.py -M 2000 --profile    # also a cProfile of the training call
    python bench/bench_scale.py --workers 2          # W_kq* columns on 2 processes
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import sys
import time

import refimpl as ri
from refimpl import train as train_mod


def _cpu():
    """CPU seconds of this process and of its finished children (the W_kq* workers)."""
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def _timed(fn, name, times, cpu):
    def wrapper(*args, **kwargs):
        t, c = time.perf_counter(), _cpu()
        try:
            return fn(*args, **kwargs)
        finally:
            times[name] = times.get(name, 0.0) + time.perf_counter() - t
            cpu[name] = cpu.get(name, 0.0) + _cpu() - c
            print(f"  ({name} done: {times[name]:.2f} s wall, {cpu[name]:.2f} s CPU)", flush=True)
    return wrapper


def _peak_mib():
    # ru_maxrss is in KiB on Linux, in bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-M", type=int, default=5000, help="vocabulary size (default 5000)")
    ap.add_argument("-N", type=int, default=200_000, help="number of sentences (default 200000)")
    ap.add_argument("--T0", type=int, default=100)
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None,
                    help="processes for the W_kq* columns (default: refimpl's choice)")
    ap.add_argument("--profile", action="store_true", help="print the top of a cProfile of training")
    args = ap.parse_args(argv)
    if args.workers is not None:
        os.environ["REFIMPL_WORKERS"] = str(args.workers)

    times, cpu = {}, {}
    t, c = time.perf_counter(), _cpu()
    ds = ri.generate(vocab_size=args.M, n_sentences=args.N, min_len=2, max_len=6, seed=args.seed)
    ds.optimal                                              # validation, outside training
    times["generate"], cpu["generate"] = time.perf_counter() - t, _cpu() - c
    print(f"M = {args.M}, N = {args.N}, n_c = {len(ds.colloc_tokens)}, "
          f"tokens = {int(ds.lengths.sum())}, T0 = {args.T0}, T = {args.T}", flush=True)

    names = {"w_ov_star": "W_ov*", "w_kq_star": "W_kq*", "stage2_floor": "floor", "_stage1": "stage 1",
             "_stage2": "stage 2"}
    originals = {k: getattr(train_mod, k) for k in names}
    for k, fn in originals.items():
        setattr(train_mod, k, _timed(fn, names[k], times, cpu))
    prof = cProfile.Profile() if args.profile else None
    try:
        t, c = time.perf_counter(), _cpu()
        if prof is not None:
            prof.enable()
        res = ri.train_two_stage(ds, T0=args.T0, T=args.T, progress=False)
        if prof is not None:
            prof.disable()
        total, total_cpu = time.perf_counter() - t, _cpu() - c
    finally:
        for k, fn in originals.items():
            setattr(train_mod, k, fn)
    print(f"{'phase':>9}  {'wall s':>8}  {'CPU s':>8}")
    for name in ("generate", "stage 1", "W_ov*", "W_kq*", "floor", "stage 2"):
        print(f"{name:>9}: {times.get(name, float('nan')):8.2f}  {cpu.get(name, float('nan')):8.2f}")
    print(f"{'training':>9}: {total:8.2f}  {total_cpu:8.2f}   (train_two_stage, all phases)")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"peak RSS : {_peak_mib():8.0f} MiB")
    print(f"stop: {res.stop_reason}; certificates ok: "
          f"{all(c.ok for c in res.certificates.values())}")
    if prof is not None:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(30)
        print(buf.getvalue())
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(20)
        print(buf.getvalue())


if __name__ == "__main__":
    main()
