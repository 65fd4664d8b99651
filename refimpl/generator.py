"""Seeded, constructive generation of realizable datasets (SPEC section 3).

Orders. For each query q the partial order ``<_q`` is the intersection of
``order_dim`` independent random rankings of the vocabulary:
``a <_q b`` iff ``rank_k[a] < rank_k[b]`` for every k. With ``order_dim = 1``
this is a total order; with the default 2 about half of all pairs are
incomparable. The representation is compact (``order_dim * M`` integers per
query) and each query's rankings come from their own child seed, so nothing of
size M x M is ever stored and M = 5000 fits.

Sentences. A query q is drawn among the tokens that can be a query (q in C, or
some token of C lies above q); then an optimal token ``x*`` uniformly among
``{q} n C`` union ``{x in C : q <_q x}``; then the other positions from the
tokens below ``x*`` (whose next token differs from ``n(x*)``), with ``x*``
placed at a random earlier position when ``x* != q``. Every draw is from a
non-empty set computed beforehand: there is no rejection loop.

The returned dataset has induced orders (``orders=None``) unless
``store_orders=True``, which supplies every comparable pair of each used query's
order (only for M <= 200, where that fits).
"""
from __future__ import annotations

import numpy as np

from .data import RealizableDataset
from .errors import ConfigError

__all__ = ["generate"]

_MAX_STORED_M = 200


def _check_int(name, value, lo, hi=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ConfigError(f"{name} must be {rng}, got {value}")
    return int(value)


def _rankings(seed_seq, order_dim, M):
    """int32 (order_dim, M): the rankings defining one query's order."""
    rng = np.random.default_rng(seed_seq)
    return np.stack([rng.permutation(M).astype(np.int32) for _ in range(order_dim)])


def _above(ranks, x):
    """bool (M,): tokens b with x <_q b."""
    return np.all(ranks > ranks[:, x: x + 1], axis=0)


def generate(vocab_size=20, n_sentences=200, min_len=2, max_len=6, seed=0, *,
             n_colloc=None, order_dim=2, store_orders=False):
    """A random realizable dataset.

    Parameters
    ----------
    vocab_size : int >= 2
        M.
    n_sentences : int >= 1
        N.
    min_len, max_len : int, 1 <= min_len <= max_len
        Sentence lengths are uniform in ``[min_len, max_len]``; a sentence of length 1
        takes its query from C (it is its own optimal token).
    seed : int
        Everything is a deterministic function of the arguments.
    n_colloc : int or None
        |C|; default M (the collocation is a random permutation). Otherwise C is
        a random subset of that size and n a random injection C -> V.
    order_dim : int >= 1
        Number of random rankings intersected per query (1 = total orders).
    store_orders : bool
        Supply the generating orders in the dataset (M <= 200 only).

    Returns
    -------
    RealizableDataset with ``orders=None`` (induced) unless ``store_orders``.
    """
    M = _check_int("vocab_size", vocab_size, 2)
    N = _check_int("n_sentences", n_sentences, 1)
    lo_len = _check_int("min_len", min_len, 1)
    hi_len = _check_int("max_len", max_len, lo_len)
    n_c = M if n_colloc is None else _check_int("n_colloc", n_colloc, 1, M)
    dim = _check_int("order_dim", order_dim, 1)
    if store_orders and M > _MAX_STORED_M:
        raise ConfigError(f"store_orders needs vocab_size <= {_MAX_STORED_M}, got {M}")
    root = np.random.SeedSequence([int(seed), 0x5EF1])
    main_ss, order_ss = root.spawn(2)
    query_seeds = order_ss.spawn(M)
    rng = np.random.default_rng(main_ss)

    # collocation: C and an injection n: C -> V
    C = np.sort(rng.choice(M, size=n_c, replace=False)) if n_c < M else np.arange(M)
    colloc = np.full(M, -1, dtype=np.int64)
    colloc[C] = rng.permutation(M)[:n_c]
    in_C = colloc >= 0

    # which tokens can be queries (pass 1: needs each query's order only when q is not in C)
    can_query = in_C.copy()
    if n_c < M:
        for q in np.flatnonzero(~in_C):
            can_query[q] = np.any(_above(_rankings(query_seeds[q], dim, M), q) & in_C)
    queries_ok = np.flatnonzero(can_query)                # never empty: C is, n_colloc >= 1

    queries = rng.choice(queries_ok, size=N)
    lengths = rng.integers(lo_len, hi_len + 1, size=N).astype(np.int64)
    # a length-1 sentence is [q], its own optimal token, so q must be in C: redraw such
    # queries from C (lengths stay in [min_len, max_len]; no extra draw when none is needed)
    alone = (lengths == 1) & ~in_C[queries]
    if alone.any():
        queries[alone] = rng.choice(np.flatnonzero(in_C), size=int(alone.sum()))
    Lmax = int(lengths.max())
    tokens = np.full((N, Lmax), -1, dtype=np.int64)
    next_tokens = np.empty(N, dtype=np.int64)
    stored = {}

    order = np.argsort(queries, kind="stable")
    bounds = np.searchsorted(queries[order], np.arange(M + 1))
    for q in range(M):
        idx = order[bounds[q]: bounds[q + 1]]
        if len(idx) == 0:
            continue
        ranks = _rankings(query_seeds[q], dim, M)
        cand = np.flatnonzero(_above(ranks, q) & in_C)
        if in_C[q]:
            cand = np.append(cand, q)
        # a length-1 sentence is [q] itself, so its optimal token must be q
        xstar = cand[rng.integers(0, len(cand), size=len(idx))]
        xstar[lengths[idx] == 1] = q
        if store_orders:
            lo, up = np.nonzero(np.all(ranks[:, :, None] < ranks[:, None, :], axis=0))
            stored[q] = np.stack([lo, up], axis=1)
        # filler pools, one row per distinct x*: tokens below x* (with another next
        # token) plus x* itself; flattened so one vectorized draw serves all sentences
        uniq, row = np.unique(xstar, return_inverse=True)
        pool = np.all(ranks[:, None, :] < ranks[:, uniq, None], axis=0)  # (U, M)
        pool &= colloc[None, :] != colloc[uniq][:, None]
        pool[np.arange(len(uniq)), uniq] = True
        counts = pool.sum(axis=1)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        flat = np.nonzero(pool)[1]
        L = lengths[idx]
        pick = (rng.random((len(idx), Lmax)) * counts[row][:, None]).astype(np.int64)
        fill = flat[offsets[row][:, None] + pick]
        fill[np.arange(Lmax)[None, :] >= L[:, None]] = -1
        fill[np.arange(len(idx)), L - 1] = q
        moved = xstar != q  # put x* at a random position before the query
        pos = (rng.random(len(idx)) * (L - 1)).astype(np.int64)
        fill[np.flatnonzero(moved), pos[moved]] = xstar[moved]
        tokens[idx] = fill
        next_tokens[idx] = colloc[xstar]
    pairs = np.stack([C, colloc[C]], axis=1)
    return RealizableDataset(M, pairs, (tokens, lengths), next_tokens,
                             stored if store_orders else None)
