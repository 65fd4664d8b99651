"""Hypothesis strategies for weights at the edges: saturated attention, large scales.

A :class:`WeightCase` holds a small realizable dataset, an embedding E (d, M) with
orthonormal columns (E = I, or a random one with d >= M), the token-coordinate
weights O, K (M, M) and the embedding-space weights W_ov = E O E^T, W_kq = E K E^T
(d, d), rounded to float64 (so E^T W E is O up to rounding, not exactly: the exact
references are evaluated on exactly the float64 arrays each implementation receives).

    K : c K*   with K* = refimpl.w_kq_star(ds) and c in [1, 1e3] (20, 35, 60 drawn often):
               every attention gap is at least c, so for c >~ 40 phi_top = 1 - O(e^{-c})
               to double precision and for c >~ 745 the attention gradient underflows
        or     scale * N(0, 1) with scale in [1e-2, 1e3] (ties and near ties of scores)
    O : a (e_{n(x)} - 1/M) on the collocation columns (the stage-1 direction O*),
               a in [1e-1, 1e3], optionally with relative noise 1e-3
        or     the stage-1 output (the trainer's update from 0) after T0 in {100, 500, 2000} steps
        or     scale * N(0, 1) with scale in [1e-2, 1e3]

Sizes are small (M <= 6, N <= 8, lengths <= 5, d <= M + 3) so that a 60-digit mpmath
reference of each example takes milliseconds.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from hypothesis import strategies as st

import refimpl as ri
from refimpl import kernels
from refimpl.testing import realizable_datasets

__all__ = ["WeightCase", "weight_cases", "saturated_cases", "small_datasets", "orthonormal"]


class WeightCase(NamedTuple):
    ds: object              # RealizableDataset
    E: np.ndarray           # (d, M), orthonormal columns
    O: np.ndarray           # (M, M) token coordinates
    K: np.ndarray           # (M, M)
    W_ov: np.ndarray        # (d, d) = E O E^T (float64)
    W_kq: np.ndarray        # (d, d) = E K E^T
    label: str              # how it was drawn, for failure messages


def small_datasets(max_vocab=6, max_sentences=8, max_len=5):
    return realizable_datasets(min_vocab=2, max_vocab=max_vocab, max_sentences=max_sentences,
                               min_len=1, max_len=max_len)


def orthonormal(d, M, seed):
    """The first M columns of a random orthogonal d x d matrix (QR of a Gaussian)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q[:, :M]


_STAGE1_CACHE = {}


def _stage1(ds, T0):
    """O after T0 stage-1 steps from 0: the trainer's update (kernels.Stage1Direction and the
    Kahan-compensated step, eta0 = 0.2/sqrt(M)), bit for bit what refimpl.train_two_stage
    returns without its certificates and metrics; cached per (dataset, T0)."""
    key = (ds.vocab_size, ds.collocation_pairs.tobytes(), T0)
    if key not in _STAGE1_CACHE:
        M = ds.vocab_size
        direction = kernels.Stage1Direction(ds.colloc_tokens, ds.colloc_next, M)
        O, c, out = np.zeros((M, M)), np.zeros((M, M)), np.empty((M, M))
        for _ in range(T0):
            D, norm, *_ = direction.direction(O)
            if norm == 0.0:
                break
            kernels.compensated_step(O, c, D, 0.2 / np.sqrt(M), out)
            O, out = out, O
        _STAGE1_CACHE[key] = O
    return _STAGE1_CACHE[key]


def _o_star(ds):
    M = ds.vocab_size
    O = np.zeros((M, M))
    for x, nx in zip(ds.colloc_tokens, ds.colloc_next):
        O[:, x] = -1.0 / M
        O[nx, x] += 1.0
    return O


@st.composite
def _o_matrix(draw, ds):
    M = ds.vocab_size
    kind = draw(st.sampled_from(["O*", "stage1", "random"]), label="O kind")
    if kind == "O*":
        a = draw(st.floats(0.1, 1e3), label="a")
        noise = draw(st.sampled_from([0.0, 1e-3]), label="relative noise")
        seed = draw(st.integers(0, 2**16), label="noise seed")
        O = a * (_o_star(ds) + noise * np.random.default_rng(seed).standard_normal((M, M)))
        return O, f"O = {a:.4g} (O* + {noise:g} noise)"
    if kind == "stage1":
        T0 = draw(st.sampled_from([100, 500, 2000]), label="T0")
        return _stage1(ds, T0), f"O = stage 1 after T0 = {T0}"
    scale = draw(st.floats(1e-2, 1e3), label="O scale")
    seed = draw(st.integers(0, 2**16), label="O seed")
    return scale * np.random.default_rng(seed).standard_normal((M, M)), f"O = {scale:.4g} N(0,1)"


@st.composite
def _k_matrix(draw, ds, saturated_only):
    M = ds.vocab_size
    if saturated_only or draw(st.booleans(), label="K saturated"):
        c = draw(st.one_of(st.sampled_from([20.0, 35.0, 60.0]), st.floats(1.0, 1e3)), label="c")
        return c * ri.w_kq_star(ds)[0], f"K = {c:.4g} K*"
    scale = draw(st.floats(1e-2, 1e3), label="K scale")
    seed = draw(st.integers(0, 2**16), label="K seed")
    return scale * np.random.default_rng(seed).standard_normal((M, M)), f"K = {scale:.4g} N(0,1)"


@st.composite
def weight_cases(draw, saturated_only=False, embed="either", **dataset_bounds):
    """Strategy for :class:`WeightCase`. ``embed``: "identity", "random" or "either"."""
    ds = draw(small_datasets(**dataset_bounds), label="dataset")
    M = ds.vocab_size
    O, o_label = draw(_o_matrix(ds), label="O")
    K, k_label = draw(_k_matrix(ds, saturated_only), label="K")
    kind = embed if embed != "either" else draw(st.sampled_from(["identity", "random"]), label="E kind")
    if kind == "identity":
        E = np.eye(M)
    else:
        d = M + draw(st.integers(0, 3), label="d - M")
        E = orthonormal(d, M, draw(st.integers(0, 2**16), label="E seed"))
    W_ov, W_kq = E @ O @ E.T, E @ K @ E.T
    return WeightCase(ds, E, O, K, W_ov, W_kq,
                      f"M={M} N={ds.n_sentences} d={E.shape[0]} E={kind}; {o_label}; {k_label}")


def saturated_cases(**kw):
    """:func:`weight_cases` with K = c K* always (the attention gaps are >= c)."""
    return weight_cases(saturated_only=True, **kw)
