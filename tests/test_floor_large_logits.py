"""The stage-2 floor at large logits (|O| of 30 to 300) against an independent 1-D and 2-D
minimization, and its boundary checks.

At such scales the loss is linear in phi over most of the simplex (its Hessian ~e^-40 of
the gradient), so an unregularized Newton step on the active face is ~1e14 long: the
solver must still walk to the boundary vertex and certify it, not stop at the start."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

import refimpl as ri
from refimpl.errors import NonFiniteError, ShapeError


def _log_loss(z, y):
    """log of the cross-entropy loss of logits z at y: log(log(1 + e^a)), a = log sum_{v != y}
    e^{z_v - z_y}; a itself below -30 (log(1 + e^a) = e^a (1 - e^a/2 ...): error < 1e-13), so
    losses far below the float64 range still compare."""
    a = logsumexp(np.delete(z - z[y], y))
    return np.log(np.logaddexp(0.0, a)) if a > -30 else a


def _brute_log_floor(Z, y):
    """min over the simplex of the distinct tokens' columns Z (M, u), u <= 3, by bounded Brent on
    the log-loss (the log of a convex function: unimodal on a segment; nested for u = 3, as
    minimizing a convex function over one coordinate leaves a convex function of the rest).
    Returns the least log-loss found."""
    u = Z.shape[1]
    if u == 1:
        return _log_loss(Z[:, 0], y)

    def on_edge(a, b, c):          # phi = (1 - t) e_a + t e_b (+ fixed mass c on the third column)
        def f(t):
            phi = np.zeros(u)
            phi[a], phi[b] = (1 - c) * (1 - t), (1 - c) * t
            if u == 3:
                phi[3 - a - b] = c
            return _log_loss(Z @ phi, y)
        r = minimize_scalar(f, bounds=(0.0, 1.0), method="bounded", options={"xatol": 1e-13})
        return min(r.fun, f(0.0), f(1.0))
    if u == 2:
        return on_edge(0, 1, 0.0)
    r = minimize_scalar(lambda c: on_edge(0, 1, c), bounds=(0.0, 1.0), method="bounded",
                        options={"xatol": 1e-11})
    return min(r.fun, on_edge(0, 1, 0.0), on_edge(0, 1, 1.0))


@pytest.mark.parametrize("scale", [30.0, 100.0, 300.0])
@pytest.mark.parametrize("seed", [0, 2, 3])
def test_floor_at_large_logits_matches_brute_force(seed, scale):
    """Every sentence's log-floor agrees with an independent bounded minimization. Tolerance
    1e-6 in the natural log (the loss to 1e-6 relative): Brent's interval tolerance, not the
    solver's (its certified Frank-Wolfe gap is below 1e-10 of the loss). The floor may not
    exceed the brute-force value beyond rounding (it is the minimum)."""
    ds = ri.generate(vocab_size=6, n_sentences=20, min_len=1, max_len=3, seed=4)
    O = np.random.default_rng(seed).standard_normal((6, 6)) * scale
    _, _, vertex, details = ri.stage2_floor(ds, O, return_details=True)
    assert details["gap"].max() <= 1e-10
    for i in range(ds.n_sentences):
        toks = np.unique(ds.sentence(i))
        ref = _brute_log_floor(O[:, toks], int(ds.next_tokens[i]))
        got = details["log_loss"][i]
        assert got <= ref + 1e-9 and got >= ref - 1e-6, (i, toks.tolist(), got, ref)
    assert not vertex.all()             # the case that stalled: a non-vertex sentence far from x*


def test_floor_of_a_flat_face_reaches_the_far_vertex():
    """Two tokens whose logits differ by tens: at x* the loss is ~45 and linear along the
    edge; the minimum is the other vertex (loss ~8e-15). Before, the solve stopped at x*
    with a Frank-Wolfe gap of 2.5 of the loss (an ArithmeticError)."""
    ds = ri.generate(vocab_size=6, n_sentences=20, seed=4)
    O = np.random.default_rng(3).standard_normal((6, 6)) * 30
    _, _, vertex, details = ri.stage2_floor(ds, O, return_details=True)
    i = 9
    toks = np.unique(ds.sentence(i))
    assert toks.tolist() == [0, 2] and not vertex[i]
    y = int(ds.next_tokens[i])
    other = int(toks[toks != ds.optimal[i]][0])
    assert details["log_loss"][i] == pytest.approx(_log_loss(O[:, other], y), abs=1e-9)


def test_train_with_a_large_given_w_ov_gets_its_floor():
    """train_two_stage with a given W_ov of scale 100 (the floor is part of every run) finishes
    instead of raising ArithmeticError from the floor's simplex solve."""
    ds = ri.generate(vocab_size=6, n_sentences=20, seed=4)
    O = np.random.default_rng(0).standard_normal((6, 6)) * 100
    res = ri.train_two_stage(ds, W_ov=O, T0=5, T=5, progress=False)
    assert np.isfinite(res.stage2["excess_loss"]).all()


@pytest.mark.parametrize("O, error, match", [
    (np.full((6, 6), np.nan), NonFiniteError, "nan"),
    (np.eye(7), ShapeError, r"\(6, 6\)"),
    (np.eye(5), ShapeError, r"\(6, 6\)"),
    (np.ones(6), ShapeError, "O"),
])
def test_floor_checks_its_matrix(O, error, match):
    """A NaN O used to give a NaN floor, a larger one a number for the wrong M, a smaller one
    a raw IndexError: each is now named at the boundary."""
    ds = ri.generate(vocab_size=6, n_sentences=20, seed=4)
    with pytest.raises(error, match=match):
        ri.stage2_floor(ds, O)
