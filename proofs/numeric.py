"""Certified bounds as float64 callables: the only place SymPy becomes NumPy.

Every function here is ``sympy.lambdify`` of a closed form in
``proofs.derivations`` (modules="numpy", float64; the scalar loop of the C4
recursion uses modules="math", the same float64 arithmetic without NumPy's
per-call overhead). The audit and the tests import bounds from here and never
re-derive them. All functions broadcast over NumPy arrays of ``t``.

Log-space versions (``*_log10``) stay finite and accurate (1e-12 relative)
for any t: below ``log u < -40`` they use ``log(log(1 + u)) = log u`` (error
``< u < 5e-18`` absolute, see ``derivations.check_log_space_forms``).
"""
import math

import numpy as np
import sympy as sp

from proofs import derivations as dv
from proofs.symbols import (LOG_TINY, M, a, c1, c8, eta, eta0, gamma_kq, gamma_ov, lu,
                            n_c, norm0, t)

LN10 = math.log(10.0)
_LOG_TINY = float(LOG_TINY)


def _numpy(args, expr):
    """lambdify ``expr`` (modules="numpy") into a float64 function of ``args``."""
    f = sp.lambdify(args, expr, modules="numpy")

    def wrapped(*values):
        values = [np.asarray(v, dtype=np.float64) for v in values]
        with np.errstate(divide="ignore", over="ignore", under="ignore", invalid="ignore"):
            return np.asarray(f(*values), dtype=np.float64)[()]
    return wrapped


_c1_norm_sq = _numpy((M, n_c), dv.C1_NORM_SQ)
_c2_loss = _numpy((M, eta0, gamma_ov, t), dv.C2_LOSS_LOG1P)
_c2_log_loss = _numpy((M, eta0, gamma_ov, t), dv.C2_LOG_LOSS)
_c3_norm_upper = _numpy((eta0, t), dv.C3_NORM_UPPER)
_c3_proj_lower = _numpy((eta0, gamma_ov, t), dv.C3_PROJ_LOWER)
_c4_c1 = _numpy((eta0, gamma_ov), dv.C4_C1)
_c4_lower = _numpy((gamma_ov, norm0, eta0, n_c, t), dv.C4_LOWER_LOG1P)
_c4_lower_log = _numpy((gamma_ov, norm0, eta0, n_c, t), dv.C4_LOWER_LOG)
_c4_log_step = sp.lambdify((lu, eta0, c1, n_c), dv.C4_LOG_STEP, modules="math")
_c7_norm_upper = _numpy((eta, t), dv.C7_NORM_UPPER)
_c8_lower = _numpy((c8, gamma_kq, norm0, eta, t), dv.C8_LOWER)
_c8_lower_log = _numpy((c8, gamma_kq, norm0, eta, t), dv.C8_LOWER_LOG)
_c8_gap_zero_init = _numpy((M, a), dv.C8_GAP_ZERO_INIT)


def c1_norm_sq(M, n_c):
    """C1: ``||O*||_F^2 = n_c (M-1)/M``."""
    return _c1_norm_sq(M, n_c)


def c1_gamma_ov(M, n_c):
    """C1: ``gamma_ov = 1/||O*||_F = sqrt(M/(n_c (M-1)))``."""
    return 1.0 / np.sqrt(c1_norm_sq(M, n_c))


def c2_loss(M, eta0, gamma_ov, t):
    """C2: ``L0(O_t) = log(1 + (M-1) exp(-gamma_ov eta0 t))`` from ``O_0 = 0``.

    Underflows to 0 for ``gamma_ov eta0 t > ~745``; use ``c2_log10_loss`` there.
    """
    return _c2_loss(M, eta0, gamma_ov, t)


def c2_log10_loss(M, eta0, gamma_ov, t):
    """C2 in log space: ``log10 L0(O_t)``, finite for any t.

    ``= LOGLOG1PEXP(log(M-1) - gamma_ov eta0 t) / ln 10`` with
    ``LOGLOG1PEXP(lu) = log(log1p(e^lu))``, or ``lu`` when ``lu < -40``.
    """
    return _c2_log_loss(M, eta0, gamma_ov, t) / LN10


def c3_norm_upper(eta0, t):
    """C3: ``||O_t - O_0||_F <= eta0 t`` (unit normalized steps)."""
    return _c3_norm_upper(eta0, t)


def c3_proj_lower(eta0, gamma_ov, t):
    """C3: ``<O_t - O_0, O*/||O*||> >= eta0 t gamma_ov / sqrt(2)``."""
    return _c3_proj_lower(eta0, gamma_ov, t)


def c4_c1(eta0, gamma_ov):
    """C4: ``c1 = gamma_ov (1 - eta0 exp(sqrt(2) eta0))``."""
    return _c4_c1(eta0, gamma_ov)


def c4_precondition(eta0, gamma_ov):
    """C4 preconditions: ``eta0 e^{sqrt2 eta0} < 1`` and ``eta0 c1 < 1`` (bool)."""
    step_ok = eta0 * np.exp(np.sqrt(2.0) * eta0) < 1.0
    return np.logical_and(step_ok, eta0 * c4_c1(eta0, gamma_ov) < 1.0)[()]


def c4_rate(eta0, gamma_ov):
    """C4: asymptotic slope of ``log b_t`` per step, ``log(1 - eta0 c1)`` (< 0)."""
    return np.log1p(-eta0 * c4_c1(eta0, gamma_ov))


def _c4_log_b(L0_0, gamma_ov, eta0, n_c, T):
    """``log b_0 .. log b_T`` (float64, shape (T+1,)) of the C4 recursion.

    Iterates ``C4_LOG_STEP`` (``beta -> beta + log(1 - eta0 c1 h(n_c e^beta))``,
    ``h(x) = -expm1(-x)/x``) while ``n_c b >= e^{-40}``; after that ``h = 1``
    to < 3e-18, so the tail is the exact arithmetic progression
    ``beta_s + (t - s) log1p(-eta0 c1)`` (no accumulated rounding).
    """
    if not c4_precondition(eta0, gamma_ov):
        raise ValueError(f"C4 precondition fails: eta0={eta0}, gamma_ov={gamma_ov} "
                         "need eta0 exp(sqrt2 eta0) < 1 and eta0 c1 < 1")
    T = int(T)
    out = np.empty(T + 1, dtype=np.float64)
    if L0_0 <= 0:
        out[:] = -np.inf
        return out
    cc, log_nc = float(c4_c1(eta0, gamma_ov)), math.log(n_c)
    beta, s = math.log(L0_0), 0
    out[0] = beta
    while s < T and beta + log_nc >= _LOG_TINY:
        beta = _c4_log_step(beta, eta0, cc, n_c)
        s += 1
        out[s] = beta
    out[s + 1:] = beta + np.arange(1, T - s + 1, dtype=np.float64) * math.log1p(-eta0 * cc)
    return out


def c4_upper(L0_0, gamma_ov, eta0, n_c, T):
    """C4: ``b_0 .. b_T`` (shape (T+1,)), ``b_0 = L0(O_0)``,
    ``b_{t+1} = b_t - eta0 c1 (1 - exp(-n_c b_t))/n_c``; ``L0(O_t) <= b_t``.

    Underflows to 0 for large T; use ``c4_upper_log10`` there.
    """
    return np.exp(_c4_log_b(L0_0, gamma_ov, eta0, n_c, T))


def c4_upper_log10(L0_0, gamma_ov, eta0, n_c, T):
    """C4: ``log10 b_0 .. log10 b_T`` (shape (T+1,)), finite for any T."""
    return _c4_log_b(L0_0, gamma_ov, eta0, n_c, T) / LN10


def c4_lower(gamma_ov, norm0, eta0, n_c, t):
    """C4: ``L0(O_t) >= (1/n_c) log(1 + exp(-gamma_ov (||O_0|| + eta0 t)))``."""
    return _c4_lower(gamma_ov, norm0, eta0, n_c, t)


def c4_lower_log10(gamma_ov, norm0, eta0, n_c, t):
    """C4: log10 of ``c4_lower``, finite for any t (log space, see module doc)."""
    return _c4_lower_log(gamma_ov, norm0, eta0, n_c, t) / LN10


def c7_norm_upper(eta, t):
    """C7: ``||K_t - K_0||_F <= eta t``."""
    return _c7_norm_upper(eta, t)


def c8_sentence_gap(O, tokens, y, x_star):
    """C8: vertex gap ``Delta_i = min_{v != x*} (g_v - g_{x*})`` of one sentence.

    ``g_v = O[:, v]^T (p* - e_y)``, ``p* = softmax(O[:, x*])``, v over the
    distinct tokens of the sentence; ``+inf`` if x* is the only token.
    O : float array, shape (M, M), token coordinates; tokens : ints (L,).
    """
    O = np.asarray(O, dtype=np.float64)
    others = sorted(set(int(v) for v in tokens) - {int(x_star)})
    if not others:
        return np.inf
    col = O[:, x_star]
    p = np.exp(col - col.max())
    p /= p.sum()
    r = p.copy()                                          # p - e_y, y entry without cancellation
    r[y] = -np.delete(p, y).sum()
    g = O[:, others].T @ r                                # (len(others),)
    return float(g.min() - O[:, x_star] @ r)


def c8_sentence_gaps(O, tokens, lengths, ys, optimal):
    """C8: :func:`c8_sentence_gap` of every sentence of a padded batch: float (N,).

    tokens : ints (N, Lmax) padded; lengths, ys, optimal : ints (N,) (x* per sentence).
    """
    return np.array([c8_sentence_gap(O, tokens[i, :lengths[i]], int(ys[i]), int(optimal[i]))
                     for i in range(len(lengths))])


def c8_constant(gaps, lengths):
    """C8: ``c8 = (1/N) min_i Delta_i / L_i`` over sentences with a constraint.

    gaps : (N,) from ``c8_sentence_gap`` (inf = no constraint); lengths : (N,)
    positions. Returns 0.0 (a vacuous bound) if some gap is <= 0 or none is finite.
    """
    gaps, lengths = np.asarray(gaps, np.float64), np.asarray(lengths, np.float64)
    finite = np.isfinite(gaps)
    if not finite.any():
        return 0.0
    return max(float(np.min(gaps[finite] / lengths[finite])) / gaps.size, 0.0)


def c8_gap_zero_init(M, eta0, gamma_ov, T0):
    """C8: ``Delta_i >= a (M-1)/(e^a + M - 1)``, ``a = gamma_ov eta0 T0`` (zero-init stage 1)."""
    return _c8_gap_zero_init(M, np.asarray(gamma_ov) * np.asarray(eta0) * np.asarray(T0))


def c8_excess_lower(c8, gamma_kq, norm0, eta, t):
    """C8: ``L(O, K_t) - L_floor(O) >= c8 exp(-gamma_kq (||K_0|| + eta t))``."""
    return _c8_lower(c8, gamma_kq, norm0, eta, t)


def c8_excess_lower_log10(c8, gamma_kq, norm0, eta, t):
    """C8 in log space: ``log10 c8 - gamma_kq (||K_0|| + eta t)/ln 10`` (finite for c8 > 0)."""
    return _c8_lower_log(c8, gamma_kq, norm0, eta, t) / LN10
