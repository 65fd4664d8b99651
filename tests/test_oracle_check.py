"""The oracle for outside implementations: to_arrays, token coordinates, x* in files,
assert_matches_reference / assert_step_matches_reference and their diagnoses.

The tests play the outside user: ``user_model`` below is a NumPy implementation of the
model written from docs/model.md (sections 1-3 and 5, embedding space, the stable forms),
with switches that plant the bugs users have actually made. Each search uses a small
``max_examples``: every planted bug shows on almost any drawn case (the first few), so a
small search finds it and the time goes into shrinking; the correct implementation is
held to both regimes with 25 cases each, one to three seconds per test.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.errors import InvalidArgument

import refimpl as ri
import refimpl.data
import refimpl.io
from refimpl import errors, oracle
from refimpl.testing import assert_matches_reference, assert_step_matches_reference, realizable_datasets

EXAMPLES = 25      # per regime; see the module docstring


# ============================================================================ the user's model
def user_model(W_ov, W_kq, a, *, transpose_kq=False, sum_not_mean=False, pad_minus_one=False,
               raw_tokens=False, naive_attention=False, naive_softmax=False):
    """(loss, dL/dW_ov, dL/dW_kq) of docs/model.md in embedding space; the keywords plant bugs."""
    E = a.embeddings
    N, L = a.tokens.shape
    rows = np.arange(N)
    if raw_tokens:                           # indexes the padded tokens as they are
        X, mask = E.T[a.tokens], np.ones_like(a.mask)
    elif pad_minus_one:                      # -1 padding, read as token M-1, no mask
        X, mask = E.T[np.where(a.mask, a.tokens, -1)], np.ones_like(a.mask)
    else:
        X, mask = E.T[np.where(a.mask, a.tokens, 0)], a.mask
    Q = E.T[a.queries]
    K = W_kq.T if transpose_kq else W_kq
    s = np.where(mask, np.einsum("nld,de,ne->nl", X, K, Q), -np.inf)   # e_x^T W_kq e_q
    u = np.exp(s - s.max(axis=1, keepdims=True))
    phi = u / u.sum(axis=1, keepdims=True)
    h = np.einsum("nl,nld->nd", phi, X)
    z = h @ W_ov.T @ E                                                   # E^T W_ov h
    y = a.next_tokens
    if naive_softmax:                        # log-sum-exp minus z_y, and p_y - 1
        zmax = z.max(axis=1)
        lse = zmax + np.log(np.exp(z - zmax[:, None]).sum(axis=1))
        loss = lse - z[rows, y]
        r = np.exp(z - lse[:, None])
        r[rows, y] -= 1.0
    else:                                    # log1p(sum_{v != y} e^{z_v - z_y}), r_y = -sum p_v
        t = z - z[rows, y][:, None]
        t[rows, y] = -np.inf
        tmax = t.max(axis=1)
        loss = np.logaddexp(0.0, tmax + np.log(np.exp(t - tmax[:, None]).sum(axis=1)))
        r = np.exp(t - loss[:, None])
        r[rows, y] = -(r.sum(axis=1) - r[rows, y])
    Er = r @ E.T
    b = Er @ W_ov                                                        # W_ov^T E r
    if naive_attention:                      # phi_l (g_l - gbar)
        g = np.einsum("nld,nd->nl", X, b)
        a_s = phi * (g - (phi * g).sum(axis=1, keepdims=True))
    else:                                    # phi_l sum_m phi_m (e_{x_l} - e_{x_m})^T b
        a_s = phi * np.einsum("nm,nlm->nl", phi, np.einsum("nlmd,nd->nlm", X[:, :, None] - X[:, None], b))
    G_ov = Er.T @ h
    G_kq = np.einsum("nld,nl->nd", X, a_s).T @ Q
    if transpose_kq:
        G_kq = G_kq.T
    n = 1 if sum_not_mean else N
    return loss.sum() / n, G_ov / n, G_kq / n


def planted(**bug):
    return lambda W_ov, W_kq, a: user_model(W_ov, W_kq, a, **bug)


# ============================================================================ assert_matches_reference
def test_a_correct_implementation_passes_both_regimes():
    assert_matches_reference(user_model, max_examples=EXAMPLES)


@pytest.mark.parametrize("bug, regimes, cause, failing, phrase", [
    (dict(transpose_kq=True), ("moderate",), "transposed W_kq", None, "W_kq.T"),
    (dict(sum_not_mean=True), ("moderate",), "missing 1/N", None, "a sum over the sentences"),
    (dict(pad_minus_one=True), ("moderate",), "padding read as a token", None, "hold token"),
    (dict(raw_tokens=True), ("moderate",), "padding read as a token", None, "IndexError"),
    (dict(naive_attention=True), ("moderate", "saturated"), "cancellation at saturation", ["grad_W_kq"],
     "phi_l (g_l - sum_m phi_m g_m)"),
    (dict(naive_softmax=True), ("moderate", "saturated"), "cancellation at saturation", None, "log1p"),
], ids=["transposed W_kq", "missing 1/N", "pad -1 unmasked", "pad M indexed", "phi (g - gbar)", "lse - z_y"])
def test_planted_bug_is_caught_with_its_diagnosis(bug, regimes, cause, failing, phrase):
    with pytest.raises(AssertionError) as info:
        assert_matches_reference(planted(**bug), regimes=regimes, max_examples=EXAMPLES)
    err = info.value
    assert isinstance(err, oracle.OracleMismatch)
    assert err.diagnosis.cause == cause, str(err)
    assert phrase in str(err), str(err)
    assert err.case.regime == regimes[-1]          # the saturated bugs pass the moderate regime
    if failing is not None:
        assert err.comparison.failing == failing, str(err)
    # the example is shrunk: at most a handful of short sentences (every bug shows on two)
    assert err.case.dataset.n_sentences <= 3 and err.case.dataset.max_len <= 3, str(err)
    ri.validate(err.case.dataset)                  # the attached case is usable as it is


def test_cancellation_diagnosis_shows_the_error_growing_with_the_weights():
    with pytest.raises(oracle.OracleMismatch) as info:
        assert_matches_reference(planted(naive_attention=True), max_examples=EXAMPLES)
    text = str(info.value)
    assert "passed: moderate" in text and "fn passed the moderate regime" in text
    assert "weights x" in text and "(* = outside the tolerance)" in text


def test_a_mismatch_names_the_outputs_and_their_errors():
    with pytest.raises(oracle.OracleMismatch) as info:
        assert_matches_reference(planted(transpose_kq=True), regimes=("moderate",), max_examples=EXAMPLES)
    err = info.value
    text = str(err)
    for name in oracle.OUTPUTS:
        assert name in text
    assert "Failing example (shrunk)" in text and "sentences: [[" in text
    assert "grad_W_kq" in err.comparison.failing
    loss, g_ov, g_kq = ri.loss_and_grads(err.case.dataset, err.case.W_ov, err.case.W_kq, err.case.embeddings)
    # the attached reference is the library's, bit for bit (same function, same inputs)
    assert loss == err.comparison.reference.loss and np.array_equal(g_kq, err.comparison.reference.grad_W_kq)


def test_exactly_zero_gradient_and_underflowing_loss_are_accepted():
    """One-token sentences: dL/dW_kq is exactly 0 and phi (g - gbar) leaves rounding noise
    (the structural floor accepts it); at margin ~1000 the loss and dL/dW_ov underflow to 0 and
    any |value| <= 2.2e-308 is accepted (a relative check would divide by 0)."""
    ds = ri.RealizableDataset(3, {0: 1, 1: 2, 2: 0}, [[0, 0, 0], [1], [2, 2]], [1, 2, 0])
    rng = np.random.default_rng(0)
    W_ov, W_kq = rng.standard_normal((2, 3, 3))
    comp = oracle.check(planted(naive_attention=True), ds, W_ov, W_kq)
    assert comp.ok, comp.table()
    assert comp.reference.grad_W_kq.max() == comp.reference.grad_W_kq.min() == 0.0
    big = np.zeros((3, 3))
    big[[1, 2, 0], [0, 1, 2]] = 1000.0               # O[n(x), x] = 1000: margins 1000
    comp = oracle.check(user_model, ds, big, W_kq)
    assert comp.ok and comp.reference.loss == 0.0, comp.table()


def test_padding_diagnosis_on_a_given_case():
    """oracle.check at one point, then the diagnosis: -1 padding matches the reference on
    sentences padded with token M-1."""
    ds = ri.RealizableDataset(4, {0: 1, 1: 2, 2: 3, 3: 0}, [[0, 1, 2], [1]], [3, 2])
    rng = np.random.default_rng(1)
    W_ov, W_kq = rng.standard_normal((2, 4, 4))
    fn = planted(pad_minus_one=True)
    comp = oracle.check(fn, ds, W_ov, W_kq)
    assert not comp.ok
    diag = oracle.diagnose(fn, comp)
    assert diag.cause == "padding read as a token" and "token 3" in diag.explanation


# ============================================================================ steps
def user_step(W_ov, W_kq, a, eta, *, stage, bug=None):
    """One NGD step of Algorithm 1 in embedding space, from user_model; ``bug`` plants one."""
    if stage == 1 and bug != "sentence loss":      # L0: the one-token sentences [x] -> n(x)
        xs, n = a.colloc_tokens, len(a.colloc_tokens)
        a = replace(a, tokens=xs[:, None], mask=np.ones((n, 1), dtype=bool), lengths=np.ones(n, dtype=np.int64),
                    queries=xs, next_tokens=a.colloc_next)
    G = user_model(W_ov, W_kq, a)[1 if stage == 1 else 2]
    W = W_ov if stage == 1 else W_kq
    if bug == "not normalized":
        return W - eta * G
    G = G / np.abs(G).max()          # at saturation G ~ 1e-190: its squares would underflow
    D = G / np.linalg.norm(G)
    return W + eta * D if bug == "ascent" else W - eta * D


@pytest.mark.parametrize("stage", [1, 2])
def test_a_correct_step_passes(stage):
    assert_step_matches_reference(lambda *args: user_step(*args, stage=stage), stage=stage, max_examples=EXAMPLES)


@pytest.mark.parametrize("stage, bug", [(2, "not normalized"), (2, "ascent"), (1, "sentence loss")])
def test_a_planted_step_bug_is_diagnosed(stage, bug):
    expected = {"not normalized": "not normalized", "ascent": "ascent", "sentence loss": "wrong loss"}[bug]
    with pytest.raises(oracle.OracleMismatch) as info:
        assert_step_matches_reference(lambda *args: user_step(*args, stage=stage, bug=bug), stage=stage,
                                      regimes=("moderate",), max_examples=EXAMPLES)
    assert info.value.diagnosis.cause == expected, str(info.value)


# ============================================================================ to_arrays
def test_to_arrays_pads_with_m_and_an_unmasked_read_raises():
    ds = ri.RealizableDataset(4, {0: 1, 1: 2, 2: 3, 3: 0}, [[0, 1, 2], [3], [1, 1]], [3, 0, 2])
    a = ds.to_arrays()
    assert a.pad == 4 and a.tokens.dtype == np.int64 and a.tokens.shape == (3, 3)
    assert a.tokens.tolist() == [[0, 1, 2], [3, 4, 4], [1, 1, 4]]
    assert a.mask.tolist() == [[True] * 3, [True, False, False], [True, True, False]]
    assert a.lengths.tolist() == [3, 1, 2] and a.queries.tolist() == [2, 3, 1]
    assert a.optimal.tolist() == ds.optimal.tolist() == [2, 3, 1]
    assert a.next_tokens.tolist() == [3, 0, 2] and a["vocab_size"] == 4 and a.embeddings is None
    assert a.colloc_tokens.tolist() == [0, 1, 2, 3] and a.colloc_next.tolist() == [1, 2, 3, 0]
    with pytest.raises(IndexError):
        np.eye(4)[a.tokens]                        # the -1 of ds.tokens would read token 3 silently
    assert np.eye(4)[ds.tokens].shape == (3, 3, 4)
    assert set(a.keys()) >= {"tokens", "mask", "lengths", "queries", "optimal", "next_tokens"}
    assert dict(a.items())["mask"] is a.mask
    a.tokens[0, 0] = 9                             # fresh copies: the dataset is untouched
    assert ds.to_arrays().tokens[0, 0] == 0 and ds.tokens[0, 0] == 0


def test_to_arrays_pad_argument_and_errors():
    ds = ri.RealizableDataset(4, {0: 1, 1: 2, 2: 3, 3: 0}, [[0, 1, 2], [3]], [3, 0])
    assert ds.to_arrays(pad=-1).tokens[1].tolist() == [3, -1, -1]
    assert ds.to_arrays(pad=np.int32(7)).pad == 7
    for bad in (1.5, "M", True, 2**63):
        with pytest.raises(errors.InputError):
            ds.to_arrays(pad=bad)
    amb = ri.RealizableDataset(3, {0: 1, 1: 1}, [[0, 1]], [1])
    with pytest.raises(errors.AmbiguousOptimalTokenError):
        amb.to_arrays()


# ============================================================================ optimal in files
def test_files_carry_optimal_exactly_when_this_version_reads_it_back(tmp_path):
    """The reader of this version (refimpl.io) decides: a file never holds a field it refuses."""
    ds = ri.generate(6, 10, seed=2)
    assert ("optimal" in ds.to_dict()) == ("optimal" in refimpl.io._FIELDS)
    ds.save(tmp_path / "d.json")
    back = ri.load_dataset(tmp_path / "d.json")
    assert back == ds and back.optimal.tolist() == ds.optimal.tolist()


def test_optimal_is_written_for_valid_datasets_only(tmp_path):
    ds = ri.generate(6, 10, seed=2)                # not validated yet: to_dict validates it
    obj = ds.to_dict()
    assert obj["optimal"] == ds.optimal.tolist() and list(obj)[-2:] == ["next_tokens", "optimal"]
    assert obj["format"] == refimpl.data.FORMAT_TAG
    ds.save(tmp_path / "d.json")
    text = (tmp_path / "d.json").read_text()
    assert json.loads(text) == obj and text.rstrip().splitlines()[-2].startswith(' "optimal": [')
    bad = ri.RealizableDataset(3, {0: 1, 1: 1}, [[0, 1]], [1])     # ambiguous: still writable
    assert "optimal" not in bad.to_dict() and "optimal" not in json.loads(bad.to_json_text())
    assert ri.load_dataset(tmp_path / "d.json") == ds             # read back, field checked


def test_a_wrong_optimal_field_is_refused_on_reading(tmp_path, capsys):
    """The reader checks the stored x* against validation: a file edited by hand (or written
    by another tool with another idea of x*) is refused, naming the sentence and both tokens."""
    ds = ri.generate(8, 30, seed=3)
    obj = ds.to_dict()
    i = 2
    obj["optimal"][i] = (obj["optimal"][i] + 1) % 8
    path = tmp_path / "d.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(ri.OptimalTokenMismatchError) as info:
        ri.load_dataset(path)
    assert info.value.sentence == i and info.value.witness["computed"] == ds.optimal[i]
    assert ri.load_dataset(path, check=False).n_sentences == 30        # no check without validation
    obj["optimal"] = obj["optimal"][:-1]
    path.write_text(json.dumps(obj))
    from refimpl.cli import main
    assert main(["validate", str(path)]) == 2
    assert "30 sentences but 29 optimal tokens" in capsys.readouterr().err


# ============================================================================ token coordinates
def test_from_token_coords_inverts_to_token_coords_for_d_equal_m():
    rng = np.random.default_rng(3)
    E = oracle.orthonormal(6, 6, 4)
    W = rng.standard_normal((6, 6))
    # two products with an orthogonal matrix each way: a few ulp of ||W|| per entry
    np.testing.assert_allclose(ri.from_token_coords(ri.to_token_coords(W, E), E), W, rtol=0, atol=1e-14 * 6)
    K = rng.standard_normal((6, 6))
    np.testing.assert_allclose(ri.to_token_coords(ri.from_token_coords(K, E), E), K, rtol=0, atol=1e-14 * 6)
    assert ri.from_token_coords(K, np.eye(6)).tolist() == K.tolist()      # E = I: exactly K


def test_from_token_coords_is_the_minimal_norm_preimage_for_d_above_m():
    rng = np.random.default_rng(5)
    d, M = 9, 4
    E = oracle.orthonormal(d, M, 6)
    K = rng.standard_normal((M, M))
    W = ri.from_token_coords(K, E)
    P = E @ E.T
    np.testing.assert_allclose(ri.to_token_coords(W, E), K, rtol=0, atol=1e-14)   # a preimage
    np.testing.assert_allclose(P @ W @ P, W, rtol=0, atol=1e-14)                   # zero outside range(E)
    for _ in range(5):                 # any other preimage W + N with E^T N E = 0 is longer
        A, B = rng.standard_normal((2, d, d))
        N = (np.eye(d) - P) @ A + P @ B @ (np.eye(d) - P)
        other = W + N
        np.testing.assert_allclose(ri.to_token_coords(other, E), K, rtol=0, atol=1e-13)
        assert np.linalg.norm(W) < np.linalg.norm(other)
        # Pythagoras: ||other||^2 = ||W||^2 + ||N||^2 (N is orthogonal to W), to rounding
        assert np.linalg.norm(other) ** 2 == pytest.approx(np.linalg.norm(W) ** 2 + np.linalg.norm(N) ** 2,
                                                           rel=1e-12)


def test_from_token_coords_checks_its_conditions():
    K = np.zeros((3, 3))
    with pytest.raises(errors.NonOrthonormalEmbeddingError):
        ri.from_token_coords(K, 2.0 * np.eye(3))
    with pytest.raises(errors.NonOrthonormalEmbeddingError):
        ri.from_token_coords(K, np.ones((2, 3)))          # d < M cannot be orthonormal
    with pytest.raises(errors.ShapeError):
        ri.from_token_coords(np.zeros((2, 2)), np.eye(3))


# ============================================================================ refimpl.testing itself
def test_testing_without_hypothesis_names_the_test_extra():
    code = textwrap.dedent("""
        import sys
        sys.modules["hypothesis"] = None
        import numpy as np
        import refimpl as ri
        from refimpl import oracle                      # no Hypothesis needed here
        ds = ri.generate(3, 4, seed=0)
        f = lambda a, b, arr: ri.loss_and_grads(ds, a, b)
        assert oracle.check(f, ds, np.eye(3), np.eye(3)).ok
        try:
            import refimpl.testing
        except ImportError as err:
            print(type(err).__name__, err)
        else:
            print("imported")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ModuleNotFoundError") and 'pip install "refimpl[test]"' in out.stdout, out.stdout


@settings(max_examples=5, database=None)
@given(realizable_datasets(min_vocab=250, max_vocab=300, max_sentences=3, orders="either"))
def test_either_orders_above_200_tokens_are_induced_instead_of_raising(ds):
    assert 250 <= ds.vocab_size <= 300 and ds.orders is None      # stored orders need M <= 200


@settings(max_examples=5, database=None)
@given(realizable_datasets(min_vocab=150, max_vocab=300, max_sentences=3, orders="supplied"))
def test_supplied_orders_cap_the_vocabulary_at_200(ds):
    assert 150 <= ds.vocab_size <= 200 and ds.orders is not None


@settings(max_examples=5, database=None)
@given(realizable_datasets(min_vocab=-5, max_vocab=2, min_sentences=0, max_sentences=2, min_len=0, max_len=1))
def test_lower_bounds_below_the_generator_range_are_raised_to_it(ds):
    assert ds.vocab_size == 2 and 1 <= ds.n_sentences <= 2 and ds.max_len == 1


def test_contradictory_bounds_fail_when_the_strategy_is_built():
    with pytest.raises(InvalidArgument):
        realizable_datasets(min_vocab=300, max_vocab=400, orders="supplied")   # M <= 200 cannot hold
    with pytest.raises(InvalidArgument):
        realizable_datasets(orders="sometimes")
    with pytest.raises(InvalidArgument):
        realizable_datasets(min_len=5, max_len=2)
