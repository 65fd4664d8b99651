"""The stage-2 and stage-1 directions for an O that is column constants plus a few exceptions
(private to :mod:`refimpl.kernels`; :func:`stage1_direction` at the end has its own docstring).

Structure. Column x of O (float64 (M, M)) is stored as a constant ``c_x`` and the sorted
list ``E_x`` of the rows whose entries differ from it *bitwise* (:func:`detect`):

    O[v, x] = c_x                 for v not in E_x
    O[v, x] = val_j,  v = row_j   for the j-th exception of x   (dif_j = val_j - c_x)

After stage 1 from zero initialisation every column is exactly of this form with one
exception (O[:, x] = a (e_{n(x)} - 1/M) on the collocation set, 0 elsewhere), because every
step adds bitwise identical values to the entries v != n(x) of a column.

Per sentence (tokens x_1..x_L, query q = x_L, next token y; attention phi as in
:mod:`refimpl.kernels`, the same code):

    base = sum_l phi_l c_{x_l}             (the logit of every row outside S)
    S    = {y} union (union_l E_{x_l})     (the special rows, |S| <= 1 + sum_l |E_{x_l}|)
    z_v  = sum_l phi_l O[v, x_l],  v in S

both sums as the dense kernel forms them (``phi_0 O[v, x_0]``, then one fused multiply-add
per position in position order), so ``base`` and ``z_S`` are the dense logits bit for bit.
With ``zmax = max(base [if M > |S|], max_{v in S, v != y} z_v)``, ``w_v = e^{z_v - zmax}`` (the
same polynomial exp and clamp as :func:`refimpl.kernels_math.exp_shifted`):

    sum_{v != y} w_v = (M - |S|) w_base + sum_{v in S, v != y} w_v

(a product instead of M - |S| additions: it differs from the dense kernel's fixed-order sum
by its rounding only, <= ~M eps relative). With ``w_y = -sum_{v != y} w_v`` (the scaled
residual p - e_y), ``sum_v w_v = 0``, so

    g_l = O[:, x_l]^T w = c_{x_l} sum_v w_v + sum_{j in E_{x_l}} dif_j w_{row_j}
                        = sum_{j in E_{x_l}} dif_j w_{row_j}

is computed as that exact value (the dense dot product carries a rounding error of order
M eps |c_{x_l}| sum w, which this form does not have). Everything else -- the attention gap,
the scale-free gradient ``(Gs, log_scale)``, the running scale of each chunk, the loss and its
log10 -- is the code of :func:`refimpl.kernels_chunk._chunk` with ``want_o = False``.

Accumulation. dL/dK is nonzero only at the pairs (x_l, q) of the sentences: these P pairs
(sorted by their flat index ``x M + q``) are fixed by the data, so each chunk accumulates into a
vector (P,) instead of an M x M matrix; ``slot`` (T,) maps each token position to its pair.
The reduction and the Frobenius norm visit the pairs in flat-index order with the lanes of
:func:`refimpl.kernels_math.sumsq4` (the zero entries add exactly nothing), so given the same
per-chunk values the products are those of the dense reduction. Chunks are a function of the
sizes only (:func:`sparse_chunks`) and reduced in index order: the bits never depend on the
thread count or on which driver runs them.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .kernels_chunk import _SLACK, attend, negative_losses, score_terms, sentence_loss
from .kernels_math import as_bits, exp_clamped, exp_scalar, fma, from_bits

_OPTS = dict(cache=True, fastmath=False, nogil=True, boundscheck=False, error_model="numpy")
_INLINE = dict(_OPTS, inline="always")

_PARALLEL_TOKENS = 20_000  # below this many tokens one chunk (a parallel region is not worth it)
_CHUNKS = 4


def sparse_chunks(N, n_tokens):
    """Chunks of the structured kernel: 1 below ``_PARALLEL_TOKENS`` tokens, else min(4, N).

    A function of the sizes only, so results never depend on the thread count."""
    return 1 if n_tokens < _PARALLEL_TOKENS or N < 2 else int(min(_CHUNKS, N))


# ===================================================================== detection
@njit(**_OPTS)
def _detect(O, max_total, max_col):
    """(ok, cst (M,), eoff (M + 1,), erow (E,), evals (E,), edif (E,)) from O (M, M), row by row.

    Pass 1: a Boyer-Moore majority vote per column on the bit patterns of the first
    min(M, 2 max_col + 1) rows: a column with at most max_col exceptions to some constant
    holds that constant in a strict majority of those rows, so the vote returns it (and a
    column without such a constant is refused in pass 2 whatever the vote gave). Pass 2: the
    count of entries whose bits differ from the candidate, stopping as soon as a column has
    more than ``max_col`` or all together more than ``max_total`` (ok = False, empty arrays).
    Pass 3: the exceptions, rows ascending.
    """
    M = O.shape[0]
    cand = np.empty(M, dtype=np.int64)
    cnt = np.ones(M, dtype=np.int64)
    for x in range(M):
        cand[x] = as_bits(O[0, x])
    for v in range(1, min(M, 2 * max_col + 1)):
        for x in range(M):
            b = as_bits(O[v, x])
            if b == cand[x]:
                cnt[x] += 1
            elif cnt[x] == 0:
                cand[x] = b
                cnt[x] = 1
            else:
                cnt[x] -= 1
    eoff = np.zeros(M + 1, dtype=np.int64)
    nexc = eoff[1:]
    total = 0
    for v in range(M):
        row_total = 0
        for x in range(M):
            d = 1 if as_bits(O[v, x]) != cand[x] else 0
            nexc[x] += d
            row_total += d
        total += row_total
        if total > max_total:
            return (False, np.empty(0), eoff, np.empty(0, dtype=np.int64), np.empty(0), np.empty(0))
    for x in range(M):
        if nexc[x] > max_col:
            return (False, np.empty(0), eoff, np.empty(0, dtype=np.int64), np.empty(0), np.empty(0))
    for x in range(M):
        eoff[x + 1] += eoff[x]
    cst = np.empty(M)
    for x in range(M):
        cst[x] = from_bits(cand[x])
    pos = eoff[:M].copy()
    erow = np.empty(total, dtype=np.int64)
    evals = np.empty(total)
    edif = np.empty(total)
    if total == 0:
        return True, cst, eoff, erow, evals, edif
    for v in range(M):
        for x in range(M):
            val = O[v, x]
            if as_bits(val) != cand[x]:
                j = pos[x]
                erow[j] = v
                evals[j] = val
                edif[j] = val - cst[x]
                pos[x] = j + 1
    return True, cst, eoff, erow, evals, edif


def detect(O, max_total, max_col=8):
    """The column-constant + exceptions form of O, or None when it has more than ``max_total``
    exceptions in all or more than ``max_col`` in some column.

    Parameters
    ----------
    O : float64 (M, M), C-contiguous
    max_total : int
        Largest accepted total number of exceptions.
    max_col : int
        Largest accepted number of exceptions in one column.

    Returns
    -------
    tuple or None
        ``(cst (M,), eoff (M + 1,), erow (E,), evals (E,), edif (E,))``: column x is ``cst[x]``
        except at rows ``erow[eoff[x]:eoff[x + 1]]`` (ascending), whose entries are ``evals``
        (bitwise O's) and ``edif = evals - cst[x]``. Exact: every entry not listed has the bits
        of ``cst[x]``.
    """
    ok, cst, eoff, erow, evals, edif = _detect(np.ascontiguousarray(O, dtype=np.float64), int(max_total),
                                               int(max_col))
    return (cst, eoff, erow, evals, edif) if ok else None


def pair_slots(flat, offsets, M):
    """(pairs int64 (P,), slot int64 (T,)): the sorted distinct flat indices ``x_l M + q`` of the
    (key, query) pairs of the sentences, and the pair of each token position."""
    q = flat[offsets[1:] - 1]
    lengths = np.diff(offsets)
    key = flat * M + np.repeat(q, lengths)
    pairs, slot = np.unique(key, return_inverse=True)
    return np.ascontiguousarray(pairs, dtype=np.int64), np.ascontiguousarray(slot.reshape(-1), dtype=np.int64)


# ===================================================================== one chunk
@njit(**_INLINE)
def _entry(cst, eoff, erow, evals, x, v):
    """O[v, x] from the structure (a scan of the few exceptions of column x)."""
    for j in range(eoff[x], eoff[x + 1]):
        if erow[j] == v:
            return evals[j]
    return cst[x]


@njit(**_INLINE)
def special_chain(cst, eoff, erow, evals, tokens, start, lo, hi, x0, a0, ph, pos, ns, zs, keep):
    """``zs[k] = a0 O[v_k, x0]``, then ``zs[k] = fma(ph[l], O[v_k, x_l], zs[k])`` for
    l = lo + 1 .. hi - 1 (x_l = tokens[start + l]): the dense kernel's chain for every special
    row v_k at once, the same operations in the same order per row, so the same bits as a
    chain run row by row.

    Rows are indexed by their position k < ns in the special set (pos[v] = k); every exception
    row of every column read must be in it. Column x is cst[x] on all rows but its exceptions:
    the fma with cst[x] runs over all k (a loop that vectorizes), and the few exception rows,
    whose old values are first kept in ``keep`` (>= max |E_x|,), are then redone with their own
    entries. O(ns + |E_x|) per position instead of a scan of the exceptions per (row, position).
    Returns the same chain on the column constants (``a0 cst[x0]``, then ``fma(ph[l], cst[x_l],
    .)``): the value of every row outside the special set.
    """
    c0 = a0 * cst[x0]
    base = c0
    for k in range(ns):
        zs[k] = c0
    for j in range(eoff[x0], eoff[x0 + 1]):
        zs[pos[erow[j]]] = a0 * evals[j]
    for l in range(lo + 1, hi):
        x = tokens[start + l]
        a = ph[l]
        c = cst[x]
        j0 = eoff[x]
        j1 = eoff[x + 1]
        for j in range(j0, j1):
            keep[j - j0] = zs[pos[erow[j]]]
        base = fma(a, c, base)
        for k in range(ns):
            zs[k] = fma(a, c, zs[k])
        for j in range(j0, j1):
            zs[pos[erow[j]]] = fma(a, evals[j], keep[j - j0])
    return base


@njit(_nrt=False, **_OPTS)
def _chunk_s(cst, eoff, erow, evals, edif, Kp, tokens, offsets, ys, slot, lo, hi, acc, stats,
             mark, pos, wv, srows, zs, keep, s, u, ph, g):
    """Sentences lo..hi-1 into acc (P,) = sum_i (dL_i/dK at the pairs) e^{a_g} (want_k alone).

    Kp (P,) holds K at the pairs (:func:`gather`), so the score of position l is
    Kp[slot[off + l]] = K[x_l, q]: the same value, read from a small array in place of a random
    entry of K (a cache miss per position at large M).
    stats (6,) as in :func:`refimpl.kernels_chunk._chunk`. mark, pos int64 (M,) (mark initially
    -1) and wv (M,) are indexed by row: mark[v] = i once row v is in the special set S of
    sentence i, pos[v] its index in srows, wv[v] its w_v. srows int64 and zs float64
    (>= 1 + Lmax * max |E_x|,), keep (max |E_x|,), s, u, ph, g (Lmax,) scratch.
    """
    M = cst.shape[0]
    P = acc.shape[0]
    a_g = np.inf
    a_l = np.inf
    lam_min = np.inf
    mp_min = np.inf
    ls = 0.0
    lp = 0.0
    n_neg = 0
    neg_m = 0.0
    prod = 1.0
    prod_exp = 0
    for i in range(lo, hi):
        off = offsets[i]
        L = offsets[i + 1] - off
        y = ys[i]
        # ---- attention: the dense kernel's (kernels_chunk.attend)
        for l in range(L):
            s[l] = Kp[slot[off + l]]
        smax, ltop, multi, ssec, gap, delta, rho, ntop, usum, U = attend(s, tokens, off, L, u, ph)
        # ---- the special rows S (y first, then the exceptions of x_1, x_2, ...)
        ns = 1
        srows[0] = y
        mark[y] = i
        pos[y] = 0
        for l in range(L):
            x = tokens[off + l]
            for j in range(eoff[x], eoff[x + 1]):
                v = erow[j]
                if mark[v] != i:
                    mark[v] = i
                    pos[v] = ns
                    srows[ns] = v
                    ns += 1
        n_rest = M - ns
        # ---- logits: base (rows outside S) and z_v (v in S), the dense kernel's operations
        x0 = tokens[off]
        a0 = ph[0]
        base = special_chain(cst, eoff, erow, evals, tokens, off, 0, L, x0, a0, ph, pos, ns, zs, keep)
        zmax = base if n_rest > 0 else -np.inf
        zy = zs[0]
        for k in range(1, ns):
            zmax = zs[k] if zs[k] > zmax else zmax
        # ---- w_v = e^{z_v - zmax} (clamped as exp_shifted), sum over v != y
        for k in range(1, ns):                    # on the contiguous zs, then into wv by row
            zs[k] = exp_clamped(zs[k] - zmax)
        sumw = 0.0
        for k in range(1, ns):
            e = zs[k]
            wv[srows[k]] = e
            sumw += e
        if n_rest > 0:
            sumw = fma(float(n_rest), exp_clamped(base - zmax), sumw)
        wv[y] = -sumw
        m = zy - zmax
        cr, mpos, lp, n_neg, neg_m, prod, prod_exp, mp_min, a_l, ls = sentence_loss(
            m, sumw, lp, n_neg, neg_m, prod, prod_exp, mp_min, a_l, ls)
        if not multi and ssec == -np.inf:
            continue                              # one distinct token: dL/dK is exactly 0
        lam = mpos + delta
        lam_min = min(lam_min, lam)
        if lam < a_g - _SLACK:
            f = exp_scalar(lam - a_g) if a_g < np.inf else 0.0
            if a_g < np.inf:
                for a1 in range(P):
                    acc[a1] *= f
            a_g = lam
        ck = exp_scalar(a_g - lam) * cr if lam != a_g else cr
        # ---- g_l = sum_{j in E_{x_l}} dif_j w_{row_j}: the exact O[:, x_l]^T w (sum_v w_v = 0)
        for l in range(L):
            x = tokens[off + l]
            gl = 0.0
            for j in range(eoff[x], eoff[x + 1]):
                gl = fma(edif[j], wv[erow[j]], gl)
            g[l] = gl
        score_terms(g, s, u, ph, L, smax, ltop, gap, ntop, usum, rho, U, ck)
        for l in range(L):
            acc[slot[off + l]] += g[l]
    lp, ls = negative_losses(n_neg, neg_m, prod, prod_exp, lp, ls, a_l)
    stats[0] = a_g
    stats[1] = a_l
    stats[2] = lam_min
    stats[3] = mp_min
    stats[4] = ls
    stats[5] = lp


@njit(**_OPTS)
def _reduce_s(acc, stats, N, pairs, MM, out):
    """The chunks combined in index order into out (P,) (the products of
    :func:`refimpl.kernels_chunk._reduce`), divided by their Frobenius norm (lanes of
    :func:`refimpl.kernels_math.sumsq4` over the M*M flat entries, MM = M*M).
    Returns (log_scale, loss, log10_loss, norm)."""
    nc = stats.shape[0]
    P = out.shape[0]
    lam_min = np.inf
    mp_min = np.inf
    for c in range(nc):
        lam_min = min(lam_min, stats[c, 2])
        mp_min = min(mp_min, stats[c, 3])
    for a in range(P):
        out[a] = 0.0
    ls = 0.0
    lp = 0.0
    for c in range(nc):
        lp += stats[c, 5]
        if stats[c, 1] < np.inf:
            ls += stats[c, 4] * math.exp(mp_min - stats[c, 1])
        if stats[c, 0] < np.inf:
            f = math.exp(lam_min - stats[c, 0]) / N
            for a in range(P):
                out[a] += f * acc[c, a]
    log10_loss = (math.log(ls) - mp_min - math.log(N)) / math.log(10.0)
    log_scale = -lam_min if lam_min < np.inf else 0.0
    main = (MM // 4) * 4                          # sumsq4: flat index k in lane k % 4, the tail in lane 0
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    for a in range(P):
        k = pairs[a]
        val = out[a]
        lane = k % 4 if k < main else 0
        if lane == 0:
            s0 = fma(val, val, s0)
        elif lane == 1:
            s1 = fma(val, val, s1)
        elif lane == 2:
            s2 = fma(val, val, s2)
        else:
            s3 = fma(val, val, s3)
    norm = math.sqrt((s0 + s1) + (s2 + s3))
    if norm > 0.0:
        c = 1.0 / norm
        for a in range(P):
            out[a] = out[a] * c
    return log_scale, lp / N, log10_loss, norm


@njit(**_OPTS)
def _run_chunk_s(cst, eoff, erow, evals, edif, Kp, tokens, offsets, ys, slot, Lmax, kmax, nc, c, acc, stats):
    N = offsets.shape[0] - 1
    M = cst.shape[0]
    _chunk_s(cst, eoff, erow, evals, edif, Kp, tokens, offsets, ys, slot, c * N // nc, (c + 1) * N // nc,
             acc[c], stats[c], np.full(M, -1, dtype=np.int64), np.empty(M, dtype=np.int64), np.empty(M),
             np.empty(1 + Lmax * kmax, dtype=np.int64), np.empty(1 + Lmax * kmax), np.empty(kmax),
             np.empty(Lmax), np.empty(Lmax), np.empty(Lmax), np.empty(Lmax))


@njit(**_OPTS)
def _serial_s(cst, eoff, erow, evals, edif, K, tokens, offsets, ys, slot, pairs, Lmax, kmax, nc, out):
    """All chunks in order on the calling thread."""
    N = offsets.shape[0] - 1
    M = cst.shape[0]
    acc = np.zeros((nc, out.shape[0]))
    stats = np.zeros((nc, 6))
    Kp = gather(K, pairs)
    for c in range(nc):
        _run_chunk_s(cst, eoff, erow, evals, edif, Kp, tokens, offsets, ys, slot, Lmax, kmax, nc, c, acc, stats)
    return _reduce_s(acc, stats, N, pairs, M * M, out)


@njit(parallel=True, **_OPTS)
def _parallel_s(cst, eoff, erow, evals, edif, K, tokens, offsets, ys, slot, pairs, Lmax, kmax, nc, out):
    """The same chunks on Numba's threads, each into its own row of acc; the same reduction."""
    N = offsets.shape[0] - 1
    M = cst.shape[0]
    acc = np.zeros((nc, out.shape[0]))
    stats = np.zeros((nc, 6))
    Kp = gather(K, pairs)
    for c in prange(nc):
        _run_chunk_s(cst, eoff, erow, evals, edif, Kp, tokens, offsets, ys, slot, Lmax, kmax, nc, c, acc, stats)
    return _reduce_s(acc, stats, N, pairs, M * M, out)


@njit(**_OPTS)
def gather(K, pairs):
    """Kp (P,) with Kp[a] = K.ravel()[pairs[a]] (K : float64 (M, M) C-contiguous): the scores
    at the sentences' (key, query) pairs, read in increasing address order."""
    f = K.ravel()
    out = np.empty(pairs.shape[0])
    for a in range(pairs.shape[0]):
        out[a] = f[pairs[a]]
    return out


@njit(**_OPTS)
def scatter(pairs, vals, D):
    """D.ravel()[pairs[a]] = vals[a] (D : float64 (M, M) C-contiguous, zero elsewhere)."""
    f = D.ravel()
    for a in range(pairs.shape[0]):
        f[pairs[a]] = vals[a]


DRIVERS = (_serial_s, _parallel_s)


# ===================================================================== stage 1 (one-token sentences)
@njit(**_OPTS)
def stage1_direction(cst, eoff, erow, evals, xs, ys, D):
    """The stage-1 direction of :func:`refimpl.kernels.stage1_grad` for a structured O, into D.

    The sentences are the collocations (x_j, y_j), every x_j distinct, so phi = 1 and column x_j
    of dL0/dO is (1/n) (p - e_y) with z = O[:, x_j]: on the rows outside S_j = {y_j} + E_{x_j}
    it is one value. Per sentence the operations of :func:`refimpl.kernels_chunk._chunk`
    (``want_o`` alone, one chunk) on S_j and on that one value; the Frobenius norm is
    sum_x ((M - |S_x|) r_x^2 + sum_{v in S_x} G[v, x]^2) (the dense kernel sums the M^2 entries
    in its own order: the norm, hence D, differs by rounding only).

    Parameters
    ----------
    cst, eoff, erow, evals : the structure of O (:func:`detect`)
    xs, ys : int64 (n,)
        Collocation tokens (distinct) and their successors.
    D : float64 (M, M), C-contiguous
        Output, overwritten: GOs / ||GOs||_F (zero when the gradient vanishes).

    Returns
    -------
    (log_scale, loss, log10_loss, norm)
        As :meth:`refimpl.kernels.Stage1Direction.direction`.
    """
    M = cst.shape[0]
    n = xs.shape[0]
    rest = np.zeros(M)                            # G[v, x] on the rows outside S_x (scaled)
    nrest = np.zeros(M, dtype=np.int64)
    soff = np.zeros(n + 1, dtype=np.int64)
    cap = n + erow.shape[0]
    srow = np.empty(cap, dtype=np.int64)
    scol = np.empty(cap, dtype=np.int64)
    sval = np.empty(cap)
    mark = np.full(M, -1, dtype=np.int64)
    wv = np.empty(M)
    a_g = np.inf
    a_l = np.inf
    lam_min = np.inf
    mp_min = np.inf
    ls = 0.0
    lp = 0.0
    n_neg = 0
    neg_m = 0.0
    prod = 1.0
    prod_exp = 0
    k0 = 0
    for j in range(n):
        x = xs[j]
        y = ys[j]
        # S = {y} + E_x; z_v = 1.0 * O[v, x] (phi = 1 exactly)
        srow[k0] = y
        mark[y] = j
        ns = 1
        for e in range(eoff[x], eoff[x + 1]):
            v = erow[e]
            if mark[v] != j:
                mark[v] = j
                srow[k0 + ns] = v
                ns += 1
        n_rest = M - ns
        c = cst[x]
        zmax = c if n_rest > 0 else -np.inf
        zy = 0.0
        for k in range(ns):
            v = srow[k0 + k]
            zv = 1.0 * _entry(cst, eoff, erow, evals, x, v)
            wv[v] = zv
            if k == 0:
                zy = zv
            else:
                zmax = zv if zv > zmax else zmax
        sumw = 0.0
        for k in range(1, ns):
            v = srow[k0 + k]
            e = exp_clamped(wv[v] - zmax)
            wv[v] = e
            sumw += e
        w_rest = 0.0
        if n_rest > 0:
            w_rest = exp_clamped(c - zmax)
            sumw = fma(float(n_rest), w_rest, sumw)
        wv[y] = -sumw
        m = zy - zmax
        cr, mpos, lp, n_neg, neg_m, prod, prod_exp, mp_min, a_l, ls = sentence_loss(
            m, sumw, lp, n_neg, neg_m, prod, prod_exp, mp_min, a_l, ls)
        lam = mpos
        lam_min = min(lam_min, lam)
        if lam < a_g - _SLACK:
            f = exp_scalar(lam - a_g) if a_g < np.inf else 0.0
            if a_g < np.inf:                      # the dense kernel scales every entry so far
                for k in range(k0):
                    sval[k] *= f
                for k in range(M):
                    rest[k] *= f
            a_g = lam
        cg = exp_scalar(a_g - lam) * cr if lam != a_g else cr
        a = cg * 1.0
        rest[x] += a * w_rest
        nrest[x] = n_rest
        for k in range(ns):
            v = srow[k0 + k]
            scol[k0 + k] = x
            sval[k0 + k] = 0.0 + a * wv[v]
        k0 += ns
        soff[j + 1] = k0
    lp, ls = negative_losses(n_neg, neg_m, prod, prod_exp, lp, ls, a_l)
    # ---- the reduction of one chunk (kernels_chunk._reduce)
    ltot = 0.0
    if a_l < np.inf:
        ltot = ls * math.exp(mp_min - a_l)
    log10_loss = (math.log(ltot) - mp_min - math.log(n)) / math.log(10.0)
    log_scale = -lam_min if lam_min < np.inf else 0.0
    f = math.exp(lam_min - a_g) / n if a_g < np.inf else 0.0
    ss = 0.0
    for x in range(M):
        r = 0.0 + f * rest[x]
        rest[x] = r
        ss = fma(float(nrest[x]) * r, r, ss)
    for k in range(k0):
        val = 0.0 + f * sval[k]
        sval[k] = val
        ss = fma(val, val, ss)
    norm = math.sqrt(ss)
    cn = 1.0 / norm if norm > 0.0 else 1.0
    for x in range(M):
        rest[x] = rest[x] * cn
    for v in range(M):
        for x in range(M):
            D[v, x] = rest[x]
    for k in range(k0):
        D[srow[k], scol[k]] = sval[k] * cn
    return log_scale, lp / n, log10_loss, norm
