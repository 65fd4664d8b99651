"""Command-line manners: global flags in either position, --version, defaults in --help, a
reader that closes stdout early, ``--out -`` and special files, user paths in errors, and
the notice while the kernels compile for the first time (refimpl/cli.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import refimpl as ri
from refimpl import cli
from refimpl.cli import COMPILE_NOTICE, build_parser, main

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]
PY = [sys.executable, "-m", "refimpl"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def _subparsers():
    return build_parser()._subparsers._group_actions[0].choices


# ------------------------------------------------------------------ global flags
@pytest.mark.parametrize("where", ["before", "after", "middle"])
def test_quiet_before_or_after_the_command(tmp_path, capsys, where):
    out = str(tmp_path / "d.json")
    args = ["generate", "-M", "5", "-N", "4", "--out", out]
    argv = {"before": ["-q", *args], "after": [*args, "-q"], "middle": ["generate", "--quiet", *args[1:]]}[where]
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 0 and stdout == "" and err == ""
    assert ri.load_dataset(out) == ri.generate(5, 4, 2, 6, 0)


def test_without_quiet_the_message_is_printed(tmp_path, capsys):
    code, _, err = run_cli(capsys, "generate", "-M", "5", "-N", "4", "--out", str(tmp_path / "d.json"))
    assert code == 0 and err.startswith("wrote ")


@pytest.mark.parametrize("argv, quiet", [
    (["train", "f.json"], False), (["-q", "train", "f.json"], True), (["train", "f.json", "-q"], True),
    (["--quiet", "audit", "f.json", "--json"], True), (["validate", "--quiet", "f.json"], True),
])
def test_parsed_quiet_flag(argv, quiet):
    args = build_parser().parse_args(argv)
    assert getattr(args, "quiet", False) is quiet


def test_every_command_accepts_the_global_flags():
    for name, sub in _subparsers().items():
        assert any("-q" in a.option_strings for a in sub._actions), name


# ------------------------------------------------------------------ --version
def test_version_in_process(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"refimpl {ri.__version__}\n"


def test_version_subprocess():
    res = subprocess.run([*PY, "--version"], capture_output=True, text=True, env=_env())
    assert res.returncode == 0 and res.stdout == f"refimpl {ri.__version__}\n" and res.stderr == ""
    parts = res.stdout.split()[1].split(".")
    assert len(parts) == 3 and all(p.isdigit() for p in parts)


# ------------------------------------------------------------------ --help
def test_help_shows_a_default_for_every_option():
    """Every option that takes a value and is not required states its default (numbers derived
    from d as formulas); flags (store_true) and required options need none."""
    for name, sub in _subparsers().items():
        for a in sub._actions:
            if not a.option_strings or a.required or a.nargs == 0:
                continue
            assert a.help and "default" in a.help, f"refimpl {name} {a.option_strings[-1]}: {a.help!r}"


@pytest.mark.parametrize("command", ["reproduce", "train", "audit", "generalize"])
def test_help_text_of_training_options(command):
    res = subprocess.run([*PY, command, "--help"], capture_output=True, text=True, env=_env())
    assert res.returncode == 0
    text = " ".join(res.stdout.split())           # argparse wraps lines
    for expected in ("stage-1 steps (default 2000)", "stage-2 steps (default 20000)",
                     "(default 0.2/sqrt(d))", "(default 0.05/sqrt(d))", "(default zero)"):
        assert expected in text, (command, expected)
    assert "-q, --quiet" in text


# ------------------------------------------------------------------ a reader that goes away
def test_closed_pipe_large_output_ends_quietly():
    """generate --out - | head -c 10: the reader closes after 10 bytes; exit 0, nothing on stderr."""
    proc = subprocess.Popen([*PY, "generate", "-M", "20", "-N", "20000", "--out", "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    head = proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    code = proc.wait(timeout=120)
    assert head == b'{"format":'
    assert code == 0, (code, err)
    assert err == b""


def test_closed_pipe_before_the_first_write_ends_quietly():
    """The reader is gone before anything is written (the final flush fails): still exit 0, quiet."""
    res = subprocess.run(f"{sys.executable} -m refimpl generate -M 5 -N 4 --out - | true; "
                         f"exit ${{PIPESTATUS[0]}}", shell=True, executable="/bin/bash",
                         capture_output=True, env=_env())
    assert res.returncode == 0 and res.stderr == b""


class _ClosedStdout:
    def write(self, _):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self):
        raise OSError("no file descriptor here")


def test_broken_pipe_in_process_is_exit_0_without_a_message(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", _ClosedStdout())
    code = main(["generate", "-M", "5", "-N", "4", "--out", "-"])
    assert code == 0
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ --out
@pytest.mark.parametrize("name", ["/dev/stdout", "-"])
def test_out_stdout_writes_to_stdout(name):
    res = subprocess.run([*PY, "generate", "-M", "5", "-N", "4", "--out", name],
                         capture_output=True, text=True, env=_env())
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["vocab_size"] == 5


def test_out_dev_stdout_redirected_to_a_file_appends_to_it(tmp_path):
    """/dev/stdout is the process's stdout, not a link whose target gets replaced: output
    appended to a log (>>) keeps what was there."""
    log = tmp_path / "log.txt"
    log.write_text("earlier line\n")
    with open(log, "a") as fh:
        res = subprocess.run([*PY, "generate", "-M", "5", "-N", "4", "--out", "/dev/stdout"],
                             stdout=fh, stderr=subprocess.PIPE, text=True, env=_env())
    assert res.returncode == 0, res.stderr
    first, rest = log.read_text().split("\n", 1)
    assert first == "earlier line" and json.loads(rest)["vocab_size"] == 5


@pytest.mark.parametrize("name", ["/dev/null", "/dev/full"])
def test_out_special_file_is_refused_pointing_to_out_dash(capsys, name):
    code, out, err = run_cli(capsys, "generate", "-M", "5", "-N", "4", "--out", name)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and name in err and "character device" in err and "--out -" in err


def test_out_directory_is_refused_pointing_to_out_dash(capsys, tmp_path):
    code, _, err = run_cli(capsys, "generate", "--out", str(tmp_path))
    assert code == 2 and "directory" in err and "--out -" in err and str(tmp_path) in err


def test_write_error_names_the_users_path_not_a_temporary_file(capsys):
    target = "/proc/refimpl-test-cannot-write.json"     # a folder that exists and takes no files
    code, _, err = run_cli(capsys, "generate", "-M", "5", "-N", "4", "--out", target)
    assert code == 2 and err.count("\n") == 1
    assert target in err and ".tmp" not in err


# ------------------------------------------------------------------ compile notice
def test_kernels_cold_with_an_empty_cache(tmp_path):
    res = subprocess.run([sys.executable, "-c", "from refimpl.cli import kernels_cold; print(kernels_cold())"],
                         capture_output=True, text=True, env=_env(NUMBA_CACHE_DIR=str(tmp_path)))
    assert res.returncode == 0 and res.stdout == "True\n", res.stderr


def test_kernels_warm_after_a_training_run():
    ds = ri.generate(vocab_size=5, n_sentences=10, seed=1)
    ri.train_two_stage(ds, T0=2, T=2, progress=False)   # compiles, or loads what is cached
    assert cli.kernels_cold() is False


def test_notice_printed_first_when_the_cache_is_cold(tmp_path):
    """A cold cache (an empty NUMBA_CACHE_DIR): the notice is the first line on stderr, before
    the compilation. The run is stopped once the line is seen (compiling takes 20-50 s)."""
    data = tmp_path / "ds.json"
    ri.save_dataset(ri.generate(vocab_size=5, n_sentences=10, seed=1), data)
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    proc = subprocess.Popen([*PY, "train", str(data), "--T0", "1", "--T", "1", "--out", str(tmp_path / "run")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=_env(NUMBA_CACHE_DIR=str(cache)))
    try:
        first = proc.stderr.readline()
    finally:
        proc.kill()
        proc.wait(timeout=60)
        proc.stderr.close()
    assert first == COMPILE_NOTICE + "\n"


class _Stop(Exception):
    pass


@pytest.mark.parametrize("argv, shown", [
    (["train", "DS", "--out", "RUN"], True),
    (["-q", "train", "DS", "--out", "RUN"], False),
    (["train", "DS", "--out", "RUN", "-q"], False),
])
def test_notice_only_without_quiet(tmp_path, monkeypatch, capsys, argv, shown):
    """Wiring: the notice goes to stderr before training when the cache is cold, never with -q
    (in either position). Training itself is replaced by a stub that stops the command."""
    data = tmp_path / "ds.json"
    ri.save_dataset(ri.generate(vocab_size=5, n_sentences=10, seed=1), data)
    argv = [str(data) if a == "DS" else str(tmp_path / "run") if a == "RUN" else a for a in argv]
    monkeypatch.setattr(cli, "kernels_cold", lambda: True)

    def stub(*args, **kwargs):
        raise ri.ConfigError("stopped before training")
    monkeypatch.setattr("refimpl.reproduce.run_train", stub)
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and err.endswith("refimpl train: stopped before training\n")
    assert (COMPILE_NOTICE in err) is shown
    if shown:
        assert err.startswith(COMPILE_NOTICE + "\n")


def test_no_notice_when_the_cache_is_warm(tmp_path, monkeypatch, capsys):
    data = tmp_path / "ds.json"
    ri.save_dataset(ri.generate(vocab_size=5, n_sentences=10, seed=1), data)
    monkeypatch.setattr(cli, "kernels_cold", lambda: False)
    code, _, err = run_cli(capsys, "train", str(data), "--T0", "2", "--T", "2", "--out", str(tmp_path / "run"))
    assert code == 0 and COMPILE_NOTICE not in err


def test_bad_options_fail_before_the_notice(tmp_path, monkeypatch, capsys):
    data = tmp_path / "ds.json"
    ri.save_dataset(ri.generate(vocab_size=5, n_sentences=10, seed=1), data)
    monkeypatch.setattr(cli, "kernels_cold", lambda: True)
    code, _, err = run_cli(capsys, "train", str(data), "--T0", "-1", "--out", str(tmp_path / "run"))
    assert code == 2 and err.count("\n") == 1 and COMPILE_NOTICE not in err
