"""Dense reference model in embedding space: forward and hand-derived backward (docs/model.md).

This module defines correctness. It follows the formulas of ``docs/model.md``
(sections 1-3) in embedding space, for any embedding matrix E (d x M, d >= 1;
default E = I), with every difference that saturation makes small formed directly
(section 8, "The dense reference at saturation"), so it stays exact for saturated
attention and underflowing losses. The fast path (:mod:`refimpl.kernels`) works in
token coordinates and is tested against this file and against a 60-digit mpmath
computation (``tests/mp_reference.py``).

Shapes: N sentences, L = Lmax padded positions, M tokens, d embedding width.

    s_l   = e_{x_l}^T W_kq e_q            scores,     (N, L)
    phi   = softmax_l(s)                  attention,  (N, L), 0 on padding
    h     = sum_l phi_l e_{x_l}           (N, d)
    T     = W_ov h                        (N, d)
    z     = E^T T                         logits,     (N, M)
    loss  = log1p(sum_{v != y} exp(z_v - z_y))
"""
from __future__ import annotations

import warnings

import numpy as np

from .checks import check_sentences, check_tokens, check_weights
from .data import RealizableDataset, require_dataset
from .errors import ConfigError, NonOrthonormalEmbeddingError, ShapeError

__all__ = ["loss_and_grads", "stage1_loss_and_grad", "check_orthonormal", "to_token_coords",
           "from_token_coords", "cross_entropy", "forward", "backward"]

_CHUNK = 2048          # sentences per block at most
_PAIR_ELEMS = 1 << 22  # bound on the (block, L, L, d) pair differences of a block (32 MB)


# ============================================================ embeddings
def _embeddings(embeddings, M):
    """E as float64 (d, M); identity when ``embeddings`` is None."""
    if embeddings is None:
        return np.eye(M)
    E = np.asarray(embeddings, dtype=np.float64)
    if E.ndim != 2 or E.shape[1] != M:
        raise ShapeError(f"embeddings must have shape (d, {M}), got {E.shape}")
    return check_weights(E, E.shape, "embeddings")


def _check_tol(tol):
    """``tol`` as a float: a finite real number >= 0 (ConfigError naming tol otherwise)."""
    if isinstance(tol, (bool, np.bool_)) or not isinstance(tol, (int, float, np.integer, np.floating)) \
            or not np.isfinite(tol) or tol < 0:
        raise ConfigError(f"tol must be a finite number >= 0; got tol={tol!r}")
    return float(tol)


def check_orthonormal(E, tol=1e-12):
    """Raise NonOrthonormalEmbeddingError unless max |E^T E - I| <= tol (theory code needs it).

    E : float array, shape (d, M), finite. Orthonormal columns need d >= M.
    tol : float, finite, >= 0.

    Raises
    ------
    NonOrthonormalEmbeddingError
        max |E^T E - I| > tol.
    ShapeError, NonFiniteError
        E is not a 2-D array of real numbers, or has NaN or +-inf entries.
    ConfigError
        tol is not a finite number >= 0.
    """
    tol = _check_tol(tol)
    E = check_weights(E, (None, None), "E")
    M = E.shape[1]
    dev = float(np.max(np.abs(E.T @ E - np.eye(M)), initial=0.0))
    if not dev <= tol:
        raise NonOrthonormalEmbeddingError(
            f"embeddings of shape {E.shape} are not orthonormal: max |E^T E - I| = {dev:.3e} "
            f"> tol {tol:.1e} (theory code needs E^T E = I, so d >= M)",
            max_deviation=dev, shape=tuple(E.shape))


def to_token_coords(W, E):
    """Token coordinates of an embedding-space weight matrix: E^T W E (docs/model.md, section 4).

    Parameters
    ----------
    W : float (d, d), or a stack (..., d, d)
        Embedding-space weights (W_ov, W_kq or a gradient of either); a stack (checkpoints
        of a run) is mapped matrix by matrix.
    E : float (d, M)
        The embedding matrix, column v = e_v.

    Returns
    -------
    float64 (M, M), or (..., M, M) for a stack
        ``K[a, b] = e_a^T W e_b``: row = key (or output) token a, column = query (or input)
        token b. This is what the trainer returns (``TrainResult.W_ov``, ``W_kq``) and what
        the max-margin solutions are written in.

    Raises
    ------
    ShapeError
        E is not 2-D, or W is not (d, d) (or a stack of them) for E of shape (d, M)
        (naming the argument).
    NonFiniteError
        W or E has NaN or +-inf entries.

    Notes
    -----
    Defined for any E (finite, 2-D, d rows), but it is a change of coordinates only when E is orthonormal
    (E^T E = I, d >= M; theory code checks this with :func:`check_orthonormal`). Then the
    model sees W only through E^T W E (scores e_x^T W_kq e_q, logits E^T W_ov h with h in
    range(E)), gradients satisfy E^T (dL/dW) E = dL/dK with equal Frobenius norms, and
    :func:`from_token_coords` is the inverse: exact for d = M, and for d > M the map forgets
    the part of W outside range(E) (``to_token_coords(W, E) = to_token_coords(P W P, E)``,
    P = E E^T).

    Examples
    --------
    >>> import numpy as np, refimpl as ri
    >>> E = np.eye(4)[:, :3]                       # d = 4, M = 3: the trainer's embedding
    >>> W = np.arange(16.0).reshape(4, 4)
    >>> ri.to_token_coords(W, E)                   # the top-left 3 x 3 block
    array([[ 0.,  1.,  2.],
           [ 4.,  5.,  6.],
           [ 8.,  9., 10.]])
    """
    E = check_weights(E, (None, None), "E")
    d = E.shape[0]
    ndim = np.ndim(W)
    W = check_weights(W, (None,) * max(ndim - 2, 0) + (d, d), "W")
    return E.T @ W @ E


def from_token_coords(K, E, tol=1e-12):
    """Embedding-space weights from token coordinates: W = E K E^T (inverse of :func:`to_token_coords`).

    Parameters
    ----------
    K : float (M, M), finite
        Token-coordinate weights (row = key token, column = query token), e.g. the
        ``W_ov`` / ``W_kq`` of a :class:`~refimpl.train.TrainResult` or ``w_kq_star(ds)[0]``.
    E : float (d, M), finite, orthonormal columns (E^T E = I, so d >= M)
        The embedding matrix. The trainer's embedding is ``np.eye(d)[:, :M]``.
    tol : float, finite, >= 0
        Largest accepted max |E^T E - I| (:func:`check_orthonormal`).

    Returns
    -------
    W : float64 (d, d), E K E^T
        ``to_token_coords(W, E) = E^T E K E^T E = K`` (up to rounding). For d = M, E is
        orthogonal and W is the only matrix with that property, so
        ``from_token_coords(to_token_coords(W, E), E) = W``. For d > M many W have
        E^T W E = K (anything can be added outside range(E)); E K E^T is the one that is
        zero outside range(E) (W = P W P with P = E E^T), and the one of least Frobenius
        norm: any W' with E^T W' E = K has P W' P = E K E^T = W and
        ||W'||_F^2 = ||P W' P||_F^2 + ||W' - P W' P||_F^2 >= ||W||_F^2. It is also what
        gradient training from zero in embedding space produces, since every gradient
        E (dL/dK) E^T lies in range(E) (docs/model.md, section 4).

    Raises
    ------
    NonOrthonormalEmbeddingError
        max |E^T E - I| > tol (for a general E, E K E^T does not invert E^T W E).
    ShapeError, NonFiniteError
        E not 2-D, K not (M, M), or non-finite entries (naming E or K).
    ConfigError
        tol is not a finite number >= 0.

    Examples
    --------
    >>> import numpy as np, refimpl as ri
    >>> ds = ri.generate(5, 20, seed=0)
    >>> res = ri.train_two_stage(ds, T0=100, T=100, progress=False)    # token coordinates (5, 5)
    >>> E = np.linalg.qr(np.random.default_rng(0).standard_normal((8, 8)))[0][:, :5]   # d = 8
    >>> W_ov, W_kq = ri.from_token_coords(res.W_ov, E), ri.from_token_coords(res.W_kq, E)
    >>> loss, g_ov, g_kq = ri.loss_and_grads(ds, W_ov, W_kq, E)       # embedding space (8, 8)
    >>> np.allclose(ri.to_token_coords(W_kq, E), res.W_kq)
    True
    """
    tol = _check_tol(tol)
    E = check_weights(E, (None, None), "E")
    M = E.shape[1]
    K = check_weights(K, (M, M), "K")
    check_orthonormal(E, tol)
    return E @ K @ E.T


# ============================================================ loss of logits
def cross_entropy(z, y):
    """Per-row cross entropy and p - e_y, computed without cancellation (docs/model.md, section 5).

    Parameters
    ----------
    z : float (n, M) logits
    y : int (n,) targets

    Returns
    -------
    loss : float (n,), log1p(sum_{v != y} exp(z_v - z_y)) (= log sum_v e^{z_v} - z_y)
    r : float (n, M), p - e_y with r_y = -(sum_{v != y} p_v), never p_y - 1

    Notes
    -----
    With m = z_y - max_{v != y} z_v (the margin) and w_v = exp(z_v - max_{v'!=y} z_v') <= 1,
    S = sum_{v != y} exp(z_v - z_y) = e^{-m} sum w. Stabilized by the largest term:
    m >= 0: loss = log1p(e^{-m} sum w),  p_v = e^{-m} w_v / (1 + e^{-m} sum w);
    m <  0: loss = -m + log(e^{m} + sum w), p_v = w_v / (e^{m} + sum w).
    Both branches add positive numbers only; loss underflows to 0 (and p_v to 0) only
    where the exact value is below the float64 range.
    """
    n, M = z.shape
    rows = np.arange(n)
    zy = z[rows, y]
    other = z.copy()
    other[rows, y] = -np.inf
    zmax = other.max(axis=1) if M > 1 else np.full(n, -np.inf)
    m = zy - zmax                                   # (n,) margins
    with np.errstate(invalid="ignore", over="ignore"):
        w = np.exp(other - zmax[:, None])           # (n, M), 0 at y
    w[rows, y] = 0.0
    if M == 1:
        w[:] = 0.0
    sw = w.sum(axis=1)
    pos = m >= 0
    e = np.exp(-np.abs(m))                          # e^{-|m|} <= 1
    with np.errstate(divide="ignore"):
        loss = np.where(pos, np.log1p(e * sw), -m + np.log(e + sw))
        scale = np.where(pos, e / (1.0 + e * sw), 1.0 / (e + sw))
    r = w * scale[:, None]                          # p_v for v != y
    r[rows, y] = -(sw * scale)                      # -(sum_{v != y} p_v)
    return loss, r


# ============================================================ forward / backward
def forward(W_ov, W_kq, tokens, lengths, E):
    """Forward pass on a block of sentences; returns (z, cache).

    Parameters
    ----------
    W_ov, W_kq : float64 (d, d)
    tokens : int64 (n, L), padded (padding is never read); lengths : int64 (n,) in 1..L
    E : float64 (d, M)

    Returns
    -------
    z : float64 (n, M), z = E^T W_ov h with h = sum_l phi_l e_{x_l}, phi = softmax_l(s),
        s_l = e_{x_l}^T W_kq e_q
    cache : (X (n, L, d) embedded tokens (token 0 on padding), Q (n, d) query embeddings,
        phi (n, L) attention, 0 on padding, h (n, d)), what :func:`backward` needs.

    The scores are computed once per token, e_v^T (W_kq e_q) for all v, and read at the
    positions, so two positions holding the same token have the same score bit for bit.
    """
    n, L = tokens.shape
    rows = np.arange(n)
    valid = np.arange(L)[None, :] < lengths[:, None]            # (n, L)
    x = np.where(valid, tokens, 0)
    X = E.T[x]                                                  # (n, L, d)
    Q = E.T[tokens[rows, lengths - 1]]                          # (n, d)
    per_token = (Q @ W_kq.T) @ E                                # (n, M): e_v^T W_kq e_q
    s = np.where(valid, per_token[rows[:, None], x], -np.inf)   # (n, L)
    u = np.exp(s - s.max(axis=1, keepdims=True))                # 1 at the top score
    phi = u / u.sum(axis=1, keepdims=True)                      # (n, L)
    h = np.einsum("nl,nld->nd", phi, X)                         # (n, d)
    z = (h @ W_ov.T) @ E                                        # (n, M): E^T W_ov h
    return z, (X, Q, phi, h)


def _score_gradient(phi, X, b):
    """d loss / d s_l = phi_l sum_m phi_m (g_l - g_m), g_l - g_m = (e_{x_l} - e_{x_m})^T b.

    Parameters
    ----------
    phi : float64 (n, L) attention (0 on padding); X : float64 (n, L, d) embedded tokens;
    b : float64 (n, d), b = d loss / d h = W_ov^T E r.

    Returns
    -------
    float64 (n, L), the softmax Jacobian (diag(phi) - phi phi^T) applied to g = X b, in
    its pair form (docs/model.md, sections 2 and 8). The differences are formed before
    the dot product, so positions holding the same token give exactly 0 and the sum over
    m never subtracts two nearly equal numbers: at saturation the result is as small as
    the exact value and as accurate, relatively, as its terms.
    """
    D = np.einsum("nlmd,nd->nlm", X[:, :, None, :] - X[:, None, :, :], b)   # (n, L, L): g_l - g_m
    return phi * np.einsum("nm,nlm->nl", phi, D)


def backward(r, W_ov, E, cache):
    """Gradients of sum_i loss_i over a block, given r = p - e_y (n, M) from :func:`cross_entropy`.

    Returns (G_ov (d, d), G_kq (d, d)), sums (not means) over the block.

    Derivation (docs/model.md, sections 2, 3 and 8). For one sentence,
    d loss / d z = r (softmax Jacobian of log-sum-exp), and z = E^T W_ov h, so

        d loss / d T   = E r                       (d,)
        d loss / d W_ov = (E r) h^T                 (d, d)
        d loss / d h   = W_ov^T E r =: b            (d,)
        d loss / d phi_l = e_{x_l}^T b =: g_l       since h = sum_l phi_l e_{x_l}
        d loss / d s_l = phi_l sum_m phi_m (g_l - g_m)   (diag(phi) - phi phi^T, pair form)
        d loss / d W_kq = sum_l (d loss / d s_l) e_{x_l} e_q^T     since s_l = e_{x_l}^T W_kq e_q
    """
    X, Q, phi, h = cache
    Er = r @ E.T                                                # (n, d): E r per sentence
    G_ov = Er.T @ h                                             # (d, d): sum_i (E r_i) h_i^T
    b = Er @ W_ov                                               # (n, d): W_ov^T E r
    a = _score_gradient(phi, X, b)                              # (n, L): d loss / d s
    G_kq = np.einsum("nld,nl->nd", X, a).T @ Q                  # (d, d): sum_{i,l} a_il e_{x_il} e_{q_i}^T
    return G_ov, G_kq


def loss_and_grads(ds, W_ov, W_kq, embeddings=None):
    """Mean loss L(theta) = (1/N) sum_i loss(theta; x^(i), y^(i)) and its gradients.

    The dataset comes first, as in every function that takes one. The earlier order
    ``loss_and_grads(W_ov, W_kq, ds)`` is recognised by type and still works for one
    release, with a DeprecationWarning.

    Parameters
    ----------
    ds : RealizableDataset; only ``tokens`` (N, Lmax), ``lengths`` (N,), ``next_tokens``
        (N,) and ``vocab_size`` M are read. Validity (realizability) is not required, but
        lengths must be in 1..Lmax and tokens and next tokens in 0..M-1 (InputError).
    W_ov, W_kq : float (d, d), finite
    embeddings : float (d, M) or None (E = I, d = M)

    Returns
    -------
    loss : float, (1/N) sum_i log1p(sum_{v != y_i} exp(z_iv - z_iy))
    grad_ov : float64 (d, d), (1/N) sum_i (E r_i) h_i^T
    grad_kq : float64 (d, d), (1/N) sum_i sum_l phi_il sum_m phi_im (g_il - g_im) e_{x_il} e_{q_i}^T

    Raises
    ------
    TypeError
        ``ds`` is not a RealizableDataset (naming what was given).
    InputError
        Malformed weights, embeddings, tokens or next tokens (ShapeError, NonFiniteError,
        SentenceInputError, naming the argument).

    Accuracy (docs/model.md, section 8): each of the three to about 1e-14 relative
    (measured against 60-digit mpmath, bounded by 1e-12 in the tests) for any weight
    norm up to 1e4 and fully saturated attention; where the exact value is below the
    smallest normal float64 (a loss or a gradient that underflows) the error is below
    that number.

    Examples
    --------
    >>> import numpy as np, refimpl as ri
    >>> ds = ri.generate(vocab_size=6, n_sentences=20, seed=4)
    >>> loss, g_ov, g_kq = ri.loss_and_grads(ds, np.zeros((6, 6)), np.zeros((6, 6)))
    >>> bool(np.isclose(loss, np.log(6))), g_ov.shape     # uniform prediction over M = 6 tokens
    (True, (6, 6))
    """
    if isinstance(W_kq, RealizableDataset) and not isinstance(ds, RealizableDataset):
        warnings.warn("loss_and_grads(W_ov, W_kq, ds) is deprecated: pass the dataset first, "
                      "loss_and_grads(ds, W_ov, W_kq)", DeprecationWarning, stacklevel=2)
        ds, W_ov, W_kq = W_kq, ds, W_ov
    require_dataset(ds, "loss_and_grads")
    M = int(ds.vocab_size)
    E = _embeddings(embeddings, M)
    d = E.shape[0]
    W_ov = check_weights(W_ov, (d, d), "W_ov")
    W_kq = check_weights(W_kq, (d, d), "W_kq")
    tokens, lengths = check_sentences((ds.tokens, ds.lengths), M, name="ds")
    ys = check_tokens(ds.next_tokens, M, "ds.next_tokens", len(lengths))
    return _loss_and_grads(W_ov, W_kq, tokens, lengths, ys, E)


def _loss_and_grads(W_ov, W_kq, tokens, lengths, ys, E):
    d = E.shape[0]
    N = len(lengths)
    total = 0.0
    G_ov = np.zeros((d, d))
    G_kq = np.zeros((d, d))
    Lmax = max(int(lengths.max()), 1)
    block = max(1, min(_CHUNK, _PAIR_ELEMS // (Lmax * Lmax * d)))
    for lo in range(0, N, block):
        sl = slice(lo, min(lo + block, N))
        tok, ln = tokens[sl], lengths[sl]
        tok = tok[:, : int(ln.max())]
        z, cache = forward(W_ov, W_kq, tok, ln, E)
        loss, r = cross_entropy(z, ys[sl])
        g_ov, g_kq = backward(r, W_ov, E, cache)
        total += loss.sum()
        G_ov += g_ov
        G_kq += g_kq
    return float(total / N), G_ov / N, G_kq / N


def stage1_loss_and_grad(ds, W_ov, embeddings=None):
    """Collocation loss L0(W_ov) = (1/|C|) sum_{x in C} loss(W_ov; [x], n(x)) and its gradient.

    The dataset comes first; the earlier order ``stage1_loss_and_grad(W_ov, ds)`` is
    recognised by type and still works for one release, with a DeprecationWarning.

    Parameters
    ----------
    ds : RealizableDataset; ``colloc_tokens`` and ``colloc_next`` (n_c,) are read and
        must lie in 0..M-1
    W_ov : float (d, d), finite
    embeddings : float (d, M) or None (E = I)

    Returns
    -------
    loss : float, L0
    grad : float64 (d, d), (1/|C|) sum_x (E r_x) e_x^T

    Raises
    ------
    TypeError
        ``ds`` is not a RealizableDataset (naming what was given).
    InputError
        Malformed weights, embeddings or collocation tokens (naming the argument).

    One-token sentences: attention is 1, h = e_x, z = E^T W_ov e_x. There is no attention
    term, so nothing cancels beyond :func:`cross_entropy` (docs/model.md, section 8);
    same accuracy as :func:`loss_and_grads`.

    Examples
    --------
    >>> import numpy as np, refimpl as ri
    >>> ds = ri.generate(vocab_size=6, n_sentences=20, seed=4)
    >>> loss, grad = ri.stage1_loss_and_grad(ds, ri.w_ov_star(ds)[0])
    >>> bool(loss < np.log(6)), grad.shape               # W_ov* already predicts n(x)
    (True, (6, 6))
    """
    if isinstance(W_ov, RealizableDataset) and not isinstance(ds, RealizableDataset):
        warnings.warn("stage1_loss_and_grad(W_ov, ds) is deprecated: pass the dataset first, "
                      "stage1_loss_and_grad(ds, W_ov)", DeprecationWarning, stacklevel=2)
        ds, W_ov = W_ov, ds
    require_dataset(ds, "stage1_loss_and_grad")
    M = int(ds.vocab_size)
    E = _embeddings(embeddings, M)
    d = E.shape[0]
    W_ov = check_weights(W_ov, (d, d), "W_ov")
    xs = check_tokens(ds.colloc_tokens, M, "ds.colloc_tokens")
    ys = check_tokens(ds.colloc_next, M, "ds.colloc_next", len(xs))
    X = E[:, xs]                                  # (d, n_c)
    z = (W_ov @ X).T @ E                          # (n_c, M)
    loss, r = cross_entropy(z, ys)
    grad = (E @ r.T) @ X.T / len(xs)              # (d, d): mean_x (E r_x) e_x^T
    return float(loss.mean()), grad
