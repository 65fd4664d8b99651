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
    assert [r["id"] for r in rep["claims"]] == [f"C{i}" for i in range(1, 16)]
    for r in rep["claims"]:
        assert set(r) == ROW_KEYS
        assert r["verdict"] in (audit.PASS, audit.FAIL, audit.NA)
        if r["id"] in audit.CERTIFIED_VERDICTS:
            assert r["verdict"] == audit.PASS, r
    assert rep["certified_failures"] == [] and rep["regime"] == "converging"
    assert rep["measured_failures"] == []          # every measured claim is observed on the default
    assert rep["schema"] == "refimpl/audit@5"
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


def test_table_has_one_line_per_claim(default_report):
    lines = audit.format_table(default_report).splitlines()
    assert len(lines) == 2 + 15 + 1
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
