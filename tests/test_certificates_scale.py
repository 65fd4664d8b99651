"""Max-margin certificates at scale, parallel W_kq*, and progress on a non-terminal stderr.

Tolerances:
- verdicts of the closed-form W_ov* certificate must equal those of the dense check; its
  residuals agree with the dense ones to 1e-12 relative (1e-15 absolute near zero): both
  evaluate the same four formulas, and they differ only in how ``G^T alpha`` is summed
  (the closed form ``(M-1)/M`` against a sum of M-1 roundings of ``1/M``).
- parallel and serial W_kq* are compared bit for bit (the same code per column).
"""
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import refimpl as ri
from refimpl import maxmargin as mm
from refimpl.ldp import kkt_residuals, pair_kkt_residuals
from refimpl.progress import INTERVAL_ENV, Progress


# ------------------------------------------------------------------ W_ov* (closed form)
def dense_certificate(O, cert):
    """The former check: per column, G (M-1, M) formed densely and :func:`kkt_residuals`."""
    M = O.shape[0]
    out = {}
    for col in cert.columns:
        G = mm._difference_matrix(col.rows, M)
        out[col.column] = kkt_residuals(G, O[:, col.column], col.alpha) if len(col.rows) else \
            dict(primal=0.0, dual=0.0, stationarity=1.0, slackness=0.0)
    return out


def assert_same_verdicts(O, cert):
    dense = dense_certificate(O, cert)
    for col in cert.columns:
        ref = dense[col.column]
        assert col.failing() == [c for c in ref if not ref[c] <= cert.tol], (col.column, ref)
        for c, v in ref.items():
            assert getattr(col, c) == pytest.approx(v, rel=1e-12, abs=1e-15), (col.column, c)


DATASETS = [dict(vocab_size=M, n_sentences=N, seed=s, n_colloc=nc)
            for M, N, s, nc in [(2, 5, 0, None), (3, 10, 1, 2), (7, 30, 2, None), (20, 200, 3, None),
                                (20, 100, 4, 9), (50, 300, 5, 17)]]


@pytest.mark.parametrize("kw", DATASETS)
def test_closed_form_certificate_equals_dense_check(kw):
    """O*: both checks pass; planted wrong matrices fail the same conditions in both."""
    ds = ri.generate(**kw)
    M = ds.vocab_size
    O, cert = mm.w_ov_star(ds)
    assert cert.ok and cert.problem == "W_ov*"
    assert [c.column for c in cert.columns] == sorted(ds.colloc_tokens.tolist())
    assert_same_verdicts(O, cert)
    for col in cert.columns:
        assert np.all(col.alpha == 1.0 / M) and col.rows.shape == (M - 1, 2)
    xs, ys = ds.colloc_tokens, ds.colloc_next
    x0, y0 = int(xs[0]), int(ys[0])
    v0 = (y0 + 1) % M                                     # a row of column x0 other than n(x0)

    doubled = mm.certify_ov(2 * O, xs, ys)                # feasible, not minimal: stationarity 1/2
    assert not doubled.ok and doubled.columns[0].stationarity == pytest.approx(0.5, rel=1e-12)
    assert_same_verdicts(2 * O, doubled)

    bumped = O.copy()
    bumped[v0, x0] += 0.5                                 # margin 0.5 on one constraint
    bad = mm.certify_ov(bumped, xs, ys)
    col = next(c for c in bad.columns if c.column == x0)
    assert col.primal == pytest.approx(0.5, rel=1e-12) and "primal" in col.failing()
    assert_same_verdicts(bumped, bad)
    with pytest.raises(mm.CertificateError, match=f"W_ov\\* column {x0}: KKT condition") as err:
        bad.check()
    assert err.value.column == x0

    shifted = O.copy()
    shifted[:, x0] += 0.5                                 # margins unchanged, off the row space
    bad = mm.certify_ov(shifted, xs, ys)
    col = next(c for c in bad.columns if c.column == x0)
    assert col.primal <= 1e-15 and col.failing() == ["stationarity"]
    assert_same_verdicts(shifted, bad)

    outside = np.setdiff1d(np.arange(M), xs)
    if len(outside):                                      # a column outside C must stay zero
        stray = O.copy()
        stray[0, outside[0]] = 1e-3
        bad = mm.certify_ov(stray, xs, ys)
        col = next(c for c in bad.columns if c.column == outside[0])
        assert col.failing() == ["stationarity"] and len(col.rows) == 0


def test_closed_form_certificate_explicit_multipliers():
    """Multipliers other than 1/M are checked, not assumed: 2/M fails stationarity, -1/M dual."""
    ds = ri.generate(vocab_size=9, n_sentences=40, seed=6)
    O, _ = mm.w_ov_star(ds)
    xs, ys, M = ds.colloc_tokens, ds.colloc_next, ds.vocab_size
    for a, cond in ((2.0 / M, "stationarity"), (-1.0 / M, "dual")):
        cert = mm.certify_ov(O, xs, ys, np.full(len(xs), a))
        assert all(cond in c.failing() for c in cert.columns)
        assert_same_verdicts(O, cert)


def test_pair_residuals_equal_dense_residuals():
    """pair_kkt_residuals (no G) equals kkt_residuals (dense G) on random pairs, k, alpha."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        n, m = int(rng.integers(2, 12)), int(rng.integers(1, 30))
        a = rng.integers(0, n, m)
        b = (a + rng.integers(1, n, m)) % n
        rows = np.stack([a, b], axis=1)
        k, alpha = rng.normal(size=n), rng.normal(size=m)
        dense = kkt_residuals(mm._difference_matrix(rows, n), k, alpha)
        sparse = pair_kkt_residuals(rows, k, alpha)
        for c in dense:                                   # only the summation order differs
            assert sparse[c] == pytest.approx(dense[c], rel=1e-12, abs=1e-15)


def test_closed_form_certificate_at_M_3000():
    """M = n_c = 3000: w_ov_star with its certificate in a few seconds and O(n_c M) memory.

    Measured 0.2-0.5 s on a shared 2-core machine (the dense check took ~30 s at M = 2000
    and grows as M^3). The bound 20 s only catches a return to the cubic check, with room for a
    loaded machine."""
    M = 3000
    ds = ri.generate(vocab_size=M, n_sentences=2000, seed=0, n_colloc=M)
    assert len(ds.colloc_tokens) == M
    ds.optimal                                            # validation outside the timing
    t = time.perf_counter()
    O, cert = mm.w_ov_star(ds)
    elapsed = time.perf_counter() - t
    assert cert.ok and len(cert.columns) == M
    assert max(cert.worst().values()) <= 1e-15            # one rounding per entry of e_y - 1/M
    assert np.sum(O ** 2) == pytest.approx(M * (M - 1) / M, rel=1e-13)   # C1: n_c (M-1)/M
    assert elapsed < 20.0, f"w_ov_star at M = {M} took {elapsed:.1f} s"


# ------------------------------------------------------------------ W_kq* in parallel
def test_parallel_w_kq_star_has_the_same_bits():
    """Columns solved on 2 worker processes give K*, multipliers and residuals identical to
    the serial solve (each column by the same code with one BLAS thread)."""
    ds = ri.generate(vocab_size=60, n_sentences=3000, seed=2)
    K1, c1 = mm.w_kq_star(ds, workers=1)
    K2, c2 = mm.w_kq_star(ds, workers=2)
    assert np.array_equal(K1, K2)
    assert [c.column for c in c1.columns] == [c.column for c in c2.columns]
    for a, b in zip(c1.columns, c2.columns):
        assert np.array_equal(a.alpha, b.alpha) and np.array_equal(a.rows, b.rows)
        assert a.residuals() == b.residuals()
    with pytest.raises(ValueError, match="workers"):
        mm.w_kq_star(ds, workers=0)


# ------------------------------------------------------------------ progress
class _Pipe:
    """A non-terminal text stream collecting what is written."""

    def __init__(self):
        self.parts = []

    def write(self, s):
        self.parts.append(s)

    def flush(self):
        pass

    def isatty(self):
        return False


def test_progress_lines_on_a_non_terminal():
    """Lines every interval, naming the phase that runs and the count; none when silent."""
    out = _Pipe()
    with Progress(10, "phase A", None, stream=out, interval=0.02, unit="claim") as bar:
        time.sleep(0.15)
        bar.update(4)
        bar.set_description("phase B")
        time.sleep(0.15)
    text = "".join(out.parts)
    assert "refimpl: phase A 0/10 claims (0%)" in text and "refimpl: phase B 4/10 claims (40%)" in text
    n = len(out.parts)
    time.sleep(0.05)
    assert len(out.parts) == n                            # closed: no more lines
    quiet = _Pipe()
    with Progress(10, "phase A", False, stream=quiet, interval=0.01):
        time.sleep(0.05)
    assert quiet.parts == []


def _run(code, interval, **env):
    env = {**os.environ, INTERVAL_ENV: str(interval), **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env, timeout=600)


def test_training_and_audit_report_progress_through_a_pipe():
    """stderr a pipe: training and every audit phase write progress lines at a tiny interval
    (set by the environment); progress=False writes nothing."""
    code = """
        import refimpl as ri
        ds = ri.generate(vocab_size=6, n_sentences=20, seed=4)
        ri.train_two_stage(ds, T0=200, T=300, progress={p})
        ri.audit(ds, T0=200, T=300, c5_T0=200, progress={p})
    """
    res = _run(code.format(p=None), 0.002)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert any(ln.startswith("refimpl: stage 2 ") for ln in lines), res.stderr[-2000:]
    assert any(ln.startswith("refimpl: audit C5") for ln in lines), res.stderr[-2000:]
    assert any(ln.startswith("refimpl: audit C11") for ln in lines), res.stderr[-2000:]
    assert "\r" not in res.stderr                         # lines, not a bar
    quiet = _run(code.format(p=False), 0.002)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_progress_bar_on_a_terminal():
    """A stream that is a terminal gets a tqdm bar (carriage returns), not lines."""
    class Tty(_Pipe):
        def isatty(self):
            return True

    out = Tty()
    with Progress(10, "stage 1", None, stream=out, interval=0.01) as bar:
        bar.update(5)
        bar.set_description("stage 2")
        time.sleep(0.05)
    text = "".join(out.parts)
    assert "\r" in text and "stage 1" in text and "refimpl:" not in text
