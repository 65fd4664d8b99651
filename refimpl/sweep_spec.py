"""Sweep specifications: which tasks a ``refimpl sweep`` runs (docs/sweeps.md).

A sweep file (TOML, or JSON by its ``.json`` suffix) has the top-level keys
``reports`` (a list of report names: ``"audit"``, ``"generalization"``, ``"joint"``),
``batch_size`` (rows per results file) and the tables ``[dataset]`` and
``[training]``. Each parameter is a scalar, a list (a grid axis), an integer
range ``{start, stop, step}`` (stop exclusive, as Python's ``range``) or a
float range ``{start, stop, num, log}`` (``num`` points, ends included, evenly
spaced or log-spaced). The tasks are the Cartesian product of every axis and
every report, each report using only the training keys it reads
(:data:`REPORT_KEYS`), so an axis a report does not read does not multiply its
tasks. Anything else (an unknown key, a wrong type, an empty axis) is
refused with a :class:`SweepSpecError` naming the file and the key.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError

#: Report names a task may compute (docs/sweeps.md, "Reports").
REPORTS = ("audit", "generalization", "joint")

# name -> (type, default); type "int", "float", "str" or "int?" (an int, or absent for the default)
DATASET_KEYS = {
    "M": ("int", 20), "N": ("int", 200), "min_len": ("int", 2), "max_len": ("int", 6),
    "order_dim": ("int", 2), "n_colloc": ("int?", None), "seed": ("int", 0),
}
TRAINING_KEYS = {
    "T0": ("int", 2000), "T": ("int", 20000), "eta0": ("float?", None), "eta": ("float?", None),
    "init": ("str", "zero"), "seed": ("int", 0), "init_scale": ("float", 0.1),
    "c5_T0": ("int", 20000), "c5_init_scale": ("float", 1.0), "generalization": ("bool", True),
    "n_test": ("int", 2000), "test_seed": ("int", 0), "joint_T": ("int?", None), "joint_eta": ("float?", None),
}
_RUN_KEYS = ("T0", "T", "eta0", "eta", "init", "seed", "init_scale")
#: The training keys each report reads (and hashes into its task id); the others are not part of
#: its tasks. The audit's set is the one every audit task id was computed from.
REPORT_KEYS = {
    "audit": _RUN_KEYS + ("c5_T0", "c5_init_scale", "generalization"),
    "generalization": _RUN_KEYS + ("n_test", "test_seed"),
    "joint": _RUN_KEYS + ("n_test", "test_seed", "joint_T", "joint_eta"),
}
TOP_KEYS = ("reports", "batch_size", "dataset", "training")
MAX_TASKS = 10_000_000


class SweepSpecError(InputError):
    """A sweep file that cannot be read or does not follow the format (one line, exit 2)."""


@dataclass(frozen=True)
class Task:
    """One task of a sweep: a dataset, a training configuration and a report.

    Attributes
    ----------
    report : str
        The report the task computes (one of :data:`REPORTS`).
    dataset : dict
        Keyword values of :data:`DATASET_KEYS` (``seed`` is the data seed).
    training : dict
        Keyword values of the :data:`TRAINING_KEYS` the report reads (:data:`REPORT_KEYS`).
    """

    report: str
    dataset: dict = field(hash=False)
    training: dict = field(hash=False)

    def params(self):
        """The task's parameters as one JSON-serializable mapping."""
        return {"report": self.report, "dataset": dict(self.dataset), "training": dict(self.training)}

    @property
    def task_id(self):
        """A content hash of the parameters: 16 hex digits of SHA-256 of their canonical JSON."""
        text = json.dumps(self.params(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep specification.

    Attributes
    ----------
    reports : tuple of str
    dataset : dict
        Parameter name -> tuple of values (one axis of the grid).
    training : dict
        Parameter name -> tuple of values.
    batch_size : int
        Rows per results file.
    source : str
        Where the specification came from (a path, or ``"<dict>"``).
    """

    reports: tuple
    dataset: dict
    training: dict
    batch_size: int = 20
    source: str = "<dict>"

    @property
    def n_tasks(self):
        """The number of tasks: per report, the product of the dataset axes and of the axes of
        the training keys the report reads (:data:`REPORT_KEYS`), summed over the reports."""
        n_data = math.prod(len(axis) for axis in self.dataset.values())
        return sum(n_data * math.prod(len(self.training[k]) for k in REPORT_KEYS[r] if k in self.training)
                   for r in self.reports)

    def tasks(self):
        """Every task, in a deterministic order (an iterator of :class:`Task`).

        The data seed is the outermost loop, then the report, the other dataset axes and the
        training axes: a prefix of the order (``--max-tasks N``) covers the whole grid of every
        report for the first seeds, a sample of the sweep rather than one corner of it.
        """
        other = [k for k in self.dataset if k != "seed"]
        for seed in self.dataset["seed"]:
            for report in self.reports:
                tnames = [k for k in self.training if k in REPORT_KEYS[report]]
                for dvals in itertools.product(*(self.dataset[k] for k in other)):
                    dataset = dict(zip(other, dvals))
                    dataset["seed"] = seed
                    dataset = {k: dataset[k] for k in self.dataset}      # the declared key order
                    for tvals in itertools.product(*(self.training[k] for k in tnames)):
                        yield Task(report, dict(dataset), dict(zip(tnames, tvals)))


def _check_scalar(where, kind, value):
    base = kind.rstrip("?")
    if base == "bool":
        if not isinstance(value, bool):
            raise SweepSpecError(f"{where}: expected true or false, got {value!r}")
        return value
    if base == "str":
        if not isinstance(value, str):
            raise SweepSpecError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SweepSpecError(f"{where}: expected a number, got {value!r}")
    if base == "int":
        if isinstance(value, float):
            if not value.is_integer():
                raise SweepSpecError(f"{where}: expected an integer, got {value!r}")
            value = int(value)
        return value
    value = float(value)
    if not math.isfinite(value):
        raise SweepSpecError(f"{where}: expected a finite number, got {value!r}")
    return value


def _axis(where, kind, value):
    """The values of one parameter: a scalar, a list, or a range table."""
    if isinstance(value, list):
        if not value:
            raise SweepSpecError(f"{where}: an empty list gives no tasks")
        vals = [_check_scalar(f"{where}[{i}]", kind, v) for i, v in enumerate(value)]
        if len(set(vals)) != len(vals):
            raise SweepSpecError(f"{where}: repeated values {vals!r}")
        return tuple(vals)
    if isinstance(value, dict):
        base = kind.rstrip("?")
        if base == "int":
            allowed = {"start", "stop", "step"}
        elif base == "float":
            allowed = {"start", "stop", "num", "log"}
        else:
            raise SweepSpecError(f"{where}: a range needs a numeric parameter")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise SweepSpecError(f"{where}: unknown range key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
        for key in ("start", "stop") + (("num",) if base == "float" else ()):
            if key not in value:
                raise SweepSpecError(f"{where}: a range needs {key!r}")
        if base == "int":
            start, stop = (_check_scalar(f"{where}.{k}", "int", value[k]) for k in ("start", "stop"))
            step = _check_scalar(f"{where}.step", "int", value.get("step", 1))
            if step == 0:
                raise SweepSpecError(f"{where}.step: must not be 0")
            vals = tuple(range(start, stop, step))
        else:
            start, stop = (_check_scalar(f"{where}.{k}", "float", value[k]) for k in ("start", "stop"))
            num = _check_scalar(f"{where}.num", "int", value["num"])
            log = _check_scalar(f"{where}.log", "bool", value.get("log", False))
            if num < 1:
                raise SweepSpecError(f"{where}.num: must be >= 1, got {num}")
            if log and (start <= 0 or stop <= 0):
                raise SweepSpecError(f"{where}: a log range needs start > 0 and stop > 0")
            a, b = (math.log(start), math.log(stop)) if log else (start, stop)
            pts = [a + (b - a) * i / (num - 1) if num > 1 else a for i in range(num)]
            vals = tuple(math.exp(p) if log else p for p in pts)
        if not vals:
            raise SweepSpecError(f"{where}: the range is empty")
        return vals
    return (_check_scalar(where, kind, value),)


def _section(src, name, value, keys):
    if not isinstance(value, dict):
        raise SweepSpecError(f"{src}: [{name}] must be a table")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise SweepSpecError(f"{src}: unknown key {name}.{unknown[0]} (known: {', '.join(keys)})")
    out = {}
    for key, (kind, default) in keys.items():
        if key in value:
            out[key] = _axis(f"{src}: {name}.{key}", kind, value[key])
        else:
            out[key] = (default,)
    return out


def parse_spec(data, source="<dict>"):
    """Validate a sweep specification given as a mapping.

    Parameters
    ----------
    data : dict
        The parsed TOML or JSON document.
    source : str
        Used in error messages.

    Returns
    -------
    SweepSpec

    Raises
    ------
    SweepSpecError
        Unknown keys, wrong types, an unimplemented report, an empty grid or one larger than
        :data:`MAX_TASKS` (one line naming the key).
    """
    if not isinstance(data, dict):
        raise SweepSpecError(f"{source}: expected a table of keys at the top level")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise SweepSpecError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(TOP_KEYS)})")
    reports = data.get("reports", ["audit"])
    if isinstance(reports, str):
        reports = [reports]
    if not isinstance(reports, list) or not reports or not all(isinstance(r, str) for r in reports):
        raise SweepSpecError(f"{source}: reports: expected a non-empty list of report names, got {reports!r}")
    for r in reports:
        if r not in REPORTS:
            raise SweepSpecError(f"{source}: reports: unknown report {r!r} (available: {', '.join(REPORTS)})")
    if len(set(reports)) != len(reports):
        raise SweepSpecError(f"{source}: reports: repeated names {reports!r}")
    batch = data.get("batch_size", 20)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise SweepSpecError(f"{source}: batch_size: expected an integer >= 1, got {batch!r}")
    dataset = _section(source, "dataset", data.get("dataset", {}), DATASET_KEYS)
    training = _section(source, "training", data.get("training", {}), TRAINING_KEYS)
    for key in data.get("training", {}):
        if not any(key in REPORT_KEYS[r] for r in reports):
            users = [r for r in REPORTS if key in REPORT_KEYS[r]]
            raise SweepSpecError(f"{source}: training.{key}: not read by the reports {', '.join(reports)} "
                                 f"(read by: {', '.join(users)})")
    for init in training["init"]:
        if init not in ("zero", "random"):
            raise SweepSpecError(f"{source}: training.init: expected \"zero\" or \"random\", got {init!r}")
    plan = SweepSpec(tuple(reports), dataset, training, batch, source)
    if plan.n_tasks > MAX_TASKS:
        raise SweepSpecError(f"{source}: {plan.n_tasks} tasks, more than the limit {MAX_TASKS}")
    return plan


def load_spec(path):
    """Read and validate a sweep file: TOML (``tomllib``), or JSON when the name ends in ``.json``.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    SweepSpec

    Raises
    ------
    SweepSpecError
        Unreadable, not valid TOML/JSON, or not a valid specification (one line).
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise SweepSpecError(f"cannot read sweep file {path}: {exc.strerror or type(exc).__name__}") from None
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(raw.decode("utf-8"))
        else:
            import tomllib
            data = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        msg = " ".join(str(exc).split())
        raise SweepSpecError(f"{path}: not a valid {'JSON' if p.suffix.lower() == '.json' else 'TOML'} "
                             f"file: {msg}") from None
    return parse_spec(data, source=str(path))
