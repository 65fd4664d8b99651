"""Measured claims of docs/theory.md (C4 rate, C5, C7 slope, C8 rate, C9) and the C10 regime.

Rates are tested as rates: on one fixed run, the quantity is read on the
recorded schedule (geometric points for power laws, linear points for exponential
rates) over the last decade ``t in [T/10, T]`` (docs/theory.md section 11), the slope
is fitted in log space with ``np.polyfit``, the slope is asserted, and the certified
bound is asserted separately on the same run.

C10: a bounded seeded search for weak-stage-1 runs, and the regression example
``tests/data/c10_weak_stage1.json`` (documented in docs/findings.md).
"""
import math
from pathlib import Path

import numpy as np
import pytest

import refimpl as ri
from refimpl_proofs import numeric
from refimpl.kernels import attention
from refimpl.train import train_two_stage

DATA = Path(__file__).parent / "data"
EPS = np.finfo(np.float64).eps
REL = 1e-12

# The measured run: M = 10, N = 40, lengths 2..6, random init of both matrices (scale 0.5).
ETA0, ETA, T0, T = 0.1, 0.05, 4000, 4000


@pytest.fixture(scope="module")
def ds10():
    return ri.generate(10, 40, 2, 6, 1)


@pytest.fixture(scope="module")
def run(ds10):
    return train_two_stage(ds10, eta0=ETA0, eta=ETA, T0=T0, T=T, init="random", init_scale=0.5, seed=1,
                           progress=False, record_dense_limit=0, record_points=400)


def _last_decade(traj, kind):
    """Indices of recorded steps in [T/10, T]: ``"geometric"`` picks the recorded step nearest to
    each of 25 log-spaced points (power laws), ``"linear"`` every recorded step there (the
    schedule's linear half dominates: exponential rates)."""
    step = traj.step
    Tend = step[-1]
    window = np.flatnonzero(step >= Tend / 10)
    if kind == "linear":
        return window
    targets = np.geomspace(Tend / 10, Tend, 25)
    return np.unique(window[np.abs(step[window][None, :] - targets[:, None]).argmin(axis=1)])


def _slope(x, y):
    return float(np.polyfit(x, y, 1)[0])


def _sentence_gaps(ds, O):
    """numeric.c8_sentence_gap of every sentence: float (N,)."""
    return numeric.c8_sentence_gaps(O, ds.tokens, ds.lengths, ds.next_tokens, ds.optimal)


# ------------------------------------------------------------------------------ C4 rate
def test_c4_rate_linear_loss_decay(ds10, run):
    """C4 (rate): from a random init the stage-1 log10-loss decays linearly in t, at least as
    fast as the certified recursion b_t, whose slope tends to log(1 - eta0 c1)."""
    s1, n_c = run.stage1, len(ds10.colloc_tokens)
    idx = _last_decade(s1, "linear")
    t = s1.step[idx].astype(np.float64)
    log10_b = numeric.c4_upper_log10(s1.loss[0], run.gamma_ov, ETA0, n_c, T0)
    slope_loss = _slope(t, s1.log10_loss[idx])
    slope_b = _slope(t, log10_b[s1.step[idx]])
    # b_{t+1}/b_t = 1 - eta0 c1 h(n_c b_t) >= 1 - eta0 c1: b_t decays no faster than the asymptotic
    # rate, and over the last 10% of steps (n_c b_t tiny) its slope is log(1 - eta0 c1)/ln 10 to
    # 1e-6 relative (an exact arithmetic progression there: rounding only).
    rate_b = numeric.c4_rate(ETA0, run.gamma_ov) / math.log(10)
    assert rate_b < slope_b < 0
    assert (log10_b[T0] - log10_b[T0 - T0 // 10]) / (T0 // 10) == pytest.approx(rate_b, rel=1e-6)
    # Measured: linear decay at least as steep as the certified one (observed: the loss slope is
    # gamma_ov eta0 / ln 10 once the direction has converged, steeper than eta0 c1 / ln 10).
    assert slope_loss < slope_b < 0, (slope_loss, slope_b)
    # Linear, not merely decreasing: the two halves of the window have the same slope to 1%.
    h = len(idx) // 2
    assert _slope(t[:h], s1.log10_loss[idx][:h]) == pytest.approx(_slope(t[h:], s1.log10_loss[idx][h:]),
                                                                  rel=0.01)
    # Certified bound, separately, at every recorded step (slack as in test_claims_certified).
    b = log10_b[s1.step]
    assert np.all(s1.log10_loss <= b + 4 * (s1.step + 1) * EPS * np.abs(b) + REL * (1 + np.abs(b)))


# ------------------------------------------------------------------------------------ C5
def test_c5_stage1_direction_power_law(run):
    """C5: from a random init, 1 - cos(O_t, O*) decreases over the last decade with a negative
    fitted power-law exponent (observed about -2.2 on this run)."""
    s1 = run.stage1
    idx = _last_decade(s1, "geometric")
    gap = s1.one_minus_cos[idx]
    exponent = _slope(np.log(s1.step[idx]), np.log(gap))
    assert gap[-1] < gap[0]
    assert exponent < 0, exponent
    # Certified part (C3, from which liminf cos >= gamma_ov/sqrt 2), separately at every step.
    t = s1.step.astype(np.float64)
    slack = REL * ETA0 * t + 8 * EPS * (s1.norm[0] + ETA0 * t)
    assert np.all(s1.dist_from_init <= numeric.c3_norm_upper(ETA0, t) + slack)
    assert np.all(s1.proj_on_star >= numeric.c3_proj_lower(ETA0, run.gamma_ov, t) - slack)


# ------------------------------------------------------------------------------ C7 slope
def test_c7_stage2_norm_grows_linearly(run):
    """C7 (slope): ||K_t - K_0|| grows linearly with slope close to eta (the steps align once the
    direction converges); the certified bound eta t holds at every recorded step."""
    s2 = run.stage2
    idx = _last_decade(s2, "linear")
    ratio = _slope(s2.step[idx].astype(np.float64), s2.dist_from_init[idx]) / ETA
    # In (0, 1] by the certified bound; observed 0.997. 5%: the direction still moves slightly
    # (1 - cos(K_t, K*) ~ 1e-3 over the window), so consecutive steps are not exactly parallel.
    assert 0.95 <= ratio <= 1.0 + 1e-9, ratio
    t = s2.step.astype(np.float64)
    upper = numeric.c7_norm_upper(ETA, t)
    assert np.all(s2.dist_from_init <= upper + REL * upper + 8 * EPS * (s2.norm[0] + upper))


# ------------------------------------------------------------------------------ C8 rate
def test_c8_excess_decays_exponentially(ds10, run):
    """C8 (rate): the stage-2 excess loss decays exponentially: ln(excess) is linear in t with
    negative slope r, and -r is of the order gamma_kq eta (theory: -r <= gamma_kq eta
    asymptotically); the certified lower bound holds at every recorded step."""
    s2 = run.stage2
    gaps = _sentence_gaps(ds10, run.W_ov)
    assert gaps[np.isfinite(gaps)].min() > 0          # C8's precondition (not the C10 regime)
    idx = _last_decade(s2, "linear")
    t = s2.step[idx].astype(np.float64)
    rate = -_slope(t, s2.log10_excess[idx] * math.log(10)) / (run.gamma_kq * ETA)
    # theory.md 11: PASS if -slope <= gamma_kq eta (1 + 0.05) (5% for the fit); observed 1.005.
    # Lower side 0.5: "of the order" gamma_kq eta (the asymptotic rate is gamma_kq eta when the
    # attention margin grows along K*).
    assert 0.5 <= rate <= 1.05, rate
    c8 = numeric.c8_constant(gaps, ds10.lengths)
    lower = numeric.c8_excess_lower_log10(c8, run.gamma_kq, s2.norm[0], ETA, s2.step.astype(np.float64))
    assert np.all(s2.log10_excess >= lower - REL * (1 + np.abs(lower)))


# ------------------------------------------------------------------------------------ C9
def test_c9_stage2_direction_power_law(run):
    """C9: 1 - cos(K_t, K*) decreases over the last decade, with a negative fitted power-law
    exponent (observed about -1.7: a power law, sub-linear in the sense of no exponential rate)."""
    s2 = run.stage2
    idx = _last_decade(s2, "geometric")
    gap = s2.one_minus_cos[idx]
    exponent = _slope(np.log(s2.step[idx]), np.log(gap))
    assert np.all(np.diff(gap) < 0), gap
    assert exponent < 0, exponent
    # Not exponential: ln(gap) against t is far from linear; the slope over the second half of
    # the window is smaller in magnitude than over the first half.
    t = s2.step[idx].astype(np.float64)
    h = len(idx) // 2
    assert abs(_slope(t[h:], np.log(gap[h:]))) < abs(_slope(t[:h], np.log(gap[:h])))


# ------------------------------------------------------------------------------------ C10
def _weak_regime(res, ds, T):
    """C10 regime at the end of stage 2: a mis-attended training sentence (attention margin < 0,
    accuracy < 1), a positive excess (> 1e-4) that does not decay (>= 0.9 of its value at T/2),
    and min_i Delta_i <= 0 (numeric.c8_sentence_gap)."""
    s2 = res.stage2
    half = np.searchsorted(s2.step, T // 2)
    return (s2.attention_margin[-1] < 0 and s2.train_accuracy[-1] < 1 and s2.excess_loss[-1] > 1e-4
            and s2.excess_loss[-1] >= 0.9 * s2.excess_loss[half] and _sentence_gaps(ds, res.W_ov).min() <= 0)


def test_c10_search_finds_weak_stage1_regime():
    """C10: a bounded seeded search (small datasets, random init, T0 <= 5) finds a run whose
    stage 2 converges with a training sentence mis-attended and a positive, non-decaying excess."""
    rng = np.random.default_rng(1)
    for _ in range(60):                                   # bounded: the first hit is at candidate 5
        M, N, seed = int(rng.integers(3, 6)), int(rng.integers(2, 7)), int(rng.integers(0, 2**31))
        scale, T0_ = float(rng.choice([0.5, 1.0])), int(rng.integers(1, 6))
        ds = ri.generate(M, N, 2, 4, seed)
        res = train_two_stage(ds, T0=T0_, T=2000, init="random", init_scale=scale, seed=seed,
                              progress=False, record_dense_limit=0, record_points=200)
        if _weak_regime(res, ds, 2000):
            return
    pytest.fail("no weak-stage-1 run among 60 seeded candidates")


# Stage-1 settings of the regression example (docs/findings.md): defaults eta0 = 0.2/sqrt(4) = 0.1,
# eta = 0.05/sqrt(4) = 0.025; both matrices random, N(0, 0.5^2) entries, seed below; T0 = 2.
C10_SETTINGS = dict(T0=2, init="random", init_scale=0.5, seed=1309607927)
C10_LIMIT_EXCESS = 0.006432  # inf_K L(O, K) - L_floor(O), by Nelder-Mead over column 2 of K


def test_c10_regression_weak_stage1():
    """C10: the minimal example tests/data/c10_weak_stage1.json stays in the weak-stage-1 regime
    (positive excess that does not decay over 20000 steps, sentence 1 mis-attended), and the
    certified criterion min_i Delta_i <= 0 (numeric.c8_sentence_gap) flags it."""
    ds = ri.load_dataset(DATA / "c10_weak_stage1.json")
    T_long = 20_000
    res = train_two_stage(ds, T=T_long, progress=False, record_dense_limit=0, record_points=400,
                          **C10_SETTINGS)
    assert _weak_regime(res, ds, T_long)
    gaps = _sentence_gaps(ds, res.W_ov)
    assert gaps.min() <= 0 and np.all(gaps < 0), gaps    # both sentences: Delta = -0.049, -0.078
    assert numeric.c8_constant(gaps, ds.lengths) == 0.0   # the C8 bound is vacuous here
    assert not res.vertex_optimal
    s2 = res.stage2
    # Stable: from T/10 to T the excess stays within 2% of the shared-K infimum (NGD with a
    # constant step hovers near it), instead of decaying exponentially as in C8.
    late = s2.step >= T_long / 10
    np.testing.assert_allclose(s2.excess_loss[late], C10_LIMIT_EXCESS, rtol=0.02)
    # Sentence 1 ([0, 3, 2], x* = 0) puts its largest attention on token 2, not on x*.
    phi = attention(res.W_kq, ds.tokens, ds.lengths)   # (N, Lmax)
    assert ds.tokens[1, np.argmax(phi[1, :ds.lengths[1]])] == 2 and ds.optimal[1] == 0
