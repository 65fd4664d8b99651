"""``refimpl audit``: verdicts, the JSON schema, exit codes (docs/audit.md)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

import refimpl as ri
from refimpl import audit
from refimpl.cli import main
from refimpl.rates import fit_exponential_rate, fit_linear_slope, fit_power_law

DATA = Path(__file__).parent / "data"
ROW_KEYS = {"id", "title", "status", "verdict", "failure", "measured", "bound", "detail"}
TOP_KEYS = {"schema", "dataset", "config", "regime", "stop_reason", "claims", "certified_failures",
            "measured_failures", "generalization", "runtime_seconds"}


@pytest.fixture(scope="module")
def default_report():
    """The audit of the built-in default dataset, with a shorter stage 2 to keep the suite fast."""
    # c5_T0 = 10000: C13's a-priori bound on the random-start run is positive from t ~ 6750
    cfg = audit.AuditConfig(T0=2000, T=20000, c5_T0=10000)
    return audit.run_audit(ri.generate(), cfg, progress=False)


def test_default_dataset_passes_every_certified_claim(default_report):
    rep = default_report
    assert set(rep) == TOP_KEYS and rep["schema"] == audit.SCHEMA
    assert [r["id"] for r in rep["claims"]] == [f"C{i}" for i in range(1, 17)]
    for r in rep["claims"]:
        assert set(r) == ROW_KEYS
        assert r["verdict"] in (audit.PASS, audit.FAIL, audit.NA)
        if r["id"] in audit.CERTIFIED_VERDICTS:
            assert r["verdict"] == audit.PASS, r
    assert rep["certified_failures"] == [] and rep["regime"] == "converging"
    assert rep["measured_failures"] == []          # every measured claim is observed on the default
    assert rep["schema"] == "refimpl/audit@6"
    json.dumps(rep, default=float)  # JSON-ready


def test_default_measured_rates_have_the_claimed_signs(default_report):
    by_id = {r["id"]: r for r in default_report["claims"]}
    assert by_id["C4"]["measured"]["fitted_rate_per_step"] < 0           # loss decays linearly
    assert by_id["C8"]["measured"]["fitted_rate_per_step"] < 0           # excess decays
    assert by_id["C9"]["measured"]["fitted_exponent_last_decade"] < 0    # direction converges
    eta = default_report["config"]["eta"]
    slope = by_id["C7"]["measured"]["fitted_norm_slope"]
    # norm grows linearly at nearly the full step size once the direction settles
    assert 0.9 * eta < slope <= eta * (1 + 1e-9)


def test_c16_default_run(default_report):
    """C16 on the default run: the earliest certified recorded step is found (its predecessor is not
    certified), the certified rate is below C8's gamma_kq (remark a of docs/stage2_upper.md) and the
    bound lies above the recorded excess at every later recorded step."""
    from refimpl_proofs import numeric
    r = {x["id"]: x for x in default_report["claims"]}["C16"]
    m, b = r["measured"], r["bound"]
    assert r["verdict"] == audit.PASS and r["status"] == "certified a posteriori"
    # docs/stage2_upper.md section 7: certified from 10600 on a 50-step grid, 10550 fails; the
    # recorded schedule has steps 10551, 10571, 10591 there
    assert 10550 < m["t0"] <= 10600 and m["previous_kept_step_certified"] is False
    assert m["kept_stride"] == 1 and m["certificate_calls"] <= audit.C16_MAX_CALLS
    assert 0 < b["rate_over_gamma_kq_eta"] < b["rate_over_gamma_kq_eta_certified_at_T"] < 1
    # 0.86 gamma_kq eta at T (section 7); the E0 -> 0 rate of section 4 is above every certified rate
    assert b["rate_over_gamma_kq_eta_certified_at_T"] == pytest.approx(0.86, abs=0.01)
    assert b["rate"] < b["rate_inf_zero_init"]
    assert b["final_log10_upper"] >= m["final_log10_excess"] and m["min_log10_slack"] >= -audit.C16_TOL
    # the registry's formula agrees with the certificate's rounded-up bound (float64 vs exact rounding:
    # 1e-9 absolute in log10 over ~9400 steps of log10(1 - eta r) ~ -4e-5)
    eta, T = default_report["config"]["eta"], default_report["config"]["T"]
    E0 = 10.0 ** m["log10_excess_at_t0"]
    assert float(numeric.c16_log10_bound(E0, eta, b["rate"], T - m["t0"])) == pytest.approx(
        b["final_log10_upper"], abs=1e-6)   # log10_excess_at_t0 is the trajectory's value, not E0


def test_c16_short_run_not_applicable():
    """Too few stage-2 steps: not even the last recorded step is certified; the reason is the
    certificate's (H3: the excess is not yet below the threshold)."""
    rep = audit.run_audit(ri.generate(), audit.AuditConfig(T0=2000, T=2000, c5_T0=200,
                                                           generalization=False), progress=False)
    r = {x["id"]: x for x in rep["claims"]}["C16"]
    assert r["verdict"] == audit.NA and "(H3)" in r["detail"] and "no recorded step" in r["detail"]


def test_c16_fails_when_the_certified_rate_is_too_fast(monkeypatch):
    """The comparison can fail: a certificate claiming a rate of 1.5 gamma_kq (faster than C8's lower
    bound allows) is violated by the recorded excess, a certified FAIL."""
    import dataclasses

    from refimpl import stage2_bound
    real = stage2_bound.certify_stage2_upper

    def too_fast(ds, O, K, eta, K_star=None, *, step_tol=0.0):
        c = real(ds, O, K, eta, K_star, step_tol=step_tol)
        if not c.ok:
            return c
        gk = 1.0 / np.linalg.norm(K_star)
        return dataclasses.replace(c, rate=1.5 * gk, log10_factor=math.log10(1 - 1.5 * gk * eta))
    monkeypatch.setattr(stage2_bound, "certify_stage2_upper", too_fast)
    rep = audit.run_audit(ri.generate(), audit.AuditConfig(T0=2000, T=14000, c5_T0=200,
                                                           generalization=False), progress=False)
    r = {x["id"]: x for x in rep["claims"]}["C16"]
    assert r["verdict"] == audit.FAIL and r["failure"] == audit.CERTIFIED and "C16" in rep["certified_failures"]


def test_c16_thinned_checkpoints():
    """When the copies of K at every recorded step would exceed the memory budget, every stride-th
    recorded step is kept: t0 is then the earliest certified kept step (its kept predecessor is not
    certified), and the bound is still compared with the excess at every recorded step after t0."""
    from refimpl.train import TrainConfig, run_two_stage
    from refimpl.trajectory import record_steps
    ds = ri.generate(vocab_size=6, n_sentences=20, seed=4)
    tc = TrainConfig(T0=300, T=3000).resolved(ds.vocab_size)
    sched = record_steps(tc.T, tc.record_dense_limit, tc.record_points)
    keep = audit.KeepStage2(sched, ds.vocab_size, None, max_bytes=100 * 8 * 36)   # room for 100 copies
    res = run_two_stage(ds, tc, progress=False, stage2_callback=keep)
    assert keep.stride > 1 and len(keep.K) <= 100
    r = audit._c16(ds, res, keep, None)
    m = r["measured"]
    assert r["verdict"] == audit.PASS and m["kept_stride"] == keep.stride
    assert m["t0"] in keep.K and m["previous_kept_step_certified"] is False
    assert m["steps_checked"] == int(np.sum(res.stage2.step >= m["t0"]))


def test_table_has_one_line_per_claim(default_report):
    lines = audit.format_table(default_report).splitlines()
    assert len(lines) == 2 + 16 + 1
    assert lines[-1] == "all certified claims hold"


def test_table_shows_every_field_whole(default_report):
    """No field is cut: every status string (the longest is 46 characters), every measured
    scalar and every bound name appears in full in its claim's line."""
    lines = audit.format_table(default_report).splitlines()[2:-1]
    for r, line in zip(default_report["claims"], lines):
        assert line.startswith(r["id"]) and f" {r['status']} " in line, line
        for k in list(r["measured"]) + list(r["bound"]):
            assert f"{k}=" in line, (k, line)
    longest = max(len(r["status"]) for r in default_report["claims"])
    assert longest > 32          # the case that used to be cut


def test_cli_audit_json_exit_0(capsys):
    code = main(["-q", "audit", str(DATA / "valid_small.json"), "--json", "--T0", "200", "--T", "500"])
    out, err = capsys.readouterr()
    assert code == 0, err
    def reject(name):                              # Infinity / NaN are not JSON
        raise ValueError(f"non-standard JSON constant {name}")
    rep = json.loads(out, parse_constant=reject)
    assert rep["schema"] == audit.SCHEMA and rep["certified_failures"] == []


def test_json_text_is_standard_json():
    """io.json_text: NaN -> null, +-inf -> "inf"/"-inf", NumPy scalars -> numbers, nested."""
    from refimpl.io import json_text
    text = json_text({"a": [np.float64(np.inf), -math.inf, math.nan], "b": (np.int64(3), 0.5)})
    assert json.loads(text) == {"a": ["inf", "-inf", None], "b": [3, 0.5]}
    assert "Infinity" not in text and "NaN" not in text


def test_cli_audit_exits_1_when_a_certified_bound_fails(capsys, monkeypatch):
    """A bound made too tight on purpose (C3 upper halved) must turn into FAIL and exit 1."""
    real = audit.bounds.c3_norm_upper
    monkeypatch.setattr(audit.bounds, "c3_norm_upper", lambda eta0, t: 0.5 * real(eta0, t))
    code = main(["-q", "audit", str(DATA / "valid_small.json"), "--T0", "50", "--T", "50"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "C3" in err and err.count("\n") == 1


def test_cli_audit_bad_input_exit_2(capsys):
    assert main(["-q", "audit", str(DATA / "cycle_2.json")]) == 2
    assert main(["-q", "audit", str(DATA / "valid_small.json"), "--eta", "-1"]) == 2


# ------------------------------------------------------------------ rate fits
def test_fits_recover_known_rates():
    t = np.unique(np.round(np.logspace(0, 4, 200)))
    assert fit_power_law(t, 3.0 * t ** -1.5) == pytest.approx(-1.5, rel=1e-12)  # exact power law
    assert fit_exponential_rate(t, -0.01 * t + 2.0) == pytest.approx(-0.01, rel=1e-12)
    assert fit_linear_slope(t, 0.25 * t + 1.0) == pytest.approx(0.25, rel=1e-12)
    assert fit_power_law(t[:2], t[:2]) is None  # too few points: no slope is invented


def test_weak_stage1_run_is_reported_not_claimed():
    """C10: on the regression example of docs/findings.md (stage 1 of 2 steps from a random
    start) the audit reports the weak-stage-1 regime and claims no stage-2 convergence."""
    ds = ri.load_dataset(DATA / "c10_weak_stage1.json")
    cfg = audit.AuditConfig(T0=2, T=4000, init="random", init_scale=0.5, seed=1309607927, eta0=0.1,
                            eta=0.025, c5_T0=2000)
    rep = audit.run_audit(ds, cfg, progress=False)
    by_id = {r["id"]: r for r in rep["claims"]}
    assert rep["regime"] == "weak_stage1" and by_id["C10"]["verdict"] == audit.FAIL
    assert by_id["C10"]["measured"]["min_vertex_gap"] < 0   # the certified criterion fires
    assert by_id["C8"]["verdict"] == by_id["C9"]["verdict"] == audit.NA
    assert rep["certified_failures"] == []                 # a finding, not a failed certified bound
    assert "C10" in rep["measured_failures"] and by_id["C10"]["failure"] == audit.MEASURED
    assert "measured claims FAILED" in audit.format_table(rep).splitlines()[-1]   # visible, exit 0


def test_c8_check_fails_on_zero_or_nan_excess_against_a_representable_bound():
    """C8's trajectory check: an excess of exactly 0 (log10 -inf) or NaN breaks a positive
    certified lower bound (it passed before); 0 is accepted only when the bound itself is
    below the smallest positive double (true underflow)."""
    from refimpl.audit import _above_lower
    lower = np.array([-5.0, -10.0, -20.0])
    assert _above_lower(np.array([-4.0, -9.0, -19.0]), lower)
    assert not _above_lower(np.array([-4.0, -11.0, -19.0]), lower)          # below the bound
    assert not _above_lower(np.array([-4.0, -9.0, -np.inf]), lower)         # zero excess
    assert not _above_lower(np.array([-4.0, -9.0, np.nan]), lower)          # NaN excess
    assert _above_lower(np.array([-4.0, -np.inf]), np.array([-5.0, -400.0]))  # underflow
