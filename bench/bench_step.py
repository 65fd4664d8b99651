"""Time one full stage-2 NGD step: loss, dL/dK, K <- K - eta * G / ||G||.

Implementations (same model, float64, E = I so d = M):
  kernel  refimpl.kernels.stage2_grad + normalize (token coordinates, Numba)
  dense   refimpl.model.loss_and_grads (embedding-space NumPy reference)
  torch   PyTorch autograd on a padded batch (only when torch is installed)

Sizes: S (M=20, N=200, lengths 2..6) and L (M=200, N=10^4, lengths 2..16).
Prints medians, ratios to the kernel and the kernel throughput in token-column
multiply-adds per second (2 * sum_i L_i * M per step: the logits and the
g_l = O[:, x_l]^T r products each touch every position's column once).

    python bench/bench_step.py [--sizes S L] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import refimpl as ri
from refimpl import kernels
from refimpl.model import loss_and_grads

ETA = 0.05 / np.sqrt(20)
SIZES = {"S": dict(M=20, N=200, lo=2, hi=6, reps=(300, 30, 100)),
         "L": dict(M=200, N=10_000, lo=2, hi=16, reps=(30, 3, 7))}   # reps: kernel, dense, torch


def kernel_step(O, K, ds):
    GK, _, loss, _ = kernels.stage2_grad(O, K, ds.tokens, ds.lengths, ds.next_tokens)
    D, _ = kernels.normalize(GK)
    return K - ETA * D, loss


def dense_step(O, K, ds):
    loss, _, g = loss_and_grads(O, K, ds)
    return K - ETA * g / np.linalg.norm(g), loss


def make_torch_step(ds, M):
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


def median_time(step, O, K, ds, reps):
    step(O, K, ds)                                              # warm-up (and Numba compile)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step(O, K, ds)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["S", "L"], choices=sorted(SIZES))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    print(f"cpus={os.cpu_count()} torch={'none' if torch is None else torch.__version__} "
          f"load={os.getloadavg()[0]:.2f}")
    print(f"{'size':4} {'impl':6} {'median ms':>10} {'x kernel':>9}  notes")
    # Implementation-major order: every kernel and dense timing runs before PyTorch has
    # started its thread pool, whose spinning workers otherwise steal the second core
    # from the Numba threads (measured: the kernel step looked 2x slower after a torch call).
    cases = {}
    for name in args.sizes:
        c = SIZES[name]
        M = c["M"]
        ds = ri.generate(M, c["N"], c["lo"], c["hi"], seed=0)
        O, K = np.random.default_rng(0).standard_normal((2, M, M))
        cases[name] = (c, M, ds, O, K)
    impls = [("kernel", lambda ds, M: kernel_step, 0), ("dense", lambda ds, M: dense_step, 1)]
    if torch is not None:
        impls.append(("torch", make_torch_step, 2))
    times, losses = {}, {}
    for impl, make, r in impls:
        for name, (c, M, ds, O, K) in cases.items():
            step = make(ds, M)
            losses[name, impl] = step(O, K, ds)[1]
            times[name, impl] = median_time(step, O, K, ds, c["reps"][r])
    for name, (c, M, ds, O, K) in cases.items():
        ref = losses[name, "kernel"]
        assert all(abs(losses[name, i] - ref) <= 1e-10 * ref for i, _, _ in impls), losses
        t_kernel = times[name, "kernel"]
        for impl, _, _ in impls:
            t = times[name, impl]
            note = ""
            if impl == "kernel":
                madds = 2.0 * ds.lengths.sum() * M
                note = (f"{madds / t / 1e9:.2f} G token-column multiply-adds/s, "
                        f"chunks={kernels.n_chunks(ds.n_sentences, ds.max_len, M)}")
            print(f"{name:4} {impl:6} {t * 1e3:10.3f} {t / t_kernel:9.1f}  {note}")


if __name__ == "__main__":
    main()
