"""Every valid dataset of the test corpus, degenerate ones included, goes through the audit
and `refimpl generalize` without a crash and with every verdict explained (docs/audit.md):
each claim is PASS, FAIL or NOT APPLICABLE, a NOT APPLICABLE names its reason, and the exit
status agrees with the certified failures."""
import json
from pathlib import Path

import pytest

from refimpl.cli import main

DATA = Path(__file__).parent / "data"
DEGENERATE = sorted((DATA / "degenerate").glob("*.json"))
VERDICTS = {"PASS", "FAIL", "NOT APPLICABLE"}


def run(capsys, argv):
    code = main(["-q", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.mark.parametrize("path", DEGENERATE, ids=lambda p: p.stem)
def test_degenerate_files_are_valid(path, capsys):
    code, _, err = run(capsys, ["validate", str(path)])
    assert code == 0, err


@pytest.mark.parametrize("steps", [(0, 0), (5, 5), (150, 150)], ids=lambda s: f"T0={s[0]},T={s[1]}")
@pytest.mark.parametrize("path", DEGENERATE, ids=lambda p: p.stem)
def test_audit_explains_every_verdict(path, steps, capsys):
    T0, T = steps
    code, out, err = run(capsys, ["audit", str(path), "--json", "--T0", str(T0), "--T", str(T)])
    assert code in (0, 1), err
    report = json.loads(out)
    claims = report["claims"]
    assert [c["id"] for c in claims] == [f"C{k}" for k in range(1, 17)]
    for c in claims:
        assert c["verdict"] in VERDICTS, c
        if c["verdict"] == "NOT APPLICABLE":
            assert c["detail"], c                 # the reason
    failed = [c["id"] for c in claims if c["verdict"] == "FAIL" and c["failure"] == "certified"]
    assert failed == report["certified_failures"]
    assert code == (1 if failed else 0)
    if "length_one" in path.stem:
        for c in claims[5:11]:                    # C6..C11 need attention
            assert c["verdict"] == "NOT APPLICABLE" and "length 1" in c["detail"], c
        assert claims[14]["verdict"] == "NOT APPLICABLE"          # C15 too (stage 1 rows C12-C14 may apply)
        assert claims[15]["verdict"] == "NOT APPLICABLE" and "length 1" in claims[15]["detail"]   # C16


@pytest.mark.parametrize("path", DEGENERATE, ids=lambda p: p.stem)
def test_generalize_runs_on_degenerate_data(path, capsys):
    code, out, err = run(capsys, ["generalize", str(path), "--T0", "50", "--T", "50"])
    assert code == 0, err
    json.loads(out)
