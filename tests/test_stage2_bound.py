"""A-posteriori certified upper bound on the stage-2 excess loss (docs/stage2_upper.md).

The certificate at a checkpoint K_t0 must bound the excess of every later iterate; it is
checked against the trajectory's excess column (refimpl.trajectory.ExcessLoss, an independent
float64 computation) at every recorded step after t0, and against a direct 50-digit mpmath
evaluation at a few steps.
"""
import math
from types import SimpleNamespace

import mpmath
import numpy as np
import pytest

import refimpl as ri
from refimpl.stage2_bound import certify_stage2_upper
from refimpl.train import stage2_replay

GRID = 500          # checkpoints searched for t0: every GRID steps of the default run
STEP_TOL = 1e-9     # direction tolerance delta of the theorem for the float64 iterates (measured below)


def _replay(ds, O, eta, T, steps):
    """K_t at the given steps (and at t + 1, for the step-direction check), from the trainer's
    own per-step path (bit-identical iterates)."""
    want = set(steps) | {t + 1 for t in steps}
    keep = {}
    reason = stage2_replay(ds, O, np.zeros_like(O), eta, T,
                           lambda t, K: keep.__setitem__(t, K.copy()) if t in want else None)
    assert reason == "completed"
    return keep


@pytest.fixture(scope="module")
def default_run():
    """The default experiment: ri.generate(), T0 = 2000, T = 20000, zero init."""
    ds = ri.generate()
    res = ri.train_two_stage(ds, T0=2000, T=20000, progress=False)
    assert res.stop_reason["stage2"] == "completed" and res.vertex_optimal
    grid = list(range(0, 20001, GRID))
    K = _replay(ds, res.W_ov, res.config.eta, 20000, grid)
    return SimpleNamespace(ds=ds, res=res, eta=res.config.eta, grid=grid, K=K, cache={})


def _cert(run, t):
    if t not in run.cache:
        run.cache[t] = certify_stage2_upper(run.ds, run.res.W_ov, run.K[t], run.eta, run.res.K_star,
                                            step_tol=STEP_TOL)
    return run.cache[t]


def _first_certified(run):
    """The first grid checkpoint whose certificate holds, by bisection.

    The verdict depends on K_t0 only through the enclosure's upper end E0 of E(K_t0), and it is
    monotone in E0 (every constant of the theorem is monotone in eps_bar = N E0 / Delta_i:
    docs/stage2_upper.md, section 4). The trajectory's excess decreases along the grid (asserted
    by the caller), so the certified checkpoints are a final segment of the grid."""
    lo, hi = 0, len(run.grid) - 1
    assert not _cert(run, run.grid[lo]).ok and _cert(run, run.grid[hi]).ok
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _cert(run, run.grid[mid]).ok:
            hi = mid
        else:
            lo = mid
    return run.grid[hi]


def _mp_excess(ds, O, K, dps=50):
    """E(K) = (1/N) sum_i (loss_i(K) - loss_i(e_{x*})) directly from the definitions, in mpmath
    at ``dps`` digits (the vertex floor holds on this run: res.vertex_optimal)."""
    with mpmath.workdps(dps):
        total = mpmath.mpf(0)
        for i in range(ds.n_sentences):
            toks = [int(v) for v in ds.sentence(i)]
            q, y, s = toks[-1], int(ds.next_tokens[i]), int(ds.optimal[i])
            sc = [mpmath.mpf(float(K[v, q])) for v in toks]
            m = max(sc)
            w = [mpmath.exp(x - m) for x in sc]
            Z = mpmath.fsum(w)
            z = [mpmath.fsum(wl * mpmath.mpf(float(O[u, v])) for wl, v in zip(w, toks)) / Z
                 for u in range(ds.vocab_size)]
            zs = [mpmath.mpf(float(O[u, s])) for u in range(ds.vocab_size)]
            loss = mpmath.log(mpmath.fsum(mpmath.exp(x) for x in z)) - z[y]
            floor = mpmath.log(mpmath.fsum(mpmath.exp(x) for x in zs)) - zs[y]
            total += loss - floor
        return total / ds.n_sentences


def test_default_run_is_certified_and_the_bound_holds(default_run):
    run = default_run
    tr = run.res.stage2
    # the excess decreases along the recorded steps (so the search below finds the first checkpoint)
    assert np.all(np.diff(tr.log10_excess) < 0)
    t0 = _first_certified(run)
    cert, before = _cert(run, t0), _cert(run, t0 - GRID)
    assert cert.ok and cert.reason == "" and not before.ok and "(H3)" in before.reason
    assert 8000 <= t0 <= 14000           # measured: 11000 on this grid (docs/stage2_upper.md, section 6)

    # certified rate: positive, below gamma_kq (r <= mu/||W|| <= gamma_kq) and consistent with
    # C8's lower bound (a faster certified decay than gamma_kq eta per step would contradict it)
    gamma_kq = run.res.gamma_kq
    assert 0 < cert.rate <= gamma_kq
    assert cert.rate_per_step <= gamma_kq * run.eta
    q = cert.quantities
    assert q["gamma_W"][1] <= gamma_kq * (1 + 1e-9)   # W = K* numerically: its KKT tolerance

    # the bound against the trajectory's excess at every recorded step t >= t0. Tolerance 1e-10
    # in log10: at k = 0 the bound is the enclosure of the same number as the trajectory's
    # float64 value (they agree to ~1e-15 relative); for k >= 1 the bound is above by >= 1e-5.
    steps = tr.step
    after = steps >= t0
    assert after.sum() >= 400
    bound = cert.log10_bound((steps[after] - t0).astype(np.int64))
    actual = tr.log10_excess[after]
    assert np.all(actual <= bound + 1e-10), (steps[after][actual > bound + 1e-10][:5])
    # and it is informative: within 2 decades of the actual excess at T (measured: 1.28)
    assert bound[-1] - actual[-1] <= 2.0

    # a deliberately too fast rate (1.5 gamma_kq, beyond what C8 allows) is violated by the run
    # by more than a decade: the check above can fail
    wrong = cert.log10_excess0 + (steps[after] - t0) * math.log10(1 - 1.5 * run.eta * gamma_kq)
    assert np.max(actual - wrong) > 1.0

    # the later checkpoint certifies a better rate (r grows as E0 decreases: section 4)
    assert _cert(run, 20000).rate > cert.rate


def test_bound_against_mpmath_excess(default_run):
    """E(K_t) from a direct 50-digit mpmath evaluation (independent code) lies in the
    certificate's enclosure at t0 and below the certified bound at later checkpoints."""
    run = default_run
    t0 = _first_certified(run)
    cert = _cert(run, t0)
    O = run.res.W_ov
    lo, hi = cert.quantities["excess0"]
    e = _mp_excess(run.ds, O, run.K[t0])
    # 1e-25 relative: the mpmath value has ~50 - 7 correct digits (7 lost to loss - floor)
    assert lo * (1 - 1e-25) <= e <= hi * (1 + 1e-25)
    for t in (t0 + GRID, 15000, 20000):
        e = _mp_excess(run.ds, O, run.K[t])
        assert mpmath.log10(e) <= cert.log10_bound(t - t0)


def test_float_steps_satisfy_the_direction_tolerance(default_run):
    """The theorem covers steps K_{t+1} = K_t - eta D_t with ||D_t|| <= 1 + delta and
    <D_t, G_t> >= (1 - delta) ||G_t||. For the float64 iterates D_t = (K_t - K_{t+1})/eta; its
    deviation (measured ~3e-13: rounding of K_t, entries up to ~20) is checked at sampled steps
    against STEP_TOL = 1e-9 with ri.loss_and_grads as the independent gradient."""
    run = default_run
    for t in run.grid[::4]:
        if t + 1 not in run.K or t == 20000:
            continue
        D = (run.K[t] - run.K[t + 1]) / run.eta
        G = ri.loss_and_grads(run.ds, run.res.W_ov, run.K[t])[2]
        G_hat = G / np.linalg.norm(G)
        assert abs(np.linalg.norm(D) - 1) <= STEP_TOL
        assert 1 - np.vdot(D, G_hat) <= STEP_TOL


def test_every_step_on_a_small_dataset_with_partial_collocation():
    """|C| < M (tokens outside C: Delta_i = a (M-1)/(e^a + M - 1) for them): the first certified
    checkpoint (every 100 steps) bounds the excess at every later step, all recorded (T <= 2000)."""
    ds = ri.generate(8, 40, 2, 5, 3, n_colloc=5)
    res = ri.train_two_stage(ds, T0=300, T=2000, progress=False)
    eta, tr = res.config.eta, res.stage2
    assert len(tr) == 2001
    K = _replay(ds, res.W_ov, eta, 2000, list(range(0, 2001, 100)))
    t0 = next(t for t in range(0, 2001, 100)
              if certify_stage2_upper(ds, res.W_ov, K[t], eta, res.K_star, step_tol=STEP_TOL).ok)
    cert = certify_stage2_upper(ds, res.W_ov, K[t0], eta, res.K_star, step_tol=STEP_TOL)
    assert 0 < t0 < 2000 and cert.rate_per_step <= res.gamma_kq * eta
    k = np.arange(0, 2001 - t0)
    actual = tr.log10_excess[t0:]
    assert np.all(actual <= cert.log10_bound(k) + 1e-10)     # 1e-10: as in the default-run test
    wrong = cert.log10_excess0 + k * math.log10(1 - 1.5 * eta * res.gamma_kq)   # too fast: violated
    assert np.max(actual - wrong) > 0.3


# ------------------------------------------------------------------ hypotheses that fail
@pytest.fixture(scope="module")
def small():
    ds = ri.generate(vocab_size=6, n_sentences=20, seed=4)
    res = ri.train_two_stage(ds, T0=200, T=0, progress=False)
    return ds, res


def test_not_ok_far_from_the_vertex(small):
    """K = 0 (the start of stage 2): E0 is too large for the local bounds (H3)."""
    ds, res = small
    cert = certify_stage2_upper(ds, res.W_ov, np.zeros_like(res.W_ov), res.config.eta, res.K_star)
    assert not cert.ok and cert.reason.startswith("(H3)") and math.isnan(cert.rate)
    assert math.isfinite(cert.log10_excess0)
    with pytest.raises(ValueError, match="no certified bound"):
        cert.log10_bound(1)


def test_not_ok_without_vertex_gap(small):
    """O = 0 (no stage 1): every Delta_i = 0, the floor is not a strict vertex (H1)."""
    ds, res = small
    O = np.zeros_like(res.W_ov)
    cert = certify_stage2_upper(ds, O, 30 * res.K_star, res.config.eta, res.K_star)
    assert not cert.ok and cert.reason.startswith("(H1)")
    assert cert.quantities["excess0"] == (0.0, 0.0)


def test_not_ok_with_a_comparator_without_margin(small):
    """W = 0 has margin 0 (H2)."""
    ds, res = small
    cert = certify_stage2_upper(ds, res.W_ov, 30 * res.K_star, res.config.eta, np.zeros_like(res.W_ov))
    assert not cert.ok and cert.reason.startswith("(H2)")


def test_ok_near_the_vertex_and_bad_inputs(small):
    """Far along K*, the certificate holds; the rate tends to mu/||W|| - eta e^{sqrt2 eta} hmax/Delta."""
    ds, res = small
    cert = certify_stage2_upper(ds, res.W_ov, 60 * res.K_star, res.config.eta, res.K_star)
    assert cert.ok, cert.reason
    assert cert.rate <= cert.quantities["gamma_W"][1]
    with pytest.raises(ValueError):
        certify_stage2_upper(ds, res.W_ov, np.zeros((2, 2)), res.config.eta, res.K_star)
    with pytest.raises(ValueError):
        certify_stage2_upper(ds, res.W_ov, res.K_star, 0.0, res.K_star)
    with pytest.raises(ValueError):
        certify_stage2_upper(ds, res.W_ov, res.K_star, 0.1, res.K_star, step_tol=1.0)
    with pytest.raises(TypeError):
        certify_stage2_upper(res.W_ov, res.W_ov, res.K_star, 0.1)


def test_weak_stage1_gap_fails_h1_without_crash():
    """Weak-stage-1 regime (docs/findings.md; the C10 regression example): some Delta_i < 0, so the
    vertex is not the floor and a sentence may do better than perfect attention, making the mean
    loss above the vertex loss negative. The certificate is not ok, names (H1), and does not fail
    on the negative enclosure."""
    from pathlib import Path
    ds = ri.load_dataset(Path(__file__).parent / "data" / "c10_weak_stage1.json")
    res = ri.train_two_stage(ds, T0=2, T=4000, init="random", init_scale=0.5, seed=1309607927, eta0=0.1,
                             eta=0.025, progress=False)
    cert = certify_stage2_upper(ds, res.W_ov, res.W_kq, res.config.eta, res.K_star)
    assert not cert.ok and cert.reason.startswith("(H1)")
    assert cert.quantities["min_gap"][0] < 0
