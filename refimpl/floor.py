"""The stage-2 floor ``L_floor(O)`` (docs/maxmargin.md, section 4): per sentence, the least loss over the
attention simplex of its distinct tokens, with a vertex (perfect attention) fast path.
"""
from __future__ import annotations

import warnings

import numpy as np
from numba import njit
from scipy.special import logsumexp

from .budget import check_bytes
from .checks import check_square
from .data import RealizableDataset, ensure_valid
from .ldp import serial_blas as _serial_blas

__all__ = ["log_loss", "stage2_floor"]

_EPS = np.finfo(np.float64).eps
_TINY = np.finfo(np.float64).tiny

# ============================================================ stage-2 floor
def log_loss(Z, y):
    """log of the cross-entropy loss per row: Z float64 (n, M) logits, y int (n,) -> (n,).

    With ``a = log sum_{v != y} exp(z_v - z_y)`` (a log-sum-exp, never overflows),
    ``loss = log1p(e^a)`` (docs/model.md), and ``log(loss) = a + log1p(-e^a/2)`` for
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
_FLOOR_BLOCK_BYTES = 1 << 25   # each (keys, M) temporary of the vertex test stays under 32 MiB
_DOT_GROUP_BYTES = 1 << 23     # w rows read together by the pair dot products (a quarter of a 32 MiB L3)


def _simplex_objective(Z, y, scale):
    """phi -> loss(Z phi; y)/scale, its gradient Z^T (p - e_y)/scale and, with ``hess``,
    its Hessian Z^T (diag p - p p^T) Z/scale. Z : (M, u). loss = softplus(lse_{v != y}(z_v - z_y)).

    Both are written with Zc = Z - Z[y] (rows relative to y's, so Zc[y] = 0) and the
    probabilities off y: gradient Zc^T p, Hessian (Zc^T diag p) Zc - g g^T. Each term is
    O(1 - p_y), so nothing cancels when the loss is tiny (Z^T (p - e_y) and Z^T diag(p) Z
    - (Z^T p)(Z^T p)^T differ from them by O(1) terms that cancel to all digits).
    """
    Zc = Z - Z[y]                                     # (M, u)

    def fun(phi, hess=False):
        a = Zc @ phi                                  # z - z_y, a[y] = 0
        a[y] = -np.inf
        top = a.max()
        e = np.exp(a - top)
        loss = np.logaddexp(0.0, top + np.log(e.sum()))
        c = max(top, 0.0)                             # p_v = e^{a_v - c} / (e^{-c} + sum e^{a - c})
        p = np.exp(a - c)                             # p[y] = 0: only the probabilities off y
        p /= np.exp(-c) + p.sum()
        g = Zc.T @ p
        if not hess:
            return loss / scale, g / scale
        return loss / scale, g / scale, ((Zc.T * p) @ Zc - np.outer(g, g)) / scale
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
        try:
            d[S] = np.linalg.solve(KKT, np.append(-g[S], 0.0))[:s]
            newton = bool(np.isfinite(d).all())
        except np.linalg.LinAlgError:                 # H_S = 0 to the last digit (mu underflowed)
            newton = False
        if not newton or np.any((phi == 0) & (d < 0)):   # no Newton step, or it leaves the simplex
            j = int(np.argmin(g))
            k = int(np.flatnonzero(phi > 0)[np.argmax(g[phi > 0])])
            d = np.zeros(u)
            d[j], d[k] = 1.0, -1.0
            curv = H[j, j] + H[k, k] - 2 * H[j, k]
            t_max, block = phi[k], k
            t = min(t_max, -(g @ d) / curv) if curv > 0 else t_max
        else:
            big = np.abs(d).max()
            if big > 1.0:       # a near-flat face (H_S ~ 0: logits of tens): the step would leave
                d /= big        # the simplex at t ~ 1/big, below the 1e-14 floor on t; the simplex
            shrink = np.flatnonzero(d < 0)                # has max-norm diameter 1 per coordinate
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


def _dataset_and_matrix(first, second):
    """``(ds, O)`` from ``stage2_floor``'s two positional arguments, dataset first; the old
    order ``(O, ds)`` is recognized by type and warned about (DeprecationWarning)."""
    if isinstance(first, RealizableDataset):
        return first, second
    if isinstance(second, RealizableDataset):
        warnings.warn("stage2_floor(O, ds) is deprecated: pass the dataset first, stage2_floor(ds, O); "
                      "the old order will be removed in the next release", DeprecationWarning, stacklevel=3)
        return second, first
    raise TypeError(f"stage2_floor expects a RealizableDataset (see refimpl.load_dataset / "
                    f"RealizableDataset(...)) as its first argument, got {type(first).__name__}")


def stage2_floor(ds, O, *, return_details=False):
    """Stage-2 loss floor ``L_floor(O) = (1/N) sum_i min_{phi in simplex} loss(sum_l phi_l O[:, x_l]; y_i)``.

    Parameters
    ----------
    ds : RealizableDataset
        The training sentences (validated on first use).
    O : float array (M, M)
        The fixed W_ov of stage 2, in token coordinates.
    return_details : bool, default False
        Also return the per-sentence log-floors and Frank-Wolfe gaps.

    Returns
    -------
    floor : float
        ``L_floor(O)`` (may underflow to 0; ``log10_floor`` does not).
    log10_floor : float
    vertex_optimal : bool (N,)
        Whether perfect attention on the optimal token attains sentence i's minimum.
    details : dict, only with ``return_details``
        ``log_loss`` (N,) per-sentence natural-log floors, ``gap`` (N,) relative
        Frank-Wolfe gaps of the non-vertex sentences (0 at vertices).

    Raises
    ------
    TypeError
        Neither argument is a RealizableDataset.
    DatasetError
        The dataset is not realizable.
    ShapeError, NonFiniteError
        O is not a finite (M, M) array, M the dataset's vocabulary size.
    ArithmeticError
        A simplex solve did not certify its minimum (gap above 1e-10 of the loss).

    Notes
    -----
    The dataset comes first, as in every function that takes one. The old order
    ``stage2_floor(O, ds)`` is still accepted for one release (recognized by the argument
    types) and emits a DeprecationWarning.

    The minimum is over the sentence's distinct tokens (a repeated token only adds
    weight on the same column). The vertex ``phi = e_{x*}`` is optimal iff for every distinct
    token u: ``O[:, u]^T w >= O[:, x*]^T w`` with ``w = (p - e_y)/(1 - p_y)``, ``p = softmax(O[:, x*])``
    (the gradient ``(1 - p_y) O^T w`` of the loss in phi); it is accepted up to a rounding allowance
    ``1e-12 ||w||_1 max|O|``, which bounds its relative loss error by the same amount. Other sentences
    are solved by an active-set Newton method (docs/maxmargin.md) and accepted once their
    Frank-Wolfe gap is below 1e-10 of their loss.

    Cost: ``p``, ``w`` and the vertex loss depend only on the sentence's pair ``(x*, y)``, so they
    are computed once per distinct pair (at most M of them, O(M^2)); the vertex test takes one
    length-M dot product per distinct (pair, token) of the sentences, O(T M) for T tokens, and
    a transposed copy of O (8 M^2 bytes). At M = 5000, N = 2e5 (8e5 tokens) that is about 3 s
    and 0.4 GiB, where the product ``w @ O`` of all sentences took N M^2 = 5e12 flops.

    Examples
    --------
    >>> import refimpl as ri
    >>> ds = ri.generate(vocab_size=6, n_sentences=20, seed=4)
    >>> O = ri.train_two_stage(ds, T0=200, T=0, progress=False).W_ov
    >>> floor, log10_floor, vertex = ri.stage2_floor(ds, O)
    >>> vertex.shape
    (20,)
    """
    ds, O = _dataset_and_matrix(ds, O)
    ensure_valid(ds)
    O = check_square(O, "O", ds.vocab_size)
    return _stage2_floor(ds, O, return_details)


@njit(cache=True, nogil=True, boundscheck=False)
def _pair_dots(W, OT, rows, cols, out):
    """``out[j] = W[rows[j]] . OT[cols[j]]`` (one BLAS ddot per pair, no gathered copies).

    W : float64 (n, M), C-contiguous; OT : float64 (M, M), C-contiguous; rows, cols : int64 (p,);
    out : float64 (p,), written in place.
    """
    for j in range(len(rows)):
        out[j] = np.dot(W[rows[j]], OT[cols[j]])


@_serial_blas
def _stage2_floor(ds, O, return_details):
    """:func:`stage2_floor` after the argument check; O : float (M, M).

    The vertex logits ``O[:, x*_i]``, their log-loss and the direction ``w_i`` depend on
    sentence i only through its key ``(x*_i, y_i)``, so they are computed once per distinct
    key (at most M of them: n_k M exponentials instead of N M). The vertex test
    ``D[i, l] = O[:, x_il]^T w_i - O[:, x*_i]^T w_i >= -allow_i`` needs
    ``A[k, u] = O[:, u]^T w_k`` only at the distinct (key, token) pairs of the sentences and at
    ``(k, x*_k)``: one length-M dot product each, ``O(T M)`` for T tokens in all instead of
    the ``N M^2`` of the full product ``w @ O``. Keys are processed in blocks whose
    ``(keys, M)`` temporaries stay under ``_FLOOR_BLOCK_BYTES``; every number of a key is
    computed from that key's row alone, so the result does not depend on the blocking.
    """
    O = np.asarray(O, dtype=np.float64)
    N, M = ds.n_sentences, O.shape[0]
    xs, ys = ds.optimal, ds.next_tokens
    keys, key_of = np.unique(xs * M + ys, return_inverse=True)       # (n_k,), (N,)
    key_of = key_of.reshape(-1)
    kx, ky = keys // M, keys % M
    n_k = len(keys)
    sid = ds.sentence_ids                                             # (T,) sentence of each token
    key_flat = key_of[sid]                                            # (T,) its key
    n_tok = len(key_flat)
    # distinct (key, token) pairs, sorted by key: the T sentence tokens, then (k, x*_k)
    pairs, pair_of = np.unique(np.concatenate([key_flat * M + ds.flat_tokens, np.arange(n_k) * M + kx]),
                               return_inverse=True)
    pair_of = pair_of.reshape(-1)
    p_key, p_tok = pairs // M, pairs % M
    check_bytes(8 * M * M, f"the transposed W_ov of the stage-2 floor at M={M}")
    OT = np.ascontiguousarray(O.T)                                    # OT[u] = O[:, u], (M, M)
    A = np.empty(len(pairs))                                          # A[j] = O[:, p_tok[j]]^T w_{p_key[j]}
    logl_key = np.empty(n_k)
    allow = np.empty(n_k)
    scale = max(np.abs(O).max(), _TINY)
    rows = max(1, _FLOOR_BLOCK_BYTES // (8 * M))                     # keys per block: (rows, M) temporaries
    for a in range(0, n_k, rows):
        b = min(n_k, a + rows)
        Zs = OT[kx[a:b]]                                              # (n, M) logits at the vertex
        w = np.ascontiguousarray(_direction(Zs, ky[a:b]))             # (n, M)
        logl_key[a:b] = log_loss(Zs, ky[a:b])
        allow[a:b] = _VERTEX_RTOL * np.abs(w).sum(axis=1) * scale
        s, e = np.searchsorted(p_key, [a, b])
        k_loc, tok = p_key[s:e] - a, p_tok[s:e]
        # order: by groups of _DOT_GROUP_BYTES of w rows, then by token, so each OT row is
        # read once per group while the group's w rows stay in cache (measured 2.2 s -> 1.0 s
        # for 8e5 pairs at M = 5000, against the order by key)
        order = np.lexsort((k_loc, tok, k_loc // max(1, _DOT_GROUP_BYTES // (8 * M))))
        out = np.empty(e - s)
        _pair_dots(w, OT, k_loc[order], tok[order], out)
        A[s + order] = out
        del Zs, w
    D = A[pair_of[:n_tok]] - A[pair_of[n_tok:]][key_flat]             # (T,): O[:, x]^T w - O[:, x*]^T w
    vertex = np.bincount(sid[D < -allow[key_flat]], minlength=N) == 0
    logl = logl_key[key_of]
    del OT, A, D
    gap = np.zeros(N)
    for i in np.flatnonzero(~vertex):
        toks = np.unique(ds.sentence(i))
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
