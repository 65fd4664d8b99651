"""Shifted test sets for Section 6 (claim C11): unseen sentences and how the extended orders decide them.

Definitions in :mod:`refimpl.generalize` and ``docs/generalization.md``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import extended_order, induced_relations, pad_sentences
from .errors import ConfigError

__all__ = ["KINDS", "longest_chains", "is_unseen", "unseen_sentences", "Classification", "classify",
           "accuracies", "closure_gaps"]

KINDS = ("closure", "score", "undecided", "no_label")


# ==================================================================== orders
def longest_chains(relations, M):
    """Longest chains of generating relations: int64 (M, M), ``chain[a, b]`` = the largest k such
    that a = t_0 < t_1 < ... < t_k = b with every (t_j, t_{j+1}) in ``relations``; 0 when b is
    not above a (so ``chain > 0`` is the transitive closure).

    ``relations`` : int array (R, 2) of (lower, upper), acyclic. Dynamic programming over a
    topological order of the tokens involved: O(R k) for k involved tokens.
    """
    rel = np.unique(np.asarray(relations, dtype=np.int64).reshape(-1, 2), axis=0)
    chain = np.zeros((M, M), dtype=np.int64)
    if len(rel) == 0:
        return chain
    involved, idx = np.unique(rel, return_inverse=True)
    idx = idx.reshape(-1, 2)
    k = len(involved)
    preds = [[] for _ in range(k)]
    indeg = np.zeros(k, dtype=np.int64)
    succs = [[] for _ in range(k)]
    for lo, up in idx:
        preds[up].append(lo)
        succs[lo].append(up)
        indeg[up] += 1
    stack, topo = list(np.flatnonzero(indeg == 0)), []
    while stack:                                               # Kahn's algorithm
        u = stack.pop()
        topo.append(u)
        for v in succs[u]:
            indeg[v] -= 1
            if indeg[v] == 0:
                stack.append(v)
    if len(topo) != k:
        raise ValueError("relations contain a cycle; a strict order has none")
    lp = np.zeros((k, k), dtype=np.int64)                      # lp[a, b] for involved tokens
    for v in topo:
        for u in preds[v]:                                     # every chain into v ends with u < v
            ext = np.where(lp[:, u] > 0, lp[:, u] + 1, 0)
            ext[u] = max(ext[u], 1)
            np.maximum(lp[:, v], ext, out=lp[:, v])
    chain[np.ix_(involved, involved)] = lp
    return chain


def _training_sets(ds):
    """bool (N, M): distinct tokens of each training sentence."""
    B = np.zeros((ds.n_sentences, ds.vocab_size), dtype=bool)
    rows, cols = np.nonzero(ds.valid_mask)
    B[rows, ds.tokens[rows, cols]] = True
    return B


def is_unseen(ds, sentences):
    """bool (N,): the distinct tokens of each sentence (query included) are not a subset of the
    distinct tokens of any training sentence of ``ds`` with the same query."""
    tokens, lengths = pad_sentences(sentences)
    B = _training_sets(ds)
    out = np.ones(len(lengths), dtype=bool)
    for n in range(len(lengths)):
        S = np.unique(tokens[n, : lengths[n]])
        same_q = ds.queries == tokens[n, lengths[n] - 1]
        out[n] = not np.any(B[same_q][:, S].all(axis=1))
    return out


# ================================================================ test sets
def unseen_sentences(ds, n, min_len=2, max_len=6, seed=0, targeted=0.5, max_tries=20):
    """``n`` distinct unseen sentences (see :func:`is_unseen`), as a list of int lists.

    A fraction ``targeted`` is built to be closure-decided when possible: a query q among the
    training queries, x_hat among {q} and the tokens above q in the extended order of q (the
    tokens with something below them when q has nothing above), and the other positions drawn
    from the tokens below x_hat. The rest are uniform: q among the training queries and the
    other positions uniform over V. Lengths are uniform in [min_len, max_len]; the query is
    last. At most ``max_tries * n`` candidates are drawn (no unbounded rejection loop), so
    fewer than ``n`` sentences come back when the dataset leaves little unseen.
    """
    if not 1 <= min_len <= max_len:
        raise ConfigError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    if not 0.0 <= targeted <= 1.0:
        raise ConfigError(f"targeted must be in [0, 1], got {targeted}")
    M = ds.vocab_size
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x6E11]))
    train_q = np.unique(ds.queries)
    B = _training_sets(ds)
    q_rows = {int(q): B[ds.queries == q] for q in train_q}
    tops, belows = {}, {}
    for q in train_q.tolist():
        less = extended_order(ds, q)
        top = np.append(np.flatnonzero(less[q]), q)            # x_hat = q or q < x_hat ...
        top = top[less[:, top].any(axis=0)]                    # ... with something below it
        tops[q] = top if len(top) else np.flatnonzero(less.any(axis=0))
        belows[q] = {int(x): np.flatnonzero(less[:, x]) for x in tops[q]}
    seen, out = set(), []
    n_target = int(round(targeted * n))
    for _ in range(max_tries * n):
        if len(out) >= n:
            break
        q = int(train_q[rng.integers(len(train_q))])
        L = int(rng.integers(min_len, max_len + 1))
        if len(out) < n_target:
            if len(tops[q]) == 0:
                continue
            x_hat = int(tops[q][rng.integers(len(tops[q]))])
            if x_hat != q and L == 1:
                continue
            below = belows[q][x_hat]
            body = below[rng.integers(0, len(below), size=L - 1)].tolist()
            if x_hat != q:
                body[int(rng.integers(0, L - 1))] = x_hat
        else:
            body = rng.integers(0, M, size=L - 1).tolist()
        sent = tuple(body) + (q,)
        if sent in seen:
            continue
        if q_rows[q][:, list(set(sent))].all(axis=1).any():
            continue
        seen.add(sent)
        out.append(list(sent))
    return out


# =========================================================== classification
@dataclass
class Classification:
    """Per-sentence classification of test sentences (see the module docstring).

    Arrays of length N (the number of test sentences); ``chain`` and ``tokens`` are (N, Lmax).
    """
    tokens: np.ndarray       # int64 (N, Lmax), padded with -1
    lengths: np.ndarray      # int64 (N,)
    queries: np.ndarray      # int64 (N,)
    kind: np.ndarray         # str (N,), one of KINDS
    decided_by: np.ndarray   # str (N,): "closure", "score" or "undecided" (no_label keeps its decider)
    x_hat: np.ndarray        # int64 (N,): deciding token (closure maximum or score argmax), -1 if undecided
    expected: np.ndarray     # int64 (N,): n(x_hat), -1 when undecided or no_label
    chain: np.ndarray        # int64 (N, Lmax): k(x_l, x_hat) for closure-decided, 0 at x_hat, -1 otherwise

    def counts(self):
        """{kind: number of sentences} for every kind in KINDS."""
        return {k: int(np.sum(self.kind == k)) for k in KINDS}


def classify(ds, sentences, K_star=None, tol=1e-9):
    """Classify test sentences as closure / score / undecided / no_label (module docstring).

    Parameters
    ----------
    ds : RealizableDataset           the training data (its induced relations and collocation)
    sentences : ragged int sequences or (tokens (N, Lmax), lengths (N,))
    K_star : float (M, M) or None    ``W_kq*`` in token coordinates; computed when None
    tol : float                      a score maximum must beat the runner-up by more than tol

    Returns
    -------
    Classification
    """
    if K_star is None:
        from .maxmargin import w_kq_star
        K_star, _ = w_kq_star(ds)
    K_star = np.asarray(K_star, dtype=np.float64)
    M = ds.vocab_size
    tokens, lengths = pad_sentences(sentences)
    N = len(lengths)
    valid = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    if (lengths < 1).any() or ((tokens < 0) | (tokens >= M))[valid].any():
        raise ConfigError(f"test sentences must be non-empty with tokens in 0..{M - 1}")
    queries = tokens[np.arange(N), lengths - 1] if N else np.zeros(0, np.int64)
    chains = {}
    kind = np.full(N, "undecided", dtype="<U9")
    decided_by = np.full(N, "undecided", dtype="<U9")
    x_hat = np.full(N, -1, dtype=np.int64)
    chain = np.full(tokens.shape, -1, dtype=np.int64)
    for n in range(N):
        q = int(queries[n])
        if q not in chains:
            chains[q] = longest_chains(induced_relations(ds, q), M)
        lp = chains[q]
        sent = tokens[n, : lengths[n]]
        S = np.unique(sent)
        below_all = (lp[S][:, S] > 0).sum(axis=0) == len(S) - 1  # column b: all others below b
        if below_all.any():
            x = int(S[np.argmax(below_all)])
            decided_by[n], x_hat[n] = "closure", x
            chain[n, : lengths[n]] = lp[sent, x]                  # lp[x, x] = 0
            continue
        sc = K_star[S, q]
        order = np.argsort(-sc, kind="stable")
        if sc[order[0]] - sc[order[1]] > tol:
            decided_by[n], x_hat[n] = "score", int(S[order[0]])
    decided = x_hat >= 0
    expected = np.full(N, -1, dtype=np.int64)
    expected[decided] = ds.colloc[x_hat[decided]]
    kind[decided] = decided_by[decided]
    kind[decided & (expected < 0)] = "no_label"
    return Classification(tokens, lengths, queries, kind, decided_by, x_hat, expected, chain)


def accuracies(cls, predicted, reference=None):
    """Accuracy of ``predicted`` (int (N,)) against ``cls.expected`` on the closure-decided, the
    score-decided and all labelled sentences, and (with ``reference``, e.g. the K*-limit
    predictions) the agreement with it on the decided sentences (no_label included; undecided
    sentences are left out, since there the limit attention ties and so may its logits).
    NaN where a group is empty. Returns a dict of floats."""
    predicted = np.asarray(predicted)

    def mean_on(sel, other):
        return float(np.mean(predicted[sel] == other[sel])) if sel.any() else float("nan")

    out = {"closure": mean_on(cls.kind == "closure", cls.expected),
           "score": mean_on(cls.kind == "score", cls.expected),
           "labelled": mean_on(np.isin(cls.kind, ("closure", "score")), cls.expected)}
    if reference is not None:
        out["agreement"] = mean_on(cls.x_hat >= 0, np.asarray(reference))
    return out


def closure_gaps(cls, K_star):
    """Certified side of C11 (via C6): float (N, Lmax), ``K*[x_hat, q] - K*[x_l, q] - k(x_l, x_hat)``
    at the positions of closure-decided sentences (x_hat positions give 0), NaN elsewhere.
    C6 says every finite entry is >= 0 (up to the solver's 1e-10 tolerance)."""
    K_star = np.asarray(K_star, dtype=np.float64)
    out = np.full(cls.tokens.shape, np.nan)
    rows = np.flatnonzero(cls.decided_by == "closure")
    if len(rows) == 0:
        return out
    tok, q, x = cls.tokens[rows], cls.queries[rows], cls.x_hat[rows]
    valid = np.arange(tok.shape[1])[None, :] < cls.lengths[rows][:, None]
    gap = K_star[x, q][:, None] - K_star[np.where(valid, tok, 0), q[:, None]]   # (R, L)
    out[rows] = np.where(valid, gap - cls.chain[rows], np.nan)
    return out
