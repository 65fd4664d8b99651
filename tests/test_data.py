"""Datasets: validation, the error hierarchy, JSON round trips, orders, generation (docs/datasets.md)."""
import json
import itertools

import numpy as np
import pytest
from hypothesis import given, strategies as st

import refimpl as ri
from refimpl import errors
from refimpl.data import RealizableDataset, induced_relations, pad_sentences, transitive_closure
from refimpl.testing import CORRUPTION_KINDS, corrupted_datasets, realizable_datasets


# ------------------------------------------------------------- hand example
def small_dataset(orders=None):
    """Tokens 0..4, n(x) = x + 1 mod 5. Query 4 throughout.

    sentence [0, 1, 4] -> y = 2 = n(1): x* = 1, relations 0 <_4 1, 4 <_4 1
    sentence [1, 2, 4] -> y = 3 = n(2): x* = 2, relations 1 <_4 2, 4 <_4 2
    sentence [3, 3]    -> y = 4 = n(3): query 3, x* = 3 (the query itself), no relation
    """
    colloc = {x: (x + 1) % 5 for x in range(5)}
    return RealizableDataset(5, colloc, [[0, 1, 4], [1, 2, 4], [3, 3]], [2, 3, 4], orders)


def test_hand_example_optimal_tokens_and_relations():
    ds = small_dataset()
    ri.validate(ds)
    assert ds.optimal.tolist() == [1, 2, 3]
    assert ds.queries.tolist() == [4, 4, 3]
    rel = {tuple(r) for r in induced_relations(ds, 4).tolist()}
    assert rel == {(0, 1), (4, 1), (1, 2), (4, 2)}
    less = ri.extended_order(ds, 4)
    # closure adds 0 < 2 (via 1); nothing else
    expected = {(0, 1), (4, 1), (1, 2), (4, 2), (0, 2)}
    assert {tuple(p) for p in np.argwhere(less).tolist()} == expected
    assert not ri.extended_order(ds, 3).any()


def test_supplied_orders_that_imply_the_sentences_pass():
    # supplied 0 < 4 < 1 < 2 implies every induced relation only through the closure
    ds = small_dataset(orders={4: [[0, 4], [4, 1], [1, 2]]})
    ri.validate(ds)


def test_supplied_order_contradiction_names_sentence():
    ds = small_dataset(orders={4: [[0, 1], [4, 1], [2, 1]]})
    with pytest.raises(errors.OrderContradictionError) as info:
        ri.validate(ds)
    assert info.value.sentence == 1 and info.value.query == 4
    assert info.value.witness["relation"] == (1, 2)


def test_cycle_witness_is_the_cycle():
    colloc = {x: x for x in range(3)}
    ds = RealizableDataset(3, colloc, [[0, 1, 2], [1, 0, 2]], [1, 0])
    with pytest.raises(errors.OrderCycleError) as info:
        ri.validate(ds)
    cyc = info.value.witness["cycle"]
    assert cyc[0] == cyc[-1] and sorted(cyc[:-1]) == [0, 1] and info.value.query == 2
    assert info.value.sentence == 1 and sorted(info.value.witness["sentences"]) == [0, 1]
    assert "\n" not in str(info.value)


def test_error_classes_share_one_base():
    """Three families, all ValueErrors: bad data (DatasetError), bad parameters (ConfigError,
    including ResourceError) and bad arguments at public boundaries (InputError)."""
    bases = (errors.DatasetError, errors.ConfigError, errors.InputError)
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert sum(issubclass(cls, b) for b in bases) == 1, name
        assert issubclass(cls, ValueError)


# ------------------------------------------------------------- closure
@given(st.integers(1, 7).flatmap(lambda m: st.tuples(
    st.just(m), st.lists(st.tuples(st.integers(0, m - 1), st.integers(0, m - 1)), max_size=12))))
def test_transitive_closure_matches_warshall(case):
    """Closure by matrix squaring equals Warshall's triple loop on random relations."""
    m, rel = case
    ref = np.zeros((m, m), dtype=bool)
    for a, b in rel:
        ref[a, b] = True
    for k, i, j in itertools.product(range(m), repeat=3):
        ref[i, j] |= ref[i, k] and ref[k, j]
    got = transitive_closure(np.array(rel, dtype=np.int64).reshape(-1, 2), m)
    assert np.array_equal(got, ref)


# ------------------------------------------------------------- properties
@given(realizable_datasets(max_vocab=30, orders="either"))
def test_generated_datasets_validate_and_round_trip(tmp_path_factory, ds):
    """Every generated dataset validates and survives save/load unchanged."""
    ri.validate(ds)
    path = tmp_path_factory.mktemp("rt") / "ds.json"
    ds.save(path)
    back = ri.load_dataset(path)
    assert back == ds
    assert back.to_dict() == ds.to_dict()
    assert np.array_equal(back.optimal, ds.optimal)


@given(realizable_datasets(max_vocab=25, orders="supplied"))
def test_induced_orders_lie_in_the_generating_closure(ds):
    """Induced relations of a generated dataset are a subset of the closure of the
    generating orders (stored by store_orders=True)."""
    ri.validate(ds)
    for q, rel in induced_relations(ds).items():
        closure = transitive_closure(ds.orders[q], ds.vocab_size)
        assert closure[rel[:, 0], rel[:, 1]].all(), f"query {q}"


@pytest.mark.parametrize("kind", CORRUPTION_KINDS)
@given(data=st.data())
def test_corrupted_datasets_raise_their_own_subclass(kind, data):
    """Each corruption raises exactly its subclass, and the witness names the sentence."""
    case = data.draw(corrupted_datasets(kind=kind, max_vocab=15, max_sentences=20))
    with pytest.raises(errors.DatasetError) as info:
        ri.validate(case.dataset)
    assert type(info.value) is case.error, (kind, info.value)
    assert info.value.sentence == case.sentence, (kind, str(info.value))
    assert info.value.witness["sentence"] == case.sentence
    assert "\n" not in str(info.value)


def test_file_format_errors(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"format": "refimpl/realizable-dataset@1", "vocab_size": 3')
    with pytest.raises(errors.FileFormatError):
        ri.load_dataset(p)
    p.write_text(json.dumps({"format": "other@9", "vocab_size": 3}))
    with pytest.raises(errors.FileFormatError, match="format tag"):
        ri.load_dataset(p)


# ------------------------------------------------------------- generation
def test_generation_is_deterministic_and_seed_dependent():
    a, b = ri.generate(30, 100, seed=7), ri.generate(30, 100, seed=7)
    c = ri.generate(30, 100, seed=8)
    assert a == b and a != c


@pytest.mark.parametrize("kwargs, field", [
    (dict(vocab_size=1), "vocab_size"), (dict(n_sentences=0), "n_sentences"),
    (dict(min_len=0), "min_len"), (dict(min_len=5, max_len=3), "max_len"),
    (dict(n_colloc=0), "n_colloc"), (dict(vocab_size=300, store_orders=True), "store_orders"),
])
def test_generation_rejects_bad_parameters(kwargs, field):
    with pytest.raises(errors.ConfigError, match=field):
        ri.generate(**kwargs)


def test_generation_has_partial_orders_and_lengths():
    ds = ri.generate(40, 2000, min_len=2, max_len=9, seed=3, store_orders=True)
    ri.validate(ds)
    assert ds.lengths.min() == 2 and ds.lengths.max() == 9
    # dimension-2 orders: some pairs are incomparable in either direction
    q = int(ds.queries[0])
    less = transitive_closure(ds.orders[q], ds.vocab_size)
    incomparable = ~(less | less.T)
    np.fill_diagonal(incomparable, False)
    assert incomparable.any()


@pytest.mark.parametrize("lo,hi", [(1, 1), (1, 3)])
def test_partial_collocation_keeps_lengths_in_range(lo, hi):
    """docs/datasets.md: lengths lie in [min_len, max_len] even when C is partial; a length-1
    sentence [q] needs q in C (it is its own optimal token), so its query comes from C."""
    for seed in range(4):
        ds = ri.generate(10, 300, lo, hi, seed=seed, n_colloc=3)
        ri.validate(ds)
        assert lo <= ds.lengths.min() and ds.lengths.max() <= hi
        single = ds.lengths == 1
        assert single.any() and np.all(ds.colloc[ds.tokens[single, 0]] >= 0)


def test_two_sentences_given_as_1d_arrays_are_not_taken_as_padded():
    """pad_sentences: (array, array) of 1-D sentences is two sentences, (2-D, 1-D) is padded."""
    tokens, lengths = pad_sentences((np.array([0, 1, 4]), np.array([1, 2])))
    assert tokens.tolist() == [[0, 1, 4], [1, 2, -1]] and lengths.tolist() == [3, 2]
    again = pad_sentences((tokens, lengths))
    assert np.array_equal(again[0], tokens) and np.array_equal(again[1], lengths)


def test_large_generation_is_valid():
    """M=5000 fits (no M x M structure per query is stored)."""
    ds = ri.generate(5000, 20000, 2, 16, seed=1)
    ri.validate(ds)
    assert ds.tokens.shape == (20000, 16)


def test_extended_order_ignores_supplied_relations_no_sentence_uses():
    """C11 / docs/theory.md, correction 1: the extended order closes the training relations only.
    Supplied 0 < 4 < 1 < 2 on query 4 is not training data: 0 < 4 stays out of the closure."""
    ds = small_dataset(orders={4: [[0, 4], [4, 1], [1, 2]]})
    ri.validate(ds)
    less = ri.extended_order(ds, 4)
    assert not less[0, 4] and less[0, 2]
