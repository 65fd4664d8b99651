"""Time one full stage-2 NGD step: loss, dL/dK, K <- K - eta * G / ||G||.

Implementations (same model, float64, E = I so d = M):
  kernel  refimpl.kernels.Stage2Direction + compensated_step: the trainer's stage-2 step
          (token coordinates, Numba; O^T and the int64 sentence arrays prepared once)
  dense   refimpl.model.loss_and_grads (embedding-space NumPy reference)
  torch   PyTorch autograd on a padded batch (only when torch is installed; its index
          tensors are likewise built once)

Sizes: S (M=20, N=200, lengths 2..6) and L (M=200, N=10^4, lengths 2..16).

Two kinds of (O, K) per size (``--o``):
  random   O, K standard normal: a generic O, so the kernel runs its dense path;
  trained  the trainer's own stage-2 problem: O = W_ov after the default stage 1 from zero
           initialisation and K = W_kq after 100 stage-2 steps (``train_two_stage``). That O
           is column constants plus one entry per column, so from M >= 64 the kernel runs its
           structured path (refimpl.kernels.Stage2Direction); PyTorch and the NumPy reference
           compute the same thing as for any O.

Timing is interleaved: each round runs a short block of every implementation in turn,
and medians are taken over all rounds. Each block opens with 10 ms of the same
implementation's untimed steps, so a thread pool the previous one left spinning has
stopped and this one's pool is awake (a sleep instead would make PyTorch wake its pool
in the timed steps: measured +15-30% on its S step). This machine's speed drifts by up to
2x over tenths of a second (other jobs on the host); timing each implementation in one
contiguous stretch let that drift, not the code, set the ratio. Prints medians, ratios to
the kernel, the range of the per-round ratios, and the kernel throughput in token-column
multiply-adds per second (2 * sum_i L_i * M per step: the logits and the g_l = O[:, x_l]^T r
products each touch every position's column once; on the structured path this counts the
dense work the kernel avoids, so it is a dense-equivalent rate).

The kernel's threading follows the library default (``REFIMPL_THREADS``, unset: each
prepared problem times its serial and threaded drivers and keeps the faster); the note
gives the share of its calls that ran threaded. ``bench_contended.py`` times it next to a
busy process.

    python bench/bench_step.py [--sizes S L] [--o random trained] [--threads 2] [--rounds R]
                               [--chunks C]

``--chunks 2`` with ``REFIMPL_THREADS=parallel`` times size S on two threads, which the
library never does by itself (S is serial: its threads would wait for each other, and a
busy neighbour would stall them; bench/README.md, "Shared CPU").
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

try:            # before refimpl: importing refimpl sets OMP_WAIT_POLICY=PASSIVE when unset, which
    import torch    # would also put PyTorch's own OpenMP pool to sleep between its steps
except ImportError:
    torch = None

import refimpl as ri
from refimpl import kernels
from refimpl.model import loss_and_grads

ETA = 0.05 / np.sqrt(20)
# block: steps per implementation per round (about 5 ms each at S; one step per block at L)
SIZES = {"S": dict(M=20, N=200, lo=2, hi=6, rounds=40, block=dict(kernel=100, dense=10, torch=5)),
         "L": dict(M=200, N=10_000, lo=2, hi=16, rounds=9, block=dict(kernel=3, dense=1, torch=1))}
WARM = 0.01    # seconds of untimed steps that open each block (the implementation's own)


def make_kernel_step(ds, M, O, chunks=None):
    """The trainer's stage-2 step: Stage2Direction (prepared once, as O is fixed) and the
    Kahan-compensated update, written into a second buffer as the trainer does. ``chunks``
    overrides ``kernels.n_chunks`` (and then the dense path is used)."""
    sd = kernels.Stage2Direction(O, ds.tokens, ds.lengths, ds.next_tokens, chunks=chunks)
    direction = sd.direction
    c, out = np.zeros((M, M)), np.empty((M, M))

    def step(O, K, _ds):
        D, _, _, loss, _ = direction(K)
        kernels._compensated_step(K, c, D, ETA, out)
        return out, loss
    step.counts = (sd._s if sd.structured else sd._p).chooser.counts   # calls serial / on threads
    step.path = "structured" if sd.structured else "dense"
    return step


def make_dense_step(ds, M, O):
    def step(O, K, ds):
        loss, _, g = loss_and_grads(ds, O, K)
        return K - ETA * g / np.linalg.norm(g), loss
    return step


def make_torch_step(ds, M, O):
    import torch
    tok = torch.tensor(np.where(ds.valid_mask, ds.tokens, 0))
    mask = torch.tensor(ds.valid_mask)
    query = torch.tensor(ds.tokens[np.arange(ds.n_sentences), ds.lengths - 1])
    y = torch.tensor(ds.next_tokens)
    E = torch.eye(M, dtype=torch.float64)

    def step(O, K, _ds):
        W_ov = torch.as_tensor(O)
        W_kq = torch.tensor(K, requires_grad=True)
        X = E.T[tok]                                            # (N, L, d)
        Q = E.T[query]                                          # (N, d)
        s = torch.einsum("nld,nd->nl", X, Q @ W_kq.T).masked_fill(~mask, float("-inf"))
        phi = torch.softmax(s, dim=1)                           # (N, L)
        z = (torch.einsum("nl,nld->nd", phi, X) @ W_ov.T) @ E   # (N, M)
        loss = torch.nn.functional.cross_entropy(z, y)
        loss.backward()
        with torch.no_grad():
            g = W_kq.grad
            return (W_kq - ETA * g / g.norm()).numpy(), float(loss)
    return step


def interleaved_times(steps, O, K, ds, rounds, block):
    """{impl: (all step times, per-round block medians)} from ``rounds`` rounds of blocks."""
    for step in steps.values():
        step(O, K, ds)                                          # warm-up (and Numba compile)
    times = {impl: [] for impl in steps}
    per_round = {impl: [] for impl in steps}
    for _ in range(rounds):
        for impl, step in steps.items():
            t_end = time.perf_counter() + WARM
            while True:                         # untimed: lets the previous implementation's
                step(O, K, ds)                  # thread pool stop spinning and warms this one
                if time.perf_counter() >= t_end:
                    break
            ts = []
            for _ in range(block[impl]):
                t = time.perf_counter()
                step(O, K, ds)
                ts.append(time.perf_counter() - t)
            times[impl] += ts
            per_round[impl].append(np.median(ts))
    return {impl: (np.array(times[impl]), np.array(per_round[impl])) for impl in steps}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["S", "L"], choices=sorted(SIZES))
    ap.add_argument("--o", nargs="+", default=["random", "trained"], choices=["random", "trained"],
                    help="kinds of (O, K): generic random, or the trainer's own after stage 1")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=None, help="rounds per size (default: S 40, L 9)")
    ap.add_argument("--chunks", type=int, default=None,
                    help="chunks of the kernel step instead of kernels.n_chunks (S has 1: serial); "
                         "with REFIMPL_THREADS=parallel they run on Numba's threads")
    args = ap.parse_args()
    if torch is not None:
        torch.set_num_threads(args.threads)
    print(f"cpus={os.cpu_count()} torch={'none' if torch is None else torch.__version__} "
          f"load={os.getloadavg()[0]:.2f}")
    print(f"{'size':4} {'impl':6} {'median ms':>10} {'x kernel':>9} {'rounds':>13}  notes")
    makers = {"kernel": lambda ds, M, O: make_kernel_step(ds, M, O, args.chunks),
              "dense": make_dense_step}
    if torch is not None:
        makers["torch"] = make_torch_step
    for name, kind in [(n, k) for n in args.sizes for k in args.o]:
        c = SIZES[name]
        M = c["M"]
        ds = ri.generate(M, c["N"], c["lo"], c["hi"], seed=0)
        if kind == "random":
            O, K = np.random.default_rng(0).standard_normal((2, M, M))
        else:
            res = ri.train_two_stage(ds, T=100, progress=False)
            O, K = res.W_ov, res.W_kq
        steps = {impl: make(ds, M, O) for impl, make in makers.items()}
        losses = {impl: step(O, K, ds)[1] for impl, step in steps.items()}
        ref = losses["kernel"]
        assert all(abs(v - ref) <= 1e-10 * ref for v in losses.values()), losses
        res = interleaved_times(steps, O, K, ds, args.rounds or c["rounds"], c["block"])
        label = f"{name}/{kind[0]}"
        t_kernel = np.median(res["kernel"][0])
        for impl, (ts, rounds) in res.items():
            t = np.median(ts)
            ratios = rounds / res["kernel"][1]
            span = f"{ratios.min():5.1f}-{ratios.max():5.1f}" if impl != "kernel" else ""
            note = ""
            if impl == "kernel":
                madds = 2.0 * ds.lengths.sum() * M
                n_serial, n_threads = steps["kernel"].counts
                note = (f"{steps['kernel'].path} path, {madds / t / 1e9:.2f} G token-column "
                        f"multiply-adds/s (dense-equivalent), "
                        f"threaded share {n_threads / max(1, n_serial + n_threads):.2f}")
            print(f"{label:4} {impl:6} {t * 1e3:10.3f} {t / t_kernel:9.1f} {span:>13}  {note}",
                  flush=True)


if __name__ == "__main__":
    main()
