"""``refimpl sweep`` and ``refimpl sweep-report`` (refimpl/sweep.py, docs/sweeps.md).

Tiny tasks (M 5-8, N 12, T0 = T = 50, no C11 run) on two single-threaded worker
processes: a 20-task sweep holds 20 rows without duplicates; a worker killed mid-sweep
loses no row; a limited run followed by a rerun computes only the missing tasks; a task
that raises becomes an error row; bad sweep files fail with one line and exit 2; a second
sweep into a folder in use is refused.
"""
import functools
import json
import os
import sys
import uuid
from pathlib import Path

import pytest

pytest.importorskip("distributed")
pytest.importorskip("pyarrow")

import cloudpickle  # noqa: E402
from distributed import LocalCluster  # noqa: E402

from refimpl.cli import main  # noqa: E402
from refimpl.sweep import SweepLock, read_results, run_sweep, run_task  # noqa: E402
from refimpl.sweep_spec import load_spec, parse_spec  # noqa: E402

# The task functions below run on the workers: send them by value (this module is not
# importable there).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "batch_size": 4,
    "dataset": {"M": {"start": 5, "stop": 9}, "N": 12, "min_len": 2, "max_len": 4, "seed": [0, 1, 2, 3, 4]},
    "training": {"T0": 50, "T": 50, "c5_T0": 100, "generalization": False},
}


def _ids(plan):
    return {t.task_id for t in parse_spec(plan).tasks()}


def counted_task(task, marker_dir):
    """run_task, leaving one file per execution in marker_dir (named by the task id)."""
    Path(marker_dir, f"{task.task_id}.{uuid.uuid4().hex}").touch()
    return run_task(task)


def crash_once_task(task, marker_dir, crash_file):
    """As counted_task, but the first execution anywhere kills its worker process."""
    Path(marker_dir, f"{task.task_id}.{uuid.uuid4().hex}").touch()
    try:
        fd = os.open(crash_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return run_task(task)
    os.close(fd)
    os._exit(1)


def _executions(marker_dir):
    return [p.name.split(".")[0] for p in Path(marker_dir).iterdir()]


@pytest.fixture(scope="module")
def scheduler():
    """A shared two-worker LocalCluster (the --scheduler path)."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


def _write_spec(tmp_path, plan, name="sweep.json"):
    path = tmp_path / name
    path.write_text(json.dumps(plan))
    return path


@pytest.mark.slow
def test_twenty_tasks_on_a_local_cluster_and_the_report(tmp_path, capsys):
    spec_file = _write_spec(tmp_path, TINY)
    out = tmp_path / "out"
    assert main(["sweep", str(spec_file), "--out", str(out), "--workers", "2"]) == 0
    err = capsys.readouterr().err
    assert "20 tasks to run (0 already done)" in err
    df = read_results(out)
    assert len(df) == 20 and df["task_id"].is_unique
    assert set(df["task_id"]) == _ids(TINY)
    assert (df["status"] == "ok").all() and df["error"].isna().all()
    assert set(df["M"]) == {5, 6, 7, 8} and set(df["data_seed"]) == {0, 1, 2, 3, 4}
    assert (df["C1.verdict"] == "PASS").all() and df["C1.max_abs_closed_form_minus_solver"].dtype.kind == "f"
    assert len(list((out / "results").glob("*.parquet"))) == 5          # batches of 4
    assert not list((out / "results").glob(".*"))                        # no temporary left

    assert main(["sweep-report", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tasks"] == 20 and summary["errors"] == 0 and summary["duplicates"] == 0
    assert sum(summary["verdicts"]["C1"].values()) == 20
    assert (out / "report.png").stat().st_size > 0
    assert main(["sweep-report", str(out), "--no-figure"]) == 0
    assert "tasks 20: 20 ok, 0 errors" in capsys.readouterr().out

    assert main(["sweep", str(spec_file), "--out", str(out), "--workers", "2"]) == 0   # nothing left
    assert "nothing to do (20 of 20" in capsys.readouterr().err
    assert len(read_results(out)) == 20


@pytest.mark.slow
def test_a_killed_worker_loses_no_row(tmp_path, scheduler):
    markers, crash = tmp_path / "markers", tmp_path / "crashed"
    markers.mkdir()
    fn = functools.partial(crash_once_task, marker_dir=str(markers), crash_file=str(crash))
    stats = run_sweep(TINY, tmp_path / "out", scheduler=scheduler, quiet=True, task_fn=fn)
    assert crash.exists()                                                  # a worker did die
    df = read_results(tmp_path / "out")
    assert len(df) == 20 and df["task_id"].is_unique and set(df["task_id"]) == _ids(TINY)
    assert (df["status"] == "ok").all()
    assert stats["ran"] == 20 and stats["errors"] == 0
    assert len(_executions(markers)) >= 21                                 # the lost task ran again


def test_resume_computes_only_missing_tasks(tmp_path, scheduler):
    markers, out = tmp_path / "markers", tmp_path / "out"
    markers.mkdir()
    fn = functools.partial(counted_task, marker_dir=str(markers))
    first = run_sweep(TINY, out, scheduler=scheduler, quiet=True, task_fn=fn, max_tasks=8)
    assert first["ran"] == 8 and first["pending"] == 12
    assert len(read_results(out)) == 8 and len(_executions(markers)) == 8
    second = run_sweep(TINY, out, scheduler=scheduler, quiet=True, task_fn=fn)
    assert second["skipped"] == 8 and second["ran"] == 12 and second["pending"] == 0
    runs = _executions(markers)
    assert len(runs) == 20 and set(runs) == _ids(TINY)                     # each task exactly once
    df = read_results(out)
    assert len(df) == 20 and df["task_id"].is_unique


def test_a_task_that_raises_is_an_error_row(tmp_path, scheduler):
    plan = {"dataset": {"M": 5, "N": 10, "min_len": [2, 5], "max_len": 4},
            "training": {"T0": 50, "T": 50, "c5_T0": 100, "generalization": False}}
    stats = run_sweep(plan, tmp_path / "out", scheduler=scheduler, quiet=True)
    df = read_results(tmp_path / "out").set_index("min_len")
    assert len(df) == 2 and stats["errors"] == 1
    assert df.loc[2, "status"] == "ok" and df.loc[5, "status"] == "error"
    assert "ConfigError" in df.loc[5, "error"] and "\n" not in df.loc[5, "error"]
    spec_file = _write_spec(tmp_path, plan)                               # rerun: nothing recomputed
    assert run_sweep(spec_file, tmp_path / "out", scheduler=scheduler, quiet=True)["ran"] == 0


@pytest.mark.parametrize("text, words", [
    ('[dataset]\nM = 5\ncolour = 3\n', "unknown key dataset.colour"),
    ('bogus = 1\n', "unknown key 'bogus'"),
    ('reports = ["generalize"]\n', "unknown report 'generalize'"),
    ('reports = ["joint"]\n[training]\nc5_T0 = 5\n', "training.c5_T0: not read by the reports joint"),
    ('reports = ["nonsense"]\n', "unknown report 'nonsense'"),
    ('[training]\nT0 = "many"\n', "training.T0: expected a number"),
    ('[training]\nT = 2.5\n', "training.T: expected an integer"),
    ('[training]\ninit = "ones"\n', "training.init"),
    ('[dataset]\nM = []\n', "empty list"),
    ('[dataset]\nM = {start = 5, stop = 5}\n', "range is empty"),
    ('[dataset]\nM = {start = 5, stop = 9, by = 2}\n', "unknown range key 'by'"),
    ('[training]\neta = {start = 0.1, stop = 1.0}\n', "needs 'num'"),
    ('batch_size = 0\n', "batch_size"),
    ('[dataset\n', "not a valid TOML file"),
])
def test_bad_sweep_files_one_line_exit_2(tmp_path, capsys, text, words):
    plan = tmp_path / "bad.toml"
    plan.write_text(text)
    assert main(["sweep", str(plan), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("refimpl sweep: ") and words in err, err
    assert not (tmp_path / "out").exists()                                # nothing started, nothing written


def test_missing_sweep_file_and_missing_results(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "cannot read sweep file" in capsys.readouterr().err
    assert main(["sweep-report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no results yet" in err
    plan_file = _write_spec(tmp_path, TINY)
    assert main(["sweep", str(plan_file), "--out", str(tmp_path / "o"), "--scheduler", "tcp://127.0.0.1:1",
                 "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--workers sizes the LocalCluster" in err


def test_a_second_sweep_into_a_folder_in_use_is_refused(tmp_path, capsys):
    spec_file = _write_spec(tmp_path, TINY)
    out = tmp_path / "out"
    with SweepLock(out):                                                   # a sweep running there
        assert main(["sweep", str(spec_file), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "in use by another sweep" in err
    assert not (out / "results").exists()


def test_ranges_grids_and_the_example_file():
    plan = parse_spec({"dataset": {"M": [5, 6], "seed": {"start": 0, "stop": 6, "step": 2}},
                       "training": {"eta": {"start": 0.01, "stop": 1.0, "num": 3, "log": True}}})
    assert plan.n_tasks == 2 * 3 * 3 == len(list(plan.tasks()))
    assert plan.dataset["seed"] == (0, 2, 4)
    assert plan.training["eta"] == pytest.approx((0.01, 0.1, 1.0))
    ids = [t.task_id for t in plan.tasks()]
    assert len(set(ids)) == len(ids) and ids == [t.task_id for t in plan.tasks()]   # stable, distinct
    example = load_spec(ROOT / "sweeps" / "example.toml")
    assert example.reports == ("audit",) and example.n_tasks > 1
