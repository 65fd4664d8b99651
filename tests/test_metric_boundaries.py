"""The trajectory metrics (refimpl.trajectory) check their arrays before the compiled loops of
refimpl.kernels_metrics, which index without bounds checks: a wrong shape is a ShapeError and a
NaN where finite numbers are required is a NonFiniteError, each naming the argument; valid
input gives the same values as independent NumPy computations."""
from __future__ import annotations

import math

import numpy as np
import pytest

import refimpl as ri
from refimpl import kernels
from refimpl.errors import NonFiniteError, SentenceInputError, ShapeError
from refimpl.maxmargin import stage2_floor, w_kq_star, w_ov_star
from refimpl.trajectory import (ExcessLoss, LogitAccuracy, attention_constraints, attention_margin,
                                stage1_metrics, stage1_metrics_np, stage2_metrics)

M = 20


@pytest.fixture(scope="module")
def ds():
    return ri.generate(vocab_size=M, n_sentences=50, seed=4)


@pytest.fixture(scope="module")
def weights(ds):
    """Random O, O0, K, K0 (M, M), the unit max-margin directions and a trained-like fixed O."""
    rng = np.random.default_rng(0)
    O, O0, K, K0 = rng.standard_normal((4, M, M))
    O_star, K_star = w_ov_star(ds)[0], w_kq_star(ds)[0]
    return dict(O=O, O0=O0, K=K, K0=K0, O_hat=O_star / np.linalg.norm(O_star),
                K_hat=K_star / np.linalg.norm(K_star), O_fixed=10.0 * O_star / np.linalg.norm(O_star))


@pytest.fixture(scope="module")
def floor_data(ds, weights):
    floor, _, vertex, details = stage2_floor(ds, weights["O_fixed"], return_details=True)
    return floor, vertex, details["log_loss"]


@pytest.fixture(scope="module")
def excess(ds, weights, floor_data):
    return ExcessLoss(ds, weights["O_fixed"], *floor_data)


# (M, M) is required; each of these is refused before any compiled loop reads it
BAD_SHAPES = {
    "3x3": np.ones((3, 3)),
    "1-D": np.ones(M),
    "3-D": np.ones((2, M, M)),
    "M x M+1": np.ones((M, M + 1)),
    "strings": np.full((M, M), "x"),
}


def _with_nan(A):
    A = np.array(A, dtype=np.float64)
    A[1, 2] = np.nan
    return A


def _named(name):
    """The message starts with the argument's name (then a space or a parenthesis)."""
    return rf"^{name}[ (]"


# ============================================================ dense NumPy references
def _dense_logits(ds, O, K):
    """z_i = sum_l phi_il O[:, x_il], phi_i = softmax_l K[x_il, q_i], sentence by sentence."""
    z = np.empty((ds.n_sentences, M))
    for i in range(ds.n_sentences):
        x = ds.flat_tokens[ds.offsets[i]:ds.offsets[i + 1]]
        s = K[x, x[-1]]
        phi = np.exp(s - s.max())
        phi /= phi.sum()
        z[i] = O[:, x] @ phi
    return z


def _dense_accuracy(z, y):
    """Fraction of rows whose entry y is strictly the largest."""
    rows = np.arange(len(y))
    others = z.copy()
    others[rows, y] = -np.inf
    return float(np.mean(z[rows, y] > others.max(axis=1)))


# ============================================================ stage1_metrics
@pytest.mark.parametrize("arg", ["O", "O0", "O_hat"])
@pytest.mark.parametrize("bad", list(BAD_SHAPES), ids=list(BAD_SHAPES))
def test_stage1_metrics_rejects_wrong_shapes(ds, weights, arg, bad):
    """stage1_metrics: O, O0 or O_hat of a wrong shape or dtype ((3, 3), 1-D, 3-D, (M, M+1),
    strings) raises ShapeError naming that argument (a (3, 3) O read garbage before)."""
    args = dict(O=weights["O"], O0=weights["O0"], O_hat=weights["O_hat"])
    args[arg] = BAD_SHAPES[bad]
    with pytest.raises(ShapeError, match=_named(arg)):
        stage1_metrics(args["O"], args["O0"], args["O_hat"], ds.colloc_tokens, ds.colloc_next)


def test_stage1_metrics_rejects_bad_tokens(ds, weights):
    """stage1_metrics: xs or ys not 1-D, of different lengths, or holding a token outside
    0..M-1 raise ShapeError / SentenceInputError naming xs or ys."""
    O, O0, H = weights["O"], weights["O0"], weights["O_hat"]
    xs, ys = ds.colloc_tokens, ds.colloc_next
    with pytest.raises(ShapeError, match=_named("xs")):
        stage1_metrics(O, O0, H, xs[:, None], ys)
    with pytest.raises(ShapeError, match=_named("ys")):
        stage1_metrics(O, O0, H, xs, ys[:-1])
    with pytest.raises(SentenceInputError, match=r"^ys\[0\] = -1"):
        stage1_metrics(O, O0, H, xs, np.concatenate([[-1], ys[1:]]))
    with pytest.raises(SentenceInputError, match=_named("xs")):
        stage1_metrics(O, O0, H, xs.astype(np.float64), ys)
    # a token >= M for an (M, M) O: O is too small, named as such
    with pytest.raises(ShapeError, match=r"^O has shape \(20, 20\), too small for ys"):
        stage1_metrics(O, O0, H, xs, np.concatenate([[M], ys[1:]]))


def test_stage1_metrics_nan_direction_and_nan_iterate(ds, weights):
    """A NaN in O_hat raises NonFiniteError naming O_hat; a NaN in the iterate O gives the
    documented NaN min_margin and accuracy (not a margin made up from the other entries)."""
    O, O0, H = weights["O"], weights["O0"], weights["O_hat"]
    xs, ys = ds.colloc_tokens, ds.colloc_next
    with pytest.raises(NonFiniteError, match=_named("O_hat")):
        stage1_metrics(O, O0, _with_nan(H), xs, ys)
    bad = np.array(O)
    bad[ys[0], xs[0]] = np.nan
    got = stage1_metrics(bad, O0, H, xs, ys)
    assert math.isnan(got["min_margin"]) and math.isnan(got["accuracy"])
    inf = np.array(O)
    inf[0, 0] = np.inf
    got = stage1_metrics(inf, O0, H, xs, ys)
    assert math.isnan(got["min_margin"]) and math.isnan(got["accuracy"]) and got["norm"] == math.inf


def test_stage1_metrics_valid_values(ds, weights):
    """Valid input: min_margin and accuracy equal a direct loop over the collocation, the norms
    equal np.linalg.norm, and every column agrees with stage1_metrics_np."""
    O, O0, H = weights["O"], weights["O0"], weights["O_hat"]
    xs, ys = ds.colloc_tokens, ds.colloc_next
    got = stage1_metrics(O, O0, H, xs, ys)
    margins = [O[y, x] - max(O[v, x] for v in range(M) if v != y) for x, y in zip(xs, ys)]
    assert got["min_margin"] == min(margins)
    assert got["accuracy"] == np.mean(np.array(margins) > 0)
    assert got["norm"] == pytest.approx(np.linalg.norm(O), rel=1e-13)
    assert got["dist_from_init"] == pytest.approx(np.linalg.norm(O - O0), rel=1e-13)
    assert got["proj_on_star"] == pytest.approx(np.vdot(O - O0, H), rel=1e-12)
    ref = stage1_metrics_np(O, O0, H, xs, ys)
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, rel=2e-13, abs=1e-15), k
    assert -1.0 <= got["cos_to_star"] <= 1.0
    empty = stage1_metrics(O, O0, H, xs[:0], ys[:0])
    assert empty["min_margin"] == math.inf and empty["accuracy"] == 1.0


# ============================================================ attention_margin
@pytest.mark.parametrize("bad", list(BAD_SHAPES), ids=list(BAD_SHAPES))
def test_attention_margin_rejects_wrong_shapes(ds, bad):
    """attention_margin: K of a wrong shape or dtype raises ShapeError naming K (a (2, 2) K
    returned -2e174 and a 1-D K a raw numba TypingError before)."""
    with pytest.raises(ShapeError, match=_named("K")):
        attention_margin(BAD_SHAPES[bad], attention_constraints(ds))


def test_attention_margin_rejects_nan(ds, weights):
    """attention_margin: a NaN or an inf in K raises NonFiniteError naming K (a NaN K returned
    +inf: the margin taken over the finite entries only)."""
    cons = attention_constraints(ds)
    with pytest.raises(NonFiniteError, match=_named("K")):
        attention_margin(_with_nan(weights["K"]), cons)
    K = np.array(weights["K"])
    K[cons[0][0], cons[2][0]] = np.inf
    with pytest.raises(NonFiniteError, match=_named("K")):
        attention_margin(K, cons)


def test_attention_margin_rejects_bad_constraints(ds, weights):
    """attention_margin: constraints that are not three 1-D int arrays of one length in
    0..M-1 raise ShapeError / SentenceInputError naming constraints."""
    K = weights["K"]
    star, other, q = attention_constraints(ds)
    with pytest.raises(ShapeError, match=r"^constraints must be None or a tuple"):
        attention_margin(K, (star, other))
    with pytest.raises(ShapeError, match=r"^constraints: x\*, x' and q must have one length"):
        attention_margin(K, (star, other, q[:-1]))
    with pytest.raises(ShapeError, match=r"^constraints\[2\] \(q\) must be 1-D"):
        attention_margin(K, (star, other, q[:, None]))
    with pytest.raises(SentenceInputError, match=r"^constraints\[1\] \(x'\)\[0\] = -1"):
        attention_margin(K, (star, np.concatenate([[-1], other[1:]]), q))
    with pytest.raises(ShapeError, match=r"^K has shape \(20, 20\), too small for constraints\[0\]"):
        attention_margin(K, (np.concatenate([[M], star[1:]]), other, q))


def test_attention_margin_valid_values(ds, weights):
    """Valid input: the min over the constraints of K[x*, q] - K[x', q] by a Python loop,
    exactly; +inf without constraints."""
    K = weights["K"]
    cons = attention_constraints(ds)
    want = min(K[s, q] - K[o, q] for s, o, q in zip(*cons))
    assert attention_margin(K, cons) == want
    assert attention_margin(K.tolist(), tuple(a.tolist() for a in cons)) == want   # lists convert
    assert attention_margin(K, None) == math.inf


# ============================================================ LogitAccuracy
@pytest.mark.parametrize("arg", ["O", "K"])
@pytest.mark.parametrize("bad", list(BAD_SHAPES), ids=list(BAD_SHAPES))
def test_logit_accuracy_rejects_wrong_shapes(ds, weights, arg, bad):
    """LogitAccuracy(ds)(O, K): O or K not of shape (M, M) raises ShapeError naming it (a (3, 3)
    pair printed garbage, then corrupted the heap, before)."""
    args = dict(O=weights["O"], K=weights["K"])
    args[arg] = BAD_SHAPES[bad]
    with pytest.raises(ShapeError, match=_named(arg)):
        LogitAccuracy(ds)(args["O"], args["K"])


@pytest.mark.parametrize("arg", ["O", "K"])
def test_logit_accuracy_rejects_nan(ds, weights, arg):
    """LogitAccuracy(ds)(O, K): a NaN in O or K raises NonFiniteError naming it (NaN logits
    counted as wrong gave a silently low accuracy)."""
    args = dict(O=weights["O"], K=weights["K"])
    args[arg] = _with_nan(args[arg])
    with pytest.raises(NonFiniteError, match=_named(arg)):
        LogitAccuracy(ds)(args["O"], args["K"])


def test_logit_accuracy_rejects_non_dataset():
    """LogitAccuracy of something that is not a RealizableDataset raises TypeError."""
    with pytest.raises(TypeError, match="RealizableDataset"):
        LogitAccuracy([[0, 1], [1]])


def test_logit_accuracy_valid_values(ds, weights):
    """Valid input: equal to accuracy(kernels.logits(...)) (documented bit for bit), to a dense
    NumPy computation of the logits, and to the fraction of ri.predict's argmax equal to y."""
    acc = LogitAccuracy(ds)
    O, K = weights["O"], weights["K"]
    got = acc(O, K)
    y = ds.next_tokens
    assert got == _dense_accuracy(kernels.logits(O, K, ds.tokens, ds.lengths), y)
    assert got == _dense_accuracy(_dense_logits(ds, O, K), y)
    assert got == float(np.mean(ri.predict(O, K, ds)[0] == y))
    assert 0.0 <= got <= 1.0
    assert acc(O.tolist(), K.astype(np.float32).astype(np.float64)) == got


# ============================================================ ExcessLoss
@pytest.mark.parametrize("bad", list(BAD_SHAPES), ids=list(BAD_SHAPES))
def test_excess_loss_rejects_wrong_shape_of_O(ds, floor_data, bad):
    """ExcessLoss(ds, O, ...): O not of shape (M, M) raises ShapeError naming O."""
    with pytest.raises(ShapeError, match=_named("O")):
        ExcessLoss(ds, BAD_SHAPES[bad], *floor_data)


def test_excess_loss_rejects_bad_floor_arrays(ds, weights, floor_data):
    """ExcessLoss: vertex or log_floor not of shape (N,) raises ShapeError naming it (they are
    read once per sentence by the compiled pass); a NaN in O or log_floor raises
    NonFiniteError naming it."""
    floor, vertex, log_floor = floor_data
    O = weights["O_fixed"]
    for bad in (vertex[:-1], vertex[:, None], np.concatenate([vertex, vertex]), True):
        with pytest.raises(ShapeError, match=_named("vertex")):
            ExcessLoss(ds, O, floor, bad, log_floor)
    for bad in (log_floor[:-1], log_floor[:, None], np.ones((2, len(log_floor))), 0.0):
        with pytest.raises(ShapeError, match=_named("log_floor")):
            ExcessLoss(ds, O, floor, vertex, bad)
    nan_floor = np.array(log_floor)
    nan_floor[3] = np.nan
    with pytest.raises(NonFiniteError, match=_named("log_floor")):
        ExcessLoss(ds, O, floor, vertex, nan_floor)
    with pytest.raises(NonFiniteError, match=_named("O")):
        ExcessLoss(ds, _with_nan(O), floor, vertex, log_floor)
    with pytest.raises(TypeError, match="RealizableDataset"):
        ExcessLoss("not a dataset", O, floor, vertex, log_floor)


@pytest.mark.parametrize("bad", list(BAD_SHAPES), ids=list(BAD_SHAPES))
def test_excess_loss_at_rejects_wrong_shapes(excess, bad):
    """ExcessLoss.at(K): K not of shape (M, M) raises ShapeError naming K."""
    with pytest.raises(ShapeError, match=_named("K")):
        excess.at(BAD_SHAPES[bad])


def test_excess_loss_at_keeps_documented_nan(excess, weights):
    """ExcessLoss.at(K) with a NaN K is not an error: it returns the documented NaN excess and
    log10 excess, and an accuracy in [0, 1]."""
    ex, l10, acc = excess.at(_with_nan(weights["K"]))
    assert math.isnan(ex) and math.isnan(l10) and 0.0 <= acc <= 1.0


def test_excess_loss_at_valid_values(ds, weights, floor_data, excess):
    """Valid input: the excess equals mean cross-entropy loss at (O, K) minus the floor from
    dense NumPy logits (1e-12 relative, the excess being of order 1 here) and the reference
    definition; the accuracy equals the dense one."""
    O, K = weights["O_fixed"], weights["K"]
    ex, l10, acc = excess.at(K)
    z = _dense_logits(ds, O, K)
    y = ds.next_tokens
    rows = np.arange(len(y))
    loss = float(np.mean(np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1))
                         + z.max(axis=1) - z[rows, y]))
    assert ex == pytest.approx(loss - floor_data[0], rel=1e-12)
    assert l10 == pytest.approx(math.log10(ex), rel=1e-12)
    assert acc == _dense_accuracy(z, y)
    phi = kernels.attention(K, ds.tokens, ds.lengths)
    ref_ex, ref_l10 = excess.reference(phi, kernels.logits(O, None, ds.tokens, ds.lengths, phi=phi))
    assert ex == pytest.approx(ref_ex, rel=1e-13) and l10 == pytest.approx(ref_l10, rel=1e-13)


# ============================================================ stage2_metrics
@pytest.mark.parametrize("arg", ["K", "K0", "K_hat"])
@pytest.mark.parametrize("bad", list(BAD_SHAPES), ids=list(BAD_SHAPES))
def test_stage2_metrics_rejects_wrong_shapes(ds, weights, excess, arg, bad):
    """stage2_metrics: K, K0 or K_hat not of shape (M, M) raises ShapeError naming it."""
    args = dict(K=weights["K"], K0=weights["K0"], K_hat=weights["K_hat"])
    args[arg] = BAD_SHAPES[bad]
    with pytest.raises(ShapeError, match=_named(arg)):
        stage2_metrics(args["K"], args["K0"], args["K_hat"], excess, attention_constraints(ds))


def test_stage2_metrics_rejects_bad_constraints_and_excess(ds, weights, excess):
    """stage2_metrics: malformed constraints raise ShapeError / SentenceInputError naming
    constraints; an excess that is not an ExcessLoss raises TypeError; a NaN K_hat raises
    NonFiniteError naming K_hat."""
    K, K0, H = weights["K"], weights["K0"], weights["K_hat"]
    star, other, q = attention_constraints(ds)
    with pytest.raises(ShapeError, match=r"^constraints"):
        stage2_metrics(K, K0, H, excess, (star, other, q[:-1]))
    with pytest.raises(SentenceInputError, match=r"^constraints\[0\] \(x\*\)\[0\] = 20 is outside 0..19"):
        stage2_metrics(K, K0, H, excess, (np.concatenate([[M], star[1:]]), other, q))
    with pytest.raises(TypeError, match="ExcessLoss"):
        stage2_metrics(K, K0, H, None, (star, other, q))
    with pytest.raises(NonFiniteError, match=_named("K_hat")):
        stage2_metrics(K, K0, _with_nan(H), excess, (star, other, q))


def test_stage2_metrics_non_finite_iterate_gives_nan(ds, weights, excess):
    """stage2_metrics with a NaN or inf in K (a non-finite stop records its last iterate) is not
    an error: attention_margin, excess_loss and log10_excess are NaN, as documented."""
    cons = attention_constraints(ds)
    for K in (_with_nan(weights["K"]), np.full((M, M), np.inf)):
        got = stage2_metrics(K, weights["K0"], weights["K_hat"], excess, cons)
        assert math.isnan(got["attention_margin"]) and math.isnan(got["excess_loss"])
        assert math.isnan(got["log10_excess"])
    got = stage2_metrics(_with_nan(weights["K"]), weights["K0"], weights["K_hat"], excess, None)
    assert got["attention_margin"] == math.inf        # no constraints: +inf for every K


def test_stage2_metrics_valid_values(ds, weights, excess):
    """Valid input: attention_margin equals the Python-loop margin, the norms np.linalg.norm,
    the cosine the one of the flattened matrices, and the sentence columns ExcessLoss.at."""
    K, K0, H = weights["K"], weights["K0"], weights["K_hat"]
    cons = attention_constraints(ds)
    got = stage2_metrics(K, K0, H, excess, cons)
    assert got["attention_margin"] == min(K[s, q] - K[o, q] for s, o, q in zip(*cons))
    assert got["norm"] == pytest.approx(np.linalg.norm(K), rel=1e-13)
    assert got["dist_from_init"] == pytest.approx(np.linalg.norm(K - K0), rel=1e-13)
    assert got["cos_to_star"] == pytest.approx(np.vdot(K, H) / np.linalg.norm(K), rel=1e-12)
    ex, l10, acc = excess.at(K)
    assert (got["excess_loss"], got["log10_excess"], got["train_accuracy"]) == (ex, l10, acc)
    assert got["floor"] == excess.floor and 0.0 <= acc <= 1.0
