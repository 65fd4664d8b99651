"""The trainer's stage-2 step against the bare kernel step (the per-step bookkeeping overhead).

    python bench/bench_trainer.py                 # sizes S and L
    python bench/bench_trainer.py --sizes S --passes 2

Bare step: ``kernels.Stage2Direction.direction`` + ``kernels.compensated_step`` (what
``bench_step.py`` times). Trainer step: the stage-2 loop of ``train_two_stage``
(``refimpl.train._stage2``: ``_ngd``, the stop checks, the Kahan update and the recorded-step
metrics), timed as ``(time(T = B) - time(T = 0)) / B`` so that its per-call set-up (the
trajectory table) is not counted; its prepared kernel is made once and kept across blocks,
as in one long run (both it and the bare step's are past their start-up timings).

Recording schedules, per block of B steps starting at the real iterate K_{wB} (window w
of one run, found first by ``stage2_replay``):

* ``default``: the rows ``record_steps(T)`` puts in that window, for the default T = 20000
  at S (all 100 windows, so the totals are the whole run's) and T = 300 at L, where the
  default schedule records every step (T <= record_dense_limit = 2000);
* ``dense``: every step (``record_dense_limit >= T``);
* ``sparse``: one row per block of B steps; at L (B = 12: 8.3%) this is the mean density of
  the default schedule at T = 20000 (1603 rows: 8.0%) and stands in for it, whose
  20000-step run would take minutes per pass (at S, B = 200: 0.5%);
* ``none``: no row (the bare loop overhead of ``_ngd``).

Timing (bench/README.md, "How it times"): the machine is noisy, so every round runs one
block of each variant in a rotating order; the table gives the median over rounds of the
per-step time, the median of the per-round ratio trainer/bare and, for ``default``, the
ratio of the totals over all rounds (the whole run).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import refimpl as ri
from refimpl import kernels, train
from refimpl.maxmargin import stage2_floor, w_kq_star
from refimpl.trajectory import ExcessLoss, record_steps

SIZES = {  # (M, N, min_len, max_len, block B, default-schedule T)
    "S": (20, 200, 2, 6, 200, 20_000),
    "L": (200, 10_000, 2, 16, 12, 300),
}


def _problem(size):
    M, N, lo, hi, B, T_default = SIZES[size]
    ds = ri.generate(vocab_size=M, n_sentences=N, min_len=lo, max_len=hi, seed=0)
    O = ri.train_two_stage(ds, T0=200, T=0, progress=False).W_ov
    floor, _, vertex, details = stage2_floor(ds, O, return_details=True)
    excess = ExcessLoss(ds, O, floor, vertex, details["log_loss"])
    K_star = w_kq_star(ds)[0]
    K_hat = K_star / np.linalg.norm(K_star) if np.any(K_star) else None
    cfg = train.TrainConfig(T0=0, T=B).resolved(M)
    n_win = T_default // B
    starts = {}
    train.stage2_replay(ds, O, np.zeros((M, M)), cfg.eta, n_win * B,
                        lambda t, K: starts.__setitem__(t // B, K.copy()) if t % B == 0 else None)
    full = record_steps(T_default)
    windows = [full[(full >= w * B) & (full < (w + 1) * B)] - w * B for w in range(n_win)]
    return ds, O, excess, K_hat, cfg, B, [starts[w] for w in range(n_win)], windows


def _bare(direction, K0, eta, B):
    """B + 1 direction calls and B updates (what the trainer's T = B run does beyond T = 0)."""
    K = K0.copy()
    c = np.zeros_like(K)
    out = np.empty_like(K)
    t0 = time.perf_counter()
    for _ in range(B):
        D = direction.direction(K)[0]
        kernels.compensated_step(K, c, D, eta, out)
        K, out = out, K
    return time.perf_counter() - t0


def _trainer(ds, cfg, O, K0, K_hat, excess, T, sched, direction):
    """One call of the trainer's stage-2 loop with the recording schedule ``sched``.

    The loop's prepared kernel is ``direction``, kept across calls: a fresh one would spend
    its first 6 calls timing its serial and threaded drivers against each other (3 of them
    serial), which a real run amortizes over its T steps but a block of B = 12 would not
    (measured at L: +0.4 ms per step, 1.19x with nothing recorded)."""
    saved = train.record_steps, train.kernels.Stage2Direction
    train.record_steps = lambda *_: np.asarray(sched, dtype=np.int64)
    train.kernels.Stage2Direction = lambda *_a, **_k: direction
    try:
        bar = train._Progress(T, False, "bench")
        c = train.TrainConfig(T0=0, T=T, eta=cfg.eta).resolved(O.shape[0])
        t0 = time.perf_counter()
        train._stage2(ds, c, O, K0, K_hat, excess, bar, 0)
        return time.perf_counter() - t0
    finally:
        train.record_steps, train.kernels.Stage2Direction = saved


def run(size, passes):
    ds, O, excess, K_hat, cfg, B, starts, windows = _problem(size)
    direction = kernels.Stage2Direction(O, ds.flat_tokens, ds.lengths, ds.next_tokens)
    loop_direction = kernels.Stage2Direction(O, ds.flat_tokens, ds.lengths, ds.next_tokens)
    for _ in range(8):                  # past its start-up timings (kernels._Chooser)
        direction.direction(starts[0])
        loop_direction.direction(starts[0])
    schedules = {"default": None, "dense": np.arange(B), "sparse": np.array([0]), "none": np.array([], dtype=np.int64)}
    variants = ["bare", "setup", *schedules]
    times = {v: [] for v in variants}
    rows = {"default": 0}
    for p in range(passes):
        for w, K0 in enumerate(starts):
            order = variants[(w + p) % len(variants):] + variants[:(w + p) % len(variants)]
            for v in order:
                if v == "bare":
                    t = _bare(direction, K0, cfg.eta, B)
                elif v == "setup":
                    t = _trainer(ds, cfg, O, K0, K_hat, excess, 0, [], loop_direction)
                else:
                    sched = windows[w] if v == "default" else schedules[v]
                    t = _trainer(ds, cfg, O, K0, K_hat, excess, B, sched, loop_direction)
                times[v].append(t)
            rows["default"] += len(windows[w])
    setup = np.array(times["setup"])
    bare = np.array(times["bare"]) / B
    M, N = ds.vocab_size, ds.n_sentences
    print(f"size {size}: M={M}, N={N}, tokens={len(ds.flat_tokens)}, block B={B} steps, "
          f"{len(starts)} windows x {passes} passes; default schedule: {rows['default'] // passes} rows "
          f"in {len(starts) * B} steps")
    print(f"  {'variant':8s} {'rows/step':>9s} {'median ms/step':>15s} {'ratio (median)':>15s} {'ratio (totals)':>15s}")
    print(f"  {'bare':8s} {'':>9s} {statistics.median(bare) * 1e3:15.4f}")
    for v in schedules:
        per = (np.array(times[v]) - setup) / B
        density = {"default": rows["default"] / (passes * len(starts) * B), "dense": 1.0, "sparse": 1.0 / B,
                   "none": 0.0}[v]
        ratio_med = statistics.median(per / bare)
        ratio_tot = per.sum() / bare.sum()
        print(f"  {v:8s} {density:9.3f} {statistics.median(per) * 1e3:15.4f} {ratio_med:15.2f} {ratio_tot:15.2f}")
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="S,L")
    ap.add_argument("--passes", type=int, default=None, help="passes over the windows (S 2, L 1)")
    args = ap.parse_args()
    for size in args.sizes.split(","):
        run(size.strip(), args.passes or (2 if size.strip() == "S" else 1))


if __name__ == "__main__":
    main()
