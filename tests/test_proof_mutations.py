"""Mutation tests of refimpl_proofs: a perturbed constant in the claims registry fails its check.

Each certified constant and closed form (C1 ||O*||^2, C2 loss, C3 both sides, C4 ``c1`` and
its lower bound, C7, C8 bound, constant and zero-init gap, C12, the C13 cosine bound, margin
bound and liminf, the C14 gap bound, the C15 threshold and drift, every C16 constant: the bound
E0 (1 - eta r)^k, r, l(e), c(e), b(e), beta_i, eps_bar, g, r_inf and the zero-init closed forms of
docs/stage2_upper.md section 4) is perturbed in the registry
(``claims.CLAIMS``, read at check time), by a factor 101/100 or by adding 1/1000, both in the
claim's constants and in its statement; the claim's check, and ``check_all()``, must then fail
at a derivation step (not only at the bookkeeping step "statement uses the constant").
"""
import dataclasses
import importlib

import pytest
import sympy as sp

import refimpl_proofs
from refimpl_proofs import certify, claims, numeric

R = sp.Rational
MUTATIONS = {"x1.01": lambda e: R(101, 100) * e, "+1/1000": lambda e: e + R(1, 1000)}
TARGETS = [("C1", "norm_sq"), ("C2", "loss"), ("C3", "norm_upper"), ("C3", "proj_lower"),
           ("C4", "c1"), ("C4", "lower"), ("C7", "norm_upper"), ("C8", "lower"),
           ("C8", "c8"), ("C8", "gap_zero_init"), ("C12", "cos_lower"),
           ("C13", "cos_lower"), ("C13", "margin_lower"), ("C13", "liminf"), ("C14", "gap_lower"),
           ("C15", "threshold"), ("C15", "drift"),
           ("C16", "bound"), ("C16", "rate"), ("C16", "l"), ("C16", "c"), ("C16", "b"), ("C16", "beta_i"),
           ("C16", "eps_bar"), ("C16", "growth"), ("C16", "rate_inf"), ("C16", "ustar_zero_init"),
           ("C16", "gap_in_C_zero_init"), ("C16", "eps_star_zero_init"), ("C16", "rate_inf_zero_init")]
BOOKKEEPING = "statement uses"


def _mutated(claim, name, fn):
    old = claim.constant(name)
    new = fn(old)
    constants = tuple((k, new if k == name else e) for k, e in claim.constants)
    statement = claim.statement.xreplace({old: new})
    return dataclasses.replace(claim, constants=constants, statement=statement)


@pytest.fixture(scope="module")
def baseline():
    return refimpl_proofs.check_all()


def test_unperturbed_run_passes(baseline):
    """Every claim passes unperturbed; measured claims are reported measured, never proved."""
    assert baseline.ok and not baseline.failed, str(baseline)
    assert set(baseline.proved) == {"C1", "C2", "C3", "C4", "C6", "C7", "C8", "C11", "C12", "C13",
                                    "C14", "C15", "C16"}
    assert set(baseline.measured) == {"C5", "C9", "C10"}
    for cid in ("C5", "C9", "C10"):
        r = claims.check(cid)
        assert r.verdict == certify.MEASURED and not r.proved and not bool(r)
        assert any(s.kind == certify.NUMERIC and s.passed is None for s in r.steps)


@pytest.mark.parametrize("how", sorted(MUTATIONS))
@pytest.mark.parametrize("cid,name", TARGETS)
def test_mutation_caught(monkeypatch, cid, name, how):
    """A perturbed constant fails a derivation step of its claim and check_all()."""
    monkeypatch.setitem(claims.CLAIMS, cid, _mutated(claims.get(cid), name, MUTATIONS[how]))
    result = claims.check(cid)
    assert result.verdict == certify.FAILED and not result.proved, str(result)
    assert any(not s.startswith(BOOKKEEPING) for s in result.failed_steps), str(result)
    summary = refimpl_proofs.check_all()
    assert not summary.ok and cid in summary.failed


@pytest.mark.parametrize("cid,name", [("C1", "norm_sq"), ("C3", "proj_lower"), ("C4", "c1")])
def test_constant_not_in_statement_caught(monkeypatch, cid, name):
    """Changing only the constant (the statement keeps the old one) is caught too."""
    c = claims.get(cid)
    constants = tuple((k, R(101, 100) * e if k == name else e) for k, e in c.constants)
    monkeypatch.setitem(claims.CLAIMS, cid, dataclasses.replace(c, constants=constants))
    assert claims.check(cid).verdict == certify.FAILED


def test_numeric_bounds_follow_the_registry(monkeypatch):
    """numeric lambdifies the registry's constants: a mutated registry changes the float bound."""
    before = float(numeric.c3_proj_lower(0.1, 0.5, 100.0))
    monkeypatch.setitem(claims.CLAIMS, "C3", _mutated(claims.get("C3"), "proj_lower",
                                                      MUTATIONS["x1.01"]))
    try:
        importlib.reload(numeric)
        after = float(numeric.c3_proj_lower(0.1, 0.5, 100.0))
    finally:
        monkeypatch.undo()
        importlib.reload(numeric)
    assert after == pytest.approx(1.01 * before, rel=1e-14)
    assert float(numeric.c3_proj_lower(0.1, 0.5, 100.0)) == before
