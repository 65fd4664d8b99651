"""Public Hypothesis strategies for realizable and corrupted datasets.

Use them in your own test suite::

    from hypothesis import given
    from refimpl.testing import realizable_datasets, corrupted_datasets

    @given(realizable_datasets(max_vocab=10))
    def test_my_trainer(ds): ...

    @given(corrupted_datasets(kind="order_cycle_3"))
    def test_my_validator(case):
        with pytest.raises(case.error): my_validate(case.dataset)

Both build valid (or invalid) data by construction: no ``.filter``, no
``assume``. A realizable dataset is made by :func:`refimpl.generate` from drawn
sizes and a drawn seed, so Hypothesis shrinks towards small vocabularies, few
short sentences and seed 0. A corruption adds exactly one defect whose expected
exception class and sentence index are known in advance.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from hypothesis import strategies as st

from . import errors
from .data import RealizableDataset, induced_relations
from .generator import generate

__all__ = ["realizable_datasets", "corrupted_datasets", "CorruptedCase", "CORRUPTION_KINDS"]


@st.composite
def realizable_datasets(draw, min_vocab=2, max_vocab=12, min_sentences=1, max_sentences=40,
                        min_len=1, max_len=6, partial_collocation=True, orders="induced"):
    """Strategy for :class:`~refimpl.data.RealizableDataset`.

    Parameters bound M (``min_vocab..max_vocab``), N (``min_sentences..max_sentences``)
    and sentence lengths (``min_len..max_len``). ``partial_collocation`` lets |C|
    be drawn below M. ``orders`` is ``"induced"``, ``"supplied"`` (the generating
    orders are stored, M <= 200) or ``"either"``. Orders are drawn of dimension 1
    (total) to 3.
    """
    M = draw(st.integers(min_vocab, max_vocab), label="M")
    N = draw(st.integers(min_sentences, max_sentences), label="N")
    lo = draw(st.integers(min_len, max_len), label="min_len")
    hi = draw(st.integers(lo, max_len), label="max_len")
    n_c = draw(st.integers(1, M), label="n_colloc") if partial_collocation else M
    dim = draw(st.integers(1, 3), label="order_dim")
    store = {"induced": False, "supplied": True}.get(orders)
    if store is None:
        store = draw(st.booleans(), label="store_orders")
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


@st.composite
def corrupted_datasets(draw, kind=None, **bounds):
    """Strategy for :class:`CorruptedCase`: a realizable dataset with one defect.

    ``kind`` is one of :data:`CORRUPTION_KINDS` (drawn when None); ``bounds`` go to
    :func:`realizable_datasets`. Validation of ``case.dataset`` must raise
    ``case.error`` whose ``.sentence`` equals ``case.sentence`` (for cycles: the
    sentence that closes the cycle, the largest index among those inducing it).
    """
    if kind is None:
        kind = draw(st.sampled_from(CORRUPTION_KINDS), label="kind")
    elif kind not in CORRUPTION_KINDS:
        raise ValueError(f"unknown corruption kind {kind!r}; expected one of {CORRUPTION_KINDS}")
    bounds.setdefault("orders", "induced")
    bounds.setdefault("min_vocab", 2)
    ds = draw(realizable_datasets(**bounds), label="base")
    dataset, error, sentence = _corrupt(ds, kind, _Drawer(draw))
    return CorruptedCase(dataset, kind, error, sentence)


class _Drawer:
    """Adapter so _corrupt can call ``data.draw(strategy, label=...)`` inside a composite."""

    def __init__(self, draw):
        self._draw = draw

    def draw(self, strategy, label=None):
        return self._draw(strategy, label=label)
