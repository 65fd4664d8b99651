"""NumPy twins of the Numba kernels in :mod:`refimpl.kernels` (same names + ``_np``).

Vectorized over sentences on padded (N, Lmax) arrays, with the same outputs and
the same scale convention (G = exp(log_scale) * Gs), but computed by a second
route: the global scale is known before accumulating, the attention gradient
uses the pair form

    e^{delta} phi_l (g_l - gbar) = sum_m (e^{delta} phi_l phi_m) (g_l - g_m),
    g_l - g_m = (O[:, x_l] - O[:, x_m])^T r      (difference formed first)

and log10_loss comes from a log-sum-exp of per-sentence log-losses. Nothing small is
obtained by subtracting two large numbers (docs/model.md, section 8), so the twins are
as accurate as the kernels at saturation. They allocate (N, Lmax, M) and
(N, Lmax, Lmax, M) arrays: tests only, not for training.
"""
from __future__ import annotations

import numpy as np

__all__ = ["stage1_grad_np", "stage2_grad_np", "joint_grad_np", "stage2_loss_np",
           "normalize_np", "normalize_pair_np", "attention_np", "logits_np"]


def _attention_parts(K, tokens, lengths):
    """Attention in scaled form.

    Returns x (N, L) tokens (0 on padding), valid (N, L), phi (N, L), top (N, L) bool,
    ut (N, L) = 1 on top positions and exp(s_l - s_ref) elsewhere, U (N,), delta (N,), gap (N,) bool.
    """
    N, Lmax = tokens.shape
    valid = np.arange(Lmax)[None, :] < lengths[:, None]
    x = np.where(valid, tokens, 0)
    q = tokens[np.arange(N), lengths - 1]
    s = np.where(valid, K[x, q[:, None]], -np.inf)                 # (N, L) scores
    smax = s.max(axis=1)
    top = valid & (s == smax[:, None])
    first_top = x[np.arange(N), np.argmax(top, axis=1)]
    multi = (top & (x != first_top[:, None])).any(axis=1)          # distinct tokens tie at the top
    other = valid & ~top
    ssec = np.where(other, s, -np.inf).max(axis=1)
    gap = ~multi & other.any(axis=1)
    delta = np.where(gap, smax - np.where(gap, ssec, smax), 0.0)
    rho = np.exp(-delta)
    ref = np.where(gap, ssec, smax)
    with np.errstate(invalid="ignore", over="ignore"):   # overflowing entries are top positions, replaced by 1
        ut = np.where(top, 1.0, np.where(other, np.exp(np.where(other, s, 0.0) - ref[:, None]), 0.0))
    nontop_sum = np.where(other, ut, 0.0).sum(axis=1)
    U = top.sum(axis=1) + np.where(gap, rho, 1.0) * nontop_sum
    phi = np.where(top, 1.0, np.where(gap[:, None], rho[:, None] * ut, ut)) / U[:, None]
    phi = np.where(valid, phi, 0.0)
    return x, valid, phi, top, ut, U, delta, gap


def _scaled_residual(z, ys):
    """Logit side. Returns mpos (n,) = max(m, 0), rhat (n, M) = (p - e_y) e^{mpos},
    loss (n,) float64 and logloss (n,) = log(loss_i) computed in log space."""
    n, M = z.shape
    rows = np.arange(n)
    other = z.copy()
    other[rows, ys] = -np.inf
    zmax = other.max(axis=1)
    m = z[rows, ys] - zmax
    w = np.exp(other - zmax[:, None])                              # (n, M), 0 at y
    sw = w.sum(axis=1)
    pos = m >= 0
    e = np.exp(-np.abs(m))
    S = np.where(pos, e * sw, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = np.where(pos, np.log1p(S), -m + np.log(e + sw))
        ratio = np.where(S > 1e-8, np.log1p(S) / S, 1.0 - 0.5 * S)
        logloss = np.where(pos, np.log(ratio * sw) - m, np.log(loss))
        cr = np.where(pos, 1.0 / (1.0 + S), 1.0 / (e + sw))
    rhat = w * cr[:, None]
    rhat[rows, ys] = -sw * cr
    return np.where(pos, m, 0.0), rhat, loss, logloss


def _log10_mean(logloss):
    top = logloss.max()
    return float((top + np.log(np.exp(logloss - top).sum()) - np.log(len(logloss))) / np.log(10.0))


def _grads(O, K, tokens, lengths, ys, want_o, want_k):
    O = np.asarray(O, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    tokens = np.asarray(tokens, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    ys = np.asarray(ys, dtype=np.int64)
    N = len(lengths)
    M = O.shape[0]
    x, valid, phi, top, ut, U, delta, gap = _attention_parts(K, tokens, lengths)
    cols = O.T[x]                                                  # (N, L, M): O[:, x_l]
    z = np.einsum("nl,nlm->nm", phi, cols)                         # (N, M)
    mpos, rhat, loss, logloss = _scaled_residual(z, ys)
    lam = mpos + (delta if (want_k and not want_o) else 0.0)       # (N,) log-magnitudes
    if want_k and not want_o:                                      # one distinct token: dL/dK = 0
        lam = np.where((valid & (x != x[:, :1])).any(axis=1), lam, np.inf)
    lam_min = lam.min()
    if not np.isfinite(lam_min):
        lam_min = 0.0
    f = np.where(np.isfinite(lam), np.exp(lam_min - lam), 0.0) / N  # (N,) <= 1/N
    GO = np.zeros((M, M))
    GK = np.zeros((M, M))
    if want_o:
        GOT = np.zeros((M, M))
        np.add.at(GOT, x[valid], (f[:, None] * phi)[valid][:, None] * rhat[np.nonzero(valid)[0]])
        GO = GOT.T.copy()
    if want_k:
        # g_l - g_m = (O[:, x_l] - O[:, x_m])^T rhat, the difference formed before the dot
        # product: exactly 0 for equal tokens, never two nearly equal dot products subtracted
        gdiff = np.einsum("nlkv,nv->nlk", cols[:, :, None, :] - cols[:, None, :, :], rhat)   # (N, L, L)
        # pair weights e^{delta} phi_l phi_m, written without overflow (top-top pairs: g_l = g_m)
        nt = (valid & ~top).astype(float)                          # (N, L) 1 on non-top positions
        power = np.maximum(nt[:, :, None] + nt[:, None, :] - 1.0, 0.0)        # (N, L, L)
        rho = np.exp(-delta)[:, None, None]
        omega_gap = ut[:, :, None] * ut[:, None, :] * rho ** power / (U ** 2)[:, None, None]
        omega_gap = np.where(top[:, :, None] & top[:, None, :], 0.0, omega_gap)
        omega = np.where(gap[:, None, None], omega_gap, phi[:, :, None] * phi[:, None, :])
        omega = np.where(valid[:, :, None] & valid[:, None, :], omega, 0.0)
        khat = np.einsum("nlm,nlm->nl", omega, gdiff)              # (N, L)
        fk = f * (np.exp(-delta) if want_o else 1.0)               # joint: e^{-delta} explicit
        q = tokens[np.arange(N), lengths - 1]
        qq = np.broadcast_to(q[:, None], x.shape)
        np.add.at(GK, (x[valid], qq[valid]), (fk[:, None] * khat)[valid])
    return GO, GK, float(-lam_min), float(loss.mean()), _log10_mean(logloss)


def stage1_grad_np(O, xs, ys):
    """Twin of :func:`refimpl.kernels.stage1_grad`: (Gs, log_scale, loss, log10_loss)."""
    xs = np.asarray(xs, dtype=np.int64)
    GO, _, ls, loss, l10 = _grads(O, np.zeros_like(np.asarray(O, dtype=float)), xs[:, None],
                                  np.ones(len(xs), dtype=np.int64), ys, True, False)
    return GO, ls, loss, l10


def stage2_grad_np(O, K, tokens, lengths, ys):
    """Twin of :func:`refimpl.kernels.stage2_grad`: (GKs, log_scale, loss, log10_loss)."""
    _, GK, ls, loss, l10 = _grads(O, K, tokens, lengths, ys, False, True)
    return GK, ls, loss, l10


def joint_grad_np(O, K, tokens, lengths, ys):
    """Twin of :func:`refimpl.kernels.joint_grad`: (GOs, GKs, log_scale, loss, log10_loss)."""
    return _grads(O, K, tokens, lengths, ys, True, True)


def stage2_loss_np(O, K, tokens, lengths, ys):
    """Twin of :func:`refimpl.kernels.stage2_loss`: (loss, log10_loss)."""
    _, _, _, loss, l10 = _grads(O, K, tokens, lengths, ys, False, False)
    return loss, l10


def normalize_np(Gs):
    """Twin of :func:`refimpl.kernels.normalize`: (D, norm)."""
    norm = float(np.sqrt(np.sum(Gs * Gs)))
    return (Gs / norm, norm) if norm > 0 else (np.zeros_like(Gs), 0.0)


def normalize_pair_np(GOs, GKs):
    """Twin of :func:`refimpl.kernels.normalize_pair`: (DO, DK, norm)."""
    norm = float(np.sqrt(np.sum(GOs * GOs) + np.sum(GKs * GKs)))
    if norm == 0:
        return np.zeros_like(GOs), np.zeros_like(GKs), 0.0
    return GOs / norm, GKs / norm, norm


def attention_np(K, tokens, lengths):
    """Twin of :func:`refimpl.kernels.attention`: phi (N, Lmax), 0 on padding."""
    return _attention_parts(np.asarray(K, dtype=float), np.asarray(tokens), np.asarray(lengths))[2]


def logits_np(O, K, tokens, lengths):
    """Twin of :func:`refimpl.kernels.logits`: z (N, M)."""
    x, _, phi, *_ = _attention_parts(np.asarray(K, dtype=float), np.asarray(tokens), np.asarray(lengths))
    return np.einsum("nl,nlm->nm", phi, np.asarray(O, dtype=float).T[x])
