"""The stage-2 floor computed per (optimal token, next token) key and per (key, token) pair
(refimpl/floor.py) against the former implementation, kept here as the reference: one
(sentences, M) x (M, M) product ``w @ O`` per block of sentences, N M^2 work in all.

Both accept the vertex of sentence i iff ``O[:, u]^T w_i - O[:, x*_i]^T w_i >= -1e-12 ||w_i||_1 max|O|``
for every token u of the sentence; they differ only in how the dot products are summed
(one gemm against one ddot per pair) and in the memory order of the vertex logits, so the
vertex flags must agree exactly (no sentence of these datasets lies within rounding of the
allowance) and the per-sentence log-floors to rounding.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp

import refimpl as ri
import refimpl.floor as fl

# Absolute tolerance on a per-sentence natural-log floor. The vertex log-loss is a
# log-sum-exp over M <= 300 logits; summing the exponentials in another order changes the
# sum by at most M eps relative, hence its log by at most M eps = 7e-14 absolute, and
# log(loss) = log(log1p(e^a)) moves by at most as much as a. Non-vertex sentences go through
# the same simplex solve from the same inputs in both and must agree exactly.
_LOGL_ATOL = 1e-13


def _reference_floor(ds, O):
    """The former ``_stage2_floor`` (commit 6444b46): vertex flags (N,) and log-floors (N,)."""
    O = np.asarray(O, dtype=np.float64)
    N, M = ds.n_sentences, O.shape[0]
    xs, ys = ds.optimal, ds.next_tokens
    vertex = np.empty(N, dtype=bool)
    logl = np.empty(N)
    scale = max(np.abs(O).max(), np.finfo(float).tiny)
    rows = max(1, (1 << 25) // (8 * M))
    for a in range(0, N, rows):
        b = min(N, a + rows)
        Zs = O[:, xs[a:b]].T
        w = fl._direction(Zs, ys[a:b])
        A = w @ O
        lens = ds.lengths[a:b]
        width = int(lens.max())
        mask = np.arange(width)[None, :] < lens[:, None]
        padded = np.zeros((b - a, width), dtype=np.int64)
        padded[mask] = ds.flat_tokens[ds.offsets[a]: ds.offsets[b]]
        D = np.take_along_axis(A, padded, axis=1) - A[np.arange(b - a), xs[a:b]][:, None]
        allow = fl._VERTEX_RTOL * np.abs(w).sum(axis=1) * scale
        vertex[a:b] = np.all((D >= -allow[:, None]) | ~mask, axis=1)
        logl[a:b] = fl.log_loss(Zs, ys[a:b])
    for i in np.flatnonzero(~vertex):
        toks = np.unique(ds.sentence(i))
        start = (toks == xs[i]).astype(np.float64)
        _, logl[i], _ = fl._solve_simplex(O[:, toks], int(ys[i]), start)
    return vertex, logl


def _cases():
    """(dataset, O) pairs: trained-like O (a multiple of W_ov*, every vertex optimal) and random
    O of several scales (many non-vertex sentences), on small and moderate datasets."""
    out = []
    for seed, (M, N, hi) in enumerate([(6, 40, 4), (20, 200, 6), (50, 2000, 8), (300, 5000, 16)]):
        ds = ri.generate(vocab_size=M, n_sentences=N, max_len=hi, seed=seed)
        O_star, _ = ri.w_ov_star(ds)
        rng = np.random.default_rng(seed)
        out.append((f"M{M}-star", ds, 7.0 * O_star))
        for scale in (0.5, 3.0):
            out.append((f"M{M}-random{scale}", ds, scale * rng.standard_normal((M, M))))
        noisy = 4.0 * O_star + 0.5 * rng.standard_normal((M, M))
        out.append((f"M{M}-noisy", ds, noisy))
    return out


_CASES = _cases()


@pytest.mark.parametrize("name,ds,O", _CASES, ids=[c[0] for c in _CASES])
def test_floor_matches_dense_reference(name, ds, O):
    vertex_ref, logl_ref = _reference_floor(ds, O)
    floor, log10_floor, vertex, det = ri.stage2_floor(ds, O, return_details=True)
    np.testing.assert_array_equal(vertex, vertex_ref)
    np.testing.assert_array_equal(det["log_loss"][~vertex], logl_ref[~vertex_ref])   # same solves
    np.testing.assert_allclose(det["log_loss"], logl_ref, rtol=0, atol=_LOGL_ATOL)
    log_mean = logsumexp(logl_ref) - np.log(ds.n_sentences)
    # the mean of the per-sentence floors, each within _LOGL_ATOL in log: so is their log-mean
    assert abs(log10_floor - log_mean / np.log(10)) <= _LOGL_ATOL
    if name.endswith("star"):
        assert vertex.all()


def test_cases_cover_non_vertex_floors():
    """The random-O cases do exercise the simplex solves (sentences off the vertex)."""
    assert sum(int((~_reference_floor(ds, O)[0]).sum()) for _, ds, O in _CASES if "random" in _) > 50


def test_floor_does_not_depend_on_key_blocks(monkeypatch):
    """Blocks of 3 keys give the same bits as one block (each key's numbers come from its row)."""
    ds = ri.generate(vocab_size=30, n_sentences=500, max_len=9, seed=5)
    O = 2.0 * np.random.default_rng(5).standard_normal((30, 30))
    whole = ri.stage2_floor(ds, O, return_details=True)
    monkeypatch.setattr(fl, "_FLOOR_BLOCK_BYTES", 8 * 30 * 3)
    blocks = ri.stage2_floor(ds, O, return_details=True)
    assert whole[0] == blocks[0] and whole[1] == blocks[1]
    np.testing.assert_array_equal(whole[2], blocks[2])
    np.testing.assert_array_equal(whole[3]["log_loss"], blocks[3]["log_loss"])


def test_floor_repeated_tokens_and_length_one():
    """Repeated tokens in a sentence and sentences of length 1 (only x*, always at the vertex)."""
    ds = ri.RealizableDataset(4, {0: 1, 1: 2, 2: 3, 3: 0}, [[0, 0, 1], [2], [1, 1, 1], [3, 2, 3]],
                              [1, 3, 2, 0])
    O = np.random.default_rng(0).standard_normal((4, 4)) * 5
    vertex_ref, logl_ref = _reference_floor(ds, O)
    _, _, vertex, det = ri.stage2_floor(ds, O, return_details=True)
    np.testing.assert_array_equal(vertex, vertex_ref)
    assert vertex[1] and vertex[2]
    np.testing.assert_allclose(det["log_loss"], logl_ref, rtol=0, atol=_LOGL_ATOL)


# ---------------------------------------------------------------- W_kq* with merged leaves
# Relative tolerance between the W_kq* column solved with its leaf groups merged and the same
# column solved on the full program: both are certified optima of the same strictly convex
# program to 1e-10 (KKT_TOL), and the polished solutions agree to rounding (seen: 1e-15).
_KQ_RTOL = 1e-12


@pytest.mark.parametrize("M,N,hi,seed", [(6, 40, 4, 0), (20, 200, 6, 1), (200, 10_000, 16, 2),
                                         (2000, 20_000, 6, 3)])
def test_kq_merged_leaves_match_full_program(M, N, hi, seed):
    """Each column of W_kq*: the merged program's expanded solution equals the full program's,
    and its expanded multipliers certify it on the full program."""
    from refimpl import maxmargin as mm
    from refimpl.ldp import kkt_residuals, least_distance
    ds = ri.generate(vocab_size=M, n_sentences=N, max_len=hi, seed=seed)
    items = list(mm._kq_rows(ds).items())
    merged_some = 0
    for q, pairs in items[:: max(1, len(items) // 60)]:
        toks, k, alpha = mm._solve_kq_column(pairs)
        _, local = np.unique(pairs, return_inverse=True)
        G = mm._difference_matrix(local.reshape(-1, 2), len(toks))
        k_full, _ = least_distance(G)
        np.testing.assert_allclose(k, k_full, rtol=0, atol=_KQ_RTOL * np.abs(k_full).max())
        assert max(kkt_residuals(G, k, alpha).values()) <= 1e-10
        merged_some += mm._merge_leaves(local.reshape(-1, 2), len(toks))[0].shape[0] < len(pairs)
    assert merged_some > 0


def test_kq_merge_leaves_small_example():
    """Query column with pairs (0,1), (0,2), (0,3), (3,4): 1 and 2 are the leaves of 0, merged
    into s with row k_0 - s/sqrt(2) >= 1; 4 is the leaf of 3 (a group of one); 3 is kept."""
    from refimpl import maxmargin as mm
    local = np.array([[0, 1], [0, 2], [0, 3], [3, 4]])
    G, expand = mm._merge_leaves(local, 5)
    assert G.shape == (3, 4)                          # rows (0,3), group{1,2}, group{4}; vars 0, 3, s1, s2
    np.testing.assert_array_equal(G[0], [1, -1, 0, 0])
    np.testing.assert_allclose(G[1], [1, 0, -1 / np.sqrt(2), 0], rtol=1e-15)
    np.testing.assert_array_equal(G[2], [0, 1, 0, -1])
    k, alpha = expand(np.array([1.0, 2.0, 3.0, 4.0]), np.array([5.0, 6.0, 7.0]))
    np.testing.assert_allclose(k, [1, 3 / np.sqrt(2), 3 / np.sqrt(2), 2, 4], rtol=1e-15)
    np.testing.assert_allclose(alpha, [3, 3, 5, 7], rtol=1e-15)
