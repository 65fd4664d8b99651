"""Independent checks of the direction claims C12-C15 (docs/theory.md sections 12-15).

Everything a bound is compared with is computed here from scratch with NumPy: cosines against
the exact ``W_ov*`` / ``W_kq*`` of :func:`refimpl.w_ov_star` / :func:`refimpl.w_kq_star`, margins
by looping over the constraints, the invariant projections by a union-find on the sentences, the
C4 recursion by a plain Python loop. The bounds come from ``refimpl_proofs.numeric`` (lambdified
from the registry) or are written out here from docs/theory.md; no bound is checked against
itself. Iterates come from the trainer's own per-step path (``train.stage1_replay`` /
``train.stage2_replay``).
"""
import math

import numpy as np
import pytest

import refimpl as ri
from refimpl import audit
from refimpl.train import stage1_replay, stage2_replay
from refimpl_proofs import numeric as nu

# Slack for comparing a certified cosine bound with a cosine computed here: the KKT residuals of
# the float W_kq* (~1e-12) enter <W, W*> linearly and cos is rounded to ~1e-15.
COS_TOL = 1e-9


# ------------------------------------------------------------------ computed from scratch
def cos(W, S):
    """cos(W, S) in the Frobenius inner product."""
    return float(np.sum(W * S) / (np.linalg.norm(W) * np.linalg.norm(S)))


def ov_margin(ds, O):
    """min over x in C, v != n(x) of O[n(x), x] - O[v, x], by a loop."""
    best = math.inf
    for x, y in zip(ds.colloc_tokens, ds.colloc_next):
        for v in range(ds.vocab_size):
            if v != y:
                best = min(best, O[y, x] - O[v, x])
    return best


def sentences(ds):
    """The training sentences as lists of ints."""
    return [list(map(int, ds.tokens[i, :ds.lengths[i]])) for i in range(ds.n_sentences)]


def kq_margin(ds, K):
    """min over training sentences and their other distinct tokens x' of K[x*, q] - K[x', q]."""
    best = math.inf
    for s, xs in zip(sentences(ds), ds.optimal):
        q = s[-1]
        for x in set(s) - {int(xs)}:
            best = min(best, K[int(xs), q] - K[x, q])
    return best


def components(ds):
    """Per query q: a label per token (union-find over the distinct tokens of each sentence with
    query q and two or more distinct tokens), as a dict q -> int array (M,)."""
    M = ds.vocab_size
    out = {}
    for s in sentences(ds):
        q = s[-1]
        parent = out.setdefault(q, list(range(M)))
        toks = sorted(set(s))
        if len(toks) < 2:
            continue

        def find(a):
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a
        for t in toks[1:]:
            parent[find(t)] = find(toks[0])
    labels = {}
    for q, parent in out.items():
        lab = []
        for a in range(M):
            while parent[a] != a:
                a = parent[a]
            lab.append(a)
        labels[q] = np.array(lab)
    return labels


def project_ov(ds, O):
    """P O for stage 1: columns outside C kept, columns in C replaced by their mean."""
    P = O.copy()
    for x in ds.colloc_tokens:
        P[:, x] = O[:, x].mean()
    return P


def project_kq(ds, K):
    """P K for stage 2: per query column, the mean over each component; other columns kept."""
    P = K.copy()
    for q, lab in components(ds).items():
        for c in np.unique(lab):
            P[lab == c, q] = K[lab == c, q].mean()
    return P


def path(replay, ds, fixed, W0, eta, T):
    """The iterates W_0 .. W_T of a replay (copies)."""
    Ws = []
    args = (ds, W0, eta, T) if fixed is None else (ds, fixed, W0, eta, T)
    replay(*args, lambda t, W: Ws.append(W.copy()))
    return Ws


@pytest.fixture(scope="module")
def small():
    ds = ri.generate(8, 40, 2, 5, seed=2)
    O_star, _ = ri.w_ov_star(ds)
    K_star, _ = ri.w_kq_star(ds)
    return ds, O_star, K_star


# ------------------------------------------------------------------ C14: invariants
def test_stage1_invariants_are_exactly_invariant(small):
    """Column sums on C and columns outside C do not move under stage-1 NGD steps."""
    ds, _, _ = small
    rng = np.random.default_rng(0)
    O0 = rng.standard_normal((ds.vocab_size, ds.vocab_size))
    Os = path(stage1_replay, ds, None, O0, 0.1, 30)
    outside = np.setdiff1d(np.arange(ds.vocab_size), ds.colloc_tokens)
    for O in Os[1:]:
        # 30 Kahan-compensated steps of size 0.1 on entries of size ~1: rounding ~1e-15 per sum
        np.testing.assert_allclose(O[:, ds.colloc_tokens].sum(axis=0),
                                   O0[:, ds.colloc_tokens].sum(axis=0), rtol=0, atol=1e-12)
        assert np.array_equal(O[:, outside], O0[:, outside])      # no gradient at all there
    assert np.linalg.norm(Os[-1] - O0) > 1.0                        # the iterate did move


def test_stage2_invariants_are_exactly_invariant(small):
    """Per query column, the sum over each component (and every entry of a singleton) is fixed."""
    ds, _, _ = small
    rng = np.random.default_rng(1)
    M = ds.vocab_size
    O = rng.standard_normal((M, M))
    K0 = rng.standard_normal((M, M))
    Ks = path(stage2_replay, ds, O, K0, 0.1, 30)
    P0 = project_kq(ds, K0)
    for K in Ks[1:]:
        # component means: 30 steps of size 0.1, rounding ~1e-15 each
        np.testing.assert_allclose(project_kq(ds, K), P0, rtol=0, atol=1e-12)
    assert np.linalg.norm(Ks[-1] - K0) > 1.0
    # and W* is orthogonal to the invariant span (to the solver's KKT tolerance)
    _, _, K_star = small
    assert np.max(np.abs(project_kq(ds, K_star))) < 1e-9
    assert np.max(np.abs(project_ov(ds, small[1]))) < 1e-15


def test_invariant_split_matches_the_projection_here(small):
    """audit.invariant_split (scipy components) equals the union-find projection of this file."""
    ds, _, _ = small
    rng = np.random.default_rng(2)
    W = rng.standard_normal((ds.vocab_size,) * 2)
    for kind, proj in (("ov", project_ov), ("kq", project_kq)):
        p, q = audit.invariant_split(W, kind, ds)
        PW = proj(ds, W)
        # two computations of the same sums: 1e-12 relative
        assert p == pytest.approx(np.linalg.norm(PW), rel=1e-12)
        assert q == pytest.approx(np.linalg.norm(W - PW), rel=1e-12)


@pytest.mark.parametrize("stage", [1, 2])
def test_c14_lower_bound_on_one_minus_cos(small, stage):
    """1 - cos(W_t, W*) >= p^2/(s (s + r)) along the trainer's path, p, q computed here."""
    ds, O_star, K_star = small
    rng = np.random.default_rng(3 + stage)
    M = ds.vocab_size
    W0 = rng.standard_normal((M, M))
    if stage == 1:
        eta, Ws, PW0, star = 0.1, path(stage1_replay, ds, None, W0, 0.1, 400), project_ov(ds, W0), O_star
    else:
        O = 3.0 * O_star
        eta, Ws, PW0, star = 0.05, path(stage2_replay, ds, O, W0, 0.05, 400), project_kq(ds, W0), K_star
    p, q = np.linalg.norm(PW0), np.linalg.norm(W0 - PW0)
    assert p > 0.5
    t = np.arange(len(Ws), dtype=float)
    bound = nu.c14_gap_lower(p, q, eta, t)
    # the same bound written out from docs/theory.md section 14 (1 - r/s), for moderate t
    r = q + eta * t
    np.testing.assert_allclose(bound, 1 - r / np.sqrt(p ** 2 + r ** 2), rtol=1e-10)
    measured = np.array([1 - cos(W, star) for W in Ws])
    # rounding of 1 - cos computed this way: ~1e-15 absolute; bound values are >= 1e-3 here
    assert np.all(measured >= bound - 1e-12), float(np.min(measured - bound))
    # the structural step: cos(W_t, W*) <= ||(I-P) W_t|| / ||W_t||
    proj = project_ov if stage == 1 else project_kq
    for W in Ws[::50]:
        rest = np.linalg.norm(W - proj(ds, W))
        assert cos(W, star) <= rest / np.linalg.norm(W) + COS_TOL


def test_c14_vacuous_from_zero():
    """From zero init p = 0 and the bound is exactly 0."""
    assert float(nu.c14_gap_lower(0.0, 0.0, 0.1, 100.0)) == 0.0
    assert float(nu.c14_gap_lower(0.0, 3.0, 0.1, 0.0)) == 0.0


# ------------------------------------------------------------------ C12: margin to cosine
def test_c12_on_ov_star_with_random_matrices(small):
    """cos(W, W_ov*) >= m(W)/(gamma_ov ||W||) for random W with a positive W_ov* margin."""
    ds, O_star, _ = small
    gamma = 1.0 / np.linalg.norm(O_star)
    rng = np.random.default_rng(5)
    tested = 0
    for _ in range(200):
        W = O_star * rng.uniform(0.5, 4) + rng.normal(scale=rng.uniform(0.01, 0.3), size=O_star.shape)
        m = ov_margin(ds, W)
        if m <= 0:
            continue
        tested += 1
        assert cos(W, O_star) >= float(nu.c12_cos_lower(m, gamma, np.linalg.norm(W))) - COS_TOL
    assert tested >= 50
    # equality at W = W*: margin 1 and cos 1 (closed form, exact to rounding)
    assert ov_margin(ds, O_star) == pytest.approx(1.0, abs=1e-15)


def test_c12_along_a_stage2_path(small):
    """The stage-2 iterates satisfy C12 at every step where their training margin is positive."""
    ds, O_star, K_star = small
    gamma = 1.0 / np.linalg.norm(K_star)
    Ks = path(stage2_replay, ds, 4.0 * O_star, np.zeros_like(K_star), 0.05, 600)
    live = 0
    for K in Ks[1:]:
        m = kq_margin(ds, K)
        if m > 0:
            live += 1
            assert cos(K, K_star) >= float(nu.c12_cos_lower(m, gamma, np.linalg.norm(K))) - COS_TOL
    assert live > 100


# ------------------------------------------------------------------ C13: a-priori stage-1 bound
def test_c13_a_priori_cosine_bound():
    """cos(O_t, O*) >= (-log(n_c b_t) - n_c b_t)/(gamma_ov (||O_0|| + eta0 t)) with b_t the C4
    recursion run here in plain Python; non-vacuous within the run."""
    ds = ri.generate(4, 12, 2, 3, seed=0)
    O_star, _ = ri.w_ov_star(ds)
    gamma = 1.0 / np.linalg.norm(O_star)
    n_c, eta0, T = len(ds.colloc_tokens), 0.2, 3000
    rng = np.random.default_rng(7)
    O0 = rng.standard_normal((4, 4))
    Os = path(stage1_replay, ds, None, O0, eta0, T)

    def loss(O):
        z = O[:, ds.colloc_tokens]
        lse = np.log(np.exp(z - z.max(axis=0)).sum(axis=0)) + z.max(axis=0)
        return float(np.mean(lse - z[ds.colloc_next, np.arange(n_c)]))

    c1 = gamma * (1 - eta0 * math.exp(math.sqrt(2) * eta0))
    b = [loss(O0)]
    for _ in range(T):
        bt = b[-1]
        b.append(bt - eta0 * c1 * (-math.expm1(-n_c * bt)) / n_c)
    b = np.array(b)
    t = np.arange(T + 1, dtype=float)
    n0 = np.linalg.norm(O0)
    bound = (-np.log(n_c * b) - n_c * b) / (gamma * (n0 + eta0 * t))
    live = bound > 0
    assert live.sum() > 100                                  # the bound says something here
    measured = np.array([cos(O, O_star) for O in Os])
    assert np.all(measured[live] >= bound[live] - COS_TOL)
    # numeric's log-space version of the same bound, from log10 b_t of its own recursion
    via_numeric = nu.c13_cos_lower_from_log10(nu.c4_upper_log10(loss(O0), gamma, eta0, n_c, T),
                                              n_c, gamma, n0, eta0, t)
    # two float64 recursions of 3000 steps: ~1e-12 relative drift
    np.testing.assert_allclose(via_numeric[live], bound[live], rtol=1e-9, atol=1e-12)
    assert float(nu.c13_liminf(eta0)) == pytest.approx(1 - eta0 * math.exp(math.sqrt(2) * eta0),
                                                       rel=1e-15)
    assert measured[-1] >= float(nu.c13_liminf(eta0)) - COS_TOL   # consistent with the liminf


# ------------------------------------------------------------------ C15: finite-time generalization
def _zero_init_O(ds, a):
    """a (e_n(x) - 1/M) on C, 0 elsewhere (C2's stage-1 output)."""
    M = ds.vocab_size
    O = np.zeros((M, M))
    for x, y in zip(ds.colloc_tokens, ds.colloc_next):
        O[:, x] = -a / M
        O[y, x] += a
    return O


def test_c15_margin_above_threshold_predicts_n_xhat():
    """For random sentences and random K: a margin above log((L - n*)/n*) predicts n(xhat)."""
    ds = ri.generate(10, 30, 2, 5, seed=3)
    M, C = ds.vocab_size, np.asarray(ds.colloc_tokens)
    O = _zero_init_O(ds, 2.5)
    rng = np.random.default_rng(11)
    hits = 0
    for _ in range(3000):
        L = int(rng.integers(2, 7))
        sent = rng.integers(0, M, size=L)
        xhat = int(rng.choice(C))
        n_star = int(rng.integers(1, L))
        sent[rng.choice(L, size=n_star, replace=False)] = xhat
        if len(set(sent.tolist())) < 2:
            continue
        q = int(sent[-1])
        K = rng.normal(scale=rng.uniform(0.1, 5), size=(M, M))
        K[xhat, q] += rng.uniform(0, 6)
        others = set(sent.tolist()) - {xhat}
        m = min(K[xhat, q] - K[x, q] for x in others)
        nstar = int(np.sum(sent == xhat))
        if m > float(nu.c15_threshold(L, nstar)) + 1e-9:
            hits += 1
            pred, _ = ri.predict(O, K, [sent.tolist()])
            assert int(pred[0]) == int(ds.colloc[xhat]), (sent, xhat, m)
    assert hits > 300


def test_c15_threshold_is_sharp():
    """L - n* copies of one x' with n(x') != n(xhat) at margin exactly the threshold: a tie."""
    ds = ri.generate(10, 30, 2, 5, seed=3)
    C = [int(c) for c in ds.colloc_tokens]
    xhat = C[0]
    xp = next(c for c in C[1:] if ds.colloc[c] != ds.colloc[xhat])
    for L, n_star in ((2, 1), (5, 1), (5, 2), (6, 3)):
        thr = float(nu.c15_threshold(L, n_star))
        assert thr == pytest.approx(math.log((L - n_star) / n_star), abs=1e-15)
        # the attention masses on n(xhat) and n(x') are equal at the threshold
        s_hat, s_p = thr, 0.0
        mass_hat, mass_p = n_star * math.exp(s_hat), (L - n_star) * math.exp(s_p)
        assert mass_hat == pytest.approx(mass_p, rel=1e-14)
    assert float(nu.c15_threshold(6, 1)) == pytest.approx(math.log(5), rel=1e-15)


def test_c15_drift_bounds_one_step(small):
    """One stage-2 NGD step lowers any attention margin by at most sqrt2 eta."""
    ds, O_star, K_star = small
    eta = 0.05
    Ks = path(stage2_replay, ds, 3.0 * O_star, np.zeros_like(K_star), eta, 200)
    drift = float(nu.c15_drift(eta))
    assert drift == pytest.approx(math.sqrt(2) * eta, rel=1e-15)
    M = ds.vocab_size
    for K0, K1 in zip(Ks[:-1], Ks[1:]):
        d = K1 - K0
        # every pair difference in every column: |d[a, q] - d[b, q]| <= sqrt2 ||d||
        worst = max(float(np.max(d[:, q]) - np.min(d[:, q])) for q in range(M))
        assert worst <= drift * (1 + 1e-12)


# ------------------------------------------------------------------ the audit rows
def test_audit_rows_pass_with_random_init():
    """Random init of both stages: C12-C14 are non-vacuous on stage 1 and stage 2 and PASS; C15 is
    NOT APPLICABLE (stage 1 not zero-initialized)."""
    ds = ri.generate(6, 20, seed=4)
    rep = audit.run_audit(ds, audit.AuditConfig(T0=300, T=600, c5_T0=1500, init="random",
                                                init_scale=0.5), progress=False)
    by = {r["id"]: r for r in rep["claims"]}
    for cid in ("C12", "C14"):
        assert by[cid]["verdict"] == audit.PASS, by[cid]
        assert by[cid]["measured"]["stage2_audited"]["non_vacuous_steps"] > 0, by[cid]
    assert by["C14"]["measured"]["stage1_random_start"]["p"] > 0
    assert by["C15"]["verdict"] == audit.NA and "zero-initialized" in by["C15"]["detail"]
    assert rep["certified_failures"] == []


def test_audit_c14_catches_a_wrong_bound(monkeypatch):
    """A bound 1.5 times too large makes C14 a certified FAIL (the row really compares)."""
    ds = ri.generate(6, 20, seed=4)
    real = nu.c14_gap_lower
    monkeypatch.setattr(audit.bounds, "c14_gap_lower", lambda *a: 1.5 * real(*a))
    rep = audit.run_audit(ds, audit.AuditConfig(T0=100, T=100, c5_T0=2000, generalization=False),
                          progress=False)
    by = {r["id"]: r for r in rep["claims"]}
    assert by["C14"]["verdict"] == audit.FAIL and by["C14"]["failure"] == audit.CERTIFIED
    assert "C14" in rep["certified_failures"]


def test_audit_c15_agrees_with_measured_accuracy():
    """Zero init: every sentence certified at T is predicted right, and the measured closure accuracy
    is 100% from no later than the step from which every sentence is certified."""
    ds = ri.generate(6, 20, seed=4)
    rep = audit.run_audit(ds, audit.AuditConfig(T0=200, T=3000, c5_T0=300), progress=False)
    by = {r["id"]: r for r in rep["claims"]}
    c15 = by["C15"]
    assert c15["verdict"] == audit.PASS, c15
    assert c15["measured"]["certified_but_mispredicted_at_T"] == 0
    cert = np.array(rep["generalization"]["c15_certified_from"])
    assert len(cert) == c15["measured"]["closure_decided"]
    if np.all(cert >= 0):
        assert rep["generalization"]["closure_100_from"] <= cert.max()
        assert by["C11"]["measured"]["certified_correct_from_step"] == int(cert.max())
