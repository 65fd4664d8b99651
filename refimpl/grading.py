"""Grading a candidate max-margin matrix against the exact one (docs/maxmargin.md, section 5).

Both max-margin problems have the form

    min ||W||_F   s.t.   <A_j, W> = W[a_j, c_j] - W[b_j, c_j] >= 1,     j = 1..m,

with ``A_j = e_{a_j} e_{c_j}^T - e_{b_j} e_{c_j}^T`` (M, M); the constraints are given
per column ``c`` as int64 (m_c, 2) pairs ``(a, b)``. This module measures how far any
matrix is from optimal: :func:`grade` returns a :class:`Grade` with distances to the
exact solution and whole-matrix KKT residuals whose multipliers are fitted on the
constraints tight within a tolerance (:func:`fit_multipliers`). The public entry points
are :func:`refimpl.maxmargin.grade_w_kq` and :func:`refimpl.maxmargin.grade_w_ov`;
:func:`refimpl.maxmargin.certify` fits its multipliers here too.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import NonFiniteError, ShapeError
from .kernels_metrics import fro_norm
from .ldp import _nnls

__all__ = ["Grade", "GRADE_TOL", "grade", "fit_multipliers", "check_candidate"]

GRADE_TOL = 1e-6     # default: an external first-order or interior-point solver at tight settings
_TINY = np.finfo(np.float64).tiny
_RESIDUALS = ("primal", "dual", "stationarity", "slackness")


def _difference_matrix(rows, n):
    """float64 (m, n) with row j = e_{rows[j,0]} - e_{rows[j,1]}."""
    G = np.zeros((len(rows), n))
    G[np.arange(len(rows)), rows[:, 0]] = 1.0
    G[np.arange(len(rows)), rows[:, 1]] -= 1.0
    return G


def _rows(rows_by_column, c):
    """int64 (m_c, 2): the constraint pairs of column c (none: shape (0, 2))."""
    return np.asarray(rows_by_column.get(c, np.zeros((0, 2))), dtype=np.int64).reshape(-1, 2)


def check_candidate(W, M, name="W"):
    """``W`` as a float64 (M, M) array; :class:`~refimpl.errors.ShapeError` for another shape,
    :class:`~refimpl.errors.NonFiniteError` for NaN or +-inf entries."""
    try:
        W = np.asarray(W, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ShapeError(f"{name} must be a real (M, M) = ({M}, {M}) array: {err}") from None
    if W.shape != (M, M):
        raise ShapeError(f"{name} must have shape (M, M) = ({M}, {M}) in token coordinates "
                         f"(row = key token, column = query/source token), got {W.shape}")
    if not np.all(np.isfinite(W)):
        bad = np.argwhere(~np.isfinite(W))
        raise NonFiniteError(f"{name} has {len(bad)} non-finite entries, first at "
                             f"{tuple(int(i) for i in bad[0])}: {W[tuple(bad[0])]}")
    return W


def _margins(W, rows_by_column):
    """dict column -> (m_c,) margins W[a, c] - W[b, c] of its constraints."""
    out = {}
    for c in rows_by_column:
        rows = _rows(rows_by_column, c)
        out[c] = W[rows[:, 0], c] - W[rows[:, 1], c]
    return out


def fit_multipliers(W, rows_by_column, tol):
    """Best multipliers of ``W``: ``(lam dict column -> (m_c,) >= 0, tight dict column -> bool (m_c,),
    gamma)``.

    ``gamma = min_j <A_j, W>`` is the smallest margin over all constraints (0.0 without
    constraints); a constraint is *tight* when ``<A_j, W> - gamma <= tol |gamma|``. Then

        lam = argmin_{lam >= 0, lam_j = 0 off the tight set} ||W - sum_j lam_j A_j||_F,

    a non-negative least-squares problem that decouples by column (``A_j`` of different
    columns are orthogonal). Tightness is relative to the smallest margin, not to the
    margin 1, so it does not depend on the scale of ``W``: ``s W*`` has the tight set of
    ``W*`` and multipliers ``s alpha*`` for every ``s > 0``, and the KKT residuals of
    :func:`grade` then separate the direction (stationarity) from the scale (primal
    feasibility, complementary slackness). At the exact optimum the tight rows have
    margin 1 to rounding, so any ``tol`` above ~1e-13 finds them; a candidate off by
    ``delta`` (relative) needs ``tol`` above ~2 delta, or true active rows are missed and
    stationarity fails for the wrong reason.
    """
    margins = _margins(W, rows_by_column)
    nonempty = [m for m in margins.values() if len(m)]
    gamma = float(min(m.min() for m in nonempty)) if nonempty else 0.0
    M = W.shape[0]
    lam, tight = {}, {}
    for c, m in margins.items():
        T = m - gamma <= tol * abs(gamma)
        lam[c] = np.zeros(len(m))
        tight[c] = T
        if T.any():
            G = _difference_matrix(_rows(rows_by_column, c)[T], M)
            b = W[:, c]
            nb = _fro(b)
            if nb > 0:   # NNLS is homogeneous in b; _nnls's tolerances assume ||b|| ~ 1
                lam[c][T] = nb * _nnls(G.T, b / nb)
    return lam, tight, gamma


@dataclass(frozen=True)
class Grade:
    """How far a candidate ``W`` (M, M) is from the exact max-margin solution ``W*``.

    All norms are Frobenius norms over the whole M x M matrix; ``m_j = <A_j, W>`` is the
    margin of constraint j, ``gamma = min_j m_j``, and ``lam`` are the multipliers of
    :func:`fit_multipliers` (NNLS on the constraints tight within ``tol`` relative to
    ``gamma``).

    Attributes
    ----------
    problem : str
        ``"W_kq*"`` or ``"W_ov*"``.
    tol : float
        The relative tolerance that chose the tight set, and the default of :meth:`ok`.
    max_violation : float
        ``max(0, max_j (1 - m_j))``: largest constraint violation relative to the margin 1.
    rel_distance : float
        ``||W - W*|| / ||W*||`` (0 if ``W = W* = 0``, inf if only ``W* = 0``).
    cosine : float
        ``<W, W*> / (||W|| ||W*||)``, NaN when either is zero.
    norm_ratio : float
        ``||W|| / ||W*||`` (1 if both are zero, inf if only ``W* = 0``).
    dual : float
        ``max(0, -min_j lam_j) / max_j |lam_j|``; 0 by construction (NNLS), kept so the
        four KKT conditions read as in :class:`refimpl.maxmargin.Certificate`.
    stationarity : float
        ``||W - sum_j lam_j A_j|| / ||W||`` (0 if ``W = 0``). It is ``<= 1`` (the NNLS
        residual is orthogonal to its fit) and scale free.
    slackness : float
        ``sum_j lam_j |m_j - 1| / sum_j lam_j`` (0 if all ``lam_j = 0``): the
        multiplier-weighted mean distance of the active margins from 1; ``|s - 1|`` at
        ``s W*``.
    min_margin : float
        ``gamma``.
    n_constraints, n_tight : int
        Number of constraints, and of those in the tight set.

    ``primal`` is ``max_violation`` under its KKT name. Entries outside the support of
    ``W*`` (columns without constraints; for W_kq* also rows of tokens that appear in no
    relation of the column) are 0 in ``W*`` and in every ``A_j``: they count in full in
    ``rel_distance``, ``cosine``, ``norm_ratio`` and ``stationarity``.

    Made by :func:`refimpl.grade_w_kq` and :func:`refimpl.grade_w_ov`, not by hand.

    Examples
    --------
    >>> import refimpl as ri
    >>> ds = ri.generate(vocab_size=6, n_sentences=20, seed=4)
    >>> g = ri.grade_w_kq(ds, ri.w_kq_star(ds)[0])
    >>> g.problem, g.ok(), g.failing()
    ('W_kq*', True, [])
    """

    problem: str
    tol: float
    max_violation: float
    rel_distance: float
    cosine: float
    norm_ratio: float
    dual: float
    stationarity: float
    slackness: float
    min_margin: float
    n_constraints: int
    n_tight: int

    @property
    def primal(self):
        """Primal feasibility residual, equal to :attr:`max_violation`."""
        return self.max_violation

    def residuals(self):
        """dict KKT condition -> relative residual (primal, dual, stationarity, slackness)."""
        return {c: getattr(self, c) for c in _RESIDUALS}

    def failing(self, tol=None):
        """Names of the KKT conditions whose residual exceeds ``tol`` (default :attr:`tol`)."""
        tol = self.tol if tol is None else tol
        return [c for c, v in self.residuals().items() if not v <= tol]

    def ok(self, tol=None):
        """True iff all four KKT residuals are within ``tol`` (default :attr:`tol`).

        The tight set was chosen with :attr:`tol`; a smaller ``tol`` here only makes the
        verdict stricter."""
        return not self.failing(tol)


def _fro(a):
    """||a||_F without overflow or underflow (:func:`refimpl.kernels_metrics.fro_norm`: a
    candidate 1e160 W* or 1e-200 W* keeps its cosine 1 and norm ratio)."""
    return float(fro_norm(np.ascontiguousarray(a, dtype=np.float64)))


def _slackness(l_all, m_all, lsum):
    """sum_i lam_i |m_i - 1| / sum_i lam_i (0 without multipliers); the weights are divided
    first when the plain products overflow (a candidate of scale 1e160 has both factors
    ~1e160)."""
    if not lsum > 0:
        return 0.0
    with np.errstate(over="ignore"):
        v = float(np.sum(l_all * np.abs(m_all - 1.0)) / lsum)
    return v if np.isfinite(v) else float(np.sum((l_all / lsum) * np.abs(m_all - 1.0)))


def _ratio(a, b, both_zero):
    return a / b if b > 0 else (both_zero if a == 0 else np.inf)


def grade(W, W_star, rows_by_column, *, tol=GRADE_TOL, problem="W"):
    """Grade ``W`` against the exact solution ``W_star`` of the problem with these constraints.

    W, W_star : float64 (M, M), finite (``W`` is checked, ``W_star`` is trusted)
    rows_by_column : dict column -> int64 (m_c, 2) pairs (a, b): ``W[a, c] - W[b, c] >= 1``
    tol : relative tolerance of the tight set (:func:`fit_multipliers`) and of ``Grade.ok``
    Returns a :class:`Grade`.
    """
    W_star = np.asarray(W_star, dtype=np.float64)
    W = check_candidate(W, W_star.shape[0])
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    lam, tight, gamma = fit_multipliers(W, rows_by_column, tol)
    margins = _margins(W, rows_by_column)
    m_all = np.concatenate([np.zeros(0)] + list(margins.values()))
    l_all = np.concatenate([np.zeros(0)] + [lam[c] for c in margins])
    fit = np.zeros_like(W)
    for c in margins:
        rows = _rows(rows_by_column, c)
        np.add.at(fit[:, c], rows[:, 0], lam[c])
        np.subtract.at(fit[:, c], rows[:, 1], lam[c])
    nW, nS = _fro(W), _fro(W_star)
    lsum = float(l_all.sum())
    return Grade(
        problem=problem, tol=float(tol),
        max_violation=float(max(0.0, (1.0 - m_all).max(initial=0.0))),
        rel_distance=float(_ratio(_fro(W - W_star), nS, 0.0)),
        cosine=float(np.sum(W * W_star) / (nW * nS)) if nW > 0 and nS > 0 else float("nan"),
        norm_ratio=float(_ratio(nW, nS, 1.0)),
        dual=float(max(0.0, -l_all.min(initial=0.0)) / max(np.abs(l_all).max(initial=0.0), _TINY)),
        stationarity=float(_fro(W - fit) / nW) if nW > 0 else 0.0,
        slackness=_slackness(l_all, m_all, lsum),
        min_margin=gamma, n_constraints=len(m_all),
        n_tight=int(sum(int(t.sum()) for t in tight.values())),
    )
