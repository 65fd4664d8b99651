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

from .kernels_math import dot2, dots4, exp_shifted, logits_into, max4, scaled, sum4, sumsq4
from .kernels_np import (attention_np, joint_grad_np, logits_np, normalize_np,  # noqa: F401 (twins)
                         normalize_pair_np, stage1_grad_np, stage2_grad_np, stage2_loss_np)

__all__ = ["stage1_grad", "stage2_grad", "joint_grad", "stage2_loss", "normalize", "normalize_pair",
           "attention", "logits", "n_chunks"] + [n + "_np" for n in (
               "stage1_grad", "stage2_grad", "joint_grad", "stage2_loss", "normalize",
               "normalize_pair", "attention", "logits")]

_SLACK = 300.0            # a chunk rescales its accumulator when a term exceeds it by e^300
_MAX_CHUNKS = 8           # chunks for parallel runs (2 cores: 4 each, for balance)
_SERIAL_WORK = 400_000    # N * Lmax * M below which one serial chunk is cheaper than threads
_SCRATCH_BYTES = 1 << 28  # cap on chunks * M * M * 8 * (number of gradients)
_OPTS = dict(cache=True, fastmath=False, nogil=True, boundscheck=False, error_model="numpy")


# ===================================================================== one chunk
@njit(**_OPTS)
def _chunk(OT, KT, tokens, lengths, ys, lo, hi, want_o, want_k, GOT, GKT, stats, z, w, t, s, u, ph, g):
    """Accumulate sentences lo..hi-1 into GOT (M, M) = (dL/dO)^T and GKT (M, M) = (dL/dK)^T.

    OT = O^T and KT = K^T (C-contiguous, so a column of O is a row of OT).
    stats (6,) receives [a_g, a_l, lam_min, mpos_min, scaled loss sum, float64 loss sum]:
    GOT, GKT hold sum_i G_i e^{a_g}; stats[4] holds sum_i loss_i e^{a_l}.
    z, w, t : (M,) and s, u, ph, g : (Lmax,) scratch.
    """
    M = OT.shape[0]
    tb = t.view(np.int64)
    a_g = np.inf
    a_l = np.inf
    lam_min = np.inf
    mp_min = np.inf
    ls = 0.0
    lp = 0.0
    for i in range(lo, hi):
        L = lengths[i]
        q = tokens[i, L - 1]
        y = ys[i]
        # ---- attention: scores, top token, gap delta, phi
        smax = -np.inf
        for l in range(L):
            s[l] = KT[q, tokens[i, l]]
            smax = max(smax, s[l])
        top = -1
        multi = False
        ssec = -np.inf
        for l in range(L):
            if s[l] == smax:
                if top < 0:
                    top = tokens[i, l]
                elif tokens[i, l] != top:
                    multi = True
            else:
                ssec = max(ssec, s[l])
        gap = not multi and ssec > -np.inf        # branch A: one top token, some other score
        delta = smax - ssec if gap else 0.0
        rho = math.exp(-delta)
        ntop = 0
        usum = 0.0
        for l in range(L):
            if s[l] == smax:
                u[l] = 1.0
                ntop += 1
            elif gap:
                u[l] = math.exp(s[l] - ssec)
                usum += u[l]
            else:
                u[l] = math.exp(s[l] - smax)
                usum += u[l]
        U = ntop + rho * usum if gap else ntop + usum
        for l in range(L):
            ph[l] = (u[l] * rho if (gap and s[l] != smax) else u[l]) / U
        # ---- logits z = sum_l phi_l O[:, x_l]
        logits_into(z, OT, tokens, i, ph, L)
        zy = z[y]
        z[y] = -np.inf
        zmax = max4(z)
        exp_shifted(z, zmax, w, t, tb)               # one exp per logit; w_y = e^{-inf} = 0
        sumw = sum4(w)
        w[y] = -sumw                              # r_y = -(sum_{v != y} p_v), never p_y - 1
        m = zy - zmax
        if m >= 0.0:                              # p_v = e^{-m} w_v / (1 + S), S = e^{-m} sum w
            S = math.exp(-m) * sumw
            cr = 1.0 / (1.0 + S)
            loss_i = math.log1p(S)
            mpos = m
            ratio = loss_i / S if S > 1e-8 else 1.0 - 0.5 * S   # log1p(S)/S
            lhat = ratio * sumw                   # loss_i e^{m}
        else:                                     # p_v = w_v / (e^{m} + sum w)
            den = math.exp(m) + sumw
            cr = 1.0 / den
            loss_i = -m + math.log(den)
            mpos = 0.0
            lhat = loss_i
        lp += loss_i
        mp_min = min(mp_min, mpos)
        if mpos < a_l - _SLACK:                   # rescale the loss accumulator (also first term)
            ls = ls * math.exp(mpos - a_l) if a_l < np.inf else 0.0
            a_l = mpos
        ls += lhat * math.exp(a_l - mpos) if mpos != a_l else lhat
        if not (want_o or want_k):
            continue
        if not want_o and not multi and ssec == -np.inf:
            continue                              # one distinct token: dL/dK is exactly 0, no scale
        lam = mpos + (delta if not want_o else 0.0)
        lam_min = min(lam_min, lam)
        if lam < a_g - _SLACK:
            f = math.exp(lam - a_g) if a_g < np.inf else 0.0
            if a_g < np.inf:
                for a1 in range(GOT.shape[0]):
                    for a2 in range(GOT.shape[1]):
                        GOT[a1, a2] *= f
                for a1 in range(GKT.shape[0]):
                    for a2 in range(GKT.shape[1]):
                        GKT[a1, a2] *= f
            a_g = lam
        cg = math.exp(a_g - lam) * cr if lam != a_g else cr   # e^{a_g} r = cg * w
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
            gs = 0.0
            a1 = 0.0
            a2 = 0.0
            for l in range(L):
                if s[l] == smax:
                    gs = g[l]
            for l in range(L):
                if s[l] != smax:
                    a1 += u[l] * (gs - g[l])
                    a2 += u[l] * g[l]
            U2 = U * U
            for l in range(L):
                if s[l] == smax:
                    GKT[q, tokens[i, l]] += ck * a1 / U2
                else:
                    inner = ntop * (g[l] - gs) + rho * (g[l] * usum - a2)
                    GKT[q, tokens[i, l]] += ck * u[l] * inner / U2
        else:
            gbar = 0.0
            for l in range(L):
                gbar += ph[l] * g[l]
            for l in range(L):
                GKT[q, tokens[i, l]] += ck * ph[l] * (g[l] - gbar)
    stats[0] = a_g
    stats[1] = a_l
    stats[2] = lam_min
    stats[3] = mp_min
    stats[4] = ls
    stats[5] = lp


@njit(**_OPTS)
def _reduce(GOT, GKT, stats, N):
    """Fixed-order reduction of the chunks: (GOT (M, M), GKT (M, M), log_scale, loss, log10_loss)."""
    nc = stats.shape[0]
    lam_min = np.inf
    mp_min = np.inf
    for c in range(nc):
        lam_min = min(lam_min, stats[c, 2])
        mp_min = min(mp_min, stats[c, 3])
    GO = np.zeros(GOT.shape[1:])
    GK = np.zeros(GKT.shape[1:])
    ls = 0.0
    lp = 0.0
    for c in range(nc):
        lp += stats[c, 5]
        if stats[c, 1] < np.inf:
            ls += stats[c, 4] * math.exp(mp_min - stats[c, 1])
        if stats[c, 0] < np.inf:
            f = math.exp(lam_min - stats[c, 0]) / N
            GO += f * GOT[c]
            GK += f * GKT[c]
    log10_loss = (math.log(ls) - mp_min - math.log(N)) / math.log(10.0)
    log_scale = -lam_min if lam_min < np.inf else 0.0
    return GO, GK, log_scale, lp / N, log10_loss


@njit(**_OPTS)
def _scratch(nc, M, Lmax, want_o, want_k):
    """Per-chunk accumulators: GOT, GKT (nc, M, M) (or (nc, 0, 0) when not wanted) and stats (nc, 6)."""
    mo = M if want_o else 0
    mk = M if want_k else 0
    return np.zeros((nc, mo, mo)), np.zeros((nc, mk, mk)), np.zeros((nc, 6))


@njit(**_OPTS)
def _run_chunk(OT, KT, tokens, lengths, ys, want_o, want_k, nc, c, GOT, GKT, stats):
    """Chunk c of nc (sentences c N / nc .. (c+1) N / nc) into its own scratch slices."""
    N, Lmax = tokens.shape
    M = OT.shape[0]
    _chunk(OT, KT, tokens, lengths, ys, c * N // nc, (c + 1) * N // nc, want_o, want_k,
           GOT[c], GKT[c], stats[c], np.empty(M), np.empty(M), np.empty(M), np.empty(Lmax),
           np.empty(Lmax), np.empty(Lmax), np.empty(Lmax))


@njit(**_OPTS)
def _drive_serial(OT, KT, tokens, lengths, ys, want_o, want_k, nc):
    """All chunks in order on one thread (used when nc == 1)."""
    N, Lmax = tokens.shape
    M = OT.shape[0]
    GOT, GKT, stats = _scratch(nc, M, Lmax, want_o, want_k)
    for c in range(nc):
        _run_chunk(OT, KT, tokens, lengths, ys, want_o, want_k, nc, c, GOT, GKT, stats)
    return _reduce(GOT, GKT, stats, N)


@njit(parallel=True, **_OPTS)
def _drive_parallel(OT, KT, tokens, lengths, ys, want_o, want_k, nc):
    """Chunks spread over threads; each writes only its own slices, then a fixed-order reduction."""
    N, Lmax = tokens.shape
    M = OT.shape[0]
    GOT, GKT, stats = _scratch(nc, M, Lmax, want_o, want_k)
    for c in prange(nc):
        _run_chunk(OT, KT, tokens, lengths, ys, want_o, want_k, nc, c, GOT, GKT, stats)
    return _reduce(GOT, GKT, stats, N)


# ===================================================================== public wrappers
def n_chunks(N, Lmax, M, n_grads=1):
    """Number of chunks used for (N, Lmax, M): 1 (serial) for small work, else up to 8.

    A function of the sizes only, so results never depend on the thread count.
    """
    if N * Lmax * M < _SERIAL_WORK:
        return 1
    cap = max(1, _SCRATCH_BYTES // (8 * M * M * max(n_grads, 1)))
    return int(max(1, min(_MAX_CHUNKS, cap, N)))


def _run(O, K, tokens, lengths, ys, want_o, want_k, chunks=None):
    O = np.asarray(O, dtype=np.float64)
    M = O.shape[0]
    if O.shape != (M, M) or M < 2:
        raise ValueError(f"O must be square with M >= 2, got shape {O.shape}")
    OT = np.ascontiguousarray(O.T)
    KT = np.ascontiguousarray(np.asarray(K, dtype=np.float64).T)
    tokens = np.ascontiguousarray(tokens, dtype=np.int64)
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    ys = np.ascontiguousarray(ys, dtype=np.int64)
    N, Lmax = tokens.shape
    nc = n_chunks(N, Lmax, M, int(want_o) + int(want_k)) if chunks is None else int(chunks)
    drive = _drive_serial if nc == 1 else _drive_parallel
    GOT, GKT, log_scale, loss, log10_loss = drive(OT, KT, tokens, lengths, ys, want_o, want_k, nc)
    return GOT.T.copy(), GKT.T.copy(), float(log_scale), float(loss), float(log10_loss)


def stage1_grad(O, xs, ys):
    """Collocation loss L0 and its scale-free gradient (SPEC section 4).

    O : float64 (M, M); xs, ys : int64 (n_c,) = colloc_tokens, colloc_next.
    Returns (Gs (M, M), log_scale, loss, log10_loss), dL0/dO = exp(log_scale) * Gs,
    log_scale = -max(min_x margin_x, 0).
    """
    xs = np.ascontiguousarray(xs, dtype=np.int64)
    ones = np.ones(len(xs), dtype=np.int64)
    # one-token sentences read only K[x, x] (attention is 1): a zero K whose transpose is
    # already C-contiguous, so _run makes no M x M copy of it on this per-step path
    M = len(O)
    K = np.zeros((M, M), order="F")
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
