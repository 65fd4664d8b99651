"""Parameter sweeps on Dask: ``refimpl sweep SWEEP_FILE --out DIR`` (docs/sweeps.md).

Every task (a dataset, a training configuration and a report, :mod:`refimpl.sweep_spec`;
the reports ``audit``, ``generalization`` and ``joint``, :mod:`refimpl.sweep_tasks`)
runs on ``dask.distributed`` workers: a ``LocalCluster`` of single-threaded worker processes
by default, or an existing cluster given by its scheduler address. Each finished task
becomes one row (its parameters, its task id, every claim's verdict and numbers flattened
into columns, timings, an error message) of a results table: Parquet files in
``DIR/results/``, one per batch of rows, each written to a temporary name and renamed, so a
kill loses at most the batch not yet written. A rerun into the same folder skips the task
ids already in the table; a task that raises becomes an error row; tasks of a lost worker
are retried by Dask; a second sweep into a folder that is in use is refused
(``fcntl.flock`` on ``DIR/.sweep.lock``).

Requires the optional extra ``sweep`` (``dask[distributed]``, ``pandas``, ``pyarrow``).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import logging
import math
import os
import sys
import time
import uuid
from pathlib import Path

from .errors import InputError
from .outputs import OutputBusyError, OutputError, _SigtermGuard
from .sweep_spec import SweepSpec, Task, load_spec, parse_spec  # noqa: F401 (re-exported)

RESULTS = "results"
LOCK_NAME = ".sweep.lock"
SCHEMA = "refimpl/sweep@1"
PARAM_COLUMNS = ("M", "N", "min_len", "max_len", "order_dim", "n_colloc", "data_seed",
                 "T0", "T", "eta0", "eta", "init", "seed", "init_scale", "c5_T0", "c5_init_scale",
                 "generalization", "n_test", "test_seed", "joint_T", "joint_eta")


class SweepDependencyError(InputError):
    """The optional extra ``sweep`` is not installed (one line, exit 2)."""


def _require():
    try:
        import distributed  # noqa: F401
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError as exc:
        raise SweepDependencyError(f"sweeps need the extra 'sweep' ({exc.name} is missing): "
                                   f"python -m pip install 'refimpl[sweep]'") from None


# ------------------------------------------------------------------ one task (runs on a worker)
def _scalar(value):
    """A report value as a Parquet-friendly scalar: bool, float, str or None."""
    if value is None or isinstance(value, (bool, str)):
        if value in ("inf", "-inf", "nan"):
            return float(value)
        return value
    if isinstance(value, (int, float)):
        return float(value)
    try:                                  # NumPy scalars
        import numpy as np
        if isinstance(value, np.bool_):
            return bool(value)
        if isinstance(value, np.number):
            return float(value)
    except ImportError:                   # pragma: no cover
        pass
    return str(value)


def _flatten(prefix, obj, out):
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}", v, out)
    elif isinstance(obj, (list, tuple)):
        out[prefix] = ",".join(str(v) for v in obj)
    else:
        out[prefix] = _scalar(obj)


def flatten_report(report):
    """The columns of one audit report: ``regime``, the failure lists, and per claim ``Cn.verdict``,
    ``Cn.failure``, ``Cn.<measured>`` and ``Cn.bound.<bound>`` (nested mappings joined with dots).

    Parameters
    ----------
    report : dict
        A report of :func:`refimpl.audit.run_audit` (schema ``refimpl/audit@6``).

    Returns
    -------
    dict
        Column name -> bool, float, str or None.
    """
    out = {"regime": report["regime"],
           "stop_reason.stage1": report["stop_reason"].get("stage1"),
           "stop_reason.stage2": report["stop_reason"].get("stage2"),
           "certified_failures": ",".join(report["certified_failures"]),
           "measured_failures": ",".join(report["measured_failures"]),
           "runtime_seconds": _scalar(report["runtime_seconds"])}
    for row in report["claims"]:
        cid = row["id"]
        out[f"{cid}.verdict"] = row["verdict"]
        out[f"{cid}.failure"] = row["failure"]
        _flatten(cid, row["measured"], out)
        _flatten(f"{cid}.bound", row["bound"], out)
    return out


def _base_row(task):
    d, t = task.dataset, task.training
    row = {"task_id": task.task_id, "report": task.report,
           "M": d["M"], "N": d["N"], "min_len": d["min_len"], "max_len": d["max_len"],
           "order_dim": d["order_dim"], "n_colloc": d["M"] if d["n_colloc"] is None else d["n_colloc"],
           "data_seed": d["seed"]}
    row.update({k: t.get(k) for k in ("T0", "T", "init", "seed", "init_scale", "c5_T0", "c5_init_scale",
                                      "generalization", "n_test", "test_seed")})
    for k in ("eta0", "eta", "joint_T", "joint_eta"):      # None (the default) -> NaN
        row[k] = math.nan if t.get(k) is None else float(t[k])
    return row


def run_task(task):
    """Compute one task and return its row; never raises (an exception becomes an error row).

    Parameters
    ----------
    task : Task

    Returns
    -------
    dict
        The parameters (:data:`PARAM_COLUMNS`; a training key the report does not read is None),
        ``task_id``, ``report``, ``status`` (``"ok"`` or ``"error"``), ``error`` (the message or
        None), ``started`` (UTC, ISO 8601), ``seconds`` (wall time of the task), ``worker``
        (host:pid) and the report's columns: the flattened audit report
        (:func:`flatten_report`), :func:`refimpl.sweep_tasks.generalization_columns` or
        :func:`refimpl.sweep_tasks.joint_columns`.
    """
    import socket
    row = _base_row(task)
    row.update(status="ok", error=None, started=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               worker=f"{socket.gethostname()}:{os.getpid()}")
    start = time.perf_counter()
    try:
        from .generator import generate
        d, t = task.dataset, task.training
        ds = generate(d["M"], d["N"], d["min_len"], d["max_len"], d["seed"], n_colloc=d["n_colloc"],
                      order_dim=d["order_dim"], progress=False)
        if task.report == "audit":
            from .audit import AuditConfig, run_audit
            report = run_audit(ds, AuditConfig(**t), progress=False)
            row.update(flatten_report(report))
            row["eta0"], row["eta"] = float(report["config"]["eta0"]), float(report["config"]["eta"])
        elif task.report == "generalization":
            from .sweep_tasks import generalization_columns
            row.update(generalization_columns(ds, t))
        elif task.report == "joint":
            from .sweep_tasks import joint_columns
            row.update(joint_columns(ds, t))
        else:
            raise ValueError(f"unknown report {task.report!r}")
    except Exception as exc:               # noqa: BLE001 (a failing task is a row, not a gap)
        row.update(status="error", error=_one_line(exc))
    row["seconds"] = time.perf_counter() - start
    return row


def _one_line(exc):
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def error_row(task, exc):
    """The row of a task whose future failed (for example a worker lost more often than allowed)."""
    row = _base_row(task)
    row.update(status="error", error=_one_line(exc), started=None, worker=None, seconds=math.nan)
    return row


# ------------------------------------------------------------------ the results table
def _frame(rows):
    """A DataFrame of rows whose columns each have one Parquet type (mixed columns become strings)."""
    import pandas as pd
    df = pd.DataFrame(rows)
    for col in df.columns:
        kinds = {type(v) for v in df[col] if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if len(kinds) > 1 and not kinds <= {int, float}:
            df[col] = [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in df[col]]
    return df


def results_files(out):
    """The finished results files of a sweep folder, in name (= write) order."""
    d = Path(out) / RESULTS
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.suffix == ".parquet" and not p.name.startswith("."))


def read_results(out):
    """The results table of a sweep folder as one DataFrame (empty if nothing was written).

    Parameters
    ----------
    out : str or Path
        The sweep folder.

    Returns
    -------
    pandas.DataFrame
        One row per finished task (columns in docs/sweeps.md).
    """
    import pandas as pd
    frames = [pd.read_parquet(p) for p in results_files(out)]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=["task_id"])
    return pd.concat(frames, ignore_index=True, sort=False)


def write_batch(out, rows):
    """Write rows as one new Parquet file in ``out/results/``: a temporary name, fsync, rename.

    Parameters
    ----------
    out : str or Path
    rows : list of dict

    Returns
    -------
    Path
        The file written.
    """
    d = Path(out) / RESULTS
    d.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    name = f"part-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = d / f".{name}.tmp"
    try:
        _frame(rows).to_parquet(tmp, engine="pyarrow", index=False)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, d / name)
    finally:
        if tmp.exists():
            tmp.unlink()
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return d / name


class SweepLock:
    """An exclusive, non-blocking ``flock`` on ``DIR/.sweep.lock`` held for a whole sweep.

    Parameters
    ----------
    out : str or Path
        The sweep folder (created if missing).

    Raises
    ------
    OutputBusyError
        Another sweep holds the lock (on entering).
    OutputError
        The folder cannot be created or the lock file opened.
    """

    def __init__(self, out):
        self.out = Path(out)
        self._fd = None

    def __enter__(self):
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot use sweep folder {self.out}: {exc.strerror or type(exc).__name__}",
                              path=str(self.out)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutputBusyError(f"{self.out} is in use by another sweep (lock {LOCK_NAME}); "
                                  f"wait for it or choose another --out", path=str(self.out)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        return False


# ------------------------------------------------------------------ progress
class _Progress:
    """A tqdm bar on a terminal, otherwise a line every ``every`` seconds (stderr); silent if quiet."""

    def __init__(self, total, quiet, every=30.0):
        self.total, self.quiet, self.every = total, quiet, every
        self.done = self.errors = 0
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if not quiet and total and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc="refimpl sweep", unit="task", file=sys.stderr)

    def update(self, row):
        self.done += 1
        self.errors += row.get("status") == "error"
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(errors=self.errors, refresh=False)
        elif not self.quiet:
            now = time.monotonic()
            if now - self.last >= self.every or self.done == self.total:
                self.last = now
                el = now - self.t0
                eta = el / self.done * (self.total - self.done)
                print(f"refimpl sweep: {self.done}/{self.total} tasks, {self.errors} errors, "
                      f"{el:.0f} s elapsed, ETA {eta:.0f} s", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------ the sweep
@contextlib.contextmanager
def _quiet_dask(quiet):
    """With ``quiet``, Dask's own log messages below ERROR (worker restarts, slow shutdowns) are dropped."""
    logger = logging.getLogger("distributed")
    level = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _client(scheduler, workers):
    from distributed import Client, LocalCluster
    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as exc:
            raise InputError(f"cannot connect to the scheduler at {scheduler}: {_one_line(exc)}") from None
    n = workers or max(1, os.cpu_count() or 1)
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0")
    return Client(cluster), cluster


def run_sweep(plan, out, *, scheduler=None, workers=None, max_tasks=None, quiet=False, task_fn=None,
              retries=2, in_flight=None, flush_seconds=60.0):
    """Run every task of a sweep not yet in ``out``'s results table.

    Parameters
    ----------
    plan : SweepSpec, dict, str or Path
        A validated specification, a mapping for :func:`parse_spec`, or a sweep file.
    out : str or Path
        The sweep folder (created if missing; locked for the duration of the sweep).
    scheduler : str or None
        Address of an existing Dask scheduler (``tcp://host:8786``); None starts a
        ``LocalCluster``.
    workers : int or None
        Worker processes of the ``LocalCluster`` (1 thread each; default: one per core).
    max_tasks : int or None
        Run at most this many of the pending tasks (the rest stay pending for a rerun).
    quiet : bool
        No progress bar, progress lines or dashboard address on stderr.
    task_fn : callable or None
        The function a worker runs on a :class:`Task` (default :func:`run_task`); it must
        return a row with ``task_id``.
    retries : int
        Dask retries of a task whose worker was lost (``client.submit(..., retries=...)``).
    in_flight : int or None
        Tasks submitted at a time (default 4 per worker thread).
    flush_seconds : float
        Rows are also written when this long has passed since the last file.

    Returns
    -------
    dict
        ``total`` (tasks in the specification), ``skipped`` (already in the table), ``ran``,
        ``errors`` (error rows written by this run), ``pending`` (left for a rerun),
        ``seconds``.

    Raises
    ------
    SweepSpecError, OutputBusyError, OutputError, SweepDependencyError, InputError
    """
    _require()
    if not isinstance(plan, SweepSpec):
        plan = load_spec(plan) if isinstance(plan, (str, os.PathLike)) else parse_spec(plan)
    if max_tasks is not None and max_tasks < 0:
        raise InputError(f"--max-tasks must be >= 0, got {max_tasks}")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    if workers is not None and scheduler:
        raise InputError("--workers sizes the LocalCluster; with --scheduler the cluster's own workers run the tasks")
    fn = task_fn or run_task
    t_start = time.monotonic()
    with SweepLock(out), _SigtermGuard(), _quiet_dask(quiet):     # SIGTERM: write finished rows, exit 143
        done = set(read_results(out)["task_id"])
        tasks, seen = [], set()
        for task in plan.tasks():
            tid = task.task_id
            if tid not in done and tid not in seen:
                seen.add(tid)
                tasks.append(task)
        skipped = plan.n_tasks - len(tasks)
        todo = tasks if max_tasks is None else tasks[:max_tasks]
        stats = {"total": plan.n_tasks, "skipped": skipped, "ran": 0, "errors": 0,
                 "pending": len(tasks), "seconds": 0.0}
        if not todo:
            if not quiet:
                print(f"refimpl sweep: nothing to do ({skipped} of {plan.n_tasks} tasks already in "
                      f"{Path(out) / RESULTS})", file=sys.stderr)
            return stats
        from distributed import as_completed
        client, cluster = _client(scheduler, workers)
        progress = None
        pending_rows, written = [], set()
        last_flush = time.monotonic()

        def flush():
            nonlocal pending_rows, last_flush
            if pending_rows:
                write_batch(out, pending_rows)
                written.update(r["task_id"] for r in pending_rows)
                pending_rows = []
            last_flush = time.monotonic()

        try:
            if not quiet:
                link = getattr(client, "dashboard_link", None)
                if link:
                    print(f"refimpl sweep: Dask dashboard at {link}", file=sys.stderr, flush=True)
                print(f"refimpl sweep: {len(todo)} tasks to run ({skipped} already done) on "
                      f"{scheduler or 'a LocalCluster'}", file=sys.stderr, flush=True)
            progress = _Progress(len(todo), quiet)
            nthreads = sum(client.nthreads().values()) or 1
            limit = in_flight or 4 * nthreads
            queue = iter(todo)
            by_key = {}

            def submit():
                task = next(queue, None)
                if task is None:
                    return None
                fut = client.submit(fn, task, key=f"refimpl-sweep-{task.task_id}-{uuid.uuid4().hex[:8]}",
                                    retries=retries, pure=False)
                by_key[fut.key] = task
                return fut

            first = [f for f in (submit() for _ in range(limit)) if f is not None]
            ac = as_completed(first)
            for fut in ac:
                task = by_key.pop(fut.key)
                try:
                    row = fut.result()
                except Exception as exc:       # noqa: BLE001 (a lost or failing task is an error row)
                    row = error_row(task, exc)
                fut.release()
                if row["task_id"] in written or any(r["task_id"] == row["task_id"] for r in pending_rows):
                    continue
                pending_rows.append(row)
                stats["ran"] += 1
                stats["errors"] += row.get("status") == "error"
                progress.update(row)
                if len(pending_rows) >= plan.batch_size or time.monotonic() - last_flush >= flush_seconds:
                    flush()
                nxt = submit()
                if nxt is not None:
                    ac.add(nxt)
        finally:
            try:
                flush()                        # on an interrupt too: keep every finished row
            finally:
                if progress is not None:
                    progress.close()
                client.close()
                if cluster is not None:
                    cluster.close()
        stats["pending"] = len(tasks) - stats["ran"]
        stats["seconds"] = time.monotonic() - t_start
        return stats

