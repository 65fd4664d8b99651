"""C4's bound at the recorded steps only (``numeric.c4_upper_log10_at``): the same bits as the
full recursion, and no (T+1,) array when a checkpoint sits at step 10^12 or 2^63 - 1."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

import refimpl as ri
from refimpl.cli import main
from refimpl_proofs import numeric as nu


@pytest.mark.parametrize("L0_0,g,e0,nc", [(math.log(6), 1.5, 0.1, 10), (8.0, 3.0, 0.05, 5000),
                                          (1e-3, 1.0, 0.2, 3)])
def test_at_steps_is_the_full_recursion_at_those_steps(L0_0, g, e0, nc):
    """Bit for bit equal to ``c4_upper_log10(..., T)[steps]`` for unsorted steps with repeats,
    0 and T, on the recursion's head and its arithmetic tail."""
    rng = np.random.default_rng(0)
    for T in (0, 1, 9, 300, 20_000):
        full = nu.c4_upper_log10(L0_0, g, e0, nc, T)
        steps = np.concatenate([[T, 0], rng.integers(0, T + 1, 25), [T]])
        assert np.array_equal(nu.c4_upper_log10_at(L0_0, g, e0, nc, steps), full[steps])


def test_at_huge_steps_is_the_tail_progression():
    """At steps 10^12 and 2^63 - 1 the values are finite, decreasing, and their difference is
    (t2 - t1) log1p(-eta0 c1) / log 10 (the certified asymptotic rate ``c4_rate``, computed
    independently), to 1e-12 relative; computed in well under a second."""
    L0_0, g, e0, nc = math.log(6), 1.5, 0.1, 10
    t0 = time.perf_counter()
    b = nu.c4_upper_log10_at(L0_0, g, e0, nc, np.array([10**12, 10**15, 2**63 - 1]))
    assert time.perf_counter() - t0 < 5.0          # generous: the head is ~1000 steps
    assert np.isfinite(b).all() and b[0] > b[1] > b[2]
    rate10 = float(nu.c4_rate(e0, g)) / math.log(10)
    assert (b[1] - b[0]) == pytest.approx((10**15 - 10**12) * rate10, rel=1e-12)


def test_at_steps_rejects_negative_steps():
    with pytest.raises(ValueError, match=">= 0"):
        nu.c4_upper_log10_at(1.0, 1.5, 0.1, 10, np.array([0, -3]))


@pytest.mark.parametrize("last", [10**12, 2**63 - 1])
def test_trajectory_audit_with_a_huge_checkpoint_step(tmp_path, capsys, last):
    """A stage-1 checkpoint at step 10^12 (was: 39 s and 8 GB at 10^9, MemoryError at 10^12) or
    2^63 - 1 (was: a traceback, "Maximum allowed dimension exceeded") is audited in seconds.
    The file is made up (O stays 0), so certified claims fail: exit 1 with the table, no
    traceback."""
    ds = ri.generate(6, 20, seed=4)
    ri.save_dataset(ds, tmp_path / "ds.json")
    np.savez(tmp_path / "run.npz", stage1_steps=np.array([0, last]), stage1_W_ov=np.zeros((2, 6, 6)),
             eta0=np.float64(0.1))
    t0 = time.perf_counter()
    code = main(["-q", "audit", str(tmp_path / "ds.json"), "--trajectory", str(tmp_path / "run.npz")])
    out, err = capsys.readouterr()
    assert time.perf_counter() - t0 < 120.0        # generous: seconds, plus a first compile
    assert "Traceback" not in err and "Warning" not in err
    assert code == 1 and "C4" in out and f"{last}" in out
