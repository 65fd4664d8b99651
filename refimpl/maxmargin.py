"""Max-margin solutions W_ov*, W_kq*, their KKT certificates, grading, and the stage-2 floor.

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
``Certificate.check`` (1e-10 relative, docs/maxmargin.md section 3) passed.
:func:`grade_w_kq` and :func:`grade_w_ov` grade any candidate matrix against the exact
solution (:class:`refimpl.grading.Grade`, docs/maxmargin.md section 5).
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from .budget import check_bytes
from .checks import check_square, check_tokens, check_weights
from .data import require_dataset, ensure_valid, induced_relations
from .errors import ConfigError, ShapeError
from .floor import log_loss, stage2_floor  # noqa: F401 (public here as well)
from .grading import (GRADE_TOL, Grade, _difference_matrix, check_candidate,  # noqa: F401
                      fit_multipliers, grade)
from .ldp import (KKT_TOL, CertificateError, InfeasibleError, _fit_alpha,  # noqa: F401
                  _CONDITIONS, kkt_residuals, least_distance, pair_kkt_residuals,
                  serial_blas as _serial_blas)

__all__ = [
    "CertificateError", "InfeasibleError", "ColumnCertificate", "Certificate",
    "least_distance", "kkt_residuals", "certify", "certify_ov",
    "w_ov_star", "w_kq_star", "Grade", "grade_w_kq", "grade_w_ov",
    "log_loss", "stage2_floor",
]

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
    tol     : the relative tolerance :attr:`ok` uses (1e-10, docs/maxmargin.md section 3)
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


def certify(W, rows_by_column, alpha_by_column=None, *, problem="W", tol=KKT_TOL):
    """KKT certificate of a candidate max-margin matrix ``W`` (M, M), column by column.

    rows_by_column : dict column -> int64 (m, 2) constraint pairs (a, b): W[a, c] - W[b, c] >= 1
    alpha_by_column : dict column -> (m,) multipliers, or None to fit the best ones with
        :func:`refimpl.grading.fit_multipliers` (NNLS on the constraints whose margin is
        within ``tol`` relative of the smallest margin, the fit :func:`grade_w_kq` uses):
        then the certificate fails iff W is not the optimum to ``tol``.
    Columns not in ``rows_by_column`` must be zero (checked as stationarity with no rows).
    Returns a :class:`Certificate`; call ``.check()`` to raise on failure. The residuals
    are per column (:func:`refimpl.ldp.pair_kkt_residuals`: the residuals of
    :func:`kkt_residuals` in O(m_c + M) per column, G never formed); :func:`refimpl.grading.grade` gives the
    whole-matrix residuals and the distance to the exact solution.

    Raises
    ------
    ShapeError, NonFiniteError
        ``W`` is not a finite square matrix; a column's rows are not (m, 2); a column's
        multipliers are not finite or not of length m (naming the argument and the column).
    ConfigError
        ``rows_by_column`` has a key that is not a column 0..M-1, or ``alpha_by_column``
        lacks a column that has rows.
    SentenceInputError
        A row holds a non-integer or a row index outside 0..M-1.
    """
    W = check_square(W, "W")
    M = W.shape[1]
    checked = {}
    for c, rows in rows_by_column.items():
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)) or not 0 <= c < M:
            raise ConfigError(f"rows_by_column: key {c!r} is not a column 0..{M - 1} of W (shape {W.shape})")
        a = np.asarray(rows)
        if a.size and (a.ndim != 2 or a.shape[1] != 2):
            raise ShapeError(f"rows_by_column[{c}] must have shape (m, 2), got shape {a.shape}")
        flat = check_tokens(a.reshape(-1) if a.size else np.zeros(0, dtype=np.int64), M,
                            f"rows_by_column[{c}] (flattened)")
        checked[int(c)] = flat.reshape(-1, 2)
    rows_by_column = checked
    if alpha_by_column is None:
        alpha_by_column = fit_multipliers(W, rows_by_column, tol)[0]
    cols = []
    for c in range(W.shape[1]):
        rows = rows_by_column.get(c, np.zeros((0, 2), dtype=np.int64))
        if len(rows) == 0:
            if np.any(W[:, c] != 0):
                cols.append(ColumnCertificate(c, rows, np.zeros(0), 0.0, 0.0, 1.0, 0.0))
            continue
        if c not in alpha_by_column:
            raise ConfigError(f"alpha_by_column has no multipliers for column {c}, which has "
                              f"{len(rows)} rows in rows_by_column")
        alpha = check_weights(alpha_by_column[c], (len(rows),), f"alpha_by_column[{c}]")
        cols.append(ColumnCertificate(c, rows, alpha, **pair_kkt_residuals(rows, W[:, c], alpha)))
    return Certificate(problem, tuple(cols), tol)


def _kq_rows(ds):
    """dict query -> int64 (m, 2) pairs (x*, x') = (upper, lower) of its training relations."""
    return {q: rel[:, ::-1].copy() for q, rel in induced_relations(ds).items()}


def grade_w_kq(ds, W, *, tol=GRADE_TOL):
    """Grade a candidate ``W`` (float (M, M), token coordinates) against the exact W_kq*.

    Parameters
    ----------
    ds : RealizableDataset
    W : array_like (M, M)
        Row = key token, column = query token, as returned by :func:`w_kq_star`.
    tol : float
        Relative tolerance of the tight set and of ``Grade.ok()`` (default 1e-6).

    Returns
    -------
    Grade
        With ``m_j = W[x*, q] - W[x', q]`` over the training relations ``x' <_q x*``
        (:func:`refimpl.data.induced_relations`):
        ``max_violation = max(0, max_j 1 - m_j)``, ``rel_distance = ||W - K*|| / ||K*||``,
        ``cosine = <W, K*> / (||W|| ||K*||)``, ``norm_ratio = ||W|| / ||K*||``,
        ``stationarity = ||W - sum_j lam_j A_j|| / ||W||`` with ``lam >= 0`` fitted by NNLS
        on the constraints with ``m_j - min m <= tol |min m|``, ``dual`` and
        ``slackness = sum_j lam_j |m_j - 1| / sum_j lam_j`` (see :class:`Grade`).
        Columns of tokens that are never queries, and rows of tokens in no relation of
        the column, are zero in K*: entries of W there count in full in
        ``rel_distance``, ``cosine``, ``norm_ratio`` and ``stationarity``.

    Raises
    ------
    TypeError
        ``ds`` is not a RealizableDataset (e.g. the arguments swapped), naming what was given.
    ShapeError, NonFiniteError
        ``W`` is not (M, M), or has NaN or +-inf entries.

    Computes :func:`w_kq_star` (certified) for the comparison.

    Examples
    --------
    >>> import refimpl as ri
    >>> ds = ri.generate(vocab_size=6, n_sentences=20, seed=4)
    >>> K_star, _ = ri.w_kq_star(ds)
    >>> g = ri.grade_w_kq(ds, 2 * K_star)          # the right direction, twice the norm
    >>> round(g.cosine, 12), round(g.norm_ratio, 12), g.max_violation
    (1.0, 2.0, 0.0)
    """
    require_dataset(ds, "grade_w_kq")
    W = check_candidate(W, ds.vocab_size, "W_kq")
    K_star, _ = w_kq_star(ds)
    return grade(W, K_star, _kq_rows(ds), tol=tol, problem="W_kq*")


def grade_w_ov(ds, W, *, tol=GRADE_TOL):
    """Grade a candidate ``W`` (float (M, M), token coordinates) against the exact W_ov*.

    Parameters
    ----------
    ds : RealizableDataset
    W : array_like (M, M)
        Row = output token, column = source token, as returned by :func:`w_ov_star`.
    tol : float
        Relative tolerance of the tight set and of ``Grade.ok()`` (default 1e-6).

    Returns
    -------
    Grade
        With ``m_j = W[n(x), x] - W[v, x]`` for x in C and every ``v != n(x)``:
        ``max_violation = max(0, max_j 1 - m_j)``, ``rel_distance = ||W - O*|| / ||O*||``,
        ``cosine``, ``norm_ratio``, ``stationarity``, ``dual``, ``slackness`` as in
        :func:`grade_w_kq` (formulas in :class:`Grade`). Columns of tokens outside C
        are zero in O*: entries of W there count in full in ``rel_distance``, ``cosine``,
        ``norm_ratio`` and ``stationarity``.

    Raises
    ------
    TypeError
        ``ds`` is not a RealizableDataset (e.g. the arguments swapped), naming what was given.
    ShapeError, NonFiniteError
        ``W`` is not (M, M), or has NaN or +-inf entries.

    Uses the closed form of :func:`w_ov_star` (claim C1).

    Examples
    --------
    >>> import refimpl as ri
    >>> ds = ri.generate(vocab_size=6, n_sentences=20, seed=4)
    >>> O_star, _ = ri.w_ov_star(ds)
    >>> g = ri.grade_w_ov(ds, O_star)
    >>> g.ok(), g.rel_distance
    (True, 0.0)
    """
    require_dataset(ds, "grade_w_ov")
    M = ds.vocab_size
    W = check_candidate(W, M, "W_ov")
    O_star, _ = w_ov_star(ds)
    rows = {x: _ov_rows(y, M) for x, y in zip(ds.colloc_tokens.tolist(), ds.colloc_next.tolist())}
    return grade(W, O_star, rows, tol=tol, problem="W_ov*")


# ================================================================= W_ov*
def _ov_rows(y, M):
    """int64 (M-1, 2): the C1 constraints (e_y - e_v)^T o >= 1, v != y, as pairs (y, v)."""
    v = np.delete(np.arange(M), y)
    return np.stack([np.full(M - 1, y), v], axis=1)


@_serial_blas
def w_ov_star(ds, method="closed_form"):
    """Max-margin W_ov* in token coordinates: ``(O_star float64 (M, M), Certificate)``.

    ``method="closed_form"`` (claim C1): ``O*[:, x] = e_{n(x)} - (1/M) 1`` for x in C, zero
    columns elsewhere, certified with multipliers ``alpha_v = 1/M`` for every v != n(x) by
    :func:`certify_ov` (the KKT residuals from their closed forms, O(n_c M): about 0.5 s
    at M = n_c = 5000, against ~8 s at M = 2000 for the former dense check). ``method="solve"``: each distinct column by :func:`least_distance` and
    the general :func:`certify` (cross-check of C1; O(M^3) per distinct n(x), for small M).
    The certificate is checked before returning.

    Parameters
    ----------
    ds : RealizableDataset
        Validated on first use (its collocation).
    method : {"closed_form", "solve"}, default "closed_form"

    Returns
    -------
    O_star : float64 (M, M)
        Row = output token, column = source token (docs/maxmargin.md, section 1).
    certificate : Certificate
        KKT certificate, already checked (``certificate.ok`` is True).

    Raises
    ------
    CertificateError
        The KKT conditions fail beyond 1e-10 relative (never seen; a bug).
    ResourceError
        The (M, M) matrices would not fit the memory budget.
    ValueError
        An unknown ``method``.

    Examples
    --------
    >>> import refimpl as ri
    >>> ds = ri.RealizableDataset(3, {0: 1, 1: 2, 2: 0}, [[0, 1], [2]], [2, 0])
    >>> O_star, cert = ri.w_ov_star(ds)
    >>> O_star[:, 0].round(4).tolist(), cert.ok       # e_{n(0)} - 1/3
    ([-0.3333, 0.6667, -0.3333], True)
    """
    ensure_valid(ds)
    M = ds.vocab_size
    check_bytes(8 * 4 * M * M, f"W_ov* and its certificate at M={M}")
    if method not in ("closed_form", "solve"):
        raise ValueError(f"method must be 'closed_form' or 'solve', got {method!r}")
    xs = np.asarray(ds.colloc_tokens, dtype=np.int64)
    ys = np.asarray(ds.colloc_next, dtype=np.int64)
    O = np.zeros((M, M))
    if method == "closed_form":
        O[:, xs] = -1.0 / M
        O[ys, xs] += 1.0
        cert = certify_ov(O, xs, ys)
    else:
        rows, alphas = {}, {}
        solved = {}   # columns with the same n(x) have the same solution
        for x, y in zip(xs.tolist(), ys.tolist()):
            rows[x] = _ov_rows(y, M)
            if y not in solved:
                solved[y] = least_distance(_difference_matrix(rows[x], M))
            O[:, x], alphas[x] = solved[y]
        cert = certify(O, rows, alphas, problem="W_ov*")
    cert.check()
    return O, cert


class _OvColumn(ColumnCertificate):
    """:class:`ColumnCertificate` of a W_ov* column with multipliers all equal to ``a``.

    Its ``rows`` (the M-1 pairs (y, v), v != y) and ``alpha`` (M-1 copies of ``a``) are made
    on access: n_c stored columns would hold 3 n_c (M-1) numbers (600 MB at M = n_c = 5000).
    """

    def __init__(self, column, y, M, a, primal, dual, stationarity, slackness):
        self.column, self._y, self._M, self._a = int(column), int(y), int(M), float(a)
        self.primal, self.dual = float(primal), float(dual)
        self.stationarity, self.slackness = float(stationarity), float(slackness)

    @property
    def rows(self):
        """int64 (M-1, 2): the pairs (n(x), v), v != n(x)."""
        return _ov_rows(self._y, self._M)

    @property
    def alpha(self):
        """float64 (M-1,): the multipliers, all ``a``."""
        return np.full(self._M - 1, self._a)


_OV_BLOCK = 1 << 21    # entries of O per block of columns in certify_ov (16 MB of float64)


def certify_ov(O, xs, ys, alpha=None, *, tol=KKT_TOL):
    """KKT certificate of a candidate W_ov* with equal multipliers per column, in O(n_c M).

    The constraints of column ``x = xs[i]`` are ``O[y, x] - O[v, x] >= 1`` for every
    ``v != y = ys[i]`` (all M-1 of them), and its multipliers are ``alpha_v = alpha[i]`` for
    every v (default ``1/M``, the closed form of claim C1). The four residuals of
    :func:`kkt_residuals` then have closed forms, evaluated here for blocks of columns at once
    (no M x M x M array, no per-column solve), with ``o = O[:, x]`` and ``a = alpha[i]``:

    - primal: ``max(0, max_{v != y} 1 - (o_y - o_v))``;
    - dual: ``max(0, -a) / |a|``;
    - stationarity: ``G^T alpha = a ((M-1) e_y - (1 - e_y))``, so
      ``||o - G^T alpha|| / max(||o||, |a| sqrt(M (M-1)))``;
    - slackness: ``|a| max_{v != y} |o_y - o_v - 1| / ((M-1) |a|)``.

    Columns not in ``xs`` must be zero (stationarity 1 otherwise, as in :func:`certify`).
    The residuals agree with the dense check (``certify`` with the same rows and multipliers)
    to rounding: ``G^T alpha`` is formed from its formula instead of a sum of M-1 terms.

    Parameters
    ----------
    O : float64 (M, M)
    xs, ys : int (n_c,)
        The collocation tokens x and their successors n(x) (distinct xs).
    alpha : float (n_c,) or None
        The multiplier of each column; None: ``1/M`` for all.
    tol : float
        The certificate's tolerance (default 1e-10).

    Returns
    -------
    Certificate
        Problem ``"W_ov*"``, columns in increasing order; not yet checked.

    Raises
    ------
    ShapeError, NonFiniteError
        ``O`` is not a finite square matrix, ``xs`` / ``ys`` are not 1-D of one length, or
        ``alpha`` is not finite of length n_c (naming the argument).
    SentenceInputError
        ``xs`` or ``ys`` holds a non-integer or a token outside 0..M-1.
    """
    O = check_square(O, "O")
    M = O.shape[0]
    xs = check_tokens(xs, M, "xs")
    ys = check_tokens(ys, M, "ys", len(xs))
    if alpha is not None:
        alpha = check_weights(alpha, (len(xs),), "alpha")
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    a_all = np.full(len(xs), 1.0 / M) if alpha is None else alpha[order]
    tiny = np.finfo(np.float64).tiny
    res = np.zeros((4, len(xs)))           # primal, dual, stationarity, slackness
    block = max(1, _OV_BLOCK // max(M, 1))
    for s in range(0, len(xs), block):
        x, y, a = xs[s:s + block], ys[s:s + block], a_all[s:s + block]
        j = np.arange(len(x))
        o = O[:, x]                                   # (M, b)
        slack = (o[y, j][None, :] - o) - 1.0          # (o_y - o_v) - 1, row y is not a constraint
        slack[y, j] = np.inf
        primal = np.maximum(0.0, -slack.min(axis=0)) + 0.0       # + 0.0: no -0.0
        slack[y, j] = 0.0
        abs_a = np.abs(a)
        dual = np.maximum(0.0, -a) / np.maximum(abs_a, tiny)
        d = o + a[None, :]                            # o - G^T alpha off y
        d[y, j] = o[y, j] - (M - 1) * a               # and at y
        n_ga = abs_a * np.sqrt(float(M) * (M - 1))
        stat = np.linalg.norm(d, axis=0) / np.maximum(np.maximum(np.linalg.norm(o, axis=0), n_ga), tiny)
        slk = abs_a * np.abs(slack).max(axis=0) / np.maximum((M - 1) * abs_a, tiny)
        res[:, s:s + block] = primal, dual, stat, slk
    cols = {int(x): _OvColumn(x, y, M, a, *r) for x, y, a, r in zip(xs, ys, a_all, res.T)}
    others = np.ones(M, dtype=bool)
    others[xs] = False
    idx = np.flatnonzero(others)
    nonzero = idx[np.any(O[:, idx] != 0, axis=0)] if len(idx) else idx
    for c in nonzero.tolist():                        # unconstrained columns must be zero
        cols[c] = ColumnCertificate(c, np.zeros((0, 2), dtype=np.int64), np.zeros(0), 0.0, 0.0, 1.0, 0.0)
    return Certificate("W_ov*", tuple(cols[c] for c in sorted(cols)), tol)


# ================================================================= W_kq*
@_serial_blas
def w_kq_star(ds, *, workers=None):
    """Max-margin W_kq* in token coordinates: ``(K_star float64 (M, M), Certificate)``.

    Column q solves ``min ||k|| s.t. k[x*] - k[x'] >= 1`` over the deduplicated training
    relations ``x' <_q x*`` of query q (:func:`refimpl.data.induced_relations`), in the
    coordinates of the tokens those relations involve (the others are 0 at the optimum),
    then is embedded back; each column's groups of leaf tokens (tokens in a single relation,
    below the same upper token) are merged into one variable for the solve
    (:func:`_merge_leaves`: the same optimum, half the NNLS time at M = 5000). Columns of
    queries that never occur are zero. Certificate
    rows are pairs (x*, x'); it is checked on the embedded matrix before returning.

    Parameters
    ----------
    ds : RealizableDataset
        Validated on first use (its training relations).
    workers : int >= 1 or None, default None
        Processes solving the columns. None: ``$REFIMPL_WORKERS`` if set, otherwise the
        usable CPUs when the solves are large (sum over queries of relations x tokens at
        least 2e6), else 1. The result has the same bits for every value: each column is
        solved by the same code with one BLAS thread.

    Returns
    -------
    K_star : float64 (M, M)
        Row = key token, column = query token (docs/maxmargin.md, section 1).
    certificate : Certificate
        KKT certificate, already checked (``certificate.ok`` is True).

    Raises
    ------
    CertificateError, InfeasibleError
        A column's solve fails (naming the column; never seen on a valid dataset).
    ResourceError
        The (M, M) matrices would not fit the memory budget.

    Examples
    --------
    >>> import refimpl as ri
    >>> ds = ri.RealizableDataset(3, {0: 1, 1: 2, 2: 0}, [[0, 1], [2]], [2, 0])
    >>> K_star, cert = ri.w_kq_star(ds)
    >>> K_star[:, 1].round(12).tolist(), cert.ok      # query 1: 0 <_1 1, margin 1
    ([-0.5, 0.5, 0.0], True)
    """
    ensure_valid(ds)
    M = ds.vocab_size
    check_bytes(8 * 4 * M * M, f"W_kq* and its certificate at M={M}")
    K = np.zeros((M, M))
    rows, alphas = {}, {}
    items = list(_kq_rows(ds).items())           # (x*, x') = (upper, lower), queries increasing
    n_workers = _kq_workers(items, workers)
    if n_workers > 1:
        with ProcessPoolExecutor(n_workers, initializer=_worker_init) as pool:
            chunk = max(1, len(items) // (8 * n_workers))
            solved = list(pool.map(_solve_kq_column_safe, [p for _, p in items], chunksize=chunk))
    else:
        solved = [_solve_kq_column_safe(p) for _, p in items]
    for (q, pairs), out in zip(items, solved):
        if out is None:                          # failed: solve again here for the exception
            try:
                _solve_kq_column(pairs)
            except (CertificateError, InfeasibleError) as err:
                err.column = q
                err.args = (f"W_kq* column {q}: {err}",)
                raise
            raise ArithmeticError(f"W_kq* column {q}: the solve failed in a worker process only")
        toks, k, alpha = out
        K[toks, q] = k
        rows[q], alphas[q] = pairs, alpha
    cert = certify(K, rows, alphas, problem="W_kq*")
    cert.check()
    return K, cert


# Parallel W_kq*: the columns are independent least-distance programs. Each is solved by the
# same function with one BLAS thread wherever it runs, so K* and the certificate have the same
# bits for any number of workers. Workers pay only when the whole solve takes seconds: a pool
# costs ~0.1 s to start (fork) plus pickling the pairs and the solutions.
WORKERS_ENV = "REFIMPL_WORKERS"
_PARALLEL_MIN_WORK = 2_000_000   # sum over columns of m_c * n_c (rows x tokens) before workers pay


def _solve_kq_column(pairs):
    """(toks int64 (n,), k (n,), alpha (m,)): one W_kq* column on the n tokens its pairs use.

    Solved on the program with its leaf groups merged (:func:`_merge_leaves`), then expanded:
    the same optimum and valid multipliers of the full program (certified by the caller).
    """
    toks, local = np.unique(pairs, return_inverse=True)
    G, expand = _merge_leaves(local.reshape(-1, 2), len(toks))
    k, alpha = expand(*least_distance(G))
    return toks, k, alpha


def _merge_leaves(local, n):
    """The least-distance program of one W_kq* column with each group of leaves merged into one
    variable: ``(G_r float64 (m_r, n_r), expand)``.

    local : int64 (m, 2), the pairs (a, b) (constraint ``k_a - k_b >= 1``) on tokens 0..n-1.

    A leaf is a token that occurs in exactly one pair, as its lower token b; the leaves below the
    same upper token c form a group of size g. The optimum is unique and invariant under
    permutations of a group (they map the feasible set onto itself and keep ``||k||``), so
    its g leaves share one value t; with ``s = sqrt(g) t`` their g constraints become the single
    row ``k_c - s / sqrt(g) >= 1`` and their part of the objective ``g t^2 = s^2``. The merged
    program keeps the other tokens and pairs as they are (in their order), followed by one
    variable and one row per group. In a training column the sentences' tokens that occur in
    no other sentence of the query are such leaves (about 40% of the rows at M = 5000,
    N = 2e5), and the NNLS solve of the merged program takes half the time.

    ``expand(k_r, beta)`` maps a solution of the merged program back: ``k_l = s / sqrt(g)`` for
    every leaf l of the group, and its multiplier ``alpha_l = beta / g`` (stationarity at a
    leaf, ``k_l = -alpha_l``, and at c, ``sum_l alpha_l = beta``), other entries unchanged.
    """
    m = len(local)
    count = np.bincount(local.ravel(), minlength=n)
    leaf_row = count[local[:, 1]] == 1                        # (m,) the pair of a leaf
    keep_row = np.flatnonzero(~leaf_row)
    leaf_rows = np.flatnonzero(leaf_row)
    uppers, group_of, size = np.unique(local[leaf_rows, 0], return_inverse=True, return_counts=True)
    group_of = group_of.reshape(-1)
    is_leaf = np.zeros(n, dtype=bool)
    is_leaf[local[leaf_rows, 1]] = True
    kept = np.flatnonzero(~is_leaf)
    var = np.full(n, -1, dtype=np.int64)
    var[kept] = np.arange(len(kept))
    n_keep, n_g, m_keep = len(kept), len(uppers), len(keep_row)
    root = np.sqrt(size.astype(np.float64))
    G = np.zeros((m_keep + n_g, n_keep + n_g))
    G[np.arange(m_keep), var[local[keep_row, 0]]] = 1.0
    G[np.arange(m_keep), var[local[keep_row, 1]]] = -1.0
    G[m_keep + np.arange(n_g), var[uppers]] = 1.0
    G[m_keep + np.arange(n_g), n_keep + np.arange(n_g)] = -1.0 / root

    def expand(k_r, beta):
        k = np.empty(n)
        k[kept] = k_r[:n_keep]
        k[local[leaf_rows, 1]] = (k_r[n_keep:] / root)[group_of]
        alpha = np.empty(m)
        alpha[keep_row] = beta[:m_keep]
        alpha[leaf_rows] = (beta[m_keep:] / size)[group_of]
        return k, alpha
    return G, expand


def _solve_kq_column_safe(pairs):
    """:func:`_solve_kq_column`, or None when it raises (the caller re-raises it with the column)."""
    try:
        return _solve_kq_column(pairs)
    except (CertificateError, InfeasibleError, ArithmeticError):
        return None


_WORKER_LIMITS = None


def _worker_init():
    """Worker process: one BLAS thread (the solves are small; see :func:`refimpl.ldp.serial_blas`)."""
    global _WORKER_LIMITS
    _WORKER_LIMITS = threadpool_limits(limits=1, user_api="blas")


def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                       # not on Linux
        return os.cpu_count() or 1


def _kq_workers(items, workers):
    """Number of processes for the W_kq* columns: ``workers`` if given, else
    ``$REFIMPL_WORKERS`` if set, else the usable CPUs when the work is large enough."""
    if workers is None:
        env = os.environ.get(WORKERS_ENV, "").strip()
        if env:
            try:
                workers = int(env)
            except ValueError:
                raise ValueError(f"{WORKERS_ENV} must be an integer, got {env!r}") from None
    if workers is not None:
        if isinstance(workers, bool) or int(workers) != workers or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        return min(int(workers), max(1, len(items)))
    import multiprocessing
    if multiprocessing.current_process().daemon:     # a daemonic worker may not start processes
        return 1
    work = sum(len(p) * len(np.unique(p)) for _, p in items) if len(items) > 1 else 0
    return min(_cpus(), len(items)) if work >= _PARALLEL_MIN_WORK else 1
