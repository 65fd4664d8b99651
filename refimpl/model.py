"""Dense reference model in embedding space: forward and hand-derived backward (SPEC section 2).

This module defines correctness. It follows the SPEC formulas literally, in
embedding space, for any embedding matrix E (d x M, d >= 1; default E = I).
The fast path (:mod:`refimpl.kernels`) works in token coordinates and is
tested against this file. Derivations: ``docs/model.md``.

Shapes: N sentences, L = Lmax padded positions, M tokens, d embedding width.

    s_l   = e_{x_l}^T W_kq e_q            scores,     (N, L)
    phi   = softmax_l(s)                  attention,  (N, L), 0 on padding
    h     = sum_l phi_l e_{x_l}           (N, d)
    T     = W_ov h                        (N, d)
    z     = E^T T                         logits,     (N, M)
    loss  = log1p(sum_{v != y} exp(z_v - z_y))
"""
from __future__ import annotations

import numpy as np

from .errors import NonOrthonormalEmbeddingError

__all__ = ["loss_and_grads", "stage1_loss_and_grad", "check_orthonormal", "to_token_coords",
           "cross_entropy", "forward", "backward"]

_CHUNK = 2048  # sentences per block: bounds the (chunk, L, d) gathered embeddings


# ============================================================ embeddings
def _embeddings(embeddings, M):
    """E as float64 (d, M); identity when ``embeddings`` is None."""
    if embeddings is None:
        return np.eye(M)
    E = np.asarray(embeddings, dtype=np.float64)
    if E.ndim != 2 or E.shape[1] != M:
        raise ValueError(f"embeddings must have shape (d, {M}), got {E.shape}")
    return E


def check_orthonormal(E, tol=1e-12):
    """Raise NonOrthonormalEmbeddingError unless max |E^T E - I| <= tol (theory code needs it).

    E : float array, shape (d, M). Orthonormal columns need d >= M.
    """
    E = np.asarray(E, dtype=np.float64)
    M = E.shape[1]
    dev = float(np.max(np.abs(E.T @ E - np.eye(M)), initial=0.0))
    if not dev <= tol:  # also catches NaN
        raise NonOrthonormalEmbeddingError(
            f"embeddings of shape {E.shape} are not orthonormal: max |E^T E - I| = {dev:.3e} "
            f"> tol {tol:.1e} (theory code needs E^T E = I, so d >= M)",
            max_deviation=dev, shape=tuple(E.shape))


def to_token_coords(W, E):
    """E^T W E: a (d, d) matrix in token coordinates, shape (M, M) (SPEC section 2)."""
    E = np.asarray(E, dtype=np.float64)
    return E.T @ np.asarray(W, dtype=np.float64) @ E


# ============================================================ loss of logits
def cross_entropy(z, y):
    """Per-row cross entropy and p - e_y, computed without cancellation (SPEC section 2).

    z : float (n, M) logits; y : int (n,) targets.
    Returns loss (n,) = log1p(sum_{v != y} exp(z_v - z_y)) and r (n, M) = p - e_y
    with r_y = -(sum_{v != y} p_v), never p_y - 1.

    With m = z_y - max_{v != y} z_v (the margin) and w_v = exp(z_v - max_{v'!=y} z_v') <= 1,
    S = sum_{v != y} exp(z_v - z_y) = e^{-m} sum w. Stabilized by the largest term:
    m >= 0: loss = log1p(e^{-m} sum w),  p_v = e^{-m} w_v / (1 + e^{-m} sum w);
    m <  0: loss = -m + log(e^{m} + sum w), p_v = w_v / (e^{m} + sum w).
    """
    n, M = z.shape
    rows = np.arange(n)
    zy = z[rows, y]
    other = z.copy()
    other[rows, y] = -np.inf
    zmax = other.max(axis=1) if M > 1 else np.full(n, -np.inf)
    m = zy - zmax                                   # (n,) margins
    with np.errstate(invalid="ignore", over="ignore"):
        w = np.exp(other - zmax[:, None])           # (n, M), 0 at y
    w[rows, y] = 0.0
    if M == 1:
        w[:] = 0.0
    sw = w.sum(axis=1)
    pos = m >= 0
    e = np.exp(-np.abs(m))                          # e^{-|m|} <= 1
    with np.errstate(divide="ignore"):
        loss = np.where(pos, np.log1p(e * sw), -m + np.log(e + sw))
        scale = np.where(pos, e / (1.0 + e * sw), 1.0 / (e + sw))
    r = w * scale[:, None]                          # p_v for v != y
    r[rows, y] = -(sw * scale)                      # -(sum_{v != y} p_v)
    return loss, r


# ============================================================ forward / backward
def forward(W_ov, W_kq, tokens, lengths, E):
    """Forward pass on a block of sentences; returns (z, cache).

    tokens : int64 (n, L) padded with -1; lengths : int64 (n,); E : (d, M).
    z : (n, M) logits. cache = (X (n, L, d) embedded tokens, Q (n, d) query
    embeddings, phi (n, L) attention, h (n, d) attended embedding), exactly what
    :func:`backward` needs.
    """
    n, L = tokens.shape
    valid = np.arange(L)[None, :] < lengths[:, None]            # (n, L)
    X = E.T[np.where(valid, tokens, 0)]                         # (n, L, d)
    Q = E.T[tokens[np.arange(n), lengths - 1]]                  # (n, d)
    s = np.einsum("nld,nd->nl", X, Q @ W_kq.T)                  # (n, L): e_x^T W_kq e_q
    s = np.where(valid, s, -np.inf)
    u = np.exp(s - s.max(axis=1, keepdims=True))
    phi = u / u.sum(axis=1, keepdims=True)                      # (n, L)
    h = np.einsum("nl,nld->nd", phi, X)                         # (n, d)
    z = (h @ W_ov.T) @ E                                        # (n, M): E^T W_ov h
    return z, (X, Q, phi, h)


def backward(r, W_ov, E, cache):
    """Gradients of sum_i loss_i over a block, given r = p - e_y (n, M) from :func:`cross_entropy`.

    Returns (G_ov (d, d), G_kq (d, d)), sums (not means) over the block.

    Derivation (SPEC section 2; docs/model.md). For one sentence,
    d loss / d z = r (softmax Jacobian of log-sum-exp), and z = E^T W_ov h, so

        d loss / d T   = E r                       (d,)
        d loss / d W_ov = (E r) h^T                 (d, d)
        d loss / d h   = W_ov^T E r =: b            (d,)
        d loss / d phi_l = e_{x_l}^T b =: g_l       since h = sum_l phi_l e_{x_l}
        d loss / d s_l = phi_l (g_l - sum_m phi_m g_m)     (softmax Jacobian diag(phi) - phi phi^T)
        d loss / d W_kq = sum_l (d loss / d s_l) e_{x_l} e_q^T     since s_l = e_{x_l}^T W_kq e_q
    """
    X, Q, phi, h = cache
    Er = r @ E.T                                                # (n, d): E r per sentence
    G_ov = Er.T @ h                                             # (d, d): sum_i (E r_i) h_i^T
    b = Er @ W_ov                                               # (n, d): W_ov^T E r
    g = np.einsum("nld,nd->nl", X, b)                           # (n, L)
    a = phi * (g - np.sum(phi * g, axis=1, keepdims=True))      # (n, L): d loss / d s
    G_kq = np.einsum("nld,nl->nd", X, a).T @ Q                 # (d, d): sum_{i,l} a_il e_{x_il} e_{q_i}^T
    return G_ov, G_kq


def loss_and_grads(W_ov, W_kq, ds, embeddings=None):
    """L(theta) = (1/N) sum_i loss(theta; x^(i), y^(i)) and its gradients (SPEC section 2).

    W_ov, W_kq : float (d, d); ds : RealizableDataset (only tokens, lengths,
    next_tokens are read; validity is not required); embeddings : (d, M) or None (E = I).
    Returns (loss float, grad_ov (d, d), grad_kq (d, d)).
    """
    return _loss_and_grads(W_ov, W_kq, ds.tokens, ds.lengths, ds.next_tokens,
                           _embeddings(embeddings, ds.vocab_size))


def _loss_and_grads(W_ov, W_kq, tokens, lengths, ys, E):
    W_ov = np.asarray(W_ov, dtype=np.float64)
    W_kq = np.asarray(W_kq, dtype=np.float64)
    d = E.shape[0]
    if W_ov.shape != (d, d) or W_kq.shape != (d, d):
        raise ValueError(f"W_ov and W_kq must be ({d}, {d}), got {W_ov.shape} and {W_kq.shape}")
    N = len(lengths)
    total = 0.0
    G_ov = np.zeros((d, d))
    G_kq = np.zeros((d, d))
    for lo in range(0, N, _CHUNK):
        sl = slice(lo, min(lo + _CHUNK, N))
        tok, ln = tokens[sl], lengths[sl]
        tok = tok[:, : int(ln.max())]
        z, cache = forward(W_ov, W_kq, tok, ln, E)
        loss, r = cross_entropy(z, ys[sl])
        g_ov, g_kq = backward(r, W_ov, E, cache)
        total += loss.sum()
        G_ov += g_ov
        G_kq += g_kq
    return total / N, G_ov / N, G_kq / N


def stage1_loss_and_grad(W_ov, ds, embeddings=None):
    """Collocation loss L0(W_ov) = (1/|C|) sum_{x in C} loss(W_ov; [x], n(x)) and its gradient (SPEC section 4).

    One-token sentences: attention is 1, h = e_x, so z = E^T W_ov e_x and
    grad = (1/|C|) sum_x (E r_x) e_x^T. Returns (loss float, grad (d, d)).
    """
    E = _embeddings(embeddings, ds.vocab_size)
    xs, ys = ds.colloc_tokens, ds.colloc_next
    W_ov = np.asarray(W_ov, dtype=np.float64)
    X = E[:, xs]                                  # (d, n_c)
    z = (W_ov @ X).T @ E                          # (n_c, M)
    loss, r = cross_entropy(z, ys)
    grad = (E @ r.T) @ X.T / len(xs)              # (d, d): mean_x (E r_x) e_x^T
    return float(loss.mean()), grad
