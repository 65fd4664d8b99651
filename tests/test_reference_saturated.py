"""The dense reference, the kernels and their NumPy twins against 60-digit mpmath where
attention saturates and weights are large (docs/model.md, section 8).

Exact values come from ``tests/mp_reference.py`` (mpmath, written from the model
definition, sharing no code with refimpl). Errors are measured per quantity as
||G - G_exact||_F / ||G_exact||_F, and where ||G_exact|| is below the smallest normal
float64 as the absolute error against that number (``mp_reference.accurate``).
"""
from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings

import refimpl as ri
import refimpl.model as model
from refimpl import kernels as kn
from refimpl.model import loss_and_grads, stage1_loss_and_grad
from tests.mp_reference import (accurate, literal_loss_and_grads, loss_and_grads_mp, rel_error,
                                scaled_mp)
from tests.strategies_weights import orthonormal, saturated_cases, weight_cases

C_CASES = [20.0, 35.0, 60.0]


# ===================================================================== the M = 8, N = 40 problem
@pytest.fixture(scope="module")
def problem():
    """M = 8, N = 40 (lengths 2..6), O = the stage-1 output after T0 = 2000 steps, K* and a
    random orthonormal E with d = 10 for the embedding-space runs."""
    ds = ri.generate(8, 40, seed=0)
    O = ri.train_two_stage(ds, T0=2000, T=0, progress=False).W_ov
    K_star = ri.w_kq_star(ds)[0]
    return ds, O, K_star, orthonormal(10, 8, 0)


def _args(ds):
    return ds.tokens, ds.lengths, ds.next_tokens


def _dense_errors(ds, W_ov, W_kq, E):
    """Relative errors (loss, G_ov, G_kq) of loss_and_grads against mpmath, and the mp result."""
    exact = loss_and_grads_mp(W_ov, W_kq, *_args(ds), E)
    loss, g_ov, g_kq = loss_and_grads(ds, W_ov, W_kq, E)
    return [accurate(a, b, 1e-10) for a, b in ((loss, exact.loss), (g_ov, exact.G_ov),
                                                (g_kq, exact.G_kq))], exact


@pytest.mark.parametrize("embed", ["identity", "random d=10"])
@pytest.mark.parametrize("c", C_CASES)
def test_dense_reference_exact_at_c(problem, c, embed):
    """K = c K*: every attention gap is >= c, so 1 - phi_top ~ e^{-c} (below 2^-53 from c = 37
    on). Loss and both gradients within 1e-10 relative of 60-digit mpmath. Measured ~5e-15;
    1e-10 is the bound the old phi (g - gbar) form broke (1.9e-8 at c = 20, 7.3e-2 at
    c = 35, 2.1e9 at c = 60 on this problem)."""
    ds, O, K_star, E10 = problem
    E = np.eye(8) if embed == "identity" else E10
    (l_ok, g_ok, k_ok), exact = _dense_errors(ds, E @ O @ E.T, E @ (c * K_star) @ E.T, E)
    assert min(float(g) for g in exact.gaps if g > 0) >= 0.99 * c       # the saturation is real
    assert l_ok[0], f"loss: relative error {l_ok[1]:.3e}"
    assert g_ok[0], f"G_ov: relative error {g_ok[1]:.3e}"
    assert k_ok[0], f"G_kq: relative error {k_ok[1]:.3e}"


@pytest.mark.parametrize("c", C_CASES)
def test_kernels_and_twins_exact_at_c(problem, c):
    """Token coordinates: stage2_grad, stage2_loss, the per-step direction (Stage2Direction)
    and their twins within 1e-10 relative of mpmath (measured <= 7.5e-15); joint_grad as a pair,
    relative to the joint norm, which is what its common scale keeps exact (its dL/dK part
    carries e^{-delta} explicitly and is relatively negligible)."""
    ds, O, K_star, _ = problem
    K = c * K_star
    exact = loss_and_grads_mp(O, K, *_args(ds))
    norm_k = mpmath.sqrt(mpmath.fsum(v * v for row in exact.G_kq for v in row))
    for f in (kn.stage2_grad, kn.stage2_grad_np):
        GK, ls, loss, log10_loss = f(O, K, *_args(ds))
        ok, rel, _ = accurate(scaled_mp(GK, ls), exact.G_kq, 1e-10)
        assert ok, f"{f.__name__}: relative error {rel:.3e}"
        assert accurate(loss, exact.loss, 1e-10)[0], f.__name__
        assert log10_loss == pytest.approx(float(mpmath.log10(exact.loss)), rel=1e-10)
    for f in (kn.joint_grad, kn.joint_grad_np):
        GO, GK, ls, loss, _ = f(O, K, *_args(ds))
        got = scaled_mp(np.vstack([GO, GK]), ls)
        ok, rel, _ = accurate(got, exact.G_ov + exact.G_kq, 1e-10)
        assert ok, f"{f.__name__}: relative error of the pair {rel:.3e}"
    for f in (kn.stage2_loss, kn.stage2_loss_np):
        assert accurate(f(O, K, *_args(ds))[0], exact.loss, 1e-10)[0], f.__name__
    D, norm, *_ = kn.Stage2Direction(O, *_args(ds)).direction(K)
    D_exact = [[v / norm_k for v in row] for row in exact.G_kq]
    ok, rel, _ = accurate(D, D_exact, 1e-10)
    assert ok, f"Stage2Direction: relative error of the direction {rel:.3e}"


def test_mp_reference_agrees_with_the_literal_formulas(problem):
    """The 60-digit reference uses log1p(sum_{v != y} e^{z_v - z_y}), r_y = -(sum_{v != y} p_v)
    and the pair form of the softmax Jacobian. The literal log-sum-exp - z_y, p_y - 1 and
    phi_l (g_l - gbar), evaluated with enough extra digits to absorb their cancellation,
    agree to 1e-50 relative (both carry >= 60 correct digits) at c = 60, with E = I and
    with the random E."""
    ds, O, K_star, E10 = problem
    sub = ri.RealizableDataset(8, ds.collocation_pairs, ds.sentences()[:12], ds.next_tokens[:12])
    for E in (np.eye(8), E10):
        W_ov, W_kq = E @ O @ E.T, E @ (60.0 * K_star) @ E.T
        ours = loss_and_grads_mp(W_ov, W_kq, *_args(sub), E)
        literal = literal_loss_and_grads(W_ov, W_kq, *_args(sub), E)
        assert literal.dps > 80                                   # the cancellation needed the digits
        with mpmath.workdps(literal.dps):
            for a, b in ((ours.loss, literal.loss), (ours.G_ov, literal.G_ov), (ours.G_kq, literal.G_kq)):
                err, norm = rel_error(a, b)
                assert err <= mpmath.mpf(10) ** -50 * norm


# ===================================================================== the planted old formula
def _old_score_gradient(phi, X, b):
    """The backward before the pair form: d loss/d s_l = phi_l (g_l - sum_m phi_m g_m), g = X b.
    At saturation gbar ~ g_top and g_top - gbar cancels to rounding noise."""
    g = np.einsum("nld,nd->nl", X, b)
    return phi * (g - np.sum(phi * g, axis=1, keepdims=True))


@pytest.mark.parametrize("c", C_CASES)
def test_the_accuracy_check_detects_the_old_formula(problem, c, monkeypatch):
    """With the old phi (g - gbar) planted in place of model._score_gradient, the same 1e-10
    check of G_kq fails at c = 20, 35 and 60 (errors 1.9e-8, 7.3e-2, 2.1e9): the suite would
    catch the cancellation coming back. Unplanted, the same call passes (the control)."""
    ds, O, K_star, _ = problem
    K = c * K_star
    (_, _, control), _ = _dense_errors(ds, O, K, np.eye(8))
    assert control[0], f"control: relative error {control[1]:.3e}"
    monkeypatch.setattr(model, "_score_gradient", _old_score_gradient)
    (_, _, planted), _ = _dense_errors(ds, O, K, np.eye(8))
    assert not planted[0], f"the old formula went undetected at c = {c} (error {planted[1]:.3e})"


# ===================================================================== Hypothesis: the edges
# 60 examples per property in the CI profile at ~20-60 ms each (two mpmath evaluations on
# M <= 6, N <= 8, d <= 9): a few seconds per property, no max_examples override needed.

@given(weight_cases())
def test_dense_reference_matches_mpmath(case):
    """loss_and_grads within 1e-12 relative of 60 digits (or below the smallest normal where
    the exact value is), for saturated K = c K* (c up to 1e3), stage-1 O, random weights up
    to 1e3 per entry, E = I or random orthonormal. 1e-12: the documented accuracy; the only
    rounding not relative to the result is that of the scores and logits, ~1e-16 x their
    size (<= ~1e4 here), measured worst 2.3e-13 over 300 draws."""
    ds = case.ds
    exact = loss_and_grads_mp(case.W_ov, case.W_kq, *_args(ds), case.E)
    loss, g_ov, g_kq = loss_and_grads(ds, case.W_ov, case.W_kq, case.E)
    for what, got, ref in (("loss", loss, exact.loss), ("G_ov", g_ov, exact.G_ov), ("G_kq", g_kq, exact.G_kq)):
        ok, rel, norm = accurate(got, ref, 1e-12)
        assert ok, f"{what}: relative error {rel:.3e} (|exact| {mpmath.nstr(norm, 5)}) for {case.label}"


@given(weight_cases(embed="identity"))
def test_kernels_and_twins_match_mpmath(case):
    """stage2_grad, joint_grad (as a pair), stage2_loss and stage1_grad, kernels and twins, in
    token coordinates, within 1e-12 of 60 digits. Their scaled outputs exp(log_scale) * Gs
    are compared in mpmath, so this holds also where G is below the float64 range.
    1e-12: measured worst 1.8e-13 at entries ~1e3 (rounding of logits ~1e-16 x 1e3)."""
    ds, O, K = case.ds, case.O, case.K
    exact = loss_and_grads_mp(O, K, *_args(ds))
    for f in (kn.stage2_grad, kn.stage2_grad_np):
        GK, ls, loss, _ = f(O, K, *_args(ds))
        ok, rel, _ = accurate(scaled_mp(GK, ls), exact.G_kq, 1e-12)
        assert ok, f"{f.__name__}: relative error {rel:.3e} for {case.label}"
        assert accurate(loss, exact.loss, 1e-12)[0], f"{f.__name__} loss for {case.label}"
    for f in (kn.joint_grad, kn.joint_grad_np):
        GO, GK, ls, _, _ = f(O, K, *_args(ds))
        ok, rel, _ = accurate(scaled_mp(np.vstack([GO, GK]), ls), exact.G_ov + exact.G_kq, 1e-12)
        assert ok, f"{f.__name__}: relative error of the pair {rel:.3e} for {case.label}"
    xs, ys = ds.colloc_tokens, ds.colloc_next
    one = loss_and_grads_mp(O, np.zeros_like(K), xs[:, None], np.ones(len(xs), dtype=np.int64), ys)
    for f in (kn.stage1_grad, kn.stage1_grad_np):
        G, ls, loss, _ = f(O, xs, ys)
        ok, rel, _ = accurate(scaled_mp(G, ls), one.G_ov, 1e-12)
        assert ok, f"{f.__name__}: relative error {rel:.3e} for {case.label}"


@given(saturated_cases())
def test_stage1_reference_matches_mpmath(case):
    """stage1_loss_and_grad (one-token sentences, no attention term) within 1e-12 of 60 digits
    in embedding space: it never had the attention cancellation, and this holds it there."""
    ds, E = case.ds, case.E
    xs, ys = ds.colloc_tokens, ds.colloc_next
    exact = loss_and_grads_mp(case.W_ov, np.zeros_like(case.W_kq), xs[:, None],
                              np.ones(len(xs), dtype=np.int64), ys, E)
    loss, grad = stage1_loss_and_grad(ds, case.W_ov, E)
    assert accurate(loss, exact.loss, 1e-12)[0], case.label
    ok, rel, _ = accurate(grad, exact.G_ov, 1e-12)
    assert ok, f"relative error {rel:.3e} for {case.label}"


@pytest.mark.parametrize("seed", range(4))
def test_dense_reference_at_weight_norm_1e4(seed):
    """Weight norms ~1e4 with a random orthonormal E (d = M + 2) and E = I, saturated and
    not: 1e-12 relative where the exact value is a normal number. Measured worst 3.9e-13
    over 200 such draws (the scores and logits themselves are ~1e4 and carry ~1e-12
    absolute rounding, which is what the result can inherit)."""
    rng = np.random.default_rng(100 + seed)
    M = 5
    ds = ri.generate(M, 6, 1, 5, seed=seed)
    O = 1e4 / M * rng.standard_normal((M, M)) * 10.0 ** rng.uniform(-4, 0)
    K = 1e4 / M * rng.standard_normal((M, M)) * 10.0 ** rng.uniform(-3, 0)
    for E in (np.eye(M), orthonormal(M + 2, M, seed)):
        W_ov, W_kq = E @ O @ E.T, E @ K @ E.T
        exact = loss_and_grads_mp(W_ov, W_kq, *_args(ds), E)
        got = loss_and_grads(ds, W_ov, W_kq, E)
        for what, a, b in zip(("loss", "G_ov", "G_kq"), got, (exact.loss, exact.G_ov, exact.G_kq)):
            ok, rel, _ = accurate(a, b, 1e-12)
            assert ok, f"{what}: relative error {rel:.3e} (d = {E.shape[0]})"


def test_underflowing_values_are_within_the_smallest_normal():
    """K = 2000 K*: every attention gradient term carries e^{-2000}, below the float64 range;
    the dense reference returns G_kq within the smallest normal of the exact ~1e-870 (here:
    exactly 0), while the kernel's scaled pair (Gs, log_scale) stays exact relatively."""
    ds = ri.generate(5, 8, 2, 5, seed=1)
    O = 3.0 * ri.w_ov_star(ds)[0]
    K = 2000.0 * ri.w_kq_star(ds)[0]
    exact = loss_and_grads_mp(O, K, *_args(ds))
    _, _, g_kq = loss_and_grads(ds, O, K)
    err, norm = rel_error(g_kq, exact.G_kq)
    assert 0 < norm < mpmath.mpf(10) ** -800 and err <= 2.2250738585072014e-308
    GK, ls, _, _ = kn.stage2_grad(O, K, *_args(ds))
    assert ls < -1900 and accurate(scaled_mp(GK, ls), exact.G_kq, 1e-12)[0]


# ===================================================================== dense-driven stage 2
def _ngd_step(K, c, D, eta):
    """One Kahan-compensated K <- K - eta D (the trainer's update); returns the new (K, c)."""
    out = np.empty_like(K)
    kn.compensated_step(K, c, np.ascontiguousarray(D), eta, out)
    return out, c


def test_dense_stage2_tracks_the_kernel_trajectory(monkeypatch):
    """Stage 2 of the default problem (M = d = 20, N = 200, stage 1 T0 = 2000) from the
    saturated iterate K0 = 600 K*/||K*|| (every attention gap >= 49; the norm stage 2
    reaches after ~54,000 steps, along the direction it converges to): 1000 NGD steps
    K <- K - eta G/||G|| (eta = 0.05/sqrt(d), Kahan-compensated as in the trainer) with the
    dense reference's gradient and with the kernel's direction stay within 1e-10 relative
    at every step. Each direction is accurate to ~1e-14, so 1000 steps of size eta move
    the iterates apart by ~1000 * eta * 1e-14 ~ 1e-13 against ||K|| = 600 absent
    amplification; 1e-10 leaves room for a slow drift. (1000 steps, not more: a dense step
    costs ~2 ms.) Control: one step with the old phi (g - gbar) planted already breaks it
    (its direction has cos ~0.07 with the exact one here)."""
    ds = ri.generate()
    M = ds.vocab_size
    O = ri.train_two_stage(ds, T0=2000, T=0, progress=False).W_ov
    K_star = ri.w_kq_star(ds)[0]
    K0 = 600.0 * K_star / np.linalg.norm(K_star)
    eta = 0.05 / math.sqrt(M)
    direction = kn.Stage2Direction(O, *_args(ds), chunks=1)

    def dense_direction(K):
        g = loss_and_grads(ds, O, K)[2]
        return g / np.linalg.norm(g)

    Kk, ck = K0.copy(), np.zeros((M, M))
    Kd, cd = K0.copy(), np.zeros((M, M))
    worst = 0.0
    for _ in range(1000):
        Kk, ck = _ngd_step(Kk, ck, direction.direction(Kk)[0], eta)
        Kd, cd = _ngd_step(Kd, cd, dense_direction(Kd), eta)
        worst = max(worst, float(np.linalg.norm(Kd - Kk) / np.linalg.norm(Kk)))
    assert worst < 1e-10, f"max relative difference {worst:.3e}"

    monkeypatch.setattr(model, "_score_gradient", _old_score_gradient)
    K1k, _ = _ngd_step(K0, np.zeros((M, M)), direction.direction(K0)[0], eta)
    K1d, _ = _ngd_step(K0, np.zeros((M, M)), dense_direction(K0), eta)
    assert np.linalg.norm(K1d - K1k) / np.linalg.norm(K1k) > 1e-10      # the tolerance can fail
