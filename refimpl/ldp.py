"""Least-distance programming: ``min ||k|| s.t. G k >= 1`` with a KKT certificate (docs/maxmargin.md).

Lawson-Hanson's reduction of least distance to non-negative least squares,
followed by a polish on the active set; :func:`kkt_residuals` measures the four
KKT conditions relative to their natural scale. Used column by column for the
max-margin problems of :mod:`refimpl.maxmargin`; the derivation is in
``docs/maxmargin.md``.
"""
from __future__ import annotations

import functools

import numpy as np
from scipy.linalg import solve_triangular
from scipy.optimize import nnls
from threadpoolctl import threadpool_limits

__all__ = ["KKT_TOL", "CertificateError", "InfeasibleError", "kkt_residuals", "pair_kkt_residuals",
           "least_distance", "serial_blas"]

KKT_TOL = 1e-10      # docs/maxmargin.md: KKT conditions to 1e-10 relative
_EPS = np.finfo(np.float64).eps
_TINY = np.finfo(np.float64).tiny
_ACTIVE_TOL = 1e-9   # a row with slack (G k)_j - 1 below this is treated as tight when polishing
_CONDITIONS = ("primal", "dual", "stationarity", "slackness")


class CertificateError(ArithmeticError):
    """A KKT condition of a max-margin column fails; names the column and the condition."""

    def __init__(self, message, *, problem=None, column=None, condition=None, value=None, tol=None):
        super().__init__(message)
        self.problem, self.column, self.condition = problem, column, condition
        self.value, self.tol = value, tol


class InfeasibleError(ValueError):
    """``G k >= 1`` has no solution. ``farkas`` is u >= 0 with ``G^T u = 0``, ``sum(u) = 1``
    (for difference rows: weights on a cycle of the relations)."""

    def __init__(self, message, *, farkas=None, column=None):
        super().__init__(message)
        self.farkas, self.column = farkas, column


# ================================================================== solver
def kkt_residuals(G, k, alpha):
    """Relative KKT residuals of ``min (1/2)||k||^2 s.t. G k >= 1`` at (k, alpha).

    G : float64 (m, n); k : (n,); alpha : (m,). Returns a dict with

    ``primal``        max(0, max_j 1 - (G k)_j)            (relative to the right-hand side 1)
    ``dual``          max(0, -min_j alpha_j) / max_j |alpha_j|
    ``stationarity``  ||k - G^T alpha|| / max(||k||, ||G^T alpha||)
    ``slackness``     max_j |alpha_j ((G k)_j - 1)| / sum_j |alpha_j|   (sum alpha = ||k||^2 at the optimum)

    Every value is 0 at the exact optimum; an empty G (m = 0) has k = 0 as optimum.
    """
    G = np.asarray(G, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    alpha = np.asarray(alpha, dtype=np.float64)
    if G.shape[0] == 0:
        return dict(primal=0.0, dual=0.0, stationarity=float(np.linalg.norm(k)), slackness=0.0)
    slack = G @ k - 1.0
    Ga = G.T @ alpha
    tiny = _TINY
    return dict(
        primal=float(max(0.0, -slack.min())),
        dual=float(max(0.0, -alpha.min()) / max(np.abs(alpha).max(), tiny)),
        stationarity=float(np.linalg.norm(k - Ga) / max(np.linalg.norm(k), np.linalg.norm(Ga), tiny)),
        slackness=float(np.abs(alpha * slack).max() / max(np.abs(alpha).sum(), tiny)),
    )


def pair_kkt_residuals(rows, k, alpha):
    """:func:`kkt_residuals` for difference rows, in O(m + n) instead of O(m n).

    Parameters
    ----------
    rows : int (m, 2)
        Pairs (a, b): row j of G is ``e_a - e_b``.
    k : float64 (n,)
    alpha : float64 (m,)

    Returns
    -------
    dict
        The four relative residuals of :func:`kkt_residuals` with ``(G k)_j = k[a_j] - k[b_j]``
        and ``G^T alpha = bincount(a, alpha) - bincount(b, alpha)``, never forming G. They
        equal the dense ones up to the order of the sums in ``G^T alpha`` (a few ulps).
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
    k = np.asarray(k, dtype=np.float64)
    alpha = np.asarray(alpha, dtype=np.float64)
    if rows.shape[0] == 0:
        return dict(primal=0.0, dual=0.0, stationarity=float(np.linalg.norm(k)), slackness=0.0)
    n = len(k)
    slack = (k[rows[:, 0]] - k[rows[:, 1]]) - 1.0
    Ga = np.bincount(rows[:, 0], alpha, n) - np.bincount(rows[:, 1], alpha, n)
    tiny = _TINY
    return dict(
        primal=float(max(0.0, -slack.min())),
        dual=float(max(0.0, -alpha.min()) / max(np.abs(alpha).max(), tiny)),
        stationarity=float(np.linalg.norm(k - Ga) / max(np.linalg.norm(k), np.linalg.norm(Ga), tiny)),
        slackness=float(np.abs(alpha * slack).max() / max(np.abs(alpha).sum(), tiny)),
    )


def _fit_alpha(G, k, alpha0=None):
    """Multipliers alpha >= 0 on the tight rows of G at k with G^T alpha ~ k.

    With ``alpha0`` (the Lawson-Hanson multipliers): the minimum-norm correction
    ``alpha0_T + lstsq(G_T^T, k - G_T^T alpha0_T)``, which stays next to alpha0 when
    the tight rows are dependent. Without: NNLS of ``G_T^T alpha = k``, the best
    certificate any candidate k can have (it fails iff k is not optimal).
    """
    tight = G @ k - 1.0 <= _ACTIVE_TOL
    alpha = np.zeros(G.shape[0])
    GT = G[tight]
    if not tight.any():
        return alpha
    if alpha0 is None:
        alpha[tight] = _nnls(GT.T, k)
    else:
        a = alpha0[tight]
        alpha[tight] = a + np.linalg.lstsq(GT.T, k - GT.T @ a, rcond=None)[0]
    return alpha


def _nnls(A, b):
    """Non-negative least squares ``min_{x >= 0} ||A x - b||``: A (p, m), b (p,) -> x (m,).

    ``scipy.optimize.nnls`` gives a warm start; since SciPy 1.15 it can stop at a
    non-optimal point without warning (scipy/scipy#25389, seen here on difference
    matrices), so its result is continued by the Lawson-Hanson active-set iteration
    until the NNLS optimality conditions hold: ``w = A^T (b - A x) <= tol`` off the
    passive set P, and x_P the (positive) least-squares solution on P.
    """
    p, m = A.shape
    tol = 10 * _EPS * np.abs(A).sum(axis=0).max() * max(p, m)
    x = nnls(A, b, maxiter=50 * (p + m))[0]
    P = x > 0
    x[~P] = 0.0
    w = A.T @ (b - A @ x)
    if np.all(np.abs(w[P]) <= tol) and np.all(w <= tol):
        return x
    blocked = np.zeros(m, dtype=bool)   # dropped in this pass: not re-added before the next
    for _ in range(10 * (p + m)):
        while P.any():                  # inner loop: make x the positive LS solution on P
            z = np.zeros(m)
            z[P] = np.linalg.lstsq(A[:, P], b, rcond=None)[0]
            neg = P & (z <= 0)
            if not neg.any():
                x = z
                break
            idx = np.flatnonzero(neg)
            ratio = x[idx] / (x[idx] - z[idx])
            t = ratio.min()
            x = x + t * (z - x)
            x[idx[np.argmin(ratio)]] = 0.0           # the blocking coordinate, exactly
            drop = P & (x <= tol * max(1.0, x.max()))
            blocked |= drop
            P &= ~drop
            x[~P] = 0.0
        w = A.T @ (b - A @ x)
        cand = ~P & ~blocked & (w > tol)
        if not cand.any():
            return x
        P[np.flatnonzero(cand)[np.argmax(w[cand])]] = True
        blocked[:] = False
    raise ArithmeticError(f"Lawson-Hanson NNLS did not converge ({p} x {m})")


def least_distance(G, *, tol=KKT_TOL):
    """Solve ``min ||k||_2 s.t. G k >= 1`` exactly; return ``(k (n,), alpha (m,))`` with k = G^T alpha.

    G : float64 (m, n). Lawson-Hanson: with ``E = [G^T ; 1^T]`` (n+1, m) and
    ``f = e_{n+1}``, solve the NNLS ``min_{u >= 0} ||E u - f||``; its residual
    ``r = E u - f`` has ``r_{n+1} = -||r||^2``, and ``k = G^T u / ||r||^2``,
    ``alpha = u / ||r||^2`` solve the LDP (derivation in ``docs/maxmargin.md``).
    ``r = 0`` means the program is infeasible (:class:`InfeasibleError`, with u as
    Farkas certificate). Then polish: k is re-solved as the minimum-norm solution
    of ``G_T k = 1`` on the tight rows T (QR of G_T^T), alpha_T from ``G_T^T alpha_T = k``
    (unique when the tight rows are independent; otherwise the correction of the
    Lawson-Hanson alpha of least norm). Raises :class:`CertificateError` if the KKT residuals
    (:func:`kkt_residuals`) exceed ``tol``.
    """
    G = np.atleast_2d(np.asarray(G, dtype=np.float64))
    m, n = G.shape
    if m == 0:
        return np.zeros(n), np.zeros(0)
    E = np.vstack([G.T, np.ones((1, m))])   # (n+1, m)
    f = np.zeros(n + 1)
    f[n] = 1.0
    u = _nnls(E, f)
    rr = 1.0 - u.sum()                       # = -r_{n+1} = ||r||^2 = 1 / (1 + ||k||^2)
    if rr <= 64 * _EPS:
        raise InfeasibleError(
            f"G k >= 1 is infeasible ({m} rows): nonnegative weights u with G^T u = 0 and "
            f"sum(u) = 1 exist, on rows {np.flatnonzero(u > 1e-12).tolist()}", farkas=u / u.sum())
    alpha0 = u / rr
    k0 = G.T @ alpha0
    tight = G @ k0 - 1.0 <= _ACTIVE_TOL
    k, alpha = k0, alpha0
    if tight.any():
        GT = G[tight]                                # (r, n), r tight rows
        r = GT.shape[0]
        independent = False
        if r <= n:
            Q, R = np.linalg.qr(GT.T)                # GT^T = Q R, Q (n, r), R (r, r)
            diag = np.abs(np.diag(R))
            independent = diag.min() > 1e-10 * diag.max()
        if independent:                              # unique alpha_T
            k = Q @ solve_triangular(R, np.ones(r), trans="T")           # min-norm G_T k = 1
            alpha = np.zeros(m)
            alpha[tight] = solve_triangular(R, Q.T @ k)                  # G_T^T alpha_T = k
        else:                                        # dependent tight rows (a balanced cycle)
            k = np.linalg.lstsq(GT, np.ones(r), rcond=None)[0]
            alpha = _fit_alpha(G, k, alpha0)
            if not kkt_residuals(G, k, alpha)["dual"] <= tol:
                # the least-norm correction of alpha0 can leave the cone alpha >= 0 when the
                # tight rows are dependent; multipliers are then not unique, and NNLS on the
                # tight rows finds nonnegative ones whenever they exist (k optimal)
                alpha = _fit_alpha(G, k)
    res = kkt_residuals(G, k, alpha)
    raw = kkt_residuals(G, k0, alpha0)
    if max(raw.values()) < max(res.values()):
        # the polish is meant to sharpen an accurate Lawson-Hanson solution; when the tight set
        # read off k0 is degenerate it can do worse (seen: a primal violation of 3e-2 from a
        # solution whose own residuals were 1e-15), so the better certified candidate is kept
        k, alpha, res = k0, alpha0, raw
    bad = [c for c in _CONDITIONS if not res[c] <= tol]
    if bad:
        raise CertificateError(f"least-distance solution fails KKT condition(s) {bad}: {res}",
                               condition=bad[0], value=res[bad[0]], tol=tol)
    return k, alpha



def serial_blas(fn):
    """Run ``fn`` with one BLAS thread: its many small dense solves were measured 4-13x
    slower with OpenBLAS's default threading on the 2-core development machine."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)
    return wrapper
