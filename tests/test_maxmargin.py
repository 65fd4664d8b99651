"""Max-margin solutions, their KKT certificates and the stage-2 floor (docs/maxmargin.md; claims C1, C6).

Tolerances (float64 throughout):
- 1e-12 for solutions against closed forms or exact rationals: the solver ends with a
  QR solve of a system with O(1) entries and condition number below ~M^2, so its
  error is a few hundred ulps at the sizes used here.
- 1e-10 relative for KKT residuals: the acceptance level of docs/maxmargin.md.
- 1e-9 absolute for order consistency (C6): K* entries are O(M) and each chain step
  is one feasibility row, accurate to ~1e-13.
"""
import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import refimpl as ri
from refimpl import ldp, maxmargin as mm


# ----------------------------------------------------------------- helpers
@st.composite
def datasets(draw, max_M=12, max_N=60):
    """Random realizable datasets through ri.generate: valid by construction."""
    M = draw(st.integers(2, max_M), label="M")
    N = draw(st.integers(1, max_N), label="N")
    lo = draw(st.integers(1, 4), label="min_len")
    hi = draw(st.integers(lo, 8), label="max_len")
    n_c = draw(st.integers(1, M), label="n_colloc")
    dim = draw(st.integers(1, 3), label="order_dim")
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    return ri.generate(vocab_size=M, n_sentences=N, min_len=lo, max_len=hi, seed=seed,
                       n_colloc=n_c, order_dim=dim)


def longest_chains(rel, M):
    """int (M, M): length of the longest chain a = t_0 < t_1 < ... < t_k = b of relations, -1 if none."""
    best = np.full((M, M), -1)
    np.fill_diagonal(best, 0)
    for _ in range(M):                                  # Bellman-Ford on a DAG: M rounds suffice
        for lo, up in rel:
            ext = np.where(best[:, lo] >= 0, best[:, lo] + 1, -1)
            best[:, up] = np.maximum(best[:, up], ext)
    np.fill_diagonal(best, -1)
    return best


def column_program(ds, q, K_cert):
    """(G (m, M) int rows e_{x*} - e_{x'}, rows (m, 2)) of column q of W_kq*."""
    col = next(c for c in K_cert.columns if c.column == q)
    return mm._difference_matrix(col.rows, ds.vocab_size), col


SMALL = [dict(vocab_size=M, n_sentences=N, min_len=lo, max_len=hi, seed=s, n_colloc=nc, order_dim=od)
         for (M, N, lo, hi, s, nc, od) in [
             (2, 5, 1, 2, 0, None, 1), (3, 10, 2, 3, 1, None, 2), (4, 12, 1, 4, 2, 3, 2),
             (5, 20, 2, 5, 3, None, 1), (6, 25, 2, 6, 4, 4, 2), (6, 30, 3, 6, 5, None, 3)]]


# ---------------------------------------------------------------- W_ov* (C1)
@pytest.mark.parametrize("M,n_c,seed", [(2, None, 0), (3, 2, 1), (7, None, 2), (20, None, 3), (20, 9, 4)])
def test_c1_closed_form_equals_solution(M, n_c, seed):
    """C1: the closed form O*[:, x] = e_{n(x)} - 1/M equals the solver's W_ov*, both certified."""
    ds = ri.generate(vocab_size=M, n_sentences=10, seed=seed, n_colloc=n_c)
    O_cf, cert_cf = mm.w_ov_star(ds, method="closed_form")
    O_sv, cert_sv = mm.w_ov_star(ds, method="solve")
    assert np.abs(O_cf - O_sv).max() <= 1e-12            # final QR solve: a few ulps of O(1) entries
    assert cert_cf.ok and cert_sv.ok
    for c_cf, c_sv in zip(cert_cf.columns, cert_sv.columns):
        assert np.all(c_cf.alpha == 1.0 / M)             # the closed-form multipliers, exactly
        assert np.abs(c_sv.alpha - 1.0 / M).max() <= 1e-12   # unique: the M-1 rows are independent
    nc = len(ds.colloc_tokens)
    assert np.sum(O_cf ** 2) == pytest.approx(nc * (M - 1) / M, rel=1e-14)   # a sum of nc*M squares
    assert 1 / np.linalg.norm(O_cf) == pytest.approx(np.sqrt(M / (nc * (M - 1))), rel=1e-14)  # gamma_ov


def test_c1_closed_form_multipliers_are_kkt():
    """C1: alpha_v = 1/M satisfies stationarity sum_v alpha_v (e_y - e_v) = e_y - 1/M and tightness."""
    M, y = 9, 4
    G = mm._difference_matrix(mm._ov_rows(y, M), M)
    o = np.full(M, -1.0 / M)
    o[y] += 1.0
    res = mm.kkt_residuals(G, o, np.full(M - 1, 1.0 / M))
    assert max(res.values()) <= 1e-15                     # exact up to one rounding per entry


# ---------------------------------------------------------------- W_kq* (C6)
@settings(deadline=None)
@given(datasets())
def test_c6_kq_certificate_and_order_consistency(ds):
    """C6: the W_kq* KKT certificate holds, and a chain of k relations x' <_q ... <_q x gives
    K*[x, q] - K*[x', q] >= k."""
    K, cert = mm.w_kq_star(ds)
    assert cert.ok, cert.worst()
    assert max(cert.worst().values()) <= 1e-10           # docs/maxmargin.md acceptance level
    M = ds.vocab_size
    constrained = {c.column for c in cert.columns}
    for q in range(M):
        if q not in constrained:
            assert np.all(K[:, q] == 0)                   # queries never seen: zero columns
            continue
        chains = longest_chains(ri.induced_relations(ds, q), M)
        lo, up = np.nonzero(chains > 0)
        assert np.all(K[up, q] - K[lo, q] >= chains[lo, up] - 1e-9)   # O(M) entries, ~1e-13 each


def _recertify(ds, K):
    """A KKT certificate of K built here, not the solver's: the constraints K[upper, q] -
    K[lower, q] >= 1 from the dataset's relations and multipliers fitted anew by NNLS on
    the tight rows (w_kq_star already checks its own certificate before returning)."""
    rows = {q: rel[:, ::-1] for q, rel in ri.induced_relations(ds).items()}   # (upper, lower)
    return mm.certify(K, rows, None, problem="W_kq*")


@pytest.mark.parametrize("block", range(6))
def test_kq_certificate_sweep(block):
    """C6: the certificate holds on 300 generated datasets (50 per block), varied in every parameter."""
    for seed in range(50 * block, 50 * block + 50):
        rng = np.random.default_rng(seed)
        M = int(rng.integers(2, 16))
        lo = int(rng.integers(1, 4))
        ds = ri.generate(vocab_size=M, n_sentences=int(rng.integers(1, 80)), min_len=lo,
                         max_len=lo + int(rng.integers(0, 6)), seed=seed,
                         n_colloc=int(rng.integers(1, M + 1)), order_dim=int(rng.integers(1, 4)))
        K, _ = mm.w_kq_star(ds)
        _recertify(ds, K).check()                         # raises CertificateError naming the column


@pytest.mark.parametrize("kw", SMALL)
def test_kq_matches_exact_rational_solver(kw):
    """C6: each column of W_kq* equals refimpl_proofs.exact.exact_least_distance (rational
    Lawson-Hanson)."""
    from refimpl_proofs.exact import exact_least_distance
    ds = ri.generate(**kw)
    K, cert = mm.w_kq_star(ds)
    for col in cert.columns:
        G = mm._difference_matrix(col.rows, ds.vocab_size).astype(int)
        k_ex, alpha_ex = exact_least_distance(G.tolist())
        k_ex = np.array([float(v) for v in k_ex])
        assert np.abs(K[:, col.column] - k_ex).max() <= 1e-12       # small integer programs
        # alpha may be non-unique (dependent tight rows); its sum ||k||^2 is not
        assert col.alpha.sum() == pytest.approx(float(sum(alpha_ex)), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("kw", SMALL)
def test_kq_active_set_is_exactly_optimal(kw):
    """C6: re-solving the float active set in rationals gives an exactly KKT-optimal point that
    the float solution matches (independent of any NNLS code)."""
    ds = ri.generate(**kw)
    K, cert = mm.w_kq_star(ds)
    for col in cert.columns:
        G = sp.Matrix(mm._difference_matrix(col.rows, ds.vocab_size).astype(int).tolist())
        act = [j for j in range(G.rows) if col.alpha[j] > 1e-9]
        GA = G.extract(act, list(range(G.cols)))
        a = (GA * GA.T).LUsolve(sp.ones(len(act), 1))            # independent active rows here
        k = GA.T * a
        assert all(v >= 0 for v in a)                               # dual feasible, exactly
        assert all(v >= 1 for v in G * k)                           # primal feasible, exactly
        assert np.abs(K[:, col.column] - np.array(k, dtype=float).ravel()).max() <= 1e-12


def test_feasible_but_not_minimal_is_rejected():
    """C6: feasible non-optimal matrices (2 K*, K* + shift of a column) fail the certificate."""
    ds = ri.generate(vocab_size=8, n_sentences=40, seed=7)
    K, cert = mm.w_kq_star(ds)
    rows = {c.column: c.rows for c in cert.columns}
    alphas = {c.column: c.alpha for c in cert.columns}
    q = cert.columns[0].column
    # 2 K* with the multipliers of K*: stationarity ||2k - k|| / ||2k|| = 1/2
    bad = mm.certify(2 * K, rows, alphas, problem="W_kq*")
    assert not bad.ok and bad.columns[0].stationarity == pytest.approx(0.5, rel=1e-12)
    # 2 K* with the multipliers doubled: slackness alpha_j ((G 2k)_j - 1) = alpha_j on tight rows
    bad = mm.certify(2 * K, rows, {c: 2 * a for c, a in alphas.items()}, problem="W_kq*")
    assert bad.columns[0].slackness > 1e-3
    with pytest.raises(mm.CertificateError, match=f"column {q}: KKT condition") as err:
        bad.check()
    assert err.value.column == q
    # best possible multipliers (NNLS on tight rows) cannot rescue either candidate
    assert not mm.certify(2 * K, rows, problem="W_kq*").ok
    shifted = K.copy()
    shifted[:, q] += 0.5                                  # still feasible (differences unchanged)
    fitted = mm.certify(shifted, rows, problem="W_kq*")
    assert fitted.columns[0].primal <= 1e-15 and fitted.columns[0].stationarity > 1e-3   # feasible
    with pytest.raises(mm.CertificateError, match="stationarity"):
        fitted.check()
    # and K* itself passes with fitted multipliers
    assert mm.certify(K, rows, problem="W_kq*").ok


def test_least_distance_infeasible_has_farkas_certificate():
    """An order cycle a < b < c < a makes G k >= 1 infeasible; u >= 0, G^T u = 0, sum u = 1."""
    G = mm._difference_matrix(np.array([[1, 0], [2, 1], [0, 2], [3, 0]]), 4)
    with pytest.raises(mm.InfeasibleError) as err:
        mm.least_distance(G)
    u = err.value.farkas
    assert np.all(u >= 0) and u.sum() == pytest.approx(1.0, rel=1e-12)
    assert np.abs(G.T @ u).max() <= 1e-12                 # NNLS residual at rounding level


def test_least_distance_degenerate_balanced_cycle():
    """Dependent tight rows (a > b, c > b, c > d, a > d): k unique, alpha not; certificate holds."""
    G = mm._difference_matrix(np.array([[0, 1], [2, 1], [2, 3], [0, 3]]), 4)
    k, alpha = mm.least_distance(G)
    assert np.abs(k - np.array([0.5, -0.5, 0.5, -0.5])).max() <= 1e-12   # by symmetry
    assert max(mm.kkt_residuals(G, k, alpha).values()) <= 1e-10


@pytest.mark.parametrize("M,N", [(20, 200), (200, 10_000)])
def test_kq_certified_at_benchmark_sizes(M, N):
    """W_kq* at the benchmark sizes S and L carries a passing KKT certificate (its time is
    measured by bench/bench_maxmargin.py, not asserted here)."""
    ds = ri.generate(vocab_size=M, n_sentences=N, seed=0)
    K, _ = mm.w_kq_star(ds)
    cert = _recertify(ds, K)
    assert cert.ok, cert.worst()


def test_direction_metrics():
    """trajectory.direction_metrics: ||W/|W| - W*/|W*| ||^2 = 2 - 2 cos = 2 (1 - cos) with
    1 - cos from the distance; scale-free; NaN for a zero matrix (no direction)."""
    from refimpl.trajectory import direction_metrics
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    B_hat = B / np.linalg.norm(B)
    c, omc, d = direction_metrics(A, B_hat)
    assert c == pytest.approx(np.sum(A * B) / (np.linalg.norm(A) * np.linalg.norm(B)), rel=1e-14)
    assert d ** 2 == pytest.approx(2 - 2 * c, rel=1e-12) and omc == pytest.approx(1 - c, rel=1e-12)
    c3, omc3, d3 = direction_metrics(3 * A, A / np.linalg.norm(A))
    assert d3 <= 1e-15 and omc3 <= 1e-30 and c3 == pytest.approx(1, abs=1e-15)
    assert all(np.isnan(v) for v in direction_metrics(0 * A, B_hat))


# ------------------------------------------------------------------ floor
def test_log_loss_is_stable():
    """loss = log1p(sum_{v != y} e^{z_v - z_y}) in log space: finite where the loss underflows."""
    M, m = 20, 1000.0
    z = np.zeros((1, M))
    z[0, 3] = m
    assert mm.log_loss(z, [3])[0] == pytest.approx(np.log(M - 1) - m, rel=1e-15)   # log1p(t) = t here
    z[0, 3] = 1.0
    ref = np.log(np.log1p((M - 1) * np.exp(-1.0)))
    assert mm.log_loss(z, [3])[0] == pytest.approx(ref, rel=1e-14)


@pytest.mark.parametrize("c", [0.1, 1.0, 10.0, 100.0, 1000.0])
@pytest.mark.parametrize("n_c", [None, 12])
def test_floor_at_stage1_output_is_the_vertex(c, n_c):
    """docs/maxmargin.md: at O = c O*/||O*|| (stage 1 from zero) every vertex e_{x*} is optimal and
    the floor equals the perfect-attention loss (also after it underflows, via log10)."""
    ds = ri.generate(vocab_size=20, n_sentences=200, seed=3, n_colloc=n_c)
    O_star, _ = mm.w_ov_star(ds)
    O = c * O_star / np.linalg.norm(O_star)
    floor, log10_floor, vertex = mm.stage2_floor(ds, O)
    assert vertex.all()
    logl = mm.log_loss(O[:, ds.optimal].T, ds.next_tokens)
    perfect = np.log10(np.mean(np.exp(logl - logl.max()))) + logl.max() / np.log(10)
    assert log10_floor == pytest.approx(perfect, rel=1e-13)   # same terms, summed in log space
    assert floor == pytest.approx(10 ** perfect, rel=1e-12)


@pytest.mark.parametrize("seed,scale", [(0, 2.0), (1, 10.0), (2, 0.5)])
def test_floor_below_vertex_with_certified_gap(seed, scale):
    """On a random O the vertex is often not optimal: the floor is below the perfect-attention
    loss, every non-vertex sentence has Frank-Wolfe gap <= 1e-10 of its loss, and no sampled
    point of its simplex does better."""
    M = 12
    ds = ri.generate(vocab_size=M, n_sentences=60, max_len=7, seed=seed)
    O = np.random.default_rng(seed).normal(size=(M, M)) * scale
    floor, log10_floor, vertex, det = mm.stage2_floor(ds, O, return_details=True)
    assert (~vertex).any()
    vloss = np.exp(mm.log_loss(O[:, ds.optimal].T, ds.next_tokens))
    assert floor < vloss.mean()
    assert np.all(det["gap"] <= 1e-10)                   # the solver's own acceptance level
    assert np.all(np.exp(det["log_loss"][vertex]) == vloss[vertex])
    assert np.log10(floor) == pytest.approx(log10_floor, rel=1e-13)
    rng = np.random.default_rng(seed)
    for i in np.flatnonzero(~vertex):
        toks = np.unique(ds.tokens[i, : ds.lengths[i]])
        phis = rng.dirichlet(np.full(len(toks), 0.3), size=200)           # (200, u)
        trial = mm.log_loss(phis @ O[:, toks].T, np.full(200, ds.next_tokens[i]))
        best = det["log_loss"][i]
        assert best < mm.log_loss(O[:, ds.optimal[i]][None], [ds.next_tokens[i]])[0]
        assert np.all(trial >= best - 1e-9)              # log-loss; the floor is certified to 1e-10


def test_nnls_regression_scipy_stall():
    """The W_kq* column where scipy.optimize.nnls (1.17.1) stops at a non-optimal point
    (scipy/scipy#25389): the Lawson-Hanson continuation reaches the NNLS optimum and the
    column is certified."""
    ds = ri.generate(vocab_size=200, n_sentences=10_000, seed=1)
    pairs = ri.induced_relations(ds, 66)[:, ::-1]
    toks, local = np.unique(pairs, return_inverse=True)
    G = mm._difference_matrix(local.reshape(-1, 2), len(toks))
    E = np.vstack([G.T, np.ones((1, len(G)))])
    f = np.zeros(len(toks) + 1)
    f[-1] = 1.0
    u = ldp._nnls(E, f)
    w = E.T @ (f - E @ u)
    assert np.all(u >= 0) and w.max() <= 1e-11 and np.abs(w[u > 0]).max() <= 1e-11  # tol ~1e-11 here
    k, alpha = mm.least_distance(G)
    assert max(mm.kkt_residuals(G, k, alpha).values()) <= 1e-10


def test_floor_when_the_loss_is_tiny_matches_mpmath():
    """Stage-2 floor with a loss near e^-40: the simplex objective's gradient and Hessian
    must not cancel (they did: Frank-Wolfe gap 40 and an ArithmeticError). Sentence (1, 2)
    mixes two columns, sentence (0,) is fixed; the floor against a 40-digit 1-D minimization.
    1e-12: the float floor is exact to a few ulp of each sentence's loss."""
    import mpmath
    from refimpl.floor import stage2_floor
    ds = ri.RealizableDataset(3, {1: 0, 2: 1, 0: 2}, [[1, 2], [0]], [0, 2])
    O = np.zeros((3, 3))
    O[:, 1], O[:, 2], O[:, 0] = (40, 0, -40), (40, -40, 0), (0, 0, 40)
    floor, _, vertex = stage2_floor(ds, O)
    mpmath.mp.dps = 40
    f = lambda t: mpmath.log(1 + mpmath.exp(-40 - 40 * t) + mpmath.exp(-40 - 40 * (1 - t)))
    t = mpmath.findroot(lambda t: mpmath.diff(f, t), 0.5)        # phi = (t, 1 - t) on (1, 2)
    exact = (f(t) + mpmath.log(1 + 2 * mpmath.exp(-40))) / 2
    assert float(abs(floor - exact) / exact) < 1e-12
    assert not vertex[0]                                         # the mix beats either vertex
