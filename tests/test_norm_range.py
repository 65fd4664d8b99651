"""Frobenius norms of weights far from 1 (entries of 1e-300 to 1e300): the compiled
``fro_norm``, the recorded-step metrics and the grade of a scaled W_kq* keep their scale
laws instead of underflowing to 0 or overflowing to inf (a square of 1e-170 is 0 in float64)."""
from __future__ import annotations

import numpy as np
import pytest

import refimpl as ri
from refimpl.cli import main
from refimpl.kernels_math import sumsq4
from refimpl.kernels_metrics import fro_norm, matrix_metrics

SCALES = [1e-300, 1e-170, 1e160, 1e300]


@pytest.mark.parametrize("s", SCALES)
def test_fro_norm_scales(s):
    """||s W|| = s ||W|| to 4 ulp (one scaling and one square root of rounding each side);
    in the ordinary range the value is sqrt(sumsq4) bit for bit."""
    W = np.random.default_rng(0).standard_normal((9, 9))
    base = fro_norm(W)
    assert base == np.sqrt(sumsq4(W))
    assert fro_norm(W * s) == pytest.approx(s * base, rel=1e-15)


def test_fro_norm_edges():
    assert fro_norm(np.zeros((3, 3))) == 0.0
    assert np.isnan(fro_norm(np.array([np.nan, 1e-200])))
    assert fro_norm(np.array([np.inf, 1.0])) == np.inf
    assert fro_norm(np.array([5e-324, 0.0])) == 5e-324            # the smallest subnormal


@pytest.mark.parametrize("s", SCALES)
def test_matrix_metrics_scale_laws(s):
    """Scaling W and W0 by s scales ||W||, ||W - W0|| and the projection by s and leaves the
    cosine and the direction distances unchanged (1e-14: a few roundings of O(1) values)."""
    rng = np.random.default_rng(1)
    W, W0, H = rng.standard_normal((3, 8, 8))
    H /= np.linalg.norm(H)
    base = matrix_metrics(W, W0, H)
    got = matrix_metrics(W * s, W0 * s, H)
    for i in (0, 1, 5):
        assert got[i] == pytest.approx(s * base[i], rel=1e-14)
    for i in (2, 3, 4):
        assert got[i] == pytest.approx(base[i], rel=1e-14, abs=1e-15)


@pytest.mark.parametrize("s", [1e-200, 1e160])
def test_grade_of_a_scaled_solution(s):
    """docs/maxmargin.md: s W* has cosine 1 and norm ratio s (it was 0 / inf at 1e160 and NaN
    / 0 at 1e-200), and its KKT fit is exact (stationarity at rounding, 1e-12)."""
    ds = ri.generate(6, 20, seed=4)
    K_star = ri.w_kq_star(ds)[0]
    g = ri.grade_w_kq(ds, s * K_star)
    assert g.cosine == pytest.approx(1.0, abs=1e-14)
    assert g.norm_ratio == pytest.approx(s, rel=1e-14)
    assert g.stationarity <= 1e-12


def test_audit_with_a_tiny_step_size(tmp_path, capsys):
    """eta = 1e-170 keeps every iterate near 1e-170: C12's cosine was NaN (||K_t|| = 0) and the
    audit reported a certified failure; now every certified claim holds (exit 0)."""
    ri.save_dataset(ri.generate(2, 10, 1, 4, seed=1), tmp_path / "m2.json")
    code = main(["-q", "audit", str(tmp_path / "m2.json"), "--eta", "1e-170", "--T0", "5", "--T", "5"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "Traceback" not in err


@pytest.mark.parametrize("s", [1e-200, 1e160, 1e300])
def test_normalize_scales(s):
    """kernels.normalize and normalize_pair of s G: unit directions (1e-15) and norms s ||G||;
    normalize(1e-200 G) used to return zeros with norm 0.0, which its docstring reserves for
    an exactly zero G."""
    from refimpl import kernels as kn
    G, H = np.random.default_rng(2).standard_normal((2, 5, 5))
    D, n = kn.normalize(G * s)
    assert np.linalg.norm(D) == pytest.approx(1.0, abs=1e-15)
    assert n == pytest.approx(s * fro_norm(G), rel=1e-15)
    DO, DK, n2 = kn.normalize_pair(G * s, H * s)
    assert np.hypot(np.linalg.norm(DO), np.linalg.norm(DK)) == pytest.approx(1.0, abs=1e-15)
    assert n2 == pytest.approx(s * np.hypot(fro_norm(G), fro_norm(H)), rel=1e-15)
