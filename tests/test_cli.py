"""The command line: exit codes, one-line errors, atomic outputs (README.md, "Command line")."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import refimpl as ri
from refimpl import errors
from refimpl.cli import main

DATA = Path(__file__).parent / "data"

# file -> the DatasetError subclass that loading it must raise
MALFORMED = {
    "truncated.json": errors.FileFormatError,
    "not_json.json": errors.FileFormatError,
    "not_an_object.json": errors.FileFormatError,
    "wrong_format_tag.json": errors.FileFormatError,
    "missing_field.json": errors.FileFormatError,
    "fractional_token.json": errors.FileFormatError,
    "negative_token.json": errors.TokenOutOfRangeError,
    "token_too_large.json": errors.TokenOutOfRangeError,
    "empty_sentence.json": errors.EmptySentenceError,
    "count_mismatch.json": errors.CountMismatchError,
    "collocation_conflict.json": errors.CollocationConflictError,
    "no_optimal_token.json": errors.NoOptimalTokenError,
    "ambiguous_optimal_token.json": errors.AmbiguousOptimalTokenError,
    "cycle_2.json": errors.OrderCycleError,
    "cycle_3.json": errors.OrderCycleError,
    "supplied_order_contradicts.json": errors.OrderContradictionError,
    "supplied_order_cycle.json": errors.OrderCycleError,
}


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_every_malformed_file_is_listed():
    on_disk = {p.name for p in DATA.glob("*.json")
               if not p.name.startswith(("valid", "c10_", "regress_"))}  # those are realizable
    assert on_disk == set(MALFORMED) and len(MALFORMED) >= 12


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_validate_rejects_malformed_file(capsys, name):
    code, out, err = run_cli(capsys, "validate", str(DATA / name))
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("refimpl validate: ")
    with pytest.raises(MALFORMED[name]) as info:
        ri.load_dataset(DATA / name)
    assert str(info.value) in err


def test_cycle_files_carry_their_cycles():
    for name, length in (("cycle_2.json", 2), ("cycle_3.json", 3)):
        with pytest.raises(errors.OrderCycleError) as info:
            ri.load_dataset(DATA / name)
        cycle = info.value.witness["cycle"]
        assert len(cycle) == length + 1 and cycle[0] == cycle[-1] and info.value.query == 4


@pytest.mark.parametrize("name", ["valid_small.json", "valid_supplied_orders.json"])
def test_validate_accepts_valid_file(capsys, name):
    code, out, _ = run_cli(capsys, "validate", str(DATA / name))
    assert code == 0 and out == ""


def test_generate_writes_a_valid_file(tmp_path, capsys):
    path = tmp_path / "d.json"
    code, out, _ = run_cli(capsys, "-q", "generate", "-M", "12", "-N", "50", "--seed", "3", "--out", str(path))
    assert code == 0 and out == ""
    ds = ri.load_dataset(path)
    assert ds == ri.generate(12, 50, 2, 6, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["d.json"]  # no temporary file left behind


def test_generate_to_stdout(capsys):
    code, out, _ = run_cli(capsys, "generate", "-M", "5", "-N", "4", "--out", "-")
    assert code == 0 and json.loads(out)["vocab_size"] == 5


@pytest.mark.parametrize("argv", [
    ["generate", "-M", "1", "--out", "x.json"],
    ["generate", "--min-len", "4", "--max-len", "2", "--out", "x.json"],
])
def test_generate_bad_parameters_exit_2_and_write_nothing(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_generate_into_a_directory_path_fails(tmp_path, capsys):
    code, _, err = run_cli(capsys, "generate", "--out", str(tmp_path))
    assert code == 2 and "directory" in err


def test_missing_file_exits_2(capsys, tmp_path):
    code, _, err = run_cli(capsys, "validate", str(tmp_path / "nope.json"))
    assert code == 2 and err.count("\n") == 1


def test_module_entry_point_and_help():
    res = subprocess.run([sys.executable, "-m", "refimpl", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for cmd in ("reproduce", "generate", "validate", "train", "audit", "generalize"):
        assert cmd in res.stdout
    res = subprocess.run([sys.executable, "-m", "refimpl", "validate", str(DATA / "cycle_3.json")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
