"""Numba kernels in token coordinates: losses and scale-free gradients (SPEC sections 2 and 4).

Token coordinates: ``O = E^T W_ov E`` and ``K = E^T W_kq E``, float64 (M, M),
row = key token, column = query token. For a sentence x (length L, query q):

    s_l = K[x_l, q],   phi = softmax(s),   z = sum_l phi_l O[:, x_l]   (M,)
    loss = log1p(sum_{v != y} exp(z_v - z_y)),   r = p - e_y
    dL/dO[:, x_l] += (1/N) phi_l r
    dL/dK[x_l, q] += (1/N) phi_l (g_l - sum_m phi_m g_m),   g_l = O[:, x_l]^T r

Scale-free gradients (docs/model.md, "Scale-free gradient"). Every gradient is
returned as ``(Gs, log_scale)`` with ``G = exp(log_scale) * Gs`` and Gs = O(1):
the common factor ``exp(-lam_min)`` is divided out, where per sentence
``lam = max(m, 0) (+ delta for dL/dK alone)``, m = z_y - max_{v != y} z_v the
logit margin, delta the attention gap (below). So NGD directions stay exact
after the loss underflows float64. ``log10_loss`` is computed in log space and
is finite for any margin; ``loss`` is the float64 value (may underflow to 0).

Attention gap. When the top score of a sentence belongs to one token x* (all
its positions), every term of dL/dK carries a factor exp(-delta), delta = s_top
minus the best other score: with u_l = 1 on top positions and
exp(s_l - s_second) elsewhere, U = n_top + e^{-delta} sum_{other} u,

    top l:    e^{delta} phi_l (g_l - gbar) = (1/U^2) sum_{m other} u_m (g_* - g_m)
    other l:  e^{delta} phi_l (g_l - gbar) = (u_l/U^2) (n_top (g_l - g_*) + e^{-delta} sum_{m other} u_m (g_l - g_m))

When different tokens tie for the top score, delta = 0 and the plain formula is used.

Parallelism. Sentences are split into a fixed number of contiguous chunks (a
function of N, L, M only, never of the thread count); each chunk accumulates
into its own M x M scratch with its own running scale, and chunks are reduced
in index order, so results are bit-identical run to run. Kernels allocate
nothing that grows with N. Requires M >= 2. All kernels: ``njit(cache=True)``,
no fastmath; called through the plain Python wrappers below.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .kernels_math import (as_bits, dot2, dots4, exp_scalar, exp_shifted, fma, from_bits, max4,
                           scale_inplace, scaled, sum4, sumsq4)
from .kernels_np import (attention_np, joint_grad_np, logits_np, normalize_np,  # noqa: F401 (twins)
                         normalize_pair_np, stage1_grad_np, stage2_grad_np, stage2_loss_np)

__all__ = ["Stage2Direction", "compensated_step", "stage1_grad", "stage2_grad", "joint_grad", "stage2_loss", "normalize", "normalize_pair",
           "attention", "logits", "n_chunks"] + [n + "_np" for n in (
               "stage1_grad", "stage2_grad", "joint_grad", "stage2_loss", "normalize",
               "normalize_pair", "attention", "logits")]

_SLACK = 300.0            # a chunk rescales its accumulator when a term exceeds it by e^300
_SERIES_S = 2.0 ** -8     # below: log1p(S)/S = sum_k (-S)^k/(k+1), k <= 6 (next term < 2e-18)
_MANTISSA = (1 << 52) - 1
_ONE_BITS = 1023 << 52
_LN2 = 0.6931471805599453
# Chunk counts (n_chunks), measured on the 2-vCPU VM (its vCPUs share one physical core, so
# two threads give ~1.4-1.6x, not 2x): threads pay off from ~6000 token-columns of work
# (N * Lmax * M; ~25 us serial) as long as the work is >= 10 M^2 per chunk scratch (each
# chunk zeroes and reduces its own M x M accumulator); 4 chunks beat 2 from 200 M^2 on.
_PARALLEL_WORK = 6_000
_MIN_WORK_PER_M2 = 10
_FOUR_CHUNKS_PER_M2 = 200
_SCRATCH_BYTES = 1 << 28  # cap on chunks * M * M * 8 * (number of gradients)
_OPTS = dict(cache=True, fastmath=False, nogil=True, boundscheck=False, error_model="numpy")


# ===================================================================== one chunk
# _nrt=False: _chunk allocates nothing, so it needs no reference counting; with it, every
# inlined helper taking an array incremented and decremented that array's count once per
# sentence (measured: ~12% of a size-S step in NRT_incref/NRT_decref).
@njit(_nrt=False, **_OPTS)
def _chunk(OT, K, tokens, lengths, ys, lo, hi, want_o, want_k, GOT, GK, stats, z, w, s, u, ph, g):
    """Accumulate sentences lo..hi-1 into GOT (M, M) = (dL/dO)^T and GK (M, M) = dL/dK.

    OT = O^T (C-contiguous, so a column of O is a row of OT); K is read as K[x_l, q].
    stats (6,) receives [a_g, a_l, lam_min, mpos_min, scaled loss sum, float64 loss sum]:
    GOT, GK hold sum_i G_i e^{a_g}; stats[4] holds sum_i loss_i e^{a_l}.
    z, w : (M,) and s, u, ph, g : (Lmax,) scratch. Scalar exponentials use
    :func:`exp_scalar` (no libm call in the normal range).
    """
    M = OT.shape[0]
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
        L = lengths[i]
        q = tokens[i, L - 1]
        y = ys[i]
        # ---- attention: scores, top token, gap delta, phi (selects, not branches: which
        # positions hold the top score is data-dependent and would mispredict)
        smax = -np.inf
        ltop = 0                                  # first position holding the top score
        for l in range(L):
            sl = K[tokens[i, l], q]
            s[l] = sl
            ltop = l if sl > smax else ltop
            smax = sl if sl > smax else smax
        top = tokens[i, ltop]
        multi = False                             # another token ties the top score
        ssec = -np.inf                            # best score below the top
        for l in range(L):
            is_top = s[l] == smax
            multi = multi | (is_top & (tokens[i, l] != top))
            ssec = max(ssec, -np.inf if is_top else s[l])
        gap = not multi and ssec > -np.inf        # branch A: one top token, some other score
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
        # ---- logits z = sum_l phi_l O[:, x_l], two rows per pass (fixed order l = 0, 1, ...)
        x0 = tokens[i, 0]
        a0 = ph[0]
        for v in range(M):
            z[v] = a0 * OT[x0, v]
        l = 1
        while l + 2 <= L:
            x0 = tokens[i, l]
            x1 = tokens[i, l + 1]
            a0 = ph[l]
            a1 = ph[l + 1]
            for v in range(M):
                z[v] = fma(a1, OT[x1, v], fma(a0, OT[x0, v], z[v]))
            l += 2
        if l < L:
            x0 = tokens[i, l]
            a0 = ph[l]
            for v in range(M):
                z[v] = fma(a0, OT[x0, v], z[v])
        # ---- residual r = p - e_y in scaled form: w_v = e^{z_v - zmax} (v != y), w_y = -sum
        zy = z[y]
        z[y] = -np.inf
        zmax = max4(z)
        exp_shifted(z, zmax, w)                   # one exp per logit; w_y = e^{-inf} = 0
        sumw = sum4(w)
        w[y] = -sumw                              # r_y = -(sum_{v != y} p_v), never p_y - 1
        m = zy - zmax
        if m >= 0.0:                              # p_v = e^{-m} w_v / (1 + S), S = e^{-m} sum w
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
        else:                                     # p_v = w_v / (e^{m} + sum w)
            den = exp_scalar(m) + sumw            # in [1, M]: loss_i = -m + log(den), summed
            cr = 1.0 / den                        # below as one log of a running product
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
                xl = tokens[i, l]
                a = cg * ph[l]
                for v in range(M):
                    GOT[xl, v] += a * w[v]
        if not want_k:
            continue
        ck = cg * rho if want_o else cg           # joint: K terms carry e^{-delta} explicitly
        l = 0                                     # g_l = O[:, x_l]^T r (in units of cr e^{-mpos})
        while l + 4 <= L:
            dots4(OT, tokens[i, l], tokens[i, l + 1], tokens[i, l + 2], tokens[i, l + 3], w, g, l)
            l += 4
        while l < L:
            g[l] = dot2(OT, tokens[i, l], w)
            l += 1
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
                GK[tokens[i, l], q] += (ck * a1 / U2 if s[l] == smax else ck * u[l] * inner / U2)
        else:
            gbar = 0.0
            for l in range(L):
                gbar += ph[l] * g[l]
            for l in range(L):
                GK[tokens[i, l], q] += ck * ph[l] * (g[l] - gbar)
    if n_neg > 0:                                 # their losses: sum -m_i + log prod den_i
        loss_neg = neg_m + (math.log(prod) + prod_exp * _LN2)
        lp += loss_neg
        ls += loss_neg * exp_scalar(a_l)          # a_l <= 0 + _SLACK: finite
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
            GO_out += f * GOT[c]
            GK_out += f * GK[c]
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
def _scratch(nc, M, Lmax, want_o, want_k):
    """Per-chunk accumulators: GOT, GK (nc, M, M) (or (nc, 0, 0) when not wanted) and stats (nc, 6)."""
    mo = M if want_o else 0
    mk = M if want_k else 0
    return np.zeros((nc, mo, mo)), np.zeros((nc, mk, mk)), np.zeros((nc, 6))


@njit(**_OPTS)
def _run_chunk(OT, K, tokens, lengths, ys, want_o, want_k, nc, c, GOT, GK, stats):
    """Chunk c of nc (sentences c N / nc .. (c+1) N / nc) into its own scratch slices."""
    N, Lmax = tokens.shape
    M = OT.shape[0]
    _chunk(OT, K, tokens, lengths, ys, c * N // nc, (c + 1) * N // nc, want_o, want_k,
           GOT[c], GK[c], stats[c], np.empty(M), np.empty(M), np.empty(Lmax),
           np.empty(Lmax), np.empty(Lmax), np.empty(Lmax))


@njit(**_OPTS)
def _drive_serial(OT, K, tokens, lengths, ys, want_o, want_k, nc, unit, GO_out, GK_out):
    """All chunks in order on one thread (used when nc == 1)."""
    N, Lmax = tokens.shape
    M = OT.shape[0]
    GOT, GK, stats = _scratch(nc, M, Lmax, want_o, want_k)
    for c in range(nc):
        _run_chunk(OT, K, tokens, lengths, ys, want_o, want_k, nc, c, GOT, GK, stats)
    return _reduce(GOT, GK, stats, N, unit, GO_out, GK_out)


@njit(parallel=True, **_OPTS)
def _drive_parallel(OT, K, tokens, lengths, ys, want_o, want_k, nc, unit, GO_out, GK_out):
    """Chunks spread over threads; each writes only its own slices, then a fixed-order reduction."""
    N, Lmax = tokens.shape
    M = OT.shape[0]
    GOT, GK, stats = _scratch(nc, M, Lmax, want_o, want_k)
    for c in prange(nc):
        _run_chunk(OT, K, tokens, lengths, ys, want_o, want_k, nc, c, GOT, GK, stats)
    return _reduce(GOT, GK, stats, N, unit, GO_out, GK_out)


# ===================================================================== public wrappers
def n_chunks(N, Lmax, M, n_grads=1):
    """Number of chunks used for (N, Lmax, M): 1 (serial), 2 or 4 (module constants above).

    A function of the sizes only, so results never depend on the thread count.
    """
    work = N * Lmax * M
    per_m2 = work / (M * M * max(n_grads, 1))
    if work < _PARALLEL_WORK or per_m2 < _MIN_WORK_PER_M2:
        return 1
    nc = 4 if per_m2 >= _FOUR_CHUNKS_PER_M2 else 2
    cap = max(1, _SCRATCH_BYTES // (8 * M * M * max(n_grads, 1)))
    return int(max(1, min(nc, cap, N)))


class _Prepared:
    """O^T and the int64 sentence arrays, converted once; ``drive(K, want_o, want_k, unit)``."""

    def __init__(self, O, tokens, lengths, ys, n_grads, chunks):
        O = np.asarray(O, dtype=np.float64)
        M = O.shape[0]
        if O.ndim != 2 or O.shape != (M, M) or M < 2:
            raise ValueError(f"O must be square with M >= 2, got shape {O.shape}")
        self.M = M
        self.OT = np.ascontiguousarray(O.T)
        self.tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        self.lengths = np.ascontiguousarray(lengths, dtype=np.int64)
        self.ys = np.ascontiguousarray(ys, dtype=np.int64)
        N, Lmax = self.tokens.shape
        self.nc = n_chunks(N, Lmax, M, n_grads) if chunks is None else int(chunks)
        self._drive = _drive_serial if self.nc == 1 else _drive_parallel

    def drive(self, K, want_o, want_k, unit):
        """(GO (M, M) or None, GK (M, M) or None, log_scale, loss, log10_loss, norm)."""
        K = np.ascontiguousarray(K, dtype=np.float64)
        M = self.M
        if K.shape != (M, M):
            raise ValueError(f"K must have shape {(M, M)}, got {K.shape}")
        GOT = np.empty((M, M) if want_o else (0, 0))
        GK = np.empty((M, M) if want_k else (0, 0))
        log_scale, loss, log10_loss, norm = self._drive(
            self.OT, K, self.tokens, self.lengths, self.ys, want_o, want_k, self.nc, unit, GOT, GK)
        return (GOT.T.copy() if want_o else None, GK if want_k else None, float(log_scale),
                float(loss), float(log10_loss), float(norm))


def _run(O, K, tokens, lengths, ys, want_o, want_k, chunks=None):
    p = _Prepared(O, tokens, lengths, ys, int(want_o) + int(want_k), chunks)
    return p.drive(K, want_o, want_k, False)[:5]


def stage1_grad(O, xs, ys):
    """Collocation loss L0 and its scale-free gradient (SPEC section 4).

    O : float64 (M, M); xs, ys : int64 (n_c,) = colloc_tokens, colloc_next.
    Returns (Gs (M, M), log_scale, loss, log10_loss), dL0/dO = exp(log_scale) * Gs,
    log_scale = -max(min_x margin_x, 0).
    """
    xs = np.ascontiguousarray(xs, dtype=np.int64)
    ones = np.ones(len(xs), dtype=np.int64)
    # one-token sentences read only K[x, x] (attention is 1): any K will do
    M = len(O)
    K = np.zeros((M, M))
    GO, _, log_scale, loss, log10_loss = _run(O, K, xs[:, None], ones, ys, True, False, 1)
    return GO, log_scale, loss, log10_loss


def stage2_grad(O, K, tokens, lengths, ys, *, chunks=None):
    """dL/dK with O fixed, scale-free (SPEC section 4, stage 2).

    O, K : float64 (M, M); tokens : int64 (N, Lmax) padded with -1; lengths, ys : int64 (N,).
    Returns (GKs (M, M), log_scale, loss, log10_loss), dL/dK = exp(log_scale) * GKs,
    log_scale = -min_i (max(m_i, 0) + delta_i). ``chunks`` overrides :func:`n_chunks`.
    """
    _, GK, log_scale, loss, log10_loss = _run(O, K, tokens, lengths, ys, False, True, chunks)
    return GK, log_scale, loss, log10_loss


def joint_grad(O, K, tokens, lengths, ys, *, chunks=None):
    """dL/dO and dL/dK with ONE common scale (joint NGD baseline).

    Returns (GOs, GKs, log_scale, loss, log10_loss), both (M, M);
    log_scale = -min_i max(m_i, 0).
    """
    return _run(O, K, tokens, lengths, ys, True, True, chunks)


def stage2_loss(O, K, tokens, lengths, ys, *, chunks=None):
    """(loss, log10_loss) of the full dataset, no gradient."""
    _, _, _, loss, log10_loss = _run(O, K, tokens, lengths, ys, False, False, chunks)
    return loss, log10_loss


class Stage2Direction:
    """The stage-2 NGD direction with O fixed, one compiled call per step (SPEC section 4).

    Prepared once from O : float64 (M, M), tokens : int64 (N, Lmax) padded with -1 and
    lengths, ys : int64 (N,); O^T and the integer arrays are converted here, not per step.
    ``direction(K)`` returns (D (M, M), norm, log_scale, loss, log10_loss) with
    D = GKs / ||GKs||_F, GKs the scale-free dL/dK of :func:`stage2_grad` (same bits as
    ``normalize(stage2_grad(...)[0])``), norm = ||GKs||_F; D is zero and norm 0.0 when the
    gradient vanishes exactly. This is the per-step path of the trainer and of
    ``bench/bench_step.py``.
    """

    def __init__(self, O, tokens, lengths, ys, *, chunks=None):
        self._p = _Prepared(O, tokens, lengths, ys, 1, chunks)

    def direction(self, K):
        _, D, log_scale, loss, log10_loss, norm = self._p.drive(K, False, True, True)
        return D, max(norm, 0.0), log_scale, loss, log10_loss


@njit(**_OPTS)
def compensated_step(W, c, D, eta, out):
    """Kahan-compensated ``W - eta * D`` into ``out`` (all float64 (M, M), C-contiguous).

    y = -eta D - c;  out = W + y;  c <- (out - W) - y   (c updated in place).
    """
    fw, fc, fd, fo = W.ravel(), c.ravel(), D.ravel(), out.ravel()
    for v in range(fw.shape[0]):
        y = fd[v] * -eta - fc[v]
        t = fw[v] + y
        fc[v] = (t - fw[v]) - y
        fo[v] = t


def normalize(Gs):
    """(D, norm): D = Gs / ||Gs||_F, or (zeros, 0.0) when Gs is exactly zero (never NaN).

    Computed in Numba with a fixed-order sum: np.linalg.norm would call a threaded BLAS
    dot whose spinning pool then competes with the kernel threads (and whose sum order
    depends on the BLAS thread count).
    """
    Gs = np.ascontiguousarray(Gs, dtype=np.float64)
    norm = math.sqrt(sumsq4(Gs))
    if norm == 0.0:
        return np.zeros_like(Gs), 0.0
    return scaled(Gs, 1.0 / norm), norm


def normalize_pair(GOs, GKs):
    """(DO, DK, norm): the pair divided by its joint Frobenius norm sqrt(||GO||^2 + ||GK||^2)."""
    GOs = np.ascontiguousarray(GOs, dtype=np.float64)
    GKs = np.ascontiguousarray(GKs, dtype=np.float64)
    norm = math.sqrt(sumsq4(GOs) + sumsq4(GKs))
    if norm == 0.0:
        return np.zeros_like(GOs), np.zeros_like(GKs), 0.0
    return scaled(GOs, 1.0 / norm), scaled(GKs, 1.0 / norm), norm


# ===================================================================== metrics helpers
@njit(**_OPTS)
def _attention(KT, tokens, lengths):
    N, Lmax = tokens.shape
    phi = np.zeros((N, Lmax))
    for i in range(N):
        L = lengths[i]
        q = tokens[i, L - 1]
        smax = -np.inf
        for l in range(L):
            smax = max(smax, KT[q, tokens[i, l]])
        tot = 0.0
        for l in range(L):
            phi[i, l] = math.exp(KT[q, tokens[i, l]] - smax)
            tot += phi[i, l]
        for l in range(L):
            phi[i, l] /= tot
    return phi


@njit(**_OPTS)
def _logits(OT, phi, tokens, lengths):
    N = tokens.shape[0]
    M = OT.shape[0]
    z = np.zeros((N, M))
    for i in range(N):
        for l in range(lengths[i]):
            row = OT[tokens[i, l]]
            for v in range(M):
                z[i, v] += phi[i, l] * row[v]
    return z


def attention(K, tokens, lengths):
    """phi : float64 (N, Lmax), phi[i, l] = softmax_l K[x_l, q] on positions l < lengths[i], 0 after."""
    KT = np.ascontiguousarray(np.asarray(K, dtype=np.float64).T)
    return _attention(KT, np.ascontiguousarray(tokens, dtype=np.int64),
                      np.ascontiguousarray(lengths, dtype=np.int64))


def logits(O, K, tokens, lengths):
    """z : float64 (N, M), z_i = sum_l phi_il O[:, x_il] (prediction = argmax over axis 1)."""
    tokens = np.ascontiguousarray(tokens, dtype=np.int64)
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    phi = attention(K, tokens, lengths)
    return _logits(np.ascontiguousarray(np.asarray(O, dtype=np.float64).T), phi, tokens, lengths)
