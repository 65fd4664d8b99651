"""Certified bounds as float64 callables: the only place SymPy becomes NumPy.

Every bound here is ``sympy.lambdify`` of a constant of its claim in the registry
(``claims.get(id).constant(name)``, the expression the claim's statement is built
from and ``certify`` derives again), or of a log-space form in ``derivations``
that ``certify`` checks to equal the log of that constant (modules="numpy", float64; the scalar loop of the C4
recursion uses modules="math", the same float64 arithmetic without NumPy's
per-call overhead). The audit and the tests import bounds from here and never
re-derive them. All functions broadcast over NumPy arrays of ``t``.

Log-space versions (``*_log10``) stay finite and accurate (1e-12 relative)
for any t: below ``log u < -40`` they use ``log(log(1 + u)) = log u`` (error
``< u < 5e-18`` absolute, see ``derivations.check_log_space_forms``).

The C8 quantities (vertex gaps ``Delta_i``, the constant ``c8``, the zero-init
gap bound) are of size ``e^{-a}`` with ``a = gamma_ov eta0 T0`` and underflow
float64 once ``a > ~740`` (``T0 > ~7e4`` at the built-in defaults). Their log-space
forms (``c8_sentence_log_gap(s)``, ``c8_log_constant``, ``c8_log_gap_zero_init``,
``c8_excess_lower_log10_from_log``) are exact identities evaluated without ever
forming ``e^{-a}``; the linear forms are kept for small ``a`` and for tests.
"""
import math

import numpy as np
import sympy as sp
from sympy.codegen.cfunctions import log1p

from . import claims as _claims
from . import derivations as dv
from .symbols import (LOG_TINY, M, N, a, c1, c8, eta, eta0, gamma_kq, gamma_mm, gamma_ov,
                      lu, margin_W, n_c, norm0, norm_W, t)

LN10 = math.log(10.0)
_LOG_TINY = float(LOG_TINY)

# log c8 as a symbol of its own: C8_LOWER_LOG with log(c8) replaced, so a c8 below the
# smallest double (large T0) still gives the bound (docs/theory.md section 9).
log_c8 = sp.Symbol("log_c8", real=True)
C8_LOWER_FROM_LOG = dv.C8_LOWER_LOG.subs(sp.log(c8), log_c8)
# log of C8_GAP_ZERO_INIT = a (M-1)/(e^a + M - 1): log(e^a + M - 1) = a + log1p((M-1) e^{-a}),
# finite for every a > 0 (the plain form underflows for a > ~740); tests check
# exp(C8_LOG_GAP_ZERO_INIT) == C8_GAP_ZERO_INIT symbolically and against mpmath up to a = 1e6.
C8_LOG_GAP_ZERO_INIT = sp.log(a) + sp.log(M - 1) - a - log1p((M - 1) * sp.exp(-a))


def _numpy(args, expr):
    """lambdify ``expr`` (modules="numpy") into a float64 function of ``args``."""
    f = sp.lambdify(args, expr, modules="numpy")

    def wrapped(*values):
        values = [np.asarray(v, dtype=np.float64) for v in values]
        with np.errstate(divide="ignore", over="ignore", under="ignore", invalid="ignore"):
            return np.asarray(f(*values), dtype=np.float64)[()]
    return wrapped


def _const(claim_id, name):
    """The SymPy expression of a claim's constant (the registry is the only copy)."""
    return _claims.get(claim_id).constant(name)


def _with_log1p(expr):
    """``expr`` with every ``log(1 + X)`` written ``log1p(X)`` (equal; accurate for tiny X)."""
    return expr.replace(lambda e: isinstance(e, sp.log) and e.args[0].is_Add and 1 in e.args[0].args,
                        lambda e: log1p(e.args[0] - 1))


_c1_norm_sq = _numpy((M, n_c), _const("C1", "norm_sq"))
_c2_loss = _numpy((M, eta0, gamma_ov, t), _with_log1p(_const("C2", "loss")))
_c2_log_loss = _numpy((M, eta0, gamma_ov, t), dv.C2_LOG_LOSS)
_c3_norm_upper = _numpy((eta0, t), _const("C3", "norm_upper"))
_c3_proj_lower = _numpy((eta0, gamma_ov, t), _const("C3", "proj_lower"))
_c4_c1 = _numpy((eta0, gamma_ov), _const("C4", "c1"))
_c4_lower = _numpy((gamma_ov, norm0, eta0, n_c, t), _with_log1p(_const("C4", "lower")))
_c4_lower_log = _numpy((gamma_ov, norm0, eta0, n_c, t), dv.C4_LOWER_LOG)
_c4_log_step = sp.lambdify((lu, eta0, c1, n_c), dv.C4_LOG_STEP, modules="math")
_c7_norm_upper = _numpy((eta, t), _const("C7", "norm_upper"))
_c8_lower = _numpy((c8, gamma_kq, norm0, eta, t), _const("C8", "lower"))
_c8_lower_log = _numpy((c8, gamma_kq, norm0, eta, t), dv.C8_LOWER_LOG)
_c8_gap_zero_init = _numpy((M, a), _const("C8", "gap_zero_init"))
_c8_term = _numpy((dv.Delta_i, dv.L_i, N), _const("C8", "c8"))
# log of the C8 constant term with log Delta_i as its own argument (Delta_i may underflow)
log_Delta = sp.Symbol("log_Delta", real=True)
C8_LOG_TERM = sp.expand_log(sp.log(_const("C8", "c8")), force=True).subs(sp.log(dv.Delta_i),
                                                                          log_Delta)
_c8_log_term = _numpy((log_Delta, dv.L_i, N), C8_LOG_TERM)
_c8_log_gap_zero_init = _numpy((M, a), C8_LOG_GAP_ZERO_INIT)
_c8_lower_from_log = _numpy((log_c8, gamma_kq, norm0, eta, t), C8_LOWER_FROM_LOG)


_c12_cos_lower = _numpy((margin_W, gamma_mm, norm_W), _const("C12", "cos_lower"))


def c12_cos_lower(margin, gamma, norm_W):
    """C12: ``cos(W, W*) >= m(W)/(gamma ||W||)`` for a margin ``m(W) > 0`` (vacuous otherwise)."""
    return _c12_cos_lower(margin, gamma, norm_W)


# C13: the registry's bound with b = e^lu (certify checks the log form against it)
_c13_cos_lower_log = _numpy((lu, n_c, gamma_ov, norm0, eta0, t), dv.C13_COS_LOWER_LOG)
_c13_liminf = _numpy((eta0,), _const("C13", "liminf"))
_c14_gap_lower = _numpy((dv.p_inv, dv.q_inv, dv.eta_step, t), _const("C14", "gap_lower"))
_c15_threshold = _numpy((dv.L_pos, dv.n_star), _const("C15", "threshold"))
_c15_drift = _numpy((eta,), _const("C15", "drift"))


def c13_cos_lower_from_log10(log10_b, n_c, gamma_ov, norm0, eta0, t):
    """C13: ``cos(O_t, O*) >= (-log(n_c b_t) - n_c b_t)/(gamma_ov (||O_0|| + eta0 t))``.

    Parameters
    ----------
    log10_b : array_like
        ``log10 b_t`` of the C4 recursion (:func:`c4_upper_log10`); finite for any t.
    n_c : int
    gamma_ov, norm0, eta0 : float
        ``1/||O*||``, ``||O_0||``, the stage-1 step size.
    t : array_like
        Steps.

    Returns
    -------
    ndarray or float
        The bound; it certifies something only where it is positive (C12 needs ``m > 0``).
    """
    return _c13_cos_lower_log(np.asarray(log10_b, dtype=np.float64) * LN10, n_c, gamma_ov, norm0,
                              eta0, t)


def c13_liminf(eta0):
    """C13: ``liminf_t cos(O_t, O*) >= 1 - eta0 exp(sqrt2 eta0)`` (= c1/gamma_ov of C4)."""
    return _c13_liminf(eta0)


def c14_gap_lower(p, q, eta_step, t):
    """C14: ``1 - cos(W_t, W*) >= p^2/(s (s + r))``, ``r = q + eta_step t``, ``s = sqrt(p^2 + r^2)``.

    ``p = ||P W_0||`` (the part of the initialization NGD never moves), ``q = ||(I - P) W_0||``;
    the form has no cancellation (it equals ``1 - r/s``). 0 when ``p = 0`` (zero init).
    """
    return _c14_gap_lower(p, q, eta_step, t)


def c15_threshold(L, n_star):
    """C15: attention margin above which a sentence of ``L`` positions with ``n_star`` copies of
    its maximum is predicted ``n(xhat)`` (zero-init stage 1): ``log((L - n_star)/n_star)``;
    ``-inf`` when every position is ``xhat``."""
    return _c15_threshold(L, n_star)


def c15_drift(eta):
    """C15: the most one NGD step of size ``eta`` can lower an attention margin, ``sqrt2 eta``."""
    return _c15_drift(eta)


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
    """``log b_0 .. log b_T`` (float64, shape (T+1,)) of the C4 recursion (:func:`_c4_log_b_at`
    at every step)."""
    return _c4_log_b_at(L0_0, gamma_ov, eta0, n_c, np.arange(int(T) + 1, dtype=np.int64))


def _c4_log_b_at(L0_0, gamma_ov, eta0, n_c, steps):
    """``log b_t`` of the C4 recursion at the given steps (int >= 0, any order and shape).

    Iterates ``C4_LOG_STEP`` (``beta -> beta + log(1 - eta0 c1 h(n_c e^beta))``,
    ``h(x) = -expm1(-x)/x``) while ``n_c b >= e^{-40}`` and below the largest step, keeping
    the requested ones; after that ``h = 1`` to < 3e-18, so the tail is the exact
    arithmetic progression ``beta_s + (t - s) log1p(-eta0 c1)`` (no accumulated rounding),
    evaluated at each requested step: a step of 10^12 costs what the head costs.
    """
    if not c4_precondition(eta0, gamma_ov):
        raise ValueError(f"C4 precondition fails: eta0={eta0}, gamma_ov={gamma_ov} "
                         "need eta0 exp(sqrt2 eta0) < 1 and eta0 c1 < 1")
    steps = np.asarray(steps, dtype=np.int64)
    if steps.size and int(steps.min()) < 0:
        raise ValueError(f"C4 steps must be >= 0, got {int(steps.min())}")
    flat = steps.ravel()
    out = np.full(flat.shape, -np.inf)
    if L0_0 <= 0 or not flat.size:
        return out.reshape(steps.shape)
    order = np.argsort(flat, kind="stable")
    wanted = flat[order].tolist()                  # sorted steps as Python ints (per-step compare)
    cc, log_nc = float(c4_c1(eta0, gamma_ov)), math.log(n_c)
    T, n = wanted[-1], len(wanted)
    beta, s, j = math.log(L0_0), 0, 0
    head = []                                      # (index into wanted, value), in order
    while j < n and wanted[j] == 0:
        head.append(beta)
        j += 1
    while j < n and s < T and beta + log_nc >= _LOG_TINY:
        beta = _c4_log_step(beta, eta0, cc, n_c)
        s += 1
        while j < n and wanted[j] == s:
            head.append(beta)
            j += 1
    out[order[:j]] = head
    out[order[j:]] = beta + (flat[order[j:]] - s).astype(np.float64) * math.log1p(-eta0 * cc)
    return out.reshape(steps.shape)


def c4_upper_log10_at(L0_0, gamma_ov, eta0, n_c, steps):
    """C4: ``log10 b_t`` at the given steps only (float64, shape of ``steps``): the values of
    ``c4_upper_log10(..., T)[steps]``, T = max(steps), bit for bit, without its (T+1,) array
    (:func:`_c4_log_b_at`)."""
    return _c4_log_b_at(L0_0, gamma_ov, eta0, n_c, steps) / LN10


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


def c8_sentence_log_gap(O, tokens, y, x_star):
    """C8: the vertex gap ``Delta_i`` of one sentence in log space, ``(sign, log|Delta_i|)``.

    ``Delta_i = min_{v != x*} (g_v - g_{x*})`` over the distinct tokens v of the sentence,
    ``g_v = O[:, v]^T (p* - e_y)``, ``p* = softmax(O[:, x*])`` (docs/theory.md section 9).

    Parameters
    ----------
    O : array_like, float, shape (M, M)
        W_ov in token coordinates.
    tokens : array_like of int, shape (L,)
        The sentence.
    y, x_star : int
        Its next token and optimal token.

    Returns
    -------
    sign : int
        +1, 0 or -1, the sign of ``Delta_i`` (+1 when x* is the only distinct token:
        no constraint, ``Delta_i = +inf``).
    log_abs : float
        ``log |Delta_i|``; ``-inf`` when ``Delta_i = 0``, ``+inf`` when there is no constraint.

    Notes
    -----
    Derivation (no quantity of size ``e^{-a}`` is ever formed). Let ``o = O[:, x*]``,
    ``d = O[:, v] - o``. As ``sum_w p*_w = 1``, ``p* - e_y = sum_{w != y} p*_w (e_w - e_y)``, so

        g_v - g_{x*} = d^T (p* - e_y) = sum_{w != y} p*_w (d_w - d_y).

    With ``m = max_{w != y} o_w`` and ``lse = log sum_w e^{o_w}`` (computed as
    ``o_max + log sum e^{o - o_max}``), ``p*_w = e^{m - lse} e^{o_w - m}``, hence

        Delta_i = e^{m - lse} min_v S_v,   S_v = sum_{w != y} e^{o_w - m} (d_w - d_y),

    every factor ``e^{o_w - m}`` in (0, 1] with at least one equal to 1: ``S_v`` is of the
    size of ``d`` and ``log Delta_i = (m - lse) + log min_v S_v`` is finite whenever the
    minimum is positive, for any size of O. From zero-init stage 1,
    ``O[:, x] = a (e_{n(x)} - 1/M)``: ``S_v = a M`` (v in C) or ``a (M - 1)`` (v outside C)
    and ``m - lse = -a - log1p((M-1) e^{-a})``, i.e. ``Delta_i = a (M-1)/(e^a + M - 1)``
    as in ``check_c8_zero_init_gap``. Rounding: ``m - lse`` carries ~``eps max|O|``
    absolute error, ``S_v`` ~``eps`` relative, so ``log|Delta_i|`` is accurate to
    ~``eps (max|O| + 1)`` absolute (checked against mpmath at 50 digits up to ``a = 1e6``).
    """
    O = np.asarray(O, dtype=np.float64)
    x_star, y = int(x_star), int(y)
    others = sorted(set(int(v) for v in np.asarray(tokens).ravel()) - {x_star})
    if not others:
        return 1, math.inf
    o = O[:, x_star]
    not_y = np.arange(len(o)) != y
    m = float(o[not_y].max())
    o_max = float(o.max())
    lse = o_max + math.log(float(np.sum(np.exp(o - o_max))))
    e = np.exp(o[not_y] - m)                                   # (M-1,), in (0, 1]
    D = O[:, others] - o[:, None]                              # (M, k): d for each other token
    S = float(np.min(e @ (D[not_y] - D[y][None, :])))
    if S == 0.0 or not math.isfinite(S):
        return (0, -math.inf) if S == 0.0 else (0, math.nan)
    return (1 if S > 0 else -1), (m - lse) + math.log(abs(S))


def c8_sentence_log_gaps(O, tokens, lengths, ys, optimal):
    """C8: :func:`c8_sentence_log_gap` of every sentence of a padded batch.

    Parameters
    ----------
    O : array_like, float, shape (M, M)
    tokens : array_like of int, shape (N, Lmax)
        Sentences padded (any padding value; only the first ``lengths[i]`` are read).
    lengths, ys, optimal : array_like of int, shape (N,)
        Lengths, next tokens and optimal tokens x*.

    Returns
    -------
    sign : ndarray of int64, shape (N,)
    log_abs : ndarray of float64, shape (N,)
    """
    tokens = np.asarray(tokens)
    pairs = [c8_sentence_log_gap(O, tokens[i, :int(lengths[i])], int(ys[i]), int(optimal[i]))
             for i in range(len(lengths))]
    sign = np.array([p[0] for p in pairs], dtype=np.int64)
    log_abs = np.array([p[1] for p in pairs], dtype=np.float64)
    return sign, log_abs


def c8_sentence_gap(O, tokens, y, x_star):
    """C8: vertex gap ``Delta_i`` of one sentence in linear scale (``+inf`` if x* is the only token).

    ``sign * exp(log|Delta_i|)`` from :func:`c8_sentence_log_gap`: exact to rounding
    while representable, but it underflows to ``+-0.0`` once ``|Delta_i| < 5e-324``
    (``a = gamma_ov eta0 T0 > ~740`` from zero init); decisions use the log form.
    O : float array, shape (M, M), token coordinates; tokens : ints (L,).
    """
    sign, log_abs = c8_sentence_log_gap(O, tokens, y, x_star)
    if log_abs == math.inf:
        return math.inf
    return float(sign * math.exp(log_abs)) if sign else 0.0


def c8_sentence_gaps(O, tokens, lengths, ys, optimal):
    """C8: :func:`c8_sentence_gap` of every sentence of a padded batch: float (N,).

    tokens : ints (N, Lmax) padded; lengths, ys, optimal : ints (N,) (x* per sentence).
    """
    sign, log_abs = c8_sentence_log_gaps(O, tokens, lengths, ys, optimal)
    with np.errstate(under="ignore", over="ignore"):
        return np.where(log_abs == np.inf, np.inf, sign * np.exp(np.minimum(log_abs, 709.0)))


def c8_constant(gaps, lengths):
    """C8: ``c8 = (1/N) min_i Delta_i / L_i`` over sentences with a constraint.

    gaps : (N,) from ``c8_sentence_gap`` (inf = no constraint); lengths : (N,)
    positions. Returns 0.0 (a vacuous bound) if some gap is <= 0 or none is finite.
    Underflows for large ``a``: use :func:`c8_log_constant` there.
    """
    gaps, lengths = np.asarray(gaps, np.float64), np.asarray(lengths, np.float64)
    finite = np.isfinite(gaps)
    if not finite.any():
        return 0.0
    terms = _c8_term(gaps[finite], lengths[finite], float(gaps.size))   # the registry's c8 term
    return max(float(np.min(terms)), 0.0)


def c8_log_constant(sign, log_abs, lengths):
    """C8: ``log c8 = min_i (log Delta_i - log L_i) - log N`` from log-space gaps.

    Parameters
    ----------
    sign, log_abs : array_like, shape (N,)
        From :func:`c8_sentence_log_gaps` (``log_abs = +inf``: the sentence has no constraint).
    lengths : array_like of int, shape (N,)
        Positions ``L_i``.

    Returns
    -------
    float
        ``log c8``; ``-inf`` (a vacuous bound, as ``c8_constant`` returning 0.0) if some
        constrained sentence has ``Delta_i <= 0`` (or a NaN gap), or no sentence has a constraint.
    """
    sign = np.asarray(sign)
    log_abs = np.asarray(log_abs, np.float64)
    lengths = np.asarray(lengths, np.float64)
    constrained = log_abs != np.inf
    if not constrained.any() or np.any(sign[constrained] <= 0) or np.isnan(log_abs).any():
        return -math.inf
    # log of the registry's c8 term, log Delta_i - log L_i - log N
    return float(np.min(_c8_log_term(log_abs[constrained], lengths[constrained], float(sign.size))))


def c8_gap_zero_init(M, eta0, gamma_ov, T0):
    """C8: ``Delta_i >= a (M-1)/(e^a + M - 1)``, ``a = gamma_ov eta0 T0`` (zero-init stage 1)."""
    return _c8_gap_zero_init(M, np.asarray(gamma_ov) * np.asarray(eta0) * np.asarray(T0))


def c8_log_gap_zero_init(M, eta0, gamma_ov, T0):
    """C8 in log space: ``log(a (M-1)/(e^a + M - 1)) = log a + log(M-1) - a - log1p((M-1) e^{-a})``.

    ``a = gamma_ov eta0 T0``; finite for every ``a > 0`` (``-inf`` at ``a = 0``), where
    :func:`c8_gap_zero_init` underflows to 0 for ``a > ~740``.
    """
    return _c8_log_gap_zero_init(M, np.asarray(gamma_ov) * np.asarray(eta0) * np.asarray(T0))


def c8_excess_lower(c8, gamma_kq, norm0, eta, t):
    """C8: ``L(O, K_t) - L_floor(O) >= c8 exp(-gamma_kq (||K_0|| + eta t))``."""
    return _c8_lower(c8, gamma_kq, norm0, eta, t)


def c8_excess_lower_log10(c8, gamma_kq, norm0, eta, t):
    """C8 in log space: ``log10 c8 - gamma_kq (||K_0|| + eta t)/ln 10`` (finite for c8 > 0)."""
    return _c8_lower_log(c8, gamma_kq, norm0, eta, t) / LN10


def c8_excess_lower_log10_from_log(log_c8, gamma_kq, norm0, eta, t):
    """C8 in log space from ``log c8``: ``(log c8 - gamma_kq (||K_0|| + eta t))/ln 10``.

    The same bound as :func:`c8_excess_lower_log10`, for a ``c8`` that underflows float64
    (``log_c8`` from :func:`c8_log_constant`); ``-inf`` when ``log_c8 = -inf`` (vacuous).
    """
    return _c8_lower_from_log(log_c8, gamma_kq, norm0, eta, t) / LN10


# C16 (docs/stage2_upper.md): the registry's bound in log space (certify checks C16_BOUND_LOG is the
# log of the claim's "bound") and its E0 -> 0 rate from zero-init stage 1.
_c16_bound_log = _numpy((dv.E0, eta, dv.r16, dv.k16), dv.C16_BOUND_LOG)
_c16_rate_inf_zero_init = _numpy((gamma_kq, eta), _const("C16", "rate_inf_zero_init"))


def c16_log10_bound(E0, eta, r, k):
    """C16: ``log10(E0 (1 - eta r)^k)``, the certified upper bound on ``log10 E(K_{t0+k})``.

    Float64 and not outward rounded: the audit uses the certificate's own rounded-up
    ``Stage2UpperCertificate.log10_bound``; this is the registry's formula for tests and plots.

    Parameters
    ----------
    E0 : float > 0
        An upper bound on the excess at the checkpoint.
    eta, r : float
        Step size and certified rate, ``0 < eta r < 1``.
    k : array_like
        Steps after the checkpoint.
    """
    return _c16_bound_log(E0, eta, r, k) / LN10


def c16_rate_inf_zero_init(gamma_kq, eta):
    """C16: the certified rate as ``E0 -> 0`` from zero-init stage 1, ``gamma_kq - eta e^{sqrt2 eta}``
    (``delta = 0``, every sentence's other tokens in C)."""
    return _c16_rate_inf_zero_init(gamma_kq, eta)
