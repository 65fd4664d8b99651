"""Next-token prediction of the one-layer transformer for arbitrary sentences (SPEC sections 2, 7).

Token coordinates (E = I): ``O``, ``K`` are M x M, row = key token, column = query
token. Sentences are ragged lists or a padded ``(tokens, lengths)`` tuple.
"""
from __future__ import annotations

import numpy as np

from .data import pad_sentences
from .errors import ConfigError

__all__ = ["predict", "predict_limit"]


# ================================================================ prediction
def _attention(K, tokens, lengths, limit_tol=None):
    """Attention phi (N, L) on the positions (0 on padding) and the queries q (N,).

    phi = softmax_l(K[x_l, q]) (SPEC section 2), shifted by the row maximum; with ``limit_tol``
    instead the c -> infinity limit of softmax(c s): uniform over positions with
    s_l >= max s - limit_tol.
    """
    N = tokens.shape[0]
    q = tokens[np.arange(N), lengths - 1]
    valid = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    s = np.where(valid, K[np.where(valid, tokens, 0), q[:, None]], -np.inf)   # (N, L)
    if limit_tol is None:
        phi = np.exp(s - s.max(axis=1, keepdims=True))                         # exp(-inf) = 0
    else:
        phi = (s >= s.max(axis=1, keepdims=True) - limit_tol).astype(np.float64)
    return phi / phi.sum(axis=1, keepdims=True), q


def _output(O, phi, tokens):
    """Prediction argmax_v z_v (N,) and softmax(z) (N, M) for z = sum_l phi[n, l] O[:, tokens[n, l]]."""
    safe = np.where(tokens >= 0, tokens, 0)
    OT = np.ascontiguousarray(O.T)                             # row u is the column O[:, u]
    z = np.zeros((tokens.shape[0], O.shape[0]))                # (N, M), one position at a time
    for l in range(tokens.shape[1]):
        z += phi[:, l, None] * OT[safe[:, l]]
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return np.argmax(z, axis=1).astype(np.int64), p


def _as_pair(W_ov, W_kq, sentences):
    O, K = np.asarray(W_ov, dtype=np.float64), np.asarray(W_kq, dtype=np.float64)
    tokens, lengths = pad_sentences(sentences)
    M = O.shape[0]
    if O.shape != (M, M) or K.shape != (M, M):
        raise ConfigError(f"W_ov and W_kq must be M x M token-coordinate matrices; got {O.shape}, {K.shape}")
    valid = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    if (lengths < 1).any() or ((tokens < 0) | (tokens >= M))[valid].any():
        raise ConfigError(f"sentences must be non-empty with tokens in 0..{M - 1}")
    return O, K, tokens, lengths


def predict(W_ov, W_kq, sentences):
    """Next-token prediction of the one-layer transformer (SPEC section 2), token coordinates (E = I).

    Parameters
    ----------
    W_ov, W_kq : float arrays, shape (M, M)   O and K; row = key token, column = query token
    sentences : ragged int sequences, or a tuple (tokens int64 (N, Lmax) padded with -1, lengths (N,))

    Returns
    -------
    next_token : int64 (N,), argmax_v z_v (lowest index on exact ties)
    probs : float64 (N, M), softmax(z) computed stably (shifted by the row maximum)
    """
    O, K, tokens, lengths = _as_pair(W_ov, W_kq, sentences)
    phi, _ = _attention(K, tokens, lengths)
    return _output(O, phi, tokens)


def predict_limit(W_ov, W_kq, sentences, tol=1e-9):
    """The limit c -> infinity of ``predict(W_ov, c * W_kq, sentences)``: attention uniform over the
    positions l with s_l >= max_l s_l - tol (all occurrences of the top-scoring tokens).

    Same shapes and returns as :func:`predict`.
    """
    O, K, tokens, lengths = _as_pair(W_ov, W_kq, sentences)
    phi, _ = _attention(K, tokens, lengths, limit_tol=tol)
    return _output(O, phi, tokens)
