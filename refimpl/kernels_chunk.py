"""The compiled sentence loop behind :mod:`refimpl.kernels` (formulas in that module's docstring).

``_chunk`` accumulates one contiguous chunk of sentences into its own scratch with its
own running scale; ``_reduce`` combines the chunks in index order and divides out the
smallest scale; ``_drive_serial`` and ``_drive_parallel`` run the chunks on one thread
or under ``prange``. Only :mod:`refimpl.kernels` calls these.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .kernels_math import (add_scaled, as_bits, dot2, dots4, exp_scalar, exp_shifted, fma,
                           from_bits, max4, scale_inplace, sum4, sumsq4)

_SLACK = 300.0            # a chunk rescales its accumulator when a term exceeds it by e^300
_SERIES_S = 2.0 ** -8     # below: log1p(S)/S = sum_k (-S)^k/(k+1), k <= 6 (next term < 2e-18)
_MANTISSA = (1 << 52) - 1
_ONE_BITS = 1023 << 52
_LN2 = 0.6931471805599453
_OPTS = dict(cache=True, fastmath=False, nogil=True, boundscheck=False, error_model="numpy")


# ===================================================================== per-sentence pieces
# Shared by the dense chunk below and the structured chunks of refimpl.kernels_sparse;
# inlined, so each caller compiles them into its own loop with the same operations.
@njit(inline="always", **_OPTS)
def attend(s, tokens, off, L, u, ph):
    """Attention of one sentence from its scores ``s[:L]`` (filled by the caller).

    Fills ``u[:L]`` (1 on top positions, ``e^{s_l - ref}`` elsewhere) and ``ph[:L]`` (phi);
    returns ``(smax, ltop, multi, ssec, gap, delta, rho, ntop, usum, U)``: the top score, the
    first position holding it, whether another token ties it, the best score below it,
    whether the gap form applies (one top token and some other score), the gap delta, rho =
    e^{-delta}, the number of top positions, sum of the other u, and U = ntop + rho usum
    (module docstring of :mod:`refimpl.kernels`, "Attention gap"). Which positions hold the
    top score is data-dependent: selects, not branches.
    """
    smax = -np.inf
    ltop = 0
    for l in range(L):
        ltop = l if s[l] > smax else ltop
        smax = s[l] if s[l] > smax else smax
    top = tokens[off + ltop]
    multi = False
    ssec = -np.inf
    for l in range(L):
        is_top = s[l] == smax
        multi = multi | (is_top & (tokens[off + l] != top))
        ssec = max(ssec, -np.inf if is_top else s[l])
    gap = not multi and ssec > -np.inf
    delta = smax - ssec if gap else 0.0
    rho = exp_scalar(-delta) if gap else 1.0
    ref = ssec if gap else smax
    ntop = 0
    usum = 0.0
    for l in range(L):
        if s[l] == smax:
            u[l] = 1.0
            ntop += 1
        else:
            u[l] = exp_scalar(s[l] - ref)
            usum += u[l]
    U = ntop + rho * usum
    for l in range(L):
        ph[l] = (u[l] if s[l] == smax else u[l] * rho) / U
    return smax, ltop, multi, ssec, gap, delta, rho, ntop, usum, U


@njit(inline="always", **_OPTS)
def sentence_loss(m, sumw, lp, n_neg, neg_m, prod, prod_exp, mp_min, a_l, ls):
    """One sentence's loss into a chunk's running sums, from its logit margin m = z_y - zmax
    and ``sumw = sum_{v != y} e^{z_v - zmax}``.

    m >= 0: p_v = e^{-m} w_v / (1 + S), S = e^{-m} sumw, loss = log1p(S) (its series below
    2^-8, no libm call), added to ``lp`` and, as loss e^{a_l}, to the scaled sum ``ls``.
    m < 0: p_v = w_v / den, den = e^m + sumw in [1, M]; loss = -m + log den is summed at the end
    (:func:`negative_losses`) as ``neg_m`` plus one log of the running product
    ``prod 2^prod_exp`` of the den. ``a_l`` is the chunk's loss scale, lowered (and ``ls``
    rescaled) when mpos = max(m, 0) falls more than e^300 below it.
    Returns ``(cr, mpos, lp, n_neg, neg_m, prod, prod_exp, mp_min, a_l, ls)``, cr the factor
    with r = p - e_y = cr e^{-mpos} w.
    """
    if m >= 0.0:
        S = exp_scalar(-m) * sumw
        cr = 1.0 / (1.0 + S)
        if S < _SERIES_S:                     # log1p(S)/S by its series, no libm call
            ratio = fma(fma(fma(fma(fma(fma(1.0 / 7.0, S, -1.0 / 6.0), S, 0.2), S, -0.25),
                                S, 1.0 / 3.0), S, -0.5), S, 1.0)
            loss_i = ratio * S
        else:
            loss_i = math.log1p(S)
            ratio = loss_i / S
        mpos = m
        lp += loss_i
    else:
        den = exp_scalar(m) + sumw
        cr = 1.0 / den
        ratio = 0.0
        n_neg += 1
        neg_m += -m
        pb = as_bits(prod * den)              # prod in [1, 2) times 2^prod_exp
        prod_exp += (pb >> 52) - 1023
        prod = from_bits((pb & _MANTISSA) | _ONE_BITS)
        mpos = 0.0
    mp_min = min(mp_min, mpos)
    if mpos < a_l - _SLACK:                   # rescale the loss accumulator (also first term)
        ls = ls * exp_scalar(mpos - a_l) if a_l < np.inf else 0.0
        a_l = mpos
    if m >= 0.0:                              # ls += loss_i e^{a_l}, loss_i e^{m} = ratio sum w
        lhat = ratio * sumw
        ls += lhat * exp_scalar(a_l - mpos) if mpos != a_l else lhat
    return cr, mpos, lp, n_neg, neg_m, prod, prod_exp, mp_min, a_l, ls


@njit(inline="always", **_OPTS)
def negative_losses(n_neg, neg_m, prod, prod_exp, lp, ls, a_l):
    """``(lp, ls)`` with the losses of the chunk's sentences of negative margin added:
    sum -m_i + log prod den_i (:func:`sentence_loss`)."""
    if n_neg > 0:
        loss_neg = neg_m + (math.log(prod) + prod_exp * _LN2)
        lp += loss_neg
        ls += loss_neg * exp_scalar(a_l)      # a_l <= 0 + _SLACK: finite
    return lp, ls


@njit(inline="always", **_OPTS)
def score_terms(g, s, u, ph, L, smax, ltop, gap, ntop, usum, rho, U, ck):
    """Overwrite ``g[:L]`` (g_l = O[:, x_l]^T r in the caller's units) with the dL/ds_l terms
    times ``ck``: phi_l (g_l - gbar), or with a gap the e^{delta}-free form of the module
    docstring of :mod:`refimpl.kernels` (top positions: sum_other u (g_* - g_m) / U^2;
    others: u_l (ntop (g_l - g_*) + rho sum_other u_m (g_l - g_m)) / U^2)."""
    if gap:
        gs = g[ltop]                          # g of the top token (all its positions agree)
        a1 = 0.0
        a2 = 0.0
        for l in range(L):                    # top positions add u (gs - g) = +0.0 to a1
            is_top = s[l] == smax
            a1 += u[l] * (gs - g[l])
            a2 += 0.0 if is_top else u[l] * g[l]
        U2 = U * U
        for l in range(L):
            inner = ntop * (g[l] - gs) + rho * (g[l] * usum - a2)
            g[l] = ck * a1 / U2 if s[l] == smax else ck * u[l] * inner / U2
    else:
        gbar = 0.0
        for l in range(L):
            gbar += ph[l] * g[l]
        for l in range(L):
            g[l] = ck * ph[l] * (g[l] - gbar)


# ===================================================================== one chunk
# _nrt=False: _chunk allocates nothing, so it needs no reference counting; with it, every
# inlined helper taking an array incremented and decremented that array's count once per
# sentence (measured: 10-12% of a size-S step in NRT_incref/NRT_decref).
@njit(_nrt=False, **_OPTS)
def _chunk(OT, K, tokens, offsets, ys, lo, hi, want_o, want_k, GOT, GK, stats, z, w, s, u, ph, g):
    """Accumulate sentences lo..hi-1 into GOT (M, M) = (dL/dO)^T and GK (M, M) = dL/dK.

    OT = O^T (C-contiguous, so a column of O is a row of OT), (M, Mp) with Mp >= M: columns
    from M on are zero padding (:func:`refimpl.kernels._transposed`), so the logits, their
    maximum and their exponentials run over whole SIMD vectors; K is read as K[x_l, q].
    tokens : int64 (T,) ragged, sentence i is tokens[offsets[i]:offsets[i + 1]].
    stats (6,) receives [a_g, a_l, lam_min, mpos_min, scaled loss sum, float64 loss sum]:
    GOT, GK hold sum_i G_i e^{a_g}; stats[4] holds sum_i loss_i e^{a_l}.
    z, w : (Mp,) and s, u, ph, g : (Lmax,) scratch. Scalar exponentials use
    :func:`exp_scalar` (no libm call in the normal range).
    """
    M = OT.shape[0]
    Mp = OT.shape[1]
    a_g = np.inf
    a_l = np.inf
    lam_min = np.inf
    mp_min = np.inf
    ls = 0.0
    lp = 0.0
    n_neg = 0                                     # sentences with m_i < 0 (mpos = 0):
    neg_m = 0.0                                   # sum of their -m_i
    prod = 1.0                                    # prod of their den_i = prod * 2^prod_exp
    prod_exp = 0
    for i in range(lo, hi):
        off = offsets[i]
        L = offsets[i + 1] - off
        q = tokens[off + L - 1]
        y = ys[i]
        # ---- attention: scores, top token, gap delta, phi
        for l in range(L):
            s[l] = K[tokens[off + l], q]
        smax, ltop, multi, ssec, gap, delta, rho, ntop, usum, U = attend(s, tokens, off, L, u, ph)
        # ---- logits z = sum_l phi_l O[:, x_l], two rows per pass (fixed order l = 0, 1, ...)
        x0 = tokens[off + 0]
        a0 = ph[0]
        for v in range(Mp):
            z[v] = a0 * OT[x0, v]
        l = 1
        while l + 2 <= L:
            x0 = tokens[off + l]
            x1 = tokens[off + l + 1]
            a0 = ph[l]
            a1 = ph[l + 1]
            for v in range(Mp):
                z[v] = fma(a1, OT[x1, v], fma(a0, OT[x0, v], z[v]))
            l += 2
        if l < L:
            x0 = tokens[off + l]
            a0 = ph[l]
            for v in range(Mp):
                z[v] = fma(a0, OT[x0, v], z[v])
        # ---- residual r = p - e_y in scaled form: w_v = e^{z_v - zmax} (v != y), w_y = -sum
        zy = z[y]
        z[y] = -np.inf
        for v in range(M, Mp):                    # the padding: w_v = 0 there
            z[v] = -np.inf
        zmax = max4(z)
        exp_shifted(z, zmax, w)                   # one exp per logit; w_y = e^{-inf} = 0
        sumw = sum4(w, M)
        w[y] = -sumw                              # r_y = -(sum_{v != y} p_v), never p_y - 1
        m = zy - zmax
        cr, mpos, lp, n_neg, neg_m, prod, prod_exp, mp_min, a_l, ls = sentence_loss(
            m, sumw, lp, n_neg, neg_m, prod, prod_exp, mp_min, a_l, ls)
        if not (want_o or want_k):
            continue
        if not want_o and not multi and ssec == -np.inf:
            continue                              # one distinct token: dL/dK is exactly 0, no scale
        lam = mpos + (delta if not want_o else 0.0)
        lam_min = min(lam_min, lam)
        if lam < a_g - _SLACK:
            f = exp_scalar(lam - a_g) if a_g < np.inf else 0.0
            if a_g < np.inf:
                for a1 in range(GOT.shape[0]):
                    for a2 in range(GOT.shape[1]):
                        GOT[a1, a2] *= f
                for a1 in range(GK.shape[0]):
                    for a2 in range(GK.shape[1]):
                        GK[a1, a2] *= f
            a_g = lam
        cg = exp_scalar(a_g - lam) * cr if lam != a_g else cr   # e^{a_g} r = cg * w
        if want_o:
            for l in range(L):
                xl = tokens[off + l]
                a = cg * ph[l]
                for v in range(M):
                    GOT[xl, v] += a * w[v]
        if not want_k:
            continue
        ck = cg * rho if want_o else cg           # joint: K terms carry e^{-delta} explicitly
        l = 0                                     # g_l = O[:, x_l]^T r (in units of cr e^{-mpos})
        while l + 4 <= L:
            dots4(OT, tokens[off + l], tokens[off + l + 1], tokens[off + l + 2], tokens[off + l + 3], w, g, l, M)
            l += 4
        while l < L:
            g[l] = dot2(OT, tokens[off + l], w, M)
            l += 1
        score_terms(g, s, u, ph, L, smax, ltop, gap, ntop, usum, rho, U, ck)
        for l in range(L):
            GK[tokens[off + l], q] += g[l]
    lp, ls = negative_losses(n_neg, neg_m, prod, prod_exp, lp, ls, a_l)
    stats[0] = a_g
    stats[1] = a_l
    stats[2] = lam_min
    stats[3] = mp_min
    stats[4] = ls
    stats[5] = lp


@njit(**_OPTS)
def _reduce(GOT, GK, stats, N, unit, GO_out, GK_out):
    """Fixed-order reduction of the chunks into GO_out (= (dL/dO)^T) and GK_out, (M, M) each
    (or (0, 0) when not wanted). Returns (log_scale, loss, log10_loss, norm); with ``unit``
    the pair is divided in place by its joint Frobenius norm (the products of
    :func:`normalize`) and ``norm`` is that norm, else norm = -1. Outputs are passed in
    rather than returned: boxing each returned array costs ~0.7 us per call.
    """
    nc = stats.shape[0]
    lam_min = np.inf
    mp_min = np.inf
    for c in range(nc):
        lam_min = min(lam_min, stats[c, 2])
        mp_min = min(mp_min, stats[c, 3])
    GO_out[:] = 0.0
    GK_out[:] = 0.0
    ls = 0.0
    lp = 0.0
    for c in range(nc):
        lp += stats[c, 5]
        if stats[c, 1] < np.inf:
            ls += stats[c, 4] * math.exp(mp_min - stats[c, 1])
        if stats[c, 0] < np.inf:
            f = math.exp(lam_min - stats[c, 0]) / N
            add_scaled(GO_out, f, GOT[c])          # no M x M temporary per chunk
            add_scaled(GK_out, f, GK[c])
    log10_loss = (math.log(ls) - mp_min - math.log(N)) / math.log(10.0)
    log_scale = -lam_min if lam_min < np.inf else 0.0
    norm = -1.0
    if unit:
        norm = math.sqrt(sumsq4(GO_out) + sumsq4(GK_out))
        if norm > 0.0:
            scale_inplace(GO_out, 1.0 / norm)
            scale_inplace(GK_out, 1.0 / norm)
    return log_scale, lp / N, log10_loss, norm


@njit(**_OPTS)
def _scratch(nc, M, want_o, want_k):
    """Per-chunk accumulators: GOT, GK (nc, M, M) (or (nc, 0, 0) when not wanted) and stats (nc, 6)."""
    mo = M if want_o else 0
    mk = M if want_k else 0
    return np.zeros((nc, mo, mo)), np.zeros((nc, mk, mk)), np.zeros((nc, 6))


@njit(**_OPTS)
def _run_chunk(OT, K, tokens, offsets, ys, Lmax, want_o, want_k, nc, c, GOT, GK, stats):
    """Chunk c of nc (sentences c N / nc .. (c+1) N / nc) into its own scratch slices;
    Lmax bounds the per-sentence scratch."""
    N = offsets.shape[0] - 1
    M = OT.shape[0]
    Mp = OT.shape[1]
    _chunk(OT, K, tokens, offsets, ys, c * N // nc, (c + 1) * N // nc, want_o, want_k,
           GOT[c], GK[c], stats[c], np.empty(Mp), np.empty(Mp), np.empty(Lmax),
           np.empty(Lmax), np.empty(Lmax), np.empty(Lmax))


@njit(**_OPTS)
def _drive_serial(OT, K, tokens, offsets, ys, Lmax, want_o, want_k, nc, unit, GO_out, GK_out):
    """All chunks in order on one thread (used when nc == 1)."""
    N = offsets.shape[0] - 1
    M = OT.shape[0]
    GOT, GK, stats = _scratch(nc, M, want_o, want_k)
    for c in range(nc):
        _run_chunk(OT, K, tokens, offsets, ys, Lmax, want_o, want_k, nc, c, GOT, GK, stats)
    return _reduce(GOT, GK, stats, N, unit, GO_out, GK_out)


@njit(parallel=True, **_OPTS)
def _drive_parallel(OT, K, tokens, offsets, ys, Lmax, want_o, want_k, nc, unit, GO_out, GK_out):
    """Chunks spread over threads; each writes only its own slices, then a fixed-order reduction."""
    N = offsets.shape[0] - 1
    M = OT.shape[0]
    GOT, GK, stats = _scratch(nc, M, want_o, want_k)
    for c in prange(nc):
        _run_chunk(OT, K, tokens, offsets, ys, Lmax, want_o, want_k, nc, c, GOT, GK, stats)
    return _reduce(GOT, GK, stats, N, unit, GO_out, GK_out)
