"""Realizable datasets: collocation, query-dependent partial orders, sentences (docs/datasets.md).

A :class:`RealizableDataset` stores its sentences ragged, so its memory follows the
data, not the longest sentence:

``flat_tokens``  int64, shape (T,), the sentences one after another (T = sum of lengths)
``offsets``      int64, shape (N + 1,), sentence i is ``flat_tokens[offsets[i]:offsets[i+1]]``
``lengths``      int64, shape (N,)
``next_tokens``  int64, shape (N,)
``collocation_pairs`` int64, shape (P, 2), the pairs ``(x, n(x))`` as given
``orders``       ``None`` (orders are induced by the sentences) or a dict
                 ``q -> int64 array (R, 2)`` of supplied generating relations
                 ``(lower, upper)``, meaning ``lower <_q upper``

``tokens`` (int64 (N, Lmax) padded with -1) and ``valid_mask`` are built on first use,
after a memory estimate (:mod:`refimpl.budget`). ``colloc`` (int64 (M,)) is built on
first use too; nothing of size M or M x M is allocated to load or validate a dataset.

Construction only checks shapes; :func:`validate` (also run lazily by the
properties that need a valid dataset, such as :attr:`RealizableDataset.optimal`)
checks realizability and raises a :class:`~refimpl.errors.DatasetError`
subclass naming the sentence, tokens and query.

Validation is near-linear in the data size plus the order relations, and works in
blocks, so its memory stays a small multiple of the file: optimal tokens are found
with array operations on blocks of the ragged tokens; relations are built one block
of whole queries at a time and deduplicated by sorting (query, lower, upper) rows
(as one int64 key only when the columns' spans provably fit it), cycles are strongly
connected components of a sparse graph, and containment in supplied orders is
reachability on the sparse graph of each query (:mod:`refimpl.orders`).
"""
from __future__ import annotations

import itertools
import json
import numbers
from dataclasses import dataclass, fields
from functools import cached_property

import numpy as np

from . import budget
from .checks import check_tokens
from .errors import (
    AmbiguousOptimalTokenError,
    CollocationConflictError,
    ConfigError,
    CountMismatchError,
    DatasetError,
    EmptyDatasetError,
    EmptySentenceError,
    FileFormatError,
    InputError,
    NoOptimalTokenError,
    OrderContradictionError,
    OrderCycleError,
    SentenceInputError,
    ShapeError,
    TokenOutOfRangeError,
    VocabularySizeError,
)
from .orders import closure_matrix, find_cycle, reachable_pairs, unique_relations

__all__ = ["RealizableDataset", "DatasetArrays", "validate", "ensure_valid", "transitive_closure", "training_relations",
           "induced_relations", "extended_order", "pad_sentences", "FORMAT_TAG"]

FORMAT_TAG = "refimpl/realizable-dataset@1"
_INT64 = (-(1 << 63), (1 << 63) - 1)


def _sentence_ids(offsets):
    """int64 (T,): the sentence index of every flat position."""
    return np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))


def _pad(flat, offsets, fill=-1, what="padded token array"):
    """Padded int64 (N, max(Lmax, 1)) from ragged tokens, after a memory check."""
    lengths = np.diff(offsets)
    N = len(lengths)
    lmax = max(int(lengths.max(initial=0)), 1)
    budget.check_bytes(8 * N * lmax, f"a {what} of {N} sentences x {lmax} positions")
    tokens = np.full((N, lmax), fill, dtype=np.int64)
    if len(flat):
        tokens[_sentence_ids(offsets), np.arange(len(flat)) - np.repeat(offsets[:-1], lengths)] = flat
    return tokens


def _ragged(sentences):
    """(flat int64 (T,), offsets int64 (N + 1,)) from ragged sequences of ints or from a
    padded pair ``(tokens (N, Lmax), lengths (N,))``.

    Every token must be an integer (a Python or NumPy integer, not a bool): a float, even
    2.0, or a string raises FileFormatError naming the sentence and position instead of
    being truncated or parsed, as for ``next_tokens``. Raises TokenOutOfRangeError beyond
    int64 and CountMismatchError for padded lengths outside 0..width."""
    if (isinstance(sentences, tuple) and len(sentences) == 2 and isinstance(sentences[0], np.ndarray)
            and sentences[0].ndim == 2):
        tokens = np.asarray(sentences[0])
        lengths = _int64_array(sentences[1], "padded lengths").ravel()
        if tokens.dtype.kind not in "iu":
            raise FileFormatError(f"padded tokens must be integers, got dtype {tokens.dtype}")
        N, width = tokens.shape
        if len(lengths) != N:
            raise CountMismatchError(f"{N} padded rows but {len(lengths)} lengths",
                                     n_sentences=N, n_lengths=len(lengths))
        bad = np.flatnonzero((lengths < 0) | (lengths > width))
        if len(bad):
            raise CountMismatchError(f"sentence {bad[0]}: length {lengths[bad[0]]} is outside 0..{width}, "
                                     f"the padded width", sentence=bad[0])
        mask = np.arange(width)[None, :] < lengths[:, None]
        flat = np.ascontiguousarray(_int64_array(tokens[mask], "padded tokens"))
        return flat, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    if isinstance(sentences, (str, bytes)) or not hasattr(sentences, "__iter__"):
        raise FileFormatError(f"sentences must be a sequence of sentences (sequences of integers), "
                              f"got {type(sentences).__name__}")
    seqs = sentences if isinstance(sentences, (list, tuple)) else list(sentences)
    if not all(map(_is_sequence_type, set(map(type, seqs)))):
        i, s = next((i, s) for i, s in enumerate(seqs) if not _is_sequence_type(type(s)))
        raise FileFormatError(f"sentence {i} is {_describe(s)}, not a sequence of integers (sentences "
                              f"is a list of sentences; wrap one sentence as [[...]])", sentence=i)
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    if not all(map(_is_integer_type, set(map(type, itertools.chain.from_iterable(seqs))))):
        i, l, t = next((i, l, t) for i, s in enumerate(seqs) for l, t in enumerate(s)
                       if not _is_integer_type(type(t)))
        raise FileFormatError(f"sentence {i} position {l}: token {_describe(t)} is not an integer "
                              f"(tokens are integers in 0..M-1)", sentence=i, position=l)
    try:
        flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=int(offsets[-1]))
    except OverflowError:
        raise TokenOutOfRangeError("a token is outside the 64-bit integer range") from None
    except (TypeError, ValueError):       # a sentence whose len() disagrees with its items
        raise FileFormatError("sentences must be sequences of integers") from None
    return flat, offsets


def _is_integer_type(t):
    """A Python or NumPy integer type, not bool (the types a token or a key may have)."""
    return issubclass(t, (int, np.integer)) and not issubclass(t, bool)


def _is_sequence_type(t):
    """A type a sentence may have: sized and iterable, not text."""
    return hasattr(t, "__len__") and hasattr(t, "__iter__") and not issubclass(t, (str, bytes))


def _describe(value):
    """``value`` for a one-line message: its repr (shortened) and its type."""
    text = repr(value)
    return f"{text[:40]}{'...' if len(text) > 40 else ''} ({type(value).__name__})"


def pad_sentences(sentences):
    """Ragged sequences of ints -> (tokens int64 (N, Lmax) padded with -1, lengths int64 (N,)).

    A tuple ``(tokens (N, Lmax), lengths (N,))`` of arrays is taken as already padded; a
    tuple of two 1-D arrays is two sentences. The padded array is allocated after a
    memory check (:func:`refimpl.budget.check_bytes`)."""
    if (isinstance(sentences, tuple) and len(sentences) == 2 and isinstance(sentences[0], np.ndarray)
            and sentences[0].ndim == 2):
        tokens, lengths = sentences
        return np.ascontiguousarray(tokens, dtype=np.int64), np.ascontiguousarray(lengths, dtype=np.int64)
    flat, offsets = _ragged(sentences)
    return _pad(flat, offsets), np.diff(offsets)


@dataclass(frozen=True, eq=False)
class DatasetArrays:
    """A dataset as padded NumPy arrays, from :meth:`RealizableDataset.to_arrays`.

    A frozen dataclass with attribute access (``a.tokens``) and key access (``a["tokens"]``,
    ``a.keys()``, ``dict(a.items())``, ``**a.as_dict()``). The arrays are fresh writable copies
    that share no memory with the dataset. N sentences, Lmax = the longest sentence, M tokens.
    Built by :meth:`RealizableDataset.to_arrays` (the parameters are its fields).

    Parameters
    ----------
    tokens : int64 (N, Lmax)
        Sentence i in ``tokens[i, :lengths[i]]``; every other entry holds ``pad``.
    mask : bool (N, Lmax)
        ``mask[i, l]`` iff ``l < lengths[i]``: the positions that hold a token.
    lengths : int64 (N,)
        Sentence lengths, in 1..Lmax.
    queries : int64 (N,)
        q = x_L, the last token of each sentence (``tokens[i, lengths[i] - 1]``).
    optimal : int64 (N,)
        x*, the optimal token of each sentence (docs/datasets.md).
    next_tokens : int64 (N,)
        y, the next token of each sentence.
    colloc_tokens, colloc_next : int64 (n_c,)
        The collocation C in increasing order and n(x) for each x in it (the stage-1 data).
    vocab_size : int
        M; tokens are 0..M-1.
    pad : int
        The value at the masked positions of ``tokens``. The default M is one past the last
        token, so indexing an (M, ...) table with an unmasked pad raises (NumPy ``IndexError``,
        PyTorch ``IndexError`` or a device assertion) instead of silently reading token M-1,
        which is what the -1 padding of :attr:`RealizableDataset.tokens` does.
    embeddings : float64 (d, M) or None
        None from :meth:`~RealizableDataset.to_arrays`; the embedding matrix E where the
        arrays are handed to an implementation under test (:mod:`refimpl.oracle`).

    Examples
    --------
    >>> import refimpl as ri
    >>> a = ri.RealizableDataset(3, {0: 1, 1: 2, 2: 0}, [[0, 1], [2]], [2, 0]).to_arrays()
    >>> a.tokens.tolist(), a["optimal"].tolist(), a.pad
    ([[0, 1], [2, 3]], [1, 2], 3)
    """

    tokens: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray
    queries: np.ndarray
    optimal: np.ndarray
    next_tokens: np.ndarray
    colloc_tokens: np.ndarray
    colloc_next: np.ndarray
    vocab_size: int
    pad: int
    embeddings: np.ndarray | None = None

    def keys(self):
        """The field names, in the order listed above."""
        return [f.name for f in fields(self)]

    def __getitem__(self, key):
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key):
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return len(fields(self))

    def items(self):
        """``(name, value)`` pairs of every field."""
        return [(k, getattr(self, k)) for k in self.keys()]

    def as_dict(self):
        """The fields as a plain dict (the same array objects, no copies)."""
        return dict(self.items())

    def __repr__(self):
        N, L = self.tokens.shape
        d = None if self.embeddings is None else self.embeddings.shape[0]
        return f"DatasetArrays(N={N}, Lmax={L}, M={self.vocab_size}, pad={self.pad}, d={d})"


class RealizableDataset:
    """Sentences with next tokens, a collocation and (optionally) supplied orders.

    Parameters
    ----------
    vocab_size : int
        M, the number of tokens; tokens are 0..M-1.
    collocation : mapping ``{x: n(x)}`` or array-like of pairs, shape (P, 2)
        Pairs are kept as given (``collocation_pairs``) so that a conflict can be
        reported by :func:`validate`.
    sentences : sequence of int sequences, or a tuple ``(tokens (N, Lmax), lengths (N,))``
        Stored ragged (``flat_tokens``, ``offsets``); see also :meth:`from_flat`.
    next_tokens : int array-like, shape (N,)
    orders : mapping ``q -> pairs (R, 2)`` or ``None``
        Supplied generating relations ``(lower, upper)`` per query; ``None``
        means the orders are induced by the sentences.

    Raises
    ------
    CountMismatchError
        A padded pair whose lengths are outside 0..width, or whose rows and lengths differ
        in number.
    FileFormatError
        A value that is not an integer: a float (even 2.0: nothing is truncated), a string
        or a bool among the sentences' tokens or a collocation mapping's keys and values, or
        an array of floats, strings or bools given as the next tokens, collocation pairs,
        padded lengths or orders; sentences that are not sequences (a flat list of ints); a
        collocation or order relations that are not pairs of shape (P, 2) (an odd count).
        The message names the field, and for a token the sentence and the position.
    TokenOutOfRangeError
        An integer outside the 64-bit range.

    Construction checks only types and shapes; token ranges and realizability are checked
    by :func:`validate`.

    Notes
    -----
    Attributes versus methods follow one rule. Attributes (``tokens``, ``lengths``,
    ``next_tokens``, ``optimal``, ``queries``, ``colloc``, ``n_sentences``, ...) are
    NumPy arrays or numbers that are stored, or computed once and cached, so reading
    one twice costs nothing. Methods (``sentences()``, ``sentence(i)``, ``to_arrays()``,
    ``to_dict()``) build new objects on every call: ``sentences()`` makes a fresh list of
    Python lists, O(number of tokens) time and memory each call, which is why it stays a
    method (``ds.sentences`` without the call is the bound method, not the sentences). For
    arrays use ``ds.tokens`` / ``ds.lengths`` (padded) or ``ds.flat_tokens`` / ``ds.offsets``
    (ragged). Attributes that need a realizable dataset (``optimal``, ``queries``,
    ``colloc``) validate it on first use.

    Examples
    --------
    >>> import refimpl as ri
    >>> ds = ri.RealizableDataset(3, {0: 1, 1: 2, 2: 0}, [[0, 1], [2]], [2, 0])
    >>> ds.n_sentences, ds.lengths.tolist(), ds.optimal.tolist()
    (2, [2, 1], [1, 2])
    >>> ds.sentences()
    [[0, 1], [2]]
    """

    def __init__(self, vocab_size, collocation, sentences, next_tokens, orders=None, *, _flat=None):
        self.vocab_size = _as_int64(vocab_size, "vocab_size")
        if isinstance(collocation, dict):
            _require_integers(collocation.keys(), "collocation key")
            _require_integers(collocation.values(), "collocation value")
            pairs = sorted((int(k), int(v)) for k, v in collocation.items())   # exact: integers
        else:
            pairs = collocation
        self.collocation_pairs = _pairs(pairs, "collocation")
        self.flat_tokens, self.offsets = _ragged(sentences) if _flat is None else _flat
        self.lengths = np.diff(self.offsets)
        self.next_tokens = np.ascontiguousarray(_int64_array(next_tokens, "next_tokens").ravel())
        self.orders = None
        if orders is not None:
            self.orders = {_as_int64(q, "orders key"): _pairs(r, f"orders[{q}]")
                           for q, r in orders.items()}
        self._valid = False

    @classmethod
    def from_flat(cls, vocab_size, collocation, flat_tokens, offsets, next_tokens, orders=None):
        """A dataset from ragged arrays: ``flat_tokens`` int (T,) and ``offsets`` int (N + 1,),
        increasing from 0 to T (sentence i is ``flat_tokens[offsets[i]:offsets[i+1]]``)."""
        flat = np.ascontiguousarray(_int64_array(flat_tokens, "flat_tokens").ravel())
        off = np.ascontiguousarray(_int64_array(offsets, "offsets").ravel())
        if len(off) < 1 or off[0] != 0 or off[-1] != len(flat) or np.any(np.diff(off) < 0):
            raise CountMismatchError(f"offsets must increase from 0 to {len(flat)} (the number of tokens)")
        return cls(vocab_size, collocation, None, next_tokens, orders, _flat=(flat, off))

    # ----------------------------------------------------------------- sizes
    @property
    def n_sentences(self):
        """N."""
        return len(self.lengths)

    @property
    def max_len(self):
        """Lmax, the longest sentence (the padded width; 1 for an empty dataset)."""
        return max(int(self.lengths.max(initial=0)), 1)

    def __len__(self):
        return self.n_sentences

    def __repr__(self):
        return (f"RealizableDataset(M={self.vocab_size}, N={self.n_sentences}, "
                f"|C|={len(self.collocation_pairs)}, Lmax={self.max_len}, "
                f"orders={'induced' if self.orders is None else 'supplied'})")

    @cached_property
    def tokens(self):
        """int64 (N, Lmax): the sentences padded with -1 (built on first use, after a memory check)."""
        return _pad(self.flat_tokens, self.offsets)

    @property
    def valid_mask(self):
        """bool (N, Lmax): position l < lengths[i]."""
        budget.check_bytes(self.n_sentences * self.max_len, "a padding mask")
        return np.arange(self.max_len)[None, :] < self.lengths[:, None]

    @cached_property
    def sentence_ids(self):
        """int64 (T,): the sentence of each entry of ``flat_tokens``."""
        return _sentence_ids(self.offsets)

    # ------------------------------------------------------- derived (valid)
    def _require_valid(self):
        ensure_valid(self)

    @cached_property
    def colloc(self):
        """int64 (M,): ``colloc[x] = n(x)``, -1 for x not in C (requires a valid dataset;
        allocated on first use after a memory check, as training needs it)."""
        self._require_valid()
        budget.check_bytes(8 * self.vocab_size, f"the collocation map of M={self.vocab_size} tokens")
        colloc = np.full(self.vocab_size, -1, dtype=np.int64)
        colloc[self.colloc_tokens] = self.colloc_next
        return colloc

    @cached_property
    def colloc_tokens(self):
        """int64 (n_c,): C in increasing order (requires a valid dataset)."""
        self._require_valid()
        return np.unique(self.collocation_pairs[:, 0])

    @cached_property
    def colloc_next(self):
        """int64 (n_c,): n(x) for x in :attr:`colloc_tokens` (requires a valid dataset)."""
        self._require_valid()
        xs, first = np.unique(self.collocation_pairs[:, 0], return_index=True)
        return self.collocation_pairs[first, 1].copy()

    @cached_property
    def queries(self):
        """int64 (N,): q = x_L, the last token of each sentence (requires a valid dataset)."""
        self._require_valid()
        return self.flat_tokens[self.offsets[1:] - 1].copy()

    @cached_property
    def optimal(self):
        """int64 (N,): the optimal token x* of each sentence (requires a valid dataset)."""
        self._require_valid()
        return _optimal_tokens(self)

    @cached_property
    def _training_relations(self):
        """(q, lower, upper) of :func:`training_relations`, computed once, sorted by
        (q, lower, upper) and read-only."""
        q, lo, up, _ = _sentence_relations(self, self.optimal)
        for a in (q, lo, up):
            a.flags.writeable = False
        return q, lo, up

    def sentence(self, i):
        """int64 (L_i,): sentence i (a view of ``flat_tokens``).

        Parameters
        ----------
        i : int, 0..N-1 (negative indices are not accepted)

        Raises
        ------
        TypeError
            ``i`` is not an integer (a float, a string, a bool).
        IndexError
            ``i`` is outside 0..N-1 (naming ``i`` and N).
        """
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, numbers.Integral):
            raise TypeError(f"sentence index i must be an integer, got {type(i).__name__} {i!r}")
        N = self.n_sentences
        if not 0 <= i < N:
            raise IndexError(f"sentence index i = {i} is outside 0..{N - 1} (N = {N})")
        i = int(i)
        return self.flat_tokens[self.offsets[i]: self.offsets[i + 1]]

    def sentences(self):
        """The sentences as a list of Python lists."""
        flat = self.flat_tokens.tolist()
        off = self.offsets.tolist()
        return [flat[a:b] for a, b in zip(off[:-1], off[1:])]

    def to_arrays(self, pad=None):
        """The dataset as padded NumPy arrays for another implementation (a PyTorch or NumPy model).

        Parameters
        ----------
        pad : int or None
            The value written at the masked positions of ``tokens``; None means M
            (``vocab_size``), one past the last token, so that an implementation which reads a
            padded position as a token fails with an ``IndexError`` instead of reading token
            M-1 (what -1 padding does under NumPy and PyTorch negative indexing). Any int in
            the int64 range is accepted.

        Returns
        -------
        DatasetArrays
            ``tokens`` int64 (N, Lmax), ``mask`` bool (N, Lmax), ``lengths``, ``queries``,
            ``optimal`` (x*), ``next_tokens`` int64 (N,), ``colloc_tokens``, ``colloc_next``
            int64 (n_c,), ``vocab_size``, ``pad``; attribute and key access.

        Raises
        ------
        DatasetError
            The subclass :func:`validate` raises: ``optimal`` and the collocation are defined
            only for a realizable dataset (validated once, then cached).
        InputError
            ``pad`` is not an integer in the int64 range.
        ResourceError
            The (N, Lmax) arrays would not fit in memory (checked before allocating).

        Examples
        --------
        >>> a = ri.generate(5, 4, 1, 3, seed=0).to_arrays()
        >>> a.tokens[2], a.mask[2], a.pad
        (array([4, 3, 5]), array([ True,  True, False]), 5)
        >>> np.eye(5)[a.tokens]                  # IndexError: index 5 is out of bounds
        >>> X = np.eye(5)[np.where(a.mask, a.tokens, 0)]   # then give masked scores -inf
        """
        if pad is None:
            pad = self.vocab_size
        if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or not _INT64[0] <= int(pad) <= _INT64[1]:
            raise InputError(f"pad must be an integer in the int64 range, got {pad!r}"[:200])
        self._require_valid()
        mask = self.valid_mask
        tokens = _pad(self.flat_tokens, self.offsets, fill=int(pad))
        return DatasetArrays(
            tokens=tokens, mask=mask, lengths=self.lengths.copy(), queries=self.queries.copy(),
            optimal=self.optimal.copy(), next_tokens=self.next_tokens.copy(),
            colloc_tokens=self.colloc_tokens.copy(), colloc_next=self.colloc_next.copy(),
            vocab_size=int(self.vocab_size), pad=int(pad))

    # ----------------------------------------------------------------- I/O
    def to_dict(self):
        """The file-format object (``refimpl/realizable-dataset@1``, docs/datasets.md):
        plain Python ints and lists.

        ``"optimal": [x*_0, ..., x*_{N-1}]`` follows ``next_tokens`` when the dataset is
        valid: validation runs here if it has not run yet (its result is cached), and a
        dataset that fails it is still written, without the field, so that invalid files
        (the corrupted test corpus) can be produced. :func:`refimpl.io.load_dataset` checks
        the field against the validated optimal tokens when it is present.
        """
        out = {"format": FORMAT_TAG, "vocab_size": self.vocab_size,
               "collocation": self.collocation_pairs.tolist()}
        if self.orders is not None:
            out["orders"] = {str(q): rel.tolist() for q, rel in sorted(self.orders.items())}
        out["sentences"] = self.sentences()
        out["next_tokens"] = self.next_tokens.tolist()
        optimal = self._optimal_for_file()
        if optimal is not None:
            out["optimal"] = optimal
        return out

    def _optimal_for_file(self):
        """x* as a list of ints for the file, or None for a dataset that is not valid."""
        try:
            ensure_valid(self)
        except DatasetError:
            return None
        return self.optimal.tolist()

    def to_json_text(self):
        """The file's text: :meth:`to_dict` as JSON with one sentence per line
        (``next_tokens`` and ``optimal`` on one line each, at the end)."""
        obj = self.to_dict()
        tail = ("sentences", "next_tokens", "optimal")
        lines = ["{"]
        for k, v in obj.items():
            if k not in tail:
                lines.append(f" {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))},")
        sents = ",\n  ".join(json.dumps(s, separators=(",", ":")) for s in obj["sentences"])
        lines.append(f' "sentences": [\n  {sents}\n ],' if obj["sentences"] else ' "sentences": [],')
        end = "," if "optimal" in obj else ""
        lines.append(f' "next_tokens": {json.dumps(obj["next_tokens"], separators=(",", ":"))}{end}')
        if "optimal" in obj:
            lines.append(f' "optimal": {json.dumps(obj["optimal"], separators=(",", ":"))}')
        lines.append("}")
        return "\n".join(lines) + "\n"

    def save(self, path):
        """Write the dataset as JSON to ``path`` atomically (temporary file, then rename;
        :func:`refimpl.outputs.write_file_atomic`)."""
        from .outputs import write_file_atomic
        write_file_atomic(path, self.to_json_text().encode("utf-8"))

    def __eq__(self, other):
        if not isinstance(other, RealizableDataset):
            return NotImplemented
        same_orders = (self.orders is None) == (other.orders is None)
        if same_orders and self.orders is not None:
            same_orders = self.orders.keys() == other.orders.keys() and all(
                np.array_equal(self.orders[q], other.orders[q]) for q in self.orders)
        return (self.vocab_size == other.vocab_size and same_orders
                and np.array_equal(self.collocation_pairs, other.collocation_pairs)
                and np.array_equal(self.offsets, other.offsets)
                and np.array_equal(self.next_tokens, other.next_tokens)
                and np.array_equal(self.flat_tokens, other.flat_tokens))

    __hash__ = None


def _as_int64(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise FileFormatError(f"{what} must be an integer, got {value!r}"[:200])
    if not _INT64[0] <= int(value) <= _INT64[1]:
        raise TokenOutOfRangeError(f"{what} {str(int(value))[:40]} is outside the 64-bit integer range")
    return int(value)


def _int64_array(values, what):
    """``values`` as int64, with one-line errors for non-integers and values beyond int64."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        if values.dtype.kind == "u" and values.size and values.max() > _INT64[1]:
            raise TokenOutOfRangeError(f"{what}: a value is outside the 64-bit integer range")
        return values.astype(np.int64, copy=False)
    try:
        arr = np.asarray(values)
        if arr.size == 0:
            return np.zeros(arr.shape, dtype=np.int64)
        if arr.dtype.kind not in "iu" or (arr.dtype.kind == "u" and arr.max() > _INT64[1]):
            if arr.dtype == object and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                           for v in arr.ravel()):
                raise OverflowError
            raise TypeError
        return arr.astype(np.int64)
    except OverflowError:
        raise TokenOutOfRangeError(f"{what}: a value is outside the 64-bit integer range") from None
    except (TypeError, ValueError):
        raise FileFormatError(f"{what} must hold integers") from None


def _require_integers(values, what):
    """FileFormatError naming the first of ``values`` (an iterable) that is not a Python or
    NumPy integer (a float, even 2.0, a bool or a string), as :func:`_int64_array` refuses
    them in an array; one pass over the types when all are integers."""
    values = list(values)
    if all(map(_is_integer_type, set(map(type, values)))):
        return
    bad = next(v for v in values if not _is_integer_type(type(v)))
    raise FileFormatError(f"{what} {_describe(bad)} is not an integer (tokens are integers in 0..M-1)")


def _pairs(values, what):
    """``values`` as int64 pairs, shape (P, 2): an array-like of shape (P, 2), a flat
    sequence of even length (x0, y0, x1, y1, ...) or an empty one. Anything else (an odd
    count, rows of another width) raises FileFormatError naming ``what`` and the shape."""
    arr = _int64_array(values, what)
    if arr.size == 0 or (arr.ndim == 2 and arr.shape[1] == 2) or (arr.ndim == 1 and arr.size % 2 == 0):
        return arr.reshape(-1, 2)
    raise FileFormatError(f"{what} must be pairs of integers, shape (P, 2), got {arr.size} integers "
                          f"of shape {arr.shape}")


# ===================================================================== checks
def _first_bad_position(ds, bad):
    """(sentence, position) of the first True of the flat bool mask ``bad``."""
    j = int(np.flatnonzero(bad)[0])
    i = int(np.searchsorted(ds.offsets, j, side="right") - 1)
    return i, j - int(ds.offsets[i])


def _check_counts_and_ranges(ds):
    N, M = ds.n_sentences, ds.vocab_size
    if len(ds.next_tokens) != N:
        raise CountMismatchError(f"{N} sentences but {len(ds.next_tokens)} next tokens",
                                 n_sentences=N, n_next_tokens=len(ds.next_tokens))
    if M < 2:
        raise VocabularySizeError(f"vocab_size must be at least 2, got {M} (a next-token problem needs "
                                  f"two tokens)", vocab_size=M)
    if N == 0:
        raise EmptyDatasetError("the dataset has no sentences")
    empty = np.flatnonzero(ds.lengths <= 0)
    if len(empty):
        raise EmptySentenceError(f"sentence {empty[0]} is empty (a sentence needs at least its query)",
                                 sentence=empty[0], tokens=())
    flat = ds.flat_tokens
    if int(flat.min()) < 0 or int(flat.max()) >= M:   # two passes, no (T,) temporaries
        bad = (flat < 0) | (flat >= M)
        i, l = _first_bad_position(ds, bad)
        sent = ds.sentence(i)
        raise TokenOutOfRangeError(
            f"sentence {i} position {l}: token {sent[l]} is outside 0..{M - 1}",
            sentence=i, tokens=sent[:64], position=l)
    bad = np.flatnonzero((ds.next_tokens < 0) | (ds.next_tokens >= M))
    if len(bad):
        i = int(bad[0])
        raise TokenOutOfRangeError(f"sentence {i}: next token {ds.next_tokens[i]} is outside 0..{M - 1}",
                                   sentence=i, tokens=ds.sentence(i)[:64])
    pairs = ds.collocation_pairs
    bad = np.flatnonzero(((pairs < 0) | (pairs >= M)).any(axis=1))
    if len(bad):
        raise TokenOutOfRangeError(f"collocation pair {pairs[bad[0]].tolist()} has a token outside 0..{M - 1}",
                                   tokens=pairs[bad[0]])
    for q, rel in (ds.orders or {}).items():
        if not 0 <= q < M:
            raise TokenOutOfRangeError(f"orders given for query {q}, outside 0..{M - 1}", query=q)
        bad = np.flatnonzero(((rel < 0) | (rel >= M)).any(axis=1))
        if len(bad):
            raise TokenOutOfRangeError(f"order of query {q}: relation {rel[bad[0]].tolist()} has a token "
                                       f"outside 0..{M - 1}", query=q, tokens=rel[bad[0]])
        loops = np.flatnonzero(rel[:, 0] == rel[:, 1])
        if len(loops):
            t = int(rel[loops[0], 0])
            raise OrderCycleError(f"order of query {q}: relation {t} < {t} (a strict order is irreflexive)",
                                  query=q, tokens=(t,), cycle=[t, t])


def _check_collocation(ds):
    pairs = ds.collocation_pairs
    if len(pairs) < 2:
        return
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    p = pairs[order]
    clash = np.flatnonzero((p[1:, 0] == p[:-1, 0]) & (p[1:, 1] != p[:-1, 1]))
    if len(clash):
        x, a, b = int(p[clash[0], 0]), int(p[clash[0], 1]), int(p[clash[0] + 1, 1])
        raise CollocationConflictError(f"collocation conflict: token {x} is followed by both {a} and {b}",
                                       tokens=(x, a, b), next_tokens=(a, b))


def _colloc_table(ds):
    """(xs, nx): the collocation tokens in increasing order and n(x) of each (the first pair
    given for x), int64 (|C|,) each. O(|C| log |C|)."""
    xs, first = np.unique(ds.collocation_pairs[:, 0], return_index=True)
    return xs, ds.collocation_pairs[first, 1]


def _lookup_next(ds, tokens, table=None):
    """n(x) for every x of ``tokens`` (-1 for x not in C), by binary search in the sorted
    collocation (no M-sized table); ``table`` is :func:`_colloc_table` when already built.
    O(len(tokens) log |C|)."""
    xs, nx = _colloc_table(ds) if table is None else table
    if len(xs) == 0:
        return np.full(len(tokens), -1, dtype=np.int64)
    pos = np.searchsorted(xs, tokens)
    np.minimum(pos, len(xs) - 1, out=pos)
    return np.where(xs[pos] == tokens, nx[pos], -1)


_BLOCK_TOKENS = 1 << 15
"""Tokens per block in validation: each block's temporaries are a few MB."""


def _pieces(ends, a, b):
    """The sentences that tokens a..b-1 of a run of sentences overlap, and their pieces.

    ``ends`` (int64, increasing) holds where each sentence of the run ends (its last token
    + 1) in the run's positions. Returns ``(k0, begin, count)``: sentences k0..k0+m-1 of
    the run overlap the block; ``begin[j]`` is where sentence k0 + j starts in the run and
    ``count[j]`` (>= 1) how many of its tokens lie in a..b-1. O(m + log N)."""
    k0 = int(np.searchsorted(ends, a, side="right"))
    k1 = int(np.searchsorted(ends, b - 1, side="right")) + 1
    stop = ends[k0:k1]
    begin = np.empty(k1 - k0, dtype=np.int64)
    begin[0] = ends[k0 - 1] if k0 else 0
    begin[1:] = stop[:-1]
    count = np.minimum(stop, b) - np.maximum(begin, a)
    return k0, begin, count


def _candidates(ds, s0, s1, table):
    """bool (T_block,): for the tokens of sentences s0..s1-1, whether n(x) is the sentence's
    next token. O(T_block log |C|)."""
    off = ds.offsets
    tokens = ds.flat_tokens[off[s0]: off[s1]]
    cand = _lookup_next(ds, tokens, table)
    return cand == np.repeat(ds.next_tokens[s0:s1], np.diff(off[s0: s1 + 1]))


def _optimal_tokens(ds):
    """x*(i): the unique distinct token with n(x) = y_i, int64 (N,).

    O(T log |C|) time on the ragged tokens, in blocks of :data:`_BLOCK_TOKENS` tokens (a
    long sentence spans several blocks: its largest and smallest candidate are combined
    over them): memory (N,) arrays plus O(block) temporaries, whatever the longest
    sentence."""
    flat, off, M = ds.flat_tokens, ds.offsets, ds.vocab_size
    N, T = len(off) - 1, int(off[-1])
    table = _colloc_table(ds)
    hi = np.full(N, -1, dtype=np.int64)       # largest candidate of each sentence, -1 if none
    lo = np.full(N, M, dtype=np.int64)        # smallest candidate, M if none
    ends = off[1:]
    for a in range(0, T, _BLOCK_TOKENS):
        b = min(a + _BLOCK_TOKENS, T)
        s0, begin, count = _pieces(ends, a, b)
        s1 = s0 + len(count)
        tokens = flat[a:b]
        cand = _lookup_next(ds, tokens, table)
        cand = cand == np.repeat(ds.next_tokens[s0:s1], count)
        starts = np.maximum(begin, a) - a
        np.maximum(hi[s0:s1], np.maximum.reduceat(np.where(cand, tokens, -1), starts), out=hi[s0:s1])
        np.minimum(lo[s0:s1], np.minimum.reduceat(np.where(cand, tokens, M), starts), out=lo[s0:s1])
        del cand
    none = np.flatnonzero(hi < 0)
    if len(none):
        i = int(none[0])
        sent = ds.sentence(i)
        raise NoOptimalTokenError(
            f"sentence {i} {_show(sent)} (query {sent[-1]}): no token x has n(x) = next token "
            f"{ds.next_tokens[i]}, so the sentence has no optimal token",
            sentence=i, tokens=sent[:64], query=sent[-1], next_token=int(ds.next_tokens[i]))
    amb = np.flatnonzero(lo != hi)
    if len(amb):
        i = int(amb[0])
        sent = ds.sentence(i)
        c = sorted(set(sent[_candidates(ds, i, i + 1, table)].tolist()))
        raise AmbiguousOptimalTokenError(
            f"sentence {i} {_show(sent)} (query {sent[-1]}): tokens {c[:8]} all have n(x) = next token "
            f"{ds.next_tokens[i]}; the optimal token must be unique",
            sentence=i, tokens=sent[:64], query=sent[-1], candidates=c)
    return hi


def _show(sent, limit=12):
    """A sentence for a one-line message: whole when short, else its ends and its length."""
    if len(sent) <= limit:
        return str(sent.tolist())
    return f"[{', '.join(map(str, sent[:5].tolist()))}, ... ({len(sent)} tokens) ..., " \
           f"{', '.join(map(str, sent[-3:].tolist()))}]"


def _relation_blocks(ds, optimal, block=None):
    """Induced relations of whole queries, block by block, in increasing query order.

    Yields int64 arrays ``(q, lower, upper, sentence)``, deduplicated and sorted by (q,
    lower, upper); ``sentence`` is the first (smallest) sentence inducing the relation.
    Every query's relations are in exactly one block, so the blocks concatenated are
    :func:`_sentence_relations`.

    The sentences are taken in query order (a stable sort of the N queries) as one run of
    T tokens, cut into chunks of ``block`` tokens (default :data:`_BLOCK_TOKENS`; a long
    sentence is cut too). Each chunk's relations are deduplicated
    (:func:`refimpl.orders.unique_relations`) together with the relations carried over
    from the chunk's first query when that query began in an earlier chunk; the
    relations of the chunk's last query are carried over when it continues in the next
    chunk. A chunk has at least as many tokens as the carried relations, so a query with
    many distinct relations makes the chunks grow geometrically: O(T log T) time, and
    memory (N,) arrays plus O(block + the distinct relations of one query), whatever the
    longest sentence.
    """
    block = _BLOCK_TOKENS if block is None else block
    flat, off = ds.flat_tokens, ds.offsets
    T = int(off[-1])
    order = np.argsort(flat[off[1:] - 1], kind="stable")   # sentences by query
    ends = np.diff(off)[order]
    np.cumsum(ends, out=ends)          # where each ends in the run of sentences in that order

    def query(k):                      # the query of the k-th sentence in that order
        return flat[off[order[k] + 1] - 1]

    carry = None
    a = 0
    while a < T:
        b = min(a + max(block, len(carry[0]) if carry is not None else 0), T)
        k0, begin, count = _pieces(ends, a, b)
        sents = order[k0: k0 + len(count)]
        # flat position of every token a..b-1 of the run, sentence after sentence
        k = np.repeat(np.arange(len(sents)), count)
        pos = np.repeat(off[sents] - begin, count)
        pos += np.arange(a, b)
        lo = flat[pos]
        del pos
        opt = optimal[sents]
        sel = lo != opt[k]
        k = k[sel]
        lo = lo[sel]
        del sel
        cols = (flat[off[sents + 1] - 1][k], lo, opt[k], sents[k])
        del k, lo, begin, count
        if carry is not None:
            cols = tuple(np.concatenate([c, d]) for c, d in zip(carry, cols))
        uq, ulo, uup, first = unique_relations(*cols[:3])
        out = (uq, ulo, uup, cols[3][first])
        del cols, first
        carry = None
        last = k0 + len(sents) - 1
        if b < T and query(int(np.searchsorted(ends, b, side="right"))) == query(last):
            j = int(np.searchsorted(uq, query(last)))   # the last query goes on: carry it
            carry = tuple(c[j:].copy() for c in out)
            out = tuple(c[:j] for c in out)
        if len(out[0]):
            yield out
        del out, uq, ulo, uup
        a = b


def _sentence_relations(ds, optimal):
    """Induced relations with their first sentence: int64 arrays (q, lower, upper, sentence),
    deduplicated and sorted by (q, lower, upper) (:func:`_relation_blocks` concatenated)."""
    blocks = list(_relation_blocks(ds, optimal))
    if not blocks:
        return (np.zeros(0, dtype=np.int64),) * 4
    return tuple(np.concatenate(c) for c in zip(*blocks))


def _supplied_arrays(ds):
    """The supplied relations as three int64 arrays (q, lower, upper), sorted by q."""
    parts = [(np.full(len(rel), q, dtype=np.int64), rel[:, 0], rel[:, 1])
             for q, rel in sorted(ds.orders.items())]
    if not parts:
        return (np.zeros(0, np.int64),) * 3
    return tuple(np.concatenate(c) for c in zip(*parts))


def _check_supplied_cycles(ds):
    """Raise OrderCycleError for a cycle in a supplied order; return the supplied relations
    (:func:`_supplied_arrays`). O(S log S) for S supplied relations."""
    sq, slo, sup = _supplied_arrays(ds)
    cyc = find_cycle(sq, slo, sup)
    if cyc is not None:
        q, c = cyc
        raise OrderCycleError(f"supplied order of query {q} has a cycle {_show_cycle(c)}",
                              query=q, tokens=c, cycle=c)
    return sq, slo, sup


def _check_supplied(ds, q_arr, lo, up, sent_idx, supplied=None):
    """Raise OrderContradictionError for the first relation (in the given order) that the
    supplied order of its query does not contain. ``supplied`` is the result of
    :func:`_check_supplied_cycles` (which is run when it is None); only the supplied
    relations of the queries ``q_arr[0]..q_arr[-1]`` (``q_arr`` is sorted) are searched:
    O((R + S') log(R + S')) for R relations and S' supplied ones, plus the searches of
    :func:`refimpl.orders.reachable_pairs`."""
    sq, slo, sup = _check_supplied_cycles(ds) if supplied is None else supplied
    if len(q_arr) == 0:
        return
    a = int(np.searchsorted(sq, q_arr[0], side="left"))
    b = int(np.searchsorted(sq, q_arr[-1], side="right"))
    ok = reachable_pairs(sq[a:b], slo[a:b], sup[a:b], q_arr, lo, up)
    missing = np.flatnonzero(~ok)
    if len(missing):
        j = int(missing[0])
        q, i = int(q_arr[j]), int(sent_idx[j])
        sent = ds.sentence(i)
        raise OrderContradictionError(
            f"sentence {i} {_show(sent)} (query {q}): optimal token {up[j]} (n = next token "
            f"{ds.next_tokens[i]}) but the supplied order of query {q} does not have {lo[j]} < {up[j]}",
            sentence=i, tokens=sent[:64], query=q, relation=(int(lo[j]), int(up[j])))


def _induced_cycle(q_arr, lo, up, sent_idx):
    """None, or the OrderCycleError of the smallest query whose induced relations (sorted,
    distinct) have a cycle, naming the sentences that induce its relations. O(R) besides
    :func:`refimpl.orders.find_cycle` (which skips sorting sorted input)."""
    cyc = find_cycle(q_arr, lo, up)
    if cyc is None:
        return None
    q, c = cyc
    a, b = np.searchsorted(q_arr, q, side="left"), np.searchsorted(q_arr, q, side="right")
    by_pair = dict(zip(zip(lo[a:b].tolist(), up[a:b].tolist()), sent_idx[a:b].tolist()))
    sents = [by_pair[(x, y)] for x, y in zip(c[:-1], c[1:])]
    shown = sorted(set(sents))
    listed = str(shown) if len(shown) <= 8 else f"{shown[:8]} and {len(shown) - 8} more".replace("]", ",", 1)
    return OrderCycleError(
        f"the sentences {listed} of query {q} induce a cycle {_show_cycle(c)} in its order",
        sentence=max(sents), query=q, tokens=c, cycle=c, sentences=sents)


def _show_cycle(c, limit=16):
    if len(c) <= limit:
        return " < ".join(map(str, c))
    return f"{' < '.join(map(str, c[:8]))} < ... ({len(c) - 1} relations) ... < " \
           f"{' < '.join(map(str, c[-4:]))}"


def require_dataset(ds, where):
    """Raise TypeError unless ``ds`` is a :class:`RealizableDataset` (no validation); return it.

    ``where`` names the function in the message, e.g. "train_two_stage expects a
    RealizableDataset (see refimpl.load_dataset / RealizableDataset(...)), got list"."""
    if not isinstance(ds, RealizableDataset):
        raise TypeError(f"{where} expects a RealizableDataset (see refimpl.load_dataset / "
                        f"RealizableDataset(...)), got {type(ds).__name__}")
    return ds


def _check_query(q, M):
    """``q`` as an int: an integer token in 0..M-1 (SentenceInputError naming q otherwise)."""
    if isinstance(q, (bool, np.bool_)) or not isinstance(q, numbers.Integral):
        raise SentenceInputError(f"q must be an integer query token in 0..{M - 1}, got "
                                 f"{type(q).__name__} {q!r}")
    if not 0 <= q < M:
        raise SentenceInputError(f"q = {q} is outside 0..{M - 1} (M = {M})")
    return int(q)


def ensure_valid(ds):
    """:func:`validate` unless ``ds`` already passed it (a dataset validates once, however
    many entry points it goes through: loading, training, the audit). A non-dataset is a
    TypeError naming what was given."""
    if not isinstance(ds, RealizableDataset):
        raise TypeError(f"expected a RealizableDataset (see refimpl.load_dataset / RealizableDataset(...)), "
                        f"got {type(ds).__name__}")
    if not ds._valid:
        validate(ds)


def validate(ds):
    """Check that ``ds`` is a realizable dataset (docs/datasets.md); return None or raise.

    Parameters
    ----------
    ds : RealizableDataset

    Returns
    -------
    None
        On success the dataset is marked valid and caches its optimal tokens.

    Raises
    ------
    TypeError
        ``ds`` is not a :class:`RealizableDataset`.
    DatasetError
        The specific subclass of the first problem found, in this order: counts,
        vocabulary below 2 tokens, no sentences, empty sentences, token ranges,
        collocation conflicts, no / ambiguous optimal token, supplied-order cycles and
        contradictions, induced-order cycles.

    Notes
    -----
    Time O(T log T + S log S) for T tokens and S supplied relations, plus the
    depth-first searches that check the induced relations against the supplied orders
    (:func:`refimpl.orders.reachable_pairs`). Nothing of size M is allocated, and
    nothing of size T either: optimal tokens are found in blocks of
    :data:`_BLOCK_TOKENS` tokens, and the induced relations are built, deduplicated,
    checked against the supplied orders and searched for cycles one block of whole
    queries at a time (:func:`_relation_blocks`). Peak memory besides the dataset: a few
    (N,) arrays, the supplied relations, and O(block + the distinct relations of one
    query); loading and validating a file peaks at about the reading's own peak
    (bench/README.md, "Loading and validation").

    Examples
    --------
    >>> import refimpl as ri
    >>> ri.validate(ri.generate(vocab_size=6, n_sentences=20, seed=4)) is None
    True
    >>> bad = ri.RealizableDataset(5, {0: 1, 1: 0}, [[0, 1, 4], [1, 0, 4]], [0, 1])
    >>> ri.validate(bad)
    Traceback (most recent call last):
    ...
    refimpl.errors.OrderCycleError: the sentences [0, 1] of query 4 induce a cycle 0 < 1 < 0 in its order
    """
    require_dataset(ds, "validate")
    _check_counts_and_ranges(ds)
    _check_collocation(ds)
    optimal = _optimal_tokens(ds)
    supplied = _check_supplied_cycles(ds) if ds.orders is not None else None
    cycle = None
    for q_arr, lo, up, sent_idx in _relation_blocks(ds, optimal):
        if supplied is not None:
            _check_supplied(ds, q_arr, lo, up, sent_idx, supplied)
        if cycle is None:   # blocks come in query order: the first cycle is the smallest query's
            cycle = _induced_cycle(q_arr, lo, up, sent_idx)
        del q_arr, lo, up, sent_idx
    if cycle is not None:
        raise cycle
    ds._valid = True
    ds.__dict__["optimal"] = optimal


# ===================================================================== orders
def transitive_closure(relations, M):
    """Strict order from generating relations: bool (M, M), ``less[a, b]`` iff a < b.

    Exact for any chain length and fan width (reachability on the sparse graph,
    :func:`refimpl.orders.transitive_closure`); the M x M result is allocated after a
    memory check.

    Parameters
    ----------
    relations : int array (R, 2)
        Pairs (lower, upper), meaning lower < upper; tokens in 0..M-1. R may be 0.
    M : int
        Number of tokens, >= 0.

    Returns
    -------
    less : bool (M, M)
        ``less[a, b]`` iff a < b in the transitive closure, i.e. a path of length >= 1 leads
        from a to b. On acyclic relations this is their strict order. Cyclic relations are not
        rejected (they generate no strict order): the result is then their reachability
        relation, with ``less[a, a]`` True exactly for the tokens on a cycle. Relations of a
        validated dataset (:func:`extended_order`) never have a cycle; use
        :func:`refimpl.orders.closure_matrix` to reject one with OrderCycleError.

    Raises
    ------
    ConfigError
        ``M`` is not an integer >= 0.
    ShapeError
        ``relations`` is not of shape (R, 2).
    SentenceInputError
        ``relations`` does not hold integers, or holds a token outside 0..M-1.
    ResourceError
        The M x M matrix does not fit the memory budget (docs/datasets.md).

    Examples
    --------
    >>> import refimpl as ri
    >>> less = ri.transitive_closure([[0, 1], [1, 2]], 3)
    >>> bool(less[0, 2]), bool(less[2, 0])
    (True, False)
    """
    if isinstance(M, (bool, np.bool_)) or not isinstance(M, numbers.Integral) or M < 0:
        raise ConfigError(f"M must be an integer >= 0 (the number of tokens); got M={M!r}")
    M = int(M)
    rel = relations if isinstance(relations, np.ndarray) else np.asarray(relations)
    if rel.size == 0:                                     # no relations (R = 0), of any dtype
        rel = np.zeros((0, 2), dtype=np.int64)
    if rel.ndim != 2 or rel.shape[1] != 2:
        raise ShapeError(f"relations must have shape (R, 2), got shape {rel.shape}")
    flat = check_tokens(rel.reshape(-1), M, "relations")
    budget.check_bytes(M * M, f"an M x M order matrix (M={M})")
    less = np.zeros((M, M), dtype=bool)
    if len(flat) == 0:
        return less
    tokens, sub = closure_matrix(flat[0::2], flat[1::2], M, allow_cycles=True)
    less[np.ix_(tokens, tokens)] = sub
    return less


def training_relations(ds):
    """All training relations, deduplicated: int64 arrays ``(q, lower, upper)`` of equal length R,
    one entry per distinct ``lower <_q upper`` induced by a sentence with query q (its other
    distinct token ``lower``, its optimal token ``upper``). These are exactly the constraints
    ``K[upper, q] - K[lower, q] >= 1`` of W_kq* (docs/maxmargin.md). Requires a valid dataset.
    Computed once per dataset; sorted by (q, lower, upper); the arrays are read-only."""
    return ds._training_relations


def induced_relations(ds, q=None):
    """Training relations ``(lower, upper)`` induced by the sentences: each sentence with
    query q and optimal token x* gives ``x' <_q x*`` for its other distinct tokens x'.

    Parameters
    ----------
    ds : RealizableDataset
        Validated on first use.
    q : int or None, default None
        A query token in 0..M-1, or None for every query.

    Returns
    -------
    int64 (R, 2) or dict
        The pairs (lower, upper) of query ``q``, or a dict ``q -> (R, 2)`` when ``q`` is None
        (slices of the cached, q-sorted :func:`training_relations`: no pass over the sentences).

    Raises
    ------
    TypeError
        ``ds`` is not a RealizableDataset.
    SentenceInputError
        ``q`` is not an integer or is outside 0..M-1 (naming q and the range).

    Examples
    --------
    >>> import refimpl as ri
    >>> ds = ri.RealizableDataset(3, {0: 1, 1: 2, 2: 0}, [[0, 1], [2]], [2, 0])
    >>> ri.induced_relations(ds, 1).tolist()          # sentence [0, 1]: 0 <_1 1
    [[0, 1]]
    """
    require_dataset(ds, "induced_relations")
    if q is not None:
        q = _check_query(q, ds.vocab_size)
    q_arr, lo, up = training_relations(ds)
    if q is not None:
        a, b = np.searchsorted(q_arr, [q, q + 1])
        return np.stack([lo[a:b], up[a:b]], axis=1)
    qs, starts = np.unique(q_arr, return_index=True)
    ends = np.append(starts[1:], len(q_arr))
    return {int(qq): np.stack([lo[a:b], up[a:b]], axis=1) for qq, a, b in zip(qs, starts, ends)}


def extended_order(ds, q):
    """Extended order of query q (C11, docs/generalization.md): bool (M, M), ``less[a, b]``
    iff a <_q b in the transitive closure of the training relations of q, the pairs
    ``x' <_q x*`` of the sentences with query q. Exact for any chain length. Supplied
    generating relations that no sentence uses are not included: they are no constraint of
    W_kq*, so C6 and C11 say nothing about them (docs/theory.md, corrections, item 1).

    Parameters
    ----------
    ds : RealizableDataset
    q : int
        The query token, in 0..M-1.

    Returns
    -------
    less : bool (M, M)
        ``less[a, b]`` iff a <_q b.

    Raises
    ------
    TypeError
        ``ds`` is not a RealizableDataset.
    SentenceInputError
        ``q`` is not an integer or is outside 0..M-1 (naming q and the range).

    Examples
    --------
    >>> import refimpl as ri
    >>> ds = ri.RealizableDataset(4, {0: 1, 1: 2, 2: 3, 3: 0}, [[0, 1, 3], [1, 2, 3]], [2, 3])
    >>> less = ri.extended_order(ds, 3)          # 0 < 1 and 1 < 2 give 0 < 2
    >>> bool(less[0, 2]), bool(less[2, 0])
    (True, False)
    """
    require_dataset(ds, "extended_order")
    q = _check_query(q, ds.vocab_size)
    return transitive_closure(induced_relations(ds, q), ds.vocab_size)
