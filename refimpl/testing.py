"""Hypothesis strategies for datasets, and the oracle checks of an outside implementation.

Needs Hypothesis (``pip install "refimpl[test]"``); importing this module without it raises
an ImportError that says so. Use it in your own test suite::

    from hypothesis import given
    from refimpl.testing import (assert_matches_reference, corrupted_datasets,
                                 realizable_datasets)

    def test_my_model():                      # a plain test: it runs its own search
        assert_matches_reference(my_loss_and_grads)

    @given(realizable_datasets(max_vocab=10))
    def test_my_trainer(ds): ...

    @given(corrupted_datasets(kind="order_cycle_3"))
    def test_my_validator(case):
        with pytest.raises(case.error): my_validate(case.dataset)

The strategies build valid (or invalid) data by construction: no ``.filter``, no
``assume``. A realizable dataset is made by :func:`refimpl.generate` from drawn
sizes and a drawn seed, so Hypothesis shrinks towards small vocabularies, few
short sentences and seed 0. A corruption adds exactly one defect whose expected
exception class and sentence index are known in advance. Bounds beyond what the
generator allows are capped when the strategy is built (documented per parameter);
contradictory bounds raise ``hypothesis.errors.InvalidArgument`` then, never during a draw.

:func:`assert_matches_reference` and :func:`assert_step_matches_reference` search for an
input where an implementation disagrees with the reference (:mod:`refimpl.oracle` holds
the comparison, the tolerance model and the diagnosis).
"""
from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import numpy as np

try:
    from hypothesis import HealthCheck, Phase, Verbosity, assume, given, settings
    from hypothesis import seed as _seed
    from hypothesis import strategies as st
    from hypothesis.errors import Flaky, InvalidArgument
except ImportError as _err:                      # pragma: no cover - exercised in a subprocess
    raise ModuleNotFoundError(
        'refimpl.testing needs Hypothesis, which a plain "pip install refimpl" does not install: '
        'pip install "refimpl[test]" (the test extra: pytest and hypothesis)', name="hypothesis") from _err

from . import errors, oracle
from .data import RealizableDataset, induced_relations
from .generator import _MAX_INT, _MAX_STORED_M, generate

__all__ = ["realizable_datasets", "corrupted_datasets", "CorruptedCase", "CORRUPTION_KINDS",
           "oracle_cases", "assert_matches_reference", "assert_step_matches_reference"]

_ORDERS = ("induced", "supplied", "either")


def _bounds(name, lo, hi, floor, ceiling):
    """(lo, hi) with lo raised to ``floor`` and hi lowered to ``ceiling``; InvalidArgument
    when they are not integers or lo > hi after capping."""
    for v, what in ((lo, f"min_{name}"), (hi, f"max_{name}")):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise InvalidArgument(f"{what} must be an integer, got {v!r}")
    lo, hi = max(int(lo), floor), min(int(hi), ceiling)
    if lo > hi:
        raise InvalidArgument(f"min_{name} > max_{name} after capping to {floor}..{ceiling}: {lo} > {hi}")
    return lo, hi


def realizable_datasets(min_vocab=2, max_vocab=12, min_sentences=1, max_sentences=40,
                        min_len=1, max_len=6, partial_collocation=True, orders="induced"):
    """Strategy for a valid :class:`~refimpl.data.RealizableDataset` (made by :func:`refimpl.generate`).

    Parameters
    ----------
    min_vocab, max_vocab : int
        Bounds of M, capped to 2..2^62 (the generator's range); with ``orders="supplied"``
        max_vocab is also capped to 200 (stored orders hold every comparable pair, M <= 200).
    min_sentences, max_sentences : int
        Bounds of N, capped to 1..2^62.
    min_len, max_len : int
        Bounds of the sentence lengths, capped to 1..2^62; each dataset draws its own
        length range inside them.
    partial_collocation : bool
        Let |C| be drawn below M.
    orders : "induced", "supplied" or "either"
        "supplied" stores the generating orders (``store_orders``); "either" draws it for
        datasets with M <= 200 and uses induced orders above. Orders are drawn of
        dimension 1 (total) to 3.

    Returns
    -------
    SearchStrategy of RealizableDataset

    Raises
    ------
    hypothesis.errors.InvalidArgument
        When the strategy is built: a bound that is not an integer, min > max after capping,
        an unknown ``orders``.

    Examples
    --------
    >>> import refimpl as ri
    >>> from hypothesis import given
    >>> @given(realizable_datasets(max_vocab=300, orders="either"))
    ... def test_validates(ds):
    ...     ri.validate(ds)
    """
    if orders not in _ORDERS:
        raise InvalidArgument(f"orders must be one of {_ORDERS}, got {orders!r}")
    v_hi_cap = _MAX_STORED_M if orders == "supplied" else _MAX_INT
    m_lo, m_hi = _bounds("vocab", min_vocab, max_vocab, 2, v_hi_cap)
    n_lo, n_hi = _bounds("sentences", min_sentences, max_sentences, 1, _MAX_INT)
    l_lo, l_hi = _bounds("len", min_len, max_len, 1, _MAX_INT)
    return _realizable(m_lo, m_hi, n_lo, n_hi, l_lo, l_hi, bool(partial_collocation), orders)


@st.composite
def _realizable(draw, m_lo, m_hi, n_lo, n_hi, l_lo, l_hi, partial_collocation, orders):
    M = draw(st.integers(m_lo, m_hi), label="M")
    N = draw(st.integers(n_lo, n_hi), label="N")
    lo = draw(st.integers(l_lo, l_hi), label="min_len")
    hi = draw(st.integers(lo, l_hi), label="max_len")
    n_c = draw(st.integers(1, M), label="n_colloc") if partial_collocation else M
    dim = draw(st.integers(1, 3), label="order_dim")
    store = {"induced": False, "supplied": True}.get(orders)
    if store is None:
        store = draw(st.booleans(), label="store_orders") if M <= _MAX_STORED_M else False
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


def corrupted_datasets(kind=None, **bounds):
    """Strategy for :class:`CorruptedCase`: a realizable dataset with one defect.

    Parameters
    ----------
    kind : str or None
        One of :data:`CORRUPTION_KINDS` (drawn when None).
    **bounds
        Passed to :func:`realizable_datasets` (capped as there); ``orders`` defaults to
        "induced".

    Returns
    -------
    SearchStrategy of CorruptedCase
        Validation of ``case.dataset`` must raise ``case.error`` whose ``.sentence`` equals
        ``case.sentence`` (for cycles: the sentence that closes the cycle, the largest index
        among those inducing it).

    Raises
    ------
    ValueError
        An unknown ``kind`` (when the strategy is built).
    """
    if kind is not None and kind not in CORRUPTION_KINDS:
        raise ValueError(f"unknown corruption kind {kind!r}; expected one of {CORRUPTION_KINDS}")
    bounds.setdefault("orders", "induced")
    bounds.setdefault("min_vocab", 2)
    return _corrupted(kind, realizable_datasets(**bounds))


@st.composite
def _corrupted(draw, kind, base):
    if kind is None:
        kind = draw(st.sampled_from(CORRUPTION_KINDS), label="kind")
    ds = draw(base, label="base")
    dataset, error, sentence = _corrupt(ds, kind, _Drawer(draw))
    return CorruptedCase(dataset, kind, error, sentence)


class _Drawer:
    """Adapter so _corrupt can call ``data.draw(strategy, label=...)`` inside a composite."""

    def __init__(self, draw):
        self._draw = draw

    def draw(self, strategy, label=None):
        return self._draw(strategy, label=label)


# ============================================================================ the oracle
# Sizes of the drawn cases: small enough that a case costs milliseconds and a failure
# shrinks to something readable, large enough for every planted bug of tests/test_oracle_check.py.
_CASE_VOCAB, _CASE_SENTENCES, _CASE_LEN, _CASE_EXTRA_D = 8, 12, 6, 3


def oracle_cases(regime, stage=None):
    """Strategy for :class:`refimpl.oracle.Case`: a small valid dataset, an embedding and weights.

    Parameters
    ----------
    regime : "moderate" or "saturated"
        "moderate": O and K in token coordinates are s N(0, 1) with s in [0.1, 3] (attention
        and softmax far from saturation). "saturated": O is the stage-1 output after T0 in
        {2000, 1000, 200} steps (logit margins in the tens to hundreds) and K = c K* with
        c in {35, 20, 60} or [10, 100] (every attention gap at least c), K* = ``w_kq_star(ds)``.
    stage : None, 1 or 2
        For step checks: also draw ``eta`` (the trainer's default 0.2/sqrt(d) for stage 1,
        0.05/sqrt(d) for stage 2, times 1, 0.1 or 10); cases whose reference gradient of that
        stage is zero or below the float64 range (no NGD direction) are rejected.

    Returns
    -------
    SearchStrategy of refimpl.oracle.Case
        M in 2..8, N in 1..12, lengths 1..6; E = I (d = M) or random orthonormal columns with
        d in M..M+3; W = E O E^T, E K E^T.

    Examples
    --------
    >>> import refimpl as ri
    >>> from hypothesis import given
    >>> @given(oracle_cases("saturated"))
    ... def test_case(case):
    ...     loss, g_ov, g_kq = ri.loss_and_grads(case.dataset, case.W_ov, case.W_kq, case.embeddings)
    """
    if regime not in oracle.REGIMES:
        raise InvalidArgument(f"regime must be one of {oracle.REGIMES}, got {regime!r}")
    if stage not in (None, 1, 2):
        raise InvalidArgument(f"stage must be None, 1 or 2, got {stage!r}")
    return _oracle_case(regime, stage)


@st.composite
def _oracle_case(draw, regime, stage):
    ds = draw(realizable_datasets(max_vocab=_CASE_VOCAB, max_sentences=_CASE_SENTENCES,
                                  max_len=_CASE_LEN), label="dataset")
    M = ds.vocab_size
    if draw(st.booleans(), label="random orthonormal E"):
        d = M + draw(st.integers(0, _CASE_EXTRA_D), label="d - M")
        E = oracle.orthonormal(d, M, draw(st.integers(0, 2**16), label="E seed"))
    else:
        E = np.eye(M)
    if regime == "moderate":
        o_scale = draw(st.floats(0.1, 3.0), label="O scale")
        k_scale = draw(st.floats(0.1, 3.0), label="K scale")
        case = oracle.moderate_case(ds, E, o_scale, k_scale, draw(st.integers(0, 2**16), label="weights seed"))
    else:
        T0 = draw(st.sampled_from([2000, 1000, 200]), label="T0")
        c = draw(st.one_of(st.sampled_from([35.0, 20.0, 60.0]), st.floats(10.0, 100.0)), label="c")
        case = oracle.saturated_case(ds, E, T0, c)
    if stage is not None:
        base = (0.2 if stage == 1 else 0.05) / np.sqrt(case.d)
        eta = base * draw(st.sampled_from([1.0, 0.1, 10.0]), label="eta factor")
        case = replace(case, eta=float(eta))
        assume(oracle.step_reference(case, stage)[2] is not None)
    return case


class _Found(Exception):
    """Raised inside the search so that Hypothesis shrinks the failing case."""

    def __init__(self, comparison):
        super().__init__("mismatch")
        self.comparison = comparison


def _search(run_one, strategy, max_examples, seed):
    """The first failing comparison Hypothesis finds and shrinks, or None."""
    @_seed(seed)
    @settings(max_examples=max_examples, database=None, derandomize=False, deadline=None,
              phases=(Phase.explicit, Phase.generate, Phase.shrink), report_multiple_bugs=False,
              verbosity=Verbosity.quiet, print_blob=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                     HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(strategy)
    def search(case):
        comparison = run_one(case)
        if not comparison.ok:
            raise _Found(comparison)

    try:
        search()
    except _Found as found:
        return found.comparison
    except Flaky as err:
        raise AssertionError(f"the implementation under test gave different results on the same inputs "
                             f"(Hypothesis could not reproduce a failure): {err}") from err
    return None


def _regimes(regimes):
    regimes = (regimes,) if isinstance(regimes, str) else tuple(regimes)
    bad = [r for r in regimes if r not in oracle.REGIMES]
    if bad or not regimes:
        raise ValueError(f"regimes must be a non-empty sequence of {oracle.REGIMES}, got {regimes!r}")
    return regimes


def assert_matches_reference(fn, *, regimes=("moderate", "saturated"), max_examples=100,
                             rtol=oracle.DEFAULT_RTOL, seed=0):
    """Search for an input where ``fn`` disagrees with ``refimpl.loss_and_grads``; raise if found.

    Parameters
    ----------
    fn : callable ``fn(W_ov, W_kq, arrays) -> (loss, grad_W_ov, grad_W_kq)``
        Your implementation, in embedding space: ``W_ov``, ``W_kq`` float64 (d, d) (copies),
        ``arrays`` a :class:`~refimpl.data.DatasetArrays` (``ds.to_arrays()``: ``tokens``
        (N, Lmax) padded with M, ``mask``, ``lengths``, ``queries``, ``optimal``,
        ``next_tokens``, ``colloc_tokens``, ``colloc_next``, ``vocab_size``) with
        ``embeddings`` E (d, M) set. Return the mean loss (a float) and its gradients
        (float arrays (d, d); a tensor as ``t.detach().cpu().numpy()``).
    regimes : sequence of "moderate", "saturated"
        Weight regimes searched in this order (:func:`oracle_cases`); each one is a separate
        Hypothesis search, and the first failure stops the check.
    max_examples : int
        Cases drawn per regime (each costs one call of ``fn`` and one of the reference, a
        few milliseconds for the reference at these sizes).
    rtol : float
        Relative tolerance (the tolerance model of :mod:`refimpl.oracle`: plus the rounding
        every float64 evaluation carries, and an absolute 2.2e-308 where the reference
        underflows to 0).
    seed : int
        Seed of the search: the same seed draws the same cases.

    Returns
    -------
    None
        When no mismatch is found.

    Raises
    ------
    refimpl.oracle.OracleMismatch (an AssertionError)
        With the shrunk failing case (``err.case``: dataset, weights, embeddings, arrays), the
        relative error of each output, and a diagnosis (``err.diagnosis.cause``): transposed
        W_kq or W_ov, missing 1/N, padding read as a token, cancellation at saturation,
        token-coordinate gradients, E ignored, swapped outputs, an exception of ``fn``.

    Notes
    -----
    Call it from a plain test function, not from inside a ``@given`` test: it runs its own
    Hypothesis search (seeded, no example database, shrinking on), one per regime.

    Examples
    --------
    >>> def test_my_model():
    ...     assert_matches_reference(my_loss_and_grads, max_examples=50)
    """
    passed = []
    for regime in _regimes(regimes):
        failure = _search(lambda case: oracle.compare(fn, case, rtol), oracle_cases(regime), max_examples, seed)
        if failure is not None:
            diagnosis = oracle.diagnose(fn, failure, rtol, tuple(passed))
            raise oracle.OracleMismatch(failure, diagnosis, tuple(passed), "fn") from None
        passed.append(regime)


def assert_step_matches_reference(step_fn, *, stage, regimes=("moderate", "saturated"), max_examples=100,
                                  rtol=oracle.DEFAULT_RTOL, seed=0):
    """Search for an input where one NGD step of ``step_fn`` disagrees with the reference step.

    Parameters
    ----------
    step_fn : callable ``step_fn(W_ov, W_kq, arrays, eta) -> W_new`` (float (d, d))
        One step of Algorithm 1 in embedding space (``arrays`` as for
        :func:`assert_matches_reference`). Stage 1 returns the new W_ov,
        ``W_ov - eta G/||G||_F`` with G the gradient of the collocation loss
        L0(W_ov) = (1/|C|) sum_{x in C} loss(W_ov; [x], n(x)) (``arrays.colloc_tokens``,
        ``arrays.colloc_next``; W_kq is not used). Stage 2 returns the new W_kq,
        ``W_kq - eta G/||G||_F`` with G = dL/dW_kq on the sentences, W_ov fixed.
    stage : 1 or 2
    regimes, max_examples, rtol, seed
        As for :func:`assert_matches_reference`; the step is compared as
        ``||W_new - W_ref||_F <= (rtol + kappa) eta + 4 eps (||W||_F + eta)``.

    Returns
    -------
    None
        When no mismatch is found.

    Raises
    ------
    refimpl.oracle.OracleMismatch (an AssertionError)
        With the shrunk case and a diagnosis: the step returned instead of the iterate,
        ascent, not normalized, another norm, the sentence loss in stage 1, transposed W_kq,
        cancellation at saturation.

    Examples
    --------
    >>> def test_my_stage2_step():
    ...     assert_step_matches_reference(my_step, stage=2, max_examples=50)
    """
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")
    passed = []
    for regime in _regimes(regimes):
        failure = _search(lambda case: oracle.compare_step(step_fn, case, stage, rtol),
                          oracle_cases(regime, stage), max_examples, seed)
        if failure is not None:
            diagnosis = oracle.diagnose_step(step_fn, failure, rtol, tuple(passed))
            raise oracle.OracleMismatch(failure, diagnosis, tuple(passed), f"step_fn (stage {stage})") from None
        passed.append(regime)
