"""The audit on degenerate datasets and runs, C8 in log space, and non-finite training stops.

Every report must be complete and free of contradictions (docs/audit.md): eleven rows, each
PASS, FAIL (certified or measured) or NOT APPLICABLE with a reason; the failure lists and the
exit code agree with the rows; C10's regime agrees with C8, C9 and C11; no fit over fewer than
MIN_FIT_STEPS steps decides or reports anything. The log-space C8 quantities are checked against
mpmath at 50 digits (the float64 linear forms underflow past a = gamma_ov eta0 T0 ~ 740).
"""
import json
import math
import subprocess
import sys
import warnings

import mpmath
import numpy as np
import pytest
import sympy as sp

import refimpl as ri
from refimpl_proofs import derivations as dv
from refimpl_proofs import numeric as nu
from refimpl import audit
from refimpl.cli import main
from refimpl.generalize import GeneralizeConfig, _stage2_path, generalization_report
from refimpl.io import json_text
from refimpl.rates import MIN_FIT_STEPS
from refimpl.train import NonFiniteTrainingError, train_two_stage

EPS = np.finfo(np.float64).eps
LENGTH_1 = "every sentence has length 1: attention is constant"
SHORT_AUDIT = dict(T0=300, T=400, c5_T0=300)  # long enough to fit (>= 100 steps), fast


def _len1():
    """Every sentence has length 1 (x* is the only token): attention is constant."""
    return ri.RealizableDataset(3, {0: 1, 1: 2, 2: 0}, [[0], [1], [2], [0]], [1, 2, 0, 1])


def _one_sentence_len3():
    """N = 1, one sentence [1, 3, 2] with y = 3 = n(2): x* = 2, query 2."""
    return ri.RealizableDataset(4, {0: 1, 1: 2, 2: 3, 3: 0}, [[1, 3, 2]], [3])


def _one_sentence_len2():
    """N = 1, one sentence [1, 2] with y = 0 = n(2): x* = 2, x' = 1, query 2. Its only W_kq*
    constraint is K[2, 2] - K[1, 2] >= 1, so K* = (e_2 - e_1) e_2^T / 2 and, from K_0 = 0, every
    stage-2 gradient lies along it: K_t is exactly along K* for t >= 1."""
    return ri.RealizableDataset(3, {0: 1, 1: 2, 2: 0}, [[1, 2]], [0])


def _small():
    return ri.generate(6, 30, 2, 5, 3)


CASES = {
    "length-1 sentences": (_len1, SHORT_AUDIT),
    "N = 1, length 3": (_one_sentence_len3, SHORT_AUDIT),
    "N = 1, length 2 (K along K*)": (_one_sentence_len2, SHORT_AUDIT),
    "T0 = 0": (_small, dict(SHORT_AUDIT, T0=0)),
    "T = 0": (_small, dict(SHORT_AUDIT, T=0)),
    "T0 = 0, T = 0": (_small, dict(SHORT_AUDIT, T0=0, T=0)),
    "T = 5 (default dataset)": (ri.generate, dict(T0=5, T=5, c5_T0=300)),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    make, kw = CASES[request.param]
    ds = make()
    return request.param, ds, audit.run_audit(ds, audit.AuditConfig(**kw), progress=False)


def _rows(rep):
    return {r["id"]: r for r in rep["claims"]}


def test_every_claim_has_a_verdict_and_no_contradiction(case):
    name, ds, rep = case
    assert [r["id"] for r in rep["claims"]] == [f"C{i}" for i in range(1, 17)]
    for r in rep["claims"]:
        assert r["verdict"] in (audit.PASS, audit.FAIL, audit.NA), (name, r)
        if r["verdict"] == audit.NA:
            assert isinstance(r["detail"], str) and r["detail"].strip(), (name, r)
        if r["verdict"] == audit.FAIL:
            assert r["failure"] in (audit.CERTIFIED, audit.MEASURED), (name, r)
        else:
            assert r["failure"] is None, (name, r)
    by = _rows(rep)
    assert rep["certified_failures"] == [r["id"] for r in rep["claims"] if r["failure"] == audit.CERTIFIED]
    assert rep["measured_failures"] == [r["id"] for r in rep["claims"] if r["failure"] == audit.MEASURED]
    assert rep["regime"] in audit.REGIMES
    # C10 decides the regime; C8's rate, C9 and C11's measured part are not claimed in the weak one
    assert (rep["regime"] == "weak_stage1") == (by["C10"]["verdict"] == audit.FAIL)
    if rep["regime"] == "weak_stage1":
        assert by["C8"]["verdict"] != audit.PASS and by["C9"]["verdict"] != audit.PASS
        assert by["C11"]["verdict"] != audit.PASS
    # C11 never PASSes next to a closure accuracy below its threshold (1 at T, docs/theory.md 11)
    acc = by["C11"]["measured"].get("final_closure_accuracy")
    if by["C11"]["verdict"] == audit.PASS:
        assert acc == audit.C11_ACCURACY, (name, by["C11"])
    # No fit over fewer than MIN_FIT_STEPS steps is reported or decides a verdict
    T0, T = rep["config"]["T0"], rep["config"]["T"]
    if T0 < MIN_FIT_STEPS:
        assert by["C4"]["measured"].get("fitted_rate_per_step") is None
    if T < MIN_FIT_STEPS:
        assert by["C7"]["measured"].get("fitted_norm_slope") is None
        assert by["C8"]["measured"].get("fitted_rate_per_step") is None
        assert by["C9"]["measured"].get("fitted_exponent_last_decade") is None
        assert by["C9"]["verdict"] != audit.FAIL
    # standard JSON, and the table's last line names every failure
    def reject(const):
        raise ValueError(const)
    json.loads(json_text(rep), parse_constant=reject)
    footer = audit.format_table(rep).splitlines()[-1]
    for cid in rep["certified_failures"] + rep["measured_failures"]:
        assert cid in footer, (name, footer)


def test_length_1_sentences_attention_claims_not_applicable():
    """All sentences of length 1: stage 2 stops at step 0 on an exactly zero gradient, and every
    claim about attention (C6-C11) is NOT APPLICABLE with the reason."""
    ds = _len1()
    rep = audit.run_audit(ds, audit.AuditConfig(**SHORT_AUDIT), progress=False)
    assert rep["stop_reason"] == {"stage1": "completed", "stage2": "zero_gradient at step 0"}
    assert rep["regime"] == "no_attention"
    by = _rows(rep)
    for cid in ("C6", "C7", "C8", "C9", "C10", "C11"):
        assert by[cid]["verdict"] == audit.NA and LENGTH_1 in by[cid]["detail"], by[cid]
    for cid in ("C1", "C2", "C3", "C4"):            # stage 1 is unaffected
        assert by[cid]["verdict"] == audit.PASS, by[cid]


def test_generalize_on_length_1_sentences():
    """generalization_report: no KeyError after the zero-gradient stop, and the reason C11 does not apply."""
    ds = _len1()
    rep = generalization_report(ds, None, config=GeneralizeConfig(T0=50, T=300, n_test=50))
    assert rep["not_applicable"] == LENGTH_1
    assert rep["steps"][-1] == 300                  # checkpoints past the stop at step 0


def test_stage2_path_after_a_zero_gradient_stop():
    """After stage 2 stops at an exactly zero gradient, K stays where it stopped: every later
    checkpoint is that iterate (here K_0, since the length-1 gradient is zero at once)."""
    ds = _len1()
    res = train_two_stage(ds, T0=20, T=0, progress=False)
    K0 = np.arange(9, dtype=float).reshape(3, 3)
    Ks = _stage2_path(ds, res.W_ov, K0, 0.1, [0, 3, 50])
    assert len(Ks) == 3 and all(np.array_equal(K, K0) for K in Ks)


def test_exact_direction_passes_c9_without_a_fit():
    """K_t along K* (one sentence of length 2): C9 PASSes as C5 does from zero init, with no
    exponent fitted to rounding noise. Independent check: the closed form K* = (e_2 - e_1) e_2^T / 2."""
    ds = _one_sentence_len2()
    res = train_two_stage(ds, T0=300, T=400, progress=False)
    K_star = np.zeros((3, 3))
    K_star[2, 2], K_star[1, 2] = 0.5, -0.5
    np.testing.assert_allclose(res.K_star, K_star, atol=1e-12)    # solver accuracy ~1e-15
    u = res.W_kq / np.linalg.norm(res.W_kq)
    assert np.linalg.norm(u - K_star / np.linalg.norm(K_star)) <= 1e-14   # a few roundings of 400 steps
    rep = audit.run_audit(ds, audit.AuditConfig(**SHORT_AUDIT), progress=False)
    c9 = _rows(rep)["C9"]
    assert c9["verdict"] == audit.PASS and c9["measured"]["fitted_exponent_last_decade"] is None
    assert "exactly along" in c9["detail"]


def test_five_step_run_is_too_short_and_c11_not_pass():
    """T = 5 on the default dataset: C9 is NOT APPLICABLE ("too short to fit"), and C11 does not
    PASS while the trained model's closure accuracy is far below 1 (about 0.4 at t = 5)."""
    rep = audit.run_audit(ri.generate(), audit.AuditConfig(T0=5, T=5, c5_T0=300), progress=False)
    by = _rows(rep)
    assert by["C9"]["verdict"] == audit.NA
    assert by["C9"]["detail"] == f"too short to fit: 5 steps, need >= {MIN_FIT_STEPS}"
    assert by["C11"]["measured"]["final_closure_accuracy"] < 0.9
    assert by["C11"]["verdict"] == audit.FAIL and by["C11"]["failure"] == audit.MEASURED
    assert rep["certified_failures"] == []


@pytest.mark.parametrize("T0, T", [(0, 0), (0, 300), (300, 0)])
def test_cli_exit_code_agrees_with_the_report(tmp_path, capsys, T0, T):
    """T0 = 0 / T = 0: the exit code is 1 iff a certified claim FAILs; C10 (measured) FAILs at
    T0 = 0 (O = 0: every Delta_i = 0) and the table's summary line shows it."""
    path = tmp_path / "d.json"
    ri.save_dataset(_small(), path)
    code = main(["-q", "audit", str(path), "--json", "--T0", str(T0), "--T", str(T)])
    rep = json.loads(capsys.readouterr().out)
    assert code == (1 if rep["certified_failures"] else 0)
    if T0 == 0:
        by = _rows(rep)
        assert by["C10"]["verdict"] == audit.FAIL and by["C10"]["measured"]["min_vertex_gap_sign"] == 0
        assert "C10" in rep["measured_failures"]
    main(["-q", "audit", str(path), "--T0", str(T0), "--T", str(T)])
    footer = capsys.readouterr().out.splitlines()[-1]
    for cid in rep["measured_failures"]:
        assert cid in footer and "measured claims FAILED" in footer


# ------------------------------------------------------------------ C8 in log space
def _mp_gap(O, tokens, y, x_star):
    """Delta = min_{v != x*} (g_v - g_x*) in 50-digit mpmath from the float64 entries of O;
    p* - e_y is formed with its y entry as -sum_{w != y} p*_w (1 - p*_y would cancel to 0)."""
    M = O.shape[0]
    o = [mpmath.mpf(float(O[w, x_star])) for w in range(M)]
    lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in o))
    p = [mpmath.exp(v - lse) for v in o]
    r = list(p)
    r[y] = -mpmath.fsum(p[w] for w in range(M) if w != y)

    def g(v):
        return mpmath.fsum(mpmath.mpf(float(O[w, v])) * r[w] for w in range(M))
    return min(g(v) - g(x_star) for v in set(tokens) - {x_star})


def _zero_init_O(M, a, outside):
    """Stage-1 output from zero: O[:, x] = a (e_{n(x)} - 1/M) for x in C, n(x) = x + 1 mod M;
    C is all tokens, or all but M - 1 (``outside``: column M - 1 is zero)."""
    O = np.zeros((M, M))
    for x in range(M - 1 if outside else M):
        O[:, x] = -a / M
        O[(x + 1) % M, x] += a
    return O


@pytest.mark.parametrize("a", [1.0, 30.0, 700.0, 745.0, 769.0, 1e3, 1e4, 1e5, 1e6])
@pytest.mark.parametrize("M", [3, 20])
def test_log_gap_against_mpmath(M, a):
    """c8_sentence_log_gap on the zero-init stage-1 output against 50-digit mpmath, from a = 1
    to 1e6 (T0 up to 10^6 at the defaults: a = 0.01026 T0). Two references: mpmath on the same
    float64 O, and the closed form a M/(e^a + M - 1) (v in C), a (M-1)/(e^a + M - 1) (v outside C).
    Tolerance: the docstring's rounding bound 8 eps (max|O| + 1) in absolute log (m - lse and the
    entries of d are float64 values of size a; 1.8e-9 at a = 1e6, i.e. 2e-15 relative)."""
    mpmath.mp.dps = 50
    O = _zero_init_O(M, a, outside=True)
    x_star, y = 0, 1
    tol = 8 * EPS * (np.abs(O).max() + 1)
    am = mpmath.mpf(a)
    for tokens, closed in (([1, 0], am * M / (mpmath.exp(am) + M - 1)),        # 1 in C, n(1) = 2 != y
                           ([M - 1, 0, 1], am * (M - 1) / (mpmath.exp(am) + M - 1))):  # M-1 outside C
        sign, log_abs = nu.c8_sentence_log_gap(O, tokens, y, x_star)
        ref = _mp_gap(O, tokens, y, x_star)
        assert sign == 1 and ref > 0
        assert abs(log_abs - float(mpmath.log(ref))) <= tol, (log_abs, mpmath.log(ref))
        assert abs(log_abs - float(mpmath.log(closed))) <= tol, (log_abs, mpmath.log(closed))
    # the linear form underflows where the log form is needed (a M e^{-a} < 5e-324)
    if a >= 1e3:
        assert nu.c8_sentence_gap(O, [1, 0], y, x_star) == 0.0


@pytest.mark.parametrize("T0", [1, 10**3, 75_000, 10**6])
def test_log_gap_zero_init_closed_form_against_mpmath(T0):
    """c8_log_gap_zero_init = log(a (M-1)/(e^a + M - 1)) at the built-in defaults (M = 20,
    eta0 = 0.2/sqrt(20), gamma_ov = 1/sqrt(19)), a from 0.01 to 1.03e4, against mpmath: 1e-14
    relative (a handful of float64 operations on numbers of size a)."""
    mpmath.mp.dps = 50
    M, eta0, g = 20, 0.2 / math.sqrt(20), 1 / math.sqrt(19)
    a = mpmath.mpf(g) * mpmath.mpf(eta0) * T0
    ref = mpmath.log(a * (M - 1) / (mpmath.exp(a) + M - 1))
    got = float(nu.c8_log_gap_zero_init(M, eta0, g, T0))
    assert abs(got - float(ref)) <= 1e-14 * abs(float(ref)), (got, ref)
    assert nu.c8_log_gap_zero_init(M, eta0, g, 0) == -math.inf   # T0 = 0: Delta = 0


def test_log_gap_zero_init_is_the_log_of_the_closed_form():
    """Symbolically: exp(C8_LOG_GAP_ZERO_INIT) = C8_GAP_ZERO_INIT (log1p rewritten as log(1 + x))."""
    expr = sp.exp(nu.C8_LOG_GAP_ZERO_INIT.rewrite(sp.log))
    assert sp.simplify(expr - dv.C8_GAP_ZERO_INIT) == 0


def test_log_constant_and_lower_bound_against_closed_forms():
    """c8_log_constant = min_i (log Delta_i - log L_i) - log N over constrained sentences (mpmath),
    -inf when some Delta_i <= 0; c8_excess_lower_log10_from_log = (log c8 - gamma (n0 + eta t))/ln 10."""
    mpmath.mp.dps = 50
    sign = np.array([1, 1, 1, 1])
    log_abs = np.array([-800.0, -760.5, np.inf, -790.0])           # sentence 2: no constraint
    lengths = np.array([4, 2, 1, 6])
    ref = min(mpmath.mpf(la) - mpmath.log(L) for la, L in zip(log_abs[[0, 1, 3]], lengths[[0, 1, 3]]))
    ref -= mpmath.log(4)
    got = nu.c8_log_constant(sign, log_abs, lengths)
    assert abs(got - float(ref)) <= 4 * EPS * abs(float(ref))
    assert nu.c8_log_constant(np.array([1, 0]), np.array([-5.0, -np.inf]), np.array([2, 2])) == -math.inf
    assert nu.c8_log_constant(np.array([1, -1]), np.array([-5.0, -3.0]), np.array([2, 2])) == -math.inf
    assert nu.c8_log_constant(np.array([1]), np.array([np.inf]), np.array([1])) == -math.inf
    t = np.array([0.0, 10.0, 1e5])
    want = (-1700.0 - 0.1 * (2.0 + 0.01 * t)) / math.log(10)
    np.testing.assert_allclose(nu.c8_excess_lower_log10_from_log(-1700.0, 0.1, 2.0, 0.01, t), want,
                               rtol=4 * EPS)


def _mp_excess(ds, O, K):
    """L(O, K) - L_floor(O) in 50-digit mpmath, the floor at the perfect-attention vertex (optimal
    here: every Delta_i > 0 from zero-init stage 1), attention from K in mpmath."""
    M = ds.vocab_size
    tot = mpmath.mpf(0)
    for i in range(ds.n_sentences):
        toks = [int(v) for v in ds.tokens[i, :ds.lengths[i]]]
        y, xs, q = int(ds.next_tokens[i]), int(ds.optimal[i]), toks[-1]
        s = [mpmath.mpf(float(K[x, q])) for x in toks]
        smax = max(s)
        e = [mpmath.exp(v - smax) for v in s]
        phi = [v / mpmath.fsum(e) for v in e]
        z = [mpmath.fsum(phi[l] * mpmath.mpf(float(O[v, toks[l]])) for l in range(len(toks)))
             for v in range(M)]
        zs = [mpmath.mpf(float(O[v, xs])) for v in range(M)]
        loss = mpmath.log1p(mpmath.fsum(mpmath.exp(z[v] - z[y]) for v in range(M) if v != y))
        floor = mpmath.log1p(mpmath.fsum(mpmath.exp(zs[v] - zs[y]) for v in range(M) if v != y))
        tot += loss - floor
    return tot / ds.n_sentences


def test_excess_in_log_space_past_float64_underflow():
    """With a = gamma_ov eta0 T0 ~ 894 the floor and the excess are ~e^{-900}, below the smallest
    double; the recorded log10 excess still matches 50-digit mpmath (1e-12 relative: the excess is
    formed from O(1) terms in log space, each a few roundings), and the C8 verdict uses it."""
    mpmath.mp.dps = 50
    ds = ri.generate(5, 12, 2, 4, 2)
    kept = {}
    res = train_two_stage(ds, T0=20_000, T=300, progress=False,
                          stage2_callback=lambda t, K: kept.__setitem__(t, K.copy()) if t in (0, 150, 300) else None)
    a = res.gamma_ov * res.config.eta0 * 20_000
    assert a > 800
    s2 = res.stage2
    assert np.all(np.isfinite(s2.log10_excess)) and s2.excess_loss[-1] == 0.0   # float64 underflow
    for t, K in kept.items():                      # every step is recorded (T <= 2000): row t
        ref = float(mpmath.log10(_mp_excess(ds, res.W_ov, K)))
        assert abs(s2.log10_excess[t] - ref) <= 1e-12 * abs(ref), (t, s2.log10_excess[t], ref)
    rep = audit.run_audit(ds, audit.AuditConfig(T0=20_000, T=300, c5_T0=300), progress=False)
    by = _rows(rep)
    assert rep["regime"] == "converging" and by["C8"]["verdict"] == audit.PASS
    assert by["C10"]["measured"]["min_vertex_gap_sign"] == 1


def test_default_dataset_T0_75000_converges():
    """The acceptance case: `refimpl audit` of the default dataset with T0 = 75000 (a = 769, every
    vertex gap ~e^{-760}, below the smallest double): regime converging, C8 PASS, C10 not FAIL.
    About 4 s on the idle 2-core machine (75000 + 20000 + 20000 NGD steps), so it stays unmarked."""
    rep = audit.run_audit(ri.generate(), audit.AuditConfig(T0=75_000), progress=False)
    by = _rows(rep)
    assert rep["regime"] == "converging" and rep["certified_failures"] == []
    assert by["C8"]["verdict"] == audit.PASS and by["C10"]["verdict"] != audit.FAIL
    assert by["C10"]["measured"]["min_vertex_gap_sign"] == 1
    # Zero-init closed form (theory section 9): with C = V every other token v is in C, so
    # Delta_i = a M/(e^a + M - 1) exactly = (the lower bound a (M-1)/(e^a + M - 1)) * M/(M-1).
    # 1e-12 relative: log Delta is ~-760, computed from float64 entries of size a = 769.
    log_bound = float(nu.c8_log_gap_zero_init(20, rep["config"]["eta0"], 1 / math.sqrt(19), 75_000))
    want = (log_bound + math.log(20 / 19)) / math.log(10)
    assert by["C10"]["measured"]["min_vertex_gap_log10"] == pytest.approx(want, rel=1e-12)


# ------------------------------------------------------------------ non-finite stops
def test_huge_step_stops_training_as_non_finite():
    """eta = 1e300: ||K_1|| overflows float64 (its sum of squares does); training stops at step 1
    of stage 2 with "non-finite", and no NumPy warning escapes."""
    ds = _small()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # any RuntimeWarning fails the test
        res = train_two_stage(ds, T0=20, T=50, eta=1e300, progress=False)
        res1 = train_two_stage(ds, T0=50, T=50, eta0=1e300, progress=False)
    assert res.stop_reason == {"stage1": "completed", "stage2": "non-finite at step 1"}
    assert res.non_finite() == ("stage 2", 1) and res.stage2.step[-1] == 1
    assert res1.stop_reason == {"stage1": "non-finite at step 1", "stage2": "skipped (stage 1 non-finite)"}
    assert res1.non_finite() == ("stage 1", 1) and len(res1.stage2) == 0
    with pytest.raises(NonFiniteTrainingError, match="stage 2 at step 1"):
        generalization_report(ds, res)


def test_cli_train_huge_eta_exits_1_with_one_line(tmp_path):
    """`refimpl -q train FILE --eta 1e300`: exit 1, one stderr line naming stage and step, no
    RuntimeWarning; summary.json records the stop."""
    path, out = tmp_path / "d.json", tmp_path / "out"
    ri.save_dataset(_small(), path)
    proc = subprocess.run([sys.executable, "-m", "refimpl", "-q", "train", str(path), "--eta", "1e300",
                           "--T0", "20", "--T", "50", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Warning" not in proc.stderr, proc.stderr
    assert "non-finite" in proc.stderr and "stage 2" in proc.stderr and "step 1" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"]["stage2"] == "non-finite at step 1"


@pytest.mark.parametrize("command", [["audit"], ["generalize"]])
def test_cli_audit_generalize_huge_eta_exit_1(tmp_path, capsys, command):
    path = tmp_path / "d.json"
    ri.save_dataset(_small(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code = main(["-q", *command, str(path), "--eta", "1e300", "--T0", "20", "--T", "50"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "stage 2 at step 1" in err, err


def test_cli_reproduce_huge_eta0_exit_1(tmp_path, capsys):
    """A non-finite stage 1 (eta0 = 1e300): stage 2 is skipped, reproduce writes its files with the
    stop in summary.json, prints one line and exits 1; no warning from the numerics or the plots."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code = main(["-q", "reproduce", "--eta0", "1e300", "--T0", "20", "--T", "20", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "stage 1 at step 1" in err, err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["stop_reason"] == {"stage1": "non-finite at step 1", "stage2": "skipped (stage 1 non-finite)"}
