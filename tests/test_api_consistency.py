"""One consistent API: the same defaults in the library, the command line and the built-in
experiment; the dataset first; a TypeError naming the expected type for a non-dataset;
predict on every sentence form; ``ri.audit`` as a thin wrapper over ``run_audit``."""
import inspect
import json
import math
import warnings

import numpy as np
import pytest

import refimpl as ri
from refimpl import errors
from refimpl.audit import AuditConfig, run_audit
from refimpl.cli import build_parser
from refimpl.generalize import GeneralizeConfig
from refimpl.reproduce import ReproduceConfig
from refimpl.train import (DEFAULT_ETA0_SCALE, DEFAULT_ETA_SCALE, DEFAULT_INIT, DEFAULT_T, DEFAULT_T0,
                           TrainConfig, run_two_stage, train_joint, train_two_stage)

# The paper's experiment (Figure 2, docs/reproduce.md): the one set of defaults.
PAPER = {"T0": 2000, "T": 20_000, "eta0_scale": 0.2, "eta_scale": 0.05, "init": "zero"}

# Public functions that take the dataset after other arguments: none. loss_and_grads,
# stage1_loss_and_grad, stage2_floor and save_checkpoints accept their earlier order for one
# release with a DeprecationWarning (tested below).
NOT_DATASET_FIRST = set()


@pytest.fixture(scope="module")
def ds():
    return ri.generate(vocab_size=6, n_sentences=20, seed=4)


def _defaults(func):
    return {k: p.default for k, p in inspect.signature(func).parameters.items()
            if p.default is not inspect.Parameter.empty}


# ------------------------------------------------------------------ defaults
def test_the_shared_constants_are_the_papers():
    assert (DEFAULT_T0, DEFAULT_T, DEFAULT_ETA0_SCALE, DEFAULT_ETA_SCALE, DEFAULT_INIT) == (
        PAPER["T0"], PAPER["T"], PAPER["eta0_scale"], PAPER["eta_scale"], PAPER["init"])


@pytest.mark.parametrize("source", ["train_two_stage", "TrainConfig", "ReproduceConfig", "AuditConfig",
                                    "GeneralizeConfig"])
def test_training_defaults_agree(source):
    if source == "train_two_stage":
        d = _defaults(train_two_stage)
    else:
        cls = {"TrainConfig": TrainConfig, "ReproduceConfig": ReproduceConfig, "AuditConfig": AuditConfig,
               "GeneralizeConfig": GeneralizeConfig}[source]
        d = vars(cls())
    assert (d["T0"], d["T"], d["eta0"], d["eta"], d["init"], d["seed"]) == (
        PAPER["T0"], PAPER["T"], None, None, PAPER["init"], 0), source


def test_joint_baseline_defaults_are_stage_twos():
    d = _defaults(train_joint)
    assert (d["T"], d["eta"], d["init"]) == (PAPER["T"], None, PAPER["init"])


@pytest.mark.parametrize("M", [2, 20, 200])
def test_default_step_sizes_resolve_to_the_papers(M):
    for cfg in (TrainConfig(), ReproduceConfig().train_config(), AuditConfig().train_config()):
        r = cfg.resolved(M)
        assert r.eta0 == PAPER["eta0_scale"] / math.sqrt(M) and r.eta == PAPER["eta_scale"] / math.sqrt(M)
        assert (r.T0, r.T, r.init) == (PAPER["T0"], PAPER["T"], PAPER["init"])


def _option_help(command, option):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    (action,) = [a for a in sub._actions if option in a.option_strings]
    return action


@pytest.mark.parametrize("command", ["reproduce", "train", "audit", "generalize"])
def test_command_line_defaults_are_the_librarys(command):
    """No training option given: the command trains with the library's defaults (the options
    default to None, meaning "the configuration's value"), and --help states those values."""
    for option in ("--T0", "--T", "--eta0", "--eta", "--init", "--seed"):
        assert _option_help(command, option).default is None, option
    assert f"default {PAPER['T0']})" in _option_help(command, "--T0").help
    assert f"default {PAPER['T']})" in _option_help(command, "--T").help
    assert "default 0.2/sqrt(d)" in _option_help(command, "--eta0").help
    assert "default 0.05/sqrt(d)" in _option_help(command, "--eta").help
    assert "default zero" in _option_help(command, "--init").help


def test_library_default_run_is_the_command_lines(ds):
    """train_two_stage(ds) resolves to exactly the configuration refimpl train uses."""
    lib = TrainConfig().resolved(ds.vocab_size)
    cli = ReproduceConfig().train_config().resolved(ds.vocab_size)
    assert lib == cli


# ------------------------------------------------------------------ dataset first
def test_public_functions_take_the_dataset_first():
    for name in ri.__all__:
        obj = getattr(ri, name)
        if not callable(obj) or isinstance(obj, type) or name in NOT_DATASET_FIRST:
            continue
        try:
            params = list(inspect.signature(obj).parameters)
        except (TypeError, ValueError):
            continue
        if "ds" in params:
            assert params[0] == "ds", f"refimpl.{name}{inspect.signature(obj)}: the dataset comes first"


def test_stage2_floor_dataset_first_and_the_old_order_warns(ds):
    O = ri.w_ov_star(ds)[0] * 3.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # the new order warns about nothing
        new = ri.stage2_floor(ds, O, return_details=True)
    with pytest.warns(DeprecationWarning, match=r"stage2_floor\(ds, O\)"):
        old = ri.stage2_floor(O, ds, return_details=True)
    assert new[0] == old[0] and new[1] == old[1]
    np.testing.assert_array_equal(new[2], old[2])
    np.testing.assert_array_equal(new[3]["log_loss"], old[3]["log_loss"])


def test_stage2_floor_alias_is_documented():
    doc = inspect.getdoc(ri.stage2_floor)
    assert "stage2_floor(O, ds)" in doc and "DeprecationWarning" in doc


# ------------------------------------------------------------------ TypeErrors
@pytest.mark.parametrize("call, name", [
    (lambda: train_two_stage([[0, 1]]), "train_two_stage"),
    (lambda: train_joint([[0, 1]]), "train_joint"),
    (lambda: run_two_stage({"sentences": [[0, 1]]}, TrainConfig()), "run_two_stage"),
    (lambda: ri.audit([[0, 1]]), "audit"),
    (lambda: ri.stage2_floor(np.eye(3), np.eye(3)), "stage2_floor"),
])
def test_non_dataset_is_a_type_error_naming_the_type(call, name):
    with pytest.raises(TypeError) as info:
        call()
    msg = str(info.value)
    assert msg.startswith(f"{name} expects a RealizableDataset"), msg
    assert "refimpl.load_dataset" in msg
    assert msg.endswith(("got list", "got dict", "got ndarray")) or "got ndarray" in msg, msg


def test_type_error_message_is_the_documented_one():
    with pytest.raises(TypeError) as info:
        ri.train_two_stage([[0, 1]])
    assert str(info.value) == ("train_two_stage expects a RealizableDataset (see refimpl.load_dataset / "
                               "RealizableDataset(...)), got list")


def test_run_two_stage_wants_a_train_config(ds):
    with pytest.raises(TypeError, match="TrainConfig"):
        run_two_stage(ds, {"T0": 1})


# ------------------------------------------------------------------ predict
def test_predict_on_dataset_list_and_pair_agree(ds):
    rng = np.random.default_rng(0)
    O, K = rng.standard_normal((2, 6, 6))
    on_ds = ri.predict(O, K, ds)
    on_list = ri.predict(O, K, ds.sentences())
    on_pair = ri.predict(O, K, (ds.tokens, ds.lengths))
    for other in (on_list, on_pair):
        np.testing.assert_array_equal(on_ds[0], other[0])
        np.testing.assert_array_equal(on_ds[1], other[1])
    assert on_ds[1].shape == (ds.n_sentences, 6)
    from refimpl.prediction import predict_limit
    np.testing.assert_array_equal(predict_limit(O, K, ds)[1], predict_limit(O, K, ds.sentences())[1])


@pytest.mark.parametrize("flat", [[0, 1, 4], np.array([0, 1, 4]), (0, 1, 4)])
def test_predict_rejects_a_flat_list(flat):
    W = np.zeros((5, 5))
    with pytest.raises(errors.SentenceInputError, match=r"flat list of ints.*\[\[\.\.\.\]\]"):
        ri.predict(W, W, flat)


def test_predict_one_sentence_wrapped():
    W = np.zeros((5, 5))
    next_token, probs = ri.predict(W, W, [[0, 1, 4]])
    assert next_token.shape == (1,) and probs.shape == (1, 5)


# ------------------------------------------------------------------ ri.audit
def _without_runtime(x):
    if isinstance(x, dict):
        return {k: _without_runtime(v) for k, v in x.items() if k != "runtime_seconds"}
    if isinstance(x, list):
        return [_without_runtime(v) for v in x]
    return x


def test_audit_equals_run_audit_with_audit_config(ds):
    top = ri.audit(ds, T0=200, T=300, progress=False)
    direct = run_audit(ds, AuditConfig(T0=200, T=300), progress=False)
    assert json.dumps(_without_runtime(top), sort_keys=True, default=str) == \
        json.dumps(_without_runtime(direct), sort_keys=True, default=str)
    assert top["config"]["T0"] == 200 and top["config"]["T"] == 300


def test_audit_keywords_are_train_two_stages():
    params = inspect.signature(ri.audit.audit).parameters
    assert list(params)[0] == "ds"
    for key in ("T0", "T", "eta0", "eta", "init", "seed", "init_scale"):
        assert key in _defaults(train_two_stage) and key in vars(AuditConfig()), key


def test_audit_unknown_keyword_names_it(ds):
    with pytest.raises(errors.ConfigError, match=r"unknown audit option\(s\) T1.*known: .*T0"):
        ri.audit(ds, T1=5)


def test_audit_is_the_module_and_callable():
    from refimpl import audit
    assert audit is ri.audit and callable(audit)
    assert audit.run_audit is run_audit and audit.AuditConfig is AuditConfig
    assert "audit" in ri.__all__


# ------------------------------------------------------------------ attributes vs methods
def test_sentences_stays_a_method_and_the_reason_is_documented(ds):
    assert callable(ds.sentences) and ds.sentences() == [s.tolist() for s in map(ds.sentence, range(len(ds)))]
    doc = inspect.getdoc(ri.RealizableDataset)
    assert "sentences()" in doc and "method" in doc
    for name in ("tokens", "lengths", "optimal", "next_tokens"):
        assert isinstance(getattr(ds, name), np.ndarray), name


@pytest.mark.parametrize("name", ["loss_and_grads", "stage1_loss_and_grad"])
def test_model_functions_dataset_first_and_the_old_order_warns(ds, name):
    f = getattr(ri, name)
    W = np.eye(ds.vocab_size) * 2.0
    args = (W, W) if name == "loss_and_grads" else (W,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = f(ds, *args)
    with pytest.warns(DeprecationWarning, match="dataset first"):
        old = f(*args, ds)
    assert new[0] == old[0]
    np.testing.assert_array_equal(new[1], old[1])


def test_save_checkpoints_dataset_first_and_the_old_order_warns(ds, tmp_path):
    from refimpl.audit import AuditConfig
    cfg = AuditConfig(T0=5, T=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = ri.save_checkpoints(ds, tmp_path / "a.npz", cfg)
    with pytest.warns(DeprecationWarning, match="dataset first"):
        old = ri.save_checkpoints(tmp_path / "b.npz", ds, cfg)
    np.testing.assert_array_equal(new["stage2_W_kq"], old["stage2_W_kq"])
