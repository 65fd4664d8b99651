"""Algorithm 1 (two-stage normalized gradient descent) and the joint baseline (docs/model.md, docs/theory.md).

Stage 1 trains the feed-forward layer on the collocation loss ``L0``:
``O <- O - eta0 * G / ||G||_F`` for ``T0`` steps. Stage 2 fixes ``O`` at the
stage-1 output (as it is, no rescaling) and trains attention on the whole
dataset: ``K <- K - eta * G_K / ||G_K||_F`` for ``T`` steps. Both work in token
coordinates ``O = E^T W_ov E``, ``K = E^T W_kq E`` (M x M) with ``E`` the first
M columns of ``I_d``, so the returned weights are the embedding-space weights
restricted to the span of ``E`` (the only part that ever receives a gradient).

Losses and gradients come from :mod:`refimpl.kernels`, which return the
gradient divided by a common positive factor (``G = exp(log_scale) * Gs``); the
normalized direction ``Gs / ||Gs||`` is therefore exact even after the loss
underflows float64, and training keeps moving for any number of steps. A
gradient that is exactly zero ends the stage with the reason recorded in
``stop_reason``; it never produces a NaN. A loss, gradient or iterate norm that
becomes inf or NaN (only a huge step size does that: steps have length eta)
ends the stage with ``"non-finite at step t"``; stage 2 is then skipped after a
non-finite stage 1. No NumPy floating-point warning escapes the training loop.

The parameter update uses compensated (Kahan) summation: the iterate after t
steps is the exactly rounded sum of the t steps instead of carrying up to
``t * 2^-53`` relative rounding error, which is what makes the C2 check
``O_t = eta0 t hat O*`` hold to ~1e-16 relative at ``t = 10^5`` (about 1e-12 without it).

Metrics are computed only at the recorded steps (:func:`~refimpl.trajectory.record_steps`),
by compiled passes (:mod:`refimpl.kernels_metrics`): one over the sentences and a few over
the M x M iterates, with no (N, M) array.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from . import kernels
from .budget import check_bytes, check_training
from .data import ensure_valid, require_dataset  # noqa: F401 (require_dataset: also used from here)
from .errors import ConfigError
from .maxmargin import stage2_floor, w_kq_star, w_ov_star
from .progress import Progress
from .kernels_math import sumsq4
from .kernels_metrics import matrix_metrics
from .trajectory import (JOINT_COLUMNS, STAGE1_COLUMNS, STAGE2_COLUMNS, ExcessLoss, LogitAccuracy, Trajectory,
                         _stage1_metrics, _stage2_metrics, attention_constraints, attention_margin, record_steps)

__all__ = ["TrainConfig", "TrainResult", "JointResult", "train_two_stage", "train_joint",
           "run_two_stage", "stage1_replay", "stage2_replay", "stop_kind", "non_finite_stop", "NonFiniteTrainingError",
           "COMPLETED", "ZERO_GRADIENT", "NON_FINITE",
           "DEFAULT_T0", "DEFAULT_T", "DEFAULT_ETA0_SCALE", "DEFAULT_ETA_SCALE", "DEFAULT_INIT"]

INITS = ("zero", "random", "given")

# The defaults of every entry point: the paper's experiment (Figure 2, docs/reproduce.md).
# train_two_stage, train_joint, TrainConfig, ReproduceConfig and the command line all read
# these, so a library call without arguments trains exactly as `refimpl train` does.
DEFAULT_T0 = 2000            # stage-1 steps
DEFAULT_T = 20_000           # stage-2 steps (and joint-baseline steps)
DEFAULT_ETA0_SCALE = 0.2     # stage-1 step size eta0 = 0.2 / sqrt(d)
DEFAULT_ETA_SCALE = 0.05     # stage-2 (and joint) step size eta = 0.05 / sqrt(d)
DEFAULT_INIT = "zero"        # zero initialization of both matrices


# ============================================================== configuration
@dataclass
class TrainConfig:
    """Configuration of Algorithm 1 (and of the joint baseline, which uses ``eta`` and ``T``).

    The defaults are the paper's experiment (docs/reproduce.md), the same as
    :func:`train_two_stage`, :class:`refimpl.reproduce.ReproduceConfig` and ``refimpl train``.

    Parameters
    ----------
    eta0 : float > 0 or None, default None
        Stage-1 step size; None -> ``0.2 / sqrt(d)``.
    eta : float > 0 or None, default None
        Stage-2 (and joint) step size; None -> ``0.05 / sqrt(d)``.
    T0 : int >= 0, default 2000
        Number of stage-1 steps.
    T : int >= 0, default 20000
        Number of stage-2 (or joint) steps.
    d : int >= M or None, default None
        Embedding width (``E`` = the first M columns of ``I_d``); None -> M. Sets the
        default step sizes.
    init : {"zero", "random", "given"}, default "zero"
        Initialization: zeros, i.i.d. normal entries of standard deviation
        ``init_scale``, or the matrices ``W_ov0`` / ``W_kq0`` passed to the trainer.
    init_scale : float >= 0, default 0.1
        Standard deviation of each entry of a random initialization.
    seed : int >= 0, default 0
        Seed of a random initialization.
    record_dense_limit : int >= 0, default 2000
        Record every step when a stage has at most this many steps.
    record_points : int >= 2, default 2000
        Otherwise about this many recorded steps (geometric + linear).

    Returns
    -------
    TrainConfig
        Not resolved: call :meth:`resolved` to validate it and fill in ``d``, ``eta0``, ``eta``.

    Examples
    --------
    >>> from refimpl import TrainConfig
    >>> cfg = TrainConfig().resolved(20)
    >>> cfg.T0, cfg.T, round(cfg.eta0, 6), round(cfg.eta, 6)
    (2000, 20000, 0.044721, 0.01118)
    """

    eta0: float | None = None  # stage-1 step size; None -> 0.2 / sqrt(d)
    eta: float | None = None  # stage-2 (and joint) step size; None -> 0.05 / sqrt(d)
    T0: int = DEFAULT_T0  # number of stage-1 steps
    T: int = DEFAULT_T  # number of stage-2 (or joint) steps
    d: int | None = None  # embedding width, E = first M columns of I_d; None -> M; sets the default steps
    init: str = DEFAULT_INIT  # "zero", "random" (i.i.d. normal entries) or "given" (W_ov0 / W_kq0 passed)
    init_scale: float = 0.1  # standard deviation of each entry of a random initialization
    seed: int = 0  # seed of the random initialization
    record_dense_limit: int = 2000  # record every step when a stage has at most this many steps
    record_points: int = 2000  # otherwise about this many recorded steps (geometric + linear)

    def resolved(self, M):
        """A validated copy with ``d``, ``eta0`` and ``eta`` filled in for vocabulary size ``M``.

        Raises ConfigError naming the field and its value.
        """
        d = M if self.d is None else _int_field("d", self.d, M)
        eta0 = DEFAULT_ETA0_SCALE / math.sqrt(d) if self.eta0 is None else _positive_field("eta0", self.eta0)
        eta = DEFAULT_ETA_SCALE / math.sqrt(d) if self.eta is None else _positive_field("eta", self.eta)
        _int_field("T0", self.T0, 0)
        _int_field("T", self.T, 0)
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}; got init={self.init!r}")
        if not _is_real(self.init_scale) or not math.isfinite(self.init_scale) or self.init_scale < 0:
            raise ConfigError(f"init_scale must be a finite number >= 0; got init_scale={self.init_scale!r}")
        _int_field("seed", self.seed, 0)
        _int_field("record_dense_limit", self.record_dense_limit, 0)
        _int_field("record_points", self.record_points, 2)
        for name, steps in (("T0", int(self.T0)), ("T", int(self.T))):
            rows = steps + 1 if steps <= self.record_dense_limit else int(self.record_points) + 2
            check_bytes(_RECORD_ROW_BYTES * rows, f"recording {rows} trajectory rows of a stage of {name}={steps} "
                        f"steps (record_dense_limit={self.record_dense_limit}, "
                        f"record_points={self.record_points})")
        return replace(self, d=int(d), eta0=float(eta0), eta=float(eta), T0=int(self.T0), T=int(self.T),
                       seed=int(self.seed), init_scale=float(self.init_scale))

    def to_dict(self):
        """Plain-Python dict of the fields (JSON-serializable)."""
        return asdict(self)


# bytes per recorded row: the widest stage's float64 columns plus the schedule's int64
# temporaries (logspace, linspace, their union), rounded up
_RECORD_ROW_BYTES = 8 * (len(JOINT_COLUMNS) + len(STAGE1_COLUMNS) + 8)


def _is_real(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _positive_field(name, v):
    if not _is_real(v) or not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{name} must be a finite number > 0; got {name}={v!r}")
    return float(v)


def _int_field(name, v, lo):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}; got {name}={v!r}")
    return int(v)


def _matrix(name, W, M):
    W = np.asarray(W, dtype=np.float64)
    if W.shape != (M, M) or not np.all(np.isfinite(W)):
        raise ConfigError(f"{name} must be a finite {M} x {M} matrix (token coordinates); "
                          f"got shape {W.shape}")
    return np.array(W, dtype=np.float64, order="C")


# ==================================================================== results
@dataclass
class TrainResult:
    """Output of Algorithm 1. Matrices are in token coordinates, shape (M, M)."""

    W_ov: np.ndarray  # O after stage 1 (or the user-fixed W_ov)
    W_kq: np.ndarray  # K after stage 2
    stage1: Trajectory  # stage-1 rows (no rows when stage 1 is skipped)
    stage2: Trajectory  # stage-2 rows
    stop_reason: dict  # {"stage1": ..., "stage2": ...}: "completed", "zero_gradient at step t",
    #                    "non-finite at step t", "skipped (W_ov given)", "skipped (stage 1 non-finite)"
    config: TrainConfig  # the resolved configuration
    O_star: np.ndarray  # W_ov*, the max-margin solution (docs/maxmargin.md)
    K_star: np.ndarray  # W_kq*
    gamma_ov: float  # 1 / ||W_ov*||_F
    gamma_kq: float  # 1 / ||W_kq*||_F (inf when there are no attention constraints)
    floor: float  # L_floor(W_ov), the stage-2 floor
    log10_floor: float  # log10 of the floor
    vertex_optimal: bool  # whether the floor is the perfect-attention loss for every sentence
    certificates: dict = field(default_factory=dict)  # {"W_ov*": Certificate, "W_kq*": Certificate} (checked)
    runtime: dict = field(default_factory=dict)  # seconds per stage

    def non_finite(self):
        """``(stage, step)`` where training stopped at a non-finite value, e.g. ``("stage 2", 1)``;
        None when it did not."""
        return non_finite_stop(self.stop_reason)


class NonFiniteTrainingError(ArithmeticError):
    """Training reached a non-finite value (a replay that cannot continue). ``stage`` ("stage 1"
    or "stage 2") and ``step`` say where; the message names both."""

    def __init__(self, stage, step):
        self.stage, self.step = stage, int(step)
        super().__init__(f"training stopped at a non-finite value (inf or NaN) in {stage} at step {step}; "
                         "the step size is too large for float64")


def non_finite_stop(stop_reason):
    """``(stage, step)`` of the first stage of a ``stop_reason`` dict that stopped at a non-finite
    value (``("stage 1", t)`` or ``("stage 2", t)``), else None. Accepts ``summary.json``'s dict."""
    for key in ("stage1", "stage2"):
        kind, step = stop_kind(str((stop_reason or {}).get(key, "")))
        if kind == NON_FINITE:
            return f"stage {key[-1]}", step
    return None


@dataclass
class JointResult:
    """Output of the joint single-stage NGD baseline (token coordinates)."""

    W_ov: np.ndarray  # O_T
    W_kq: np.ndarray  # K_T
    trajectory: Trajectory  # rows of JOINT_COLUMNS
    stop_reason: str  # "completed", "zero_gradient at step t" or "non-finite at step t"
    config: TrainConfig  # the resolved configuration (eta, T used)
    runtime: float  # seconds


# ==================================================================== update
def _unit(W):
    n = float(np.linalg.norm(W))
    return (W / n, n) if n > 0 else (None, 0.0)


class _Compensated:
    """``W <- W - step * D`` with Kahan compensation; ``W`` is always the current iterate."""

    def __init__(self, W0):
        self.W = np.array(W0, dtype=np.float64, order="C")
        self._c = np.zeros_like(self.W)
        self._t = np.empty_like(self.W)

    def step(self, D, step):
        # W, c and t are float64 C-contiguous (M, M) from __init__, and every direction is a
        # fresh float64 (M, M) array of the same M: the unchecked loop is safe here.
        kernels._compensated_step(self.W, self._c, np.ascontiguousarray(D), float(step), self._t)
        self.W, self._t = self._t, self.W


# ==================================================================== progress
def _Progress(total, progress, desc):
    """The trainer's progress (:class:`refimpl.progress.Progress`): a tqdm bar on a terminal,
    a line every ~10 s on another stderr, nothing with progress=False."""
    return Progress(total, desc, progress)


_PROGRESS_CHUNK = 512  # steps between progress-bar updates


# ==================================================================== stages
# Stop reasons (``TrainResult.stop_reason`` values are these, "<reason> at step t", or "skipped (...)").
COMPLETED, ZERO_GRADIENT, NON_FINITE = "completed", "zero_gradient", "non-finite"
# Below this Frobenius norm no entry of an iterate, no Kahan term and no sum of squares
# (||W||^2 < 1e300) can overflow; NGD steps have length eta, so ||W_t|| <= ||W_0|| + eta t
# and the iterates need an explicit finiteness check only once that bound passes it.
_NORM_SAFE = 1e150


def _fro(W):
    """||W||_F by a compiled fixed-order sum: np.linalg.norm calls a threaded BLAS dot whose
    pool then spins against the kernel's threads for the first steps of the loop."""
    return math.sqrt(sumsq4(W))


def _norms_finite(Ws):
    return all(math.isfinite(_fro(W)) for W in Ws)


def stop_kind(reason):
    """``(kind, step)`` of a stop reason: ``("completed", None)``, ``("zero_gradient", t)``,
    ``("non-finite", t)`` or ``("skipped", None)``."""
    head, sep, step = reason.partition(" at step ")
    if sep:
        return head, int(step)
    return ("skipped", None) if reason.startswith("skipped") else (reason, None)


def _ngd(iterates, eta, T, sched, evaluate, record, bar, base, callback=None):
    """Normalized gradient descent on one or two matrices (both stages and the joint baseline).

    iterates : list of _Compensated, updated in place, ``W <- W - eta * D``
    evaluate : ``(*W) -> (loss, log10_loss, directions thunk)``; the thunk returns
               ``(list of D, norm)`` with ``D = Gs / ||Gs||`` over all matrices jointly
    record   : ``(t, *W, loss, log10_loss)`` appends a trajectory row at the steps in ``sched``
    callback : ``(t, *W)`` called at every step t = 0..T before the step from it
    Returns the stop reason: "completed", "zero_gradient at step t" (the gradient is exactly
    zero at K_t) or "non-finite at step t" (the loss or the gradient norm at step t is inf or
    NaN, or ``||W_t||_F`` is not representable); the stopping step is recorded.

    Per step this adds only scalar checks to the kernel call: the loss and the gradient norm
    the kernel already returns, and the certified radius ``||W_0|| + eta t`` (the norms are
    computed only once it exceeds ``_NORM_SAFE``, which takes a huge eta). NumPy floating-point
    warnings are silenced inside the loop: a non-finite value is reported as a stop reason.
    """
    radius = max(_fro(it.W) for it in iterates)
    sched = np.asarray(sched, dtype=np.int64).tolist()   # Python ints: an int compare per step
    k = 0
    with np.errstate(all="ignore"):
        for t in range(T + 1):
            Ws = [it.W for it in iterates]
            if callback is not None:
                callback(t, *Ws)
            loss, log10_loss, directions = evaluate(*Ws)
            recorded = k < len(sched) and sched[k] == t
            if recorded:
                record(t, *Ws, loss, log10_loss)
                k += 1
            stop = None
            if not math.isfinite(loss) or (radius > _NORM_SAFE and not _norms_finite(Ws)):
                stop = NON_FINITE
            elif t == T:
                break
            else:
                Ds, nrm = directions()
                if nrm == 0.0:
                    stop = ZERO_GRADIENT
                elif not nrm < math.inf:       # NaN or inf
                    stop = NON_FINITE
            if stop is not None:
                if not recorded:
                    record(t, *Ws, loss, log10_loss)
                return f"{stop} at step {t}"
            for it, D in zip(iterates, Ds):
                it.step(D, eta)
            radius += eta
            if t % _PROGRESS_CHUNK == 0:
                bar.update(base + t)
    return COMPLETED


def _stage1(ds, cfg, O0, O_hat, bar, base):
    xs, ys = ds.colloc_tokens, ds.colloc_next
    sched = record_steps(cfg.T0, cfg.record_dense_limit, cfg.record_points)
    traj = Trajectory(STAGE1_COLUMNS, len(sched) + 1)
    it = _Compensated(O0)
    step_direction = kernels.Stage1Direction(xs, ys, len(O0))

    def evaluate(O):
        D, nrm, _, loss, log10_loss = step_direction.direction(O)
        return loss, log10_loss, lambda: ([D], nrm)

    # checked once here, so each recorded step calls the metrics unchecked (its O is the
    # float64 (M, M) iterate itself)
    O0c = np.ascontiguousarray(O0, dtype=np.float64)
    xs_c, ys_c = (np.ascontiguousarray(a, dtype=np.int64) for a in (xs, ys))

    def record(t, O, loss, log10_loss):
        traj.append(step=t, loss=loss, log10_loss=log10_loss, **_stage1_metrics(O, O0c, O_hat, xs_c, ys_c))

    reason = _ngd([it], cfg.eta0, cfg.T0, sched, evaluate, record, bar, base)
    return it.W, traj.finish(), reason


def _stage2(ds, cfg, O, K0, K_hat, excess, bar, base, callback=None):
    lengths, y = ds.lengths, ds.next_tokens
    constraints = attention_constraints(ds)
    sched = record_steps(cfg.T, cfg.record_dense_limit, cfg.record_points)
    traj = Trajectory(STAGE2_COLUMNS, len(sched) + 1)
    it = _Compensated(K0)
    step_direction = kernels.Stage2Direction(O, ds.flat_tokens, lengths, y)

    def evaluate(K):
        D, nrm, _, loss, log10_loss = step_direction.direction(K)
        return loss, log10_loss, lambda: ([D], nrm)

    K0c = np.ascontiguousarray(K0, dtype=np.float64)   # K_hat, excess, constraints: made here

    def record(t, K, loss, log10_loss):
        # compiled, no (N, M) array: a few passes over K and one over the sentences
        traj.append(step=t, loss=loss, log10_loss=log10_loss, **_stage2_metrics(K, K0c, K_hat, excess, constraints))

    reason = _ngd([it], cfg.eta, cfg.T, sched, evaluate, record, bar, base, callback)
    return it.W, traj.finish(), reason


def stage2_replay(ds, O, K0, eta, T, callback):
    """Stage 2 of Algorithm 1 again, and nothing else: W_ov = O fixed, K from ``K0``, step
    size ``eta``, calling ``callback(t, K_t)`` for t = 0..T.

    The same per-step path as :func:`train_two_stage` (Stage2Direction, Kahan update, the
    same stops), so the iterates are the trainer's bit for bit; no max-margin solves, floor or
    metrics. ``ds`` must be valid; O, K0 : float64 (M, M).

    Returns
    -------
    str
        The stop reason, as the trainer's: "completed", "zero_gradient at step t" (K_t is
        the last iterate; callback saw t) or "non-finite at step t" (callback saw t).
    """
    direction = kernels.Stage2Direction(O, ds.flat_tokens, ds.lengths, ds.next_tokens)
    return _replay(direction, K0, eta, T, callback)


def stage1_replay(ds, O0, eta0, T0, callback):
    """Stage 1 of Algorithm 1 again, and nothing else: W_ov from ``O0``, step size ``eta0``,
    calling ``callback(t, O_t)`` for t = 0..T0 (the trainer's per-step path, as
    :func:`stage2_replay`, so the iterates are the trainer's bit for bit).

    Returns
    -------
    str
        The stop reason, as in :func:`stage2_replay`.
    """
    direction = kernels.Stage1Direction(ds.colloc_tokens, ds.colloc_next, ds.vocab_size)
    return _replay(direction, O0, eta0, T0, callback)


def _replay(direction, W0, eta, T, callback):
    """NGD from ``W0`` with ``direction.direction(W)`` (a Stage1Direction or Stage2Direction):
    the trainer's loop (:func:`_ngd`: Kahan update, stops) with nothing recorded;
    ``callback(t, W_t)`` for every step."""

    def evaluate(W):
        D, nrm, _, loss, log10_loss = direction.direction(W)
        return loss, log10_loss, lambda: ([D], nrm)

    return _ngd([_Compensated(W0)], eta, T, (), evaluate, lambda *row: None, _Progress(T, False, ""), 0,
                callback)


def _init_pair(cfg, M, W_ov0, W_kq0):
    if cfg.init != "given" and (W_ov0 is not None or W_kq0 is not None):
        raise ConfigError(f"W_ov0 / W_kq0 were passed but init={cfg.init!r}; use init='given'")
    if cfg.init == "zero":
        return np.zeros((M, M)), np.zeros((M, M))
    if cfg.init == "random":
        rng = np.random.default_rng(cfg.seed)
        return cfg.init_scale * rng.standard_normal((M, M)), cfg.init_scale * rng.standard_normal((M, M))
    if W_ov0 is None and W_kq0 is None:
        raise ConfigError("init='given' needs W_ov0 and/or W_kq0 (a missing one starts at zero)")
    O0 = np.zeros((M, M)) if W_ov0 is None else _matrix("W_ov0", W_ov0, M)
    K0 = np.zeros((M, M)) if W_kq0 is None else _matrix("W_kq0", W_kq0, M)
    return O0, K0


def run_two_stage(ds, config, *, W_ov0=None, W_kq0=None, W_ov=None, progress=None, stage2_callback=None):
    """Algorithm 1 with a :class:`TrainConfig`; see :func:`train_two_stage`."""
    require_dataset(ds, "run_two_stage")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"run_two_stage expects a TrainConfig as config, got {type(config).__name__}")
    ensure_valid(ds)
    check_training(ds)
    M = ds.vocab_size
    cfg = config.resolved(M)
    O0, K0 = _init_pair(cfg, M, W_ov0, W_kq0)
    if W_ov is not None:
        W_ov = _matrix("W_ov", W_ov, M)
        if W_ov0 is not None:
            raise ConfigError("pass either W_ov (a fixed stage-2 W_ov, skipping stage 1) or W_ov0, not both")
    T0 = 0 if W_ov is not None else cfg.T0
    bar = _Progress(T0 + cfg.T, progress, "W_ov*")
    runtime = {}
    try:
        O_star, ov_cert = w_ov_star(ds)
        bar.set_description("W_kq*")
        K_star, kq_cert = w_kq_star(ds)
        O_hat, n_ov = _unit(O_star)
        K_hat, n_kq = _unit(K_star)
        bar.set_description("stage 1")
        t0 = time.perf_counter()
        if W_ov is None:
            O, traj1, reason1 = _stage1(ds, cfg, O0, O_hat, bar, 0)
        else:
            O, traj1, reason1 = W_ov, Trajectory(STAGE1_COLUMNS, 0).finish(), "skipped (W_ov given)"
        runtime["stage1"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if stop_kind(reason1)[0] == NON_FINITE:      # no floor or stage 2 from a non-finite W_ov
            floor, log10_floor, vertex = math.nan, math.nan, np.zeros(ds.n_sentences, dtype=bool)
            K, traj2, reason2 = K0, Trajectory(STAGE2_COLUMNS, 0).finish(), "skipped (stage 1 non-finite)"
        else:
            bar.set_description("stage-2 floor")
            floor, log10_floor, vertex, details = stage2_floor(ds, O, return_details=True)
            excess = ExcessLoss(ds, O, floor, vertex, details["log_loss"])
            bar.set_description("stage 2")
            K, traj2, reason2 = _stage2(ds, cfg, O, K0, K_hat, excess, bar, T0, stage2_callback)
        runtime["stage2"] = time.perf_counter() - t0
    finally:
        bar.close()
    return TrainResult(
        W_ov=O, W_kq=K, stage1=traj1, stage2=traj2, stop_reason={"stage1": reason1, "stage2": reason2},
        config=cfg, O_star=O_star, K_star=K_star, gamma_ov=1.0 / n_ov if n_ov > 0 else math.inf,
        gamma_kq=1.0 / n_kq if n_kq > 0 else math.inf, floor=float(floor), log10_floor=float(log10_floor),
        vertex_optimal=bool(np.all(vertex)), certificates={"W_ov*": ov_cert, "W_kq*": kq_cert},
        runtime=runtime)


def train_two_stage(ds, eta0=None, eta=None, T0=DEFAULT_T0, T=DEFAULT_T, init=DEFAULT_INIT, seed=0, *,
                    init_scale=0.1, d=None, W_ov0=None, W_kq0=None, W_ov=None, progress=None,
                    record_dense_limit=2000, record_points=2000, stage2_callback=None):
    """Algorithm 1 (two-stage normalized gradient descent, docs/reproduce.md) on a realizable dataset.

    The defaults are the paper's experiment, the same as ``refimpl train`` and
    :class:`refimpl.reproduce.ReproduceConfig`: T0 = 2000, T = 20000,
    eta0 = 0.2/sqrt(d), eta = 0.05/sqrt(d), zero initialization.

    Parameters
    ----------
    ds : RealizableDataset
        Validated first; a non-realizable dataset raises its DatasetError.
    eta0, eta : float > 0 or None, default None
        Step sizes of stage 1 and stage 2; None -> 0.2/sqrt(d) and 0.05/sqrt(d).
    T0 : int >= 0, default 2000
        Number of stage-1 steps.
    T : int >= 0, default 20000
        Number of stage-2 steps.
    init : {"zero", "random", "given"}, default "zero"
        Initialization of both matrices; "given" uses ``W_ov0`` / ``W_kq0`` (M x M,
        token coordinates; a missing one is zero).
    seed : int >= 0, default 0
        Seed of a random initialization.
    init_scale : float >= 0, default 0.1
        Standard deviation of each entry of a random initialization.
    d : int or None, default None
        Embedding width; None -> M (sets the default step sizes).
    W_ov0, W_kq0 : (M, M) arrays or None
        Initial matrices for ``init="given"``.
    W_ov : (M, M) array or None
        A user-fixed stage-2 W_ov; stage 1 is skipped.
    progress : bool or None
        None or True: a tqdm bar when stderr is a terminal, otherwise a progress line every
        ~10 s (:mod:`refimpl.progress`); False: silent.
    record_dense_limit, record_points : int
        Trajectory recording: every step up to ``record_dense_limit`` steps, otherwise
        about ``record_points`` steps (:class:`TrainConfig`).
    stage2_callback : callable ``(t, K) -> None`` or None
        Called with every stage-2 iterate ``K_t`` (t = 0..T, token coordinates) before
        the step from it; ``K`` is the trainer's own buffer, so copy what you keep.

    Returns
    -------
    TrainResult
        ``W_ov``, ``W_kq`` (token coordinates, (M, M)), the trajectories ``stage1`` and
        ``stage2``, ``stop_reason``, the resolved ``config``, the max-margin solutions
        ``O_star``, ``K_star``, margins, the stage-2 floor and runtimes.

    Raises
    ------
    TypeError
        ``ds`` is not a RealizableDataset.
    DatasetError
        ``ds`` is not realizable (the specific subclass, naming the problem).
    ConfigError
        A bad parameter, naming it and its value.

    Examples
    --------
    >>> import refimpl as ri
    >>> ds = ri.generate(vocab_size=6, n_sentences=20, seed=4)
    >>> res = ri.train_two_stage(ds, T0=200, T=300, progress=False)
    >>> res.stop_reason
    {'stage1': 'completed', 'stage2': 'completed'}
    >>> res.W_kq.shape
    (6, 6)
    """
    require_dataset(ds, "train_two_stage")
    cfg = TrainConfig(eta0=eta0, eta=eta, T0=T0, T=T, d=d, init=init, init_scale=init_scale, seed=seed,
                      record_dense_limit=record_dense_limit, record_points=record_points)
    return run_two_stage(ds, cfg, W_ov0=W_ov0, W_kq0=W_kq0, W_ov=W_ov, progress=progress,
                         stage2_callback=stage2_callback)


def train_joint(ds, eta=None, T=DEFAULT_T, init=DEFAULT_INIT, seed=0, *, init_scale=0.1, d=None, W_ov0=None,
                W_kq0=None, progress=None, record_dense_limit=2000, record_points=2000):
    """Joint single-stage NGD on (O, K), the baseline of Algorithm 1 (docs/reproduce.md, "Joint baseline").

    ``(O, K) <- (O, K) - eta * (G_O, G_K) / ||(G_O, G_K)||_F`` for T steps on the
    full loss L (no collocation stage).

    Parameters
    ----------
    ds : RealizableDataset
        Validated first; a non-realizable dataset raises its DatasetError.
    eta : float > 0 or None, default None
        Step size; None -> 0.05/sqrt(d) (stage 2's).
    T : int >= 0, default 20000
        Number of steps (stage 2's default).
    init, seed, init_scale, d, W_ov0, W_kq0, progress, record_dense_limit, record_points
        As in :func:`train_two_stage`.

    Returns
    -------
    JointResult
        ``W_ov``, ``W_kq`` (token coordinates), ``trajectory``, ``stop_reason``, the
        resolved ``config`` and the ``runtime`` in seconds.

    Raises
    ------
    TypeError
        ``ds`` is not a RealizableDataset.
    DatasetError, ConfigError
        As in :func:`train_two_stage`.

    Examples
    --------
    >>> import refimpl as ri
    >>> ds = ri.generate(vocab_size=6, n_sentences=20, seed=4)
    >>> res = ri.train_joint(ds, T=300, progress=False)
    >>> res.stop_reason
    'completed'
    """
    require_dataset(ds, "train_joint")
    ensure_valid(ds)
    check_training(ds, "joint training")
    M = ds.vocab_size
    cfg = TrainConfig(eta=eta, T0=0, T=T, d=d, init=init, init_scale=init_scale, seed=seed,
                      record_dense_limit=record_dense_limit, record_points=record_points).resolved(M)
    O0, K0 = _init_pair(cfg, M, W_ov0, W_kq0)
    O_hat, _ = _unit(w_ov_star(ds)[0])
    K_hat, _ = _unit(w_kq_star(ds)[0])
    constraints = attention_constraints(ds)
    tokens, lengths, y = ds.tokens, ds.lengths, ds.next_tokens
    sched = record_steps(cfg.T, cfg.record_dense_limit, cfg.record_points)
    traj = Trajectory(JOINT_COLUMNS, len(sched) + 1)
    itO, itK = _Compensated(O0), _Compensated(K0)

    def evaluate(O, K):
        GOs, GKs, _, loss, log10_loss = kernels.joint_grad(O, K, tokens, lengths, y)

        def directions():
            DO, DK, nrm = kernels.normalize_pair(GOs, GKs)
            return [DO, DK], nrm
        return loss, log10_loss, directions

    O0c, K0c = np.ascontiguousarray(O0, dtype=np.float64), np.ascontiguousarray(K0, dtype=np.float64)
    train_accuracy = LogitAccuracy(ds)

    def record(t, O, K, loss, log10_loss):
        # compiled, no (N, M) array (the logits are formed per sentence)
        nrm_ov, _, _, omc_ov, _, _ = matrix_metrics(O, O0c, O_hat)
        nrm_kq, _, _, omc_kq, _, _ = matrix_metrics(K, K0c, K_hat)
        traj.append(step=t, loss=loss, log10_loss=log10_loss, norm_ov=nrm_ov, norm_kq=nrm_kq,
                    one_minus_cos_ov=omc_ov, one_minus_cos_kq=omc_kq,
                    attention_margin=attention_margin(K, constraints), train_accuracy=train_accuracy(O, K))

    bar = _Progress(cfg.T, progress, "joint")
    start = time.perf_counter()
    try:
        reason = _ngd([itO, itK], cfg.eta, cfg.T, sched, evaluate, record, bar, 0)
    finally:
        bar.close()
    return JointResult(W_ov=itO.W, W_kq=itK.W, trajectory=traj.finish(), stop_reason=reason, config=cfg,
                       runtime=time.perf_counter() - start)
