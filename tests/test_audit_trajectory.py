"""``refimpl audit FILE --trajectory RUN.npz`` and ``ri.audit_trajectory``: the claims on
checkpoints of a run made elsewhere (docs/audit.md, "Auditing a trajectory made elsewhere").

On refimpl's own run, saved with ``save_checkpoints``, the trajectory audit must give the
verdicts of ``refimpl audit`` claim by claim; a run whose steps differ from the declared step
size must fail; a malformed file must end in one line and exit 2."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

import refimpl as ri
from refimpl import audit as au
from refimpl.audit_trajectory import (SCHEMA, TrajectoryFileError, audit_trajectory, refimpl_checkpoints,
                                      save_checkpoints)
from refimpl.cli import main

DATA = Path(__file__).parent / "data"
SMALL = DATA / "valid_small.json"
CLAIMS = [f"C{i}" for i in range(1, 12)] + ["C16"]


def by_id(report):
    return {r["id"]: r for r in report["claims"] + report.get("checks", [])}


def cli(capsys, argv):
    code = main(["-q", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def orthonormal(d, M, seed):
    """A (d, M) matrix with orthonormal columns (QR of a Gaussian matrix)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, M)))
    return q


@pytest.fixture(scope="module")
def small():
    return ri.load_dataset(SMALL)


@pytest.fixture(scope="module")
def small_run(small):
    """refimpl's own run on the small dataset, every step saved (T0 = T = 300 <= 2000)."""
    return refimpl_checkpoints(small, au.AuditConfig(T0=300, T=300))


# ------------------------------------------------------------------ agreement with refimpl audit
CASES = {
    # name: (dataset, AuditConfig, embeddings (d, M) or None)
    "small-dense": (lambda: ri.load_dataset(SMALL), dict(T0=300, T=300, c5_T0=300), None),
    # T = 2500 > 2000: the trainer records a geometric + linear schedule, so the file is sparse
    "M8-sparse-schedule": (lambda: ri.generate(8, 40, seed=3), dict(T0=250, T=2500, c5_T0=300), None),
    "M6-random-init": (lambda: ri.generate(6, 30, seed=5), dict(T0=300, T=400, init="random", seed=2,
                                                                c5_T0=300), None),
    # d = 11 > M = 8, random orthonormal E: the file is in embedding space
    "M8-embeddings-d11": (lambda: ri.generate(8, 40, seed=3), dict(T0=300, T=300, c5_T0=300), (11, 7)),
    # no attention: stage 2 stops at a zero gradient at step 0 (the saver ends there too)
    "length-one-only": (lambda: ri.load_dataset(DATA / "degenerate" / "length_one_only.json"),
                        dict(T0=150, T=150, c5_T0=150), None),
    # one constraint: K_t lies exactly along K* (C9 by exact direction)
    "one-sentence-length-two": (lambda: ri.load_dataset(DATA / "degenerate" / "one_sentence_length_two.json"),
                                dict(T0=150, T=150, c5_T0=150), None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_agrees_with_the_ordinary_audit_on_refimpl_run(name):
    make, kw, emb = CASES[name]
    ds = make()
    cfg = au.AuditConfig(**kw)
    E = None if emb is None else orthonormal(emb[0], ds.vocab_size, emb[1])
    ordinary = au.run_audit(ds, cfg, progress=False)
    run = refimpl_checkpoints(ds, cfg, embeddings=E)
    traj = audit_trajectory(ds, run)
    a, b = by_id(ordinary), by_id(traj)
    # C5 is measured on different runs (refimpl audit: an extra random-start run; here: the
    # file's own stage 1); its agreement is tested on the same run below.
    for cid in CLAIMS:
        if cid != "C5":
            assert b[cid]["verdict"] == a[cid]["verdict"], (cid, a[cid], b[cid])
            assert b[cid]["failure"] == a[cid]["failure"], cid
    assert traj["regime"] == ordinary["regime"]
    assert traj["certified_failures"] == ordinary["certified_failures"] == []
    assert b["NGD-1"]["verdict"] == au.PASS
    # a stage 2 stopped at a zero gradient at step 0 leaves one checkpoint: no pair to compare
    assert b["NGD-2"]["verdict"] == (au.PASS if len(run["stage2_steps"]) > 1 else au.NA)
    if ordinary["regime"] == "no_attention":
        assert list(run["stage2_steps"]) == [0] and ordinary["stop_reason"]["stage2"] == "zero_gradient at step 0"
    if E is None:
        # The same iterates bit for bit (the saver replays the trainer's own step) and the same
        # metric code: every certified number agrees exactly, not just the verdict.
        for cid in ("C2", "C3", "C4", "C7", "C8", "C10"):
            assert b[cid]["measured"] == a[cid]["measured"], cid
            assert b[cid]["bound"] == a[cid]["bound"], cid
    else:
        # E^T (E W E^T) E = W up to rounding (~1e-16 ||W||): the numbers agree to 1e-9 relative
        for cid in ("C3", "C7"):
            for k, v in a[cid]["measured"].items():
                if isinstance(v, float):
                    assert b[cid]["measured"][k] == pytest.approx(v, rel=1e-9, abs=1e-12), (cid, k)


def test_c5_agrees_on_the_audit_own_random_start_run():
    """refimpl audit measures C5 on an extra stage-1 run from a random start; saving that run as a
    stage-1-only file gives the same C5 verdict and exponent (same iterates, same fit)."""
    ds = ri.generate(8, 40, seed=3)
    eta0 = 0.2 / math.sqrt(8)
    cfg = au.AuditConfig(eta0=eta0, T0=50, T=0, c5_T0=400, c5_init_scale=1.0, seed=1, generalization=False)
    ordinary = by_id(au.run_audit(ds, cfg, progress=False))["C5"]
    c5_run = ri.TrainConfig(eta0=eta0, T0=cfg.c5_T0, T=0, init="random", init_scale=cfg.c5_init_scale,
                            seed=cfg.seed)
    traj = by_id(audit_trajectory(ds, refimpl_checkpoints(ds, c5_run, stage2_steps=[])))["C5"]
    assert ordinary["verdict"] == traj["verdict"] == au.PASS
    assert ordinary["measured"]["fitted_exponent_last_decade"] < 0
    assert traj["measured"]["fitted_exponent_last_decade"] == ordinary["measured"]["fitted_exponent_last_decade"]


def test_saved_checkpoints_are_the_trainer_iterates(small, small_run):
    """The saver replays Algorithm 1 with the trainer's own step: the last checkpoints equal
    train_two_stage's W_ov and W_kq bit for bit."""
    res = ri.train_two_stage(small, T0=300, T=300, progress=False)
    assert np.array_equal(small_run["stage1_W_ov"][-1], res.W_ov)
    assert np.array_equal(small_run["W_ov"], res.W_ov)
    assert np.array_equal(small_run["stage2_W_kq"][-1], res.W_kq)
    assert list(small_run["stage1_steps"]) == list(range(301))
    assert float(small_run["eta0"]) == res.config.eta0 and float(small_run["eta"]) == res.config.eta


# ------------------------------------------------------------------ runs whose steps are not the declared ones
def test_step_size_off_by_two_is_caught(small, tmp_path, capsys):
    """A run made with 2 eta0 but declaring eta0: every consecutive pair of checkpoints is
    2 eta0 apart, O_t = 2 eta0 t hat O* (so ||O_t|| = 2 eta0 t, not eta0 t): C2, C3 (the upper
    bound ||O_t - O_0|| <= eta0 t) and NGD-1 must fail, and the CLI exits 1."""
    declared = 0.2 / math.sqrt(small.vocab_size)
    run = refimpl_checkpoints(small, ri.TrainConfig(eta0=2 * declared, T0=200, T=0))
    run["eta0"] = np.float64(declared)
    O = run["stage1_W_ov"]
    # independent of the audit: the step lengths and the distance from O_0, from the arrays
    steps = np.linalg.norm(np.diff(O, axis=0), axis=(1, 2))
    assert np.allclose(steps, 2 * declared, rtol=1e-12)          # rounding of one update, ~1e-16
    assert np.linalg.norm(O[-1] - O[0]) > 1.9 * declared * 200   # far above the C3 bound eta0 T
    rep = audit_trajectory(small, run)
    rows = by_id(rep)
    for cid in ("C2", "C3", "NGD-1"):
        assert rows[cid]["verdict"] == au.FAIL and rows[cid]["failure"] == au.CERTIFIED, rows[cid]
    assert set(rep["certified_failures"]) >= {"C2", "C3", "NGD-1"}
    assert rows["NGD-1"]["measured"]["max_rel_dev_one_step"] == pytest.approx(1.0, rel=1e-9)
    path = tmp_path / "buggy.npz"
    np.savez(path, **run)
    code, out, err = cli(capsys, ["audit", str(SMALL), "--trajectory", str(path)])
    assert code == 1
    assert "NGD-1" in err and "C2" in err and len(err.strip().splitlines()) == 1
    assert "NGD-1 certified" in out


def test_half_step_from_random_start_is_caught_only_by_the_step_check():
    """Half the declared step from a random start: C2 does not apply (not from zero) and C3's
    bounds still hold (shorter steps stay inside ||O_t - O_0|| <= eta0 t; the projection bound
    gamma_ov/sqrt2 = 0.35 per declared step is below the 0.5 made), so only NGD-1 catches it."""
    ds = ri.load_dataset(SMALL)
    declared = 0.2 / math.sqrt(ds.vocab_size)
    run = refimpl_checkpoints(ds, ri.TrainConfig(eta0=declared / 2, T0=200, T=0, init="random", seed=4),
                              stage2_steps=[])
    run["eta0"] = np.float64(declared)
    steps = np.linalg.norm(np.diff(run["stage1_W_ov"], axis=0), axis=(1, 2))
    assert np.allclose(steps, declared / 2, rtol=1e-12)
    rows = by_id(audit_trajectory(ds, run))
    assert rows["C2"]["verdict"] == au.NA and "zero initialization" in rows["C2"]["detail"]
    assert rows["C3"]["verdict"] == au.PASS
    assert rows["NGD-1"]["verdict"] == au.FAIL and rows["NGD-1"]["failure"] == au.CERTIFIED
    assert rows["NGD-1"]["measured"]["first_violation"]["from_step"] == 0


def test_stage2_step_off_by_two_fails_c7_and_ngd2(small):
    run = refimpl_checkpoints(small, au.AuditConfig(T0=100, T=150, eta=0.04))
    run["eta"] = np.float64(0.02)
    K = run["stage2_W_kq"]
    assert np.linalg.norm(K[-1] - K[0]) > 0.02 * 150 * 1.5      # the C7 bound eta T is exceeded
    rows = by_id(audit_trajectory(small, run))
    assert rows["C7"]["verdict"] == au.FAIL and rows["NGD-2"]["verdict"] == au.FAIL
    assert rows["NGD-1"]["verdict"] == au.PASS                     # stage 1 was made as declared


# ------------------------------------------------------------------ partial files
def test_only_stage1(small, small_run, tmp_path, capsys):
    run = {k: small_run[k] for k in ("stage1_steps", "stage1_W_ov", "eta0")}
    rep = audit_trajectory(small, run)
    rows = by_id(rep)
    assert [rows[c]["verdict"] for c in ("C1", "C2", "C3", "C4", "C5", "C6")] == [au.PASS] * 6
    for cid in ("C7", "C8", "C9", "C10", "C11", "NGD-2"):
        assert rows[cid]["verdict"] == au.NA and "no stage-2 checkpoints" in rows[cid]["detail"], cid
    assert rep["regime"] == "no_stage2" and rep["certified_failures"] == []
    path = tmp_path / "s1.npz"
    np.savez(path, **run)
    code, out, _ = cli(capsys, ["audit", str(SMALL), "--trajectory", str(path), "--json"])
    assert code == 0 and json.loads(out)["regime"] == "no_stage2"


def test_only_stage2(small, small_run):
    run = {k: small_run[k] for k in ("stage2_steps", "stage2_W_kq", "W_ov", "eta")}
    rep = audit_trajectory(small, run)
    rows = by_id(rep)
    for cid in ("C2", "C3", "C4", "C5", "NGD-1"):
        assert rows[cid]["verdict"] == au.NA and "no stage-1 checkpoints" in rows[cid]["detail"], cid
    full = by_id(audit_trajectory(small, small_run))
    for cid in ("C1", "C6", "C7", "C8", "C9", "C10", "C11", "NGD-2"):
        assert rows[cid]["verdict"] == full[cid]["verdict"] == au.PASS, cid
    assert rep["checkpoints"]["stage1"] is None and rep["checkpoints"]["stage2"]["count"] == 301


def test_sparse_checkpoints_and_a_late_first_checkpoint(small):
    """Checkpoints every 50 steps from t = 50: C2 needs t = 0 (NOT APPLICABLE); C3 is checked from
    the first checkpoint (||O_t - O_50|| <= eta0 (t - 50), verified here on the arrays); the fits
    have 4 checkpoints in their window (< 10): rates are not reported, C9 is NOT APPLICABLE."""
    cfg = au.AuditConfig(T0=300, T=300)
    run = refimpl_checkpoints(small, cfg, stage1_steps=range(50, 301, 50), stage2_steps=range(50, 301, 50))
    O, t, eta0 = run["stage1_W_ov"], run["stage1_steps"], float(run["eta0"])
    dist = np.linalg.norm(O - O[0], axis=(1, 2))
    assert np.all(dist <= eta0 * (t - t[0]) * (1 + 1e-12))
    rows = by_id(audit_trajectory(small, run))
    assert rows["C2"]["verdict"] == au.NA and "t = 0" in rows["C2"]["detail"]
    assert rows["C3"]["verdict"] == rows["C4"]["verdict"] == au.PASS
    assert rows["C4"]["measured"]["fitted_rate_per_step"] is None
    assert "too few checkpoints" in rows["C4"]["measured"]["fit"]
    assert rows["C9"]["verdict"] == au.NA and "too few checkpoints" in rows["C9"]["detail"]
    assert rows["NGD-1"]["verdict"] == au.PASS and rows["NGD-1"]["measured"]["pairs_one_step_apart"] == 0


def test_random_embeddings_d_above_m(tmp_path, capsys):
    """d = 9 > M = 5 with a random orthonormal E: the file is in embedding space, the audit
    converts with E^T W E and every certified claim holds (exit 0)."""
    ds = ri.load_dataset(SMALL)
    E = orthonormal(9, ds.vocab_size, 0)
    run = refimpl_checkpoints(ds, au.AuditConfig(T0=200, T=200), embeddings=E)
    assert run["stage1_W_ov"].shape == (201, 9, 9)
    path = tmp_path / "emb.npz"
    np.savez(path, **run)
    code, out, err = cli(capsys, ["audit", str(SMALL), "--trajectory", str(path), "--json"])
    assert code == 0, err
    rep = json.loads(out)
    assert rep["schema"] == SCHEMA == "refimpl/audit@7" and rep["source"] == "trajectory"
    assert rep["config"]["d"] == 9 and rep["config"]["embeddings"] == "given"
    assert rep["certified_failures"] == [] and rep["regime"] == "converging"


def test_table_lists_claims_then_checks(small, small_run):
    from refimpl.audit_trajectory import format_table
    lines = format_table(audit_trajectory(small, small_run)).splitlines()
    assert len(lines) == 2 + 12 + 2 + 1
    assert lines[0].startswith("refimpl audit --trajectory")
    assert [ln.split()[0] for ln in lines[2:-1]] == CLAIMS + ["NGD-1", "NGD-2"]
    assert lines[-1] == "all certified claims hold"


# ------------------------------------------------------------------ malformed files
def _drop(key):
    return lambda r: {k: v for k, v in r.items() if k != key}


def _set(key, value):
    return lambda r: {**r, key: value(r) if callable(value) else value}


def _nan_at(r):
    K = r["stage2_W_kq"].copy()
    K[7, 1, 2] = np.nan
    return K


BAD = {
    "missing-stage1_W_ov": (_drop("stage1_W_ov"), "missing key 'stage1_W_ov'"),
    "missing-eta0": (_drop("eta0"), "missing key 'eta0'"),
    "missing-W_ov": (_drop("W_ov"), "missing key 'W_ov'"),
    "missing-eta": (_drop("eta"), "missing key 'eta'"),
    "no-checkpoints": (lambda r: {"eta0": r["eta0"]}, "no checkpoints"),
    "unknown-key": (_set("stage3_W", np.zeros(2)), "unknown key 'stage3_W'"),
    "steps-count-mismatch": (_set("stage1_steps", lambda r: r["stage1_steps"][:-1]),
                             "one matrix per checkpoint"),
    "matrix-shape": (_set("W_ov", np.zeros((5, 4))), "'W_ov' has shape (5, 4), expected (5, 5)"),
    "d-not-M-without-embeddings": (_set("stage2_W_kq", lambda r: np.zeros((301, 6, 6))),
                                   "d = M = 5"),
    "non-finite": (_set("stage2_W_kq", _nan_at), "non-finite value (nan) at index (7, 1, 2)"),
    "steps-not-increasing": (_set("stage1_steps", lambda r: r["stage1_steps"][::-1].copy()),
                             "strictly increasing"),
    "steps-repeated": (_set("stage2_steps", lambda r: np.r_[0, r["stage2_steps"][:-1]]), "strictly increasing"),
    "steps-negative": (_set("stage1_steps", lambda r: r["stage1_steps"] - 1), "must be >= 0"),
    "steps-float": (_set("stage1_steps", lambda r: r["stage1_steps"].astype(float)), "must be integers"),
    "eta0-zero": (_set("eta0", np.float64(0.0)), "'eta0' must be a finite number > 0"),
    "eta-vector": (_set("eta", np.array([0.1, 0.2])), "'eta' must be a scalar"),
    "eta-inf": (_set("eta", np.float64(np.inf)), "'eta' must be a finite number > 0"),
    "embeddings-d-mismatch": (_set("embeddings", np.eye(7)[:, :5]), "'stage1_W_ov' has shape (301, 5, 5), "
                                                                    "expected (301, 7, 7)"),
    "embeddings-wrong-M": (_set("embeddings", np.eye(6)), "shape (d, 5)"),
    "embeddings-not-orthonormal": (_set("embeddings", 2 * np.eye(5)), "not orthonormal"),
    "complex-matrices": (_set("W_ov", lambda r: r["W_ov"].astype(complex)), "must hold real numbers"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_file_one_line_exit_2(case, small, small_run, tmp_path, capsys):
    mutate, message = BAD[case]
    run = mutate(dict(small_run))
    with pytest.raises(TrajectoryFileError) as exc:       # the library: one InputError subclass
        audit_trajectory(small, run)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert isinstance(exc.value, ri.InputError)
    path = tmp_path / "bad.npz"
    np.savez(path, **run)
    code, out, err = cli(capsys, ["audit", str(SMALL), "--trajectory", str(path)])
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert err.startswith(f"refimpl audit: {path}: ")


def test_pickled_object_array_is_refused(small, small_run, tmp_path, capsys):
    """np.savez pickles an object array; the reader uses allow_pickle=False and refuses it
    (no unpickling of data from a file)."""
    path = tmp_path / "pickle.npz"
    np.savez(path, **{**small_run, "stage1_steps": np.array(list(range(301)), dtype=object)})
    with pytest.raises(TrajectoryFileError, match="Python objects"):
        audit_trajectory(small, path)
    code, _, err = cli(capsys, ["audit", str(SMALL), "--trajectory", str(path)])
    assert code == 2 and "'stage1_steps' holds Python objects" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content, message", [(None, "no such file"), (b"not a zip", "not an .npz archive")])
def test_unreadable_file_exit_2(content, message, tmp_path, capsys):
    path = tmp_path / "run.npz"
    if content is not None:
        path.write_bytes(content)
    code, _, err = cli(capsys, ["audit", str(SMALL), "--trajectory", str(path)])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_training_options_do_not_apply(tmp_path, capsys):
    code, _, err = cli(capsys, ["audit", str(SMALL), "--trajectory", str(tmp_path / "x.npz"), "--T0", "5"])
    assert code == 2 and "--T0 does not apply" in err


def test_save_checkpoints_writes_the_schema(small, tmp_path):
    path = tmp_path / "own.npz"
    data = save_checkpoints(small, path, au.AuditConfig(T0=20, T=30), stage1_steps=[0, 10, 20])
    with np.load(path, allow_pickle=False) as npz:
        assert set(npz.files) == {"stage1_steps", "stage1_W_ov", "stage2_steps", "stage2_W_kq", "W_ov",
                                  "eta0", "eta"}
        assert list(npz["stage1_steps"]) == [0, 10, 20] and npz["stage2_W_kq"].shape == (31, 5, 5)
        assert np.array_equal(npz["W_ov"], data["W_ov"])
    assert ri.save_checkpoints is save_checkpoints
    # ri.audit_trajectory (the package attribute: the module, callable) runs the audit
    assert ri.audit_trajectory(small, path)["claims"][0]["verdict"] == au.PASS


def test_c16_from_checkpoints():
    """C16 from the checkpoints of refimpl's own run (the trainer's recording schedule, the same
    iterates bit for bit) finds the t0 and rate of ``refimpl audit``; without stage-2 checkpoints it
    is NOT APPLICABLE."""
    ds = ri.generate(vocab_size=6, n_sentences=20, seed=4)
    cfg = au.AuditConfig(T0=300, T=3000, c5_T0=300, generalization=False)
    a = by_id(au.run_audit(ds, cfg, progress=False))["C16"]
    run = refimpl_checkpoints(ds, cfg)
    b = by_id(audit_trajectory(ds, run))["C16"]
    assert a["verdict"] == b["verdict"] == au.PASS
    assert b["measured"]["t0"] == a["measured"]["t0"] and b["bound"]["rate"] == a["bound"]["rate"]
    assert b["measured"]["steps_checked"] == a["measured"]["steps_checked"]
    del run["stage2_steps"], run["stage2_W_kq"]
    c = by_id(audit_trajectory(ds, run))["C16"]
    assert c["verdict"] == au.NA and "no stage-2 checkpoints" in c["detail"]
