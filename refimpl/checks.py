"""Checks at the public boundary: weights and sentences, before any compiled loop runs.

The Numba loops of :mod:`refimpl.kernels` index without bounds checks, so a length
longer than the padded width or a token outside 0..M-1 would read past an array
(a crash or garbage). Every public function that takes weights or sentences from a
user passes them through here first. The checks are vectorized, O(N * Lmax) for
sentences and O(size) for weights, and raise one-line errors of the
:class:`~refimpl.errors.InputError` family that name the argument and, for
sentences, the sentence index, the position and the offending value.
"""
from __future__ import annotations

import numbers

import numpy as np

from .errors import NonFiniteError, SentenceInputError, ShapeError

__all__ = ["check_weights", "check_square", "check_sentences", "check_padded", "check_tokens",
           "check_token_problem"]

FLAT_MESSAGE = "a flat list of ints is not a list of sentences; wrap one sentence as [[...]]"


def _shape_text(shape):
    return "(" + ", ".join("any" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _real_array(W, shape, name):
    """``W`` as an ndarray of real numbers (any integer or float dtype), not yet cast.

    Complex values (even with a zero imaginary part), booleans, strings and objects that are
    not real numbers raise :class:`ShapeError` naming ``name`` and the dtype: casting them to
    float64 would drop the imaginary part or read True as 1.0 without a word."""
    try:
        A = W if isinstance(W, np.ndarray) else np.asarray(W)
    except (TypeError, ValueError) as err:
        raise ShapeError(f"{name} must be a float array of shape {_shape_text(shape)}: {err}") from None
    kind = A.dtype.kind
    if kind in "iuf":
        return A
    if kind == "O" and all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
                           for v in A.flat):
        return A
    what = {"c": "complex", "b": "boolean"}.get(kind, "non-numeric")
    raise ShapeError(f"{name} must be a float array of shape {_shape_text(shape)} holding real numbers, "
                     f"got {what} dtype {A.dtype}")


def check_weights(W, shape, name, finite=True):
    """A finite float64 array of the given shape, C-contiguous (a copy only when needed).

    Parameters
    ----------
    W : array-like of real numbers
        Integer and float dtypes are converted to float64 (and an object array whose items
        are all real numbers); nothing else is.
    shape : tuple of int or None
        The required shape; None matches any size along that axis.
    name : str
        The argument's name used in messages.
    finite : bool, default True
        False lets NaN and +-inf through (an iterate recorded at a non-finite stop, whose
        caller defines what it returns for it); the shape and dtype rules still hold.

    Returns
    -------
    ndarray
        float64, C-contiguous, of the given shape.

    Raises
    ------
    ShapeError
        Not an array of real numbers (complex, even with a zero imaginary part; boolean;
        strings; objects that are not real numbers; ragged nesting), naming the dtype; or the
        wrong number of dimensions or the wrong shape (names both shapes).
    NonFiniteError
        NaN or +-inf (names the first index and value), or an integer beyond float64.
    """
    try:
        A = np.asarray(_real_array(W, shape, name), dtype=np.float64)
    except OverflowError:                           # an object array holding an int beyond float64
        raise NonFiniteError(f"{name} holds an integer too large for float64; weights must be finite") from None
    if A.ndim != len(shape) or any(s is not None and a != s for a, s in zip(A.shape, shape)):
        raise ShapeError(f"{name} must have shape {_shape_text(shape)}, got shape {A.shape}")
    if finite and not np.isfinite(A).all():
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(A))[0])
        raise NonFiniteError(f"{name} (shape {A.shape}) holds {A[idx]} at index {idx}; "
                             f"weights must be finite")
    return np.ascontiguousarray(A)


def check_square(W, name, M=None, finite=True):
    """A float64 (M, M) array (M = W's first dimension when None), finite unless ``finite`` is
    False; see :func:`check_weights`."""
    if M is None:
        M = check_weights(W, (None, None), name, finite=False).shape[0]
    return check_weights(W, (M, M), name, finite)


def _integer_array(values, what):
    """values as an ndarray of an integer dtype (no conversion of floats or bools; an empty
    list, which NumPy types float64, is an empty int64 array)."""
    a = values if isinstance(values, np.ndarray) else np.asarray(values)
    if a.dtype.kind in "iu":
        return a
    if a.size == 0 and not isinstance(values, np.ndarray):
        return a.astype(np.int64)
    if a.dtype == object and all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                 for v in a.ravel()):
        return a      # Python ints too large for int64: range checks still work on them
    raise SentenceInputError(f"{what} must hold integers, got dtype {a.dtype}")


def _first(mask):
    """Index tuple of the first True entry of a boolean array (C order)."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


def check_tokens(values, M, name, length=None):
    """A 1-D array of tokens (next tokens, collocation tokens) as contiguous int64 in 0..M-1.

    Parameters
    ----------
    values : int array-like, shape (n,)
    M : int, vocabulary size
    name : str; length : int or None, the required n

    Raises ShapeError (not 1-D, wrong length) or SentenceInputError (not integers, or a
    value outside 0..M-1, naming its index and value).
    """
    a = _integer_array(values, name)
    if a.ndim != 1:
        raise ShapeError(f"{name} must be 1-D, got shape {a.shape}")
    if length is not None and len(a) != length:
        raise ShapeError(f"{name} must have length {length} (one per sentence), got {len(a)}")
    bad = (a < 0) | (a >= M)
    if bad.any():
        i = int(np.argmax(bad))
        raise SentenceInputError(f"{name}[{i}] = {a[i]} is outside 0..{M - 1} (M = {M})")
    return np.ascontiguousarray(a, dtype=np.int64)


def _is_pair(x):
    """A (tokens (N, Lmax), lengths (N,)) pair: a tuple of two whose first is a 2-D array,
    the convention of :func:`refimpl.data.pad_sentences`."""
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], np.ndarray) and x[0].ndim == 2


def _check_pair(tokens, lengths, M, name):
    tokens = _integer_array(tokens, f"{name}: tokens")
    lengths = _integer_array(lengths, f"{name}: lengths")
    if lengths.ndim != 1 or len(lengths) != tokens.shape[0]:
        raise ShapeError(f"{name}: lengths must have shape ({tokens.shape[0]},) to match tokens of "
                         f"shape {tokens.shape}, got shape {lengths.shape}")
    N, Lmax = tokens.shape
    if N == 0:
        raise SentenceInputError(f"{name}: no sentences (tokens of shape {tokens.shape})")
    bad_len = (lengths < 1) | (lengths > Lmax)
    if bad_len.any():
        i = int(np.argmax(bad_len))
        raise SentenceInputError(f"{name}: sentence {i} has length {lengths[i]}, outside 1..{Lmax} "
                                 f"(the width of tokens, shape {tokens.shape})")
    inside = np.arange(Lmax) < lengths[:, None]                  # (N, Lmax): positions read
    bad = ((tokens < 0) | (tokens >= M)) & inside
    if bad.any():
        i, l = _first(bad)
        raise SentenceInputError(f"{name}: sentence {i}, position {l}: token {tokens[i, l]} is outside "
                                 f"0..{M - 1} (M = {M})")
    return np.ascontiguousarray(tokens, dtype=np.int64), np.ascontiguousarray(lengths, dtype=np.int64)


def _check_list(sentences, M, name):
    if isinstance(sentences, (str, bytes)) or not hasattr(sentences, "__len__"):
        raise SentenceInputError(f"{name} must be a list of sentences (sequences of ints) or a "
                                 f"(tokens, lengths) pair, got {type(sentences).__name__}")
    if len(sentences) == 0:
        raise SentenceInputError(f"{name}: no sentences (an empty list)")
    seqs = []
    for i, s in enumerate(sentences):
        if isinstance(s, (numbers.Number, np.generic)):
            raise SentenceInputError(f"{name}: item {i} is the number {s!r}: {FLAT_MESSAGE}")
        try:
            a = s if isinstance(s, np.ndarray) else np.asarray(s)
        except (TypeError, ValueError):
            raise SentenceInputError(f"{name}: sentence {i} is not a 1-D sequence of ints") from None
        if a.ndim == 0:
            raise SentenceInputError(f"{name}: item {i} is the scalar {s!r}: {FLAT_MESSAGE}")
        if a.size == 0:
            raise SentenceInputError(f"{name}: sentence {i} is empty (length 0; its query is undefined)")
        a = _integer_array(a, f"{name}: sentence {i}")
        if a.ndim != 1:
            raise SentenceInputError(f"{name}: sentence {i} must be a 1-D sequence of ints, got shape {a.shape}")
        bad = (a < 0) | (a >= M)
        if bad.any():
            l = int(np.argmax(bad))
            raise SentenceInputError(f"{name}: sentence {i}, position {l}: token {a[l]} is outside "
                                     f"0..{M - 1} (M = {M})")
        seqs.append(a)
    lengths = np.fromiter((len(a) for a in seqs), dtype=np.int64, count=len(seqs))
    tokens = np.full((len(seqs), int(lengths.max())), -1, dtype=np.int64)
    for i, a in enumerate(seqs):
        tokens[i, : len(a)] = a
    return tokens, lengths


def check_sentences(sentences_or_pair, M, name="sentences"):
    """Sentences as contiguous int64 ``(tokens (N, Lmax) padded with -1, lengths (N,))``.

    Parameters
    ----------
    sentences_or_pair : a list of sentences (each a 1-D sequence of ints), or a tuple
        ``(tokens int (N, Lmax), lengths int (N,))`` whose first item is a 2-D ndarray
        (padding beyond ``lengths[i]`` is never read, so its values are not checked)
    M : int, vocabulary size; every token read must be in 0..M-1
    name : str, the argument's name used in messages

    Raises
    ------
    SentenceInputError : a flat list of ints, no sentences, a non-integer dtype, a length
        outside 1..Lmax, or a token outside 0..M-1 (naming sentence, position and value)
    ShapeError : lengths whose shape does not match tokens

    Cost: O(N * Lmax) vectorized for a pair; one pass over the sentences for a list.
    """
    M = int(M)
    if _is_pair(sentences_or_pair):
        return _check_pair(*sentences_or_pair, M, name)
    if isinstance(sentences_or_pair, np.ndarray) and sentences_or_pair.ndim == 1 \
            and sentences_or_pair.dtype.kind in "iu":
        raise SentenceInputError(f"{name}: {FLAT_MESSAGE}")
    if isinstance(sentences_or_pair, (list, tuple)) and len(sentences_or_pair) > 0 and all(
            isinstance(v, (numbers.Integral, np.integer)) for v in sentences_or_pair):
        raise SentenceInputError(f"{name}: {FLAT_MESSAGE}")
    return _check_list(sentences_or_pair, M, name)


def check_padded(tokens, lengths, M, name="tokens/lengths"):
    """A padded pair: tokens int (N, Lmax), lengths int (N,) in 1..Lmax, tokens[i, :lengths[i]]
    in 0..M-1. Returns contiguous int64 copies (no copy when already so). O(N * Lmax)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ShapeError(f"{name}: tokens must be 2-D (N, Lmax) padded, got shape {tokens.shape}")
    return _check_pair(tokens, lengths, M, name)


def _check_flat(flat, lengths, M, name):
    """Flat tokens (T,) with lengths (N,) >= 1 adding up to T; every token in 0..M-1."""
    flat = _integer_array(flat, f"{name}: tokens")
    lengths = _integer_array(lengths, f"{name}: lengths")
    if lengths.ndim != 1:
        raise ShapeError(f"{name}: lengths must be 1-D, got shape {lengths.shape}")
    if len(lengths) == 0:
        raise SentenceInputError(f"{name}: no sentences (lengths is empty)")
    if (lengths < 1).any():
        i = int(np.argmax(lengths < 1))
        raise SentenceInputError(f"{name}: sentence {i} has length {lengths[i]}, below 1")
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    if offsets[-1] != len(flat):
        raise SentenceInputError(f"{name}: the lengths add up to {offsets[-1]} but the flat tokens "
                                 f"hold {len(flat)}")
    bad = (flat < 0) | (flat >= M)
    if bad.any():
        j = int(np.argmax(bad))
        i = int(np.searchsorted(offsets, j, side="right")) - 1
        raise SentenceInputError(f"{name}: sentence {i}, position {j - offsets[i]}: token {flat[j]} is "
                                 f"outside 0..{M - 1} (M = {M})")


def check_token_problem(O, K, tokens, lengths, ys=None, *, need_k=True):
    """The arguments of a token-coordinate kernel, checked once at its public boundary.

    O : float (M, M) (M from its shape); K : float (M, M) (not read when ``need_k`` is False);
    tokens : int (N, Lmax) padded (padding not read) or flat (T,), with lengths : int (N,);
    ys : int (N,) next tokens or None. Returns (O, K) as finite float64 arrays (K None when
    not needed). Raises the :class:`~refimpl.errors.InputError` family naming the argument,
    and for tokens the sentence, the position and the value. Cost O(M^2 + N * Lmax).
    """
    O = check_square(O, "O")
    M = O.shape[0]
    K = check_square(K, "K", M) if need_k else None
    tokens = np.asarray(tokens)
    if tokens.ndim == 2:
        _check_pair(tokens, lengths, M, "tokens/lengths")
    elif tokens.ndim == 1:
        _check_flat(tokens, lengths, M, "tokens/lengths")
    else:
        raise ShapeError(f"tokens must be 2-D (N, Lmax) padded or 1-D (T,) flat, got shape {tokens.shape}")
    if ys is not None:
        check_tokens(ys, M, "ys", len(np.asarray(lengths)))
    return O, K
