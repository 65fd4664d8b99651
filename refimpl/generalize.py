"""Generalization to unseen sentences through extended orders (claim C11, the paper's Section 6).

Definitions (our reading; ``docs/generalization.md`` works an example by hand):

``training relations`` of query q: ``x' <_q x*`` for every training sentence with
    query q, optimal token x* and other distinct token x' (:func:`refimpl.data.induced_relations`).
    These are exactly the constraints of ``W_kq*`` (docs/maxmargin.md). Supplied orders
    are *not* added: ``K*`` never sees them, so C6 says nothing about them.
``extended order`` of q: the transitive closure of the training relations of q.
``chain length`` k(x', x): the largest number of training relations on a chain
    ``x' < ... < x``; C6 gives ``K*[x, q] - K*[x', q] >= k(x', x)``.
``unseen`` sentence: its set of distinct tokens S (query included) is not a subset
    of the distinct tokens of any training sentence with the same query.
Each test sentence with query q and distinct tokens S is classified as

``closure``    S has a maximum x_hat under the extended order of q (every other
               token of S is below x_hat); the expected next token is n(x_hat);
``score``      not closure-decided, but ``K*[:, q]`` restricted to S has a unique
               strict maximum x_s (by more than ``tol``); expected next token n(x_s);
``undecided``  neither;
``no_label``   decided (by closure or score) but the deciding token is outside C,
               so no next token is defined. Excluded from every accuracy.

The trained model is compared with the expected next tokens and with the
``K*``-limit model (attention spread evenly over the positions of maximal
``K*`` score, i.e. ``softmax(c K*)`` as c -> infinity).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError
from .io import json_safe
from .kernels import attention
from .plots import figure_generalization
from .prediction import predict, predict_limit
from .shift import (KINDS, Classification, accuracies, classify, closure_gaps, is_unseen,  # noqa: F401
                    longest_chains, unseen_sentences)

__all__ = ["predict", "predict_limit", "longest_chains", "unseen_sentences", "is_unseen",
           "Classification", "classify", "accuracies", "GeneralizeConfig",
           "closure_gaps", "generalization_report", "figure_generalization", "run_generalize", "KINDS"]


@dataclass
class GeneralizeConfig:
    """Configuration of :func:`run_generalize` (training as :class:`refimpl.train.TrainConfig`)."""

    eta0: float | None = None  # stage-1 step size; None -> 0.2 / sqrt(d)
    eta: float | None = None  # stage-2 step size; None -> 0.05 / sqrt(d)
    T0: int = 2000  # stage-1 steps (the built-in experiment, ReproduceConfig)
    T: int = 20_000  # stage-2 steps (the built-in experiment, ReproduceConfig)
    init: str = "zero"  # "zero" or "random" initialization of both matrices
    init_scale: float = 0.1  # standard deviation of a random initialization
    seed: int = 0  # seed of a random initialization
    n_test: int = 2000  # number of unseen test sentences
    min_len: int = 2  # shortest test sentence
    max_len: int = 6  # longest test sentence
    test_seed: int = 0  # seed of the test sentences
    targeted: float = 0.5  # fraction of test sentences built to be closure-decided
    dense_limit: int = 100  # evaluate every stage-2 step when T <= dense_limit
    n_points: int = 60  # otherwise about this many checkpoints (geometric + linear), refined near 100%
    tol: float = 1e-9  # score ties: a K* maximum must win by more than tol

    @classmethod
    def from_kwargs(cls, **kwargs):
        """Build from keyword arguments; an unknown key raises ConfigError naming it."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ConfigError(f"unknown generalize option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**kwargs)


def _train_kwargs(cfg):
    return dict(eta0=cfg.eta0, eta=cfg.eta, T0=cfg.T0, init=cfg.init, seed=cfg.seed, init_scale=cfg.init_scale)


def _stage2_path(ds, O, K0, eta, steps, t0=0):
    """K_t at each of the sorted ``steps`` (all >= t0) of stage 2 with W_ov = O fixed, K_{t0} = K0.

    One stage-2 replay from ``K_{t0}`` to the last step (NGD has no state besides the
    iterate), keeping copies of the iterates at ``steps``. A replay that stops at an exactly
    zero gradient (as the trainer does) leaves K where it is: later steps get that iterate. A
    non-finite stop raises :class:`refimpl.train.NonFiniteTrainingError` naming the step.
    """
    from .train import NON_FINITE, ZERO_GRADIENT, NonFiniteTrainingError, stage2_replay, stop_kind
    wanted = {int(s) - int(t0) for s in steps}
    kept, last = {}, [None]

    def keep(t, K):
        last[0] = K                    # the trainer's buffer: still K_t when the replay stops at t
        if t in wanted:
            kept[t] = K.copy()

    reason = stage2_replay(ds, O, np.asarray(K0, dtype=np.float64), eta, max(wanted, default=0), keep)
    kind, stop = stop_kind(reason)
    if kind == NON_FINITE:
        raise NonFiniteTrainingError("stage 2", int(t0) + stop)
    if kind == ZERO_GRADIENT:
        for t in wanted:
            if t > stop:
                kept[t] = last[0].copy()
    return [kept[int(s) - int(t0)] for s in steps]


def _resolve_run(ds, result_or_weights, cfg):
    """The run to evaluate, for the forms accepted by :func:`generalization_report`:
    ``(O, checkpoints, eta, provenance)`` where ``checkpoints`` is a list of (step, K) and
    ``eta`` is the stage-2 step size to train further between checkpoints (None: fixed checkpoints)."""
    from .train import _init_pair, train_two_stage
    from .trajectory import record_steps
    if isinstance(result_or_weights, tuple) and len(result_or_weights) == 2:
        O, Ks = result_or_weights
        if isinstance(Ks, np.ndarray):
            return np.asarray(O, dtype=np.float64), [(None, Ks)], None, {"source": "weights"}
        return (np.asarray(O, dtype=np.float64), [(int(s), np.asarray(K)) for s, K in Ks], None,
                {"source": "checkpoints"})
    if result_or_weights is None:
        start = train_two_stage(ds, T=0, progress=False, **_train_kwargs(cfg))
        if start.non_finite() is not None:
            from .train import NonFiniteTrainingError
            raise NonFiniteTrainingError(*start.non_finite())
        O, K0, eta = start.W_ov, start.W_kq, start.config.eta
        T, prov = cfg.T, {"source": "trained", "T0": cfg.T0, "T": cfg.T}
    else:
        rc = result_or_weights.config                  # resolved: eta and d filled in
        if rc.init == "given":
            raise ConfigError("cannot replay stage 2 of a run with init='given'; pass "
                              "(W_ov, [(step, W_kq), ...]) checkpoints instead")
        # stage 1's output is in the result; K_0 is the seeded initialization
        O, K0, eta = result_or_weights.W_ov, _init_pair(rc, ds.vocab_size, None, None)[1], rc.eta
        T, prov = rc.T, {"source": "replayed TrainResult", "T0": rc.T0, "T": rc.T}
    steps = record_steps(T, cfg.dense_limit, cfg.n_points).tolist()
    Ks = _stage2_path(ds, O, K0, eta, steps)
    if result_or_weights is not None:
        prov["replay_max_abs_deviation"] = float(np.max(np.abs(Ks[-1] - result_or_weights.W_kq)))
    prov["eta"] = eta
    return O, list(zip(steps, Ks)), eta, prov


SERIES = ("closure_accuracy", "score_accuracy", "labelled_accuracy", "agreement_with_kstar",
          "closure_attention", "score_attention")


def generalization_report(ds, result_or_weights=None, *, sentences=None, K_star=None, config=None):
    """Measure C11 on unseen sentences along stage 2 of Algorithm 1.

    Parameters
    ----------
    ds : RealizableDataset
    result_or_weights : one of
        ``None``                          train with ``config`` (stage 1, then stage 2 with checkpoints);
        a ``TrainResult``                 its stage 2 is replayed with checkpoints (zero/random init);
        ``(W_ov, W_kq)``                  one evaluation of given weights (step None);
        ``(W_ov, [(step, W_kq), ...])``   given checkpoints.
    sentences : test sentences, or None for ``unseen_sentences(ds, config.n_test, ...)``
    K_star : (M, M) or None            W_kq*; computed when None
    config : GeneralizeConfig or None

    Checkpoints (trained or replayed runs) follow ``record_steps(T, dense_limit, n_points)``;
    when that skips steps, the gap after the last checkpoint below 100% closure (and score)
    accuracy is refined to every step, so ``closure_100_from`` is exact: the first step t such
    that every evaluated step >= t is at 100%, with no step skipped between the last failure
    and t. (Between coarse checkpoints further back, a brief earlier visit to 100% could be
    missed by ``first_step_closure_100``.)

    Returns
    -------
    dict (JSON-serializable; NaN -> None): ``counts`` per kind; ``certified`` (closure-decided
    sentences whose K* gap falls short of the chain length: ``violations`` must be 0);
    ``kstar_limit`` (accuracy of the K*-limit model with the trained W_ov); per evaluated step
    the lists ``steps``, ``closure_accuracy``, ``score_accuracy``, ``labelled_accuracy``,
    ``agreement_with_kstar``, ``closure_attention`` / ``score_attention`` (mean attention on
    x_hat); ``first_step_closure_100`` (first evaluated step at 100%), ``closure_100_from``, and
    the same two for score-decided sentences; ``final`` (the last step's values);
    ``not_applicable``: None, or why C11 does not apply to ``ds`` (no sentence has two distinct
    tokens, e.g. "every sentence has length 1: attention is constant").
    Raises :class:`refimpl.train.NonFiniteTrainingError` if training stops at a non-finite value.
    """
    cfg = config or GeneralizeConfig()
    if K_star is None:
        from .maxmargin import w_kq_star
        K_star, _ = w_kq_star(ds)
    if sentences is None:
        sentences = unseen_sentences(ds, cfg.n_test, cfg.min_len, cfg.max_len, cfg.test_seed, cfg.targeted)
    cls = classify(ds, sentences, K_star, tol=cfg.tol)
    O, checkpoints, eta, prov = _resolve_run(ds, result_or_weights, cfg)
    n_sent = len(cls.lengths)               # 0 when the dataset leaves no unseen sentence to build
    ref = predict_limit(O, K_star, (cls.tokens, cls.lengths), tol=cfg.tol)[0] if n_sent else cls.expected
    at_hat = cls.tokens == cls.x_hat[:, None]                        # (N, L): positions of x_hat

    def evaluate(K):
        if not n_sent:
            return (float("nan"),) * len(SERIES)
        pred, _ = predict(O, K, (cls.tokens, cls.lengths))
        acc = accuracies(cls, pred, ref)
        phi = attention(K, cls.tokens, cls.lengths)
        mass = (phi * at_hat).sum(axis=1)                              # (N,)
        att = {k: float(mass[cls.kind == k].mean()) if np.any(cls.kind == k) else float("nan")
               for k in ("closure", "score")}
        return (acc["closure"], acc["score"], acc["labelled"], acc["agreement"],
                att["closure"], att["score"])

    rows = {s: evaluate(K) for s, K in checkpoints}                  # step -> SERIES values
    steps = [s for s, _ in checkpoints]
    if eta is not None:
        refined = []
        for i in (0, 1):                                              # closure, score accuracy
            fails = [j for j, s in enumerate(steps) if rows[s][i] < 1.0]
            if fails and fails[-1] + 1 < len(steps) and steps[fails[-1] + 1] > steps[fails[-1]] + 1:
                j = fails[-1]                                         # every step in (steps[j], steps[j+1])
                fine = list(range(steps[j] + 1, steps[j + 1]))
                for s, K in zip(fine, _stage2_path(ds, O, checkpoints[j][1], eta, fine, t0=steps[j])):
                    rows[s] = evaluate(K)
                refined.append([fine[0], fine[-1]])
        prov["refined_steps"] = refined
        steps = sorted(rows)
    series = {name: [rows[s][i] for s in steps] for i, name in enumerate(SERIES)}
    reach = {}
    for kind in ("closure", "score"):
        acc = series[f"{kind}_accuracy"]
        reach[f"first_step_{kind}_100"] = next((s for s, a in zip(steps, acc) if a == 1.0), None)
        stays = None
        for s, a in zip(reversed(steps), reversed(acc)):
            if a != 1.0:
                break
            stays = s
        reach[f"{kind}_100_from"] = stays
    gaps = closure_gaps(cls, K_star)
    finite = gaps[np.isfinite(gaps)]
    kstar_acc = accuracies(cls, ref)
    from .trajectory import attention_inert
    report = {
        "claim": "C11",
        "not_applicable": attention_inert(ds),   # why C11 cannot apply (attention is inert), or None
        "n_test": int(len(cls.lengths)),
        "counts": cls.counts(),
        "run": prov,
        "certified": {
            "closure_sentences": int(np.sum(cls.decided_by == "closure")),
            "violations": int(np.sum(finite < -1e-9)),
            "min_gap_minus_chain": float(finite.min()) if len(finite) else float("nan"),
            "max_chain": int(cls.chain.max(initial=0)),
        },
        "kstar_limit": {"closure_accuracy": kstar_acc["closure"], "score_accuracy": kstar_acc["score"]},
        "steps": steps,
        **series,
        **reach,
        "final": {"step": steps[-1], **{k: v[-1] for k, v in series.items()}},
    }
    return json_safe(report)


def run_generalize(ds, out_dir=None, **config):
    """Train on ``ds`` and measure C11 (:func:`generalization_report`); the ``refimpl generalize`` command.

    ``config`` : fields of :class:`GeneralizeConfig` (unknown keys raise ConfigError). With
    ``out_dir``, writes ``generalization.png``, ``generalization.json`` (the report) and
    ``config.json`` (the resolved configuration: step sizes filled in) there, as one
    :class:`refimpl.outputs.OutputSet` opened before training (``out_dir`` may also be a
    set the caller opened). Returns the
    summary dict (JSON-serializable): the report without the per-checkpoint lists, plus the
    resolved configuration.
    """
    from contextlib import nullcontext

    from .io import json_text
    from .outputs import open_output_set
    from .plots import generalization_png
    from .train import TrainConfig
    cfg = GeneralizeConfig.from_kwargs(**config)
    train_cfg = TrainConfig(T=cfg.T, **_train_kwargs(cfg)).resolved(ds.vocab_size)   # validates, fills steps
    cfg = dataclasses.replace(cfg, eta0=train_cfg.eta0, eta=train_cfg.eta)
    with nullcontext() if out_dir is None else open_output_set(out_dir) as out:   # before training
        report = generalization_report(ds, None, config=cfg)
        summary = {k: v for k, v in report.items() if k not in SERIES and k != "steps"}
        summary["n_checkpoints"] = len(report["steps"])
        summary["config"] = dataclasses.asdict(cfg)
        if out is not None:
            out.write_bytes("generalization.png", generalization_png(report))
            out.write_text("generalization.json", json_text(report))
            out.write_text("config.json", json_text(dataclasses.asdict(cfg)))
            summary["outputs"] = ["generalization.json", "generalization.png", "config.json"]
    return summary
