"""What one sweep task computes, per report (docs/sweeps.md, "Reports").

``audit``
    :func:`refimpl.audit.run_audit`, flattened by :func:`refimpl.sweep.flatten_report`.
``generalization``
    :func:`refimpl.generalize.generalization_report` along stage 2 of Algorithm 1: the
    stage-2 step from which every closure-decided unseen sentence is predicted right and
    stays so (``closure_100_from``), the same for score-decided sentences, and the final
    accuracies (:func:`generalization_columns`).
``joint``
    Algorithm 1 and the joint NGD baseline (:func:`refimpl.train.train_joint`) on the same
    dataset with the same number of gradient steps (``joint_T`` defaults to ``T0 + T``) and
    the same initialization, each described by its final loss, excess over the stage-2 floor
    of its own ``W_ov``, ``1 - cos`` to ``W_ov*`` and ``W_kq*``, attention margin and training
    and test (unseen-sentence) accuracy (:func:`joint_columns`).

Every function here takes the generated dataset and the task's training settings and
returns a mapping of column name -> bool, float, str or None.
"""
from __future__ import annotations

import math

import numpy as np

#: The columns of a ``generalization`` row besides the parameters (docs/sweeps.md).
GENERALIZATION_COLUMNS = (
    "closure_100_from", "first_step_closure_100", "score_100_from", "first_step_score_100",
    "final_closure_accuracy", "final_score_accuracy", "final_labelled_accuracy", "final_agreement_with_kstar",
    "kstar_closure_accuracy", "kstar_score_accuracy", "counts.closure", "counts.score", "counts.undecided",
    "counts.no_label", "kstar_gap_violations", "max_chain", "n_checkpoints", "not_applicable",
)
#: Per run (prefix ``two_stage.`` or ``joint.``) the columns of a ``joint`` row (docs/sweeps.md).
JOINT_RUN_COLUMNS = (
    "steps", "stop_reason", "loss", "log10_loss", "excess", "log10_excess", "one_minus_cos_ov",
    "one_minus_cos_kq", "norm_ov", "norm_kq", "attention_margin", "train_accuracy",
    "test_closure_accuracy", "test_score_accuracy", "test_labelled_accuracy", "seconds",
)


def _f(v):
    """A float (None -> NaN)."""
    return math.nan if v is None else float(v)


def _gen_config(training, **run):
    from .generalize import GeneralizeConfig
    return GeneralizeConfig(n_test=training["n_test"], test_seed=training["test_seed"], **run)


def generalization_columns(ds, training):
    """The ``generalization`` report of one task: C11 along stage 2 of Algorithm 1.

    Parameters
    ----------
    ds : RealizableDataset
    training : dict
        ``T0``, ``T``, ``eta0``, ``eta``, ``init``, ``seed``, ``init_scale``, ``n_test``,
        ``test_seed`` (test sentences: lengths 2-6, half built to be closure-decided, as the
        audit's C11).

    Returns
    -------
    dict
        :data:`GENERALIZATION_COLUMNS` plus the resolved ``eta0`` and ``eta``. Steps are
        stage-2 steps (0 = the end of stage 1); ``closure_100_from`` is the first recorded
        step from which the closure accuracy is 1 at every later recorded step (NaN: not at
        step ``T``), exact to one step (:func:`refimpl.generalize.generalization_report`).
    """
    from .generalize import generalization_report
    from .train import TrainConfig
    run = {k: training[k] for k in ("T0", "T", "eta0", "eta", "init", "seed", "init_scale")}
    tc = TrainConfig(**run).resolved(ds.vocab_size)
    run.update(eta0=tc.eta0, eta=tc.eta)
    rep = generalization_report(ds, None, config=_gen_config(training, **run))
    final, counts = rep["final"], rep["counts"]
    out = {k: _f(rep[k]) for k in ("closure_100_from", "first_step_closure_100", "score_100_from",
                                   "first_step_score_100")}
    out.update({"final_closure_accuracy": _f(final["closure_accuracy"]),
                "final_score_accuracy": _f(final["score_accuracy"]),
                "final_labelled_accuracy": _f(final["labelled_accuracy"]),
                "final_agreement_with_kstar": _f(final["agreement_with_kstar"]),
                "kstar_closure_accuracy": _f(rep["kstar_limit"]["closure_accuracy"]),
                "kstar_score_accuracy": _f(rep["kstar_limit"]["score_accuracy"])})
    out.update({f"counts.{k}": _f(counts.get(k, 0)) for k in ("closure", "score", "undecided", "no_label")})
    out.update({"kstar_gap_violations": _f(rep["certified"]["violations"]),
                "max_chain": _f(rep["certified"]["max_chain"]), "n_checkpoints": float(len(rep["steps"])),
                "not_applicable": rep["not_applicable"], "eta0": float(tc.eta0), "eta": float(tc.eta)})
    return out


def _excess(ds, O, K):
    """``L(O, K) - L_floor(O)`` and its log10 (the stage-2 floor of ``O``, log space)."""
    from . import kernels
    from .floor import stage2_floor
    from .trajectory import ExcessLoss
    floor, _, vertex, details = stage2_floor(ds, O, return_details=True)
    phi = kernels.attention(K, ds.tokens, ds.lengths)
    z = kernels.logits(O, None, ds.tokens, ds.lengths, phi=phi)
    ex, log10_ex = ExcessLoss(ds, O, floor, vertex, details["log_loss"])(phi, z)
    return float(ex), float(log10_ex)


def _test_accuracy(ds, O, K, K_star, training):
    from .generalize import generalization_report
    rep = generalization_report(ds, (O, K), K_star=K_star, config=_gen_config(training))
    f = rep["final"]
    return {"test_closure_accuracy": _f(f["closure_accuracy"]), "test_score_accuracy": _f(f["score_accuracy"]),
            "test_labelled_accuracy": _f(f["labelled_accuracy"])}


def _last(traj, name):
    col = getattr(traj, name)
    return float(col[-1]) if len(col) else math.nan


def joint_columns(ds, training):
    """The ``joint`` report of one task: Algorithm 1 and the joint NGD baseline side by side.

    Both runs start from the same initialization (``init``, ``seed``, ``init_scale``). The
    two-stage run takes ``T0`` stage-1 steps at ``eta0`` and ``T`` stage-2 steps at ``eta``;
    the joint run takes ``joint_T`` steps (default ``T0 + T``: the same number of gradient
    steps) at ``joint_eta`` (default: the resolved ``eta``, the joint baseline's own default).

    Parameters
    ----------
    ds : RealizableDataset
    training : dict
        The keys of :data:`refimpl.sweep_spec.REPORT_KEYS` ``["joint"]``.

    Returns
    -------
    dict
        Per run (prefix ``two_stage.`` / ``joint.``) the :data:`JOINT_RUN_COLUMNS` at the last
        step: ``excess`` is over the stage-2 floor ``L_floor(W_ov)`` of that run's own ``W_ov``
        (for the joint run: its final ``W_ov``); ``test_*`` are accuracies on the unseen test
        sentences of the ``generalization`` report (same ``n_test``, ``test_seed`` for both).
        Also ``eta0``, ``eta``, ``joint_T`` and ``joint_eta`` resolved.
    """
    from .train import TrainConfig, train_joint, train_two_stage
    run = {k: training[k] for k in ("eta0", "eta", "init", "seed", "init_scale")}
    tc = TrainConfig(T0=training["T0"], T=training["T"], **run).resolved(ds.vocab_size)
    jT = training["T0"] + training["T"] if training["joint_T"] is None else training["joint_T"]
    jeta = tc.eta if training["joint_eta"] is None else training["joint_eta"]
    two = train_two_stage(ds, eta0=tc.eta0, eta=tc.eta, T0=tc.T0, T=tc.T, init=tc.init, seed=tc.seed,
                          init_scale=tc.init_scale, progress=False)
    if two.non_finite() is not None:
        from .train import NonFiniteTrainingError
        raise NonFiniteTrainingError(*two.non_finite())
    s1, s2 = two.stage1, two.stage2
    out = {"eta0": float(tc.eta0), "eta": float(tc.eta), "joint_T": float(jT), "joint_eta": float(jeta)}
    res = {"steps": float(tc.T0 + tc.T), "stop_reason": f"stage1 {two.stop_reason['stage1']}; "
                                                         f"stage2 {two.stop_reason['stage2']}",
           "loss": _last(s2, "loss"), "log10_loss": _last(s2, "log10_loss"), "excess": _last(s2, "excess_loss"),
           "log10_excess": _last(s2, "log10_excess"), "one_minus_cos_ov": _last(s1, "one_minus_cos"),
           "one_minus_cos_kq": _last(s2, "one_minus_cos"), "norm_ov": float(np.linalg.norm(two.W_ov)),
           "norm_kq": float(np.linalg.norm(two.W_kq)), "attention_margin": _last(s2, "attention_margin"),
           "train_accuracy": _last(s2, "train_accuracy"),
           "seconds": float(sum(two.runtime.values()))}
    res.update(_test_accuracy(ds, two.W_ov, two.W_kq, two.K_star, training))
    out.update({f"two_stage.{k}": res[k] for k in JOINT_RUN_COLUMNS})
    jr = train_joint(ds, eta=jeta, T=jT, init=tc.init, seed=tc.seed, init_scale=tc.init_scale, progress=False)
    if jr.stop_reason.startswith("non-finite"):
        from .train import NonFiniteTrainingError, stop_kind
        raise NonFiniteTrainingError("joint training", stop_kind(jr.stop_reason)[1])
    jt = jr.trajectory
    ex, log10_ex = _excess(ds, jr.W_ov, jr.W_kq)
    res = {"steps": float(jT), "stop_reason": jr.stop_reason, "loss": _last(jt, "loss"),
           "log10_loss": _last(jt, "log10_loss"), "excess": ex, "log10_excess": log10_ex,
           "one_minus_cos_ov": _last(jt, "one_minus_cos_ov"), "one_minus_cos_kq": _last(jt, "one_minus_cos_kq"),
           "norm_ov": _last(jt, "norm_ov"), "norm_kq": _last(jt, "norm_kq"),
           "attention_margin": _last(jt, "attention_margin"), "train_accuracy": _last(jt, "train_accuracy"),
           "seconds": float(jr.runtime)}
    res.update(_test_accuracy(ds, jr.W_ov, jr.W_kq, two.K_star, training))
    out.update({f"joint.{k}": res[k] for k in JOINT_RUN_COLUMNS})
    return out
