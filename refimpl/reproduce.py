"""The paper's experiment (Figure 2) on the built-in default, and Algorithm 1 on a given dataset.

:func:`run_reproduce` generates the built-in dataset (M = d = 20, N = 200,
lengths 2..6, seed 0), runs Algorithm 1 with the paper's step sizes and writes
into ``out_dir``:

``figure.png``    the six panels of Figure 2 (:func:`refimpl.plots.figure_six_panels`)
``stage1.csv``    the stage-1 trajectory (columns of :data:`refimpl.trajectory.STAGE1_COLUMNS`)
``stage2.csv``    the stage-2 trajectory (columns of :data:`refimpl.trajectory.STAGE2_COLUMNS`)
``summary.json``  final metrics, margins, stop reasons, runtime
``config.json``   the resolved configuration

:func:`run_train` does the same for a dataset the caller loaded. Both check
every input (step sizes, step counts, the dataset) and open the output folder
as a :class:`refimpl.outputs.OutputSet` before training, so a bad, locked or
unwritable folder fails before any work; the five files appear together (the
previous set, if any, is replaced as a whole) or not at all. Both are free of
any command-line handling (the CLI in :mod:`refimpl.cli` calls them, passing
an output set it opened itself).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from .data import ensure_valid
from .errors import ConfigError
from .generator import generate
from .io import json_safe, json_text
from .outputs import open_output_set
from .plots import six_panels_png
from .train import DEFAULT_INIT, DEFAULT_T, DEFAULT_T0, TrainConfig, run_two_stage

__all__ = ["ReproduceConfig", "run_reproduce", "run_train", "OUTPUT_FILES"]

OUTPUT_FILES = ("figure.png", "stage1.csv", "stage2.csv", "summary.json", "config.json")


@dataclass
class ReproduceConfig:
    """The built-in experiment: dataset generation plus Algorithm 1 (the paper's Figure 2 setting).

    The training defaults are :mod:`refimpl.train`'s ``DEFAULT_*`` constants, shared with
    :func:`refimpl.train_two_stage`, :class:`refimpl.TrainConfig` and the command line.
    """

    vocab_size: int = 20  # M = |V| (= d, E = I)
    n_sentences: int = 200  # N
    min_len: int = 2  # shortest sentence
    max_len: int = 6  # longest sentence
    data_seed: int = 0  # seed of the generated dataset
    eta0: float | None = None  # stage-1 step size; None -> 0.2 / sqrt(d)
    eta: float | None = None  # stage-2 step size; None -> 0.05 / sqrt(d)
    T0: int = DEFAULT_T0  # stage-1 steps (2000)
    T: int = DEFAULT_T  # stage-2 steps (20000)
    init: str = DEFAULT_INIT  # "zero" or "random"
    init_scale: float = 0.1  # standard deviation of each entry of a random initialization
    seed: int = 0  # seed of a random initialization
    record_points: int = 2000  # about this many recorded steps per stage (every step if <= 2000 steps)

    def train_config(self):
        """The :class:`~refimpl.train.TrainConfig` of this experiment (not yet resolved)."""
        return TrainConfig(eta0=self.eta0, eta=self.eta, T0=self.T0, T=self.T, init=self.init,
                           init_scale=self.init_scale, seed=self.seed,
                           record_dense_limit=2000, record_points=self.record_points)

    def dataset(self):
        """The generated dataset (raises ConfigError for bad sizes)."""
        return generate(self.vocab_size, self.n_sentences, self.min_len, self.max_len, self.data_seed)


def summarize(result, ds, runtime=None):
    """The ``summary.json`` dict of a :class:`~refimpl.train.TrainResult`."""
    s1, s2 = result.stage1.last(), result.stage2.last()
    return {
        "dataset": {"vocab_size": ds.vocab_size, "n_sentences": ds.n_sentences,
                    "n_colloc": int(len(ds.colloc_tokens)), "max_len": ds.max_len},
        "stage1": {
            "steps": s1.get("step", 0), "loss": s1.get("loss"), "log10_loss": s1.get("log10_loss"),
            "one_minus_cos_ov": s1.get("one_minus_cos"), "norm": s1.get("norm"),
            "min_margin": s1.get("min_margin"), "accuracy": s1.get("accuracy"),
        },
        "stage2": {
            "steps": s2.get("step"), "loss": s2.get("loss"), "log10_loss": s2.get("log10_loss"),
            "floor": result.floor, "log10_floor": result.log10_floor,
            "floor_is_perfect_attention": result.vertex_optimal,
            "excess_loss": s2.get("excess_loss"), "log10_excess": s2.get("log10_excess"),
            "one_minus_cos_kq": s2.get("one_minus_cos"), "norm": s2.get("norm"),
            "attention_margin": s2.get("attention_margin"), "train_accuracy": s2.get("train_accuracy"),
        },
        "gamma_ov": result.gamma_ov,
        "gamma_kq": result.gamma_kq,
        "stop_reason": dict(result.stop_reason),
        "runtime_seconds": {"stage1": result.runtime.get("stage1"), "stage2": result.runtime.get("stage2"),
                            "total": runtime},
    }


def _run(ds, train_config, out_dir, progress, config_record):
    """Shared body of run_reproduce / run_train: check, open the output set, train, write the five files."""
    ensure_valid(ds)
    resolved = train_config.resolved(ds.vocab_size)  # raises ConfigError before anything is written
    with open_output_set(out_dir) as out:             # bad / locked / unwritable folder: before training
        start = time.perf_counter()
        result = run_two_stage(ds, resolved, progress=progress)
        summary = summarize(result, ds, None)
        files = {"stage1.csv": result.stage1.to_csv_text().encode(),  # everything rendered first: the
                 "stage2.csv": result.stage2.to_csv_text().encode(),  # write phase is only the writes
                 "figure.png": six_panels_png(result)}
        summary["runtime_seconds"]["total"] = time.perf_counter() - start
        files["config.json"] = json_text({**config_record, "train": resolved.to_dict()}).encode()
        files["summary.json"] = json_text(summary).encode()
        for name, data in files.items():
            out.write_bytes(name, data)
    return json_safe(summary)


def run_reproduce(config=None, out_dir="reproduce_out", progress=None):
    """Run the built-in experiment (:class:`ReproduceConfig`) and write :data:`OUTPUT_FILES` to ``out_dir``.

    ``out_dir`` is a folder path or an open :class:`refimpl.outputs.OutputSet` (its
    owner publishes it). Returns the summary dict (as written to ``summary.json``).
    Raises ConfigError for a bad configuration, and :class:`refimpl.outputs.OutputError`
    for an ``out_dir`` that is an existing file, locked by another run or not
    writable, before training and without writing anything.
    """
    config = ReproduceConfig() if config is None else config
    if not isinstance(config, ReproduceConfig):
        raise ConfigError(f"config must be a ReproduceConfig, got {type(config).__name__}")
    config.train_config().resolved(config.vocab_size)
    with open_output_set(out_dir) as out:
        ds = config.dataset()
        record = {"command": "reproduce", "reproduce": asdict(config)}
        return _run(ds, config.train_config(), out, progress, record)


def run_train(ds, config=None, out_dir="train_out", progress=None):
    """Algorithm 1 on ``ds`` with the training fields of ``config``; writes :data:`OUTPUT_FILES`.

    ``config`` is a :class:`ReproduceConfig` (its dataset fields are ignored) or a
    :class:`~refimpl.train.TrainConfig`; None means the built-in training settings.
    ``out_dir`` as in :func:`run_reproduce`. A non-realizable ``ds`` raises its
    DatasetError before anything is written.
    """
    config = ReproduceConfig() if config is None else config
    if isinstance(config, ReproduceConfig):
        train_config = config.train_config()
    elif isinstance(config, TrainConfig):
        train_config = config
    else:
        raise ConfigError(f"config must be a ReproduceConfig or TrainConfig, got {type(config).__name__}")
    record = {"command": "train",
              "dataset": {"vocab_size": ds.vocab_size, "n_sentences": ds.n_sentences}}
    return _run(ds, train_config, out_dir, progress, record)

