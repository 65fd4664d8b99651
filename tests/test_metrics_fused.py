"""The compiled record path (refimpl.kernels_metrics) against its NumPy reference (refimpl.trajectory).

The trainer records the excess loss, its log10 and the train accuracy through
``ExcessLoss.at(K)`` (one pass over the ragged sentences, no (N, M) array); these tests
compare it with ``ExcessLoss.reference(phi, z)`` and ``accuracy(logits(...))`` on moderate,
saturated and huge weights, length-1 sentences, interior (non-vertex) floors and M = 2, and
the stage-1 / matrix / constraint metrics with their NumPy twins.
"""
import math

import numpy as np
import pytest

import refimpl as ri
from refimpl import kernels
from refimpl import kernels_metrics as km
from refimpl.maxmargin import stage2_floor, w_kq_star, w_ov_star
from refimpl.train import train_joint, train_two_stage
from refimpl.trajectory import (ExcessLoss, LogitAccuracy, accuracy, attention_constraints, attention_margin,
                                attention_margin_np, direction_metrics, stage1_metrics, stage1_metrics_np)

# Tolerance of the log-excess (natural log; = relative error of the excess), scaled by
# max(1, |log excess|): the two paths differ only in rounding -- polynomial exp/expm1 (<= 3 ulp)
# against libm, fixed-order against pairwise sums, z - z* accumulated with fused
# multiply-adds, log1p(R) against the reference's log R = c + log(num) - log1p(S*), whose
# absolute rounding grows with |c| ~ |log excess| -- and the sum sum_v eb_v expm1(delta_v) has
# terms of both signs, which multiplies those few ulps by its cancellation factor. Observed:
# <= 4e-15 absolute below |log excess| = 1 and <= 5e-16 |log excess| above; 1e-13 leaves a
# factor >= 25 for cancellation.
LOG_TOL = 1e-13


def _unit(W):
    return W / np.linalg.norm(W)


def _excess(ds, O):
    floor, _, vertex, details = stage2_floor(ds, O, return_details=True)
    return ExcessLoss(ds, O, floor, vertex, details["log_loss"]), vertex


def _compare(ds, O, K):
    """(reference, fused) for one (O, K); asserts the accuracy is the same count."""
    ex, _ = _excess(ds, O)
    phi = kernels.attention(K, ds.tokens, ds.lengths)
    z = kernels.logits(O, None, ds.tokens, ds.lengths, phi=phi)
    ref_ex, ref_l10 = ex.reference(phi, z)
    got_ex, got_l10, got_acc = ex.at(K)
    # the same bits: margins within rounding of a tie are recomputed exactly as kernels.logits does
    assert got_acc == accuracy(z, ds.next_tokens)
    _assert_close(ref_ex, ref_l10, got_ex, got_l10)
    return (ref_ex, ref_l10), (got_ex, got_l10)


def _assert_close(ref_ex, ref_l10, got_ex, got_l10):
    if ref_l10 == -math.inf:
        assert got_l10 == -math.inf and got_ex == 0.0
        return
    assert math.isfinite(got_l10)
    # LOG_TOL: see its definition (rounding only, times the cancellation in the sign-mixed sum)
    ln_ref = ref_l10 * math.log(10)
    assert abs(got_l10 - ref_l10) * math.log(10) <= LOG_TOL * max(1.0, abs(ln_ref)), (ref_l10, got_l10)
    if ref_ex > 1e-300:                            # the same relative bound on the float64 excess
        assert abs(got_ex - ref_ex) <= 2 * LOG_TOL * max(1.0, abs(ln_ref)) * ref_ex, (ref_ex, got_ex)
    else:                                          # subnormal or 0: exp(log) rounds coarsely there
        assert got_ex <= 1e-299


DATASETS = {  # (M, N, min_len, max_len, seed): lengths from 1 give length-1 sentences
    "M2": (2, 30, 1, 4, 3),
    "M8": (8, 40, 1, 5, 0),
    "M20": (20, 200, 2, 6, 0),
    "M50": (50, 300, 1, 10, 2),
}


@pytest.fixture(scope="module", params=list(DATASETS))
def ds(request):
    return ri.generate(*DATASETS[request.param])


@pytest.mark.parametrize("a", [1.0, 10.0])
@pytest.mark.parametrize("k_scale", [0.0, 0.5, 5.0])
def test_moderate_weights(ds, a, k_scale):
    """O = a hat O* and random K of moderate size: excess (far from the floor) and accuracy."""
    rng = np.random.default_rng(7)
    O = a * _unit(w_ov_star(ds)[0])
    _compare(ds, O, k_scale * rng.standard_normal(O.shape))


def test_saturated_attention(ds):
    """K entries ~1e3: attention is 0/1 to many digits (phi of other tokens ~e^{-1000}), both
    random (far from the floor) and along K* (the excess is e^{-hundreds}, past float64)."""
    rng = np.random.default_rng(8)
    O = 10.0 * _unit(w_ov_star(ds)[0])
    _compare(ds, O, 1e3 * rng.standard_normal(O.shape))
    K_star = w_kq_star(ds)[0]
    if np.any(K_star):
        _compare(ds, O, 1e3 * _unit(K_star))


@pytest.mark.parametrize("c", [1.0, 10.0, 100.0, 1000.0])
def test_huge_output_margins(ds, c):
    """O = 900 hat O*: every floor is ~e^{-900 gamma}, below the smallest double, and the
    excess along K* underflows; log10 excess must still agree (and be finite while > 0)."""
    O = 900.0 * _unit(w_ov_star(ds)[0])
    K_star = w_kq_star(ds)[0]
    K = c * _unit(K_star) if np.any(K_star) else np.zeros_like(O)
    ref, got = _compare(ds, O, K)
    if ref[1] > -math.inf:
        assert math.isfinite(got[1])


def test_interior_floors():
    """A random O: for many sentences the floor lies inside the attention simplex (vertex False),
    which takes the direct branch log(loss_i) + log(-expm1(f_i - l_i))."""
    ds = ri.generate(*DATASETS["M20"])
    rng = np.random.default_rng(9)
    O = 3.0 * rng.standard_normal((20, 20))
    _, vertex = _excess(ds, O)
    assert (~vertex).sum() > 10 and vertex.sum() > 0     # both branches are exercised
    for k_scale in (0.0, 0.5, 5.0, 1e3):
        _compare(ds, O, k_scale * rng.standard_normal(O.shape))


def test_length_one_sentences_are_at_their_floor():
    """Only length-1 sentences: z = z* for every K, so the excess is exactly 0 on both paths."""
    ds = ri.RealizableDataset(3, {0: 1, 1: 2, 2: 0}, [[0], [1], [2], [0]], [1, 2, 0, 1])
    O = _unit(w_ov_star(ds)[0]) * 5.0
    ex, _ = _excess(ds, O)
    got = ex.at(np.ones((3, 3)))
    assert got == (0.0, -math.inf, 1.0)
    _compare(ds, O, np.ones((3, 3)))


def test_exact_tie_in_logits():
    """Sentence [0, 1] with uniform attention and O[2, 0] = O[3, 1], O[2, 1] = O[3, 0]: the logits
    of 2 and 3 tie exactly in kernels.logits, so the sentence is not counted as correct; the
    fused margin is within rounding of 0 and is recomputed exactly (same count, bit for bit)."""
    ds = ri.RealizableDataset(4, {0: 2, 1: 3}, [[0, 1], [1, 0]], [2, 3])
    O = np.zeros((4, 4))
    O[2, 0] = O[3, 1] = 0.1
    O[2, 1] = O[3, 0] = 0.7
    K = np.zeros((4, 4))
    z = kernels.logits(O, K, ds.tokens, ds.lengths)
    assert z[0, 2] == z[0, 3] and z[1, 2] == z[1, 3]
    ex, _ = _excess(ds, O)
    assert ex.at(K)[2] == accuracy(z, ds.next_tokens) == 0.0
    assert LogitAccuracy(ds)(O, K) == 0.0
    assert _excess(ds, np.zeros((4, 4)))[0].at(K)[2] == 0.0     # O = 0: every logit ties


def test_chunks_do_not_change_bits(ds):
    """Per-sentence values depend on that sentence only and are summed in index order: the
    result is the same for any chunking (so for any thread count)."""
    rng = np.random.default_rng(10)
    O = 10.0 * _unit(w_ov_star(ds)[0])
    K = 0.5 * rng.standard_normal(O.shape)
    ex, _ = _excess(ds, O)
    results = set()
    for nc in (1, 2, 3, 8):
        ex._nc = nc
        results.add(ex.at(K))
    assert len(results) == 1


def test_no_sentence_by_vocabulary_arrays():
    """The constructor keeps O(N) arrays and O(M^2) tables only (N = 200 > M = 20 here)."""
    ds = ri.generate(*DATASETS["M20"])
    O = 10.0 * _unit(w_ov_star(ds)[0])
    ex, _ = _excess(ds, O)
    M = ds.vocab_size
    sizes = {k: v.size for k, v in vars(ex).items() if isinstance(v, np.ndarray)}
    assert max(sizes.values()) <= max(len(ds.flat_tokens), M * M), sizes


def test_expm1_polynomial():
    """The vectorizable expm1 against numpy.expm1 (libm): <= 4 ulp relative over the range the
    stable branch uses (delta <= 30), including tiny arguments and the -1 limit."""
    from numba import njit

    @njit
    def run(x, out):
        for i in range(x.shape[0]):
            out[i] = km._expm1(x[i])

    rng = np.random.default_rng(11)
    x = np.concatenate([rng.uniform(-1, 1, 20000), rng.uniform(-800, 30, 20000),
                        10.0 ** rng.uniform(-300, 0, 5000), -(10.0 ** rng.uniform(-300, 0, 5000)),
                        [0.0, -0.0, 30.0, -708.0, -709.0, -1e4, np.log(2) / 2, -np.log(2) / 2]])
    out = np.empty_like(x)
    run(x, out)
    ref = np.expm1(x)
    rel = np.abs(out - ref) / np.maximum(np.abs(ref), 1e-300)
    assert rel.max() <= 4 * 2.0 ** -52, (x[np.argmax(rel)], rel.max())   # 3 ulp design + 1 for libm


def test_stage1_metrics_match_numpy(ds):
    """Margins and accuracy exact (a max and one subtraction); norms and cosines to 1e-13
    relative (fixed-order sums of M^2 products against BLAS: a few ulps, M^2 <= 2500 terms)."""
    rng = np.random.default_rng(12)
    O_hat = _unit(w_ov_star(ds)[0])
    for O, O0 in ((3.0 * O_hat + 0.1 * rng.standard_normal(O_hat.shape), np.zeros_like(O_hat)),
                  (rng.standard_normal(O_hat.shape), rng.standard_normal(O_hat.shape))):
        got = stage1_metrics(O, O0, O_hat, ds.colloc_tokens, ds.colloc_next)
        ref = stage1_metrics_np(O, O0, O_hat, ds.colloc_tokens, ds.colloc_next)
        assert got["min_margin"] == ref["min_margin"] and got["accuracy"] == ref["accuracy"]
        for k in ("norm", "dist_from_init", "cos_to_star", "normalized_distance", "proj_on_star"):
            assert got[k] == pytest.approx(ref[k], rel=1e-13, abs=1e-15), k
        # 1 - cos = d^2 / 2 from the same d: relative 2e-13 (twice d's)
        assert got["one_minus_cos"] == pytest.approx(ref["one_minus_cos"], rel=2e-13, abs=1e-30)
    zero = stage1_metrics(np.zeros_like(O_hat), np.zeros_like(O_hat), O_hat, ds.colloc_tokens, ds.colloc_next)
    assert math.isnan(zero["cos_to_star"]) and zero["norm"] == 0.0
    none = stage1_metrics(O_hat, np.zeros_like(O_hat), None, ds.colloc_tokens, ds.colloc_next)
    assert math.isnan(none["one_minus_cos"]) and none["proj_on_star"] == 0.0


def test_matrix_and_constraint_metrics(ds):
    """matrix_metrics against direction_metrics / np.linalg.norm (1e-13 relative: fixed-order
    sums); attention_margin against its NumPy twin (exact: one subtraction per constraint)."""
    rng = np.random.default_rng(13)
    K, K0 = rng.standard_normal((2, ds.vocab_size, ds.vocab_size))
    K_star = w_kq_star(ds)[0]
    H = _unit(K_star) if np.any(K_star) else None
    nrm, dist0, cos, omc, dist, _ = km.matrix_metrics(K, K0, H)
    assert nrm == pytest.approx(np.linalg.norm(K), rel=1e-13)
    assert dist0 == pytest.approx(np.linalg.norm(K - K0), rel=1e-13)
    rc, romc, rd = direction_metrics(K, H)
    for a, b in ((cos, rc), (omc, romc), (dist, rd)):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-13, abs=1e-15)
    cons = attention_constraints(ds)
    assert attention_margin(K, cons) == attention_margin_np(K, cons)
    assert attention_margin(K, None) == math.inf


def test_logit_accuracy_matches_padded_logits(ds):
    """The joint trainer's accuracy (O and K both move) equals accuracy(logits(...)) exactly."""
    rng = np.random.default_rng(14)
    acc = LogitAccuracy(ds)
    for scale in (0.0, 0.5, 1e3):
        O, K = rng.standard_normal((2, ds.vocab_size, ds.vocab_size)) * [[[1.0]], [[scale]]]
        assert acc(O, K) == accuracy(kernels.logits(O, K, ds.tokens, ds.lengths), ds.next_tokens)


def test_trainer_rows_match_reference():
    """Every recorded stage-2 row of a short run against the NumPy reference at the same K_t
    (the trainer's own buffers, copied by the callback), and the joint trainer's last row."""
    ds = ri.generate(*DATASETS["M8"])
    kept = {}
    res = train_two_stage(ds, T0=200, T=60, progress=False,
                          stage2_callback=lambda t, K: kept.__setitem__(t, K.copy()))
    s2 = res.stage2
    ex, _ = _excess(ds, res.W_ov)
    for t in (0, 1, 30, 60):
        K = kept[t]
        phi = kernels.attention(K, ds.tokens, ds.lengths)
        z = kernels.logits(res.W_ov, None, ds.tokens, ds.lengths, phi=phi)
        ref_ex, ref_l10 = ex.reference(phi, z)
        _assert_close(ref_ex, ref_l10, s2.excess_loss[t], s2.log10_excess[t])
        assert s2.train_accuracy[t] == accuracy(z, ds.next_tokens)
        assert s2.norm[t] == pytest.approx(np.linalg.norm(K), rel=1e-13)        # fixed-order sum
    joint = train_joint(ds, T=40, progress=False)
    z = kernels.logits(joint.W_ov, joint.W_kq, ds.tokens, ds.lengths)
    assert joint.trajectory.train_accuracy[-1] == accuracy(z, ds.next_tokens)


def test_non_finite_attention_gives_nan_excess():
    """A K with inf (a non-finite stop records its last iterate): the excess is NaN, not a
    number made up from NaN attention, and the accuracy still matches the padded logits."""
    ds = ri.generate(*DATASETS["M8"])
    O = 10.0 * _unit(w_ov_star(ds)[0])
    ex, _ = _excess(ds, O)
    K = np.zeros_like(O)
    K[ds.flat_tokens[0], ds.flat_tokens[ds.offsets[1] - 1]] = np.inf
    got_ex, got_l10, got_acc = ex.at(K)
    assert math.isnan(got_ex) and math.isnan(got_l10)
    # the padded path without its finiteness check (kernels.logits rejects a non-finite K)
    phi = kernels._attention(np.ascontiguousarray(K.T), ds.tokens, ds.lengths)
    z = kernels._logits(np.ascontiguousarray(O.T), phi, ds.tokens, ds.lengths)
    with np.errstate(invalid="ignore"):
        assert got_acc == accuracy(z, ds.next_tokens) < 1.0
