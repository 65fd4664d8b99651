"""Exact sparse algorithms on query-dependent orders (docs/datasets.md, "The objects").

A relation ``lo <_q up`` is one row of three int64 arrays ``q, lo, up`` of equal
length R. The order of query q is the transitive closure of its generating
relations, and only relations of the same query are ever combined.

Every function here works on *compact node ids*: the distinct (query, token)
pairs that occur are sorted lexicographically and numbered 0..n-1 (n <= 2R), so
memory and time depend on R (and the number of queried pairs), never on the
vocabulary size M, which may be as large as 2^40 or any int64 value. Rows are sorted
as one int64 key only when that is provably exact: each column is offset by its
minimum, and the key is built only if the offsets' bit lengths (of max - min) sum to
at most 63, so no value can overflow and the key order is the row order; otherwise
rows are compared column by column (stable lexicographic sorts). Reachability is a
boolean graph search or a boolean row OR, never an integer path count, so chains of
any length and fans of any width are exact.

``unique_relations``  deduplicate and sort relations by (q, lo, up)
``find_cycle``        a witness cycle of the smallest query whose relations have one
``reachable_pairs``   is ``a <_q b`` in the closure, for many queried triples
``closure_matrix``    dense strict order over the k tokens involved only: (k, k)
``transitive_closure`` dense strict order over the whole vocabulary: (M, M)

The loops (graph search, topological order, row propagation, cycle walk) are plain
Python functions compiled with Numba on first use (``cache=True``), so importing
this module does not import Numba.
"""
from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from .errors import InputError, OrderCycleError

__all__ = ["unique_relations", "find_cycle", "reachable_pairs", "closure_matrix", "transitive_closure"]

_INT64_MAX = np.iinfo(np.int64).max
_NUMBA_OPTS = dict(cache=True, fastmath=False, nogil=True, boundscheck=False, error_model="numpy")


# ===================================================================== helpers
def _as_int64(x, name):
    """``x`` as a 1-D int64 array; integers only (an empty list is accepted), values exact."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise InputError(f"{name} must be a 1-D integer array, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise InputError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 8 and int(arr.max()) > _INT64_MAX:
        raise InputError(f"{name} holds {int(arr.max())}, larger than the int64 maximum")
    return arr.astype(np.int64, copy=False)


def _same_length(**arrays):
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise InputError("arrays of different lengths: " + ", ".join(f"{k} {v}" for k, v in lengths.items()))


def _lex_order(*cols):
    """Stable lexicographic sort permutation of the rows of ``cols`` (the first column the
    most significant; equal rows keep their input order). Successive stable sorts from the
    least significant column, as ``np.lexsort`` does, but measured ~1.5x faster on int64."""
    order = np.argsort(cols[-1], kind="stable")
    for c in cols[-2::-1]:
        order = order[np.argsort(c[order], kind="stable")]
    return order


def _span_bits(col):
    """(minimum, bits): ``col``'s minimum (an int) and the bit length of max - min, so every
    ``col - minimum`` lies in 0..2^bits - 1. (0, 0) for an empty column. O(len(col)), no copy."""
    if len(col) == 0:
        return 0, 0
    lo = int(col.min())
    return lo, (int(col.max()) - lo).bit_length()


def _packed_key(cols, spans):
    """One int64 key per row: the columns' offsets ``c - minimum`` side by side, the first
    column in the most significant bits, each in its ``bits``.

    The caller guarantees ``sum(bits) <= 63`` (so the key is a non-negative int64 and no
    value overflows); then the key order is the lexicographic order of the rows, and equal
    keys are equal rows. Each ``c - minimum`` is exact in int64 arithmetic because it lies in
    0..2^63 - 1 (a wrapped intermediate is the true value). O(R), memory two int64 (R,)."""
    key = np.subtract(cols[0], np.int64(spans[0][0]))
    tmp = np.empty_like(key)
    for c, (m, bits) in zip(cols[1:], spans[1:]):
        key <<= bits
        np.subtract(c, np.int64(m), out=tmp)
        key |= tmp
    return key


def _sorted_runs(key):
    """Sort an int64 key (consumed: it may be overwritten) and mark its distinct values.

    Returns ``(order, new)``: ``order`` (int64 (n,)) is a stable sort permutation of ``key``
    and ``new[i]`` is True iff the i-th smallest key differs from the one before (True for
    i = 0). When the key is non-negative and the row index fits below its bits
    (``bit_length(max) + bit_length(n - 1) <= 63``), the key and the row index are packed
    into one int64 and sorted in place (the packed values are distinct, so any sort is
    stable on the key); otherwise ``np.argsort(kind="stable")``. O(n log n), memory one
    int64 (n,) (the permutation) besides the key on the packed path, two otherwise."""
    n = len(key)
    new = np.ones(n, dtype=bool)
    if n == 0:
        return np.zeros(0, dtype=np.int64), new
    pbits = (n - 1).bit_length()
    if int(key.min()) >= 0 and int(key.max()).bit_length() + pbits <= 63:
        key <<= pbits
        step = 1 << 20   # the row index added in pieces: no (n,) temporary
        for i in range(0, n, step):
            key[i: i + step] |= np.arange(i, min(i + step, n), dtype=np.int64)
        key.sort()
        order = key & np.int64((1 << pbits) - 1)
        key >>= pbits
    else:
        order = np.argsort(key, kind="stable")
        key = key[order]
    if n > 1:
        np.not_equal(key[1:], key[:-1], out=new[1:])
    return order, new


def _packed_groups(cols, spans):
    """The columns as a list of int64 sort keys with the same lexicographic row order:
    consecutive columns are packed greedily (:func:`_packed_key`) while their spans sum to
    at most 63 bits; a column whose span needs 64 bits is kept as it is. O(R) per column."""
    keys, run, bits = [], [], 0
    for c, s in zip(cols, spans):
        if run and bits + s[1] > 63:
            keys.append(_packed_key([x for x, _ in run], [y for _, y in run]))
            run, bits = [], 0
        if s[1] > 63:
            keys.append(c)
            continue
        run.append((c, s))
        bits += s[1]
    if run:
        keys.append(_packed_key([x for x, _ in run], [y for _, y in run]))
    return keys


def _row_starts(*cols, pack=True):
    """Sort rows (columns ``cols``, the first the most significant) and mark distinct ones.

    Returns ``(order, new)``: ``order`` a stable lexicographic sort permutation of the rows,
    ``new[i]`` True iff sorted row i differs from sorted row i-1 (always True for i = 0).

    With ``pack``, consecutive columns whose value spans fit 63 bits together are packed
    into one int64 key (:func:`_packed_groups`): one key is one sort
    (:func:`_sorted_runs`), several are successive stable sorts (:func:`_lex_order`) of
    fewer columns. Without ``pack`` the columns are compared as they are. Both give the
    same result. O(R log R) per sort key."""
    if pack:
        keys = _packed_groups(cols, [_span_bits(c) for c in cols])
        if len(keys) == 1 and keys[0] is not cols[0]:
            return _sorted_runs(keys[0])
    else:
        keys = cols
    order = _lex_order(*keys)
    n = len(order)
    new = np.ones(n, dtype=bool)
    if n > 1:
        diff = np.zeros(n - 1, dtype=bool)
        for c in keys:
            s = c[order]
            diff |= s[1:] != s[:-1]
        new[1:] = diff
    return order, new


def _compact_nodes(q, t, pack=True):
    """Number the distinct rows (q[i], t[i]) by their lexicographic rank.

    Returns ``(node_q, node_t, inv)``: the distinct rows sorted by (q, t), shape (n,) each,
    and ``inv`` (len(q),) with ``(node_q[inv[i]], node_t[inv[i]]) == (q[i], t[i])``;
    ``inv`` is int32 when n < 2^31, else int64.
    Node ids are therefore increasing in (q, t): within one query, in token order.
    O(R log R) for R rows."""
    order, new = _row_starts(q, t, pack=pack)
    return _ids_from_runs(order, new, (q, t))


def _ids_from_runs(order, new, cols):
    """``(cols[0][first], cols[1][first], ..., inv)`` from a sort ``(order, new)`` of rows:
    the distinct rows in sorted order and each input row's rank among them (int32 when
    fewer than 2^31 distinct rows). O(R)."""
    ids = np.cumsum(new, dtype=np.int64)
    ids -= 1
    n = int(ids[-1]) + 1 if len(ids) else 0
    inv = np.empty(len(order), dtype=np.int32 if n < 2**31 else np.int64)
    inv[order] = ids
    del ids
    keep = order[new]
    return tuple(c[keep] for c in cols) + (inv,)


def _csr(src, dst, n):
    """CSR adjacency (indptr (n+1,), indices (E,)) of the edges src -> dst on nodes 0..n-1;
    the successors of each node are listed in increasing id order. int64 arrays.

    When ids fit 31 bits, ``src * 2^31 + dst`` is one int64 key, sorted once and ``dst``
    read back from its low bits; otherwise a stable two-column sort. O(E log E)."""
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    if n <= 2**31:
        key = np.left_shift(src, 31, dtype=np.int64)
        key |= dst
        key.sort()
        key &= np.int64(2**31 - 1)
        return indptr, key
    order = _lex_order(src, dst)
    return indptr, np.ascontiguousarray(dst[order], dtype=np.int64)


def _strong_components(indptr, indices, n, distinct=False):
    """Strongly connected components: (count, labels (n,)) by scipy's csgraph.

    csgraph converts the edge weights to float64, and that conversion also merges
    duplicate edges, which its strong-component search needs (measured with scipy 1.17:
    on a graph with repeated edges given as float64 it returns wrong components). So
    int8 weights are given, unless ``distinct`` says that no edge repeats: then float64
    ones are given and no copy of the graph is made (int32 ``indptr`` and ``indices``
    are used as they are)."""
    weights = np.ones(len(indices), dtype=np.float64 if distinct else np.int8)
    g = csr_matrix((weights, indices, indptr), shape=(n, n))
    return connected_components(g, directed=True, connection="strong")


# ===================================================================== loops (compiled on first use)
def _reach_loop(indptr, indices, n, sources, group_starts, targets, out):
    """For each group g (one distinct source node ``sources[g]``), a depth-first search from
    that source marks the nodes reachable by a path of length >= 1; ``out[i]`` is set for the
    targets ``targets[group_starts[g]:group_starts[g+1]]``. The search stops as soon as every
    distinct target of the group has been reached. Marks are stamped with g, so nothing is
    cleared between sources: O(n) set-up plus the edges each search scans."""
    seen = np.full(n, -1, dtype=np.int64)
    wanted = np.full(n, -1, dtype=np.int64)
    stack = np.empty(n, dtype=np.int64)
    for g in range(len(sources)):
        lo_t = group_starts[g]
        hi_t = group_starts[g + 1]
        remaining = 0
        for i in range(lo_t, hi_t):
            t = targets[i]
            if wanted[t] != g:
                wanted[t] = g
                remaining += 1
        # expand the source first without marking it: it is reached only if a path of
        # length >= 1 returns to it
        u = sources[g]
        top = 0
        while True:
            for e in range(indptr[u], indptr[u + 1]):
                v = indices[e]
                if seen[v] != g:
                    seen[v] = g
                    stack[top] = v
                    top += 1
                    if wanted[v] == g:
                        remaining -= 1
            if top == 0 or remaining == 0:
                break
            top -= 1
            u = stack[top]
        for i in range(lo_t, hi_t):
            out[i] = seen[targets[i]] == g


def _dag_closure_loop(indptr, indices, n):
    """Closure of a DAG as packed bit rows: returns (bits (n, ceil(n/8)) uint8, acyclic).

    Kahn's algorithm gives a topological order; then, in reverse topological order, for
    every edge u -> v: ``row(u) |= row(v) | e_v`` (bit j of row u, little-endian within a
    byte, says u reaches j). O(n + E) for the order and O(E * n / 8) byte ORs. ``acyclic``
    is False (and ``bits`` meaningless) when some node is on a cycle."""
    nbytes = (n + 7) // 8
    bits = np.zeros((n, nbytes), dtype=np.uint8)
    indeg = np.zeros(n, dtype=np.int64)
    for e in range(indptr[n]):
        indeg[indices[e]] += 1
    order = np.empty(n, dtype=np.int64)
    tail = 0
    for v in range(n):
        if indeg[v] == 0:
            order[tail] = v
            tail += 1
    head = 0
    while head < tail:
        u = order[head]
        head += 1
        for e in range(indptr[u], indptr[u + 1]):
            v = indices[e]
            indeg[v] -= 1
            if indeg[v] == 0:
                order[tail] = v
                tail += 1
    if tail < n:
        return bits, False
    for i in range(n - 1, -1, -1):
        u = order[i]
        for e in range(indptr[u], indptr[u + 1]):
            v = indices[e]
            for w in range(nbytes):
                bits[u, w] |= bits[v, w]
            bits[u, v >> 3] |= np.uint8(1 << (v & 7))
    return bits, True


def _walk_loop(indptr, indices, labels, start):
    """Walk from ``start`` to its smallest successor in the same strong component until a
    node repeats; return the closed part of the walk, first node repeated last (a cycle).

    Every node of a component with >= 2 nodes has a successor inside it, so the walk never
    stops early, and it repeats a node after at most (component size) steps."""
    comp = labels[start]
    n = len(labels)
    pos = np.full(n, -1, dtype=np.int64)
    path = np.empty(n + 1, dtype=np.int64)
    node = start
    length = 0
    while pos[node] < 0:
        pos[node] = length
        path[length] = node
        length += 1
        nxt = -1
        for e in range(indptr[node], indptr[node + 1]):
            if labels[indices[e]] == comp:
                nxt = indices[e]
                break
        node = nxt
    first = pos[node]
    cyc = np.empty(length - first + 1, dtype=np.int64)
    cyc[: length - first] = path[first:length]
    cyc[length - first] = node
    return cyc


@lru_cache(maxsize=None)
def _loops():
    """The loops above compiled with Numba (imported here, on first use)."""
    from numba import njit

    jit = njit(**_NUMBA_OPTS)
    return SimpleNamespace(reach=jit(_reach_loop), dag_closure=jit(_dag_closure_loop), walk=jit(_walk_loop))


# ===================================================================== public functions
def unique_relations(q, lo, up):
    """Deduplicate relations and sort them by (q, lo, up).

    Parameters
    ----------
    q, lo, up : int64 array_like, shape (R,)
        Relations ``lo <_q up``; any int64 values.

    Returns
    -------
    q, lo, up : int64 ndarray, shape (U,)
        The U distinct rows, sorted lexicographically by (q, lo, up).
    first_index : int64 ndarray, shape (U,)
        For each returned row, the index in the input of its first occurrence.

    Notes
    -----
    O(R log R) time. When the three columns' value spans (``max - min``) need at most 63
    bits together, each row is the one int64 key of its offsets from the column minima (an
    order-preserving, collision-free packing, checked before it is built); when the row
    index fits below that key too, key and index are packed together and sorted in place.
    Otherwise the columns are sorted as they are, by successive stable sorts, so any int64
    values are exact. A row is kept iff it differs from its predecessor. Memory: the
    outputs plus about two int64 arrays of length R on the packed path, four otherwise.
    """
    q, lo, up = _as_int64(q, "q"), _as_int64(lo, "lo"), _as_int64(up, "up")
    _same_length(q=q, lo=lo, up=up)
    return _unique(q, lo, up)


def _unique(q, lo, up, pack=True):
    """:func:`unique_relations` on int64 arrays of equal length; ``pack=False`` forces the
    column-by-column sorts (the reference the packed path is tested against). O(R log R)."""
    order, new = _row_starts(q, lo, up, pack=pack)
    keep = order[new]
    del order, new
    return q[keep], lo[keep], up[keep], keep


def _sorted_unique(q, lo, up):
    """Whether the rows (q, lo, up) are strictly increasing lexicographically (so sorted and
    free of duplicates). O(R), bool temporaries only."""
    if len(q) < 2:
        return True
    q0, q1, lo0, lo1 = q[:-1], q[1:], lo[:-1], lo[1:]
    inc = up[1:] > up[:-1]
    inc &= lo1 == lo0
    inc |= lo1 > lo0
    inc &= q1 == q0
    inc |= q1 > q0
    return bool(inc.all())


def _relation_graph(uq, ulo, uup, pack=True):
    """Compact nodes and CSR edges of sorted, distinct relations without self-loops.

    Returns ``(first, indptr, indices)``: node ids number the distinct (query, token)
    pairs in lexicographic order; node x is relation end ``first[x]`` (int64 (n,)): row
    ``first[x] % R``, its lower token when ``first[x] < R``, else its upper token
    (:func:`_node_values`). The CSR lists each node's successors in increasing id order;
    ``indptr`` and ``indices`` are int32 when the node and relation counts are below 2^31,
    else int64.

    Because the rows are sorted, a query is replaced by its rank among the distinct queries
    (one pass), which needs at most bit_length(R) bits; (rank, token) pairs are then packed
    into one int64 key when the token span fits the remaining bits, else sorted column by
    column. The sources of the sorted relations are then non-decreasing node ids and the
    targets of one source increasing, so the relations are the CSR in the order given: no
    sort of the edges. O(R log R) time; memory about 64 bytes per relation besides the
    inputs when most relation ends are distinct nodes (one int64 key per relation end,
    sorted in place, its permutation, the int32 node ids and CSR)."""
    R = len(uq)
    ranks = np.zeros(2 * R, dtype=np.int64)   # the packed key when it fits, else the ranks twice
    if R > 1:
        np.cumsum(uq[1:] != uq[:-1], out=ranks[1:R])
    ranks[R:] = ranks[:R]
    t_min = min(int(ulo.min()), int(uup.min()))
    t_bits = (max(int(ulo.max()), int(uup.max())) - t_min).bit_length()
    if pack and int(ranks[R - 1]).bit_length() + t_bits <= 63:
        key = ranks
        key <<= t_bits
        tmp = np.subtract(ulo, np.int64(t_min))
        key[:R] |= tmp
        np.subtract(uup, np.int64(t_min), out=tmp)
        key[R:] |= tmp
        del tmp, ranks
        order, new = _sorted_runs(key)
        del key
    else:
        order, new = _row_starts(ranks, np.concatenate([ulo, uup]), pack=pack)
        del ranks
    ids = np.cumsum(new, dtype=np.int64)
    ids -= 1
    n = int(ids[-1]) + 1
    narrow = n < 2**31 and R < 2**31
    inv = np.empty(2 * R, dtype=np.int32 if narrow else np.int64)
    inv[order] = ids
    del ids
    first = order[new]
    del order, new
    indptr = np.zeros(n + 1, dtype=inv.dtype)
    np.cumsum(np.bincount(inv[:R], minlength=n), out=indptr[1:])
    return first, indptr, inv[R:]


def _node_values(uq, ulo, uup, first, nodes):
    """(query, token) of the node ids ``nodes`` of :func:`_relation_graph`, int64 each.
    O(len(nodes))."""
    R = len(uq)
    ends = first[nodes]
    row = ends % R
    return uq[row], np.where(ends < R, ulo[row], uup[row])


def find_cycle(q, lo, up):
    """A cycle in the relations of one query, or None when every query's relations are acyclic.

    Parameters
    ----------
    q, lo, up : int64 array_like, shape (R,)
        Relations ``lo <_q up`` (duplicates allowed, any int64 values).

    Returns
    -------
    None or (query, cycle)
        ``query`` (int) is the smallest query whose relations contain a cycle; ``cycle`` is a
        list of tokens ``[t0, t1, ..., t0]`` (length >= 2, first repeated last) in which
        every consecutive pair ``(cycle[j], cycle[j+1])`` is a given relation of ``query``.

    Notes
    -----
    Self-loops ``lo == up`` are the cycles ``[t, t]``; when the smallest cyclic query has
    one, the one with the smallest token is returned. Otherwise the relations are
    deduplicated and sorted (:func:`unique_relations`; skipped, after one O(R) check, when
    they already are), the distinct (query, token) pairs become compact node ids and the
    relations the edges of one sparse graph in CSR form, built in the order of the sorted
    relations (relations of different queries never share a node), and its strongly
    connected components are computed (scipy.sparse.csgraph, int32 indices). A component
    with >= 2 nodes holds a cycle: starting at the query's smallest token in such a
    component, the walk to the smallest successor inside the component repeats a node, and
    the closed part of the walk is returned. Deterministic; O(R log R) time, independent
    of the token values. Memory besides the inputs (measured, most relation ends distinct
    nodes): about 64 bytes per relation when they are sorted and distinct, about 90 when
    they must be deduplicated first (int32 node ids and edges, one int64 sort key per
    relation end; the column-by-column version took about 160).
    """
    q, lo, up = _as_int64(q, "q"), _as_int64(lo, "lo"), _as_int64(up, "up")
    _same_length(q=q, lo=lo, up=up)
    return _find_cycle(q, lo, up)


def _find_cycle(q, lo, up, pack=True):
    """:func:`find_cycle` on int64 arrays of equal length; ``pack=False`` forces the
    column-by-column sorts. O(R log R)."""
    if len(q) == 0:
        return None
    loop = lo == up
    q_self = int(q[loop].min()) if loop.any() else None

    if _sorted_unique(q, lo, up):
        uq, ulo, uup = q, lo, up
    else:
        uq, ulo, uup, first_index = _unique(q, lo, up, pack=pack)
        del first_index
    if q_self is not None:
        keep = ulo != uup
        uq, ulo, uup = uq[keep], ulo[keep], uup[keep]
        del keep
    else:
        del loop
    q_scc, start = None, None
    if len(uq):
        first, indptr, indices = _relation_graph(uq, ulo, uup, pack=pack)
        n = len(first)
        ncomp, labels = _strong_components(indptr, indices, n, distinct=True)
        if ncomp < n:
            in_cycle = (np.bincount(labels, minlength=ncomp) > 1)[labels]
            start = int(np.argmax(in_cycle))   # smallest node on a cycle: smallest query, then token
            del in_cycle
            q_scc = int(_node_values(uq, ulo, uup, first, [start])[0][0])

    if q_self is not None and (q_scc is None or q_self <= q_scc):
        t = int(lo[loop & (q == q_self)].min())
        return q_self, [t, t]
    if q_scc is None:
        return None
    cyc = _loops().walk(indptr.astype(np.int64), indices.astype(np.int64), labels.astype(np.int64),
                        np.int64(start))
    return q_scc, _node_values(uq, ulo, uup, first, cyc)[1].tolist()


def reachable_pairs(q_gen, lo_gen, up_gen, q, a, b):
    """For each queried triple, whether ``a <_q b`` in the closure of the generating relations.

    Parameters
    ----------
    q_gen, lo_gen, up_gen : int64 array_like, shape (R,)
        Generating relations ``lo_gen <_{q_gen} up_gen``; any int64 values, duplicates allowed.
    q, a, b : int64 array_like, shape (P,)
        Queried triples.

    Returns
    -------
    bool ndarray, shape (P,)
        ``out[i]`` is True iff a path of length >= 1 leads from ``a[i]`` to ``b[i]`` using
        relations of query ``q[i]`` only. For acyclic relations this is ``a <_q b`` in the
        strict order they generate; ``a <_q a`` is True only if a lies on a cycle. A token
        that occurs in no relation of its query is related to nothing.

    Notes
    -----
    The (query, token) pairs of relations and queried triples get compact node ids (sorted
    rows; one int64 key per row only when the spans fit it exactly), the relations become
    a CSR adjacency (each query's nodes are
    disconnected from every other query's), and the queried triples are grouped by source
    node. One iterative depth-first search per distinct source answers all its queried
    targets and stops once they are all reached. Time O((R + P) log(R + P)) for the sorting
    plus O(sum over the distinct sources of the edges reachable from them); memory O(R + P).
    Exact for chains of any length and fans of any width (boolean marks, no path counts).
    """
    q_gen, lo_gen, up_gen = _as_int64(q_gen, "q_gen"), _as_int64(lo_gen, "lo_gen"), _as_int64(up_gen, "up_gen")
    q, a, b = _as_int64(q, "q"), _as_int64(a, "a"), _as_int64(b, "b")
    _same_length(q_gen=q_gen, lo_gen=lo_gen, up_gen=up_gen)
    _same_length(q=q, a=a, b=b)
    R, P = len(q_gen), len(q)
    out = np.zeros(P, dtype=bool)
    if R == 0 or P == 0:
        return out
    _, _, inv = _compact_nodes(np.concatenate([q_gen, q_gen, q, q]), np.concatenate([lo_gen, up_gen, a, b]))
    n = int(inv.max()) + 1
    indptr, indices = _csr(inv[:R], inv[R:2 * R], n)
    src, dst = inv[2 * R: 2 * R + P], inv[2 * R + P:]
    order = np.argsort(src, kind="stable")
    src_sorted = src[order]
    sources, group_starts = np.unique(src_sorted, return_index=True)
    group_starts = np.append(group_starts, P).astype(np.int64)
    answer = np.zeros(P, dtype=bool)
    _loops().reach(indptr, indices, n, sources.astype(np.int64), group_starts,
                   np.ascontiguousarray(dst[order], dtype=np.int64), answer)
    out[order] = answer
    return out


def closure_matrix(lo, up, M=None, tokens=None, *, allow_cycles=False):
    """Dense strict order generated by relations, over the tokens involved only.

    Parameters
    ----------
    lo, up : int64 array_like, shape (R,)
        Generating relations ``lo < up`` of one order.
    M : int, optional
        Vocabulary size; when given, every token must lie in 0..M-1 (else InputError).
    tokens : int64 array_like, shape (k,), optional
        Strictly increasing tokens containing every token of ``lo`` and ``up``; the matrix
        is over exactly these. Default: the distinct tokens of ``lo`` and ``up``, sorted.
    allow_cycles : bool, keyword-only
        False (default): cyclic relations generate no strict order and raise
        :class:`~refimpl.errors.OrderCycleError` (a ValueError) naming a cycle.
        True: return the reachability relation anyway, with ``less[i, i]`` True exactly
        for the tokens on a cycle (the meaning of :func:`transitive_closure`).

    Returns
    -------
    tokens : int64 ndarray, shape (k,)
    less : bool ndarray, shape (k, k)
        ``less[i, j]`` iff ``tokens[i] < tokens[j]`` in the transitive closure, i.e. a path
        of length >= 1 from ``tokens[i]`` to ``tokens[j]``.

    Notes
    -----
    Tokens get compact ids (their rank in ``tokens``). A topological order (Kahn) of the
    graph, then in reverse topological order ``row(u) |= row(v) | e_v`` for every edge
    u -> v, with rows packed 8 tokens a byte: O(k + R) plus O(R * k / 8) byte ORs, memory
    O(k^2) for the result (never an integer path count). With ``allow_cycles`` the same is
    done on the DAG of strongly connected components and expanded back to tokens.
    """
    lo, up = _as_int64(lo, "lo"), _as_int64(up, "up")
    _same_length(lo=lo, up=up)
    involved = np.unique(np.concatenate([lo, up]))
    if tokens is None:
        tokens = involved
    else:
        tokens = _as_int64(tokens, "tokens")
        if len(tokens) > 1 and not (tokens[1:] > tokens[:-1]).all():
            raise InputError("tokens must be strictly increasing")
        pos = np.searchsorted(tokens, involved)
        absent = (pos >= len(tokens)) | (tokens[np.minimum(pos, len(tokens) - 1)] != involved) \
            if len(tokens) else np.ones(len(involved), dtype=bool)
        if absent.any():
            raise InputError(f"tokens lacks the related token {int(involved[absent][0])}")
    if M is not None and len(tokens) and (tokens[0] < 0 or tokens[-1] >= M):
        bad = int(tokens[0]) if tokens[0] < 0 else int(tokens[-1])
        raise InputError(f"token {bad} is outside 0..{int(M) - 1}")
    k = len(tokens)
    if len(lo) == 0:
        return tokens, np.zeros((k, k), dtype=bool)
    src, dst = np.searchsorted(tokens, lo), np.searchsorted(tokens, up)
    loops = _loops()
    if not (src == dst).any():
        indptr, indices = _csr(src, dst, k)
        bits, acyclic = loops.dag_closure(indptr, indices, k)
        if acyclic:
            return tokens, np.unpackbits(bits, axis=1, count=k, bitorder="little").view(bool)
    if not allow_cycles:
        _, cyc = find_cycle(np.zeros(len(lo), dtype=np.int64), lo, up)
        raise OrderCycleError(f"the relations have a cycle {' < '.join(map(str, cyc))}, so they "
                              f"generate no strict order", tokens=cyc, cycle=cyc)
    # condensation: components of the cyclic relations, closure of the component DAG
    indptr, indices = _csr(src, dst, k)
    ncomp, labels = _strong_components(indptr, indices, k)
    labels = labels.astype(np.int64)
    cs, cd = labels[src], labels[dst]
    cyclic = np.bincount(labels, minlength=ncomp) > 1
    cyclic[cs[cs == cd]] = True
    between = cs != cd
    cindptr, cindices = _csr(cs[between], cd[between], ncomp)
    bits, acyclic = loops.dag_closure(cindptr, cindices, ncomp)
    assert acyclic  # the component graph of any graph is acyclic
    cless = np.unpackbits(bits, axis=1, count=ncomp, bitorder="little").view(bool)
    cless[np.flatnonzero(cyclic), np.flatnonzero(cyclic)] = True
    return tokens, cless[np.ix_(labels, labels)]


def transitive_closure(relations, M):
    """Strict order from generating relations: bool (M, M), ``less[a, b]`` iff a < b.

    Parameters
    ----------
    relations : int array_like, shape (R, 2)
        Generating relations ``(lower, upper)`` of one order, tokens in 0..M-1.
    M : int
        Vocabulary size.

    Returns
    -------
    bool ndarray, shape (M, M)
        ``less[a, b]`` iff a path of length >= 1 leads from a to b (the transitive closure);
        on acyclic relations, their strict order. Cyclic relations are not rejected:
        ``less[a, a]`` is then True for the tokens on a cycle.

    Notes
    -----
    Allocates M x M by contract. The closure itself is :func:`closure_matrix` over the
    k tokens involved (O(R * k / 8) byte ORs), scattered into the M x M matrix.
    """
    rel = np.asarray(relations)
    if rel.size == 0:
        rel = np.zeros((0, 2), dtype=np.int64)
    rel = rel.reshape(-1, 2)
    M = int(M)
    less = np.zeros((M, M), dtype=bool)
    if len(rel) == 0:
        return less
    tokens, sub = closure_matrix(rel[:, 0], rel[:, 1], M, allow_cycles=True)
    less[np.ix_(tokens, tokens)] = sub
    return less
