"""Time the stage-2 step on a quiet CPU and next to a busy process, with each threading choice.

The step is the trainer's (``kernels.Stage2Direction`` + ``compensated_step``, as in
``bench_step.py``). Threading choices ("impl"):

  default   what the library does unless told otherwise (``REFIMPL_THREADS`` unset: the
            serial or threaded driver, whichever its own timings find faster)
  single    the same chunks on the calling thread only (``REFIMPL_THREADS=serial``: the
            single-thread step, same bits)
  threads   the chunks always on Numba's threads (``REFIMPL_THREADS=parallel``; at least 2
            chunks, so at size S this is the former default of 2 chunks on 2 threads)
  trainer   ``refimpl.train.stage2_replay`` (the trainer's stage-2 loop, default threading),
            time per step over a short run (``--trainer``)
  recorded  the stage-2 loop of ``train_two_stage`` itself (``refimpl.train._stage2``) with
            every step recorded (the trajectory metrics of each step: the densest schedule,
            which the default one is for T <= 2000), time per step over a short run minus
            its set-up (``--trainer``)
  rec-single  the same with ``REFIMPL_THREADS=serial`` (step and metric passes on the
            calling thread): the reference of the recording trainer's headline

Conditions, switched round by round (a busy process is started once and paused/resumed
with SIGSTOP/SIGCONT):

  quiet     no busy process started by this script
  busy      a busy process pinned (``os.sched_setaffinity``) to the last allowed vCPU; this
            process may run on every vCPU
  busy-any  the busy process not pinned
  floor     "single" only: the calling thread pinned to the first vCPU and the busy process
            to the last: on a VM whose two vCPUs are hyperthreads of one core this is what
            the sibling alone costs a single-thread step (the physical floor). Only the
            calling thread is pinned: with libgomp spinning (``OMP_WAIT_POLICY`` not
            PASSIVE), pinning Numba's pool to one vCPU and releasing it left later threaded
            steps at 8-20 ms instead of 0.02 ms on this VM

Timing is interleaved as in ``bench_step.py``: every round runs each condition, and in it a
block of each impl, opened by untimed steps (at least 10 ms, and for "default" at least
80 steps, so its choice has followed the condition: it re-times the other driver every
64 steps, sooner when a threaded step slows down). Medians over all rounds; ratios are
to the quiet single-thread step (the headline: busy/default over quiet/single, target
<= 1.3x).

    python bench/bench_contended.py [--sizes S L] [--rounds R] [--hog py|fma] [--trainer]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time

import numpy as np

import refimpl as ri
from refimpl import kernels

ETA = 0.05 / np.sqrt(20)
SIZES = {"S": dict(M=20, N=200, lo=2, hi=6, rounds=30, block=100, replay=400),
         "L": dict(M=200, N=10_000, lo=2, hi=16, rounds=7, block=3, replay=30)}
WARM = 0.01           # seconds of untimed steps opening each block
WARM_DEFAULT = 80     # and at least this many for "default" (its choice follows the condition)
CONDITIONS = ("quiet", "busy", "busy-any", "floor")
HOGS = {
    # a pure-Python loop (integer and branch work, like an interpreter-bound neighbour)
    "py": "while True:\n    pass\n",
    # float64 FMA-heavy NumPy work on L1-sized arrays (competes for the FP units)
    "fma": ("import numpy as np\na = np.ones(512); b = np.full(512, 0.999); c = np.full(512, 1e-3)\n"
            "while True:\n    np.multiply(a, b, out=a); np.add(a, c, out=a)\n"),
}


@contextlib.contextmanager
def threads_env(value):
    """``REFIMPL_THREADS=value`` while preparing a problem (None: unset)."""
    old = os.environ.pop(kernels.THREADS_ENV, None)
    if value is not None:
        os.environ[kernels.THREADS_ENV] = value
    try:
        yield
    finally:
        os.environ.pop(kernels.THREADS_ENV, None)
        if old is not None:
            os.environ[kernels.THREADS_ENV] = old


class Hog:
    """A busy child process, started paused; ``set(cpus or None)`` resumes it (optionally
    pinned), ``set(False)`` pauses it."""

    def __init__(self, kind):
        self.p = subprocess.Popen([sys.executable, "-c", HOGS[kind]])
        os.kill(self.p.pid, signal.SIGSTOP)
        self.all = os.sched_getaffinity(0)

    def set(self, cpus):
        if cpus is False:
            os.kill(self.p.pid, signal.SIGSTOP)
            return
        os.sched_setaffinity(self.p.pid, self.all if cpus is None else cpus)
        os.kill(self.p.pid, signal.SIGCONT)

    def close(self):
        self.p.kill()
        self.p.wait()


def make_step(ds, M, O, mode, chunks=None):
    with threads_env(mode):
        sd = kernels.Stage2Direction(O, ds.tokens, ds.lengths, ds.next_tokens, chunks=chunks)
    c, out = np.zeros((M, M)), np.empty((M, M))

    def step(K):
        D, _, _, loss, _ = sd.direction(K)
        kernels._compensated_step(K, c, D, ETA, out)
        return loss
    step.chooser = sd._p.chooser
    return step


def make_trainer(ds, O, n_steps):
    from refimpl.train import stage2_replay

    def run(K):
        t = time.perf_counter()
        stage2_replay(ds, O, K, ETA, n_steps, lambda t, K: None)
        return (time.perf_counter() - t) / n_steps
    return run


def make_recorded(ds, O, n_steps, mode=None):
    """Per-step time of the trainer's stage-2 loop recording every step: (time(T = n) -
    time(T = 0)) / n, so the per-call set-up (prepared kernel, table) is not counted;
    ``REFIMPL_THREADS=mode`` while it runs (None: unset)."""
    from refimpl import train
    from refimpl.maxmargin import stage2_floor, w_kq_star
    from refimpl.trajectory import ExcessLoss
    floor, _, vertex, details = stage2_floor(ds, O, return_details=True)
    with threads_env(mode):
        excess = ExcessLoss(ds, O, floor, vertex, details["log_loss"])
    K_star = w_kq_star(ds)[0]
    K_hat = K_star / np.linalg.norm(K_star) if np.any(K_star) else None
    M = O.shape[0]

    def once(K, T):
        cfg = train.TrainConfig(T0=0, T=T, eta=ETA, record_dense_limit=max(T, 1)).resolved(M)
        bar = train._Progress(T, False, "bench")
        t = time.perf_counter()
        train._stage2(ds, cfg, O, K, K_hat, excess, bar, 0)
        return time.perf_counter() - t

    def run(K):
        with threads_env(mode):
            return (once(K, n_steps) - once(K, 0)) / n_steps
    return run


def set_condition(cond, hog, cpus):
    first, last = min(cpus), max(cpus)
    os.sched_setaffinity(0, cpus if cond != "floor" else {first})     # the calling thread only
    hog.set({"quiet": False, "busy": {last}, "busy-any": None, "floor": {last}}[cond])


def run_size(name, c, hog, rounds, trainer):
    M = c["M"]
    ds = ri.generate(M, c["N"], c["lo"], c["hi"], seed=0)
    O, K = np.random.default_rng(0).standard_normal((2, M, M))
    nc = kernels.n_chunks(ds.n_sentences, ds.max_len, M)
    steps = {"default": make_step(ds, M, O, None), "single": make_step(ds, M, O, "serial"),
             "threads": make_step(ds, M, O, "parallel", chunks=max(nc, 2))}
    losses = {impl: s(K) for impl, s in steps.items()}
    assert losses["default"] == losses["single"], losses          # same chunks: same bits
    run_trainer = make_trainer(ds, O, c["replay"]) if trainer else None
    run_recorded = make_recorded(ds, O, c["replay"]) if trainer else None
    run_rec_single = make_recorded(ds, O, c["replay"], "serial") if trainer else None
    if run_trainer:
        run_trainer(K)
        run_recorded(K)
        run_rec_single(K)
    cpus = os.sched_getaffinity(0)
    times = {(cd, impl): [] for cd in CONDITIONS for impl in [*steps, "trainer", "recorded", "rec-single"]}
    share = {cd: [] for cd in CONDITIONS}      # share of "default" steps on the threaded driver
    for _ in range(rounds):
        for cond in CONDITIONS:
            set_condition(cond, hog, cpus)
            for impl, step in steps.items():
                if cond == "floor" and impl != "single":
                    continue
                t_end = time.perf_counter() + WARM
                n = 0
                while time.perf_counter() < t_end or (impl == "default" and n < WARM_DEFAULT):
                    step(K)
                    n += 1
                before = list(step.chooser.counts)
                for _ in range(c["block"]):
                    t = time.perf_counter()
                    step(K)
                    times[cond, impl].append(time.perf_counter() - t)
                if impl == "default":
                    after = step.chooser.counts
                    share[cond].append((after[1] - before[1]) / max(1, sum(after) - sum(before)))
            if run_trainer and cond != "floor":
                times[cond, "trainer"].append(run_trainer(K))
                times[cond, "recorded"].append(run_recorded(K))
                times[cond, "rec-single"].append(run_rec_single(K))
    set_condition("quiet", hog, cpus)
    hog.set(False)
    med = {k: np.median(v) for k, v in times.items() if v}
    ref = med["quiet", "single"]
    print(f"\nsize {name}: M={M} N={c['N']} lengths {c['lo']}..{c['hi']}, n_chunks={nc}, "
          f"threads: 'threads' runs {max(nc, 2)} chunks; ms (median) and x quiet single")
    impls = [*steps, *(["trainer", "recorded", "rec-single"] if run_trainer else [])]
    print(f"{'condition':9} " + " ".join(f"{i:>17}" for i in impls) + "   default threaded share")
    for cond in CONDITIONS:
        cells = [f"{med[cond, i] * 1e3:8.3f} {med[cond, i] / ref:6.2f}x " if (cond, i) in med else "-"
                 for i in impls]
        sh = f"{np.mean(share[cond]):.2f}" if share[cond] else "-"
        print(f"{cond:9} " + " ".join(f"{x:>17}" for x in cells) + f"   {sh}")
    print(f"headline {name}: busy/default = {med['busy', 'default'] / ref:.2f}x quiet single "
          f"(busy/single {med['busy', 'single'] / ref:.2f}x, physical floor {med['floor', 'single'] / ref:.2f}x, "
          f"busy-any/default {med['busy-any', 'default'] / ref:.2f}x, busy/threads "
          f"{med['busy', 'threads'] / ref:.2f}x); quiet default/single "
          f"{med['quiet', 'default'] / ref:.2f}x", flush=True)
    if run_trainer:
        rec = med["quiet", "rec-single"]
        print(f"headline {name} through the trainer: busy/trainer = {med['busy', 'trainer'] / ref:.2f}x quiet "
              f"single step; recording every step: busy/recorded = {med['busy', 'recorded'] / rec:.2f}x the "
              f"quiet single-thread recorded step (busy-any {med['busy-any', 'recorded'] / rec:.2f}x, busy "
              f"rec-single {med['busy', 'rec-single'] / rec:.2f}x); quiet recorded / quiet trainer "
              f"{med['quiet', 'recorded'] / med['quiet', 'trainer']:.2f}x (the cost of recording every step)",
              flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["S", "L"], choices=sorted(SIZES))
    ap.add_argument("--rounds", type=int, default=None, help="rounds per size (default: S 30, L 7)")
    ap.add_argument("--hog", choices=sorted(HOGS), default="py", help="kind of busy process")
    ap.add_argument("--trainer", action="store_true",
                    help="also time the trainer's stage-2 loop per step, without and with recording")
    args = ap.parse_args()
    import numba
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit("needs at least 2 usable CPUs")
    print(f"cpus={cpus} numba threads={numba.get_num_threads()} layer={numba.config.THREADING_LAYER} "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')} "
          f"{kernels.THREADS_ENV}={os.environ.get(kernels.THREADS_ENV, '(unset)')} hog={args.hog} "
          f"load={os.getloadavg()[0]:.2f}")
    hog = Hog(args.hog)
    try:
        for name in args.sizes:
            c = SIZES[name]
            run_size(name, c, hog, args.rounds or c["rounds"], args.trainer)
    finally:
        hog.close()
    try:
        print(f"threading layer used: {numba.threading_layer()}")
    except ValueError:
        pass


if __name__ == "__main__":
    main()
