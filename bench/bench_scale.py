"""Time Algorithm 1 at a large vocabulary, phase by phase, and report the peak memory.

Generates ``ri.generate(vocab_size=M, n_sentences=N, min_len=2, max_len=6)`` (default
M = 5000, N = 2e5, the generator's default lengths 2..6; ``--max-len 16`` for the lengths
of the L benchmark), trains with ``T0 = T = 100`` through :func:`refimpl.train_two_stage`
(the trainer's own path, no progress bar) and prints the seconds of each phase:

    generate   dataset generation (refimpl.generate)
    validate   validation: the optimal tokens and the training relations (not part of training)
    W_ov*      refimpl.maxmargin.w_ov_star, certificate included
    W_kq*      refimpl.maxmargin.w_kq_star, certificate included
    stage 1    the T0 stage-1 steps with their recorded metrics
    floor      the stage-2 floor (refimpl.floor.stage2_floor)
    excess     the excess-loss tables of the stage-2 metrics (refimpl.trajectory.ExcessLoss)
    stage 2    the T stage-2 steps with their recorded metrics

Wall seconds and CPU seconds (this process plus finished worker processes) are printed;
on a shared machine the CPU seconds are the steadier figure. The phases inside the trainer
are timed by wrapping the functions it calls in the ``refimpl.train`` namespace.

``--kernels`` times the phases outside the trainer instead: the same max-margin solves and
floor, and the T0 / T steps of each stage alone (:func:`refimpl.train.stage1_replay`,
:func:`refimpl.train.stage2_replay`: the trainer's per-step path without the recorded
metrics), so the per-step cost is separated from the metrics.

Peak memory: ``ru_maxrss`` of this process (the peak resident set size since it started, so
generation included) and of its largest finished child (the W_kq* worker processes).
``--rlimit-gib G`` caps this process's address space at G GiB first (a MemoryError instead
of the machine running out of memory; the default 0 sets no cap).

After training, the generation target runs in a child process of its own (its own peak RSS):
``generate(vocab_size=--gen-M, n_sentences=N)`` with the same lengths (default M = 50000;
``--gen-M 0`` skips it); its peak is the child's ``VmHWM`` (Linux), since ``ru_maxrss`` of a
process started from this one reports this process's peak.

Usage::

    python bench/bench_scale.py                      # M = 5000, N = 2e5, lengths 2..6, T0 = T = 100
    python bench/bench_scale.py --kernels            # phases alone (steps without the metrics)
    python bench/bench_scale.py -M 2000 --profile    # also a cProfile of the training call
    python bench/bench_scale.py --kernels --compare-step 3   # one stage-2 step, dense vs structured
    python bench/bench_scale.py --workers 2          # W_kq* columns on 2 processes
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import pstats
import resource
import subprocess
import sys
import time

import numpy as np

import refimpl as ri
from refimpl import train as train_mod
from refimpl.data import training_relations

_KIB = 2 ** 20 if sys.platform == "darwin" else 2 ** 10   # ru_maxrss unit: bytes on macOS, KiB on Linux


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
            print(f"  ({name} done: {times[name]:.2f} s wall, {cpu[name]:.2f} s CPU, "
                  f"peak RSS so far {_peak_mib():.0f} MiB)", flush=True)
    return wrapper


def _peak_mib(who=resource.RUSAGE_SELF):
    return resource.getrusage(who).ru_maxrss * _KIB / 2 ** 20


def _own_peak_mib():
    """This process's own peak RSS: ``VmHWM`` of /proc/self/status where there is one (reset by
    exec; ``ru_maxrss`` of a child started from a large process reports the parent's peak), else
    ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _peak_mib()


def _generate_child(M, N, lo, hi, seed):
    """Generation alone in this (child) process: one JSON line with seconds and peak RSS."""
    ri.generate(20, 10)                                     # imports and first calls out of the timing
    t, c = time.perf_counter(), time.process_time()
    ds = ri.generate(vocab_size=M, n_sentences=N, min_len=lo, max_len=hi, seed=seed, progress=False)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    print(json.dumps({"M": M, "N": N, "tokens": int(ds.offsets[-1]), "wall_s": wall, "cpu_s": cpu,
                      "peak_mib": _own_peak_mib()}))


def _train(ds, args, times, cpu):
    """train_two_stage with the phases timed; returns (result, wall, CPU, profile or None)."""
    names = {"w_ov_star": "W_ov*", "w_kq_star": "W_kq*", "stage2_floor": "floor", "_stage1": "stage 1",
             "_stage2": "stage 2", "ExcessLoss": "excess"}
    originals = {k: getattr(train_mod, k) for k in names if hasattr(train_mod, k)}
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
        return res, time.perf_counter() - t, _cpu() - c, prof
    finally:
        for k, fn in originals.items():
            setattr(train_mod, k, fn)


def _kernels(ds, args, times, cpu):
    """The phases alone: max-margin solves, the T0 stage-1 steps, the floor, the T stage-2 steps."""
    M = ds.vocab_size
    cfg = ri.TrainConfig(T0=args.T0, T=args.T).resolved(M)

    def phase(name, fn, *a, **kw):
        return _timed(fn, name, times, cpu)(*a, **kw)

    t, c = time.perf_counter(), _cpu()
    phase("W_ov*", ri.w_ov_star, ds)
    phase("W_kq*", ri.w_kq_star, ds)
    last = {}

    def keep(t_, W):
        if t_ == args.T0:
            last["O"] = W.copy()
    reason1 = phase("stage 1", train_mod.stage1_replay, ds, np.zeros((M, M)), cfg.eta0, args.T0, keep)
    O = last["O"]
    floor = phase("floor", ri.stage2_floor, ds, O)
    reason2 = phase("stage 2", train_mod.stage2_replay, ds, O, np.zeros((M, M)), cfg.eta, args.T,
                    lambda t_, K: None)
    print(f"floor: log10 {floor[1]:.6f}, vertex optimal for all sentences: {bool(floor[2].all())}")
    if args.compare_step > 0:
        _compare_step(ds, O, args.compare_step)
    return {"stage1": reason1, "stage2": reason2}, time.perf_counter() - t, _cpu() - c


def _compare_step(ds, O, n):
    """Seconds of one stage-2 direction (Stage2Direction.direction) on the dense and on the
    structured path, at K = 0 and at n - 1 random K of Frobenius norm 10, with the largest
    entrywise difference of the directions relative to their largest entry."""
    from refimpl import kernels
    M = ds.vocab_size
    rng = np.random.default_rng(1)
    Ks = [np.zeros((M, M))] + [rng.standard_normal((M, M)) * (10.0 / M) for _ in range(n - 1)]
    out = {}
    for name, flag in (("structured", None), ("dense", False)):
        t = time.perf_counter()
        sd = kernels.Stage2Direction(O, ds.flat_tokens, ds.lengths, ds.next_tokens, structured=flag)
        prep = time.perf_counter() - t
        sd.direction(Ks[0])                                 # compilation and start-up out of the timing
        res, secs = [], []
        for K in Ks:
            t, c = time.perf_counter(), _cpu()
            res.append(sd.direction(K))
            secs.append((time.perf_counter() - t, _cpu() - c))
        out[name] = res
        print(f"stage-2 direction, {name} (in use: {'structured' if sd.structured else 'dense'}): prepare "
              f"{prep:.2f} s; per call " + ", ".join(f"{w:.3f} s wall / {c:.3f} s CPU" for w, c in secs), flush=True)
    for k, (a, b) in enumerate(zip(out["structured"], out["dense"])):
        rel = float(np.abs(a[0] - b[0]).max() / max(np.abs(b[0]).max(), 1e-300))
        print(f"  K #{k}: max |D_s - D_d| / max |D_d| = {rel:.2e}; norm {a[1]:.17g} vs {b[1]:.17g}; "
              f"loss {a[3]:.17g} vs {b[3]:.17g}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-M", type=int, default=5000, help="vocabulary size (default 5000)")
    ap.add_argument("-N", type=int, default=200_000, help="number of sentences (default 200000)")
    ap.add_argument("--min-len", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=6, help="longest sentence (default 6; 16 as the L benchmark)")
    ap.add_argument("--T0", type=int, default=100)
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None,
                    help="processes for the W_kq* columns (default: refimpl's choice)")
    ap.add_argument("--kernels", action="store_true",
                    help="time the phases alone (stage steps without the recorded metrics), not train_two_stage")
    ap.add_argument("--compare-step", type=int, default=0,
                    help="with --kernels: time this many stage-2 directions on the dense and the structured path")
    ap.add_argument("--gen-M", type=int, default=50_000,
                    help="vocabulary of the generation target run in a child process (0: skip)")
    ap.add_argument("--rlimit-gib", type=float, default=0.0, help="address-space cap in GiB (0: none)")
    ap.add_argument("--profile", action="store_true", help="print the top of a cProfile of training")
    ap.add_argument("--generate-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.generate_child:
        _generate_child(args.M, args.N, args.min_len, args.max_len, args.seed)
        return
    if args.rlimit_gib > 0:
        cap = int(args.rlimit_gib * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    if args.workers is not None:
        os.environ["REFIMPL_WORKERS"] = str(args.workers)

    times, cpu = {}, {}
    t, c = time.perf_counter(), _cpu()
    ds = ri.generate(vocab_size=args.M, n_sentences=args.N, min_len=args.min_len, max_len=args.max_len,
                     seed=args.seed, progress=False)
    times["generate"], cpu["generate"] = time.perf_counter() - t, _cpu() - c
    t, c = time.perf_counter(), _cpu()
    ds.optimal                                              # validation, outside training
    training_relations(ds)
    times["validate"], cpu["validate"] = time.perf_counter() - t, _cpu() - c
    print(f"M = {args.M}, N = {args.N}, lengths {args.min_len}..{args.max_len}, n_c = {len(ds.colloc_tokens)}, "
          f"tokens = {int(ds.lengths.sum())}, T0 = {args.T0}, T = {args.T}, "
          f"{'phases alone' if args.kernels else 'train_two_stage'}", flush=True)

    prof = None
    if args.kernels:
        stop, total, total_cpu = _kernels(ds, args, times, cpu)
        ok = None
    else:
        res, total, total_cpu, prof = _train(ds, args, times, cpu)
        stop, ok = res.stop_reason, all(c.ok for c in res.certificates.values())
    print(f"{'phase':>9}  {'wall s':>8}  {'CPU s':>8}")
    for name in ("generate", "validate", "W_ov*", "W_kq*", "stage 1", "floor", "excess", "stage 2"):
        if name in times:
            print(f"{name:>9}: {times[name]:8.2f}  {cpu[name]:8.2f}")
    what = "phases alone, W_ov* to stage 2" if args.kernels else "train_two_stage, all phases"
    print(f"{'training':>9}: {total:8.2f}  {total_cpu:8.2f}   ({what})")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"peak RSS : {_peak_mib():8.0f} MiB (this process); {_peak_mib(resource.RUSAGE_CHILDREN):.0f} MiB "
          f"(largest finished child)")
    print(f"stop: {stop}; certificates ok: {ok}", flush=True)
    if prof is not None:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(30)
        print(buf.getvalue())
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(20)
        print(buf.getvalue())
    if args.gen_M > 0:
        out = subprocess.run([sys.executable, __file__, "--generate-child", "-M", str(args.gen_M), "-N",
                              str(args.N), "--min-len", str(args.min_len), "--max-len", str(args.max_len),
                              "--seed", str(args.seed)], capture_output=True, text=True, check=True)
        g = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"generate(M={g['M']}, N={g['N']}, lengths {args.min_len}..{args.max_len}) in a child process: "
              f"{g['wall_s']:.2f} s wall, {g['cpu_s']:.2f} s CPU, {g['tokens']} tokens, "
              f"peak RSS {g['peak_mib']:.0f} MiB" + ("" if g["wall_s"] < 30 else "  (over the 30 s target)"))
    return math.isfinite(total)


if __name__ == "__main__":
    main()
