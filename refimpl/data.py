"""Realizable datasets: collocation, query-dependent partial orders, sentences (SPEC section 3).

A :class:`RealizableDataset` stores its sentences as a padded integer array so
that kernels can use them without copying:

``tokens``       int64, shape (N, Lmax), padded with -1 after ``lengths[i]``
``lengths``      int64, shape (N,)
``next_tokens``  int64, shape (N,)
``colloc``       int64, shape (M,), ``colloc[x] = n(x)`` or -1 when x is not in C
``orders``       ``None`` (orders are induced by the sentences) or a dict
                 ``q -> int64 array (R, 2)`` of supplied generating relations
                 ``(lower, upper)``, meaning ``lower <_q upper``

Construction only checks shapes; :func:`validate` (also run lazily by the
properties that need a valid dataset, such as :attr:`RealizableDataset.optimal`)
checks realizability and raises a :class:`~refimpl.errors.DatasetError`
subclass naming the sentence, tokens and query.

Validation is linear in the data size plus the order relations: the optimal
token of every sentence is found with array operations, relations are
deduplicated by sorting, and cycles are detected with strongly connected
components of one sparse graph whose nodes are (query, token) pairs.
"""
from __future__ import annotations

from functools import cached_property

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .errors import (
    AmbiguousOptimalTokenError,
    CollocationConflictError,
    CountMismatchError,
    EmptySentenceError,
    NoOptimalTokenError,
    OrderContradictionError,
    OrderCycleError,
    TokenOutOfRangeError,
)

__all__ = ["RealizableDataset", "validate", "ensure_valid", "transitive_closure", "training_relations", "induced_relations",
           "extended_order", "pad_sentences"]


def pad_sentences(sentences):
    """Ragged sequences of ints -> (tokens int64 (N, Lmax) padded with -1, lengths int64 (N,)).

    A tuple ``(tokens (N, Lmax), lengths (N,))`` of arrays is taken as already padded; a
    tuple of two 1-D arrays is two sentences."""
    if (isinstance(sentences, tuple) and len(sentences) == 2 and isinstance(sentences[0], np.ndarray)
            and sentences[0].ndim == 2):
        tokens, lengths = sentences
        return np.ascontiguousarray(tokens, dtype=np.int64), np.ascontiguousarray(lengths, dtype=np.int64)
    seqs = [np.asarray(s, dtype=np.int64).ravel() for s in sentences]
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    lmax = int(lengths.max()) if len(seqs) else 0
    tokens = np.full((len(seqs), max(lmax, 1)), -1, dtype=np.int64)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = s
    return tokens, lengths


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
    next_tokens : int array-like, shape (N,)
    orders : mapping ``q -> pairs (R, 2)`` or ``None``
        Supplied generating relations ``(lower, upper)`` per query; ``None``
        means the orders are induced by the sentences.
    """

    def __init__(self, vocab_size, collocation, sentences, next_tokens, orders=None):
        self.vocab_size = int(vocab_size)
        if isinstance(collocation, dict):
            pairs = sorted((int(k), int(v)) for k, v in collocation.items())
        else:
            pairs = collocation
        self.collocation_pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        self.tokens, self.lengths = pad_sentences(sentences)
        self.next_tokens = np.ascontiguousarray(np.asarray(next_tokens, dtype=np.int64).ravel())
        self.orders = None
        if orders is not None:
            self.orders = {int(q): np.asarray(r, dtype=np.int64).reshape(-1, 2) for q, r in orders.items()}
        self._valid = False

    # ----------------------------------------------------------------- sizes
    @property
    def n_sentences(self):
        """N."""
        return int(self.tokens.shape[0])

    @property
    def max_len(self):
        """Lmax, the padded width."""
        return int(self.tokens.shape[1])

    def __len__(self):
        return self.n_sentences

    def __repr__(self):
        return (f"RealizableDataset(M={self.vocab_size}, N={self.n_sentences}, "
                f"|C|={len(self.collocation_pairs)}, Lmax={self.max_len}, "
                f"orders={'induced' if self.orders is None else 'supplied'})")

    # ------------------------------------------------------- derived (valid)
    def _require_valid(self):
        ensure_valid(self)

    @cached_property
    def colloc(self):
        """int64 (M,): ``colloc[x] = n(x)``, -1 for x not in C (requires a valid dataset)."""
        self._require_valid()
        return _colloc_map(self.vocab_size, self.collocation_pairs)

    @property
    def colloc_tokens(self):
        """int64 (n_c,): C in increasing order."""
        return np.flatnonzero(self.colloc >= 0).astype(np.int64)

    @property
    def colloc_next(self):
        """int64 (n_c,): n(x) for x in :attr:`colloc_tokens`."""
        return self.colloc[self.colloc_tokens]

    @cached_property
    def queries(self):
        """int64 (N,): q = x_L, the last token of each sentence (requires a valid dataset)."""
        self._require_valid()
        return self.tokens[np.arange(self.n_sentences), self.lengths - 1].copy()

    @cached_property
    def optimal(self):
        """int64 (N,): the optimal token x* of each sentence (requires a valid dataset)."""
        self._require_valid()
        return _optimal_tokens(self)[0]

    @cached_property
    def _training_relations(self):
        """(q, lower, upper) of :func:`training_relations`, computed once, sorted by
        (q, lower, upper) and read-only."""
        q, lo, up, _ = _sentence_relations(self, self.optimal)
        for a in (q, lo, up):
            a.flags.writeable = False
        return q, lo, up

    @property
    def valid_mask(self):
        """bool (N, Lmax): position l < lengths[i]."""
        return np.arange(self.max_len)[None, :] < self.lengths[:, None]

    def sentences(self):
        """The sentences as a list of Python lists."""
        return [row[:n].tolist() for row, n in zip(self.tokens, self.lengths)]

    # ----------------------------------------------------------------- I/O
    def to_dict(self):
        """The SPEC file-format object (``refimpl/realizable-dataset@1``)."""
        from .io import dataset_to_dict
        return dataset_to_dict(self)

    def save(self, path):
        """Write the dataset as JSON to ``path`` atomically (temporary file, then rename)."""
        from .io import save_dataset
        save_dataset(self, path)

    def __eq__(self, other):
        if not isinstance(other, RealizableDataset):
            return NotImplemented
        same_orders = (self.orders is None) == (other.orders is None)
        if same_orders and self.orders is not None:
            same_orders = self.orders.keys() == other.orders.keys() and all(
                np.array_equal(self.orders[q], other.orders[q]) for q in self.orders)
        return (self.vocab_size == other.vocab_size and same_orders
                and np.array_equal(self.collocation_pairs, other.collocation_pairs)
                and np.array_equal(self.lengths, other.lengths)
                and np.array_equal(self.next_tokens, other.next_tokens)
                and np.array_equal(self.tokens[self.valid_mask], other.tokens[other.valid_mask]))

    __hash__ = None


# ===================================================================== checks
def _colloc_map(M, pairs):
    colloc = np.full(M, -1, dtype=np.int64)
    colloc[pairs[:, 0]] = pairs[:, 1]
    return colloc


def _check_counts_and_ranges(ds):
    N, M = ds.n_sentences, ds.vocab_size
    if len(ds.next_tokens) != N or len(ds.lengths) != N:
        raise CountMismatchError(
            f"{N} sentences but {len(ds.next_tokens)} next tokens (and {len(ds.lengths)} lengths)",
            n_sentences=N, n_next_tokens=len(ds.next_tokens))
    if M < 1:
        raise TokenOutOfRangeError(f"vocab_size must be >= 1, got {M}")
    empty = np.flatnonzero(ds.lengths <= 0)
    if len(empty):
        raise EmptySentenceError(f"sentence {empty[0]} is empty (a sentence needs at least its query)",
                                 sentence=empty[0], tokens=())
    if ds.lengths.max(initial=0) > ds.max_len:
        raise CountMismatchError("a length exceeds the padded width of the token array")
    mask = ds.valid_mask
    bad = mask & ((ds.tokens < 0) | (ds.tokens >= M))
    if bad.any():
        i, l = np.argwhere(bad)[0]
        raise TokenOutOfRangeError(
            f"sentence {i} position {l}: token {ds.tokens[i, l]} is outside 0..{M - 1}",
            sentence=i, tokens=ds.tokens[i, : ds.lengths[i]], position=int(l))
    bad = np.flatnonzero((ds.next_tokens < 0) | (ds.next_tokens >= M))
    if len(bad):
        i = bad[0]
        raise TokenOutOfRangeError(f"sentence {i}: next token {ds.next_tokens[i]} is outside 0..{M - 1}",
                                   sentence=i, tokens=ds.tokens[i, : ds.lengths[i]])
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


def _optimal_tokens(ds):
    """x*(i): the unique distinct token with n(x) = y_i. Returns (optimal (N,), colloc (M,))."""
    colloc = _colloc_map(ds.vocab_size, ds.collocation_pairs)
    mask = ds.valid_mask
    safe = np.where(mask, ds.tokens, 0)
    cand = mask & (colloc[safe] == ds.next_tokens[:, None])
    hi = np.where(cand, ds.tokens, -1).max(axis=1)
    lo = np.where(cand, ds.tokens, ds.vocab_size).min(axis=1)
    none = np.flatnonzero(hi < 0)
    if len(none):
        i = none[0]
        sent = ds.tokens[i, : ds.lengths[i]]
        raise NoOptimalTokenError(
            f"sentence {i} {sent.tolist()} (query {sent[-1]}): no token x has n(x) = next token "
            f"{ds.next_tokens[i]}, so the sentence has no optimal token",
            sentence=i, tokens=sent, query=sent[-1], next_token=int(ds.next_tokens[i]))
    amb = np.flatnonzero(lo != hi)
    if len(amb):
        i = amb[0]
        sent = ds.tokens[i, : ds.lengths[i]]
        c = sorted(set(sent[cand[i, : ds.lengths[i]]].tolist()))
        raise AmbiguousOptimalTokenError(
            f"sentence {i} {sent.tolist()} (query {sent[-1]}): tokens {c} all have n(x) = next token "
            f"{ds.next_tokens[i]}; the optimal token must be unique",
            sentence=i, tokens=sent, query=sent[-1], candidates=c)
    return hi.astype(np.int64), colloc


def _sentence_relations(ds, optimal):
    """Induced relations with their first sentence: int64 arrays (q, lower, upper, sentence), deduplicated."""
    N, Lmax = ds.tokens.shape
    M = ds.vocab_size
    queries = ds.tokens[np.arange(N), ds.lengths - 1]
    sel = ds.valid_mask & (ds.tokens != optimal[:, None])
    rows = np.nonzero(sel)[0]
    q, lo, up = queries[rows], ds.tokens[sel], optimal[rows]
    key = (q * M + lo) * M + up
    key, first = np.unique(key, return_index=True)
    return q[first], lo[first], up[first], rows[first]


def _find_cycle(M, q_arr, lo, up):
    """If the relations (per query) have a cycle, return (q, cycle list), else None.

    The cycle lists tokens in order with the first repeated at the end, so
    consecutive entries are relations ``cycle[j] < cycle[j+1]``."""
    if len(lo) == 0:
        return None
    src, dst = q_arr * M + lo, q_arr * M + up
    nodes, inv = np.unique(np.concatenate([src, dst]), return_inverse=True)
    n = len(nodes)
    e = len(src)
    g = coo_matrix((np.ones(e, dtype=np.int8), (inv[:e], inv[e:])), shape=(n, n)).tocsr()
    ncomp, labels = connected_components(g, directed=True, connection="strong")
    if ncomp == n:
        return None
    sizes = np.bincount(labels)
    comp = int(np.flatnonzero(sizes > 1)[0])
    members = set(np.flatnonzero(labels == comp).tolist())
    # walk inside the component until a node repeats: that walk closes a cycle
    start = min(members)
    path, seen = [start], {start: 0}
    node = start
    while True:
        nbrs = g.indices[g.indptr[node]: g.indptr[node + 1]]
        node = int(next(v for v in nbrs if int(v) in members))
        if node in seen:
            cyc = path[seen[node]:] + [node]
            break
        seen[node] = len(path)
        path.append(node)
    q = int(nodes[cyc[0]] // M)
    return q, [int(nodes[v] % M) for v in cyc]


def _check_supplied(ds, q_arr, lo, up, sent_idx):
    M = ds.vocab_size
    sq, slo, sup = [], [], []
    for q, rel in ds.orders.items():
        sq.append(np.full(len(rel), q, dtype=np.int64))
        slo.append(rel[:, 0])
        sup.append(rel[:, 1])
    sq = np.concatenate(sq) if sq else np.zeros(0, np.int64)
    slo = np.concatenate(slo) if slo else np.zeros(0, np.int64)
    sup = np.concatenate(sup) if sup else np.zeros(0, np.int64)
    cyc = _find_cycle(M, sq, slo, sup)
    if cyc is not None:
        q, c = cyc
        raise OrderCycleError(f"supplied order of query {q} has a cycle {' < '.join(map(str, c))}",
                              query=q, tokens=c, cycle=c)
    skey = np.unique((sq * M + slo) * M + sup)
    key = (q_arr * M + lo) * M + up
    missing = np.flatnonzero(~np.isin(key, skey))
    if len(missing) == 0:
        return
    closures = {}
    for j in missing:
        q = int(q_arr[j])
        if q not in closures:
            closures[q] = transitive_closure(ds.orders.get(q, np.zeros((0, 2), np.int64)), M)
        if not closures[q][lo[j], up[j]]:
            i = int(sent_idx[j])
            sent = ds.tokens[i, : ds.lengths[i]]
            raise OrderContradictionError(
                f"sentence {i} {sent.tolist()} (query {q}): optimal token {up[j]} (n = next token "
                f"{ds.next_tokens[i]}) but the supplied order of query {q} does not have {lo[j]} < {up[j]}",
                sentence=i, tokens=sent, query=q, relation=(int(lo[j]), int(up[j])))


def ensure_valid(ds):
    """:func:`validate` unless ``ds`` already passed it (a dataset validates once, however
    many entry points it goes through: loading, training, the audit)."""
    if not ds._valid:
        validate(ds)


def validate(ds):
    """Check that ``ds`` is a realizable dataset (SPEC section 3); return None or raise.

    Raises the specific :class:`~refimpl.errors.DatasetError` subclass of the first
    problem found, in this order: counts, empty sentences, token ranges,
    collocation conflicts, no / ambiguous optimal token, supplied-order cycles
    and contradictions, induced-order cycles. On success the dataset caches its
    optimal tokens.
    """
    _check_counts_and_ranges(ds)
    _check_collocation(ds)
    optimal, _ = _optimal_tokens(ds)
    q_arr, lo, up, sent_idx = _sentence_relations(ds, optimal)
    if ds.orders is not None:
        _check_supplied(ds, q_arr, lo, up, sent_idx)
    cyc = _find_cycle(ds.vocab_size, q_arr, lo, up)
    if cyc is not None:
        q, c = cyc
        M = ds.vocab_size
        key = (q_arr * M + lo) * M + up
        by_key = dict(zip(key.tolist(), sent_idx.tolist()))
        sents = [by_key[(q * M + a) * M + b] for a, b in zip(c[:-1], c[1:])]
        raise OrderCycleError(
            f"the sentences {sorted(set(sents))} of query {q} induce a cycle "
            f"{' < '.join(map(str, c))} in its order",
            sentence=max(sents), query=q, tokens=c, cycle=c, sentences=sents)
    ds._valid = True
    ds.__dict__["optimal"] = optimal


# ===================================================================== orders
def transitive_closure(relations, M):
    """Strict order from generating relations: bool (M, M), ``less[a, b]`` iff a < b.

    ``relations`` : int array (R, 2) of (lower, upper). Closure by repeated
    boolean matrix squaring over the rows that take part (O(k^3 log k) for the
    k tokens involved), which is cheap for the sizes orders have here.
    """
    rel = np.asarray(relations, dtype=np.int64).reshape(-1, 2)
    less = np.zeros((M, M), dtype=bool)
    if len(rel) == 0:
        return less
    involved = np.unique(rel)
    pos = np.full(M, -1, dtype=np.int64)
    pos[involved] = np.arange(len(involved))
    k = len(involved)
    R = np.zeros((k, k), dtype=bool)
    R[pos[rel[:, 0]], pos[rel[:, 1]]] = True
    while True:
        Ri = R.astype(np.uint8)
        nxt = R | ((Ri @ Ri) > 0)
        if np.array_equal(nxt, R):
            break
        R = nxt
    less[np.ix_(involved, involved)] = R
    return less


def training_relations(ds):
    """All training relations, deduplicated: int64 arrays ``(q, lower, upper)`` of equal length R,
    one entry per distinct ``lower <_q upper`` induced by a sentence with query q (its other
    distinct token ``lower``, its optimal token ``upper``). These are exactly the constraints
    ``K[upper, q] - K[lower, q] >= 1`` of W_kq* (SPEC section 5). Requires a valid dataset.
    Computed once per dataset; sorted by (q, lower, upper); the arrays are read-only."""
    return ds._training_relations


def induced_relations(ds, q=None):
    """Training relations ``(lower, upper)`` induced by the sentences: each sentence with
    query q and optimal token x* gives ``x' <_q x*`` for its other distinct tokens x'.

    Returns int64 (R, 2) for query ``q``, or a dict ``q -> (R, 2)`` when ``q`` is None
    (slices of the cached, q-sorted :func:`training_relations`: no pass over the sentences).
    """
    q_arr, lo, up = training_relations(ds)
    if q is not None:
        a, b = np.searchsorted(q_arr, [int(q), int(q) + 1])
        return np.stack([lo[a:b], up[a:b]], axis=1)
    qs, starts = np.unique(q_arr, return_index=True)
    ends = np.append(starts[1:], len(q_arr))
    return {int(qq): np.stack([lo[a:b], up[a:b]], axis=1) for qq, a, b in zip(qs, starts, ends)}


def extended_order(ds, q):
    """Extended order of query q (SPEC C11): bool (M, M), ``less[a, b]`` iff a <_q b in the
    transitive closure of the training relations of q, the pairs ``x' <_q x*`` of the
    sentences with query q. Supplied generating relations that no sentence uses are not
    included: they are no constraint of W_kq*, so C6 and C11 say nothing about them
    (docs/theory.md, Errata to SPEC, item 1)."""
    return transitive_closure(induced_relations(ds, q), ds.vocab_size)
