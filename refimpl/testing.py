"""Hypothesis strategies for realizable and corrupted datasets.

Needs Hypothesis (``pip install "refimpl[test]"``); importing this module without it raises
an ImportError that says so. Use it in your own test suite::

    from hypothesis import given
    from refimpl.testing import realizable_datasets, corrupted_datasets

    @given(realizable_datasets(max_vocab=10))
    def test_my_trainer(ds): ...

    @given(corrupted_datasets(kind="order_cycle_3"))
    def test_my_validator(case):
        with pytest.raises(case.error): my_validate(case.dataset)

The strategies build valid (or invalid) data by construction: no ``.filter``, no
``assume``. A realizable dataset is made by :func:`refimpl.generate` from drawn
sizes and a drawn seed, so Hypothesis shrinks towards small vocabularies, few
short sentences and seed 0. A corruption adds exactly one defect whose expected
exception class and sentence index are known in advance. Bounds beyond what the
generator allows are capped when the strategy is built (documented per parameter);
contradictory bounds raise ``hypothesis.errors.InvalidArgument`` then, never during a draw.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

try:
    from hypothesis import strategies as st
    from hypothesis.errors import InvalidArgument
except ImportError as _err:                      # pragma: no cover - exercised in a subprocess
    raise ModuleNotFoundError(
        'refimpl.testing needs Hypothesis, which a plain "pip install refimpl" does not install: '
        'pip install "refimpl[test]" (the test extra: pytest and hypothesis)', name="hypothesis") from _err

from . import errors
from .data import RealizableDataset, induced_relations
from .generator import _MAX_INT, _MAX_STORED_M, generate

__all__ = ["realizable_datasets", "corrupted_datasets", "CorruptedCase", "CORRUPTION_KINDS"]

_ORDERS = ("induced", "supplied", "either")


def _bounds(name, lo, hi, floor, ceiling):
    """(lo, hi) with lo raised to ``floor`` and hi lowered to ``ceiling``; InvalidArgument
    when they are not integers or lo > hi after capping."""
    for v, what in ((lo, f"min_{name}"), (hi, f"max_{name}")):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise InvalidArgument(f"{what} must be an integer, got {v!r}")
    lo, hi = max(int(lo), floor), min(int(hi), ceiling)
    if lo > hi:
        raise InvalidArgument(f"min_{name} > max_{name} after capping to {floor}..{ceiling}: {lo} > {hi}")
    return lo, hi


def realizable_datasets(min_vocab=2, max_vocab=12, min_sentences=1, max_sentences=40,
                        min_len=1, max_len=6, partial_collocation=True, orders="induced"):
    """Strategy for a valid :class:`~refimpl.data.RealizableDataset` (made by :func:`refimpl.generate`).

    Parameters
    ----------
    min_vocab, max_vocab : int
        Bounds of M, capped to 2..2^62 (the generator's range); with ``orders="supplied"``
        max_vocab is also capped to 200 (stored orders hold every comparable pair, M <= 200).
    min_sentences, max_sentences : int
        Bounds of N, capped to 1..2^62.
    min_len, max_len : int
        Bounds of the sentence lengths, capped to 1..2^62; each dataset draws its own
        length range inside them.
    partial_collocation : bool
        Let |C| be drawn below M.
    orders : "induced", "supplied" or "either"
        "supplied" stores the generating orders (``store_orders``); "either" draws it for
        datasets with M <= 200 and uses induced orders above. Orders are drawn of
        dimension 1 (total) to 3.

    Returns
    -------
    SearchStrategy of RealizableDataset

    Raises
    ------
    hypothesis.errors.InvalidArgument
        When the strategy is built: a bound that is not an integer, min > max after capping,
        an unknown ``orders``.

    Examples
    --------
    >>> import refimpl as ri
    >>> from hypothesis import given
    >>> @given(realizable_datasets(max_vocab=300, orders="either"))
    ... def test_validates(ds):
    ...     ri.validate(ds)
    """
    if orders not in _ORDERS:
        raise InvalidArgument(f"orders must be one of {_ORDERS}, got {orders!r}")
    v_hi_cap = _MAX_STORED_M if orders == "supplied" else _MAX_INT
    m_lo, m_hi = _bounds("vocab", min_vocab, max_vocab, 2, v_hi_cap)
    n_lo, n_hi = _bounds("sentences", min_sentences, max_sentences, 1, _MAX_INT)
    l_lo, l_hi = _bounds("len", min_len, max_len, 1, _MAX_INT)
    return _realizable(m_lo, m_hi, n_lo, n_hi, l_lo, l_hi, bool(partial_collocation), orders)


@st.composite
def _realizable(draw, m_lo, m_hi, n_lo, n_hi, l_lo, l_hi, partial_collocation, orders):
    M = draw(st.integers(m_lo, m_hi), label="M")
    N = draw(st.integers(n_lo, n_hi), label="N")
    lo = draw(st.integers(l_lo, l_hi), label="min_len")
    hi = draw(st.integers(lo, l_hi), label="max_len")
    n_c = draw(st.integers(1, M), label="n_colloc") if partial_collocation else M
    dim = draw(st.integers(1, 3), label="order_dim")
    store = {"induced": False, "supplied": True}.get(orders)
    if store is None:
        store = draw(st.booleans(), label="store_orders") if M <= _MAX_STORED_M else False
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    return generate(M, N, lo, hi, seed, n_colloc=n_c, order_dim=dim, store_orders=store)


class CorruptedCase(NamedTuple):
    """One corrupted dataset and what validation must report."""
    dataset: RealizableDataset     # the corrupted dataset (not validated)
    kind: str                      # one of CORRUPTION_KINDS
    error: type                    # the DatasetError subclass validation must raise
    sentence: object               # index the witness must name (None: no sentence involved)


def _rebuild(ds, *, vocab_size=None, collocation=None, sentences=None, next_tokens=None,
             orders="keep"):
    return RealizableDataset(
        ds.vocab_size if vocab_size is None else vocab_size,
        ds.collocation_pairs if collocation is None else collocation,
        ds.sentences() if sentences is None else sentences,
        ds.next_tokens if next_tokens is None else next_tokens,
        ds.orders if orders == "keep" else orders)


def _fresh(ds, k):
    """k new token ids (M, M+1, ...) and the enlarged vocabulary size."""
    M = ds.vocab_size
    return list(range(M, M + k)), M + k


def _corrupt(ds, kind, data):
    """Apply one defect of ``kind`` to the valid dataset ``ds``."""
    N, M = ds.n_sentences, ds.vocab_size
    sents = ds.sentences()
    nxt = ds.next_tokens.tolist()
    pairs = ds.collocation_pairs.tolist()
    i = data.draw(st.integers(0, N - 1), label="sentence")
    pos = data.draw(st.integers(0, len(sents[i]) - 1), label="position")
    if kind in ("token_out_of_range", "negative_token"):
        sents[i][pos] = M + data.draw(st.integers(0, 5)) if kind == "token_out_of_range" else -1 - data.draw(
            st.integers(0, 5))
        return _rebuild(ds, sentences=sents), errors.TokenOutOfRangeError, i
    if kind == "empty_sentence":
        sents[i] = []
        return _rebuild(ds, sentences=sents), errors.EmptySentenceError, i
    if kind == "count_mismatch":
        extra = data.draw(st.booleans(), label="extra next token")
        nxt = nxt + [0] if extra else nxt[:-1]
        return _rebuild(ds, next_tokens=nxt), errors.CountMismatchError, None
    if kind == "collocation_conflict":
        x, nx = pairs[data.draw(st.integers(0, len(pairs) - 1), label="pair")]
        other = (nx + data.draw(st.integers(1, M - 1), label="shift")) % M
        return _rebuild(ds, collocation=pairs + [[x, other]]), errors.CollocationConflictError, None
    if kind == "no_optimal_token":
        # the next token becomes a fresh token that no n(x) reaches
        (b,), M2 = _fresh(ds, 1)
        nxt[i] = b
        return _rebuild(ds, vocab_size=M2, next_tokens=nxt), errors.NoOptimalTokenError, i
    if kind == "ambiguous_optimal_token":
        # a fresh token b with n(b) = y_i is inserted into sentence i before its query
        (b,), M2 = _fresh(ds, 1)
        sents[i].insert(min(pos, len(sents[i]) - 1), b)
        return (_rebuild(ds, vocab_size=M2, collocation=pairs + [[b, nxt[i]]], sentences=sents),
                errors.AmbiguousOptimalTokenError, i)
    if kind in ("order_cycle_2", "order_cycle_3"):
        # fresh tokens a_0..a_{k-1} and a fresh query q; sentence j is [a_j, a_{j+1}, q]
        # with next token n(a_{j+1}), so it induces a_j <_q a_{j+1}, cyclically
        k = 2 if kind == "order_cycle_2" else 3
        toks, M2 = _fresh(ds, k + 1)
        a, q = toks[:k], toks[k]
        new_pairs = [[a[j], a[j]] for j in range(k)]  # n(a_j) = a_j: all distinct
        for j in range(k):
            sents.append([a[j], a[(j + 1) % k], q])
            nxt.append(new_pairs[(j + 1) % k][1])
        new = _rebuild(ds, vocab_size=M2, collocation=pairs + new_pairs, sentences=sents, next_tokens=nxt,
                       orders=None)
        return new, errors.OrderCycleError, N + k - 1
    if kind == "order_contradiction":
        # a fresh query q and token a: the sentence [a, q] has x* = a (so q <_q a),
        # while the supplied order of q says a <_q q
        (a, q), M2 = _fresh(ds, 2)
        base = induced_relations(ds)
        orders = {qq: rel for qq, rel in base.items()}
        orders[q] = np.array([[a, q]], dtype=np.int64)
        sents.append([a, q])
        nxt.append(a)
        new = _rebuild(ds, vocab_size=M2, collocation=pairs + [[a, a]], sentences=sents, next_tokens=nxt,
                       orders=orders)
        return new, errors.OrderContradictionError, N
    raise ValueError(f"unknown corruption kind {kind!r}; expected one of {CORRUPTION_KINDS}")


CORRUPTION_KINDS = ("token_out_of_range", "negative_token", "empty_sentence", "count_mismatch",
                    "collocation_conflict", "no_optimal_token", "ambiguous_optimal_token",
                    "order_cycle_2", "order_cycle_3", "order_contradiction")


def corrupted_datasets(kind=None, **bounds):
    """Strategy for :class:`CorruptedCase`: a realizable dataset with one defect.

    Parameters
    ----------
    kind : str or None
        One of :data:`CORRUPTION_KINDS` (drawn when None).
    **bounds
        Passed to :func:`realizable_datasets` (capped as there); ``orders`` defaults to
        "induced".

    Returns
    -------
    SearchStrategy of CorruptedCase
        Validation of ``case.dataset`` must raise ``case.error`` whose ``.sentence`` equals
        ``case.sentence`` (for cycles: the sentence that closes the cycle, the largest index
        among those inducing it).

    Raises
    ------
    ValueError
        An unknown ``kind`` (when the strategy is built).
    """
    if kind is not None and kind not in CORRUPTION_KINDS:
        raise ValueError(f"unknown corruption kind {kind!r}; expected one of {CORRUPTION_KINDS}")
    bounds.setdefault("orders", "induced")
    bounds.setdefault("min_vocab", 2)
    return _corrupted(kind, realizable_datasets(**bounds))


@st.composite
def _corrupted(draw, kind, base):
    if kind is None:
        kind = draw(st.sampled_from(CORRUPTION_KINDS), label="kind")
    ds = draw(base, label="base")
    dataset, error, sentence = _corrupt(ds, kind, _Drawer(draw))
    return CorruptedCase(dataset, kind, error, sentence)


class _Drawer:
    """Adapter so _corrupt can call ``data.draw(strategy, label=...)`` inside a composite."""

    def __init__(self, draw):
        self._draw = draw

    def draw(self, strategy, label=None):
        return self._draw(strategy, label=label)

