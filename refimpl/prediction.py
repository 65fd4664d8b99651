"""Next-token prediction of the one-layer transformer for arbitrary sentences (SPEC sections 2, 7).

Token coordinates (E = I): ``O``, ``K`` are M x M, row = key token, column = query
token. Sentences are ragged lists or a padded ``(tokens, lengths)`` tuple.
"""
from __future__ import annotations

import numpy as np

from . import kernels
from .data import pad_sentences
from .errors import ConfigError

__all__ = ["predict", "predict_limit"]


# ================================================================ prediction
def _limit_attention(K, tokens, lengths, tol):
    """The c -> infinity limit of softmax_l(c K[x_l, q]): uniform over the positions with
    s_l >= max s - tol, 0 elsewhere and on padding. float64 (N, Lmax)."""
    N = tokens.shape[0]
    q = tokens[np.arange(N), lengths - 1]
    valid = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    s = np.where(valid, K[np.where(valid, tokens, 0), q[:, None]], -np.inf)   # (N, L)
    phi = (s >= s.max(axis=1, keepdims=True) - tol).astype(np.float64)
    return phi / phi.sum(axis=1, keepdims=True)


def _output(z):
    """Prediction argmax_v z_v (N,) and softmax(z) (N, M), shifted by the row maximum."""
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
    return _output(kernels.logits(O, K, tokens, lengths))


def predict_limit(W_ov, W_kq, sentences, tol=1e-9):
    """The limit c -> infinity of ``predict(W_ov, c * W_kq, sentences)``: attention uniform over the
    positions l with s_l >= max_l s_l - tol (all occurrences of the top-scoring tokens).

    Same shapes and returns as :func:`predict`.
    """
    O, K, tokens, lengths = _as_pair(W_ov, W_kq, sentences)
    return _output(kernels.logits(O, None, tokens, lengths, phi=_limit_attention(K, tokens, lengths, tol)))
