"""Next-token prediction of the one-layer transformer for arbitrary sentences (docs/model.md).

Token coordinates (E = I): ``O``, ``K`` are M x M, row = key token, column = query
token. Sentences are a :class:`~refimpl.data.RealizableDataset` (its sentences), ragged
lists or a padded ``(tokens, lengths)`` tuple. They are checked by :mod:`refimpl.checks`
before the compiled loops read them; a flat list of ints is refused (it is one sentence,
not a list of sentences: wrap it as ``[[...]]``).
"""
from __future__ import annotations

import numpy as np

from . import kernels
from .checks import check_sentences, check_weights
from .data import RealizableDataset
from .errors import InputError

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
    """Checked (O, K, tokens, lengths): O, K finite float64 (M, M); tokens int64 (N, Lmax)
    with every token read in 0..M-1; lengths int64 (N,) in 1..Lmax (InputError family)."""
    O = check_weights(W_ov, (None, None), "W_ov")
    M = O.shape[0]
    O = check_weights(O, (M, M), "W_ov")
    K = check_weights(W_kq, (M, M), "W_kq")
    if isinstance(sentences, RealizableDataset):          # its sentences, padded (ds.tokens)
        sentences = (sentences.tokens, sentences.lengths) if sentences.n_sentences else []
    tokens, lengths = check_sentences(sentences, M)
    return O, K, tokens, lengths


def predict(W_ov, W_kq, sentences):
    """Next-token prediction of the one-layer transformer, token coordinates (E = I).

    z_i = sum_l phi_il O[:, x_il],  phi_i = softmax_l K[x_il, q_i]  (docs/model.md, section 1).

    Parameters
    ----------
    W_ov, W_kq : float arrays, shape (M, M), finite
        O and K; row = key token, column = query token.
    sentences : RealizableDataset, list of sentences, or (tokens, lengths)
        A dataset (its sentences, in order); a list of sentences (1-D int sequences,
        each non-empty); or a tuple (tokens int (N, Lmax), lengths int (N,)) with
        tokens[i, :lengths[i]] in 0..M-1 (padding beyond lengths[i] is not read).
        A flat list of ints such as ``[0, 1, 4]`` is refused: one sentence is ``[[0, 1, 4]]``.

    Returns
    -------
    next_token : int64 (N,)
        argmax_v z_v (lowest index on exact ties).
    probs : float64 (N, M)
        softmax(z) computed stably (shifted by the row maximum); each entry to a few
        ulp relative (the logits are sums of L products, the softmax one exp and one
        division per entry; docs/model.md, section 8).

    Raises
    ------
    ShapeError, NonFiniteError
        Weights of the wrong shape or not finite.
    SentenceInputError
        A flat list of ints, no sentences, a length outside 1..Lmax or a token outside
        0..M-1 (the message names the sentence, the position and the value).

    Examples
    --------
    >>> import numpy as np
    >>> import refimpl as ri
    >>> O = np.roll(np.eye(3), 1, axis=0)   # O[:, x] = e_{x+1 mod 3}: predicts x + 1 mod 3
    >>> next_token, probs = ri.predict(O, np.zeros((3, 3)), [[0], [2, 2]])
    >>> next_token.tolist(), probs.shape
    ([1, 0], (2, 3))
    """
    O, K, tokens, lengths = _as_pair(W_ov, W_kq, sentences)
    return _output(kernels.logits(O, K, tokens, lengths))


def predict_limit(W_ov, W_kq, sentences, tol=1e-9):
    """The limit c -> infinity of ``predict(W_ov, c * W_kq, sentences)``: attention uniform over the
    positions l with s_l >= max_l s_l - tol (all occurrences of the top-scoring tokens).

    Parameters
    ----------
    W_ov, W_kq, sentences
        As in :func:`predict`.
    tol : float >= 0, default 1e-9
        Positions whose score is within ``tol`` of the top score share the attention.

    Returns
    -------
    next_token : int64 (N,)
    probs : float64 (N, M)
        As in :func:`predict`.

    Raises
    ------
    InputError
        ``tol`` is not a finite number >= 0; otherwise the errors of :func:`predict`.

    Examples
    --------
    >>> import numpy as np
    >>> from refimpl.prediction import predict_limit
    >>> O = np.roll(np.eye(3), 1, axis=0)
    >>> K = np.zeros((3, 3)); K[2, 0] = 1.0     # query 0 attends to token 2
    >>> predict_limit(O, K, [[2, 1, 0]])[0].tolist()
    [0]
    """
    if not (isinstance(tol, (int, float, np.integer, np.floating)) and np.isfinite(tol) and tol >= 0):
        raise InputError(f"tol must be a finite number >= 0, got tol={tol!r}")
    O, K, tokens, lengths = _as_pair(W_ov, W_kq, sentences)
    return _output(kernels.logits(O, None, tokens, lengths, phi=_limit_attention(K, tokens, lengths, tol)))
