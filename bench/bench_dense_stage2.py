"""Stage 2 driven by the dense reference's gradient against the kernel trajectory.

Default problem (``refimpl.generate()``: M = d = 20, N = 200, lengths 2..6, seed 0),
stage 1 by the trainer with T0 = 2000, then T stage-2 NGD steps from K = 0,

    K <- K - eta * G / ||G||_F,     eta = 0.05 / sqrt(d)    (Kahan-compensated, as in the trainer)

once with the kernel direction (``kernels.Stage2Direction``, the trainer's path) and once
with G = dL/dW_kq of the dense embedding-space reference ``refimpl.model.loss_and_grads``
(E = I). Prints, at a few checkpoints and at the end, cos(K_dense, K_kernel),
cos(K_dense, K*), cos(K_kernel, K*), the largest relative difference
||K_dense - K_kernel|| / ||K_kernel|| seen so far, and the smallest attention gap of the
kernel iterate (how saturated the attention is).

``--old`` adds a third run whose dense gradient uses the attention backward
phi_l (g_l - sum_m phi_m g_m) that the reference had before it formed differences
directly (it cancels once attention saturates).

    python bench/bench_dense_stage2.py [--T 20000] [--old]
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

import refimpl as ri
import refimpl.model as model
from refimpl import kernels
from refimpl.kernels_np import _attention_parts


def _cos(A, B):
    return float(np.sum(A * B) / (np.linalg.norm(A) * np.linalg.norm(B)))


def _old_score_gradient(phi, X, b):
    """phi_l (g_l - gbar), g = X b: the backward before the pair form."""
    g = np.einsum("nld,nd->nl", X, b)
    return phi * (g - np.sum(phi * g, axis=1, keepdims=True))


class _Run:
    """One NGD trajectory with the trainer's compensated update."""

    def __init__(self, M, direction):
        self.K, self.c, self._t = np.zeros((M, M)), np.zeros((M, M)), np.empty((M, M))
        self.direction = direction

    def step(self, eta):
        kernels._compensated_step(self.K, self.c, np.ascontiguousarray(self.direction(self.K)), eta, self._t)
        self.K, self._t = self._t, self.K


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--T", type=int, default=20_000, help="stage-2 steps")
    ap.add_argument("--old", action="store_true", help="also run the old phi (g - gbar) dense gradient")
    args = ap.parse_args()

    ds = ri.generate()
    M = ds.vocab_size
    O = ri.train_two_stage(ds, T0=2000, T=0, progress=False).W_ov
    K_star = ri.w_kq_star(ds)[0]
    eta = 0.05 / math.sqrt(M)
    sd = kernels.Stage2Direction(O, ds.tokens, ds.lengths, ds.next_tokens)

    def dense(K):
        g = model.loss_and_grads(ds, O, K)[2]
        return g / np.linalg.norm(g)

    def dense_old(K):
        current = model._score_gradient
        model._score_gradient = _old_score_gradient
        try:
            return dense(K)
        finally:
            model._score_gradient = current

    runs = {"kernel": _Run(M, lambda K: sd.direction(K)[0]), "dense": _Run(M, dense)}
    if args.old:
        runs["dense (old phi (g - gbar))"] = _Run(M, dense_old)
    print(f"default problem M = d = {M}, N = {ds.n_sentences}, stage 1 T0 = 2000 "
          f"(||O|| = {np.linalg.norm(O):.2f}), eta = {eta:.6f}, T = {args.T}")
    checkpoints = sorted({t for t in (1000, 5000, 10_000) if t < args.T}
                         | set(range(20_000, args.T, 10_000)) | {args.T})
    worst = {name: 0.0 for name in runs if name != "kernel"}
    start = time.perf_counter()
    for t in range(1, args.T + 1):
        for run in runs.values():
            run.step(eta)
        Kk = runs["kernel"].K
        for name in worst:
            worst[name] = max(worst[name], float(np.linalg.norm(runs[name].K - Kk) / np.linalg.norm(Kk)))
        if t in checkpoints:
            _, _, _, _, _, _, delta, gap = _attention_parts(Kk, ds.tokens, ds.lengths)
            print(f"t = {t:6d}  ||K_kernel|| = {np.linalg.norm(Kk):8.3f}  min attention gap "
                  f"{delta[gap].min():7.3f}  cos(K_kernel, K*) = {_cos(Kk, K_star):.15f}")
            for name in worst:
                K = runs[name].K
                print(f"    {name:28s} cos(K, K_kernel) = {_cos(K, Kk):.15f}  cos(K, K*) = "
                      f"{_cos(K, K_star):.15f}  max rel. difference so far {worst[name]:.3e}")
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
