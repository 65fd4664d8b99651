"""The training commands end to end: reproduce, train, generalize (exit codes, outputs, bad input)."""
import csv
import json
from pathlib import Path

import pytest

from refimpl.cli import COMPILE_NOTICE, main
from refimpl.reproduce import OUTPUT_FILES
from refimpl.trajectory import STAGE1_COLUMNS, STAGE2_COLUMNS

DATA = Path(__file__).parent / "data"
SHORT = ["--T0", "40", "--T", "60"]  # short runs: these tests check plumbing, not convergence


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_reproduce_writes_all_outputs(tmp_path, capsys):
    code, out, err = run(capsys, "reproduce", "--out", str(tmp_path / "r"), *SHORT)
    assert code == 0
    summary = json.loads(out)
    assert summary["stage1"]["steps"] == 40 and summary["stage2"]["steps"] == 60
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == sorted(OUTPUT_FILES)
    with open(tmp_path / "r" / "stage2.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(STAGE2_COLUMNS) and len(rows) == 1 + 61  # header + steps 0..60
    with open(tmp_path / "r" / "stage1.csv") as f:
        assert next(csv.reader(f)) == list(STAGE1_COLUMNS)
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["train"]["T0"] == 40 and config["train"]["T"] == 60
    # what stays besides the one closing line: the compile notice of a cold Numba cache, and
    # periodic progress lines ("refimpl: <phase> ..., N s") when the run passes 10 s on a
    # stderr that is not a terminal (a slow or busy CI machine)
    lines = [ln for ln in err.splitlines() if ln != COMPILE_NOTICE and not ln.startswith("refimpl: ")]
    assert len(lines) == 1 and "wrote" in lines[0]


def test_train_on_a_file(tmp_path, capsys):
    code, out, _ = run(capsys, "-q", "train", str(DATA / "valid_small.json"), "--out", str(tmp_path), *SHORT)
    assert code == 0 and json.loads(out)["dataset"]["vocab_size"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(OUTPUT_FILES)


@pytest.mark.parametrize("argv, what", [
    (["--eta", "0"], "eta"), (["--eta0", "-0.1"], "eta0"), (["--T", "-5"], "T"), (["--T0", "-1"], "T0"),
])
def test_bad_training_parameters_exit_2_and_write_nothing(tmp_path, capsys, argv, what):
    out_dir = tmp_path / "o"
    code, out, err = run(capsys, "train", str(DATA / "valid_small.json"), "--out", str(out_dir), *argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and what in err
    assert not out_dir.exists()


def test_non_realizable_dataset_exit_2_and_writes_nothing(tmp_path, capsys):
    out_dir = tmp_path / "o"
    code, _, err = run(capsys, "train", str(DATA / "cycle_3.json"), "--out", str(out_dir))
    assert code == 2 and "cycle" in err and not out_dir.exists()


def test_out_dir_that_is_a_file_exit_2(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("keep me")
    code, _, err = run(capsys, "reproduce", "--out", str(target), *SHORT)
    assert code == 2 and "not a directory" in err and target.read_text() == "keep me"


def test_generalize_on_a_file(tmp_path, capsys):
    ds_path = tmp_path / "d.json"
    assert main(["-q", "generate", "-M", "12", "-N", "80", "--out", str(ds_path)]) == 0
    code, out, _ = run(capsys, "-q", "generalize", str(ds_path), "--out", str(tmp_path / "g"), *SHORT)
    assert code == 0
    summary = json.loads(out)
    assert summary["certified"]["violations"] == 0
    assert (tmp_path / "g" / "generalization.png").exists()


def test_generalize_into_a_file_fails_before_training(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("keep me")
    code, _, err = run(capsys, "generalize", str(DATA / "valid_small.json"), "--out", str(target))
    assert code == 2 and "not a directory" in err and target.read_text() == "keep me"
