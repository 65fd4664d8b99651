"""High-precision (mpmath, 60 digits) loss and gradients of the one-layer transformer.

Written from the model definition of docs/model.md, sections 1-3, in embedding space,
one sentence at a time, with Python lists of ``mpmath.mpf`` and no NumPy arithmetic, so
that it shares no code with ``refimpl``. The float64 inputs are converted exactly
(every float64 is an mpf), so the results are the exact values for those inputs, to
about 60 significant digits.

For a sentence x = (x_1, ..., x_L), query q = x_L, next token y, E in R^{d x M}:

    s_l   = e_{x_l}^T W_kq e_q,          phi = softmax(s)
    h     = sum_l phi_l e_{x_l},         z = E^T W_ov h
    loss  = log sum_v exp(z_v) - z_y   = log1p(sum_{v != y} exp(z_v - z_y))
    r     = p - e_y,                     r_y = -(sum_{v != y} p_v)
    dloss/dW_ov = (E r) h^T,             b = W_ov^T E r,   g_l = e_{x_l}^T b
    dloss/dW_kq = sum_l phi_l sum_m phi_m (g_l - g_m) e_{x_l} e_q^T

and the dataset values are means over sentences. Two of these lines are written in the
algebraically equal forms of docs/model.md (sections 2 and 5) rather than as
``log(sum exp z) - z_y``, ``p_y - 1`` and ``phi_l (g_l - sum_m phi_m g_m)``: those
cancel even in 60-digit arithmetic once 1 - p_y or 1 - phi_top fall below 1e-60
(margins or attention gaps above ~140), which saturated weights reach easily.
:func:`literal_loss_and_grads` keeps the literal forms and raises the precision until
they are exact; the tests hold the two against each other.
"""
from __future__ import annotations

import math

import mpmath
import numpy as np

__all__ = ["DPS", "TINY", "MPResult", "loss_and_grads_mp", "literal_loss_and_grads",
           "rel_error", "accurate", "to_token_coords_mp", "scaled_mp"]

DPS = 60
TINY = 2.2250738585072014e-308     # smallest normal float64


class MPResult:
    """loss (mpf), G_ov and G_kq (lists of lists of mpf, d x d) and per-sentence
    margins m_i = z_y - max_{v != y} z_v and attention gaps (mpf, for preconditions)."""

    def __init__(self, loss, G_ov, G_kq, margins, gaps):
        self.loss, self.G_ov, self.G_kq, self.margins, self.gaps = loss, G_ov, G_kq, margins, gaps


def _mp_matrix(A):
    A = np.asarray(A, dtype=np.float64)
    return [[mpmath.mpf(float(v)) for v in row] for row in A]


def _column(E, v):
    return [row[v] for row in E]


def _dot(a, b):
    return mpmath.fsum(x * y for x, y in zip(a, b))


def _matvec(A, x):
    return [_dot(row, x) for row in A]


def _matvec_t(A, x):
    """A^T x."""
    return [mpmath.fsum(A[i][j] * x[i] for i in range(len(x))) for j in range(len(A[0]))]


def _sentences(tokens, lengths):
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    return [[int(t) for t in tokens[i, :int(lengths[i])]] for i in range(len(lengths))]


def _run(W_ov, W_kq, sentences, ys, E, literal):
    d = len(E)
    M = len(E[0])
    cols = [_column(E, v) for v in range(M)]
    G_ov = [[mpmath.mpf(0)] * d for _ in range(d)]
    G_kq = [[mpmath.mpf(0)] * d for _ in range(d)]
    total = mpmath.mpf(0)
    margins, gaps = [], []
    for x, y in zip(sentences, ys):
        q = x[-1]
        wq = _matvec(W_kq, cols[q])                               # W_kq e_q
        s = [_dot(cols[t], wq) for t in x]                        # scores
        smax = max(s)
        distinct_top = {t for t, v in zip(x, s) if v == smax}
        others = [v for t, v in zip(x, s) if t not in distinct_top]
        gaps.append(smax - max(others) if others and len(distinct_top) == 1 else mpmath.mpf(0))
        u = [mpmath.exp(v - smax) for v in s]
        U = mpmath.fsum(u)
        phi = [v / U for v in u]                                  # softmax(s)
        h = [mpmath.fsum(phi[l] * cols[t][k] for l, t in enumerate(x)) for k in range(d)]
        T = _matvec(W_ov, h)                                      # W_ov h
        z = [_dot(cols[v], T) for v in range(M)]                  # E^T W_ov h
        margins.append(z[y] - max(z[v] for v in range(M) if v != y) if M > 1 else mpmath.inf)
        if literal:
            zmax = max(z)
            ez = [mpmath.exp(v - zmax) for v in z]
            Z = mpmath.fsum(ez)
            total += mpmath.log(Z) + zmax - z[y]                  # log sum exp z - z_y
            r = [v / Z for v in ez]
            r[y] -= 1                                             # p - e_y
        else:
            ez = [mpmath.exp(z[v] - z[y]) if v != y else mpmath.mpf(0) for v in range(M)]
            S = mpmath.fsum(ez)
            total += mpmath.log1p(S)
            r = [v / (1 + S) for v in ez]                         # p_v, v != y
            r[y] = -mpmath.fsum(r)                                # -(sum_{v != y} p_v)
        Er = [mpmath.fsum(cols[v][k] * r[v] for v in range(M)) for k in range(d)]
        for i in range(d):
            for j in range(d):
                G_ov[i][j] += Er[i] * h[j]                        # (E r) h^T
        b = _matvec_t(W_ov, Er)                                   # W_ov^T E r
        g = [_dot(cols[t], b) for t in x]                         # g_l = e_{x_l}^T b
        if literal:
            gbar = mpmath.fsum(p * v for p, v in zip(phi, g))
            a = [phi[l] * (g[l] - gbar) for l in range(len(x))]
        else:
            a = [phi[l] * mpmath.fsum(phi[m] * (g[l] - g[m]) for m in range(len(x)))
                 for l in range(len(x))]
        key = [mpmath.fsum(a[l] * cols[t][k] for l, t in enumerate(x)) for k in range(d)]
        for i in range(d):
            for j in range(d):
                G_kq[i][j] += key[i] * cols[q][j]                 # sum_l a_l e_{x_l} e_q^T
    n = len(ys)
    return MPResult(total / n, [[v / n for v in row] for row in G_ov],
                    [[v / n for v in row] for row in G_kq], margins, gaps)


def loss_and_grads_mp(W_ov, W_kq, tokens, lengths, ys, E=None, dps=DPS):
    """Exact (``dps`` digits) mean loss and gradients for float64 inputs.

    W_ov, W_kq : float (d, d); tokens : int (N, Lmax) padded; lengths, ys : int (N,);
    E : float (d, M) or None (identity, d = M: token coordinates). Returns MPResult.
    """
    W_ov = np.asarray(W_ov, dtype=np.float64)
    E = np.eye(W_ov.shape[0]) if E is None else E
    with mpmath.workdps(dps):
        return _run(_mp_matrix(W_ov), _mp_matrix(W_kq), _sentences(tokens, lengths),
                    [int(v) for v in ys], _mp_matrix(E), literal=False)


def literal_loss_and_grads(W_ov, W_kq, tokens, lengths, ys, E=None, digits=DPS):
    """The literal formulas (log-sum-exp minus z_y, p_y - 1, phi_l (g_l - gbar)), at enough
    digits that their cancellation still leaves ``digits`` correct ones: the working
    precision grows by (largest margin + largest attention gap)/ln 10 plus the digits
    the largest |score| and |logit| spend above the leading one."""
    first = loss_and_grads_mp(W_ov, W_kq, tokens, lengths, ys, E, dps=30)
    spread = max([abs(v) for v in first.margins + first.gaps if v != mpmath.inf] + [mpmath.mpf(1)])
    size = max(float(np.max(np.abs(W_ov), initial=1.0)), float(np.max(np.abs(W_kq), initial=1.0)))
    dps = digits + int(2 * float(spread) / math.log(10)) + int(math.log10(size)) + 20
    W_ov = np.asarray(W_ov, dtype=np.float64)
    E = np.eye(W_ov.shape[0]) if E is None else E
    with mpmath.workdps(dps):
        res = _run(_mp_matrix(W_ov), _mp_matrix(W_kq), _sentences(tokens, lengths),
                   [int(v) for v in ys], _mp_matrix(E), literal=True)
    res.dps = dps
    return res


def to_token_coords_mp(G, E):
    """E^T G E for an mpf d x d matrix G and a float (d, M) E, in mpf (M x M)."""
    E = _mp_matrix(E)
    d, M = len(E), len(E[0])
    GE = [[mpmath.fsum(G[i][k] * E[k][b] for k in range(d)) for b in range(M)] for i in range(d)]
    return [[mpmath.fsum(E[i][a] * GE[i][b] for i in range(d)) for b in range(M)] for a in range(M)]


def scaled_mp(Gs, log_scale):
    """exp(log_scale) * Gs in mpf: the value a kernel's (Gs, log_scale) pair stands for,
    also where it lies below the float64 range."""
    f = mpmath.exp(mpmath.mpf(float(log_scale)))
    return [[f * mpmath.mpf(float(v)) for v in row] for row in np.asarray(Gs, dtype=np.float64)]


def _norm(rows):
    return mpmath.sqrt(mpmath.fsum(v * v for row in rows for v in row))


def rel_error(G, exact):
    """(||G - G_exact||_F, ||G_exact||_F) in mpf. ``G`` is a float array or a list of
    lists of mpf (a scaled kernel value); ``exact`` a list of lists of mpf, or one mpf
    (a loss), compared as a 1 x 1 matrix."""
    with mpmath.workdps(DPS):
        if not isinstance(exact, list):
            exact, G = [[exact]], [[G]]
        G = [[v if isinstance(v, mpmath.mpf) else mpmath.mpf(float(v)) for v in row] for row in G]
        diff = [[a - b for a, b in zip(ra, rb)] for ra, rb in zip(G, exact)]
        return _norm(diff), _norm(exact)


def accurate(G, exact, rtol):
    """(ok, relative error as float, ||G_exact|| as mpf): ok when ||G - G_exact|| <=
    max(rtol ||G_exact||, TINY). Where ||G_exact|| is below the smallest normal float64 the
    exact value is not representable to relative precision, and the absolute bound TINY is
    what float64 can promise (0 is then within it)."""
    err, norm = rel_error(G, exact)
    ok = bool(err <= max(rtol * norm, mpmath.mpf(TINY)))
    rel = float(err / norm) if norm > 0 else (0.0 if err == 0 else math.inf)
    return ok, rel, norm
