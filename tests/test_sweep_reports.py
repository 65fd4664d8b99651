"""The sweep reports ``generalization`` and ``joint``, the C10 threshold and the figures of
``refimpl sweep-report`` (refimpl/sweep_tasks.py, refimpl/sweep_report.py, docs/sweeps.md).

Tiny tasks (M 5-6, N 12, T0 and T <= 50, 40 test sentences) on a two-worker LocalCluster:
every report gives one row with its documented columns; a task that raises and a task that
kills its worker on every attempt both become error rows; the report computes the per-dataset
C10 threshold and writes one figure per part.
"""
import json
import os
import sys

import pytest

pytest.importorskip("distributed")
pytest.importorskip("pyarrow")

import cloudpickle  # noqa: E402
import dask  # noqa: E402
import pandas as pd  # noqa: E402
from distributed import LocalCluster  # noqa: E402

from refimpl.cli import main  # noqa: E402
from refimpl.sweep import PARAM_COLUMNS, read_results, run_sweep  # noqa: E402
from refimpl.sweep_report import c10_thresholds, summarize  # noqa: E402
from refimpl.sweep_spec import REPORT_KEYS, parse_spec  # noqa: E402
from refimpl.sweep_tasks import GENERALIZATION_COLUMNS, JOINT_RUN_COLUMNS  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])

ALL = {
    "reports": ["audit", "generalization", "joint"],
    "batch_size": 8,
    "dataset": {"M": [5, 6], "N": 12, "min_len": 2, "max_len": 4, "seed": [0, 1]},
    "training": {"T0": [1, 50], "T": 50, "c5_T0": 1, "generalization": False, "n_test": 40},
}
COMMON = ("task_id", "report", "status", "error", "started", "seconds", "worker") + PARAM_COLUMNS


@pytest.fixture(scope="module")
def scheduler():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


def kill_worker_task(task):
    """A task that kills its worker process on every attempt."""
    os._exit(1)


def test_each_report_reads_only_its_keys_and_audit_ids_are_unchanged():
    plan = parse_spec(ALL)
    tasks = list(plan.tasks())
    assert plan.n_tasks == len(tasks) == 3 * 2 * 2 * 2                     # T0 is read by all three
    by = {r: [t for t in tasks if t.report == r] for r in ALL["reports"]}
    assert set(by["joint"][0].training) == set(REPORT_KEYS["joint"])
    assert "c5_T0" not in by["generalization"][0].training and "n_test" not in by["audit"][0].training
    assert len({t.task_id for t in tasks}) == len(tasks)
    assert [t.dataset["seed"] for t in tasks[:12]] == [0] * 12               # seeds outermost
    # an audit task's id is the same as before the other reports existed (resumes old folders)
    one = parse_spec({"dataset": {"M": 5, "N": 12}, "training": {"T0": 50, "T": 50}})
    assert [t.task_id for t in one.tasks()] == ["8366f7eaf669274a"]
    joint_axis = parse_spec({"reports": ["audit", "joint"], "training": {"joint_T": [10, 20, 30]}})
    assert joint_axis.n_tasks == 1 + 3                                       # audit does not read joint_T


@pytest.mark.slow
def test_all_reports_rows_columns_threshold_and_figures(tmp_path, scheduler, capsys):
    out = tmp_path / "out"
    stats = run_sweep(ALL, out, scheduler=scheduler, quiet=True)
    assert stats["ran"] == 24 and stats["errors"] == 0
    df = read_results(out)
    assert len(df) == 24 and df["task_id"].is_unique and (df["status"] == "ok").all()
    assert set(COMMON) <= set(df.columns)
    gen = df[df["report"] == "generalization"]
    assert set(GENERALIZATION_COLUMNS) <= set(gen.columns) and len(gen) == 8
    assert gen["final_closure_accuracy"].dtype.kind == "f" and (gen["eta"] > 0).all()
    frm = gen["closure_100_from"].dropna()
    assert ((frm >= 0) & (frm <= gen.loc[frm.index, "T"])).all()
    joint = df[df["report"] == "joint"]
    for run in ("two_stage", "joint"):
        assert {f"{run}.{c}" for c in JOINT_RUN_COLUMNS} <= set(joint.columns)
    assert (joint["joint.steps"] == joint["T0"] + joint["T"]).all()          # the same number of steps
    assert (joint["two_stage.steps"] == joint["joint.steps"]).all()
    assert (joint["joint_eta"] == joint["eta"]).all()
    assert joint["c5_T0"].isna().all() and gen["joint_T"].isna().all()      # keys a report does not read

    assert main(["sweep-report", str(out), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["reports"] == {r: {"tasks": 8, "ok": 8, "errors": 0} for r in ("audit", "generalization", "joint")}
    assert s["c10_threshold"]["groups"] == 4                                 # 2 M x 2 seeds, T0 in {1, 50}
    assert s["generalization"]["tasks"] == 8 and s["joint"]["tasks"] == 8
    assert set(s["joint"]["metrics"]) >= {"one_minus_cos_kq", "log10_excess", "test_labelled_accuracy"}
    assert "C7 ||K_T - K_0|| upper" in s["slack"] and s["slack"]["C7 ||K_T - K_0|| upper"]["negative"] == 0
    assert set(s["figures"]) == {"report.png", "sweep_rates.png", "sweep_c10_threshold.png", "sweep_joint.png",
                                 "sweep_generalization.png"}
    for name in s["figures"]:
        assert (out / name).stat().st_size > 0
    assert main(["sweep-report", str(out), "--no-figure"]) == 0
    text = capsys.readouterr().out
    assert "C10 threshold" in text and "two stages vs joint" in text and "generalization (8 tasks)" in text


def test_report_tasks_that_raise_are_error_rows(tmp_path, scheduler):
    plan = {"reports": ["generalization", "joint"], "dataset": {"M": 5, "N": 10, "min_len": [2, 5], "max_len": 4},
            "training": {"T0": 20, "T": 20, "n_test": 20}}
    stats = run_sweep(plan, tmp_path / "out", scheduler=scheduler, quiet=True)
    df = read_results(tmp_path / "out")
    assert len(df) == 4 and stats["errors"] == 2
    bad = df[df["min_len"] == 5]
    assert (bad["status"] == "error").all() and bad["error"].str.contains("ConfigError").all()
    assert set(bad["report"]) == {"generalization", "joint"} and (bad["M"] == 5).all()
    assert (df[df["min_len"] == 2]["status"] == "ok").all()
    s = summarize(df)
    assert s["errors"] == 2 and [f["kind"] for f in s["findings"]] == ["error row", "error row"]
    assert {f["min_len"] for f in s["findings"]} == {5}


@pytest.mark.slow
def test_a_task_that_kills_every_worker_is_an_error_row(tmp_path):
    """Past the scheduler's allowed failures and the retries, the task is a row, not a gap."""
    plan = {"dataset": {"M": 5, "N": 12}, "training": {"T0": 5, "T": 5, "c5_T0": 1, "generalization": False}}
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        stats = run_sweep(plan, tmp_path / "out", workers=1, quiet=True, task_fn=kill_worker_task, retries=0)
    df = read_results(tmp_path / "out")
    assert len(df) == 1 and stats["errors"] == 1 and stats["pending"] == 0
    assert df.loc[0, "status"] == "error" and "KilledWorker" in df.loc[0, "error"]
    assert df.loc[0, "M"] == 5 and df.loc[0, "task_id"] == next(parse_spec(plan).tasks()).task_id


def _rows(regimes_by_t0, **params):
    return [{"task_id": f"{params}{t0}", "report": "audit", "status": "ok", "T0": t0, "regime": r,
             "M": 5, "N": 10, "min_len": 2, "max_len": 4, "order_dim": 2, "n_colloc": 5, "data_seed": 0,
             "T": 100, "eta0": 0.1, "eta": 0.02, "init": "random", "seed": 0, "init_scale": 1.0, **params}
            for t0, r in regimes_by_t0.items()]


def test_c10_threshold_per_group():
    df = pd.DataFrame(
        _rows({1: "weak_stage1", 2: "weak_stage1", 4: "converging", 8: "converging"}, data_seed=0)
        + _rows({1: "weak_stage1", 2: "converging", 4: "weak_stage1", 8: "converging"}, data_seed=1)
        + _rows({1: "weak_stage1", 2: "weak_stage1", 4: "weak_stage1", 8: "undetermined"}, data_seed=2)
        + _rows({1: "converging"}, data_seed=3))                             # one T0: no threshold
    groups = {g["data_seed"]: g for g in c10_thresholds(df)}
    assert set(groups) == {0, 1, 2}
    assert groups[0]["threshold"] == 4 and groups[0]["monotone"]
    assert groups[1]["threshold"] == 8 and groups[1]["first_converging"] == 2 and not groups[1]["monotone"]
    assert groups[2]["threshold"] is None and groups[2]["T0_grid"] == [1, 2, 4, 8]
    s = summarize(df)["c10_threshold"]
    assert s["groups"] == 3 and s["with_threshold"] == 2 and s["non_monotone"] == 1
    assert s["not_converging_at_largest_T0"] == 1 and s["threshold"]["median"] == 6.0
    assert [f["data_seed"] for f in summarize(df)["findings"]] == [1]       # the non-monotone group
