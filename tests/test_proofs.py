"""Tests of proofs/ (package refimpl_proofs): symbolic steps, numeric bounds, exact LDP solver.

Each test names the claim it checks (refimpl_proofs.claims). Tolerances sit next to
each assertion with the reason. Independent references: mpmath at 50 digits,
direct NumPy recursions, brute-force active-set enumeration, and small NumPy
simulations of NGD written here from the formulas of docs/theory.md (not from refimpl).
"""
import itertools
import math
import random

import mpmath
import numpy as np
import pytest
import sympy as sp
from scipy.optimize import nnls as scipy_nnls

from refimpl_proofs import claims, derivations as dv, exact, numeric as nu

mpmath.mp.dps = 50
DEFAULT = dict(M=20, n_c=20, eta0=0.2 / math.sqrt(20))      # the paper's Figure 2 settings
DEFAULT["gamma_ov"] = float(nu.c1_gamma_ov(DEFAULT["M"], DEFAULT["n_c"]))


# ----------------------------------------------------------------------------- symbolic
@pytest.mark.parametrize("name", sorted(dv.ALL_CHECKS))
def test_derivation_check_proves(name):
    """Every algebraic proof step of C1-C8 is proved by SymPy (see its docstring)."""
    assert dv.ALL_CHECKS[name]() is True, name


@pytest.mark.parametrize("M_,sentence,y", [(2, [1, 1], 0), (3, [0, 1, 0], 2), (3, [2, 1, 2], 0)])
def test_gradient_formula_sizes(M_, sentence, y):
    """docs/model.md: token-coordinate gradient equals symbolic differentiation (repeats included)."""
    assert dv.check_gradient_formula(M_, len(sentence), sentence, y)


def test_checks_can_fail():
    """The zero test rejects a false identity, and the registry rejects a bad status."""
    assert dv._zero(sp.log(1 + 2 * sp.exp(-dv.a)) - sp.log(3 * sp.exp(-dv.a))) is False
    with pytest.raises(AssertionError):
        claims.Claim("C0", "x", "proved", "", (), (), sp.true, ())


def test_registry_complete():
    """Every claim C1..C16 exists, has a known status, lists the embedding precondition,
    and its check returns a result listing the steps checked."""
    assert list(claims.CLAIMS) == [f"C{i}" for i in range(1, 17)]
    assert all(claims.check(cid) for cid in ("C1", "C2", "C3", "C6"))
    for cid, c in claims.CLAIMS.items():
        assert any(p[0] == "E^T E = I" for p in c.preconditions), cid
    assert "lower bound" in claims.get("C8").title
    r = claims.check("C1")
    assert r.verdict == "proved" and r.steps and all(s.passed for s in r.steps)
    for cid in ("C6", "C8"):                             # the precondition is spelled out there too
        assert "E^T E = I" in dict(claims.get(cid).preconditions)
    with pytest.raises(KeyError, match="C17"):
        claims.get("C17")


def test_measured_claims_never_proved():
    """C5, C9, C10 are measured: their result is 'measured', never proved, and says which
    part is numeric evidence only."""
    for cid in ("C5", "C9", "C10"):
        r = claims.check(cid)
        assert r.verdict == "measured" and not r.proved and not bool(r), str(r)
        assert any(s.kind == "numeric evidence only" for s in r.steps)
    for cid in ("C7", "C8", "C11"):                      # certified part proved, rate measured
        assert claims.check(cid).verdict.startswith("proved (certified part")


# ----------------------------------------------------------------------------- C12
def _kq_margins(ds, W):
    """Margins W[x*, q] - W[x', q] over every training relation x' <_q x* (float (R,))."""
    from refimpl import induced_relations
    out = [W[rel[:, 1], q] - W[rel[:, 0], q] for q, rel in induced_relations(ds).items()
           if len(rel)]
    return np.concatenate(out)


@pytest.mark.parametrize("seed", range(4))
def test_c12_margin_to_cosine_on_random_datasets(seed):
    """C12: cos(W, W_kq*) >= m(W)/(gamma_kq ||W||) for random W with positive margin
    (on the training relations), with equality at W = W_kq*."""
    from refimpl import generate, w_kq_star
    ds = generate(8 + 2 * seed, 40, 2, 5, seed=seed)
    K, cert = w_kq_star(ds)
    assert cert.ok
    nK = np.linalg.norm(K)
    gamma = 1.0 / nK
    rng = np.random.default_rng(seed)
    bound = nu.c12_cos_lower
    # tightness: at W = W* the margin is 1 (some constraint active) and cos = 1
    assert _kq_margins(ds, K).min() == pytest.approx(1.0, abs=1e-9)     # solver tolerance
    assert float(bound(_kq_margins(ds, K).min(), gamma, nK)) == pytest.approx(1.0, abs=1e-9)
    tested = 0
    for _ in range(300):
        W = K * rng.uniform(0.1, 5) + rng.normal(scale=rng.uniform(0.01, 0.5), size=K.shape)
        mW = _kq_margins(ds, W).min()
        if mW <= 0:
            continue
        tested += 1
        cos = float(np.sum(W * K) / (np.linalg.norm(W) * nK))
        # 1e-9: the solver's KKT tolerance (docs/maxmargin.md) enters <W, W*> linearly
        assert cos >= float(bound(mW, gamma, np.linalg.norm(W))) - 1e-9, (cos, mW)
    assert tested >= 50


# ----------------------------------------------------------------------------- numeric
T_GRID = np.array([0, 1, 7, 100, 1e3, 1e4, 7e4, 7.3e4, 1e5, 3e5, 1e6])


def _mp_log10_log1p(log_u):
    """log10(log(1 + e^log_u)) at 50 digits (the reference for the log-space bounds)."""
    return mpmath.log10(mpmath.log1p(mpmath.exp(log_u)))


def test_c2_against_mpmath_deep_underflow():
    """C2: log10-loss matches mpmath to 1e-12 relative for t up to 1e6 (past underflow)."""
    p = DEFAULT
    got = nu.c2_log10_loss(p["M"], p["eta0"], p["gamma_ov"], T_GRID)
    for tt, g in zip(T_GRID, got):
        x = mpmath.mpf(p["gamma_ov"]) * mpmath.mpf(p["eta0"]) * mpmath.mpf(float(tt))
        ref = _mp_log10_log1p(mpmath.log(p["M"] - 1) - x)
        # 1e-12 relative (docs/theory.md section 11 asks 1e-9); 1e-14 absolute where log10 L ~ 0 at t=0
        assert abs(g - float(ref)) <= 1e-12 * abs(float(ref)) + 1e-14, (tt, g, ref)
    direct = np.log(1 + (p["M"] - 1) * np.exp(-p["gamma_ov"] * p["eta0"] * T_GRID[:5]))
    # plain formula before underflow: only rounding of exp/log, 1e-13 relative
    np.testing.assert_allclose(nu.c2_loss(p["M"], p["eta0"], p["gamma_ov"], T_GRID[:5]),
                               direct, rtol=1e-13)


def test_c4_lower_against_mpmath():
    """C4 lower bound and its log10 agree with mpmath to 1e-12 relative, t up to 1e6."""
    g, n0, e0, nc = 0.3, 1.7, 0.05, 7
    got = nu.c4_lower_log10(g, n0, e0, nc, T_GRID)
    for tt, val in zip(T_GRID, got):
        x = mpmath.mpf(g) * (mpmath.mpf(n0) + mpmath.mpf(e0) * mpmath.mpf(float(tt)))
        ref = _mp_log10_log1p(-x) - mpmath.log10(nc)
        assert abs(val - float(ref)) <= 1e-12 * abs(float(ref)), (tt, val, ref)
    small = T_GRID[:5]
    np.testing.assert_allclose(nu.c4_lower(g, n0, e0, nc, small),
                               np.log1p(np.exp(-g * (n0 + e0 * small))) / nc, rtol=1e-13)


def test_simple_closed_forms():
    """C1, C3, C7, C8: lambdified forms equal the formulas (exact up to 4 ulp)."""
    t = np.linspace(0, 1e5, 11)
    assert nu.c1_norm_sq(20, 20) == pytest.approx(19.0, rel=1e-15)
    np.testing.assert_allclose(nu.c3_norm_upper(0.04, t), 0.04 * t, rtol=1e-15)
    np.testing.assert_allclose(nu.c3_proj_lower(0.04, 0.2, t), 0.04 * t * 0.2 / math.sqrt(2),
                               rtol=1e-15)
    np.testing.assert_allclose(nu.c7_norm_upper(0.01, t), 0.01 * t, rtol=1e-15)
    np.testing.assert_allclose(nu.c8_excess_lower_log10(1e-3, 0.5, 2.0, 0.01, t),
                               -3 - 0.5 * (2 + 0.01 * t) / math.log(10), rtol=1e-14)
    a = 0.7
    assert nu.c8_gap_zero_init(5, 0.1, 0.7, 10) == pytest.approx(a * 4 / (math.exp(a) + 4),
                                                                   rel=1e-14)
    assert bool(nu.c4_precondition(0.4, 1.0)) and not bool(nu.c4_precondition(0.5, 1.0))


def _mp_c4(L0_0, g, e0, nc, T):
    c = mpmath.mpf(g) * (1 - mpmath.mpf(e0) * mpmath.exp(mpmath.sqrt(2) * mpmath.mpf(e0)))
    out, bb = [], mpmath.mpf(L0_0)
    for _ in range(T + 1):
        out.append(bb)
        bb = bb + mpmath.mpf(e0) * c * mpmath.expm1(-nc * bb) / nc   # expm1: no cancellation
    return out


@pytest.mark.parametrize("L0_0,g,e0,nc,T", [(math.log(2), math.sqrt(2), 0.3, 1, 5000),
                                            (3.0, 0.5, 0.2, 4, 12000)])
def test_c4_upper_against_mpmath(L0_0, g, e0, nc, T):
    """C4: log10 b_t matches a 50-digit recursion to 1e-12 relative, deep in underflow."""
    ref = _mp_c4(L0_0, g, e0, nc, T)
    got = nu.c4_upper_log10(L0_0, g, e0, nc, T)
    ref10 = np.array([float(mpmath.log10(v)) for v in ref])
    assert ref10[-1] < -330                           # the test really reaches underflow
    # 1e-12 relative: per-step rounding of log b accumulates over <= 5000 steps
    np.testing.assert_allclose(got, ref10, rtol=1e-12, atol=1e-13)
    b = nu.c4_upper(L0_0, g, e0, nc, T)
    alive = b > 1e-300
    np.testing.assert_allclose(b[alive], [float(v) for v in np.array(ref)[alive]], rtol=1e-11)


def test_c4_upper_monotone_linear_rate():
    """C4: b_t decreases, the tail slope of log b is log(1 - eta0 c1), global rate rho holds."""
    p = DEFAULT
    T = 200_000
    logb = nu.c4_upper_log10(math.log(p["M"]), p["gamma_ov"], p["eta0"], p["n_c"], T) * math.log(10)
    assert np.all(np.diff(logb) < 0)
    tail = np.arange(T // 10, T + 1)                  # last decade of steps
    slope = np.polyfit(tail, logb[tail], 1)[0]
    # asymptotic ratio is exact once n_c b < e^-40; 1e-9 covers polyfit rounding
    assert slope == pytest.approx(float(nu.c4_rate(p["eta0"], p["gamma_ov"])), rel=1e-9)
    cc = float(nu.c4_c1(p["eta0"], p["gamma_ov"]))
    x0 = p["n_c"] * math.log(p["M"])
    rho = 1 - p["eta0"] * cc * (-math.expm1(-x0)) / x0
    steps = np.arange(T + 1)
    # certified geometric envelope b_t <= b_0 rho^t; 1e-9 relative slack for rounding
    assert np.all(logb <= math.log(math.log(p["M"])) + steps * math.log(rho) + 1e-9 * np.abs(logb))


def test_c2_between_c4_bounds():
    """C2 and C4 agree: from zero init the exact loss lies between the C4 bounds."""
    p = DEFAULT
    T = 100_000
    t = np.arange(T + 1)
    exact_ = nu.c2_log10_loss(p["M"], p["eta0"], p["gamma_ov"], t)
    upper = nu.c4_upper_log10(math.log(p["M"]), p["gamma_ov"], p["eta0"], p["n_c"], T)
    lower = nu.c4_lower_log10(p["gamma_ov"], 0.0, p["eta0"], p["n_c"], t)
    assert np.all(exact_ <= upper + 1e-12) and np.all(lower <= exact_ + 1e-12)  # rounding only


# ----------------------------------------------------------------------------- simulations
def _softmax_cols(Z):
    E = np.exp(Z - Z.max(axis=0))
    return E / E.sum(axis=0)


@pytest.mark.parametrize("seed,eta0,scale", [(0, 0.2, 1.0), (1, 0.45, 3.0), (2, 0.05, 0.0)])
def test_stage1_ngd_respects_c3_c4(seed, eta0, scale):
    """C3, C4: NGD on L0 from a random init stays inside every certified bound."""
    rng = np.random.default_rng(seed)
    M_, nc, T = 5, 4, 400
    C = rng.choice(M_, nc, replace=False)
    Y = rng.integers(0, M_, nc)
    O = scale * rng.standard_normal((M_, M_))
    O0 = O.copy()
    Ostar = np.zeros((M_, M_))
    Ostar[Y, C] = 1.0
    Ostar[:, C] -= 1.0 / M_
    g = 1 / np.linalg.norm(Ostar)
    assert g == pytest.approx(float(nu.c1_gamma_ov(M_, nc)), rel=1e-14)

    def loss(O_):                          # docs/model.md: log1p(sum_{v != y} e^{z_v - z_y})
        D = O_[:, C] - O_[Y, C]
        D[Y, np.arange(nc)] = -np.inf
        mx = D.max(axis=0)
        return np.mean(np.where(mx > 0, mx + np.log(np.exp(-mx) + np.exp(D - mx).sum(axis=0)),
                                np.log1p(np.exp(D).sum(axis=0))))

    losses = [loss(O)]
    for _ in range(T):
        R = _softmax_cols(O[:, C])
        R[Y, np.arange(nc)] -= 1.0
        G = np.zeros_like(O)
        G[:, C] = R / nc
        O = O - eta0 * G / np.linalg.norm(G)
        losses.append(loss(O))
    t = np.arange(T + 1)
    upper = nu.c4_upper(losses[0], g, eta0, nc, T)
    lower = nu.c4_lower(g, np.linalg.norm(O0), eta0, nc, t)
    # float64 loss evaluation error ~1e-15 relative
    assert np.all(np.array(losses) <= upper * (1 + 1e-12))
    assert np.all(np.array(losses) >= lower * (1 - 1e-12))
    d = O - O0
    assert np.linalg.norm(d) <= nu.c3_norm_upper(eta0, T) * (1 + 1e-12)
    assert np.sum(d * Ostar) * g >= nu.c3_proj_lower(eta0, g, T) * (1 - 1e-12)


def _random_dataset(rng, M_, n_sent):
    """Permutation collocation, one random ranking per query, sentences below x*."""
    perm = rng.permutation(M_)
    rank = {q: rng.permutation(M_) for q in range(M_)}   # rank[q][v]: position of v
    sents, ys, stars = [], [], []
    for _ in range(n_sent):
        q = int(rng.integers(M_))
        above = [v for v in range(M_) if rank[q][v] >= rank[q][q]]
        xs = int(rng.choice(above))
        below = [v for v in range(M_) if rank[q][v] < rank[q][xs] and v != q]
        k = int(rng.integers(0, min(2, len(below)) + 1))
        extra = list(rng.choice(below, k, replace=False)) if k else []
        body = extra + [xs] * int(rng.integers(1, 3))
        if xs == q:
            body = body[:-1] if len(body) > 1 else []
        sents.append([int(v) for v in body] + [q])
        ys.append(int(perm[xs]))
        stars.append(xs)
    return perm, sents, ys, stars


def test_stage2_excess_respects_c8_lower():
    """C8: stage-2 NGD excess never goes below c8 exp(-gamma_kq (||K_0|| + eta t))."""
    rng = np.random.default_rng(5)
    M_, eta, T = 5, 0.5, 300
    perm, sents, ys, stars = _random_dataset(rng, M_, 12)
    Ostar = np.eye(M_)[:, perm] - 1.0 / M_               # column x: e_{n(x)} - 1/M
    O = 2.0 * Ostar                      # zero-init stage-1 output: column margin a = 2 (C2)
    pairs = {q: [] for q in range(M_)}
    for s, xs in zip(sents, stars):
        pairs[s[-1]] += [(xs, v) for v in set(s) if v != xs]
    norm_sq = sum(sum(v * v for v in exact.exact_w_kq_column(p, M_)[0])
                  for p in pairs.values() if p)
    g_kq = 1 / math.sqrt(float(norm_sq))
    gaps = [nu.c8_sentence_gap(O, s, y, xs) for s, y, xs in zip(sents, ys, stars)]
    c8 = nu.c8_constant(gaps, [len(s) for s in sents])
    assert c8 > 0

    def stats(K):
        """Excess without cancellation: loss(z* + delta) - loss(z*) =
        log1p(sum_w p*_w expm1(delta_w - delta_y)), delta = (O[:, s] - o*) phi."""
        excess, G = 0.0, np.zeros_like(K)
        for s, y, xs in zip(sents, ys, stars):
            q = s[-1]
            phi = _softmax_cols(K[s, q][:, None])[:, 0]
            delta = (O[:, s] - O[:, [xs]]) @ phi           # (M,), exactly 0 terms for x*
            p_star = _softmax_cols(O[:, [xs]])[:, 0]
            excess += np.log1p(p_star @ np.expm1(delta - delta[y]))
            p = _softmax_cols((O[:, s] @ phi)[:, None])[:, 0]
            r = p.copy()
            r[y] -= 1.0
            gl = O[:, s].T @ r
            np.add.at(G[:, q], s, phi * (gl - phi @ gl))   # docs/model.md formula (proved above)
        return excess / len(sents), G / len(sents)

    K = 0.3 * rng.standard_normal((M_, M_))
    K0n = np.linalg.norm(K)
    for t in range(T + 1):
        ex, G = stats(K)
        bound = float(nu.c8_excess_lower(c8, g_kq, K0n, eta, t))
        assert ex >= bound * (1 - 1e-9), (t, ex, bound)   # float sums of ~12 terms
        K = K - eta * G / np.linalg.norm(G)


# ----------------------------------------------------------------------------- exact solver
def _brute_force(rows):
    """Min-norm feasible point among all equality subsystems with nonsingular Gram."""
    G = sp.Matrix(rows)
    best = None
    for r in range(1, len(rows) + 1):
        for S in itertools.combinations(range(len(rows)), r):
            GS = G.extract(list(S), list(range(G.cols)))
            gram = GS * GS.T
            if gram.det() == 0:
                continue
            k = GS.T * gram.inv() * sp.ones(r, 1)
            if all(v >= 1 for v in G * k):
                nsq = (k.T * k)[0]
                if best is None or nsq < best[0]:
                    best = (nsq, list(k))
    return best[1]


def _random_rows(rng, M_, n_rows):
    order = list(range(M_))
    rng.shuffle(order)
    rows = []
    for _ in range(n_rows):
        i, j = sorted(rng.sample(range(M_), 2))
        row = [0] * M_
        row[order[j]], row[order[i]] = 1, -1
        rows.append(row)
    return rows


@pytest.mark.parametrize("rows,k,alpha", [
    ([[1, -1, 0], [0, 1, -1]], [1, 0, -1], [1, 1]),                       # chain
    ([[1, -1, 0], [1, 0, -1]], ["2/3", "-1/3", "-1/3"], ["1/3", "1/3"]),   # star
    ([[1, -1, 0, 0], [0, 0, 1, -1]], ["1/2", "-1/2", "1/2", "-1/2"], ["1/2", "1/2"]),
])
def test_exact_two_rows_by_hand(rows, k, alpha):
    """Exact solver reproduces hand-computed two-row solutions exactly."""
    got_k, got_a = exact.exact_least_distance(rows)
    assert got_k == [sp.Rational(v) for v in k] and got_a == [sp.Rational(v) for v in alpha]


def test_exact_matches_brute_force_and_float():
    """C6 certificate: exact KKT on random instances; equals brute force and scipy NNLS."""
    rng = random.Random(0)
    for _ in range(25):
        M_ = rng.randint(2, 5)
        rows = _random_rows(rng, M_, rng.randint(1, 5))
        k, alpha = exact.exact_least_distance(rows)
        assert exact.check_kkt(rows, k, alpha)
        assert k == _brute_force(rows), rows              # exact equality
        E = np.vstack([np.array(rows, float).T, np.ones(len(rows))])
        u, _ = scipy_nnls(E, np.r_[np.zeros(M_), 1.0])
        r = E @ u - np.r_[np.zeros(M_), 1.0]
        # float LDP vs exact: 1e-10, the certificate tolerance of docs/maxmargin.md
        np.testing.assert_allclose(-r[:M_] / r[M_], [float(v) for v in k], atol=1e-10)


def test_exact_large_instance_and_c1():
    """Exact solver: M=6 with 30 rows (duplicates) satisfies exact KKT; C1 columns are e_y - 1/M."""
    rng = random.Random(1)
    rows = _random_rows(rng, 6, 30)
    k, alpha = exact.exact_least_distance(rows)
    assert exact.check_kkt(rows, k, alpha)
    for M_ in range(2, 7):
        k, _ = exact.exact_least_distance(exact.difference_rows([(0, v) for v in range(1, M_)], M_))
        assert k == [1 - sp.Rational(1, M_)] + [-sp.Rational(1, M_)] * (M_ - 1)
    assert exact.check_kkt([[1, -1]], [sp.Rational(1, 2), -sp.Rational(1, 2)], [1]) is False
    with pytest.raises(ValueError, match="infeasible"):
        exact.exact_least_distance([[1, -1], [-1, 1]])


def test_c6_chains_exact():
    """C6: K*[x,q] - K*[x',q] >= longest chain of training relations from x' to x."""
    rng = random.Random(3)
    for _ in range(20):
        M_ = rng.randint(3, 6)
        rows = _random_rows(rng, M_, rng.randint(2, 8))
        k, _ = exact.exact_least_distance(rows)
        edges = {(r.index(-1), r.index(1)) for r in rows}   # lower -> upper
        longest = {}
        for lo, hi in sorted(edges):
            longest[(lo, hi)] = 1
        for _ in range(M_):                                 # Bellman-Ford style relaxation
            for (lo, mid), n1 in list(longest.items()):
                for (mid2, hi), n2 in list(longest.items()):
                    if mid2 == mid and longest.get((lo, hi), 0) < n1 + n2:
                        longest[(lo, hi)] = n1 + n2
        for (lo, hi), n in longest.items():
            assert k[hi] - k[lo] >= n, (rows, lo, hi, n)


def test_c6_erratum_supplied_relations():
    """docs/theory.md, corrections, item 1: a supplied relation no sentence uses is not certified
    (K* gap 1/2 < 1)."""
    # supplied order a=0 < b=1 < c=2 on query c; only sentence (a, c): row e_c - e_a
    k, _ = exact.exact_least_distance([[-1, 0, 1]])
    assert k[1] - k[0] == sp.Rational(1, 2) and k[2] - k[0] == 1     # chain a<b<c has 2 links
