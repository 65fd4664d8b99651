"""The structured paths (refimpl.kernels_sparse, used by kernels.Stage2Direction,
kernels.Stage1Direction and trajectory.ExcessLoss) against the dense kernels: detection,
agreement of the directions, losses, scales and recorded metrics, thread independence, and the
trainer on either path. Stage 1 has its own bound (:func:`_tol1`).

Tolerance. The two paths form the same logits bit for bit (the same fused multiply-adds in the
same order) and then differ in two roundings only: sum_{v != y} e^{z_v - zmax} is a product
(M - |S|) e^{base - zmax} plus a few terms instead of the dense fixed-order sum of M terms
(relative error <= ~M eps), and g_l = O[:, x_l]^T (p - e_y) is the exact sparse value, whereas
the dense dot product of length M rounds at ~M eps |c_x| sum_v p_v. Relative to the largest
entry of the direction (and to the loss) the difference is therefore bounded by a modest
multiple of M eps times the ratio of the column constants to the exception differences, which
is O(1) in every case here: ``_tol(M) = 64 M eps`` (measured values are printed on failure and
were 0 .. 4e-14 for M <= 60, at most ~3 M eps; 2e-14 for the direction at M = 5000).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import refimpl as ri
from refimpl import kernels as kn
from refimpl import kernels_sparse as ks
from refimpl import train as train_mod

_EPS = 2.0 ** -52


def _tol(M):
    """Agreement bound of the two paths, relative (module docstring)."""
    return 64.0 * M * _EPS


def _rel(a, b):
    """max |a - b| / max |b| (0 when both are 0)."""
    a, b = np.asarray(a), np.asarray(b)
    den = float(np.max(np.abs(b))) if b.size else 0.0
    num = float(np.max(np.abs(a - b))) if b.size else 0.0
    return num / den if den > 0 else num


def _args(ds):
    return ds.flat_tokens, ds.lengths, ds.next_tokens


def _both(O, tokens, lengths, ys):
    s = kn.Stage2Direction(O, tokens, lengths, ys, structured=True)
    d = kn.Stage2Direction(O, tokens, lengths, ys, structured=False)
    assert s.structured and not d.structured
    return s, d


def _agree(s, d, K, M, what=""):
    """The two paths at K: direction, norm, log_scale, loss, log10_loss (all to _tol(M))."""
    a, b = s.direction(K), d.direction(K)
    tol = _tol(M)
    assert np.isfinite(a[0]).all()
    assert _rel(a[0], b[0]) <= tol, f"{what}: direction differs by {_rel(a[0], b[0]):.3e} > {tol:.3e}"
    assert (a[1] == 0.0) == (b[1] == 0.0)
    assert a[1] == pytest.approx(b[1], rel=tol, abs=0.0), what
    assert a[2] == pytest.approx(b[2], rel=tol, abs=tol), what            # log_scale
    assert a[3] == pytest.approx(b[3], rel=tol, abs=0.0), what            # loss (0.0 when it underflows)
    assert a[4] == pytest.approx(b[4], rel=tol, abs=tol), what            # log10_loss (finite)
    assert math.isfinite(a[4])
    return a, b


def _stage1_O(ds, T0):
    return ri.train_two_stage(ds, T0=T0, T=0, progress=False).W_ov


# ===================================================================== detection
@pytest.mark.parametrize("M,T0", [(8, 30), (40, 100)])
def test_zero_init_stage1_output_is_one_exception_per_collocation_column(M, T0):
    """After stage 1 from zero, column x of O is c_x 1 plus one different entry at the
    collocation successor n(x) for x in C, and exactly 0 for x outside C: every step adds
    bitwise identical values to the other entries of a column."""
    ds = ri.generate(M, 400, 2, 6, seed=3)
    O = _stage1_O(ds, T0)
    cst, eoff, erow, evals, edif = ks.detect(O, 4 * M)
    nexc = np.diff(eoff)
    colloc = np.zeros(M, dtype=bool)
    colloc[ds.colloc_tokens] = True
    succ = dict(zip(ds.colloc_tokens.tolist(), ds.colloc_next.tolist()))
    for x in range(M):
        col = O[:, x]
        if colloc[x]:
            assert nexc[x] == 1 and erow[eoff[x]] == succ[x]
            others = np.delete(col, succ[x])
            assert np.all(others.view(np.int64) == others[0].view(np.int64))      # bitwise equal
            assert cst[x] == others[0] < 0.0 < evals[eoff[x]] == col[succ[x]]
        else:
            assert nexc[x] == 0 and np.all(col.view(np.int64) == 0)               # +0.0 exactly
    assert kn.Stage2Direction(O, *_args(ds), structured=True).structured


def test_detection_is_exact_and_refuses_unstructured():
    rng = np.random.default_rng(0)
    M = 30
    O = np.repeat(rng.standard_normal(M)[None, :], M, axis=0)      # column constants
    O[3, 5] = 7.0
    O[0, 5] = -1.0
    O[29, 0] = np.nextafter(O[29, 0], np.inf)                      # one ulp away: an exception
    O[:, 7] = 0.0
    O[4, 7] = -0.0                                                 # -0.0 differs bitwise from +0.0
    cst, eoff, erow, evals, edif = ks.detect(O, 4 * M)
    assert np.diff(eoff).tolist() == [1, 0, 0, 0, 0, 2, 0, 1] + [0] * (M - 8)
    assert erow[eoff[5]:eoff[6]].tolist() == [0, 3] and evals[eoff[5]:eoff[6]].tolist() == [-1.0, 7.0]
    rebuilt = np.repeat(cst[None, :], M, axis=0)
    for x in range(M):
        rebuilt[erow[eoff[x]:eoff[x + 1]], x] = evals[eoff[x]:eoff[x + 1]]
    assert np.array_equal(rebuilt.view(np.int64), O.view(np.int64))
    # a random O, and too many exceptions in one column, fall back to the dense kernel
    ds = ri.generate(M, 200, 2, 6, seed=0)
    assert ks.detect(rng.standard_normal((M, M)), 4 * M) is None
    assert not kn.Stage2Direction(rng.standard_normal((M, M)), *_args(ds), structured=True).structured
    O2 = O.copy()
    O2[:10, 9] = np.arange(10.0) + 100.0                           # 10 > 8 exceptions in column 9
    assert ks.detect(O2, 4 * M, 10) is not None and ks.detect(O2, 4 * M) is None
    assert not kn.Stage2Direction(O2, *_args(ds), structured=True).structured
    # automatic choice: small M stays dense (the bits of stage2_grad), explicit chunks too
    assert not kn.Stage2Direction(O, *_args(ds)).structured
    assert not kn.Stage2Direction(O, *_args(ds), chunks=1, structured=True).structured


# ===================================================================== agreement with the dense kernel
def _scales_K(M, rng, K_star=None):
    """Moderate K (random, zero, ties) and saturated K (attention gaps of 10..1e3)."""
    Ks = [np.zeros((M, M)), 0.3 * rng.standard_normal((M, M)), 3.0 * rng.standard_normal((M, M)),
          np.round(rng.standard_normal((M, M))), 300.0 * rng.standard_normal((M, M))]
    if K_star is not None and np.abs(K_star).max() > 0:
        unit = K_star / np.linalg.norm(K_star)
        Ks += [c * unit for c in (1.0, 30.0, 1e3, 1e5)]
    return Ks


@pytest.mark.parametrize("M,N,lo,hi,T0", [(2, 40, 1, 4, 20), (3, 60, 1, 5, 20), (7, 300, 1, 6, 50),
                                          (25, 800, 2, 8, 100), (60, 3000, 1, 6, 50)])
def test_stage1_output_matches_dense(M, N, lo, hi, T0):
    """Zero-init stage-1 outputs (and huge multiples of them: the loss underflows), moderate and
    saturated K, length-1 sentences (lo = 1), M = 2."""
    ds = ri.generate(M, N, lo, hi, seed=M)
    res = ri.train_two_stage(ds, T0=T0, T=0, progress=False)
    rng = np.random.default_rng(M)
    for scale in (1.0, 1e3, 1e6):
        O = scale * res.W_ov
        s, d = _both(O, *_args(ds))
        for j, K in enumerate(_scales_K(M, rng, res.K_star)):
            a, b = _agree(s, d, K, M, f"scale {scale}, K #{j}")
            if scale == 1e6 and j == 8:
                assert b[3] == 0.0 and a[3] == 0.0 and b[4] < -300      # the loss underflows, log10 finite


def _synthetic(M, rng, kmax, zero_cols=0.3):
    """Column constants (some columns identically 0) plus 0..kmax exceptions per column."""
    cst = rng.standard_normal(M)
    cst[rng.random(M) < zero_cols] = 0.0
    O = np.repeat(cst[None, :], M, axis=0)
    for x in range(M):
        k = int(rng.integers(0, kmax + 1))
        rows = rng.choice(M, size=min(k, M), replace=False)
        O[rows, x] = cst[x] + 2.0 * rng.standard_normal(len(rows))
    return O


@pytest.mark.parametrize("M", [2, 3, 5, 16, 50])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_structures_match_dense(M, seed):
    """Random constants with 0-3 exceptions per column, random sentences of lengths 1..7
    (repeated tokens included), random next tokens; O at scales up to 1e4 (saturated)."""
    rng = np.random.default_rng(100 * M + seed)
    N = 400
    lengths = rng.integers(1, 8, size=N)
    tokens = rng.integers(0, M, size=int(lengths.sum()))
    ys = rng.integers(0, M, size=N)
    base = _synthetic(M, rng, 3)
    for scale in (1.0, 30.0, 1e4):
        s, d = _both(scale * base, tokens, lengths, ys)
        for j, K in enumerate(_scales_K(M, rng)):
            _agree(s, d, K, M, f"scale {scale}, K #{j}")


def test_identically_zero_O_and_single_tokens():
    """O = 0 (no exceptions at all): g = 0 everywhere, so the direction is exactly zero on both
    paths; one-token sentences alone give dL/dK = 0 as well."""
    M = 6
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 5, size=50)
    tokens = rng.integers(0, M, size=int(lengths.sum()))
    ys = rng.integers(0, M, size=50)
    s, d = _both(np.zeros((M, M)), tokens, lengths, ys)
    K = rng.standard_normal((M, M))
    a, b = s.direction(K), d.direction(K)
    assert a[1] == b[1] == 0.0 and not a[0].any() and not b[0].any()
    assert a[3] == pytest.approx(b[3], rel=_tol(M)) and a[3] == pytest.approx(math.log(M), rel=_tol(M))
    O = _synthetic(M, rng, 2)
    s, d = _both(O, tokens[:20], np.ones(20, dtype=np.int64), ys[:20])
    a, b = s.direction(K), d.direction(K)
    assert a[1] == b[1] == 0.0 and a[2] == b[2] == 0.0
    assert a[3] == pytest.approx(b[3], rel=_tol(M)) and a[4] == pytest.approx(b[4], rel=_tol(M))


# ===================================================================== determinism
@pytest.mark.parametrize("mode", ["serial", "parallel", "auto"])
def test_structured_bits_do_not_depend_on_threads(monkeypatch, mode):
    """Chunks are a function of the sizes (kernels_sparse.sparse_chunks) and reduced in order."""
    M = 40
    ds = ri.generate(M, 6000, 2, 8, seed=5)
    assert ks.sparse_chunks(ds.n_sentences, len(ds.flat_tokens)) > 1
    O = _stage1_O(ds, 40)
    K = np.random.default_rng(5).standard_normal((M, M))
    monkeypatch.setenv(kn.THREADS_ENV, "serial")
    ref = kn.Stage2Direction(O, *_args(ds), structured=True).direction(K)
    monkeypatch.setenv(kn.THREADS_ENV, mode)
    sd = kn.Stage2Direction(O, *_args(ds), structured=True)
    for _ in range(8):
        got = sd.direction(K)
        assert np.array_equal(got[0], ref[0]) and got[1:] == ref[1:]


# ===================================================================== the trainer
def test_trainer_stage2_structured_equals_dense(monkeypatch):
    """stage2_replay (the trainer's per-step path) over 300 steps with the structured direction
    (forced at this small M) and with the dense one: the iterates agree to _tol(M) relative at
    every step (each step moves K by eta exactly in norm and the directions agree to _tol, so
    the difference grows at most linearly; measured it stays ~1e-15), and the stop reasons
    are equal. The trainer itself then takes the structured path when forced."""
    M = 30
    ds = ri.generate(M, 1500, 2, 6, seed=7)
    monkeypatch.setattr(kn, "_STRUCT_MIN_M", 2)
    O = _stage1_O(ds, 100)                                         # (stage 1 on its structured path)
    eta = ri.TrainConfig().resolved(M).eta
    runs = {}
    for name, min_m in (("structured", 2), ("dense", 10 ** 9)):
        monkeypatch.setattr(kn, "_STRUCT_MIN_M", min_m)
        Ks = []
        reason = train_mod.stage2_replay(ds, O, np.zeros((M, M)), eta, 300, lambda t, K: Ks.append(K.copy()))
        runs[name] = (reason, Ks)
        assert kn.Stage2Direction(O, *_args(ds)).structured == (name == "structured")
    (r1, K1), (r2, K2) = runs["structured"], runs["dense"]
    assert r1 == r2 == "completed" and len(K1) == len(K2) == 301
    worst = max(_rel(a, b) for a, b in zip(K1[1:], K2[1:]))
    assert worst <= _tol(M) * 300, f"iterates differ by {worst:.3e}"
    monkeypatch.setattr(kn, "_STRUCT_MIN_M", 2)
    res = ri.train_two_stage(ds, T0=100, T=300, eta=eta, progress=False)
    assert res.stop_reason == {"stage1": "completed", "stage2": "completed"}
    assert np.array_equal(res.W_ov, O)
    assert np.array_equal(res.W_kq, K1[-1])                        # the trainer's path is the replay's


# ===================================================================== recorded-step metrics
def _excess_pair(ds, O, monkeypatch, floor_data=None):
    """ExcessLoss on the structured pass (forced at this M) and on the dense one; the floor data
    (floor, vertex, log_floor) from stage2_floor unless given."""
    from refimpl.trajectory import ExcessLoss
    if floor_data is None:
        floor, _, vertex, details = ri.stage2_floor(ds, O, return_details=True)
        floor_data = (floor, vertex, details["log_loss"])
    monkeypatch.setattr(kn, "_STRUCT_MIN_M", 2)
    s = ExcessLoss(ds, O, *floor_data)
    monkeypatch.setattr(kn, "_STRUCT_MIN_M", 10 ** 9)
    d = ExcessLoss(ds, O, *floor_data)
    assert s._rep is not None and d._rep is None
    return s, d, floor_data[1]


def _excess_agree(s, d, K, M, what):
    """Same accuracy (count), excess and log10 excess to _tol(M) (the per-sentence values are
    the same bits; the sums over the M rows differ in order)."""
    a, b = s.at(K), d.at(K)
    assert a[2] == b[2], f"{what}: accuracy {a[2]} vs {b[2]}"
    tol = _tol(M)
    assert a[0] == pytest.approx(b[0], rel=tol, abs=0.0), what
    assert (a[1] == b[1] == -math.inf) or a[1] == pytest.approx(b[1], rel=tol, abs=tol), what
    return a, b


@pytest.mark.parametrize("M,N,lo,hi,T0", [(2, 40, 1, 4, 20), (5, 200, 1, 6, 40), (25, 800, 2, 8, 100),
                                          (60, 3000, 1, 6, 50)])
def test_structured_excess_matches_dense(monkeypatch, M, N, lo, hi, T0):
    """Stage-1 outputs (and 1e3 times them: excesses far below the smallest double, taken in log
    space), K = 0 (ties: the exact-recheck band of the accuracy), random K and growing multiples
    of K* (the vertex branch, then every sentence at its floor or within rounding of it)."""
    ds = ri.generate(M, N, lo, hi, seed=M + 1)
    res = ri.train_two_stage(ds, T0=T0, T=0, progress=False)
    rng = np.random.default_rng(M)
    for scale in (1.0, 1e3):
        s, d, vertex = _excess_pair(ds, scale * res.W_ov, monkeypatch)
        for j, K in enumerate(_scales_K(M, rng, res.K_star)):
            _excess_agree(s, d, K, M, f"scale {scale}, K #{j}")


@pytest.mark.parametrize("M", [3, 7, 30])
@pytest.mark.parametrize("seed", [0, 1])
def test_structured_excess_synthetic(monkeypatch, M, seed):
    """Random constants plus 0-3 exceptions per column on a generated dataset. The floor data are
    made up (random vertex flags, log-floors between -6 and 0.5): the kernels take them as
    inputs, and stage2_floor's simplex solves do not converge on such O. So both the vertex
    branch and the direct (log-loss) branch run, with and without positive excess."""
    ds = ri.generate(M, 300, 1, 6, seed=seed)
    rng = np.random.default_rng(seed + 10 * M)
    N = ds.n_sentences
    for scale in (1.0, 20.0):
        O = scale * _synthetic(M, rng, 3)
        floor_data = (0.1, rng.random(N) < 0.5, rng.uniform(-6.0, 0.5, size=N))
        s, d, vertex = _excess_pair(ds, O, monkeypatch, floor_data)
        for j, K in enumerate(_scales_K(M, rng)):
            _excess_agree(s, d, K, M, f"scale {scale}, K #{j}")


# ===================================================================== stage 1
def _tol1(M):
    """Stage-1 agreement bound, relative. The dense kernel sums the M^2 squared entries of the
    gradient one after another in 4 lanes (error up to ~M^2 eps / 4 relative in ||G||^2, and
    the entries sharing a column's value are nearly equal, so the errors add up), while the
    structured one takes (M - |S|) r^2 per column as one product: M^2 eps bounds the norm's
    difference and hence D's (measured 3 M eps at M = 300)."""
    return max(float(M * M) * _EPS, _tol(M))


@pytest.mark.parametrize("M,seed", [(2, 0), (5, 1), (40, 2), (120, 3)])
def test_stage1_direction_structured_matches_dense(M, seed):
    """Along a zero-init stage-1 run (every iterate constant + one exception per collocation
    column) and at huge multiples of its last iterate (the loss underflows): the structured and
    the dense Stage1Direction agree to _tol1(M); the structured D is itself constant + one
    exception per collocation column, so the next iterate keeps the form."""
    ds = ri.generate(M, 20 * M, 2, 6, seed=seed)
    xs, ys = ds.colloc_tokens, ds.colloc_next
    s = kn.Stage1Direction(xs, ys, M, structured=True)
    d = kn.Stage1Direction(xs, ys, M, structured=False)
    eta0 = ri.TrainConfig().resolved(M).eta0
    Os = []
    assert train_mod.stage1_replay(ds, np.zeros((M, M)), eta0, 60, lambda t, O: Os.append(O.copy())) == "completed"
    tol = _tol1(M)
    for j, O in enumerate(Os[::6] + [Os[-1] * 1e3, Os[-1] * 1e6]):
        a, b = s.direction(O), d.direction(O)
        assert _rel(a[0], b[0]) <= tol, f"#{j}: {_rel(a[0], b[0]):.3e}"
        assert a[1] == pytest.approx(b[1], rel=tol) and a[2] == pytest.approx(b[2], rel=tol, abs=tol)
        assert a[3] == pytest.approx(b[3], rel=tol, abs=0.0) and a[4] == pytest.approx(b[4], rel=tol, abs=tol)
        rep = ks.detect(a[0], 4 * M)
        assert rep is not None and np.diff(rep[1]).max() <= 1
    assert s.structured_calls == len(Os[::6]) + 2
    assert b[3] == 0.0 and math.isfinite(b[4])                       # saturated: loss underflows


def test_stage1_structured_falls_back():
    """A random O, repeated collocation tokens, and stage1_grad (always dense) take the dense path."""
    M = 12
    rng = np.random.default_rng(0)
    xs = np.arange(M, dtype=np.int64)
    ys = rng.integers(0, M, size=M)
    s = kn.Stage1Direction(xs, ys, M, structured=True)
    s.direction(rng.standard_normal((M, M)))
    assert s.structured_calls == 0
    s.direction(np.zeros((M, M)))
    assert s.structured_calls == 1
    rep = kn.Stage1Direction(np.array([1, 1]), np.array([2, 3]), M, structured=True)
    rep.direction(np.zeros((M, M)))
    assert rep.structured_calls == 0
    assert kn.Stage1Direction(xs, ys, M).direction(np.zeros((M, M))) is not None   # M < 256: dense
    assert kn.Stage1Direction(xs, ys, M)._min_m == kn._STRUCT_MIN_M


def test_trainer_both_stages_structured_close_to_dense(monkeypatch):
    """train_two_stage with the structured paths forced (both stages, and the excess metrics)
    against the dense paths: the stage-1 output agrees to _tol1(M) * T0 (per-step differences
    add at most linearly), is still constant + one exception per collocation column, and the
    stage-2 iterate and the recorded columns agree to the same order."""
    M = 30
    ds = ri.generate(M, 1500, 2, 6, seed=11)
    out = {}
    for name, min_m in (("structured", 2), ("dense", 10 ** 9)):
        monkeypatch.setattr(kn, "_STRUCT_MIN_M", min_m)
        out[name] = ri.train_two_stage(ds, T0=100, T=100, progress=False)
    s, d = out["structured"], out["dense"]
    tol = _tol1(M) * 100
    assert s.stop_reason == d.stop_reason == {"stage1": "completed", "stage2": "completed"}
    assert _rel(s.W_ov, d.W_ov) <= tol and _rel(s.W_kq, d.W_kq) <= tol
    assert ks.detect(s.W_ov, 4 * M) is not None
    for col in ("loss", "log10_loss", "train_accuracy", "excess_loss", "log10_excess", "norm", "cos_to_star"):
        a, b = np.asarray(s.stage2[col]), np.asarray(d.stage2[col])
        if col == "train_accuracy":   # at K = 0 many logits tie exactly: O's last-ulp differences flip them
            a, b = a[1:], b[1:]
        assert np.allclose(a, b, rtol=tol, atol=0.0, equal_nan=True), col
    for col in ("loss", "log10_loss"):
        assert np.allclose(np.asarray(s.stage1[col]), np.asarray(d.stage1[col]), rtol=tol, atol=0.0), col


# ===================================================================== the default threshold
@pytest.mark.parametrize("M", [63, 64])
def test_structured_path_is_the_default_from_m_64(M):
    """With no override every structured pass (stage-1 and stage-2 directions, the recorded
    excess) is taken from M = 64 on and none below (kernels._STRUCT_MIN_M: from there the
    structured step is at least as fast as the dense one, bench/README.md); the trainer's O
    after stage 1 from zero has the structure at either M."""
    from refimpl.trajectory import ExcessLoss
    assert kn._STRUCT_MIN_M == 64
    ds = ri.generate(M, 400, 2, 6, seed=3)
    O = ri.train_two_stage(ds, T0=30, T=0, progress=False).W_ov
    assert kn.structure(O) is not None                    # the form is there at any M
    on = M >= 64
    assert kn.Stage2Direction(O, *_args(ds)).structured == on
    floor, _, vertex, details = ri.stage2_floor(ds, O, return_details=True)
    assert (ExcessLoss(ds, O, floor, vertex, details["log_loss"])._rep is not None) == on
    s1 = kn.Stage1Direction(ds.colloc_tokens, ds.colloc_next, M)
    s1.direction(O)
    assert (s1.structured_calls == 1) == on


# ===================================================================== special_chain
def _chain_case(rng, M, L, kmax, scale):
    """A column-constant O with up to kmax exceptions per column, a sentence of L positions
    (tokens repeat) and attention weights spanning ``scale`` orders of magnitude."""
    cst = rng.standard_normal(M)
    O = np.tile(cst, (M, 1))
    for x in range(M):
        for v in rng.choice(M, size=rng.integers(0, kmax + 1), replace=False):
            O[v, x] = rng.standard_normal() * 10.0 ** rng.integers(-3, 4)
    tokens = rng.integers(0, M, size=L)
    ph = 10.0 ** rng.uniform(-scale, 0, size=L)
    return O, tokens, ph / ph.sum()


@pytest.mark.parametrize("M, L, kmax, scale", [(12, 1, 1, 0), (12, 7, 1, 3), (40, 300, 1, 300),
                                               (40, 300, 8, 30), (9, 500, 8, 0)])
def test_special_chain_is_the_row_by_row_dense_chain(M, L, kmax, scale):
    """kernels_sparse.special_chain against the chain run row by row on the dense O
    (``a0 O[v, x_0]``, then ``fma(ph[l], O[v, x_l], .)`` in position order, the dense kernel's
    operations): equal bit for bit, for every special row and for the returned constant chain,
    both for the sentence form (lo = 0) and the shifted form of the excess pass (lo = -1, a
    separate first column). Edges: one position, chains of 300-500 positions (longer than 256),
    up to 8 exceptions in a column (the non-single path), weights down to 1e-300."""
    from numba import njit
    from refimpl.kernels_math import fma

    @njit
    def run(cst, eoff, erow, evals, tokens, lo, hi, x0, a0, ph, rows, M):
        pos = np.full(M, -1, dtype=np.int64)
        for k in range(rows.shape[0]):
            pos[rows[k]] = k
        zs = np.empty(rows.shape[0])
        base = ks.special_chain(cst, eoff, erow, evals, tokens, 0, lo, hi, x0, a0, ph, pos, rows.shape[0], zs,
                                np.empty(max(1, np.diff(eoff).max())))
        return zs, base

    @njit
    def reference(O, tokens, lo, hi, x0, a0, ph, v):
        z = a0 * O[v, x0]
        for l in range(lo + 1, hi):
            z = fma(ph[l], O[v, tokens[l]], z)
        return z

    rng = np.random.default_rng(M * L + kmax)
    O, tokens, ph = _chain_case(rng, M, L, kmax, scale)
    cst, eoff, erow, evals, _ = ks.detect(O, M * M, M)
    rows = np.arange(M)                                   # every row special (a superset is allowed)
    for lo, x0, a0 in ((0, tokens[0], ph[0]), (-1, int(rng.integers(M)), -0.75)):
        zs, base = run(cst, eoff, erow, evals, tokens, lo, L, x0, a0, ph, rows, M)
        want = np.array([reference(O, tokens, lo, L, x0, a0, ph, v) for v in range(M)])
        assert np.array_equal(zs.view(np.int64), want.view(np.int64))
        want_base = reference(np.tile(cst, (M, 1)), tokens, lo, L, x0, a0, ph, 0)   # O = the constants
        assert np.float64(base).view(np.int64) == np.float64(want_base).view(np.int64)
