"""Dense reference model (refimpl.model): gradients, numerics, embeddings helpers (docs/model.md)."""
from __future__ import annotations

from dataclasses import dataclass

import mpmath
import numpy as np
import pytest

from refimpl.data import RealizableDataset
from refimpl.errors import NonOrthonormalEmbeddingError
from refimpl.model import (check_orthonormal, cross_entropy, loss_and_grads, stage1_loss_and_grad,
                           to_token_coords)
from tests.gradcheck import check_grad, check_vjp

M = 5


def _dataset(sentences):
    """Valid by construction: n(x) = x+1 mod M and x* = the largest token, so y = n(max)
    is unique and every induced relation goes from a smaller to a larger token (acyclic)."""
    colloc = {x: (x + 1) % M for x in range(M)}
    return RealizableDataset(M, colloc, sentences, [colloc[max(s)] for s in sentences])


def _orthonormal(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q[:, :M]


@dataclass(frozen=True)
class Case:
    name: str           # what the case exercises
    sentences: tuple    # the dataset (M = 5 tokens)
    embed: str          # "I", "orthonormal d" or "random d" (E shape (d, M))
    d: int              # embedding width
    scale: float        # entries of W_ov, W_kq are scale * N(0, 1)
    rtol: float         # relative tolerance of the central difference
    eps: float          # central-difference step

    def build(self, seed=0):
        rng = np.random.default_rng(seed)
        if self.embed == "I":
            E = np.eye(M)
        elif self.embed == "orthonormal":
            E = _orthonormal(self.d, seed)
        else:
            E = rng.standard_normal((self.d, M))
        W_ov, W_kq = self.scale * rng.standard_normal((2, self.d, self.d))
        return _dataset([list(s) for s in self.sentences]), E, W_ov, W_kq


# Tolerances: with eps = 1e-5 the truncation error of a central difference is
# ~eps^2 |f'''| ~ 1e-10 and rounding ~1e-16 |f| / eps ~ 1e-11, so 1e-7 relative
# leaves margin. At logits ~1e3 rounding grows with |f| (~1e3), hence 1e-5 there.
CASES = [
    Case("L=1", ((0,), (3,), (4,)), "I", M, 1.0, 1e-7, 1e-5),
    Case("repeated tokens", ((1, 1, 2, 1), (3, 0, 3, 3), (2, 2, 2)), "I", M, 1.0, 1e-7, 1e-5),
    Case("query = optimal token", ((0, 1, 4), (2, 3), (1, 0, 2)), "I", M, 1.0, 1e-7, 1e-5),
    Case("logits ~1e3", ((0, 2, 3), (1, 4), (3, 2, 1, 0)), "I", M, 300.0, 1e-5, 1e-6),
    Case("non-orthonormal, d > M", ((0, 2, 3), (1, 4, 2), (4,)), "random", 8, 1.0, 1e-7, 1e-5),
    Case("non-orthonormal, d < M", ((0, 2, 3), (1, 4, 2), (4,)), "random", 3, 1.0, 1e-7, 1e-5),
    Case("orthonormal, d > M", ((0, 2, 3), (1, 4, 2), (2, 3, 0, 4)), "orthonormal", 9, 1.0, 1e-7, 1e-5),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_loss_and_grads_directional(case):
    ds, E, W_ov, W_kq = case.build()
    _, g_ov, g_kq = loss_and_grads(ds, W_ov, W_kq, E)
    check_grad(lambda a, b: loss_and_grads(ds, a, b, E)[0], (W_ov, W_kq), (g_ov, g_kq),
               rtol=case.rtol, atol=1e-12, eps=case.eps, name=f"loss_and_grads[{case.name}]")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_loss_and_grads_adjoint(case):
    """<u, J v> = <J^T u, v> for the map theta -> per-sentence losses (J^T u = sum_i u_i grad loss_i)."""
    ds, E, W_ov, W_kq = case.build(seed=1)
    singles = [_dataset([s]) for s in ds.sentences()]

    def losses(a, b):
        return np.array([loss_and_grads(one, a, b, E)[0] for one in singles])

    def vjp(u):
        parts = [loss_and_grads(one, W_ov, W_kq, E)[1:] for one in singles]
        return (sum(ui * p[0] for ui, p in zip(u, parts)), sum(ui * p[1] for ui, p in zip(u, parts)))

    check_vjp(losses, vjp, (W_ov, W_kq), rtol=case.rtol, atol=1e-12, eps=case.eps,
              name=f"per-sentence losses[{case.name}]")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_stage1_directional(case):
    ds, E, W_ov, _ = case.build(seed=2)
    _, g = stage1_loss_and_grad(ds, W_ov, E)
    check_grad(lambda a: stage1_loss_and_grad(ds, a, E)[0], W_ov, g,
               rtol=case.rtol, atol=1e-12, eps=case.eps, name=f"stage1[{case.name}]")


def test_stage1_is_model_on_one_token_sentences():
    """L0 is the model loss on the sentences [x] with next token n(x) (docs/model.md)."""
    ds, E, W_ov, W_kq = CASES[4].build()
    l0, g0 = stage1_loss_and_grad(ds, W_ov, E)
    one = RealizableDataset(M, ds.collocation_pairs, [[x] for x in ds.colloc_tokens], ds.colloc_next)
    l1, g1, _ = loss_and_grads(one, W_ov, W_kq, E)
    assert l0 == pytest.approx(l1, rel=1e-14)           # same formula, different summation order
    np.testing.assert_allclose(g0, g1, rtol=1e-13, atol=1e-15)


def test_cross_entropy_tiny_loss_and_residual():
    """loss = log1p(sum_{v!=y} e^{z_v - z_y}) keeps full relative precision where
    lse(z) - z_y is 0; r_y = -(sum of the other p_v) exactly."""
    z = np.array([[60.0, 0.0, -1.0, 2.5], [0.0, 800.0, 0.0, 0.0], [3.0, -1000.0, 1.0, 2.0]])
    y = np.array([0, 1, 1])
    loss, r = cross_entropy(z, y)
    mpmath.mp.dps = 50
    for i in range(3):
        zs = [mpmath.mpf(float(v)) for v in z[i]]
        ref = mpmath.log(sum(mpmath.exp(v) for v in zs)) - zs[y[i]]
        p = [mpmath.exp(v) / sum(mpmath.exp(t) for t in zs) for v in zs]
        # 1e-14 relative: a few roundings in exp/log1p, no cancellation left
        assert float(ref) == pytest.approx(loss[i], rel=1e-14, abs=0.0) or float(ref) == loss[i] == 0.0
        for v in range(4):
            exact = float(p[v] - (1 if v == y[i] else 0))
            assert r[i, v] == pytest.approx(exact, rel=1e-14, abs=1e-300)
        # r_y = -(sum w) * scale vs the sum of the scaled w: a few ulp apart, never 1 - p_y
        assert r[i, y[i]] == pytest.approx(-np.sum(np.delete(r[i], y[i])), rel=1e-15)
    assert loss[0] > 0.0 and loss[1] == 0.0                     # e^{-62.5}*... > 0; e^{-800} underflows


def test_check_orthonormal_and_token_coords():
    E = _orthonormal(9, 3)
    check_orthonormal(E)
    W = np.random.default_rng(0).standard_normal((9, 9))
    P = E @ E.T                                               # projector on span(E)
    np.testing.assert_allclose(to_token_coords(P @ W @ P, E), to_token_coords(W, E), atol=1e-13)
    with pytest.raises(NonOrthonormalEmbeddingError) as info:
        check_orthonormal(E * 1.01)
    assert "max |E^T E - I| = 2.010e-02" in str(info.value) and "(9, 5)" in str(info.value)
    assert info.value.witness["max_deviation"] == pytest.approx(0.0201, rel=1e-10)
    with pytest.raises(NonOrthonormalEmbeddingError):
        check_orthonormal(np.ones((3, M)))                    # d < M cannot be orthonormal

