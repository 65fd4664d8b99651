"""Seeded, constructive generation of realizable datasets (docs/datasets.md, "Generation").

Time and memory are O(N * Lmax + n_c): nothing of size M is built unless the
collocation itself has M pairs (``n_colloc = M``, the default).

Orders. The order of query q is the intersection of ``order_dim`` rankings of the
vocabulary, each given by random keys: ``a <_q b`` iff ``h_k(q, a) < h_k(q, b)`` for
every k in ``0..order_dim-1``. The key ``h_k(q, x)`` is a counter-based 64-bit hash of
(seed, q, k, x)::

    s_q      = mix(q * G xor key(seed))
    s_qk     = mix(s_q + (k + 1) * S)
    h_k(q,x) = mix(s_qk + x * G)                      (all arithmetic mod 2^64)

where ``mix`` is the SplitMix64 finalizer (a bijection of 64-bit words), ``G`` the
64-bit golden-ratio constant and ``S`` another odd constant. For fixed (q, k),
``x -> h_k(q, x)`` is the SplitMix64 output stream from state ``s_qk``: injective, so
each ranking is a strict total order (a random permutation, as far as statistics can
tell) and ``order_dim = 1`` gives total orders. Nothing of size M is stored: a key is
computed when a comparison needs it.

Sentences. For every sentence at once: its length uniform in ``[min_len, max_len]``,
its optimal token ``x*`` uniform in C, ``y = n(x*)``. A sentence of length 1 is
``[x*]`` (its query is its own optimal token). Otherwise the query q is drawn
uniformly from ``{q : q <_q x*} u {x*}``, and every other position except one slot for
``x*`` (uniform among the positions before the query, only when ``q != x*``) gets a
filler uniform in ``{x : x <_q x*} u {x*}``. Since n is injective, ``n(x) = n(x*)``
only for ``x = x*``, so every filler other than ``x*`` has another next token (or none),
``x*`` is the unique maximum of the sentence in the order of its query, and every
induced relation holds in that order: the dataset is realizable.

Draws "uniform in {x : x <_q t} u {t}" are bounded rejection sampling: rounds of
``B = 2^(min(order_dim, 5) - 1)`` uniform candidates per pending draw (1, 2, 4, 8, then
16), vectorized over all pending draws, the first accepted candidate kept; after 64
rounds a draw still pending takes ``t`` itself (the query may be the optimal token, a
filler may repeat it). A candidate is accepted with probability
``p = 2^-order_dim (1 - 1/M) + 1/M``, so the fallback has probability at most
``(1 - 2^-order_dim)^(64 B)``: 5.4e-20, 1.0e-16, 1.4e-15, 4.5e-15, 7.6e-15 for
``order_dim`` = 1..5, then 9.9e-8 for 6, 3.3e-4 for 7 and 1.8e-2 for 8 (with many
rankings the orders are nearly empty, and most sentences repeat their optimal token).

Memory. Before any work, :func:`generation_bytes` estimates the peak (the sentence
arrays, the ragged tokens, the collocation, the stored orders, bounded chunk buffers)
plus what writing the dataset as a file takes (the file text and its Python lists),
and :func:`refimpl.budget.check_bytes` refuses a request that would not fit.
"""
from __future__ import annotations

import sys

import numpy as np

from . import budget
from .data import RealizableDataset
from .errors import ConfigError

__all__ = ["generate", "generation_bytes", "hash_key", "below"]

_MAX_STORED_M = 200
_MAX_INT = 1 << 62             # largest vocabulary size, sentence count and length accepted
_ROUNDS = 64                   # rejection rounds before the fallback
_MAX_BATCH = 16                # candidates per pending draw and round
_CHUNK = 1 << 18               # candidates per round (bounds every buffer)
_PROGRESS_MIN = 4_000_000      # tokens above which a terminal shows a progress bar

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_STREAM = 0xD1B54A32D192ED03
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def _check_int(name, value, lo, hi=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {value!r}"[:200])
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        shown = str(int(value))
        shown = shown if len(shown) <= 40 else f"{shown[:20]}... ({len(shown)} digits)"
        raise ConfigError(f"{name} must be {rng}, got {shown}")
    return int(value)


# ------------------------------------------------------------------ hash keys
def _mix(z):
    """SplitMix64 finalizer of a uint64 array (a new array; wraps mod 2^64)."""
    z = z ^ (z >> _S30)
    z *= _MUL1
    z ^= z >> _S27
    z *= _MUL2
    z ^= z >> _S31
    return z


def hash_key(seed):
    """The 64-bit hash key of a seed, from ``SeedSequence([seed, 0x5EF1, 3])``: an entropy
    pool of its own, apart from the one the random draws come from (``[seed, 0x5EF1]``)."""
    return np.uint64(np.random.SeedSequence([seed, 0x5EF1, 3]).generate_state(1, np.uint64)[0])


def _query_state(key, q):
    """uint64 s_q for int64 tokens q (module docstring)."""
    return _mix(q.astype(np.uint64) * _GOLDEN ^ key)


def _stream_state(state, k):
    """s_qk from s_q (uint64 array) and the ranking index k."""
    return _mix(state + np.uint64(((k + 1) * _STREAM) & _MASK64))


def _below_states(state, xg, tg, order_dim):
    """Indices i with ``h_k(q_i, x_i) < h_k(q_i, t_i)`` for every k, given ``state = s_q``,
    ``xg = x * G`` and ``tg = t * G`` (uint64 arrays of one length)."""
    alive = np.arange(len(state))
    for k in range(order_dim):
        s = _stream_state(state, k)
        keep = _mix(s + xg) < _mix(s + tg)
        alive = alive[keep]
        if not len(alive) or k + 1 == order_dim:
            break
        state, xg, tg = state[keep], xg[keep], tg[keep]
    return alive


def below(key, q, x, t, order_dim):
    """bool array: ``x <_q t`` for each item, i.e. ``h_k(q, x) < h_k(q, t)`` for every k.

    Parameters
    ----------
    key : numpy.uint64
        The hash key of the seed (``hash_key(seed)``).
    q, x, t : int64 array-likes of one shape
        Queries and the two tokens compared in each query's order.
    order_dim : int
        Number of rankings intersected.

    Returns
    -------
    numpy.ndarray of bool, the shape of ``q``.

    Notes
    -----
    Items drop out at the first ranking that does not put ``x`` below ``t`` (half of
    them per ranking), so the cost is about two rankings per item whatever
    ``order_dim`` is, and the loop over rankings ends once no item is left.
    """
    shape = np.shape(q)
    q, x, t = (np.asarray(a, dtype=np.int64).ravel() for a in (q, x, t))
    out = np.zeros(len(q), dtype=bool)
    out[_below_states(_query_state(key, q), x.astype(np.uint64) * _GOLDEN,
                      t.astype(np.uint64) * _GOLDEN, order_dim)] = True
    return out.reshape(shape)


def _draw_below(rng, key, q, top, M, order_dim, batch):
    """For each item i a token uniform in ``{x : x <_{q_i} top_i} u {top_i}`` (bounded rounds).

    ``q=None`` draws queries: each candidate c is compared in its own order
    (``c <_c top_i``). Items still pending after ``_ROUNDS`` rounds take ``top_i``.
    """
    out = top.copy()
    topg = top.astype(np.uint64) * _GOLDEN
    states = None if q is None else _query_state(key, q)      # one s_q per item, reused by every round
    pending = np.arange(len(top))
    for _ in range(_ROUNDS):
        if not len(pending):
            break
        cand = rng.integers(0, M, size=len(pending) * batch, dtype=np.int64)
        t = np.repeat(top[pending], batch)
        ok = cand == t
        rest = np.flatnonzero(~ok)
        c = cand[rest]
        state = _query_state(key, c) if states is None else np.repeat(states[pending], batch)[rest]
        ok[rest[_below_states(state, c.astype(np.uint64) * _GOLDEN,
                              np.repeat(topg[pending], batch)[rest], order_dim)]] = True
        ok = ok.reshape(-1, batch)
        hit = ok.any(axis=1)
        rows = np.flatnonzero(hit)
        out[pending[rows]] = cand.reshape(-1, batch)[rows, ok[rows].argmax(axis=1)]
        pending = pending[~hit]
    return out


# --------------------------------------------------------------- collocation
def _sample_distinct(rng, M, n):
    """n distinct tokens of 0..M-1 in random order.

    ``Generator.choice`` without replacement uses Floyd's algorithm with a hash set
    (O(n)) when ``n <= M / 50`` and ``M > 10000``, otherwise a partial shuffle of
    ``arange(M)``, which is then O(n) too (M <= 50 n, or M <= 10000).
    """
    return rng.choice(M, size=n, replace=False)


def _collocation(rng, M, n_c):
    """(C sorted int64 (n_c,) or None for C = V, n(C) int64 (n_c,)): n injective."""
    if n_c == M:
        return None, rng.permutation(M).astype(np.int64)
    C = np.sort(_sample_distinct(rng, M, n_c)).astype(np.int64)
    return C, _sample_distinct(rng, M, n_c).astype(np.int64)


# -------------------------------------------------------------------- memory
def _digits(M):
    return len(str(max(M - 1, 0)))


def generation_bytes(vocab_size, n_sentences, min_len, max_len, n_colloc=None, store_orders=False):
    """Estimated peak bytes of :func:`generate` and of writing its dataset as a file.

    Parameters
    ----------
    vocab_size, n_sentences, min_len, max_len, n_colloc, store_orders
        As in :func:`generate` (checked there).

    Returns
    -------
    (needed, file_bytes) : (int, int)
        ``needed`` covers, with T = N * max_len tokens at most: the sentence arrays
        (lengths, offsets, optimal tokens, queries, slots, next tokens: 64 N), the ragged
        tokens (8 T), the chunk buffers (bounded, at most 200 bytes per candidate and
        never more than 64 per token), the collocation (its pairs and the sampling
        temporaries: 48 n_c, plus 8 M when it is sampled by a partial shuffle), the stored
        orders (M <= 200) and what :func:`refimpl.io.save_dataset` holds while writing:
        the sentences and pairs as Python lists (about 64 bytes per sentence or pair, 8
        per token, 32 more per token or pair entry that is not a small cached integer)
        and three copies of the file text. ``file_bytes`` is the size of the file.
    """
    M, N, hi, n_c = int(vocab_size), int(n_sentences), int(max_len), int(n_colloc or vocab_size)
    T = N * hi
    D = _digits(M)
    big = 32 if M > 257 else 0                       # Python ints above 256 are objects of their own
    colloc = 48 * n_c + (8 * M if (n_c > M // 50 or M <= 10000) else 0)
    Q = min(M, N)
    stored_pairs = Q * M * (M - 1) // 2 if store_orders else 0
    orders = (Q * M * M + 8 * M * Q) * 2 + 16 * stored_pairs if store_orders else 0
    chunks = min(200 * _CHUNK, 64 * (N + T))
    file_bytes = (T * (D + 1) + N * (D + 8) + n_c * (2 * D + 4) + stored_pairs * (2 * D + 4) + 200)
    writing = (N * (64 + big) + T * (8 + big) + (n_c + stored_pairs) * (64 + 2 * big) + 3 * file_bytes)
    arrays = 64 * N + 8 * T
    return arrays + chunks + colloc + orders + writing, file_bytes


# ------------------------------------------------------------------ progress
class _Progress:
    """A tqdm bar of generated tokens on stderr (see :func:`generate`, ``progress``)."""

    def __init__(self, total, progress):
        show = (sys.stderr.isatty() and total > _PROGRESS_MIN) if progress is None else bool(progress)
        self.bar = None
        if show and total > 0:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc="generate", unit="tok", unit_scale=True, leave=False,
                            mininterval=0.2, file=sys.stderr)

    def update(self, n):
        if self.bar is not None:
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------- generation
def generate(vocab_size=20, n_sentences=200, min_len=2, max_len=6, seed=0, *,
             n_colloc=None, order_dim=2, store_orders=False, progress=None):
    """A random realizable dataset (module docstring and docs/datasets.md, "Generation").

    Parameters
    ----------
    vocab_size : int, 2 <= M <= 2^62
        M.
    n_sentences : int, 1 <= N <= 2^62
        N.
    min_len, max_len : int, 1 <= min_len <= max_len <= 2^62
        Sentence lengths are uniform in ``[min_len, max_len]``; a sentence of length 1 is
        ``[q]`` with q in C, its own optimal token.
    seed : int >= 0
        Everything is a deterministic function of the arguments. The collocation
        depends only on (M, n_colloc, seed) and the orders only on (seed, order_dim).
    n_colloc : int or None
        |C|, in 1..M; default M (the collocation is a random permutation of V).
        Otherwise C is a uniform random subset of that size and n a uniform random
        injection C -> V.
    order_dim : int >= 1
        Number of random rankings intersected per query (1 = total orders).
    store_orders : bool
        Supply every comparable pair of each used query's order (M <= 200 only).
    progress : bool or None
        None: a tqdm bar on stderr when it is a terminal and the run is long (more than
        four million tokens); False: silent; True: always a bar.

    Returns
    -------
    RealizableDataset
        With ``orders=None`` (induced) unless ``store_orders``.

    Raises
    ------
    ConfigError
        A parameter out of its domain (one line naming it).
    ResourceError
        The estimate of :func:`generation_bytes` exceeds the memory limit; raised
        before any work.

    Examples
    --------
    >>> import refimpl as ri
    >>> ds = ri.generate(vocab_size=20, n_sentences=200, seed=0)     # the built-in default
    >>> ds
    RealizableDataset(M=20, N=200, |C|=20, Lmax=6, orders=induced)
    >>> ds == ri.generate(20, 200, 2, 6, 0)                          # deterministic
    True
    """
    M = _check_int("vocab_size", vocab_size, 2, _MAX_INT)
    N = _check_int("n_sentences", n_sentences, 1, _MAX_INT)
    lo_len = _check_int("min_len", min_len, 1, _MAX_INT)
    hi_len = _check_int("max_len", max_len, lo_len, _MAX_INT)
    seed = _check_int("seed", seed, 0)
    n_c = M if n_colloc is None else _check_int("n_colloc", n_colloc, 1, M)
    dim = _check_int("order_dim", order_dim, 1, _MAX_INT)
    if store_orders and M > _MAX_STORED_M:
        raise ConfigError(f"store_orders needs vocab_size <= {_MAX_STORED_M}, got {M}")
    needed, file_bytes = generation_bytes(M, N, lo_len, hi_len, n_c, store_orders)
    budget.check_bytes(needed, f"generating M={M}, N={N}, lengths {lo_len}..{hi_len}, |C|={n_c} "
                               f"(a file of about {budget.format_bytes(file_bytes)})")

    root = np.random.SeedSequence([seed, 0x5EF1])
    colloc_ss, sent_ss, query_ss, fill_ss = root.spawn(4)
    key = hash_key(seed)
    batch = min(1 << (min(dim, 5) - 1), _MAX_BATCH)

    C, values = _collocation(np.random.default_rng(colloc_ss), M, n_c)

    rng = np.random.default_rng(sent_ss)
    lengths = rng.integers(lo_len, hi_len + 1, size=N, dtype=np.int64)
    offsets = np.zeros(N + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    pick = rng.integers(0, n_c, size=N, dtype=np.int64)
    xstar = pick if C is None else C[pick]
    next_tokens = values[pick]
    del pick
    # slot of x* among the positions before the query (used when q != x*)
    slot = rng.integers(0, np.maximum(lengths - 1, 1), dtype=np.int64)

    total = int(offsets[-1])
    bar = _Progress(total, progress)
    try:
        # queries: a length-1 sentence is [x*]; the others draw q with q <_q x* (or x*)
        queries = xstar.copy()
        rng_q = np.random.default_rng(query_ss)
        multi = np.flatnonzero(lengths >= 2)
        step = max(_CHUNK // batch, 1)
        for a in range(0, len(multi), step):
            idx = multi[a: a + step]
            queries[idx] = _draw_below(rng_q, key, None, xstar[idx], M, dim, batch)

        # tokens, in chunks of flat positions (a sentence may span chunks)
        flat = np.empty(total, dtype=np.int64)
        rng_f = np.random.default_rng(fill_ss)
        for a in range(0, total, step):
            pos = np.arange(a, min(a + step, total), dtype=np.int64)
            s = np.searchsorted(offsets, pos, side="right") - 1
            j = pos - offsets[s]
            q_s, x_s = queries[s], xstar[s]
            is_q = j == lengths[s] - 1
            is_x = ~is_q & (q_s != x_s) & (j == slot[s])
            tok = np.where(is_q, q_s, x_s)
            f = np.flatnonzero(~(is_q | is_x))
            tok[f] = _draw_below(rng_f, key, q_s[f], x_s[f], M, dim, batch)
            flat[a: a + len(pos)] = tok
            bar.update(len(pos))
    finally:
        bar.close()

    pairs = np.empty((n_c, 2), dtype=np.int64)
    pairs[:, 0] = np.arange(M, dtype=np.int64) if C is None else C
    pairs[:, 1] = values
    orders = _stored_orders(key, np.unique(queries), M, dim) if store_orders else None
    return RealizableDataset.from_flat(M, pairs, flat, offsets, next_tokens, orders)


def _stored_orders(key, used, M, order_dim):
    """``{q: int64 (R, 2)}``: every pair (a, b) with ``a <_q b``, for each used query (M <= 200)."""
    xg = np.tile(np.arange(M, dtype=np.uint64) * _GOLDEN, len(used))
    state = _query_state(key, np.repeat(used, M))
    less = np.ones((len(used), M, M), dtype=bool)
    for k in range(order_dim):
        h = _mix(_stream_state(state, k) + xg).reshape(len(used), M)
        less &= h[:, :, None] < h[:, None, :]
        if not less.any():
            break
    return {int(q): np.argwhere(less[i]).astype(np.int64) for i, q in enumerate(used)}
