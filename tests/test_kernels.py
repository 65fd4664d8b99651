"""Numba kernels (refimpl.kernels) against the dense reference, their NumPy twins and mpmath."""
from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

import refimpl as ri
from refimpl import kernels as kn
from refimpl.data import extended_order
from refimpl.model import loss_and_grads, stage1_loss_and_grad, to_token_coords


def _rel(a, b):
    """max |a - b| / max |b|: error relative to the size of the reference array."""
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(np.max(np.abs(b)), 1e-300))


def _orthonormal(d, M, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q[:, :M]


def _args(ds):
    return ds.tokens, ds.lengths, ds.next_tokens


# ===================================================================== dense reference
@pytest.mark.parametrize("chunks", [1, 3], ids=["serial", "3 chunks"])
@pytest.mark.parametrize("seed", [0, 1])
def test_kernels_match_dense_reference(seed, chunks):
    """Token-coordinate reduction (docs/model.md): with orthonormal E, O = E^T W_ov E,
    K = E^T W_kq E and dL/dK = E^T (dL/dW_kq) E. 1e-12 relative: both are exact formulas
    in float64; they differ only in summation order (~1e-15)."""
    M, d = 9, 12
    ds = ri.generate(M, 60, 1, 7, seed=seed)
    E = _orthonormal(d, M, seed)
    rng = np.random.default_rng(seed)
    W_ov, W_kq = 2.0 * rng.standard_normal((2, d, d))
    loss, g_ov, g_kq = loss_and_grads(ds, W_ov, W_kq, E)
    O, K = to_token_coords(W_ov, E), to_token_coords(W_kq, E)

    GK, ls, l2, l10 = kn.stage2_grad(O, K, *_args(ds), chunks=chunks)
    assert _rel(math.exp(ls) * GK, to_token_coords(g_kq, E)) < 1e-12
    assert l2 == pytest.approx(loss, rel=1e-12)
    assert l10 == pytest.approx(math.log10(loss), rel=1e-12)
    GO, GK2, ls2, l3, _ = kn.joint_grad(O, K, *_args(ds), chunks=chunks)
    assert _rel(math.exp(ls2) * GO, to_token_coords(g_ov, E)) < 1e-12
    assert _rel(math.exp(ls2) * GK2, to_token_coords(g_kq, E)) < 1e-12
    assert kn.stage2_loss(O, K, *_args(ds), chunks=chunks)[0] == pytest.approx(loss, rel=1e-12)

    l0, g0 = stage1_loss_and_grad(ds, W_ov, E)
    G1, ls1, l1, l110 = kn.stage1_grad(O, ds.colloc_tokens, ds.colloc_next)
    assert _rel(math.exp(ls1) * G1, to_token_coords(g0, E)) < 1e-12
    assert l1 == pytest.approx(l0, rel=1e-12) and l110 == pytest.approx(math.log10(l0), rel=1e-12)


@pytest.mark.parametrize("chunks", [0, -1, 61, 2.0, 2.5, True, "2"],
                         ids=["zero", "negative", "more than N", "float 2.0", "float 2.5", "bool", "str"])
def test_bad_chunk_counts_are_config_errors(chunks):
    """``chunks`` must be an integer in 1..N: 0 chunks used to return a zero gradient and a zero
    loss without reading a sentence, a float was truncated, a negative count failed inside NumPy."""
    ds = ri.generate(9, 60, 1, 7, seed=0)
    O, K = np.random.default_rng(0).standard_normal((2, 9, 9))
    calls = [lambda: kn.stage2_grad(O, K, *_args(ds), chunks=chunks),
             lambda: kn.joint_grad(O, K, *_args(ds), chunks=chunks),
             lambda: kn.stage2_loss(O, K, *_args(ds), chunks=chunks),
             lambda: kn.Stage2Direction(O, *_args(ds), chunks=chunks)]
    for call in calls:
        with pytest.raises(ri.errors.ConfigError, match="chunks must be"):
            call()


def test_chunk_count_bounds_are_usable_and_memory_checked(monkeypatch):
    """chunks = 1 and chunks = N (one sentence a chunk) both run and agree to rounding (1e-13
    relative: the same terms summed in another grouping, ~N eps); a NumPy integer is accepted;
    chunks whose (M, M) accumulators exceed the memory limit are refused before allocating."""
    ds = ri.generate(9, 60, 1, 7, seed=0)
    O, K = np.random.default_rng(0).standard_normal((2, 9, 9))
    G1, s1, l1, _ = kn.stage2_grad(O, K, *_args(ds), chunks=1)
    GN, sN, lN, _ = kn.stage2_grad(O, K, *_args(ds), chunks=np.int64(60))
    assert s1 == sN and lN == pytest.approx(l1, rel=1e-13)
    assert _rel(GN, G1) < 1e-13
    monkeypatch.setenv("REFIMPL_MAX_MEMORY", "20K")      # 60 chunks x 9 x 9 x 8 B = 38.9 KiB
    with pytest.raises(ri.errors.ResourceError, match="60 chunks"):
        kn.stage2_grad(O, K, *_args(ds), chunks=60)
    assert kn.stage2_grad(O, K, *_args(ds), chunks=20)[2] == pytest.approx(l1, rel=1e-13)   # 13 KiB


# ===================================================================== NumPy twins
def _scaled_problem(scale, seed=3):
    ds = ri.generate(11, 80, 1, 8, seed=seed)
    rng = np.random.default_rng(seed)
    O, K = scale * rng.standard_normal((2, 11, 11))
    return ds, O, K


@pytest.mark.parametrize("scale", [0.0, 1.0, 5.0])
def test_twins_match_kernels(scale):
    """Each kernel equals its NumPy twin (a second route: global scale first, pair-form
    attention gradient, log-sum-exp loss) to 1e-13 relative. scale 0: K = 0 ties every
    score (the initialization of stage 2)."""
    ds, O, K = _scaled_problem(scale)
    a = _args(ds)
    for fast, twin in [(kn.stage2_grad, kn.stage2_grad_np), (kn.joint_grad, kn.joint_grad_np),
                       (kn.stage2_loss, kn.stage2_loss_np)]:
        for chunks in (1, 4):
            got, ref = fast(O, K, *a, chunks=chunks), twin(O, K, *a)
            for x, y in zip(got, ref):
                if np.ndim(x):
                    assert _rel(x, y) < 1e-13, fast.__name__
                else:
                    assert x == pytest.approx(y, rel=1e-13, abs=1e-300), fast.__name__
    for x, y in zip(kn.stage1_grad(O, ds.colloc_tokens, ds.colloc_next),
                    kn.stage1_grad_np(O, ds.colloc_tokens, ds.colloc_next)):
        assert np.allclose(x, y, rtol=1e-13, atol=1e-13 * np.max(np.abs(y)))
    np.testing.assert_allclose(kn.attention(K, ds.tokens, ds.lengths),
                               kn.attention_np(K, ds.tokens, ds.lengths), rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(kn.logits(O, K, ds.tokens, ds.lengths),
                               kn.logits_np(O, K, ds.tokens, ds.lengths), rtol=1e-13, atol=1e-13 * (1 + scale))
    D, n = kn.normalize(O)
    D2, n2 = kn.normalize_np(O)
    assert n == pytest.approx(n2, rel=1e-14) and _rel(D, D2) < 1e-14
    DO, DK, n = kn.normalize_pair(O, K)
    DO2, DK2, n2 = kn.normalize_pair_np(O, K)
    assert n == pytest.approx(n2, rel=1e-14) and _rel(DO, DO2) < 1e-14 and _rel(DK, DK2) < 1e-14


def test_attention_and_logits_shapes():
    ds, O, K = _scaled_problem(1.0)
    phi = kn.attention(K, ds.tokens, ds.lengths)
    assert phi.shape == ds.tokens.shape
    np.testing.assert_allclose(phi.sum(axis=1), 1.0, rtol=1e-15 * 8)   # softmax rows sum to 1
    assert np.all(phi[~ds.valid_mask] == 0.0)
    assert kn.logits(O, K, ds.tokens, ds.lengths).shape == (ds.n_sentences, 11)


def test_normalize_zero_gradient():
    """A zero gradient gives a zero direction and norm 0.0, never NaN (a zero gradient ends a stage)."""
    D, n = kn.normalize(np.zeros((3, 3)))
    assert n == 0.0 and not np.any(D)
    DO, DK, n = kn.normalize_pair(np.zeros((3, 3)), np.zeros((3, 3)))
    assert n == 0.0 and not np.any(DO) and not np.any(DK)


# ===================================================================== underflow vs mpmath
def _mp_reference(O, K, sentences, ys):
    """Exact (50 digits) loss, dL/dO, dL/dK in token coordinates for float O, K."""
    mpmath.mp.dps = 50
    M = O.shape[0]
    Om = [[mpmath.mpf(float(O[a, b])) for b in range(M)] for a in range(M)]
    Km = [[mpmath.mpf(float(K[a, b])) for b in range(M)] for a in range(M)]
    GO = [[mpmath.mpf(0)] * M for _ in range(M)]
    GK = [[mpmath.mpf(0)] * M for _ in range(M)]
    total = mpmath.mpf(0)
    margins = []
    for x, y in zip(sentences, ys):
        q = x[-1]
        e = [mpmath.exp(Km[t][q]) for t in x]
        phi = [v / sum(e) for v in e]
        z = [sum(phi[l] * Om[v][t] for l, t in enumerate(x)) for v in range(M)]
        margins.append(float(z[y] - max(z[v] for v in range(M) if v != y)))
        ez = [mpmath.exp(v - z[y]) for v in z]
        total += mpmath.log1p(sum(ez[v] for v in range(M) if v != y))   # log(1 + tiny) stays exact
        p = [v / sum(ez) for v in ez]
        r = [p[v] for v in range(M)]
        r[y] = -sum(p[v] for v in range(M) if v != y)      # p_y - 1 would be 0 even at 50 digits
        g = [sum(Om[v][t] * r[v] for v in range(M)) for t in x]
        for l, t in enumerate(x):
            for v in range(M):
                GO[v][t] += phi[l] * r[v]
            # pair form: g_l - gbar = sum_m phi_m (g_l - g_m) (with phi_* = 1 - 1e-391 the
            # plain g_l - gbar cancels to nonsense even at 50 digits)
            GK[t][q] += phi[l] * sum(phi[m] * (g[l] - g[m]) for m in range(len(x)))
    n = len(ys)
    return total / n, [[v / n for v in row] for row in GO], [[v / n for v in row] for row in GK], margins


def _mp_direction(G):
    norm = mpmath.sqrt(sum(v * v for row in G for v in row))
    assert norm > 0
    return np.array([[float(v / norm) for v in row] for row in G]), norm


def _saturated(seed, logit_scale, att_scale):
    """Small dataset; O = logit_scale (O* + noise) and K ranking the optimal token first."""
    M = 4
    ds = ri.generate(M, 6, 1, 3, seed=seed)
    rng = np.random.default_rng(seed)
    O = np.zeros((M, M))
    for x, nx in zip(ds.colloc_tokens, ds.colloc_next):
        O[:, x] = np.eye(M)[nx] - 1.0 / M                       # C1: O*
    O = logit_scale * (O + 0.05 * rng.standard_normal((M, M)))
    K = np.zeros((M, M))
    for q in range(M):                                         # height in the extended order of q
        K[:, q] = extended_order(ds, q).sum(axis=0)             # number of tokens below
    K = att_scale * (K + 0.05 * rng.standard_normal((M, M)))
    return ds, O, K


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("logit_scale, att_scale", [(1500.0, 2.0), (1500.0, 900.0)],
                         ids=["logit margins > 800", "logit and attention margins > 800"])
def test_underflow_directions_match_mpmath(seed, logit_scale, att_scale):
    """Past float64 underflow of the loss (all logit margins > 800, so L < e^{-800}), the
    normalized gradients match a 50-digit computation to 1e-12 (absolute, on unit-norm
    directions: float64 logits of size ~1e3 carry ~1e-13 absolute rounding), and are
    neither zero nor NaN; log10_loss matches to 1e-12 relative."""
    ds, O, K = _saturated(seed, logit_scale, att_scale)
    sentences, ys = ds.sentences(), ds.next_tokens.tolist()
    loss, GO_mp, GK_mp, margins = _mp_reference(O, K, sentences, ys)
    assert min(margins) > 800                                  # precondition of the test
    log10 = float(mpmath.log10(loss))

    GK, ls, l, l10 = kn.stage2_grad(O, K, *_args(ds))
    DK, _ = kn.normalize(GK)
    DK_mp, nK = _mp_direction(GK_mp)
    assert l == 0.0 and np.isfinite(l10) and np.all(np.isfinite(GK)) and np.any(GK)
    assert np.max(np.abs(DK - DK_mp)) < 1e-12
    assert l10 == pytest.approx(log10, rel=1e-12)
    assert float(mpmath.log(nK)) == pytest.approx(ls + math.log(np.linalg.norm(GK)), rel=1e-12)

    GO, GK2, ls2, _, l10b = kn.joint_grad(O, K, *_args(ds))
    DO, DK2, _ = kn.normalize_pair(GO, GK2)
    both = mpmath.sqrt(sum(v * v for G in (GO_mp, GK_mp) for row in G for v in row))
    DO_mp = np.array([[float(v / both) for v in row] for row in GO_mp])
    DK2_mp = np.array([[float(v / both) for v in row] for row in GK_mp])
    assert np.max(np.abs(DO - DO_mp)) < 1e-12 and np.max(np.abs(DK2 - DK2_mp)) < 1e-12
    assert l10b == pytest.approx(log10, rel=1e-12)


@pytest.mark.parametrize("t_scale", [900.0, 5000.0])
def test_stage1_underflow_matches_mpmath(t_scale):
    """Stage 1 along O* (C2 regime): margins t_scale, loss ~ e^{-t_scale}; direction and
    log10 loss to 1e-12 against 50 digits."""
    ds, O, _ = _saturated(0, t_scale, 0.0)
    xs, ys = ds.colloc_tokens, ds.colloc_next
    loss, GO_mp, _, margins = _mp_reference(O, np.zeros_like(O), [[x] for x in xs], ys.tolist())
    assert min(margins) > 800
    G, ls, l, l10 = kn.stage1_grad(O, xs, ys)
    D, _ = kn.normalize(G)
    assert l == 0.0 and np.all(np.isfinite(D)) and np.any(D)
    assert np.max(np.abs(D - _mp_direction(GO_mp)[0])) < 1e-12
    assert l10 == pytest.approx(float(mpmath.log10(loss)), rel=1e-12)


# ===================================================================== determinism
def test_parallel_runs_are_bit_identical():
    """Fixed chunks, per-chunk accumulators, fixed-order reduction: identical bits run to run."""
    M = 40
    ds = ri.generate(M, 3000, 2, 10, seed=5)
    assert kn.n_chunks(ds.n_sentences, ds.max_len, M) > 1     # the parallel path is taken
    rng = np.random.default_rng(5)
    O, K = rng.standard_normal((2, M, M))
    for f in (kn.stage2_grad, kn.joint_grad, kn.stage2_loss):
        first, second = f(O, K, *_args(ds)), f(O, K, *_args(ds))
        for x, y in zip(first, second):
            assert np.array_equal(x, y), f.__name__


def test_results_do_not_depend_on_the_thread_count(monkeypatch):
    """The chunking is a function of (N, Lmax, M) only: one thread and all threads give the
    same bits (the sentences of a chunk never move to another chunk)."""
    import numba
    M = 40
    ds = ri.generate(M, 1000, 2, 6, seed=6)                   # 2 chunks
    assert kn.n_chunks(ds.n_sentences, ds.max_len, M) == 2
    O, K = np.random.default_rng(6).standard_normal((2, M, M))
    monkeypatch.setenv(kn.THREADS_ENV, "parallel")           # always the threaded driver
    sd = kn.Stage2Direction(O, *_args(ds))
    n = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = sd.direction(K)
    finally:
        numba.set_num_threads(n)
    all_threads = sd.direction(K)
    assert np.array_equal(one[0], all_threads[0]) and one[1:] == all_threads[1:]


@pytest.mark.parametrize("M", [2, 5, 20, 21, 23, 24])
def test_padded_transpose_gives_the_unpadded_bits(M):
    """The compiled loops read O^T padded with zero columns to a multiple of 8; the padding
    adds only exact zeros, so the direction, the loss and the scale are the bits of the same
    chunk run on the unpadded O^T. O's entries are all negative here, so padding taken for
    logits (0 instead of -inf) would win the maximum and change every exponential; and the sum
    of the exponentials stops at M (at M = 23 a sum over the padding moves the last two terms
    into other partial sums: other bits)."""
    from refimpl.kernels_chunk import _drive_serial
    ds = ri.generate(M, 150, 1, 9, seed=M)
    rng = np.random.default_rng(M)
    O = -rng.uniform(1.0, 3.0, (M, M))
    K0 = rng.standard_normal((M, M))
    OT = kn._transposed(O)
    assert OT.shape == (M, -(-M // 8) * 8) and np.all(OT[:, M:] == 0.0)
    assert np.array_equal(OT[:, :M], O.T)
    flat, offsets, Lmax = kn.ragged(ds.flat_tokens, ds.lengths)
    ys = ds.next_tokens.astype(np.int64)
    for K, want_o, want_k in ((4.0 * K0, True, False), (4.0 * K0, False, True), (4.0 * K0, True, True),
                              (400.0 * K0, True, True)):       # 400: saturated attention (gap form)
        out = []
        for ot in (OT, np.ascontiguousarray(O.T)):
            GO, GK = np.empty((M, M) if want_o else (0, 0)), np.empty((M, M) if want_k else (0, 0))
            stats = _drive_serial(ot, K, flat, offsets, ys, Lmax, want_o, want_k, 1, True, GO, GK)
            out.append((GO, GK, stats))
        (GOp, GKp, sp), (GOu, GKu, su) = out
        assert sp == su and np.array_equal(GOp, GOu) and np.array_equal(GKp, GKu)
        assert np.isfinite(sp[1]) and sp[3] > 0.0              # a loss and a nonzero direction


# ===================================================================== building blocks
def test_exp_fma_and_dots_building_blocks():
    """kernels_math: the polynomial exp within 2 ulp of 50-digit mpmath (0 below -708, and
    for -inf), fma rounds once, dots4 lanes equal dot2 bit for bit, sumsq4 is the square norm."""
    from refimpl import kernels_math as km
    rng = np.random.default_rng(3)
    z = np.concatenate([-np.linspace(0.0, 40.0, 401), -rng.uniform(0.0, 708.0, 400),
                        [-708.5, -1e4, -np.inf]])
    w = np.empty_like(z)

    @__import__("numba").njit
    def exp_of(z, w):                       # the helpers are inline-only: call them from njit code
        km.exp_shifted(z, 0.0, w)
    exp_of(z, w)
    exact = [mpmath.exp(mpmath.mpf(v)) for v in z[:-3]]
    assert max(abs(float((mpmath.mpf(a) - e) / e)) for a, e in zip(w, exact)) < 2.0 ** -51
    assert np.all(w[-3:] == 0.0)

    @__import__("numba").njit
    def fma_of(a, b, c):
        return km.fma(a, b, c)
    e = 2.0 ** -30
    assert fma_of(1.0 + e, 1.0 - e, -1.0) == -(e * e)        # a*b + c rounded once: exact here

    A = rng.standard_normal((6, 203))
    b = rng.standard_normal(203)
    out = np.zeros(4)
    km.dots4(A, 5, 0, 3, 3, b, out, 0, 203)
    assert [km.dot2(A, i, b, 203) for i in (5, 0, 3, 3)] == out.tolist()
    assert out == pytest.approx(A[[5, 0, 3, 3]] @ b, rel=1e-13)
    assert km.sumsq4(A) == pytest.approx(float(np.sum(A * A)), rel=1e-14)
    D, n = kn.normalize(A)
    assert n == pytest.approx(np.linalg.norm(A), rel=1e-14) and np.allclose(D, A / n, rtol=1e-15, atol=0)


def test_exp_scalar_matches_mpmath_and_defers_outside_its_range():
    """exp_scalar: within 2 ulp of 50-digit mpmath on [-708, 709] (the scalar exponentials of
    the attention and the loss), and exactly libm's value where it defers (subnormal
    results, overflow, NaN)."""
    from numba import njit
    from refimpl import kernels_math as km

    @njit
    def exp_all(x, out):
        for v in range(x.shape[0]):
            out[v] = km.exp_scalar(x[v])
    rng = np.random.default_rng(4)
    x = np.concatenate([np.linspace(-40.0, 40.0, 801), rng.uniform(-708.0, 709.0, 400),
                        [-707.99, 708.99, 0.0, -0.0, 1e-300]])
    out = np.empty_like(x)
    exp_all(x, out)
    mpmath.mp.dps = 50
    worst = max(abs(float((mpmath.mpf(a) - mpmath.exp(mpmath.mpf(v))) / mpmath.exp(mpmath.mpf(v))))
                for a, v in zip(out, x))
    assert worst < 2.0 ** -51                    # 2 ulp: the bound stated in kernels_math
    edge = np.array([-720.0, -745.5, -800.0, 709.8, 1e4, np.inf, -np.inf, np.nan])
    out = np.empty_like(edge)
    exp_all(edge, out)
    with np.errstate(over="ignore"):
        ref = np.array([math.exp(v) if np.isfinite(v) and v < 709.79 else np.exp(v) for v in edge])
    np.testing.assert_array_equal(out, ref)     # bit for bit: the libm path
    assert out[0] > 0.0 and out[0] < 2.3e-308    # a subnormal, not flushed to 0


# ===================================================================== the per-step path
@pytest.mark.parametrize("chunks", [None, 1, 3], ids=["auto", "serial", "3 chunks"])
def test_stage2_direction_is_the_normalized_stage2_gradient(chunks):
    """Stage2Direction.direction(K) gives the same bits as normalize(stage2_grad(...)) and
    the same loss; a zero gradient gives D = 0, norm 0.0 (never NaN)."""
    M = 12
    ds = ri.generate(M, 400, 1, 7, seed=8)
    rng = np.random.default_rng(8)
    O, K = rng.standard_normal((2, M, M))
    sd = kn.Stage2Direction(O, *_args(ds), chunks=chunks)
    for K_t in (K, 3.0 * K, np.zeros((M, M))):
        D, norm, log_scale, loss, log10_loss = sd.direction(K_t)
        GK, ls2, l2, l10 = kn.stage2_grad(O, K_t, *_args(ds), chunks=chunks)
        D2, n2 = kn.normalize(GK)
        assert np.array_equal(D, D2) and norm == n2
        assert (log_scale, loss, log10_loss) == (ls2, l2, l10)
    # every sentence holds one distinct token: attention is constant, dL/dK is exactly 0
    tokens, lengths, ys = np.array([[1, 1], [2, -1]]), np.array([2, 1]), np.array([0, 3])
    D, norm, *_ = kn.Stage2Direction(np.eye(4), tokens, lengths, ys).direction(np.ones((4, 4)))
    assert norm == 0.0 and not np.any(D) and D.shape == (4, 4)
    with pytest.raises(ValueError, match="K must have shape"):
        sd.direction(np.zeros((M, M + 1)))


def test_stage1_direction_is_the_normalized_stage1_gradient():
    """Stage1Direction.direction(O) = normalize(stage1_grad(O)) with the same loss; the norm
    is summed over O^T's layout there, so the two agree to rounding (4 ulp), not bit for bit."""
    M = 9
    rng = np.random.default_rng(10)
    xs, ys = np.arange(M), rng.permutation(M)
    sd = kn.Stage1Direction(xs, ys, M)
    for O in (rng.standard_normal((M, M)), 50.0 * rng.standard_normal((M, M))):
        D, norm, log_scale, loss, log10_loss = sd.direction(O)
        G, ls2, l2, l10 = kn.stage1_grad(O, xs, ys)
        D2, n2 = kn.normalize(G)
        np.testing.assert_allclose(D, D2, rtol=0, atol=4 * 2.0 ** -53)
        assert norm == pytest.approx(n2, rel=4 * 2.0 ** -53)
        assert (log_scale, loss, log10_loss) == (ls2, l2, l10)
    with pytest.raises(ValueError, match="must be square"):
        sd.direction(np.zeros((M, M - 1)))


def test_compensated_step_is_the_kahan_update():
    """compensated_step: y = -eta D - c, W' = W + y, c' = (W' - W) - y, bit for bit against
    the same formula in NumPy (what the trainer did before this kernel)."""
    rng = np.random.default_rng(9)
    W = rng.standard_normal((7, 7)) * 1e3
    c = np.zeros_like(W)
    W_np, c_np = W.copy(), c.copy()
    out = np.empty_like(W)
    eta = 1e-9
    for _ in range(1000):
        D = rng.standard_normal((7, 7))
        kn.compensated_step(W, c, D, eta, out)
        W, out = out, W
        y = D * -eta - c_np
        t = W_np + y
        c_np = (t - W_np) - y
        W_np = t
        assert np.array_equal(W, W_np) and np.array_equal(c, c_np)


def test_kernel_step_memory_does_not_grow_with_n(tmp_path):
    """docs/model.md: the per-step kernel path allocates nothing of size N*L*M and
    nothing that grows with N. Run in a child process whose address space is capped at
    its current size + 1 GiB, with N*Lmax*M*8 bytes = 2.6 GB: one array of that size
    cannot be allocated (checked as a control), one kernel step still runs. The number of
    Numba runtime allocations per step (scratch per chunk, at most 4 chunks) is the same
    for N = 500 and N = 50000 at the same chunk count."""
    import subprocess
    import sys
    script = tmp_path / "child.py"
    script.write_text('''
import resource, sys
import numpy as np
import refimpl as ri
from numba.core.runtime import rtsys
from refimpl import kernels as kn

M, L = 400, 16
def allocations_per_step(ds, O, K, chunks=4):
    sd = kn.Stage2Direction(O, ds.tokens, ds.lengths, ds.next_tokens, chunks=chunks)
    sd.direction(K)
    before = rtsys.get_allocation_stats().alloc
    sd.direction(K)
    return rtsys.get_allocation_stats().alloc - before
rng = np.random.default_rng(0)
O, K = rng.standard_normal((2, M, M))
small = ri.generate(M, 500, 2, L, seed=0)
big = ri.generate(M, 50_000, 2, L, seed=0)
assert big.max_len == L
n_small = allocations_per_step(small, O, K)
vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))
n_big = allocations_per_step(big, O, K)
assert kn.n_chunks(big.n_sentences, L, M) == 4   # so n_big used the default path
try:
    np.ones((big.n_sentences, L, M))
    print("CONTROL-FAILED")
except MemoryError:
    pass
print("OK", n_small, n_big)
''')
    env = dict(__import__("os").environ, NUMBA_NRT_STATS="1")   # count runtime allocations
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                       env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "CONTROL-FAILED" not in r.stdout, "the address-space cap did not bite: the test proves nothing"
    words = r.stdout.split()
    assert words[0] == "OK" and words[1] == words[2], r.stdout
