"""Exact sparse order algorithms (refimpl.orders) against a naive reference (docs/datasets.md).

The reference lives in this file: a Warshall closure with boolean ``np.logical_or``
updates over the compacted tokens of one query (never an integer matrix power), and
a colour-marking depth-first search for cycles. Inputs are built by construction:
relations of a query are oriented along a random ranking of a vocabulary (so they are
acyclic), with optional planted back edges and self-loops (so they are cyclic), and
they include long chains (> 256 links), wide fans (> 256 middle tokens), several
queries sharing tokens, and token values drawn from ranges up to 2^62.
"""
import time

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refimpl.errors import InputError, OrderCycleError
from refimpl.orders import closure_matrix, find_cycle, reachable_pairs, transitive_closure, unique_relations

INT64 = np.iinfo(np.int64)


# ===================================================================== naive reference
def ref_closure(pairs):
    """Closure of one query's relations: (sorted tokens, bool (k, k)) by Warshall's algorithm.

    ``less[i, j]`` iff a path of length >= 1 leads from tokens[i] to tokens[j]; boolean
    updates only: ``less |= less[:, m] & less[m, :]`` for every intermediate m."""
    tokens = sorted({t for p in pairs for t in p})
    pos = {t: i for i, t in enumerate(tokens)}
    less = np.zeros((len(tokens), len(tokens)), dtype=bool)
    for a, b in pairs:
        less[pos[a], pos[b]] = True
    for m in range(len(tokens)):
        np.logical_or(less, np.logical_and(less[:, m:m + 1], less[m:m + 1, :]), out=less)
    return tokens, less


def by_query(q, lo, up):
    """dict query -> list of (lo, up) Python-int pairs."""
    out = {}
    for qq, a, b in zip(q.tolist(), lo.tolist(), up.tolist()):
        out.setdefault(qq, []).append((a, b))
    return out


def ref_less(closures, q, a, b):
    """a <_q b in the reference closures (dict query -> (tokens, less))."""
    if q not in closures:
        return False
    tokens, less = closures[q]
    pos = {t: i for i, t in enumerate(tokens)}
    return a in pos and b in pos and bool(less[pos[a], pos[b]])


def ref_has_cycle(pairs):
    """Colour-marking DFS (iterative): does the directed graph of ``pairs`` have a cycle?"""
    succ = {}
    for a, b in pairs:
        succ.setdefault(a, []).append(b)
        succ.setdefault(b, [])
    colour = dict.fromkeys(succ, 0)  # 0 new, 1 on the current path, 2 done
    for root in succ:
        if colour[root]:
            continue
        colour[root] = 1
        stack = [(root, iter(succ[root]))]
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = 2
                stack.pop()
            elif colour[nxt] == 1:
                return True
            elif colour[nxt] == 0:
                colour[nxt] = 1
                stack.append((nxt, iter(succ[nxt])))
    return False


def assert_witness(q, lo, up, query, cycle):
    """``cycle`` closes, has >= 2 entries, and each consecutive pair is a given relation of query."""
    given_rel = set(zip(q.tolist(), lo.tolist(), up.tolist()))
    assert len(cycle) >= 2 and cycle[0] == cycle[-1]
    for a, b in zip(cycle[:-1], cycle[1:]):
        assert (query, a, b) in given_rel


# ===================================================================== strategies
TOKEN_RANGES = [None, 2**22, 2**22 + 5, 2**40, 2**62]   # None: the vocabulary is 0..n-1


@st.composite
def relation_sets(draw, max_queries=3, cyclic=False, ranges=TOKEN_RANGES):
    """Relations (q, lo, up) of 1..max_queries distinct queries over one shared vocabulary.

    Each query orients its relations along its own random ranking of the vocabulary, so
    it is acyclic; its relations are random pairs plus optionally a chain (2..30 or
    257..320 links) and a fan (a bottom and a top with 1..20 or 256..300 tokens between).
    With ``cyclic``, a query may get back edges and self-loops. Rows are duplicated and
    shuffled. Returns (q, lo, up, vocab, queries); vocab and queries are int64 arrays."""
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    n_queries = draw(st.integers(1, max_queries), label="n_queries")
    shapes = [dict(chain=draw(st.sampled_from([0, 0, 5, 30, 257, 320]), label="chain"),
                   fan=draw(st.sampled_from([0, 0, 3, 20, 256, 300]), label="fan"),
                   n_random=draw(st.integers(0, 60), label="n_random"),
                   back=draw(st.integers(0, 3), label="back") if cyclic else 0,
                   loops=draw(st.integers(0, 1), label="self_loops") if cyclic else 0)
              for _ in range(n_queries)]
    n_tok = draw(st.integers(2, 25), label="extra_tokens") + max(max(s["chain"], s["fan"] + 2) for s in shapes)
    hi = draw(st.sampled_from(ranges), label="token_range")
    if hi is None:
        vocab = rng.permutation(n_tok).astype(np.int64)
    else:
        vals = np.unique(rng.integers(0, hi, 2 * n_tok + 8, dtype=np.int64))
        vocab = rng.permutation(vals)[:n_tok]
    # queries: distinct, some of them vocabulary tokens (queries sharing tokens with orders)
    pool = np.unique(np.concatenate([vocab[:3], rng.integers(0, hi or n_tok, 3, dtype=np.int64)]))
    queries = rng.permutation(pool)[:n_queries]
    rows = []
    for qq, s in zip(queries, shapes):
        rank_to_token = vocab[rng.permutation(n_tok)]   # index i in rank space -> a token
        idx = []
        i, j = rng.integers(0, n_tok, (2, s["n_random"]))
        keep = i != j
        idx += list(zip(np.minimum(i, j)[keep], np.maximum(i, j)[keep]))
        if s["chain"]:
            c = np.sort(rng.choice(n_tok, s["chain"] + 1, replace=False))
            idx += list(zip(c[:-1], c[1:]))
        if s["fan"]:
            f = np.sort(rng.choice(n_tok, s["fan"] + 2, replace=False))
            idx += [(f[0], m) for m in f[1:-1]] + [(m, f[-1]) for m in f[1:-1]]
        for _ in range(s["back"]):
            a, b = np.sort(rng.choice(n_tok, 2, replace=False))
            idx.append((b, a))
        for _ in range(s["loops"]):
            a = rng.integers(0, n_tok)
            idx.append((a, a))
        for a, b in idx:
            rows.append((qq, rank_to_token[a], rank_to_token[b]))
    rows = np.array(rows, dtype=np.int64).reshape(-1, 3)
    if len(rows):
        rows = np.concatenate([rows, rows[rng.integers(0, len(rows), len(rows) // 4)]])
        rows = rows[rng.permutation(len(rows))]
    return rows[:, 0].copy(), rows[:, 1].copy(), rows[:, 2].copy(), vocab, queries


def queried_triples(rng, q, lo, up, vocab, queries, n=300):
    """Queried (q, a, b): random vocabulary pairs, related pairs and their reverses, a == b,
    a query with no relation and a token in no relation."""
    absent = -1   # vocabularies and queries are >= 0
    qs = np.concatenate([rng.choice(queries, n), [absent] * 3, q[:50], q[:50]])
    a = np.concatenate([rng.choice(vocab, n), [vocab[0], absent, vocab[0]], lo[:50], up[:50]])
    b = np.concatenate([rng.choice(vocab, n), [vocab[0], vocab[0], absent], up[:50], lo[:50]])
    k = n // 10
    b[:k] = a[:k]
    return qs.astype(np.int64), a.astype(np.int64), b.astype(np.int64)


def reference(q, lo, up):
    return {qq: ref_closure(p) for qq, p in by_query(q, lo, up).items()}


# ===================================================================== properties
@given(st.data())
def test_unique_relations_are_the_distinct_rows_sorted(data):
    """unique_relations returns exactly the distinct (q, lo, up) rows, sorted, with the index of
    each row's first occurrence, for any int64 values (extremes and rows whose packed keys
    (q*M + lo)*M + up would collide included)."""
    # special values: 5 and 5 + 2^20 (or 0, 2^20, 2^21) as queries collide in a packed key with M = 2^22
    special = [0, 1, 2, 5, 2**20, 5 + 2**20, 2**21, 2**22, 2**40, -2**40, INT64.min, INT64.max]
    value = st.one_of(st.sampled_from(special), st.integers(INT64.min, INT64.max))
    base = data.draw(st.lists(st.tuples(value, value, value), max_size=20), label="base")
    if data.draw(st.booleans(), label="twins"):   # rows differing only by 2^20 in q
        base += [(a + 2**20, b, c) for a, b, c in base if a + 2**20 <= INT64.max]
    picks = data.draw(st.lists(st.integers(0, max(len(base) - 1, 0)), max_size=40 if base else 0), label="picks")
    rows = [base[i] for i in picks]
    arr = np.array(rows, dtype=np.int64).reshape(-1, 3)
    uq, ulo, uup, first = unique_relations(arr[:, 0], arr[:, 1], arr[:, 2])
    assert list(zip(uq.tolist(), ulo.tolist(), uup.tolist())) == sorted(set(rows))
    first_seen = {}
    for i, r in enumerate(rows):
        first_seen.setdefault(r, i)
    assert first.tolist() == [first_seen[r] for r in sorted(set(rows))]
    assert uq.dtype == ulo.dtype == uup.dtype == first.dtype == np.int64


@given(st.data())
def test_reachable_pairs_match_the_reference_closure(data):
    """reachable_pairs(i) is True iff a <_q b in the Warshall closure of query q's relations,
    on acyclic and cyclic relation sets with long chains, wide fans and huge token values;
    absent queries and tokens are related to nothing."""
    q, lo, up, vocab, queries = data.draw(relation_sets(cyclic=data.draw(st.booleans(), label="cyclic")),
                                          label="relations")
    closures = reference(q, lo, up)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="query_seed"))
    qs, a, b = queried_triples(rng, q, lo, up, vocab, queries)
    # every pair of every query's tokens when that is small, else the extremes of the chains
    for qq, (tokens, less) in closures.items():
        if len(tokens) <= 30:
            ii, jj = np.meshgrid(np.array(tokens, dtype=np.int64), np.array(tokens, dtype=np.int64))
            qs = np.concatenate([qs, np.full(ii.size, qq, dtype=np.int64)])
            a, b = np.concatenate([a, ii.ravel()]), np.concatenate([b, jj.ravel()])
        else:   # the longest relations, those the uint8 bug loses
            i, j = np.nonzero(less)
            far = np.argsort(-(less.sum(axis=1)[i] + less.sum(axis=0)[j]))[:50]
            tok = np.array(tokens, dtype=np.int64)
            qs = np.concatenate([qs, np.full(len(far), qq, dtype=np.int64)])
            a, b = np.concatenate([a, tok[i[far]]]), np.concatenate([b, tok[j[far]]])
    got = reachable_pairs(q, lo, up, qs, a, b)
    want = [ref_less(closures, x, y, z) for x, y, z in zip(qs.tolist(), a.tolist(), b.tolist())]
    assert got.dtype == bool and got.shape == qs.shape
    assert got.tolist() == want


@given(st.data())
def test_closure_matrix_matches_the_reference(data):
    """closure_matrix of each query's relations equals the Warshall closure over the involved
    tokens (and over a sorted superset when ``tokens`` is given); cyclic relations raise
    OrderCycleError with a real cycle, or give the reachability relation with allow_cycles."""
    q, lo, up, vocab, _ = data.draw(relation_sets(cyclic=data.draw(st.booleans(), label="cyclic")),
                                    label="relations")
    with_superset = data.draw(st.booleans(), label="superset")
    for qq, pairs in by_query(q, lo, up).items():
        plo = np.array([p[0] for p in pairs], dtype=np.int64)
        pup = np.array([p[1] for p in pairs], dtype=np.int64)
        tokens, less = ref_closure(pairs)
        kwargs = {}
        if with_superset:
            kwargs["tokens"] = np.unique(np.concatenate([tokens, vocab[:5]]))
        if ref_has_cycle(pairs):
            with pytest.raises(OrderCycleError) as info:
                closure_matrix(plo, pup, **kwargs)
            cyc = list(info.value.witness["cycle"])
            assert_witness(np.full(len(plo), qq), plo, pup, qq, cyc)
        else:
            got_tokens, got = closure_matrix(plo, pup, **kwargs)
            assert got.dtype == bool and got.shape == (len(got_tokens), len(got_tokens))
            want_tokens, want = _expand(tokens, less, kwargs.get("tokens"))
            assert got_tokens.tolist() == want_tokens and np.array_equal(got, want)
        got_tokens, got = closure_matrix(plo, pup, allow_cycles=True, **kwargs)
        want_tokens, want = _expand(tokens, less, kwargs.get("tokens"))
        assert got_tokens.tolist() == want_tokens and np.array_equal(got, want)


def _expand(tokens, less, superset):
    """The reference matrix over a superset of its tokens (zero rows and columns added)."""
    if superset is None:
        return tokens, less
    sup = superset.tolist()
    pos = [sup.index(t) for t in tokens]
    out = np.zeros((len(sup), len(sup)), dtype=bool)
    out[np.ix_(pos, pos)] = less
    return sup, out


@given(st.data())
def test_transitive_closure_matches_the_reference(data):
    """transitive_closure(relations, M) is the (M, M) Warshall closure of one query's relations,
    cycles included (then less[a, a] holds on the cycle), with M barely above the largest token."""
    q, lo, up, vocab, _ = data.draw(relation_sets(max_queries=1, cyclic=data.draw(st.booleans(), label="cyclic"),
                                                  ranges=[None]), label="relations")
    M = int(vocab.max()) + 1 + data.draw(st.integers(0, 3), label="spare")
    tokens, less = ref_closure(list(zip(lo.tolist(), up.tolist())))
    want = np.zeros((M, M), dtype=bool)
    want[np.ix_(tokens, tokens)] = less
    got = transitive_closure(np.stack([lo, up], axis=1), M)
    assert got.dtype == bool and got.shape == (M, M) and np.array_equal(got, want)


@given(st.data())
def test_find_cycle_matches_the_reference(data):
    """find_cycle returns None iff no query's relations have a cycle (naive DFS); otherwise the
    smallest cyclic query and a cycle made of given relations of that query."""
    q, lo, up, _, _ = data.draw(relation_sets(cyclic=True), label="relations")
    cyclic = sorted(qq for qq, pairs in by_query(q, lo, up).items() if ref_has_cycle(pairs))
    got = find_cycle(q, lo, up)
    if not cyclic:
        assert got is None
    else:
        query, cycle = got
        assert query == cyclic[0]
        assert_witness(q, lo, up, query, cycle)


# ===================================================================== regression cases
def chain(n):
    """Relations 0 < 1 < ... < n of query 0."""
    return np.zeros(n, dtype=np.int64), np.arange(n, dtype=np.int64), np.arange(1, n + 1, dtype=np.int64)


def fan(width):
    """Relations 0 < c < 1 for the `width` tokens c = 2, ..., width + 1, query 0."""
    mid = np.arange(2, width + 2, dtype=np.int64)
    return (np.zeros(2 * width, dtype=np.int64), np.concatenate([np.zeros(width, np.int64), mid]),
            np.concatenate([mid, np.ones(width, np.int64)]))


@pytest.mark.parametrize("n", [257, 300])
def test_long_chain_reaches_its_end(n):
    """0 < 1 < ... < n contains 0 < n (256 paths of a uint8 count wrap to 0 at n = 257)."""
    q, lo, up = chain(n)
    assert reachable_pairs(q, lo, up, [0, 0, 0], [0, n, 0], [n, 0, 0]).tolist() == [True, False, False]
    tokens, less = closure_matrix(lo, up)
    assert tokens.tolist() == list(range(n + 1))
    assert np.array_equal(less, np.triu(np.ones((n + 1, n + 1), dtype=bool), 1))
    assert transitive_closure(np.stack([lo, up], axis=1), n + 1)[0, n]


@pytest.mark.parametrize("width", [256, 300])
def test_wide_fan_keeps_bottom_below_top(width):
    """0 < c < 1 for 256 (or 300) tokens c: 0 < 1, though 256 two-step paths wrap a uint8 count to 0."""
    q, lo, up = fan(width)
    assert reachable_pairs(q, lo, up, [0, 0], [0, 1], [1, 0]).tolist() == [True, False]
    tokens, less = closure_matrix(lo, up)
    assert less[0, 1] and not less[1, 0] and less.sum() == 2 * width + 1
    full = transitive_closure(np.stack([lo, up], axis=1), width + 2)
    assert full[0, 1] and full.sum() == 2 * width + 1


def test_queries_whose_packed_keys_collide_stay_apart():
    """M = 2^22: (q*M + lo)*M + up wraps modulo 2^64, so queries A and B = A + 2^20 collide.
    B's relations 2 < 1 and 1 < 3 come first; A's cycle 1 < 2 < 1 must still be found, and
    B (acyclic) must keep 2 < 3 without A's 1 < 2 leaking in."""
    M = 2**22
    A, B = 5, 5 + 2**20
    assert ((A * M + 1) * M + 2) % 2**64 == ((B * M + 1) * M + 2) % 2**64   # the old key collision
    q = np.array([B, B, A, A], dtype=np.int64)
    lo = np.array([2, 1, 1, 2], dtype=np.int64)
    up = np.array([1, 3, 2, 1], dtype=np.int64)
    query, cycle = find_cycle(q, lo, up)
    assert query == A and sorted(cycle[:-1]) == [1, 2]
    assert_witness(q, lo, up, query, cycle)
    assert find_cycle(q[:2], lo[:2], up[:2]) is None
    assert len(unique_relations(q, lo, up)[0]) == 4
    got = reachable_pairs(q[:2], lo[:2], up[:2], [B, B, A], [2, 1, 1], [3, 2, 2])
    assert got.tolist() == [True, False, False]


def test_huge_tokens_and_queries():
    """Tokens and queries near 2^40 and near the int64 extremes are handled exactly."""
    big = 2**40
    q = np.array([big, big, INT64.max, INT64.min], dtype=np.int64)
    lo = np.array([big - 1, big + 7, INT64.min, 0], dtype=np.int64)
    up = np.array([big + 7, 3, INT64.max, INT64.max], dtype=np.int64)
    assert find_cycle(q, lo, up) is None
    got = reachable_pairs(q, lo, up, [big, big, INT64.max, INT64.min, big + 1],
                          [big - 1, 3, INT64.min, 0, big - 1], [3, big - 1, INT64.max, INT64.max, 3])
    assert got.tolist() == [True, False, True, True, False]
    tokens, less = closure_matrix(lo[:2], up[:2])
    assert tokens.tolist() == [3, big - 1, big + 7] and less[1, 0] and less.sum() == 3


def test_self_loops_are_cycles_of_the_smallest_query():
    """A self-loop t < t is the cycle [t, t]; the smallest cyclic query wins over a longer cycle."""
    q = np.array([9, 9, 4, 7], dtype=np.int64)
    lo = np.array([1, 2, 6, 3], dtype=np.int64)
    up = np.array([2, 1, 6, 3], dtype=np.int64)
    assert find_cycle(q, lo, up) == (4, [6, 6])
    assert find_cycle(q[:2], lo[:2], up[:2])[0] == 9
    with pytest.raises(OrderCycleError):
        closure_matrix([6], [6])
    assert closure_matrix([6], [6], allow_cycles=True)[1].tolist() == [[True]]
    assert reachable_pairs(q, lo, up, [4, 9, 9], [6, 1, 2], [6, 1, 1]).tolist() == [True, True, True]


def test_empty_inputs():
    """No relations: no cycle, nothing reachable, empty closures."""
    e = np.zeros(0, dtype=np.int64)
    assert find_cycle(e, e, e) is None
    assert [len(x) for x in unique_relations(e, e, e)] == [0, 0, 0, 0]
    assert reachable_pairs(e, e, e, [1], [1], [2]).tolist() == [False]
    assert reachable_pairs([0], [1], [2], e, e, e).shape == (0,)
    tokens, less = closure_matrix(e, e, tokens=[3, 4])
    assert tokens.tolist() == [3, 4] and not less.any()
    assert not transitive_closure(np.zeros((0, 2), dtype=np.int64), 3).any()


def test_malformed_arguments_are_rejected():
    """Unequal lengths, non-integers, tokens that miss a related token or are unsorted, and tokens
    outside 0..M-1 raise InputError (a ValueError)."""
    with pytest.raises(InputError):
        find_cycle([0, 1], [1], [2])
    with pytest.raises(InputError):
        reachable_pairs([0], [1.5], [2], [0], [1], [2])
    with pytest.raises(InputError):
        closure_matrix([1], [2], tokens=[1, 3])
    with pytest.raises(InputError):
        closure_matrix([1], [2], tokens=[2, 1])
    with pytest.raises(InputError):
        closure_matrix([1], [5], M=5)
    with pytest.raises(InputError):
        transitive_closure([[0, 5]], 5)


def test_long_chain_reachability_is_fast():
    """A 3000-relation chain queried with (0, 3000): one search of 3000 edges, measured in
    milliseconds. The bound is 5 s, far above that, because the 2-core machine is shared with
    other jobs; the dense closure this replaces took minutes. A warm-up call first compiles (or
    loads from the cache) the Numba loop, which is not what is timed."""
    reachable_pairs([0], [0], [1], [0], [0], [1])
    q, lo, up = chain(3000)
    t0 = time.perf_counter()
    got = reachable_pairs(q, lo, up, [0, 0], [0, 3000], [3000, 0])
    elapsed = time.perf_counter() - t0
    assert got.tolist() == [True, False]
    assert elapsed < 5.0


# ===================================================================== packed keys
from refimpl import orders as _orders   # noqa: E402  (the private fast paths under test)

# values at the edges of the packed paths: spans of 20, 21, 22 bits (three columns of 21 bits
# fill 63), of 62, 63 and 64 bits (one column alone), and the int64 extremes
EDGE_VALUES = [0, 1, 2**20 - 1, 2**20, 2**21 - 1, 2**21, 2**21 + 1, 2**31 - 1, 2**31, 2**62 - 1, 2**62,
               2**63 - 2**62, INT64.max - 1, INT64.max, INT64.min, INT64.min + 1, -1, -2**21]


@st.composite
def edge_columns(draw, n_cols=3, max_rows=40):
    """Columns of int64 rows drawn around the packing boundaries: each column takes its values
    from a base (0, near 2^21, near 2^63 or the int64 minimum) plus offsets of a drawn bit
    width (0..64 bits, so the sum of the spans lands below, on and above 63), or from
    EDGE_VALUES; rows repeat so that duplicates are found."""
    n = draw(st.integers(0, max_rows), label="rows")
    cols = []
    for j in range(n_cols):
        how = draw(st.sampled_from(["span", "edges"]), label=f"col{j}")
        if how == "edges":
            vals = draw(st.lists(st.sampled_from(EDGE_VALUES), min_size=n, max_size=n), label=f"edges{j}")
        else:
            bits = draw(st.sampled_from([0, 1, 2, 20, 21, 22, 31, 40, 61, 62, 63, 64]), label=f"bits{j}")
            base = draw(st.sampled_from([0, 2**21 - 3, INT64.min, INT64.max - (1 << min(bits, 63)) + 1]),
                        label=f"base{j}")
            hi = min((1 << bits) - 1, INT64.max - base)
            offs = draw(st.lists(st.integers(0, hi), min_size=n, max_size=n), label=f"offs{j}")
            vals = [base + o for o in offs]
            if n and bits:   # make the span exactly ``bits`` bits wide where it fits
                vals[0], vals[-1] = base, base + hi
        cols.append(vals)
    if n:
        picks = draw(st.lists(st.integers(0, n - 1), min_size=n, max_size=2 * n), label="picks")
        cols = [[c[i] for i in picks] for c in cols]
    return [np.array(c, dtype=np.int64).reshape(-1) for c in cols]


@given(edge_columns())
def test_packed_and_column_sorts_give_identical_unique_relations(cols):
    """The packed-key path of unique_relations (one int64 key from the columns' offsets, with
    the row index below it when that fits) and the column-by-column stable sorts return the
    same rows and first indices, equal to the naive distinct sorted rows, on spans below, at
    and above 63 bits (2^21 per column for three columns) and on int64 extremes."""
    q, lo, up = cols
    packed = _orders._unique(q, lo, up, pack=True)
    plain = _orders._unique(q, lo, up, pack=False)
    for a, b in zip(packed, plain):
        assert a.dtype == b.dtype == np.int64 and np.array_equal(a, b)
    rows = list(zip(q.tolist(), lo.tolist(), up.tolist()))
    assert list(zip(*(c.tolist() for c in packed[:3]))) == sorted(set(rows))
    first_seen = {}
    for i, r in enumerate(rows):
        first_seen.setdefault(r, i)
    assert packed[3].tolist() == [first_seen[r] for r in sorted(set(rows))]


@given(edge_columns(n_cols=2))
def test_packed_and_column_node_ids_agree(cols):
    """_compact_nodes numbers the distinct (q, t) rows by rank identically with and without packing."""
    q, t = cols
    got = _orders._compact_nodes(q, t, pack=True)
    want = _orders._compact_nodes(q, t, pack=False)
    for a, b in zip(got, want):
        assert np.array_equal(a, b)
    distinct = sorted(set(zip(q.tolist(), t.tolist())))
    assert list(zip(got[0].tolist(), got[1].tolist())) == distinct
    assert [distinct[i] for i in got[2].tolist()] == list(zip(q.tolist(), t.tolist()))


@pytest.mark.parametrize("bits", [1, 20, 40, 47, 48, 49, 62, 63])
def test_sorted_runs_at_the_row_index_boundary(bits):
    """With n = 2^15 rows the row index needs 15 bits: keys of up to 48 bits are sorted packed
    with it, wider ones by a stable argsort; both give a stable order and the same runs."""
    rng = np.random.default_rng(bits)
    n = 2**15
    hi = (1 << bits) - 1
    key = rng.integers(0, hi, n, endpoint=True, dtype=np.int64)
    key[rng.integers(0, n, 50)] = hi                        # the widest value, repeated
    key[rng.integers(0, n, n // 2)] = key[rng.integers(0, n, n // 2)]   # many duplicates
    order, new = _orders._sorted_runs(key.copy())
    want = np.argsort(key, kind="stable")
    assert np.array_equal(order, want)
    assert np.array_equal(new[1:], key[want][1:] != key[want][:-1]) and new[0]


@given(st.data())
def test_packed_and_column_find_cycle_agree(data):
    """find_cycle gives the same query and the same witness cycle with and without packed keys,
    and the same when its input is already sorted and distinct (then it skips the sort)."""
    q, lo, up, _, _ = data.draw(relation_sets(cyclic=data.draw(st.booleans(), label="cyclic")),
                                label="relations")
    got = _orders._find_cycle(q, lo, up, pack=True)
    assert got == _orders._find_cycle(q, lo, up, pack=False)
    uq, ulo, uup, _ = unique_relations(q, lo, up)
    assert _orders._sorted_unique(uq, ulo, uup)
    assert _orders._find_cycle(uq, ulo, uup) == got


def test_sorted_unique_detects_order_and_duplicates():
    a = np.array([1, 1, 1, 2], dtype=np.int64)
    assert _orders._sorted_unique(a, np.array([1, 2, 2, 0]), np.array([5, 0, 1, 0]))
    assert not _orders._sorted_unique(a, np.array([1, 2, 2, 0]), np.array([5, 1, 1, 0]))   # a repeat
    assert not _orders._sorted_unique(a, np.array([1, 2, 1, 0]), np.array([5, 0, 9, 0]))   # lo falls
    assert not _orders._sorted_unique(a[::-1].copy(), np.zeros(4, np.int64), np.zeros(4, np.int64))


def test_strong_components_of_distinct_edges_without_the_weight_copy():
    """On graphs without repeated edges, float64 weights (no copy by csgraph) give the same
    components as int8 weights (which csgraph converts, merging repeats); on a graph with
    repeated edges the int8 path is the one used."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        k = int(rng.integers(2, 40))
        src, dst = rng.integers(0, k, (2, int(rng.integers(1, 120))))
        indptr, indices = _orders._csr(src, dst, k)
        want = _orders._strong_components(indptr, indices, k)
        key = np.unique(src * k + dst)
        indptr, indices = _orders._csr(key // k, key % k, k)
        got = _orders._strong_components(indptr.astype(np.int32), indices.astype(np.int32), k, distinct=True)
        assert got[0] == want[0] and np.array_equal(got[1], want[1])


def test_find_cycle_memory_per_relation():
    """find_cycle on 2 x 10^5 acyclic relations of 200 queries, nearly all ends distinct
    nodes: the traced peak besides the inputs was measured at 88 bytes per relation for
    unsorted input (64 when it is already sorted and distinct, so not sorted again); the
    column-by-column version this replaced took about 160 for either. (Small enough that
    this process's resident peak, which later subprocess tests inherit in ru_maxrss,
    stays low.)"""
    import tracemalloc
    rng = np.random.default_rng(0)
    R = 2 * 10**5
    q = rng.integers(0, 200, R)
    lo = rng.integers(0, 10**6, R)
    up = lo + rng.integers(1, 1000, R)
    uq, ulo, uup, _ = unique_relations(q, lo, up)
    find_cycle(q[:10], lo[:10], up[:10])
    for args, bound in (((q, lo, up), 110), ((uq, ulo, uup), 80)):
        tracemalloc.start()
        assert find_cycle(*args) is None
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < bound * len(args[0]), peak / len(args[0])
