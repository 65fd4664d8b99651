"""refimpl.generator: realizability, lengths, stored orders, determinism, scale and memory."""
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest

import refimpl as ri
from refimpl import errors
from refimpl.data import transitive_closure
from refimpl.generator import below, generation_bytes, hash_key

PARAMS = [  # (M, N, min_len, max_len, n_colloc, order_dim)
    (2, 50, 1, 4, None, 1), (2, 50, 2, 3, 1, 2), (5, 80, 1, 1, 3, 2), (12, 200, 1, 6, None, 1),
    (12, 200, 1, 6, 4, 3), (20, 200, 2, 6, None, 2), (40, 300, 3, 9, 7, 2), (100, 400, 1, 12, None, 4),
    (300, 500, 2, 5, 30, 6), (5000, 2000, 2, 16, None, 2), (10**9, 300, 1, 8, 50, 2),
]


def _sentence_facts(ds):
    """(query, x*, other distinct tokens) for each sentence."""
    out = []
    for i, s in enumerate(ds.sentences()):
        x = int(ds.optimal[i])
        out.append((s[-1], x, sorted(set(s) - {x})))
    return out


@pytest.mark.parametrize("M, N, lo, hi, n_c, dim", PARAMS)
def test_generated_datasets_are_realizable_with_lengths_in_range(M, N, lo, hi, n_c, dim):
    for seed in range(5):
        ds = ri.generate(M, N, lo, hi, seed, n_colloc=n_c, order_dim=dim)
        ri.validate(ds)
        assert ds.vocab_size == M and ds.n_sentences == N
        assert lo <= ds.lengths.min() and ds.lengths.max() <= hi
        assert len(ds.collocation_pairs) == (M if n_c is None else n_c)
        assert ds.flat_tokens.min() >= 0 and ds.flat_tokens.max() < M
        # every induced relation x' <_q x* holds in the hash-keyed order of q
        key = hash_key(seed)
        q, x, others = zip(*_sentence_facts(ds))
        reps = [len(o) for o in others]
        lower = np.concatenate([np.asarray(o, dtype=np.int64) for o in others])
        assert below(key, np.repeat(q, reps), lower, np.repeat(x, reps), dim).all()


def test_lengths_cover_the_range_uniformly():
    ds = ri.generate(30, 20000, 2, 9, seed=5)
    counts = np.bincount(ds.lengths, minlength=10)[2:]
    assert counts.min() > 0.9 * 20000 / 8 and counts.max() < 1.1 * 20000 / 8


@pytest.mark.parametrize("n_c", [None, 3, 1])
def test_length_one_sentences_are_their_own_optimal_token(n_c):
    ds = ri.generate(10, 400, 1, 3, seed=2, n_colloc=n_c)
    ri.validate(ds)
    single = np.flatnonzero(ds.lengths == 1)
    assert len(single) > 50
    tokens = ds.flat_tokens[ds.offsets[single]]
    C = set(ds.colloc_tokens.tolist())
    assert all(t in C for t in tokens.tolist())
    assert np.array_equal(ds.optimal[single], tokens)
    assert np.array_equal(ds.next_tokens[single], ds.colloc[tokens])


def test_query_is_the_optimal_token_or_below_it():
    M, dim, seed = 500, 2, 4
    ds = ri.generate(M, 3000, 2, 5, seed, order_dim=dim)
    q, x = ds.queries, ds.optimal
    differ = q != x
    assert below(hash_key(seed), q[differ], q[differ], x[differ], dim).all()
    # the query is drawn from {q : q <_q x*} u {x*}: about 1 in (M - 1)/4 + 1 is x* itself
    assert differ.mean() > 0.95


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_induced_relations_lie_in_the_stored_orders(dim):
    for seed in range(6):
        ds = ri.generate(25, 300, 1, 7, seed, order_dim=dim, store_orders=True, n_colloc=None if seed % 2 else 9)
        ri.validate(ds)  # checks containment in the closure too
        assert set(ds.orders) == set(np.unique(ds.queries).tolist())
        for q, x, others in _sentence_facts(ds):
            rel = ds.orders[q]
            less = transitive_closure(rel, ds.vocab_size)
            # every comparable pair is stored: the stored relations are already closed
            assert less.sum() == len(rel)
            assert all(less[o, x] for o in others)


def test_order_dim_one_gives_total_orders():
    M = 30
    ds = ri.generate(M, 200, 2, 6, seed=1, order_dim=1, store_orders=True)
    for q, rel in ds.orders.items():
        less = transitive_closure(rel, M)
        assert len(rel) == M * (M - 1) // 2
        comparable = less | less.T
        np.fill_diagonal(comparable, True)
        assert comparable.all(), q


def test_order_dim_two_leaves_about_half_of_the_pairs_incomparable():
    M = 60
    ds = ri.generate(M, 500, 2, 6, seed=3, order_dim=2, store_orders=True)
    share = np.mean([len(rel) / (M * (M - 1) / 2) for rel in ds.orders.values()])
    assert 0.45 < share < 0.55


def test_generation_is_deterministic_and_seed_dependent():
    kw = dict(n_colloc=7, order_dim=3, store_orders=True)
    a, b = ri.generate(40, 500, 1, 8, 11, **kw), ri.generate(40, 500, 1, 8, 11, **kw)
    assert a == b
    assert a != ri.generate(40, 500, 1, 8, 12, **kw)
    big = [ri.generate(10**15, 300, 2, 6, 3, n_colloc=20) for _ in range(2)]
    assert big[0] == big[1] and big[0] != ri.generate(10**15, 300, 2, 6, 4, n_colloc=20)


def test_collocation_depends_on_seed_and_sizes_only():
    a, b = ri.generate(50, 10, seed=9, n_colloc=12), ri.generate(50, 1000, 1, 9, seed=9, n_colloc=12)
    assert np.array_equal(a.collocation_pairs, b.collocation_pairs)
    assert len(np.unique(a.collocation_pairs[:, 1])) == 12          # n is injective


def test_partial_collocation_with_a_huge_vocabulary_is_fast():
    M = 2**40
    t = time.perf_counter()
    ds = ri.generate(M, 5000, 1, 8, seed=0, n_colloc=1000)
    assert time.perf_counter() - t < 3
    ri.validate(ds)
    pairs = ds.collocation_pairs
    assert pairs.min() >= 0 and pairs.max() < M and len(np.unique(pairs[:, 0])) == 1000
    assert ds.flat_tokens.min() >= 0 and ds.flat_tokens.max() < M
    assert ds.flat_tokens.max() > 2**39          # fillers come from the whole vocabulary
    ri.generate(2**62, 20, seed=1, n_colloc=5)  # the largest accepted vocabulary


def test_nothing_of_size_m_is_allocated():
    t = time.perf_counter()
    ds = ri.generate(10**12, 1000, 2, 6, seed=0, n_colloc=10)
    assert time.perf_counter() - t < 3
    assert ds.vocab_size == 10**12 and ds.n_sentences == 1000
    # an int64 array of M = 10^7 would be 80 MB; the whole run stays far below it
    tracemalloc.start()
    ri.generate(10**7, 1000, 2, 6, seed=0, n_colloc=10)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 * 10**6


def test_memory_refusal_is_immediate(monkeypatch):
    monkeypatch.setenv("REFIMPL_MAX_MEMORY", "1M")
    t = time.perf_counter()
    with pytest.raises(errors.ResourceError, match="generating M=20, N=10000000") as info:
        ri.generate(20, 10**7, 2, 6)
    assert time.perf_counter() - t < 1
    assert info.value.needed_bytes > info.value.limit_bytes == 1 << 20
    with pytest.raises(errors.ResourceError):
        ri.generate(10**8, 5)                   # the collocation alone: 10^8 pairs
    ri.generate(20, 200)                        # a small request fits


def test_memory_estimate_covers_the_collocation_and_the_tokens():
    base, _ = generation_bytes(20, 1000, 2, 6)
    assert generation_bytes(20, 2000, 2, 6)[0] > 1.5 * base
    small, _ = generation_bytes(10**12, 1000, 2, 6, n_colloc=10)
    assert small < 10**8
    assert generation_bytes(10**8, 5, 2, 6)[0] > 10**10


def test_many_rankings_fall_back_to_the_optimal_token():
    """order_dim = 60: a uniform candidate is below x* with probability 2^-60, so every draw
    falls back to x* (query and fillers); the result is still realizable and fast."""
    t = time.perf_counter()
    ds = ri.generate(1000, 500, 1, 6, seed=0, order_dim=60)
    ri.generate(1000, 50, 2, 4, seed=0, order_dim=10**9)
    assert time.perf_counter() - t < 5
    ri.validate(ds)
    assert np.array_equal(ds.queries, ds.optimal)
    assert all(set(s) == {s[-1]} for s in ds.sentences())


@pytest.mark.parametrize("kwargs, field", [
    (dict(vocab_size=10**30), "vocab_size"), (dict(vocab_size=2**62 + 1), "vocab_size"),
    (dict(vocab_size=20.0), "vocab_size"), (dict(n_sentences=True), "n_sentences"),
    (dict(n_sentences=10**25), "n_sentences"), (dict(max_len=10**40), "max_len"),
    (dict(seed=-1), "seed"), (dict(seed=1.5), "seed"), (dict(order_dim=0), "order_dim"),
    (dict(n_colloc=21), "n_colloc"), (dict(vocab_size=201, store_orders=True), "store_orders"),
])
def test_bad_parameters_are_one_line_config_errors(kwargs, field):
    with pytest.raises(errors.ConfigError, match=field) as info:
        ri.generate(**kwargs)
    assert "\n" not in str(info.value) and len(str(info.value)) < 200
    assert not isinstance(info.value, errors.ResourceError)


def test_command_line_refuses_a_huge_vocabulary_in_one_line(tmp_path):
    out = tmp_path / "x.json"
    r = subprocess.run([sys.executable, "-m", "refimpl", "generate", "-M", str(10**30), "--out", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "vocab_size" in r.stderr
    assert not out.exists()


def test_progress_bar_only_on_request(capsys):
    ri.generate(20, 300, progress=False)
    assert capsys.readouterr().err == ""
    ri.generate(20, 300, progress=None)      # stderr is not a terminal under pytest
    assert capsys.readouterr().err == ""
    ri.generate(20, 300, progress=True)
    assert "generate" in capsys.readouterr().err
