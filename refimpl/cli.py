"""Command line: ``refimpl <command> ...`` (also ``python -m refimpl``).

Data goes to stdout (or files), messages to stderr. Exit codes: 0 success,
1 a certified claim failed (audit) or training stopped at a non-finite value
(train, reproduce, audit, generalize: one line naming the stage and step), 2 bad
input (a one-line message naming what was wrong; nothing is written), 130
interrupted (Ctrl-C), 143 terminated (SIGTERM). A reader that closes stdout early
(``refimpl generate --out - | head``) ends the command quietly with exit 0: no
message, because the reader chose to stop reading and got what it asked for
(exit 0 also keeps ``set -o pipefail`` scripts working).

Global flags (``-q/--quiet``) go before or after the command; ``--version``
prints ``refimpl X.Y.Z``. The first training run on a machine compiles the Numba
kernels (20-50 s, cached afterwards); a one-line notice says so on stderr unless
``-q``. Output folders are opened as
:class:`refimpl.outputs.OutputSet` before any loading or training, so a bad,
locked or unwritable ``--out`` fails first, and a run's files appear together
or not at all.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .errors import ConfigError, DatasetError, InputError
from .io import json_text
from .outputs import OutputError, OutputSet, Terminated, check_file_target
from .train import (DEFAULT_ETA0_SCALE, DEFAULT_ETA_SCALE, DEFAULT_INIT, DEFAULT_T, DEFAULT_T0,
                    NonFiniteTrainingError)

EXIT_OK, EXIT_CLAIM_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class UsageError(Exception):
    """Bad command-line input detected after argument parsing (exit 2)."""


# ``--out`` values that mean stdout: "-", and the names of stdout itself (written to as
# stdout rather than resolved: behind a pipe or a terminal they are no regular file).
STDOUT_NAMES = ("-", "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1")


def _out_file(path):
    """``--out FILE`` checked before any work; None for stdout (:data:`STDOUT_NAMES`).

    A directory, device, FIFO or socket (also behind a symbolic link) raises OutputError
    naming the path and pointing to ``--out -``; a missing folder raises OutputError."""
    if os.path.normpath(path) in STDOUT_NAMES or path == "-":
        return None
    try:
        check_file_target(path)
    except OutputError as exc:
        if "not a regular file" not in str(exc):
            raise
        raise OutputError(f"{exc}; to write to stdout use --out -", path=path) from None
    return Path(path)


def _progress(args):
    return False if args.quiet else None


def _note(args, message):
    """One line on stderr unless --quiet."""
    if not args.quiet:
        print(f"refimpl {args.command}: {message}", file=sys.stderr)


COMPILE_NOTICE = "refimpl: compiling kernels (once, about 20-50 s)..."


def kernels_cold():
    """True when Numba's cache holds no usable compiled code for the kernels every training run
    calls (so the next training compiles them, 20-50 s).

    Reads the cache index of four kernels (a small pickle each, the file Numba itself reads);
    missing, stale (the source changed) or from another Numba version counts as cold. Any
    failure to tell answers False: no notice rather than a wrong one.
    """
    try:
        from . import kernels, kernels_chunk
        for f in (kernels._compensated_step, kernels._attention, kernels._logits, kernels_chunk._drive_serial):
            if not f._cache._cache_file._load_index():
                return True
        return False
    except Exception:                    # noqa: BLE001 (a private Numba API: never fail a run over a notice)
        return False


def _compile_notice(args):
    """Before training: one line on stderr if the kernels are about to compile (not with -q)."""
    if not args.quiet and kernels_cold():
        print(COMPILE_NOTICE, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ commands
def cmd_generate(args):
    from .generator import generate
    from .io import dataset_to_dict, save_dataset
    out = _out_file(args.out)
    ds = generate(args.vocab_size, args.sentences, args.min_len, args.max_len, args.seed,
                  n_colloc=args.n_colloc, order_dim=args.order_dim, store_orders=args.store_orders)
    if out is None:
        json.dump(dataset_to_dict(ds), sys.stdout)
        sys.stdout.write("\n")
    else:
        save_dataset(ds, out)
        if not args.quiet:
            print(f"wrote {out}: M={ds.vocab_size} N={ds.n_sentences} lengths "
                  f"{ds.lengths.min()}..{ds.lengths.max()}", file=sys.stderr)
    return EXIT_OK


def cmd_validate(args):
    from .io import load_dataset
    ds = load_dataset(args.file)
    if not args.quiet:
        print(f"{args.file}: realizable (M={ds.vocab_size}, N={ds.n_sentences}, |C|={len(ds.colloc_tokens)}, "
              f"orders {'induced' if ds.orders is None else 'supplied'})", file=sys.stderr)
    return EXIT_OK


def _train_overrides(args):
    keys = ("eta0", "eta", "T0", "T", "init", "seed")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def _emit_run(args, summary, out, files):
    """Print a training summary as JSON on stdout and what was written on stderr."""
    sys.stdout.write(json_text(summary))
    _note(args, f"wrote {', '.join(files)} to {out}/")
    return EXIT_OK


def _non_finite_exit(args, stop_reason):
    """EXIT_CLAIM_FAILED after one stderr line naming the stage and step, if training stopped at a
    non-finite value (inf or NaN; ``stop_reason`` as in summary.json); None otherwise."""
    from .train import non_finite_stop
    where = non_finite_stop(stop_reason)
    if where is None:
        return None
    print(f"refimpl {args.command}: training stopped at a non-finite value (inf or NaN) in {where[0]} "
          f"at step {where[1]}; the step size is too large for float64", file=sys.stderr)
    return EXIT_CLAIM_FAILED


def cmd_reproduce(args):
    from .reproduce import OUTPUT_FILES, ReproduceConfig, run_reproduce
    config = ReproduceConfig(**_train_overrides(args))
    with OutputSet(args.out) as out:                   # checked and locked before any work
        config.train_config().resolved(config.vocab_size)       # bad options fail before the notice
        _compile_notice(args)
        summary = run_reproduce(config, out, progress=_progress(args))
    code = _emit_run(args, summary, Path(args.out), OUTPUT_FILES)
    return _non_finite_exit(args, summary.get("stop_reason")) or code


def cmd_train(args):
    from .io import load_dataset
    from .reproduce import OUTPUT_FILES, ReproduceConfig, run_train
    config = ReproduceConfig(**_train_overrides(args))
    with OutputSet(args.out) as out:                   # checked and locked before loading or training
        ds = load_dataset(args.file)
        config.train_config().resolved(ds.vocab_size)           # bad options fail before the notice
        _compile_notice(args)
        summary = run_train(ds, config, out, progress=_progress(args))
    code = _emit_run(args, summary, Path(args.out), OUTPUT_FILES)
    return _non_finite_exit(args, summary.get("stop_reason")) or code


def cmd_audit(args):
    from .audit import AuditConfig, format_table, run_audit, summary_line
    from .io import load_dataset
    if args.trajectory is not None:
        given = sorted(_train_overrides(args))
        if given:                                       # before loading anything
            raise UsageError(f"--trajectory audits the run in {args.trajectory} as it was made: "
                             f"--{given[0]} does not apply")
    if args.file is None:                               # the built-in default of `refimpl reproduce`
        from .reproduce import ReproduceConfig
        ds = ReproduceConfig().dataset()
    else:
        ds = load_dataset(args.file)
    AuditConfig(**_train_overrides(args)).train_config().resolved(ds.vocab_size)   # bad options first
    _compile_notice(args)
    if args.trajectory is not None:
        from .audit_trajectory import audit_trajectory
        from .audit_trajectory import format_table as table
        report = audit_trajectory(ds, args.trajectory)
    else:
        config = AuditConfig(**_train_overrides(args))
        report, table = run_audit(ds, config, progress=_progress(args)), format_table
    if args.json:
        sys.stdout.write(json_text(report))
    else:
        sys.stdout.write(table(report))
    stopped = _non_finite_exit(args, report["stop_reason"])
    if stopped is not None:
        return stopped
    if report["measured_failures"] and not report["certified_failures"]:
        _note(args, summary_line(report))
    if report["certified_failures"]:
        print(f"refimpl audit: certified claim(s) failed: {', '.join(report['certified_failures'])} "
              f"(a bug or a finding; see the table)", file=sys.stderr)
        return EXIT_CLAIM_FAILED
    return EXIT_OK


def cmd_generalize(args):
    from contextlib import nullcontext

    from .generalize import run_generalize
    from .io import load_dataset
    with nullcontext() if args.out is None else OutputSet(args.out) as out:   # before loading or training
        ds = load_dataset(args.file)
        _compile_notice(args)
        summary = run_generalize(ds, out_dir=out, **_train_overrides(args))
    sys.stdout.write(json_text(summary))
    return EXIT_OK


def cmd_sweep(args):
    from .sweep import run_sweep
    from .sweep_spec import load_spec
    plan = load_spec(args.sweep_file)                  # a bad sweep file fails before any cluster starts
    stats = run_sweep(plan, args.out, scheduler=args.scheduler, workers=args.workers,
                      max_tasks=args.max_tasks, quiet=args.quiet)
    _note(args, f"{stats['ran']} tasks run ({stats['errors']} errors), {stats['skipped']} already done, "
                f"{stats['pending']} pending; results in {Path(args.out) / 'results'}/")
    if stats["errors"]:
        print(f"refimpl sweep: {stats['errors']} task(s) ended in an error row; "
              f"see refimpl sweep-report {args.out}", file=sys.stderr)
        return EXIT_CLAIM_FAILED
    return EXIT_OK


def cmd_sweep_report(args):
    from .sweep_report import format_summary, summary_json, sweep_report
    summary = sweep_report(args.dir, figure=not args.no_figure)
    sys.stdout.write(summary_json(summary) if args.json else format_summary(summary))
    for name in summary["figures"]:
        _note(args, f"wrote {Path(args.dir) / name}")
    return EXIT_OK


# ------------------------------------------------------------------ parser
def _add_train_args(p):
    g = p.add_argument_group("training (defaults: the paper's experiment, as refimpl.train_two_stage)")
    g.add_argument("--eta0", type=float, help=f"stage-1 step size (default {DEFAULT_ETA0_SCALE:g}/sqrt(d))")
    g.add_argument("--eta", type=float, help=f"stage-2 step size (default {DEFAULT_ETA_SCALE:g}/sqrt(d))")
    g.add_argument("--T0", type=int, help=f"stage-1 steps (default {DEFAULT_T0})")
    g.add_argument("--T", type=int, help=f"stage-2 steps (default {DEFAULT_T})")
    g.add_argument("--init", choices=("zero", "random"), help=f"initialization (default {DEFAULT_INIT})")
    g.add_argument("--seed", type=int, help="seed of a random initialization (default 0)")


def _global_flags():
    """Flags accepted before or after the command (``refimpl -q train ...`` = ``refimpl train ... -q``).

    Their defaults are SUPPRESS in both parsers, so the subcommand's parser never overwrites
    a flag given before the command; :func:`main` fills in the real defaults."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="no progress bars or messages on stderr (before or after the command)")
    return flags


GLOBAL_DEFAULTS = {"quiet": False}


def build_parser():
    flags = _global_flags()
    parser = argparse.ArgumentParser(
        prog="refimpl", parents=[flags],
        description="Reference implementation of training a one-layer transformer for next-token "
                    "prediction (Huang, Liang & Yang, NeurIPS 2024).")
    parser.add_argument("--version", action="version", version=f"refimpl {__version__}",
                        help="print 'refimpl X.Y.Z' and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_parser = sub.add_parser

    def add_parser(name, **kwargs):                    # every command takes the global flags too
        return _add_parser(name, parents=[flags], **kwargs)
    sub.add_parser = add_parser

    p = sub.add_parser("reproduce", help="the paper's experiment (Figure 2) on the built-in default",
                       description="Run Algorithm 1 on the built-in default dataset and write figure.png, "
                                   "stage1.csv, stage2.csv, summary.json and config.json. Prints the summary.")
    p.add_argument("--out", default="reproduce_out", help="output folder (default: reproduce_out)")
    _add_train_args(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("generate", help="write a random realizable dataset",
                       description="Write a seeded random realizable dataset in the refimpl JSON format.")
    p.add_argument("--vocab-size", "-M", type=int, default=20, help="M (default 20)")
    p.add_argument("--sentences", "-N", type=int, default=200, help="N (default 200)")
    p.add_argument("--min-len", type=int, default=2, help="shortest sentence (default 2)")
    p.add_argument("--max-len", type=int, default=6, help="longest sentence (default 6)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--n-colloc", type=int, default=None, help="|C| (default M: a permutation)")
    p.add_argument("--order-dim", type=int, default=2, help="rankings intersected per query (default 2)")
    p.add_argument("--store-orders", action="store_true", help="write the generating orders (M <= 200)")
    p.add_argument("--out", required=True,
                   help="output file, or - for stdout (also /dev/stdout); devices and folders are refused")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("validate", help="check that a dataset file is realizable",
                       description="Exit 0 if FILE is a realizable dataset; otherwise print one line "
                                   "naming the problem on stderr and exit 2.")
    p.add_argument("file")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("train", help="Algorithm 1 on a dataset file",
                       description="Run Algorithm 1 on FILE and write the same outputs as reproduce.")
    p.add_argument("file")
    p.add_argument("--out", default="train_out", help="output folder (default: train_out)")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("audit", help="check every claim C1-C16 on a dataset file",
                       description="Train on FILE and evaluate every claim: PASS / FAIL / NOT APPLICABLE with "
                                   "measured numbers and bounds. Exit 0 if every certified claim holds, 1 if "
                                   "one fails, 2 on bad input.")
    p.add_argument("file", nargs="?", default=None,
                   help="dataset file (default: the built-in default dataset of 'refimpl reproduce')")
    p.add_argument("--json", action="store_true", help="print the report as JSON (schema in docs/audit.md)")
    p.add_argument("--trajectory", metavar="RUN.npz",
                   help="audit the checkpoints of a run made elsewhere instead of training (file schema in "
                        "docs/audit.md, 'Auditing a trajectory made elsewhere'); no training options apply "
                        "(default: none, train and audit that run)")
    _add_train_args(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("generalize", help="accuracy on unseen sentences (claim C11, docs/generalization.md)",
                       description="Train on FILE and measure prediction on unseen sentences decided by the "
                                   "extended orders, by the scores of K*, or undecided.")
    p.add_argument("file")
    p.add_argument("--out", default=None,
                   help="folder for the figure and summary (default: none, the summary goes to stdout only)")
    _add_train_args(p)
    p.set_defaults(func=cmd_generalize)

    p = sub.add_parser("sweep", help="run a sweep file's grid of tasks on Dask (docs/sweeps.md)",
                       description="Run every task of SWEEP_FILE (TOML or JSON) on dask.distributed and append "
                                   "one row per task to the Parquet table in OUT/results/. A rerun skips "
                                   "finished tasks. Exit 0, 1 if a task ended in an error row, 2 on bad input.")
    p.add_argument("sweep_file", metavar="SWEEP_FILE")
    p.add_argument("--out", required=True, help="sweep folder (created; locked while the sweep runs)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="address of an existing Dask scheduler, e.g. tcp://host:8786 (default: a LocalCluster)")
    p.add_argument("--workers", type=int, help="worker processes of the LocalCluster, 1 thread each "
                                               "(default: one per core)")
    p.add_argument("--max-tasks", type=int, metavar="N",
                   help="run at most N pending tasks and stop (default: all)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("sweep-report", help="summarize a sweep folder's results (docs/sweeps.md)",
                       description="Read DIR/results/, print tasks, errors, verdict counts per claim, fitted "
                                   "vs certified rates, bound slacks, the C10 threshold, generalization and "
                                   "two stages vs joint, and write DIR/report.png and DIR/sweep_*.png.")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-figure", action="store_true", help="do not write the figures")
    p.set_defaults(func=cmd_sweep_report)
    return parser


def _stdout_closed():
    """The reader of stdout went away (``refimpl generate --out - | head -c 10``): exit 0, no message.

    stdout is pointed at /dev/null so that the interpreter's final flush of what is still
    buffered cannot fail again ("Exception ignored ... BrokenPipeError", exit 120)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError):        # stdout without a file descriptor (an embedding program)
        pass
    return EXIT_OK


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, value in GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, value)
    try:
        code = args.func(args)
        sys.stdout.flush()               # a reader that went away shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except (DatasetError, ConfigError, InputError, UsageError) as exc:
        print(f"refimpl {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError:
        print(f"refimpl {args.command}: out of memory (the input is too large for this machine; "
              f"see REFIMPL_MAX_MEMORY in docs/datasets.md)", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"refimpl {args.command}: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return EXIT_BAD_INPUT
    except NonFiniteTrainingError as exc:     # generalize: training reached inf / NaN (one line, exit 1)
        print(f"refimpl {args.command}: {exc}", file=sys.stderr)
        return EXIT_CLAIM_FAILED
    except KeyboardInterrupt:
        print(f"refimpl {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"refimpl {args.command}: terminated", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
