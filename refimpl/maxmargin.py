"""Max-margin solutions W_ov*, W_kq*, their KKT certificates, and the stage-2 floor (SPEC section 5).

Everything is in token coordinates (``O = E^T W_ov E``, ``K = E^T W_kq E``,
shape (M, M), row = key token, column = query token). Both max-margin problems
decouple by column, and every column is a least-distance program

    min (1/2) ||k||^2   s.t.   G k >= 1,        G : float64 (m, n), rows e_a - e_b,

solved exactly by Lawson-Hanson (least distance through non-negative least
squares, :func:`least_distance`) and then polished on its active set. The
derivation of the reduction, the certificate and its tolerances are in
``docs/maxmargin.md``.

A column's certificate is its dual multipliers ``alpha >= 0`` with
``k = G^T alpha``; :func:`kkt_residuals` measures the four KKT conditions
relative to their natural scale, and no solution leaves this module before
``Certificate.check`` (1e-10 relative, SPEC section 5) passed.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular
from scipy.optimize import nnls
from scipy.special import logsumexp
from threadpoolctl import threadpool_limits

from .data import induced_relations

__all__ = [
    "CertificateError", "InfeasibleError", "ColumnCertificate", "Certificate",
    "least_distance", "kkt_residuals", "certify",
    "w_ov_star", "w_kq_star", "gamma_ov", "gamma_kq", "normalized_distance", "cosine",
    "log_loss", "stage2_floor",
]

KKT_TOL = 1e-10      # SPEC section 5: KKT conditions to 1e-10 relative
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
    tiny = np.finfo(np.float64).tiny
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
    tol = 10 * np.finfo(np.float64).eps * np.abs(A).sum(axis=0).max() * max(p, m)
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
    if rr <= 64 * np.finfo(np.float64).eps:
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
    bad = [c for c in _CONDITIONS if not res[c] <= tol]
    if bad:
        raise CertificateError(f"least-distance solution fails KKT condition(s) {bad}: {res}",
                               condition=bad[0], value=res[bad[0]], tol=tol)
    return k, alpha


# ============================================================= certificates
@dataclass
class ColumnCertificate:
    """KKT certificate of one column of a max-margin solution.

    column : the query (W_kq*) or source token (W_ov*) of this column
    rows   : int64 (m, 2), constraint pairs (a, b) meaning W[a, col] - W[b, col] >= 1
             (W_kq*: (x*, x'); W_ov*: (n(x), v))
    alpha  : float64 (m,), dual multipliers, W[:, col] = sum_j alpha_j (e_a - e_b)
    primal, dual, stationarity, slackness : relative residuals (:func:`kkt_residuals`)
    """

    column: int
    rows: np.ndarray
    alpha: np.ndarray
    primal: float
    dual: float
    stationarity: float
    slackness: float

    def residuals(self):
        """dict condition -> relative residual."""
        return {c: getattr(self, c) for c in _CONDITIONS}

    def failing(self, tol=KKT_TOL):
        """Names of the conditions whose residual exceeds ``tol`` (NaN counts as failing)."""
        return [c for c in _CONDITIONS if not getattr(self, c) <= tol]


@dataclass
class Certificate:
    """KKT certificate of a max-margin matrix: one :class:`ColumnCertificate` per constrained column.

    problem : "W_ov*" or "W_kq*"
    columns : tuple of ColumnCertificate (columns without constraints are zero and absent)
    tol     : the relative tolerance :attr:`ok` uses (SPEC section 5: 1e-10)
    """

    problem: str
    columns: tuple
    tol: float = KKT_TOL

    @property
    def ok(self):
        """True iff every condition of every column is within ``tol``."""
        return all(not c.failing(self.tol) for c in self.columns)

    def worst(self):
        """dict condition -> largest residual over the columns."""
        return {c: max((getattr(col, c) for col in self.columns), default=0.0) for c in _CONDITIONS}

    def check(self, tol=None):
        """Raise :class:`CertificateError` naming the first failing column and condition."""
        tol = self.tol if tol is None else tol
        for col in self.columns:
            bad = col.failing(tol)
            if bad:
                c = bad[0]
                raise CertificateError(
                    f"{self.problem} column {col.column}: KKT condition '{c}' fails, relative "
                    f"residual {getattr(col, c):.3e} > {tol:.1e} (all residuals {col.residuals()})",
                    problem=self.problem, column=col.column, condition=c,
                    value=getattr(col, c), tol=tol)


def _difference_matrix(rows, n):
    """float64 (m, n) with row j = e_{rows[j,0]} - e_{rows[j,1]}."""
    G = np.zeros((len(rows), n))
    G[np.arange(len(rows)), rows[:, 0]] = 1.0
    G[np.arange(len(rows)), rows[:, 1]] -= 1.0
    return G


def certify(W, rows_by_column, alpha_by_column=None, *, problem="W", tol=KKT_TOL):
    """KKT certificate of a candidate max-margin matrix ``W`` (M, M).

    rows_by_column : dict column -> int64 (m, 2) constraint pairs (a, b): W[a, c] - W[b, c] >= 1
    alpha_by_column : dict column -> (m,) multipliers, or None to fit the best ones
        (NNLS on the tight rows): then the certificate fails iff W is not the optimum.
    Columns not in ``rows_by_column`` must be zero (checked as stationarity with no rows).
    Returns a :class:`Certificate`; call ``.check()`` to raise on failure.
    """
    W = np.asarray(W, dtype=np.float64)
    M = W.shape[0]
    cols = []
    for c in range(W.shape[1]):
        rows = np.asarray(rows_by_column.get(c, np.zeros((0, 2))), dtype=np.int64).reshape(-1, 2)
        if len(rows) == 0:
            if np.any(W[:, c] != 0):
                cols.append(ColumnCertificate(c, rows, np.zeros(0), 0.0, 0.0, 1.0, 0.0))
            continue
        G = _difference_matrix(rows, M)
        if alpha_by_column is None:
            alpha = _fit_alpha(G, W[:, c])
        else:
            alpha = np.asarray(alpha_by_column[c], dtype=np.float64)
        cols.append(ColumnCertificate(c, rows, alpha, **kkt_residuals(G, W[:, c], alpha)))
    return Certificate(problem, tuple(cols), tol)


# ================================================================= W_ov*
def _ov_rows(y, M):
    """int64 (M-1, 2): the C1 constraints (e_y - e_v)^T o >= 1, v != y, as pairs (y, v)."""
    v = np.delete(np.arange(M), y)
    return np.stack([np.full(M - 1, y), v], axis=1)


def _serial_blas(fn):
    """Run ``fn`` with one BLAS thread: its many small dense solves were measured 4-13x
    slower with OpenBLAS's default threading on the 2-core development machine."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)
    return wrapper


@_serial_blas
def w_ov_star(ds, method="closed_form"):
    """Max-margin W_ov* in token coordinates: ``(O_star float64 (M, M), Certificate)``.

    ``method="closed_form"`` (claim C1): ``O*[:, x] = e_{n(x)} - (1/M) 1`` for x in C, zero
    columns elsewhere, certified with multipliers ``alpha_v = 1/M`` for every v != n(x).
    ``method="solve"``: each column by :func:`least_distance` (cross-check of C1).
    The certificate is checked before returning.
    """
    M = ds.vocab_size
    O = np.zeros((M, M))
    rows, alphas = {}, {}
    solved = {}   # columns with the same n(x) have the same solution
    for x, y in zip(ds.colloc_tokens.tolist(), ds.colloc_next.tolist()):
        rows[x] = _ov_rows(y, M)
        if method == "closed_form":
            O[:, x] = -1.0 / M
            O[y, x] += 1.0
            alphas[x] = np.full(M - 1, 1.0 / M)
        elif method == "solve":
            if y not in solved:
                solved[y] = least_distance(_difference_matrix(rows[x], M))
            O[:, x], alphas[x] = solved[y]
        else:
            raise ValueError(f"method must be 'closed_form' or 'solve', got {method!r}")
    cert = certify(O, rows, alphas, problem="W_ov*")
    cert.check()
    return O, cert


# ================================================================= W_kq*
@_serial_blas
def w_kq_star(ds):
    """Max-margin W_kq* in token coordinates: ``(K_star float64 (M, M), Certificate)``.

    Column q solves ``min ||k|| s.t. k[x*] - k[x'] >= 1`` over the deduplicated training
    relations ``x' <_q x*`` of query q (:func:`refimpl.data.induced_relations`), in the
    coordinates of the tokens those relations involve (the others are 0 at the optimum),
    then is embedded back. Columns of queries that never occur are zero. Certificate
    rows are pairs (x*, x'); it is checked on the embedded matrix before returning.
    """
    M = ds.vocab_size
    K = np.zeros((M, M))
    rows, alphas = {}, {}
    for q, rel in induced_relations(ds).items():
        pairs = rel[:, ::-1].copy()                 # (x*, x') = (upper, lower)
        toks, local = np.unique(pairs, return_inverse=True)
        G = _difference_matrix(local.reshape(-1, 2), len(toks))
        try:
            k, alpha = least_distance(G)
        except (CertificateError, InfeasibleError) as err:
            err.column = q
            err.args = (f"W_kq* column {q}: {err}",)
            raise
        K[toks, q] = k
        rows[q], alphas[q] = pairs, alpha
    cert = certify(K, rows, alphas, problem="W_kq*")
    cert.check()
    return K, cert


def gamma_ov(ds):
    """gamma_ov = 1 / ||W_ov*||_F = sqrt(M / (n_c (M - 1))) (C1)."""
    return 1.0 / np.linalg.norm(w_ov_star(ds)[0])


def gamma_kq(ds):
    """gamma_kq = 1 / ||W_kq*||_F (inf if the dataset has no attention constraint)."""
    norm = np.linalg.norm(w_kq_star(ds)[0])
    return np.inf if norm == 0 else 1.0 / norm


def cosine(W, W_star):
    """<W, W*> / (||W|| ||W*||); NaN if either is zero (the direction is undefined)."""
    a, b = np.linalg.norm(W), np.linalg.norm(W_star)
    if a == 0 or b == 0:
        return float("nan")
    return float(np.vdot(W, W_star) / (a * b))


def normalized_distance(W, W_star):
    """|| W/||W|| - W*/||W*|| ||_F (= sqrt(2 - 2 cos)); NaN if either is zero."""
    a, b = np.linalg.norm(W), np.linalg.norm(W_star)
    if a == 0 or b == 0:
        return float("nan")
    return float(np.linalg.norm(np.asarray(W) / a - np.asarray(W_star) / b))


# ============================================================ stage-2 floor
def log_loss(Z, y):
    """log of the cross-entropy loss per row: Z float64 (n, M) logits, y int (n,) -> (n,).

    With ``a = log sum_{v != y} exp(z_v - z_y)`` (a log-sum-exp, never overflows),
    ``loss = log1p(e^a)`` (SPEC section 2), and ``log(loss) = a + log1p(-e^a/2)`` for
    ``a < -20`` (error below e^{2a} < 1e-17), so it stays finite after the loss underflows.
    """
    Z = np.atleast_2d(np.asarray(Z, dtype=np.float64))
    y = np.asarray(y, dtype=np.int64).reshape(-1)
    idx = np.arange(len(y))
    D = Z - Z[idx, y][:, None]
    D[idx, y] = -np.inf
    a = logsumexp(D, axis=1)
    out = np.empty_like(a)
    small = a < -20
    t = np.exp(a[small])
    out[small] = a[small] + np.log1p(-t / 2)
    big = ~small
    out[big] = np.log(np.logaddexp(0.0, a[big]))
    return out


def _direction(z, y):
    """(p - e_y) / (1 - p_y) for logits z (n, M): softmax ratios off y, -1 at y; never underflows."""
    idx = np.arange(len(y))
    D = z.copy()
    D[idx, y] = -np.inf
    w = np.exp(D - D.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    w[idx, y] = -1.0
    return w


_VERTEX_RTOL = 1e-12   # rounding allowance in the vertex KKT test (floor error <= this, relative)
_GAP_RTOL = 1e-10      # accepted Frank-Wolfe gap of a non-vertex sentence, relative to its loss


def _simplex_objective(Z, y, scale):
    """phi -> loss(Z phi; y)/scale, its gradient Z^T (p - e_y)/scale and, with ``hess``,
    its Hessian Z^T (diag p - p p^T) Z/scale. Z : (M, u). loss = softplus(lse_{v != y}(z_v - z_y))."""

    def fun(phi, hess=False):
        z = Z @ phi                                   # (M,)
        a = z - z[y]
        a[y] = -np.inf
        top = a.max()
        e = np.exp(a - top)
        loss = np.logaddexp(0.0, top + np.log(e.sum()))
        p = np.exp(z - z.max())
        p /= p.sum()
        r = p.copy()
        r[y] = -(p.sum() - p[y])                      # p - e_y without cancellation at y
        if not hess:
            return loss / scale, (Z.T @ r) / scale
        Zp = Z.T @ p
        return loss / scale, (Z.T @ r) / scale, ((Z.T * p) @ Z - np.outer(Zp, Zp)) / scale
    return fun


def _solve_simplex(Z, y, start):
    """min_{phi in simplex} loss(Z phi; y) for Z (M, u); returns (phi (u,), log-loss, FW gap / loss).

    Active-set Newton from ``start``: on the face S (support of phi plus the zero
    coordinates whose gradient is below ``phi^T g``) solve the equality-constrained
    Newton system ``[[H_S + mu I, 1], [1^T, 0]] [d; lam] = [-g_S; 0]`` (mu = 1e-12 of the
    Hessian's scale keeps it nonsingular when columns coincide up to a constant). When
    that step would push a zero coordinate with the lowest gradient negative, take the
    pairwise Frank-Wolfe step ``e_j - e_k`` instead (j = argmin g, k = argmax of g on the
    support), which always descends. Steps stop at the boundary; Armijo backtracking
    with a rounding allowance of 8 eps of the loss. Stops when the Frank-Wolfe gap
    ``phi^T g - min_u g_u`` is below 1e-13 of the loss; by convexity that gap bounds
    ``loss(phi) - min``, so it certifies the result.
    """
    u = Z.shape[1]
    scale = max(_simplex_objective(Z, y, 1.0)(start)[0], _TINY)
    fun = _simplex_objective(Z, y, scale)
    phi = start.astype(np.float64)
    for _ in range(200):
        f, g, H = fun(phi, hess=True)
        if max(0.0, phi @ g - g.min()) <= 1e-3 * _GAP_RTOL * f:
            break
        S = (phi > 0) | (g < phi @ g)
        s = int(S.sum())
        KKT = np.zeros((s + 1, s + 1))
        KKT[:s, :s] = H[np.ix_(S, S)] + 1e-12 * max(np.abs(np.diag(H)).max(), _TINY) * np.eye(s)
        KKT[:s, s] = KKT[s, :s] = 1.0
        d = np.zeros(u)
        d[S] = np.linalg.solve(KKT, np.append(-g[S], 0.0))[:s]
        if np.any((phi == 0) & (d < 0)):              # Newton leaves the simplex: pairwise step
            j = int(np.argmin(g))
            k = int(np.flatnonzero(phi > 0)[np.argmax(g[phi > 0])])
            d = np.zeros(u)
            d[j], d[k] = 1.0, -1.0
            curv = H[j, j] + H[k, k] - 2 * H[j, k]
            t_max, block = phi[k], k
            t = min(t_max, -(g @ d) / curv) if curv > 0 else t_max
        else:
            shrink = np.flatnonzero(d < 0)
            ratio = phi[shrink] / -d[shrink]
            t_max = ratio.min() if len(shrink) else np.inf
            block = shrink[np.argmin(ratio)] if len(shrink) else -1
            t = min(1.0, t_max)
        while t > 1e-14 and fun(np.clip(phi + t * d, 0.0, None))[0] > f + 1e-4 * t * (g @ d) + 8 * _EPS * f:
            t /= 2
        if t <= 1e-14:
            break
        new = np.clip(phi + t * d, 0.0, None)
        if t == t_max:
            new[block] = 0.0                          # the blocking coordinate leaves the face
        phi = new / new.sum()
    f, g = fun(phi)
    return phi, np.log(f) + np.log(scale), max(0.0, phi @ g - g.min()) / f


@_serial_blas
def stage2_floor(O, ds, *, return_details=False):
    """Stage-2 loss floor ``L_floor(O) = (1/N) sum_i min_{phi in simplex} loss(sum_l phi_l O[:, x_l]; y_i)``.

    O : float64 (M, M), the fixed W_ov in token coordinates.
    Returns ``(floor, log10_floor, vertex_optimal bool (N,))``; with ``return_details`` also a
    dict with ``log_loss`` (N,) per-sentence log-floors and ``gap`` (N,) relative Frank-Wolfe gaps.

    The minimum is over the sentence's distinct tokens (a repeated token only adds
    weight on the same column). The vertex ``phi = e_{x*}`` is optimal iff for every distinct
    token u: ``O[:, u]^T w >= O[:, x*]^T w`` with ``w = (p - e_y)/(1 - p_y)``, ``p = softmax(O[:, x*])``
    (the gradient ``(1 - p_y) O^T w`` of the loss in phi); it is accepted up to a rounding allowance
    ``1e-12 ||w||_1 max|O|``, which bounds its relative loss error by the same amount. Other sentences
    are solved by SLSQP and accepted once their Frank-Wolfe gap is below 1e-10 of their loss.
    """
    O = np.asarray(O, dtype=np.float64)
    N = ds.n_sentences
    xs, ys = ds.optimal, ds.next_tokens
    Zs = O[:, xs].T                                   # (N, M) logits at the vertex
    w = _direction(Zs, ys)                            # (N, M)
    A = w @ O                                         # (N, M): A[i, u] = O[:, u]^T w_i
    safe = np.where(ds.valid_mask, ds.tokens, 0)
    D = np.take_along_axis(A, safe, axis=1) - A[np.arange(N), xs][:, None]   # (N, Lmax)
    allow = _VERTEX_RTOL * np.abs(w).sum(axis=1) * max(np.abs(O).max(), np.finfo(float).tiny)
    vertex = np.all((D >= -allow[:, None]) | ~ds.valid_mask, axis=1)
    logl = log_loss(Zs, ys)
    gap = np.zeros(N)
    for i in np.flatnonzero(~vertex):
        toks = np.unique(ds.tokens[i, : ds.lengths[i]])
        start = (toks == xs[i]).astype(np.float64)
        _, logl[i], gap[i] = _solve_simplex(O[:, toks], int(ys[i]), start)
        if not gap[i] <= _GAP_RTOL:
            raise ArithmeticError(f"stage-2 floor: sentence {i} {toks.tolist()}: the simplex solve "
                                  f"stopped with Frank-Wolfe gap {gap[i]:.2e} of its loss > {_GAP_RTOL}")
    log_mean = logsumexp(logl) - np.log(N)
    out = (float(np.exp(log_mean)), float(log_mean / np.log(10.0)), vertex)
    if return_details:
        return out + ({"log_loss": logl, "gap": gap},)
    return out
