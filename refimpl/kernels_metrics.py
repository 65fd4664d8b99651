"""Compiled trajectory metrics: the recorded-step columns without (N, M) arrays (docs/reproduce.md).

The trainer records, at the steps of :func:`refimpl.trajectory.record_steps`, the train
accuracy, the excess loss ``L(O, K) - L_floor(O)`` and its log10, the attention margin and
a few Frobenius norms. The NumPy definitions (:class:`refimpl.trajectory.ExcessLoss`
``.reference``, :func:`refimpl.trajectory.accuracy`, :func:`refimpl.trajectory.attention_margin`,
:func:`refimpl.trajectory.direction_metrics`) build (N, Lmax) and (N, M) arrays; the functions
here compute the same numbers in one pass over the ragged sentences (``flat_tokens``
int64 (T,), ``offsets`` int64 (N + 1,), sentence i is ``flat_tokens[offsets[i]:offsets[i+1]]``)
with O(M + Lmax) scratch per chunk and O(N) per-sentence results.

Per sentence (query q = x_L, next token y, optimal token x*, A = max |O|):

    phi_l = exp(s_l - max s) / sum_m exp(s_m - max s),  s_l = K[x_l, q]
    dz    = sum_{l: x_l != x*} phi_l O[:, x_l] - (sum_{l: x_l != x*} phi_l) O[:, x*]   (z - z*)
    delta_v = dz_v - dz_y,   b_v = O[v, x*] - O[y, x*],   z_v - z_y = b_v + delta_v

The positions of x* contribute exactly 0 to dz, so dz comes from the small attention
weights directly; K is read transposed (``KT[q, x]``, one row per query).

*Accuracy*: ``max_{v != y} (b_v + delta_v) < 0``. When that maximum is within
``8 (L + 2) eps A`` of 0 (a bound on the rounding of both this form and of the padded
logits), phi and the logits are recomputed exactly as :func:`refimpl.kernels.attention` and
:func:`refimpl.kernels.logits` form them (libm exp; ``z_v = sum_l phi_l O[v, x_l]`` in
position order, no fused multiply-add), so the count agrees with ``accuracy(logits(...), y)``
bit for bit, ties included.

*Excess*: with ``c = max_{v != y} b_v``, ``eb_v = exp(b_v - c)`` and
``log1p_s = log(1 + sum_v exp(b_v))`` (per distinct pair (x*, y): an O(M^2) table, never
(N, M)), a sentence whose floor is the perfect-attention vertex and whose ``max delta <= 30``
has ``R = (S - S*) / (1 + S*) = e^{c - log1p_s} sum_v eb_v expm1(delta_v)`` and
``loss_i - floor_i = log1p(R)``: computed as that value while ``R >= 1e-280`` (one libm call),
else in log space, ``log R = c + log(sum_v eb_v expm1(delta_v)) - log1p_s`` and
``log(loss_i - floor_i) = log R`` below ``log R = -40``, else ``log(log1p(e^{log R}))``;
any other sentence takes ``log(loss_i - floor_i) = l_i + log(-expm1(f_i - l_i))`` from its
log-loss ``l_i = log(log1p(e^a))`` (``a + log1p(-e^a / 2)`` for ``a < -20``),
``a = log sum_{v != y} exp(b_v + delta_v)``, and its log-floor ``f_i``. A sentence with no
positive excess contributes 0. ``log(L - L_floor) = log(sum_i x_i) - log N``, the sum taken
as ``top + log(sum_i e^{log x_i - top})`` over the values and the logarithms together.
These are the formulas of ``ExcessLoss.reference``; they differ from it only in rounding
(``exp`` and ``expm1`` here are polynomials, <= 2 and <= 3 ulp in the normal range; sums are
in a fixed order; ``tests/test_metrics_fused.py`` states the agreement).

Parallelism: sentences are split into fixed chunks under ``prange``; each sentence's values
depend on that sentence only and the sums over sentences run afterwards in index order, so
results are bit-identical for any thread count and any chunking. So the passes run serially
or on threads as a ``chooser`` (:class:`refimpl.kernels._Chooser`, ``REFIMPL_THREADS``) finds
faster, as the kernels' step does: next to a busy process the threaded pass can take several
times the serial one.

Numba's on-disk cache keys each function on its own file: after editing
:mod:`refimpl.kernels_math` (whose helpers are inlined here), touch this file as well.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .kernels_math import as_bits, exp_clamped, exp_scalar, exp_shifted, fma, from_bits, max4, sum4
from .kernels_sparse import _entry, special_chain

__all__ = ["excess_accuracy", "excess_accuracy_structured", "logit_accuracy", "colloc_margins", "matrix_metrics", "constraint_margin",
           "metric_chunks"]

_OPTS = dict(cache=True, fastmath=False, nogil=True, boundscheck=False, error_model="numpy")
_INLINE = dict(_OPTS, inline="always")

_DIRECT = 30.0       # max delta above this: log(loss_i - floor_i) from the log-loss directly
_LOG_TINY = -40.0    # below, log(log1p(e^r)) = r to < e^{-40} relative
_ECL_MIN = 1e-280    # R = num e^{c - log1p_s} is used as a value from here up (far from underflow)
_TIE = 8.0           # accuracy margins within _TIE (L + 2) eps max|O| of 0 are recomputed exactly
_EPS = 2.0 ** -52
_LN2 = 0.6931471805599453
_LN10 = 2.302585092994046

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01      # fdlibm split of log(2): k * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_SHIFTER = 6755399441055744.0             # 1.5 * 2^52: x + _SHIFTER rounds x to an integer
_EXPM1_MIN = -708.0                       # below: expm1(x) rounds to -1
# 1/(n+1)!, n = 0..12: expm1(r) = r * sum_n r^n / (n+1)!
_Q0, _Q1, _Q2, _Q3, _Q4, _Q5, _Q6, _Q7, _Q8, _Q9, _Q10, _Q11, _Q12 = (
    1.0 / math.factorial(n + 1) for n in range(13))

# Chunks (any count gives the same bits): threads pay off from ~20000 token-columns of work.
_PARALLEL_WORK = 20_000
_CHUNKS = 8


def _drive(drivers, args, nc, chooser):
    """``drivers = (serial, threaded)`` run on ``args``: the one ``chooser`` picks
    (:meth:`refimpl.kernels._Chooser.run`; :func:`refimpl.kernels.chooser_for` is serial for one
    chunk), or without a chooser the serial one for nc == 1 and the threaded one otherwise."""
    if chooser is not None:
        return chooser.run(drivers, args)
    return drivers[0 if nc == 1 else 1](*args)


def metric_chunks(N, n_tokens, M):
    """Number of sentence chunks for the compiled metrics: 1 (serial) below ~20000
    token-columns of work (``n_tokens * M``), else ``min(8, N)``. Results never depend on it."""
    return 1 if n_tokens * M < _PARALLEL_WORK or N < 2 else int(min(_CHUNKS, N))


# ===================================================================== scalar helpers
@njit(**_INLINE)
def _expm1(x):
    """expm1(x) for x <= 709 without a libm call (x below -708 gives -1, its rounding).

    x = k log 2 + r (Cody-Waite), |r| <= log(2)/2; expm1(r) = r Q(r), Q the Taylor
    polynomial of degree 12 (truncation < 2e-17 relative); expm1(x) = 2^k expm1(r) + (2^k - 1)
    with one rounding (fma). k = 0 (|x| < 0.35) keeps r = x exactly: full relative accuracy
    near 0, where exp(x) - 1 would cancel. Error <= ~3 ulp.
    """
    x = x if x > _EXPM1_MIN else _EXPM1_MIN
    tk = fma(x, _LOG2E, _SHIFTER)
    k = tk - _SHIFTER
    r = fma(-k, _LN2_LO, fma(-k, _LN2_HI, x))
    r2 = r * r
    r4 = r2 * r2
    t0 = fma(fma(_Q3, r, _Q2), r2, fma(_Q1, r, _Q0))
    t1 = fma(fma(_Q7, r, _Q6), r2, fma(_Q5, r, _Q4))
    t2 = fma(fma(_Q11, r, _Q10), r2, fma(_Q9, r, _Q8))
    q = fma(fma(_Q12, r4, t2), r4 * r4, fma(t1, r4, t0))
    s = from_bits((as_bits(tk) + 1023) << 52)   # 2^k
    return fma(s, r * q, s - 1.0)


@njit(**_INLINE)
def _logaddexp0(a):
    """log(1 + e^a) as numpy.logaddexp(0, a)."""
    if a == 0.0:
        return _LN2
    if a > 0.0:
        return a + math.log1p(math.exp(-a))
    return math.log1p(math.exp(a))


@njit(**_INLINE)
def _log_loss(D, y, w):
    """log of the cross-entropy loss from D (M,) with D_v = z_v - z_y (D_y ignored): the formula
    of :func:`refimpl.floor.log_loss` (``a`` = scipy's logsumexp, maxima separated out).
    D is overwritten (D_y = -inf); w : (M,) scratch."""
    D[y] = -np.inf
    amax = max4(D)
    exp_shifted(D, amax, w)
    m = 0.0
    rest = 0.0
    for v in range(D.shape[0]):
        top = D[v] == amax
        m += 1.0 if top else 0.0
        rest += 0.0 if top else w[v]
    a = (math.log1p(rest / m) + math.log(m)) + amax
    if a < -20.0:
        return a + math.log1p(-math.exp(a) / 2.0)
    return math.log(_logaddexp0(a))


@njit(**_INLINE)
def _vertex_excess(num, ecl_p, cpair_p, l1s_p):
    """A vertex sentence's excess from ``num = sum_v eb_v expm1(delta_v)`` (docs/reproduce.md,
    :class:`refimpl.trajectory.ExcessLoss`): ``(use_x, x, lx)`` with x = log1p(R) the excess
    itself when R = num ecl = (S - S*)/(1 + S*) is representable (one libm call, no logarithm;
    then lx = -inf), else lx = log(log1p(e^{log R})) from log R = c + log num - log(1 + S*)
    (= log R below -40), or -inf when num <= 0 (rounding at the floor)."""
    R = num * ecl_p
    if R >= _ECL_MIN and R < np.inf:
        return True, math.log1p(R), -np.inf
    if num > 0.0:
        log_r = (cpair_p + math.log(num)) - l1s_p
        if log_r < _LOG_TINY:
            return False, 0.0, log_r
        return False, 0.0, math.log(math.log1p(math.exp(min(log_r, 700.0))))
    return False, 0.0, -np.inf


@njit(**_INLINE)
def _direct_excess(ll, lf):
    """log(loss_i - floor_i) = ll + log(-expm1(lf - ll)) from the log-loss ``ll`` and the
    log-floor ``lf``; -inf when ll <= lf (rounding at the floor)."""
    if ll > lf:
        return ll + math.log(-math.expm1(min(lf - ll, 0.0)))
    return -np.inf


@njit(**_INLINE)
def _attention(KT, tokens, off, L, q, ph):
    """ph[:L] = softmax_l K[x_l, q] (KT = K^T), exactly as kernels.attention (libm exp, same order)."""
    smax = -np.inf
    for l in range(L):
        smax = max(smax, KT[q, tokens[off + l]])
    tot = 0.0
    for l in range(L):
        ph[l] = math.exp(KT[q, tokens[off + l]] - smax)
        tot += ph[l]
    for l in range(L):
        ph[l] /= tot


@njit(**_INLINE)
def _exact_correct(OT, KT, tokens, off, L, y, ph, z):
    """Whether logit y is strictly the largest, with phi formed as kernels.attention forms it
    and z_v = sum_l phi_l O[v, x_l] as kernels.logits does (from 0.0, position order, separate
    multiply and add): the same bits as ``accuracy(logits(O, K, ...))``. ph, z : scratch."""
    M = OT.shape[0]
    _attention(KT, tokens, off, L, tokens[off + L - 1], ph)
    for v in range(M):
        z[v] = 0.0
    for l in range(L):
        x = tokens[off + l]
        a = ph[l]
        for v in range(M):
            z[v] += a * OT[x, v]
    zy = z[y]
    z[y] = -np.inf
    return zy > max4(z)


# ===================================================================== stage 2: excess + accuracy
@njit(_nrt=False, **_OPTS)
def _excess_chunk(OT, KT, tokens, offsets, ys, xstar, pair, EB, cpair, l1s, ecl, vertex, log_floor, tie,
                  lo, hi, lx, xv, correct, dz, em, z, ph, nt):
    """Sentences lo..hi-1: the excess x_i = loss_i - floor_i as a value xv[i] (lx[i] = -inf) when
    it is found without a logarithm, else as lx[i] = log x_i (xv[i] = 0; -inf when x_i <= 0);
    correct[i] = 1 when logit y is strictly largest. OT = O^T (a column of O is a row), KT = K^T;
    EB (P, M), cpair, l1s, ecl (P,) are the per-pair eb, c, log1p_s and exp(c - log1p_s) (0 when
    below _ECL_MIN); tie = _TIE eps max|O|; dz, em, z : (M,), ph : (Lmax,) float64 and
    nt : (Lmax,) int64 scratch."""
    M = OT.shape[0]
    for i in range(lo, hi):
        off = offsets[i]
        L = offsets[i + 1] - off
        q = tokens[off + L - 1]
        y = ys[i]
        xs = xstar[i]
        xv[i] = 0.0
        # ---- attention (polynomial exp, <= 2 ulp) and the positions of tokens other than x*
        smax = -np.inf
        for l in range(L):
            smax = max(smax, KT[q, tokens[off + l]])
        tot = 0.0
        n = 0
        for l in range(L):
            x = tokens[off + l]
            e = exp_scalar(KT[q, x] - smax)
            tot += e
            if x != xs:
                ph[n] = e
                nt[n] = x
                n += 1
        sphi = 0.0
        for j in range(n):
            ph[j] /= tot
            sphi += ph[j]
        # ---- dz = z - z* = sum_{x_l != x*} phi_l O[:, x_l] - sphi O[:, x*], four rows per pass
        xr = OT[xs]
        if n == 0:
            for v in range(M):
                dz[v] = 0.0
        else:
            for v in range(M):
                dz[v] = -sphi * xr[v]
            j = 0
            while j + 4 <= n:
                x0 = nt[j]
                x1 = nt[j + 1]
                x2 = nt[j + 2]
                x3 = nt[j + 3]
                a0 = ph[j]
                a1 = ph[j + 1]
                a2 = ph[j + 2]
                a3 = ph[j + 3]
                for v in range(M):
                    dz[v] = fma(a3, OT[x3, v], fma(a2, OT[x2, v], fma(a1, OT[x1, v], fma(a0, OT[x0, v], dz[v]))))
                j += 4
            if j + 2 <= n:
                x0 = nt[j]
                x1 = nt[j + 1]
                a0 = ph[j]
                a1 = ph[j + 1]
                for v in range(M):
                    dz[v] = fma(a1, OT[x1, v], fma(a0, OT[x0, v], dz[v]))
                j += 2
            if j < n:
                x0 = nt[j]
                a0 = ph[j]
                for v in range(M):
                    dz[v] = fma(a0, OT[x0, v], dz[v])
        # ---- delta_v = dz_v - dz_y (in dz), z_v - z_y = b_v + delta_v (in z)
        dzy = dz[y]
        zsy = xr[y]
        for v in range(M):
            d = dz[v] - dzy
            dz[v] = d
            z[v] = (xr[v] - zsy) + d
        dmax = max4(dz)
        z[y] = -np.inf
        mz = max4(z)                              # max_{v != y} z_v - z_y
        if abs(mz) > tie * (L + 2) and tot < np.inf:   # (tot: a NaN score makes max4 unreliable)
            correct[i] = 1 if mz < 0.0 else 0
        else:                                     # within rounding of a tie: the exact logits
            correct[i] = 1 if _exact_correct(OT, KT, tokens, off, L, y, ph, em) else 0
        # ---- log(loss_i - floor_i)
        if vertex[i] and dmax <= _DIRECT:
            if n == 0:                            # z = z*: at the floor
                lx[i] = -np.inf
                continue
            p = pair[i]
            for v in range(M):                    # eb_v expm1(delta_v), 0 at v = y
                em[v] = EB[p, v] * _expm1(dz[v])
            num = sum4(em, M)
            use_x, x, l = _vertex_excess(num, ecl[p], cpair[p], l1s[p])
            if use_x:
                xv[i] = x
            lx[i] = l
        else:
            ll = _log_loss(z, y, em)              # z holds b_v + delta_v = z_v - z_y
            lf = log_floor[i]
            lx[i] = _direct_excess(ll, lf)


@njit(**_OPTS)
def _excess_sum(lx, xv, correct):
    """(excess, log10_excess, n_correct) from the per-sentence excesses (values xv, logs lx):
    log sum_i x_i = top + log(S_v e^{-top} + sum_i e^{lx_i - top}), S_v = sum_i xv_i,
    top = max(log S_v, max_i lx_i); then minus log N. Index order throughout."""
    N = lx.shape[0]
    sv = 0.0
    top = -np.inf
    n_ok = 0
    for i in range(N):
        sv += xv[i]
        top = lx[i] if lx[i] > top else top
        n_ok += correct[i]
    log_sv = math.log(sv) if sv > 0.0 else -np.inf   # sv >= _ECL_MIN when positive
    top = log_sv if log_sv > top else top
    if not top > -np.inf:
        return 0.0, -np.inf, n_ok
    s = sv * math.exp(-top) if sv > 0.0 else 0.0
    for i in range(N):
        if lx[i] > -np.inf:
            s += math.exp(lx[i] - top)
    log_ex = top + math.log(s) - math.log(N)
    return math.exp(log_ex), log_ex / _LN10, n_ok


@njit(**_OPTS)
def _excess_serial(OT, KT, tokens, offsets, ys, xstar, pair, EB, cpair, l1s, ecl, vertex, log_floor, tie, Lmax,
                   nc, lx, xv, correct):
    M = OT.shape[0]
    N = offsets.shape[0] - 1
    _excess_chunk(OT, KT, tokens, offsets, ys, xstar, pair, EB, cpair, l1s, ecl, vertex, log_floor, tie, 0, N,
                  lx, xv, correct, np.empty(M), np.empty(M), np.empty(M), np.empty(Lmax),
                  np.empty(Lmax, dtype=np.int64))
    return _excess_sum(lx, xv, correct)


@njit(parallel=True, **_OPTS)
def _excess_parallel(OT, KT, tokens, offsets, ys, xstar, pair, EB, cpair, l1s, ecl, vertex, log_floor, tie, Lmax,
                     nc, lx, xv, correct):
    M = OT.shape[0]
    N = offsets.shape[0] - 1
    for c in prange(nc):
        _excess_chunk(OT, KT, tokens, offsets, ys, xstar, pair, EB, cpair, l1s, ecl, vertex, log_floor, tie,
                      c * N // nc, (c + 1) * N // nc, lx, xv, correct,
                      np.empty(M), np.empty(M), np.empty(M), np.empty(Lmax), np.empty(Lmax, dtype=np.int64))
    return _excess_sum(lx, xv, correct)


def excess_accuracy(OT, KT, tokens, offsets, ys, xstar, pair, EB, cpair, l1s, ecl, vertex, log_floor, tie, Lmax, nc,
                    lx, xv, correct, chooser=None):
    """Excess loss, its log10 and the train accuracy at K, in one pass over the sentences.

    Parameters
    ----------
    OT : float64 (M, M), C-contiguous
        O^T (the fixed W_ov, transposed).
    KT : float64 (M, M), C-contiguous
        K^T, the attention matrix transposed (row q holds the scores K[:, q] of query q).
    tokens, offsets : int64 (T,), (N + 1,)
        Ragged sentences.
    ys, xstar, pair : int64 (N,)
        Next tokens, optimal tokens x*, index of the pair (x*, y) into the tables.
    EB : float64 (P, M)
        ``eb[p, v] = exp(b_v - c_p)``, ``b_v = O[v, x*] - O[y, x*]``, 0 at v = y.
    cpair, l1s, ecl : float64 (P,)
        ``c_p = max_{v != y} b_v``, ``log(1 + sum_{v != y} e^{b_v})`` and ``exp(c_p - l1s_p)``
        (0 below ``_ECL_MIN``: such pairs take the log-space formula).
    vertex : bool (N,)
        Whether perfect attention is the floor of each sentence.
    log_floor : float64 (N,)
        Per-sentence log-floors (read for sentences taking the direct branch).
    tie : float
        ``_TIE * eps * max|O|`` (times L + 2 per sentence: the exact-recheck band).
    Lmax : int
        Longest sentence.
    nc : int
        Chunks (:func:`metric_chunks`); 1 runs serially.
    lx, xv : float64 (N,), correct : uint8 (N,)
        Output scratch (overwritten): per-sentence log-excess or excess, and correctness.
    chooser : refimpl.kernels._Chooser, optional
        Picks the serial or the threaded pass by timing them (same bits); without it the
        threaded pass runs whenever nc > 1.

    Returns
    -------
    excess : float
        ``L(O, K) - L_floor(O) = (1/N) sum_i exp(lx_i)`` (underflows to 0.0 below 5e-324).
    log10_excess : float
        ``(logsumexp_i lx_i - log N) / log 10`` (-inf when every sentence is at its floor).
    n_correct : int
        Number of sentences whose logit y is strictly the largest.
    """
    args = (OT, KT, tokens, offsets, ys, xstar, pair, EB, cpair, l1s, ecl, vertex, log_floor, tie, Lmax, nc, lx, xv,
            correct)
    ex, l10, n_ok = _drive((_excess_serial, _excess_parallel), args, nc, chooser)
    return float(ex), float(l10), int(n_ok)


# ===================================================================== stage 2, structured O
# O as column constants plus a few exceptions (refimpl.kernels_sparse.detect): column x is
# cst[x] except at rows erow[eoff[x]:eoff[x + 1]] (values evals). Per sentence the rows outside
# S = {y} + E_{x*} + (exceptions of the sentence's tokens) all share one value of dz, delta, z - z_y
# and eb (the "rest", n_rest = M - |S| rows), so every sum over v is n_rest times that value plus
# |S| terms; each value is formed by the operations of _excess_chunk (the same bits), and only
# the order of the sums over v differs (a product for the rest instead of n_rest additions).
@njit(**_INLINE)
def _exact_correct_s(cst, eoff, erow, evals, Kp, slot, tokens, off, L, y, ph, srows, ns, n_rest):
    """:func:`_exact_correct` on the structure: phi as kernels.attention forms it (scores
    Kp[slot[off + l]] = K[x_l, q]), z_v for v in S (srows[:ns], srows[0] = y) and the one value of
    the rest, each formed as kernels.logits forms it."""
    smax = -np.inf
    for l in range(L):
        smax = max(smax, Kp[slot[off + l]])
    tot = 0.0
    for l in range(L):
        ph[l] = math.exp(Kp[slot[off + l]] - smax)
        tot += ph[l]
    for l in range(L):
        ph[l] /= tot
    zr = 0.0
    for l in range(L):
        zr += ph[l] * cst[tokens[off + l]]
    top = zr if n_rest > 0 else -np.inf
    zy = 0.0
    for k in range(ns):
        v = srows[k]
        zv = 0.0
        for l in range(L):
            zv += ph[l] * _entry(cst, eoff, erow, evals, tokens[off + l], v)
        if k == 0:
            zy = zv
        elif zv > top:
            top = zv
    return zy > top


@njit(_nrt=False, **_OPTS)
def _excess_chunk_s(cst, eoff, erow, evals, Kp, slot, tokens, offsets, ys, xstar, pair, EB, cpair, l1s, ecl, vertex,
                    log_floor, tie, lo, hi, lx, xv, correct, mark, pos, dzr, srows, zs, oxs, keep, ph, nt):
    """:func:`_excess_chunk` for a structured O. Scores are read as Kp[slot[off + l]] = K[x_l, q]
    (Kp (P,) K at the sentences' (key, query) pairs, :func:`refimpl.kernels_sparse.gather`; the
    same values as KT[q, x_l]). mark, pos int64 (M,) (mark initially -1), dzr (M,): per-row
    scratch (pos[v]: the index of row v in srows); srows int64, zs and oxs float64
    (>= 1 + (Lmax + 1) kmax,): the special rows, their dz and their O[v, x*]; keep (kmax,),
    ph (Lmax,), nt int64 (Lmax,)."""
    M = cst.shape[0]
    for i in range(lo, hi):
        off = offsets[i]
        L = offsets[i + 1] - off
        y = ys[i]
        xs = xstar[i]
        xv[i] = 0.0
        smax = -np.inf
        for l in range(L):
            smax = max(smax, Kp[slot[off + l]])
        tot = 0.0
        n = 0
        for l in range(L):
            x = tokens[off + l]
            e = exp_scalar(Kp[slot[off + l]] - smax)
            tot += e
            if x != xs:
                ph[n] = e
                nt[n] = x
                n += 1
        sphi = 0.0
        for j in range(n):
            ph[j] /= tot
            sphi += ph[j]
        # ---- the special rows: y, the exceptions of x*, of the other tokens (and of x* again below)
        ns = 1
        srows[0] = y
        mark[y] = i
        pos[y] = 0
        for j in range(-1, n):
            x = xs if j < 0 else nt[j]
            for k in range(eoff[x], eoff[x + 1]):
                v = erow[k]
                if mark[v] != i:
                    mark[v] = i
                    pos[v] = ns
                    srows[ns] = v
                    ns += 1
        n_rest = M - ns
        cxs = cst[xs]                             # oxs[k] = O[v_k, x*]
        for k in range(ns):
            oxs[k] = cxs
        for k in range(eoff[xs], eoff[xs + 1]):
            oxs[pos[erow[k]]] = evals[k]
        # ---- dz on S and on the rest: -sphi O[v, x*], then one fma per other position (the dense order)
        if n == 0:
            dz_rest = 0.0
            for k in range(ns):
                dzr[srows[k]] = 0.0
        else:
            dz_rest = special_chain(cst, eoff, erow, evals, nt, 0, -1, n, xs, -sphi, ph, pos, ns, zs, keep)
            for k in range(ns):
                dzr[srows[k]] = zs[k]
        dzy = dzr[y]
        zsy = oxs[0]
        d_rest = dz_rest - dzy
        z_rest = (cxs - zsy) + d_rest
        dmax = d_rest if n_rest > 0 else -np.inf
        mz = z_rest if n_rest > 0 else -np.inf
        for k in range(ns):                       # dzr[v] <- delta_v; z_v - z_y kept only for the max
            v = srows[k]
            d = dzr[v] - dzy
            dzr[v] = d
            dmax = d if d > dmax else dmax
            if k > 0:
                zv = (oxs[k] - zsy) + d
                mz = zv if zv > mz else mz
        if abs(mz) > tie * (L + 2) and tot < np.inf:
            correct[i] = 1 if mz < 0.0 else 0
        else:
            correct[i] = 1 if _exact_correct_s(cst, eoff, erow, evals, Kp, slot, tokens, off, L, y, ph, srows, ns,
                                               n_rest) else 0
        # ---- log(loss_i - floor_i)
        if vertex[i] and dmax <= _DIRECT:
            if n == 0:
                lx[i] = -np.inf
                continue
            p = pair[i]
            num = 0.0
            for k in range(1, ns):
                v = srows[k]
                num += EB[p, v] * _expm1(dzr[v])
            if n_rest > 0:
                r = 0                             # a row of the rest (eb is the same on all of them)
                while mark[r] == i:
                    r += 1
                num = fma(float(n_rest), EB[p, r] * _expm1(d_rest), num)
            use_x, x, l = _vertex_excess(num, ecl[p], cpair[p], l1s[p])
            if use_x:
                xv[i] = x
            lx[i] = l
        else:
            # _log_loss over D_v = z_v - z_y, v != y: the rest is one value n_rest times
            amax = z_rest if n_rest > 0 else -np.inf
            for k in range(1, ns):
                v = srows[k]
                zv = (oxs[k] - zsy) + dzr[v]
                dzr[v] = zv
                amax = zv if zv > amax else amax
            m = 0.0
            rest = 0.0
            if n_rest > 0:
                if z_rest == amax:
                    m += n_rest
                else:
                    rest = n_rest * exp_clamped(z_rest - amax)
            for k in range(1, ns):
                zv = dzr[srows[k]]
                if zv == amax:
                    m += 1.0
                else:
                    rest += exp_clamped(zv - amax)
            a = (math.log1p(rest / m) + math.log(m)) + amax
            if a < -20.0:
                ll = a + math.log1p(-math.exp(a) / 2.0)
            else:
                ll = math.log(_logaddexp0(a))
            lf = log_floor[i]
            lx[i] = _direct_excess(ll, lf)


@njit(**_OPTS)
def _run_excess_s(cst, eoff, erow, evals, Kp, slot, tokens, offsets, ys, xstar, pair, EB, cpair, l1s, ecl, vertex,
                  log_floor, tie, Lmax, kmax, nc, c, lx, xv, correct):
    M = cst.shape[0]
    N = offsets.shape[0] - 1
    _excess_chunk_s(cst, eoff, erow, evals, Kp, slot, tokens, offsets, ys, xstar, pair, EB, cpair, l1s, ecl, vertex,
                    log_floor, tie, c * N // nc, (c + 1) * N // nc, lx, xv, correct,
                    np.full(M, -1, dtype=np.int64), np.empty(M, dtype=np.int64), np.empty(M),
                    np.empty(1 + (Lmax + 1) * kmax, dtype=np.int64), np.empty(1 + (Lmax + 1) * kmax),
                    np.empty(1 + (Lmax + 1) * kmax), np.empty(kmax), np.empty(Lmax), np.empty(Lmax, dtype=np.int64))


@njit(**_OPTS)
def _excess_serial_s(cst, eoff, erow, evals, Kp, slot, tokens, offsets, ys, xstar, pair, EB, cpair, l1s, ecl, vertex,
                     log_floor, tie, Lmax, kmax, nc, lx, xv, correct):
    for c in range(nc):
        _run_excess_s(cst, eoff, erow, evals, Kp, slot, tokens, offsets, ys, xstar, pair, EB, cpair, l1s, ecl, vertex,
                      log_floor, tie, Lmax, kmax, nc, c, lx, xv, correct)
    return _excess_sum(lx, xv, correct)


@njit(parallel=True, **_OPTS)
def _excess_parallel_s(cst, eoff, erow, evals, Kp, slot, tokens, offsets, ys, xstar, pair, EB, cpair, l1s, ecl, vertex,
                       log_floor, tie, Lmax, kmax, nc, lx, xv, correct):
    for c in prange(nc):
        _run_excess_s(cst, eoff, erow, evals, Kp, slot, tokens, offsets, ys, xstar, pair, EB, cpair, l1s, ecl, vertex,
                      log_floor, tie, Lmax, kmax, nc, c, lx, xv, correct)
    return _excess_sum(lx, xv, correct)


def excess_accuracy_structured(rep, Kp, slot, tokens, offsets, ys, xstar, pair, EB, cpair, l1s, ecl, vertex, log_floor,
                               tie, Lmax, nc, lx, xv, correct, chooser=None):
    """:func:`excess_accuracy` for an O given as column constants plus exceptions.

    Parameters
    ----------
    rep : tuple
        ``(cst (M,), eoff (M + 1,), erow (E,), evals (E,), edif (E,))`` from
        :func:`refimpl.kernels_sparse.detect` (bitwise the fixed O).
    Kp, slot, tokens, offsets, ys, xstar, pair, EB, cpair, l1s, ecl, vertex, log_floor, tie, Lmax, nc, lx, xv, correct, chooser
        As in :func:`excess_accuracy`.

    Returns
    -------
    excess, log10_excess, n_correct
        As :func:`excess_accuracy`: the per-sentence logits, dz and delta are the same bits
        (the same operations in the same order); sums over the M rows take the rows outside
        S = {y} + E_{x*} + (exceptions of the sentence's tokens), which share one value, as one
        product, so they differ from the dense sums by rounding (<= ~M eps relative).
        O(L + |S| (L + max |E_x|)) per sentence instead of O(L M).
    """
    cst, eoff, erow, evals, _ = rep
    kmax = max(int(np.diff(eoff).max(initial=0)), 1)
    args = (cst, eoff, erow, evals, Kp, slot, tokens, offsets, ys, xstar, pair, EB, cpair, l1s, ecl, vertex, log_floor,
            tie, Lmax, kmax, nc, lx, xv, correct)
    ex, l10, n_ok = _drive((_excess_serial_s, _excess_parallel_s), args, nc, chooser)
    return float(ex), float(l10), int(n_ok)


# ===================================================================== accuracy alone (joint trainer)
@njit(_nrt=False, **_OPTS)
def _accuracy_chunk(OT, KT, tokens, offsets, ys, lo, hi, correct, z, ph):
    for i in range(lo, hi):
        off = offsets[i]
        L = offsets[i + 1] - off
        correct[i] = 1 if _exact_correct(OT, KT, tokens, off, L, ys[i], ph, z) else 0


@njit(parallel=True, **_OPTS)
def _accuracy_parallel(OT, KT, tokens, offsets, ys, Lmax, nc, correct):
    M = OT.shape[0]
    N = offsets.shape[0] - 1
    for c in prange(nc):
        _accuracy_chunk(OT, KT, tokens, offsets, ys, c * N // nc, (c + 1) * N // nc, correct,
                        np.empty(M), np.empty(Lmax))
    n_ok = 0
    for i in range(N):
        n_ok += correct[i]
    return n_ok


@njit(**_OPTS)
def _accuracy_serial(OT, KT, tokens, offsets, ys, Lmax, nc, correct):
    M = OT.shape[0]
    N = offsets.shape[0] - 1
    _accuracy_chunk(OT, KT, tokens, offsets, ys, 0, N, correct, np.empty(M), np.empty(Lmax))
    n_ok = 0
    for i in range(N):
        n_ok += correct[i]
    return n_ok


def logit_accuracy(OT, KT, tokens, offsets, ys, Lmax, nc, correct, chooser=None):
    """Number of sentences whose logit y is strictly the largest, no (N, M) array.

    ``z_i = sum_l phi_il O[:, x_il]`` formed exactly as :func:`refimpl.kernels.logits` (and phi
    as :func:`refimpl.kernels.attention`), so the count equals
    ``sum(logit_margins(logits(O, K, ...), y) > 0)`` bit for bit. OT = O^T, KT = K^T : float64
    (M, M) C-contiguous; tokens, offsets, ys ragged int64; correct : uint8 (N,) scratch;
    ``chooser`` as in :func:`excess_accuracy`.
    """
    return int(_drive((_accuracy_serial, _accuracy_parallel), (OT, KT, tokens, offsets, ys, Lmax, nc, correct), nc,
                      chooser))


# ===================================================================== stage 1, matrices, constraints
@njit(**_OPTS)
def colloc_margins(O, xs, ys):
    """(min_margin, n_correct) over the collocations, no (n_c, M) copy.

    margin_j = O[y_j, x_j] - max_{v != y_j} O[v, x_j] (+inf when M = 1), O : float64 (M, M),
    xs, ys : int64 (n_c,). Row by row over O (contiguous reads). min_margin is +inf when n_c = 0.
    The same values as ``logit_margins(O[:, xs].T, ys)`` (a max and one subtraction: exact).
    """
    M = O.shape[0]
    n = xs.shape[0]
    zy = np.empty(n)
    zo = np.full(n, -np.inf)
    for v in range(M):
        for j in range(n):
            val = O[v, xs[j]]
            if v == ys[j]:
                zy[j] = val
            elif val > zo[j]:
                zo[j] = val
    low = np.inf
    n_ok = 0
    for j in range(n):
        m = zy[j] - zo[j]
        low = m if m < low else low
        n_ok += 1 if m > 0.0 else 0
    return low, n_ok


@njit(**_INLINE)
def _factors(f, g, h, kind, scale, v):
    """(a, b) with a b = kind 0: f_v^2;  1: (f_v - g_v)^2;  2: (f_v - g_v) h_v;
    3: (f_v / scale - h_v)^2;  4: f_v h_v;  5: (f_v / scale)^2;  6: ((f_v - g_v) / scale)^2
    (5 and 6: kinds 0 and 1 divided by their largest |a|, :func:`_root_sum`)."""
    if kind == 0:
        return f[v], f[v]
    if kind == 1:
        a = f[v] - g[v]
        return a, a
    if kind == 5:
        a = f[v] / scale
        return a, a
    if kind == 6:
        a = (f[v] - g[v]) / scale
        return a, a
    if kind == 2:
        return f[v] - g[v], h[v]
    if kind == 3:
        a = f[v] / scale - h[v]
        return a, a
    return f[v], h[v]


@njit(**_INLINE)
def _sum4(f, g, h, kind, scale):
    """sum_v of the products of :func:`_factors` over flat (n,) arrays: four interleaved
    partial sums of fused multiply-adds, combined in a fixed order."""
    n = f.shape[0]
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    v = 0
    while v + 4 <= n:
        a0, b0 = _factors(f, g, h, kind, scale, v)
        a1, b1 = _factors(f, g, h, kind, scale, v + 1)
        a2, b2 = _factors(f, g, h, kind, scale, v + 2)
        a3, b3 = _factors(f, g, h, kind, scale, v + 3)
        s0 = fma(a0, b0, s0)
        s1 = fma(a1, b1, s1)
        s2 = fma(a2, b2, s2)
        s3 = fma(a3, b3, s3)
        v += 4
    while v < n:
        a0, b0 = _factors(f, g, h, kind, scale, v)
        s0 = fma(a0, b0, s0)
        v += 1
    return (s0 + s1) + (s2 + s3)


# sums of squares inside this range lost nothing to underflow that matters (a square below
# 2^-1022 is < 2^-1022 / 2^-830 of the sum) and cannot have overflowed
_SAFE_SUMSQ_LO = 2.0 ** -830
_SAFE_SUMSQ_HI = 2.0 ** 1000


@njit(**_INLINE)
def _root_sum(f, g, h, kind):
    """sqrt of :func:`_sum4` of kind 0 (||f||) or 1 (||f - g||) without overflow or underflow:
    the same bits when the sum of squares lies in [2^-830, 2^1000], else m sqrt(sum (a_v/m)^2)
    with m = max |a_v| (kinds 5, 6; entries of 1e-170 or 1e160 keep their true norm). NaN for
    a NaN entry, inf for an inf entry."""
    s = _sum4(f, g, h, kind, 1.0)
    if _SAFE_SUMSQ_LO <= s <= _SAFE_SUMSQ_HI or s != s:
        return math.sqrt(s)
    m = 0.0
    for v in range(f.shape[0]):
        a, _ = _factors(f, g, h, kind, 1.0, v)
        m = abs(a) if abs(a) > m else m
    if m == 0.0 or m == np.inf:
        return math.sqrt(s)
    return m * math.sqrt(_sum4(f, g, h, kind + 5, m))   # divided, not times 1/m (a subnormal m)


@njit(**_OPTS)
def fro_norm(a):
    """||a||_F of a C-contiguous float64 array of any shape without overflow or underflow:
    ``sqrt(sumsq4(a))`` bit for bit in the ordinary range (:func:`_root_sum`)."""
    f = a.ravel()
    return _root_sum(f, f, f, 0)


@njit(**_OPTS)
def _matrix_metrics(W, W0, H, has_hat):
    f = W.ravel()
    f0 = W0.ravel()
    h = H.ravel()
    nrm = _root_sum(f, f0, h, 0)
    dist0 = _root_sum(f, f0, h, 1)
    if not has_hat:
        return nrm, dist0, np.nan, np.nan, np.nan, 0.0
    proj = _sum4(f, f0, h, 2, 1.0)
    if nrm == 0.0:
        return nrm, dist0, np.nan, np.nan, np.nan, proj
    dist = math.sqrt(_sum4(f, f0, h, 3, nrm))   # W/||W|| - h: O(1) entries
    return nrm, dist0, _sum4(f, f0, h, 4, 1.0) / nrm, 0.5 * dist * dist, dist, proj


def matrix_metrics(W, W0, W_hat):
    """Frobenius metrics of an iterate, compiled (no BLAS call, fixed-order sums).

    Parameters
    ----------
    W, W0 : float64 (M, M), C-contiguous
        The iterate and the stage's initial iterate.
    W_hat : float64 (M, M) or None
        The unit max-margin direction (None when the max-margin matrix is 0).

    Returns
    -------
    tuple of float
        ``(||W||, ||W - W0||, cos(W, W_hat), 1 - cos = ||W/||W|| - W_hat||^2 / 2,
        ||W/||W|| - W_hat||, <W, W_hat> - <W0, W_hat>)``; the three direction values are NaN
        when W = 0 or W_hat is None, and the projection is 0.0 when W_hat is None.
    """
    has = W_hat is not None
    return _matrix_metrics(W, W0, W_hat if has else W, has)


@njit(**_OPTS)
def constraint_margin(K, star, other, q):
    """min_j K[star_j, q_j] - K[other_j, q_j] over int64 (n,) constraint arrays; +inf when n = 0.

    The same value as :func:`refimpl.trajectory.attention_margin` (exact: one subtraction each)."""
    low = np.inf
    for j in range(star.shape[0]):
        m = K[star[j], q[j]] - K[other[j], q[j]]
        low = m if m < low else low
    return low
