"""Generalization to unseen sentences through extended orders (SPEC claim C11, the paper's Section 6).

Definitions (our reading; ``docs/generalization.md`` works an example by hand):

``training relations`` of query q: ``x' <_q x*`` for every training sentence with
    query q, optimal token x* and other distinct token x' (:func:`refimpl.data.induced_relations`).
    These are exactly the constraints of ``W_kq*`` (SPEC section 5). Supplied orders
    are *not* added: ``K*`` never sees them, so C6 says nothing about them.
``extended order`` of q: the transitive closure of the training relations of q.
``chain length`` k(x', x): the largest number of training relations on a chain
    ``x' < ... < x``; C6 gives ``K*[x, q] - K*[x', q] >= k(x', x)``.
``unseen`` sentence: its set of distinct tokens S (query included) is not a subset
    of the distinct tokens of any training sentence with the same query.
Each test sentence with query q and distinct tokens S is classified as

``closure``    S has a maximum x_hat under the extended order of q (every other
               token of S is below x_hat); the expected next token is n(x_hat);
``score``      not closure-decided, but ``K*[:, q]`` restricted to S has a unique
               strict maximum x_s (by more than ``tol``); expected next token n(x_s);
``undecided``  neither;
``no_label``   decided (by closure or score) but the deciding token is outside C,
               so no next token is defined. Excluded from every accuracy.

The trained model is compared with the expected next tokens and with the
``K*``-limit model (attention spread evenly over the positions of maximal
``K*`` score, i.e. ``softmax(c K*)`` as c -> infinity).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import induced_relations, pad_sentences
from .errors import ConfigError

__all__ = ["predict", "predict_limit", "longest_chains", "unseen_sentences", "is_unseen",
           "Classification", "classify", "accuracies", "GeneralizeConfig",
           "closure_gaps", "generalization_report", "figure_generalization", "run_generalize", "KINDS"]

KINDS = ("closure", "score", "undecided", "no_label")


# ================================================================ prediction
def _attention(K, tokens, lengths, limit_tol=None):
    """Attention phi (N, L) on the positions (0 on padding) and the queries q (N,).

    phi = softmax_l(K[x_l, q]) (SPEC section 2), shifted by the row maximum; with ``limit_tol``
    instead the c -> infinity limit of softmax(c s): uniform over positions with
    s_l >= max s - limit_tol.
    """
    N = tokens.shape[0]
    q = tokens[np.arange(N), lengths - 1]
    valid = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    s = np.where(valid, K[np.where(valid, tokens, 0), q[:, None]], -np.inf)   # (N, L)
    if limit_tol is None:
        phi = np.exp(s - s.max(axis=1, keepdims=True))                         # exp(-inf) = 0
    else:
        phi = (s >= s.max(axis=1, keepdims=True) - limit_tol).astype(np.float64)
    return phi / phi.sum(axis=1, keepdims=True), q


def _output(O, phi, tokens):
    """Prediction argmax_v z_v (N,) and softmax(z) (N, M) for z = sum_l phi[n, l] O[:, tokens[n, l]]."""
    safe = np.where(tokens >= 0, tokens, 0)
    z = np.einsum("nl,nlv->nv", phi, O.T[safe])               # O.T[safe]: (N, L, M)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return np.argmax(z, axis=1).astype(np.int64), p


def _as_pair(W_ov, W_kq, sentences):
    O, K = np.asarray(W_ov, dtype=np.float64), np.asarray(W_kq, dtype=np.float64)
    tokens, lengths = pad_sentences(sentences)
    M = O.shape[0]
    if O.shape != (M, M) or K.shape != (M, M):
        raise ConfigError(f"W_ov and W_kq must be M x M token-coordinate matrices; got {O.shape}, {K.shape}")
    valid = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    if (lengths < 1).any() or ((tokens < 0) | (tokens >= M))[valid].any():
        raise ConfigError(f"sentences must be non-empty with tokens in 0..{M - 1}")
    return O, K, tokens, lengths


def predict(W_ov, W_kq, sentences):
    """Next-token prediction of the one-layer transformer (SPEC section 2), token coordinates (E = I).

    Parameters
    ----------
    W_ov, W_kq : float arrays, shape (M, M)   O and K; row = key token, column = query token
    sentences : ragged int sequences, or a tuple (tokens int64 (N, Lmax) padded with -1, lengths (N,))

    Returns
    -------
    next_token : int64 (N,), argmax_v z_v (lowest index on exact ties)
    probs : float64 (N, M), softmax(z) computed stably (shifted by the row maximum)
    """
    O, K, tokens, lengths = _as_pair(W_ov, W_kq, sentences)
    phi, _ = _attention(K, tokens, lengths)
    return _output(O, phi, tokens)


def predict_limit(W_ov, W_kq, sentences, tol=1e-9):
    """The limit c -> infinity of ``predict(W_ov, c * W_kq, sentences)``: attention uniform over the
    positions l with s_l >= max_l s_l - tol (all occurrences of the top-scoring tokens).

    Same shapes and returns as :func:`predict`.
    """
    O, K, tokens, lengths = _as_pair(W_ov, W_kq, sentences)
    phi, _ = _attention(K, tokens, lengths, limit_tol=tol)
    return _output(O, phi, tokens)


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
        less = longest_chains(induced_relations(ds, q), M) > 0
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


# ================================================================== report
@dataclass
class GeneralizeConfig:
    """Configuration of :func:`run_generalize` (training as :class:`refimpl.train.TrainConfig`)."""

    eta0: float | None = None  # stage-1 step size; None -> 0.2 / sqrt(d)
    eta: float | None = None  # stage-2 step size; None -> 0.05 / sqrt(d)
    T0: int = 2000  # stage-1 steps (the built-in experiment, ReproduceConfig)
    T: int = 20_000  # stage-2 steps (the built-in experiment, ReproduceConfig)
    init: str = "zero"  # "zero" or "random" initialization of both matrices
    init_scale: float = 0.1  # standard deviation of a random initialization
    seed: int = 0  # seed of a random initialization
    n_test: int = 2000  # number of unseen test sentences
    min_len: int = 2  # shortest test sentence
    max_len: int = 6  # longest test sentence
    test_seed: int = 0  # seed of the test sentences
    targeted: float = 0.5  # fraction of test sentences built to be closure-decided
    dense_limit: int = 100  # evaluate every stage-2 step when T <= dense_limit
    n_points: int = 60  # otherwise about this many checkpoints (geometric + linear), refined near 100%
    tol: float = 1e-9  # score ties: a K* maximum must win by more than tol

    @classmethod
    def from_kwargs(cls, **kwargs):
        """Build from keyword arguments; an unknown key raises ConfigError naming it."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ConfigError(f"unknown generalize option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**kwargs)


def _train_kwargs(cfg):
    return dict(eta0=cfg.eta0, eta=cfg.eta, T0=cfg.T0, init=cfg.init, seed=cfg.seed, init_scale=cfg.init_scale)


def _stage2_path(ds, O, K0, eta, steps, t0=0):
    """K_t at each of the sorted ``steps`` (all >= t0) of stage 2 with W_ov = O fixed, K_{t0} = K0.

    One stage-2 run from ``K_{t0}`` to the last step (NGD has no state besides the
    iterate), keeping copies of the iterates at ``steps`` through the trainer's callback.
    """
    from .train import train_two_stage
    wanted = {int(s) - int(t0) for s in steps}
    kept = {}

    def keep(t, K):
        if t in wanted:
            kept[t] = K.copy()

    last = max(wanted, default=0)
    if last > 0:
        train_two_stage(ds, eta=eta, T=last, init="given", W_kq0=np.asarray(K0, dtype=np.float64), W_ov=O,
                        progress=False, record_dense_limit=0, record_points=2, stage2_callback=keep)
    kept.setdefault(0, np.array(K0, dtype=np.float64))
    return [kept[int(s) - int(t0)] for s in steps]


def _resolve_run(ds, result_or_weights, cfg):
    """The run to evaluate, for the forms accepted by :func:`generalization_report`:
    ``(O, checkpoints, eta, provenance)`` where ``checkpoints`` is a list of (step, K) and
    ``eta`` is the stage-2 step size to train further between checkpoints (None: fixed checkpoints)."""
    from .trajectory import record_steps
    if isinstance(result_or_weights, tuple) and len(result_or_weights) == 2:
        O, Ks = result_or_weights
        if isinstance(Ks, np.ndarray):
            return np.asarray(O, dtype=np.float64), [(None, Ks)], None, {"source": "weights"}
        return (np.asarray(O, dtype=np.float64), [(int(s), np.asarray(K)) for s, K in Ks], None,
                {"source": "checkpoints"})
    from .train import train_two_stage
    if result_or_weights is None:
        start = train_two_stage(ds, T=0, progress=False, **_train_kwargs(cfg))
        T, prov = cfg.T, {"source": "trained", "T0": cfg.T0, "T": cfg.T}
    else:
        rc = result_or_weights.config
        if rc.init == "given":
            raise ConfigError("cannot replay stage 2 of a run with init='given'; pass "
                              "(W_ov, [(step, W_kq), ...]) checkpoints instead")
        start = train_two_stage(ds, eta0=rc.eta0, eta=rc.eta, T0=rc.T0, T=0, init=rc.init, seed=rc.seed,
                                init_scale=rc.init_scale, d=rc.d, progress=False)
        T, prov = rc.T, {"source": "replayed TrainResult", "T0": rc.T0, "T": rc.T}
    eta = start.config.eta
    steps = record_steps(T, cfg.dense_limit, cfg.n_points).tolist()
    Ks = _stage2_path(ds, start.W_ov, start.W_kq, eta, steps)
    if result_or_weights is not None:
        prov["replay_max_abs_deviation"] = float(np.max(np.abs(Ks[-1] - result_or_weights.W_kq)))
    prov["eta"] = eta
    return start.W_ov, list(zip(steps, Ks)), eta, prov


def _nan_to_none(x):
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


SERIES = ("closure_accuracy", "score_accuracy", "labelled_accuracy", "agreement_with_kstar",
          "closure_attention", "score_attention")


def generalization_report(ds, result_or_weights=None, *, sentences=None, K_star=None, config=None):
    """Measure C11 on unseen sentences along stage 2 of Algorithm 1.

    Parameters
    ----------
    ds : RealizableDataset
    result_or_weights : one of
        ``None``                          train with ``config`` (stage 1, then stage 2 with checkpoints);
        a ``TrainResult``                 its stage 2 is replayed with checkpoints (zero/random init);
        ``(W_ov, W_kq)``                  one evaluation of given weights (step None);
        ``(W_ov, [(step, W_kq), ...])``   given checkpoints.
    sentences : test sentences, or None for ``unseen_sentences(ds, config.n_test, ...)``
    K_star : (M, M) or None            W_kq*; computed when None
    config : GeneralizeConfig or None

    Checkpoints (trained or replayed runs) follow ``record_steps(T, dense_limit, n_points)``;
    when that skips steps, the gap after the last checkpoint below 100% closure (and score)
    accuracy is refined to every step, so ``closure_100_from`` is exact: the first step t such
    that every evaluated step >= t is at 100%, with no step skipped between the last failure
    and t. (Between coarse checkpoints further back, a brief earlier visit to 100% could be
    missed by ``first_step_closure_100``.)

    Returns
    -------
    dict (JSON-serializable; NaN -> None): ``counts`` per kind; ``certified`` (closure-decided
    sentences whose K* gap falls short of the chain length: ``violations`` must be 0);
    ``kstar_limit`` (accuracy of the K*-limit model with the trained W_ov); per evaluated step
    the lists ``steps``, ``closure_accuracy``, ``score_accuracy``, ``labelled_accuracy``,
    ``agreement_with_kstar``, ``closure_attention`` / ``score_attention`` (mean attention on
    x_hat); ``first_step_closure_100`` (first evaluated step at 100%), ``closure_100_from``, and
    the same two for score-decided sentences; ``final`` (the last step's values).
    """
    cfg = config or GeneralizeConfig()
    if K_star is None:
        from .maxmargin import w_kq_star
        K_star, _ = w_kq_star(ds)
    if sentences is None:
        sentences = unseen_sentences(ds, cfg.n_test, cfg.min_len, cfg.max_len, cfg.test_seed, cfg.targeted)
    cls = classify(ds, sentences, K_star, tol=cfg.tol)
    O, checkpoints, eta, prov = _resolve_run(ds, result_or_weights, cfg)
    ref, _ = predict_limit(O, K_star, (cls.tokens, cls.lengths), tol=cfg.tol)
    at_hat = cls.tokens == cls.x_hat[:, None]                        # (N, L): positions of x_hat

    def evaluate(K):
        pred, _ = predict(O, K, (cls.tokens, cls.lengths))
        acc = accuracies(cls, pred, ref)
        phi, _ = _attention(np.asarray(K, dtype=np.float64), cls.tokens, cls.lengths)
        mass = (phi * at_hat).sum(axis=1)                              # (N,)
        att = {k: float(mass[cls.kind == k].mean()) if np.any(cls.kind == k) else float("nan")
               for k in ("closure", "score")}
        return (acc["closure"], acc["score"], acc["labelled"], acc["agreement"],
                att["closure"], att["score"])

    rows = {s: evaluate(K) for s, K in checkpoints}                  # step -> SERIES values
    steps = [s for s, _ in checkpoints]
    if eta is not None:
        refined = []
        for i in (0, 1):                                              # closure, score accuracy
            fails = [j for j, s in enumerate(steps) if rows[s][i] < 1.0]
            if fails and fails[-1] + 1 < len(steps) and steps[fails[-1] + 1] > steps[fails[-1]] + 1:
                j = fails[-1]                                         # every step in (steps[j], steps[j+1])
                fine = list(range(steps[j] + 1, steps[j + 1]))
                for s, K in zip(fine, _stage2_path(ds, O, checkpoints[j][1], eta, fine, t0=steps[j])):
                    rows[s] = evaluate(K)
                refined.append([fine[0], fine[-1]])
        prov["refined_steps"] = refined
        steps = sorted(rows)
    series = {name: [rows[s][i] for s in steps] for i, name in enumerate(SERIES)}
    reach = {}
    for kind in ("closure", "score"):
        acc = series[f"{kind}_accuracy"]
        reach[f"first_step_{kind}_100"] = next((s for s, a in zip(steps, acc) if a == 1.0), None)
        stays = None
        for s, a in zip(reversed(steps), reversed(acc)):
            if a != 1.0:
                break
            stays = s
        reach[f"{kind}_100_from"] = stays
    gaps = closure_gaps(cls, K_star)
    finite = gaps[np.isfinite(gaps)]
    kstar_acc = accuracies(cls, ref)
    report = {
        "claim": "C11",
        "n_test": int(len(cls.lengths)),
        "counts": cls.counts(),
        "run": prov,
        "certified": {
            "closure_sentences": int(np.sum(cls.decided_by == "closure")),
            "violations": int(np.sum(finite < -1e-9)),
            "min_gap_minus_chain": float(finite.min()) if len(finite) else float("nan"),
            "max_chain": int(cls.chain.max(initial=0)),
        },
        "kstar_limit": {"closure_accuracy": kstar_acc["closure"], "score_accuracy": kstar_acc["score"]},
        "steps": steps,
        **series,
        **reach,
        "final": {"step": steps[-1], **{k: v[-1] for k, v in series.items()}},
    }
    return _jsonable(report)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _nan_to_none(float(obj))
    return obj


def figure_generalization(report, path, *, title=None):
    """Write accuracy on unseen sentences against stage-2 steps (PNG, atomically) to ``path``.

    Left: accuracy on closure-decided and score-decided sentences and agreement with the
    K*-limit model. Right: mean attention on the deciding token x_hat. Returns ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    import io as _io

    from .io import atomic_write_bytes

    steps = np.array([np.nan if s is None else s for s in report["steps"]], dtype=np.float64)

    def col(name):
        return np.array([np.nan if v is None else v for v in report[name]], dtype=np.float64)

    fig = Figure(figsize=(11, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    n = report["counts"]
    ax1.plot(steps, col("closure_accuracy"), color="tab:blue", label=f"closure-decided (n={n['closure']})")
    ax1.plot(steps, col("score_accuracy"), color="tab:orange", label=f"score-decided (n={n['score']})")
    ax1.plot(steps, col("agreement_with_kstar"), "k:", label="agreement with K*-limit model")
    for kind, color in (("closure", "tab:blue"), ("score", "tab:orange")):
        t = report[f"{kind}_100_from"]
        if t is not None and t > 0:
            ax1.axvline(t, color=color, lw=0.8, ls="--")
            ax1.annotate(f"{kind}: 100% from t={t}", (t, 0.04 if kind == "closure" else 0.12),
                         xycoords=("data", "axes fraction"), fontsize=8, color=color,
                         xytext=(-4, 0), textcoords="offset points", ha="right")
    ax1.set(xlabel="stage-2 step t", ylabel="accuracy on unseen sentences", ylim=(-0.02, 1.02),
            title="prediction on unseen sentences")
    ax1.legend(fontsize=8, loc="upper left")
    ax2.plot(steps, col("closure_attention"), color="tab:blue", label="closure-decided")
    ax2.plot(steps, col("score_attention"), color="tab:orange", label="score-decided")
    ax2.set(xlabel="stage-2 step t", ylabel="mean attention on x_hat", ylim=(-0.02, 1.02),
            title="attention on the deciding token")
    if np.nanmax(steps, initial=0) > 1000:                           # many decades: log-like axis
        for ax in (ax1, ax2):
            ax.set_xscale("symlog", linthresh=10)
            ax.set_xlim(left=0)
    ax2.legend(fontsize=8, loc="upper left")
    if title:
        fig.suptitle(title)
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def run_generalize(ds, out_dir=None, **config):
    """Train on ``ds`` and measure C11 (:func:`generalization_report`); the ``refimpl generalize`` command.

    ``config`` : fields of :class:`GeneralizeConfig` (unknown keys raise ConfigError). With
    ``out_dir``, writes ``generalization.png``, ``generalization.json`` (the report) and
    ``config.json`` (the resolved configuration: step sizes filled in) there. Returns the
    summary dict (JSON-serializable): the report without the per-checkpoint lists, plus the
    resolved configuration.
    """
    from .io import atomic_write_text
    from .train import TrainConfig
    cfg = GeneralizeConfig.from_kwargs(**config)
    train_cfg = TrainConfig(T=cfg.T, **_train_kwargs(cfg)).resolved(ds.vocab_size)   # validates, fills steps
    cfg = dataclasses.replace(cfg, eta0=train_cfg.eta0, eta=train_cfg.eta)
    report = generalization_report(ds, None, config=cfg)
    summary = {k: v for k, v in report.items() if k not in SERIES and k != "steps"}
    summary["n_checkpoints"] = len(report["steps"])
    summary["config"] = dataclasses.asdict(cfg)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        figure_generalization(report, out / "generalization.png")
        atomic_write_text(out / "generalization.json", json.dumps(report, indent=1) + "\n")
        atomic_write_text(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=1) + "\n")
        summary["outputs"] = sorted(p.name for p in out.glob("generalization.*")) + ["config.json"]
    return summary
