"""``run_reproduce`` / ``run_train``: the five output files, and nothing written on bad input."""
import csv
import json
import math

import pytest

import refimpl as ri
from refimpl.errors import ConfigError, DatasetError
from refimpl.reproduce import OUTPUT_FILES, ReproduceConfig, run_reproduce, run_train
from refimpl.trajectory import STAGE1_COLUMNS, STAGE2_COLUMNS

SMALL = dict(T0=60, T=300)  # keeps every test here to about a second


def _read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def test_reproduce_writes_expected_files(tmp_path):
    out = tmp_path / "nested" / "out"
    summary = run_reproduce(ReproduceConfig(**SMALL), out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)  # no temporary files left

    header, rows = _read_csv(out / "stage1.csv")
    assert header == list(STAGE1_COLUMNS) and len(rows) == SMALL["T0"] + 1
    assert [int(r[0]) for r in rows] == list(range(SMALL["T0"] + 1))
    header, rows = _read_csv(out / "stage2.csv")
    assert header == list(STAGE2_COLUMNS) and len(rows) == SMALL["T"] + 1

    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["eta0"] == 0.2 / math.sqrt(20) and config["train"]["eta"] == 0.05 / math.sqrt(20)
    assert config["train"]["T0"] == SMALL["T0"] and config["reproduce"]["vocab_size"] == 20
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    assert summary["stop_reason"] == {"stage1": "completed", "stage2": "completed"}
    assert summary["gamma_ov"] == pytest.approx(1 / math.sqrt(19), rel=1e-14)  # C1 with n_c = M = 20
    assert summary["stage2"]["steps"] == SMALL["T"]
    for key in ("loss", "log10_loss", "excess_loss", "one_minus_cos_kq", "train_accuracy"):
        assert isinstance(summary["stage2"][key], float), key


def test_run_train_on_dataset_file(tmp_path):
    path = tmp_path / "ds.json"
    ri.generate(6, 25, 1, 4, 5).save(path)
    ds = ri.load_dataset(path)
    summary = run_train(ds, ReproduceConfig(T0=30, T=40), tmp_path / "out", progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(OUTPUT_FILES)
    assert summary["dataset"]["vocab_size"] == 6
    assert json.loads((tmp_path / "out" / "config.json").read_text())["train"]["eta0"] == 0.2 / math.sqrt(6)


@pytest.mark.parametrize("override", [
    {"eta0": 0.0}, {"eta0": -1.0}, {"eta": 0.0}, {"eta": -0.5}, {"T0": -1}, {"T": -1},
    {"init": "ones"}, {"vocab_size": 1},
])
def test_bad_config_writes_nothing(tmp_path, override):
    out = tmp_path / "out"
    with pytest.raises(ConfigError):
        run_reproduce(ReproduceConfig(**{**SMALL, **override}), out, progress=False)
    assert not out.exists()


def test_out_dir_that_is_a_file(tmp_path):
    out = tmp_path / "taken"
    out.write_text("keep me")
    with pytest.raises(ConfigError, match="not a directory"):
        run_reproduce(ReproduceConfig(**SMALL), out, progress=False)
    assert out.read_text() == "keep me"


def test_non_realizable_dataset_writes_nothing(tmp_path):
    bad = ri.RealizableDataset(3, {0: 1, 1: 1}, [[0, 1]], [1])  # two tokens with n(x) = 1
    with pytest.raises(DatasetError):
        run_train(bad, ReproduceConfig(**SMALL), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_builtin_default_meets_acceptance(tmp_path):
    """The built-in experiment converges in both stages: stage-2 training
    accuracy 100%, excess loss below 1e-10 and 1 - cos(K_T, W_kq*) below 1e-2. The measured values
    (about 5e-17 and 1.8e-3 at T = 20000) leave margins of 10^6 and 5x; C9's fitted decay of
    1 - cos is about t^-1.9 (docs/reproduce.md), so the margin does not hinge on rounding."""
    summary = run_reproduce(ReproduceConfig(), tmp_path / "out", progress=False)
    s2 = summary["stage2"]
    assert summary["stop_reason"] == {"stage1": "completed", "stage2": "completed"}
    assert s2["train_accuracy"] == 1.0
    assert s2["excess_loss"] < 1e-10
    assert s2["one_minus_cos_kq"] < 1e-2
    assert s2["floor_is_perfect_attention"] is True
    assert summary["stage1"]["accuracy"] == 1.0
