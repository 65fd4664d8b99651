"""Threading of the chunked kernels: which sizes run threaded, the serial/threaded choice
(refimpl.kernels._Chooser and REFIMPL_THREADS), and that the choice never changes a bit."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import refimpl as ri
from refimpl import kernels as kn
from refimpl.errors import ConfigError


def _args(ds):
    return ds.tokens, ds.lengths, ds.next_tokens


@pytest.mark.parametrize("Lmax", [2, 3, 4, 5, 6])
def test_size_s_is_serial_by_the_size_heuristic(Lmax):
    """Size S (M = 20, N = 200, lengths 2..6) runs one chunk on the calling thread: a
    threaded step there gains at most a few microseconds on a quiet machine and can lose
    milliseconds on a shared one."""
    assert kn.n_chunks(200, Lmax, 20) == 1
    assert kn.n_chunks(200, Lmax, 20, n_grads=2) == 1


def test_size_s_dataset_prepares_one_chunk():
    ds = ri.generate(20, 200, 2, 6, seed=0)
    O = np.random.default_rng(0).standard_normal((20, 20))
    sd = kn.Stage2Direction(O, *_args(ds))
    assert sd._p.nc == 1 and sd._p.chooser.mode == "serial"


def test_size_l_is_chunked():
    """Size L (M = 200, N = 10^4, lengths 2..16) keeps 4 chunks."""
    assert kn.n_chunks(10_000, 16, 200) == 4


@pytest.mark.parametrize("mode", ["auto", "serial", "parallel"])
def test_every_threading_mode_gives_the_same_bits(monkeypatch, mode):
    """Serial and threaded drivers run the same chunks and reduce them in the same order."""
    M = 40
    ds = ri.generate(M, 3000, 2, 10, seed=5)
    assert kn.n_chunks(ds.n_sentences, ds.max_len, M) > 1
    rng = np.random.default_rng(5)
    O, K = rng.standard_normal((2, M, M))
    monkeypatch.setenv(kn.THREADS_ENV, "serial")
    ref = kn.Stage2Direction(O, *_args(ds)).direction(K)
    ref_joint = kn.joint_grad(O, K, *_args(ds))
    monkeypatch.setenv(kn.THREADS_ENV, mode)
    sd = kn.Stage2Direction(O, *_args(ds))
    for _ in range(8):                                       # auto: start-up runs both drivers
        got = sd.direction(K)
        assert np.array_equal(got[0], ref[0]) and got[1:] == ref[1:]
    for _ in range(8):
        got = kn.joint_grad(O, K, *_args(ds))
        assert all(np.array_equal(x, y) for x, y in zip(got, ref_joint))
    if mode == "auto":
        assert min(sd._p.chooser.counts) >= 2                # both drivers were run
    else:
        assert sd._p.chooser.counts[0 if mode == "serial" else 1] == 8


@pytest.mark.parametrize("mode", ["auto", "serial", "parallel"])
@pytest.mark.parametrize("trained", [False, True])
def test_metric_passes_give_the_same_bits_in_every_threading_mode(monkeypatch, mode, trained):
    """The recorded-step metrics (excess loss, accuracy) follow REFIMPL_THREADS like the step,
    and the serial and threaded passes agree bit for bit (per-sentence values, then sums in
    index order); ``trained``: O after stage 1 from zero, so the structured excess pass. K
    alternates between a moderate one and one 300x larger (saturated attention: the exact
    tie recheck and the direct log-space branch of the excess)."""
    from refimpl.maxmargin import stage2_floor
    from refimpl.trajectory import ExcessLoss, LogitAccuracy
    M = 80
    ds = ri.generate(M, 3000, 2, 10, seed=7)
    rng = np.random.default_rng(7)
    O = ri.train_two_stage(ds, T0=50, T=0, progress=False).W_ov if trained else rng.standard_normal((M, M))
    K = rng.standard_normal((M, M))
    Ks = [K, 300.0 * K] * 4                                          # 8 calls, two of each driver at start-up
    floor, _, vertex, details = stage2_floor(ds, O, return_details=True)

    def metrics():
        ex = ExcessLoss(ds, O, floor, vertex, details["log_loss"])
        acc = LogitAccuracy(ds)
        assert ex._nc > 1 and (ex._rep is not None) == trained
        return ex, acc, [(ex.at(Kc), acc(O, Kc)) for Kc in Ks]      # auto: start-up runs both passes

    monkeypatch.setenv(kn.THREADS_ENV, "serial")
    _, _, ref = metrics()
    monkeypatch.setenv(kn.THREADS_ENV, mode)
    ex, acc, got = metrics()
    assert got == ref and len(set(got[0::2])) == 1 and len(set(got[1::2])) == 1 and got[0] != got[1]
    if mode == "auto":
        assert min(ex._chooser.counts) >= 2 and min(acc._chooser.counts) >= 2
    else:
        assert ex._chooser.counts[0 if mode == "serial" else 1] == 8


def test_threads_env_is_checked(monkeypatch):
    monkeypatch.setenv(kn.THREADS_ENV, "sometimes")
    with pytest.raises(ConfigError, match="REFIMPL_THREADS"):
        kn.Stage2Direction(np.eye(20), *_args(ri.generate(20, 3000, 2, 6, seed=0)))
    monkeypatch.setenv(kn.THREADS_ENV, " Serial ")
    assert kn._threads_mode() == "serial"
    monkeypatch.setenv(kn.THREADS_ENV, "")
    assert kn._threads_mode() == "auto"


class _Machine:
    """Fake drivers and clock: driver i advances the clock by cost[i] seconds."""

    def __init__(self):
        self.now = 0.0
        self.cost = [2.0, 1.0]
        self.calls = []

    def clock(self):
        return self.now

    def drivers(self):
        def make(i):
            def run():
                self.calls.append(i)
                self.now += self.cost[i]
                return i
            return run
        return make(0), make(1)


def _run(ch, machine, n):
    drivers = machine.drivers()
    start = len(machine.calls)
    for _ in range(n):
        ch.run(drivers, ())
    return machine.calls[start:]


def test_chooser_follows_a_neighbour_appearing_and_leaving():
    """auto keeps the faster driver, switches within ~64 calls when the other becomes
    faster (sooner when a threaded call slows down), and spends few calls on probes."""
    m = _Machine()
    ch = kn._Chooser("auto")
    ch.clock = m.clock
    first = _run(ch, m, 200)                                  # quiet: threaded is faster
    assert ch.use == 1 and first[6:].count(0) <= 200 // kn._PROBE_EVERY + 2
    m.cost = [2.0, 6.0]                                       # a neighbour: threaded 3x slower
    busy = _run(ch, m, 200)
    switch = busy.index(0)
    assert ch.use == 0 and busy[switch:].count(1) <= 200 // kn._PROBE_EVERY + 2
    assert busy[:switch + 2].count(1) <= 2 * kn._MIN_PROBE_GAP + 2   # the early probe
    m.cost = [2.0, 1.0]                                       # the neighbour leaves
    quiet = _run(ch, m, 200)
    assert ch.use == 1 and quiet.index(1) <= kn._PROBE_EVERY
    assert quiet[quiet.index(1) + 2:].count(0) <= 200 // kn._PROBE_EVERY + 2


def test_chooser_needs_two_wins_to_switch():
    """One probe that happens to be fast (noise) does not change the driver in use."""
    m = _Machine()
    ch = kn._Chooser("auto")
    ch.clock = m.clock
    m.cost = [1.0, 2.0]
    _run(ch, m, 6)
    assert ch.use == 0
    _run(ch, m, kn._PROBE_EVERY - 1)
    m.cost = [1.0, 0.5]
    _run(ch, m, 1)                                            # the probe wins once ...
    m.cost = [1.0, 2.0]
    _run(ch, m, 1)                                            # ... and loses its confirmation
    assert ch.use == 0


@pytest.mark.parametrize("mode", ["serial", "parallel"])
def test_forced_modes_never_run_the_other_driver(mode):
    m = _Machine()
    ch = kn._Chooser(mode)
    ch.clock = m.clock
    calls = _run(ch, m, 300)
    assert set(calls) == {0 if mode == "serial" else 1}


def test_openmp_threads_wait_passively_unless_told_otherwise():
    """Importing refimpl sets OMP_WAIT_POLICY=PASSIVE when unset (before libgomp loads) and
    leaves a value already given alone."""
    code = "import os, refimpl; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "PASSIVE", r.stderr
    r = subprocess.run([sys.executable, "-c", code], env=dict(env, OMP_WAIT_POLICY="ACTIVE"),
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "ACTIVE", r.stderr
