"""``refimpl audit FILE --trajectory RUN.npz``: the claims C1-C11 and C16 on checkpoints of a run made elsewhere.

Someone who trains the model in their own framework saves checkpoints of Algorithm 1
(stage-1 ``W_ov``, stage-2 ``W_kq``, in embedding space) with the step sizes they
declare, and :func:`audit_trajectory` evaluates every claim that the checkpoints
decide, with the verdict rules, bounds and table of ``refimpl audit``
(:mod:`refimpl.audit`, docs/audit.md, section "Auditing a trajectory made elsewhere").
Nothing is re-trained: the certified bounds are compared with quantities computed by
refimpl from the checkpoints, and the declared step sizes are what the bounds use, so a
run whose steps differ from the declared ones fails (the NGD step-length checks
``NGD-1`` / ``NGD-2``, C2 and C3 or C7).

Which checkpoints each claim uses is in :data:`USES` (also in every report). The
certified bounds of C3, C4, C7 and C8 hold from any iterate of normalized gradient
descent, so they are checked from the first checkpoint of the stage: at a checkpoint t
the bound is that of a run of ``t - t_first`` steps started at ``W_{t_first}``. When
the first checkpoint is ``t = 0`` (always, for files written by
:func:`save_checkpoints`) this is exactly what ``refimpl audit`` checks, and on
refimpl's own run the two audits agree claim by claim (``tests/test_audit_trajectory.py``).

File schema (an ``.npz`` archive read with ``allow_pickle=False``, or a mapping with
the same keys; every array finite):

===================  ==============  ====================================================
key                  shape           meaning
===================  ==============  ====================================================
``stage1_steps``     (n1,) int       stage-1 steps of the checkpoints, strictly increasing
``stage1_W_ov``      (n1, d, d)      ``W_ov`` after that many stage-1 steps
``stage2_steps``     (n2,) int       stage-2 steps, strictly increasing
``stage2_W_kq``      (n2, d, d)      ``W_kq`` after that many stage-2 steps
``W_ov``             (d, d)          the ``W_ov`` fixed during stage 2 (needed with stage 2)
``eta0``             ()              stage-1 step size (needed with stage 1)
``eta``              ()              stage-2 step size (needed with stage 2)
``embeddings``       (d, M)          optional: orthonormal ``E``; default identity (d = M)
===================  ==============  ====================================================

Either stage may be absent (both keys of it missing). Anything else (a missing or
unknown key, a shape, a non-finite value, steps not increasing, ``d`` different from
the embeddings', a non-orthonormal ``E``, an array of Python objects) raises
:class:`TrajectoryFileError`, one line, and ``refimpl audit`` exits 2.
"""
from __future__ import annotations

import io
import warnings
import math
import os
import sys
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from refimpl_proofs import numeric as bounds

from . import audit as au
from . import kernels
from .budget import check_bytes, check_training
from .data import ensure_valid
from .errors import InputError, NonOrthonormalEmbeddingError
from .maxmargin import stage2_floor, w_kq_star, w_ov_star
from .model import check_orthonormal, to_token_coords
from .trajectory import (STAGE1_COLUMNS, STAGE2_COLUMNS, ExcessLoss, Trajectory, attention_constraints,
                         attention_inert, record_steps, stage1_metrics, stage2_metrics)

__all__ = ["audit_trajectory", "load_run", "save_checkpoints", "refimpl_checkpoints", "format_table",
           "TrajectoryFileError", "LoadedRun", "SCHEMA", "KEYS", "USES", "CHECK_IDS"]

# @4 = @3 plus "source", "checks" and "checkpoints", the regime "no_stage2", and check ids
# (NGD-1, NGD-2) in "certified_failures" (docs/audit.md). ``refimpl audit`` without
# --trajectory writes @6 (@3 plus the rows C12-C16); this report keeps the rows C1-C11 of @3 and adds C16.
# @7 = @4 plus the row C16 after C11 (the a-posteriori stage-2 upper bound from the checkpoints).
SCHEMA = "refimpl/audit@7"
CLAIM_IDS = [f"C{i}" for i in range(1, 12)] + ["C16"]
KEYS = ("stage1_steps", "stage1_W_ov", "stage2_steps", "stage2_W_kq", "W_ov", "eta0", "eta", "embeddings")
CHECK_IDS = ("NGD-1", "NGD-2")
_EMBEDDING_TOL = 1e-12       # max |E^T E - I|, as model.check_orthonormal (theory code needs E^T E = I)

# Which checkpoints each row uses (also written into every report, "checkpoints" -> "uses").
USES = {
    "C1": "none: W_ov* of the dataset (closed form against the certified solver)",
    "C2": "every stage-1 checkpoint; needs a checkpoint at t = 0 equal to 0 (zero initialization)",
    "C3": "every stage-1 checkpoint, bounds from the first (t - t_first steps from W_ov at t_first)",
    "C4": "every stage-1 checkpoint, bounds from the first (b_0 = L0 at t_first); rate over the last half",
    "C5": "the stage-1 checkpoints at t >= 1 (absolute steps): exact direction or a power law over the "
          "last decade",
    "C6": "none: W_kq* of the dataset (KKT certificate, chains of training relations)",
    "C7": "every stage-2 checkpoint, bound from the first (t - t_first steps from W_kq at t_first); "
          "slope over the last half",
    "C8": "W_ov and every stage-2 checkpoint, bound from the first (||K_first|| + eta (t - t_first)); "
          "rate over the last half",
    "C9": "the stage-2 checkpoints at t >= 1 (absolute steps): exact direction or a power law over the "
          "last decade",
    "C10": "W_ov (vertex gaps), the last stage-2 checkpoint (attention margin), the excess rate over the "
           "last half",
    "C11": "W_ov and every stage-2 checkpoint (accuracy on unseen sentences); the verdict reads the last",
    "NGD-1": "every pair of consecutive stage-1 checkpoints",
    "NGD-2": "every pair of consecutive stage-2 checkpoints",
}


class TrajectoryFileError(InputError):
    """A run file (or mapping) for :func:`audit_trajectory` is malformed; the message is one line
    naming the source and the key (``refimpl audit --trajectory`` exits 2)."""


# ================================================================== reading
@dataclass
class LoadedRun:
    """A validated run in token coordinates (``E^T W E``, shape (M, M)).

    ``stage1_steps`` / ``stage2_steps`` int64 (n,) or None (stage absent); ``stage1_O`` /
    ``stage2_K`` float64 (n, M, M) or None; ``W_ov`` (M, M) or None; ``eta0`` / ``eta`` floats
    or None; ``d`` the embedding width; ``embeddings`` "identity" or "given"; ``source`` the
    file name or "mapping".
    """

    stage1_steps: np.ndarray | None
    stage1_O: np.ndarray | None
    stage2_steps: np.ndarray | None
    stage2_K: np.ndarray | None
    W_ov: np.ndarray | None
    eta0: float | None
    eta: float | None
    d: int
    embeddings: str
    source: str


def _fail(src, message):
    raise TrajectoryFileError(f"{src}: {message}")


def _read_npz(path):
    """The arrays of an .npz archive, read with ``allow_pickle=False`` after a size check."""
    src = os.fspath(path)
    try:
        with zipfile.ZipFile(src) as zf:
            declared = sum(info.file_size for info in zf.infolist())
    except FileNotFoundError:
        _fail(src, "no such file")
    except IsADirectoryError:
        _fail(src, "is a folder, not an .npz archive")
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        _fail(src, f"not an .npz archive ({type(exc).__name__}: {exc})")
    check_bytes(2 * declared, f"reading the run file {src} ({declared} bytes uncompressed)")
    out = {}
    try:
        with np.load(src, allow_pickle=False) as npz:
            for key in npz.files:
                try:
                    out[key] = npz[key]
                except ValueError as exc:
                    if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
                        _fail(src, f"array {key!r} holds Python objects (pickled data); refused: "
                                   "only numeric arrays are read")
                    _fail(src, f"array {key!r} is not readable ({exc})")
    except TrajectoryFileError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
        _fail(src, f"not a readable .npz archive ({type(exc).__name__}: {exc})")
    return src, out


def _real_array(src, key, value):
    a = np.asarray(value)
    if a.dtype.kind not in "iuf":
        _fail(src, f"{key!r} must hold real numbers; got dtype {a.dtype}")
    return a


def _scalar(src, key, value):
    a = _real_array(src, key, value)
    if a.shape != ():
        _fail(src, f"{key!r} must be a scalar; got shape {a.shape}")
    v = float(a)
    if not math.isfinite(v) or v <= 0:
        _fail(src, f"{key!r} must be a finite number > 0; got {v!r}")
    return v


def _steps(src, key, value):
    a = np.asarray(value)
    if a.dtype.kind not in "iu":
        _fail(src, f"{key!r} must be integers; got dtype {a.dtype}")
    if a.ndim != 1 or len(a) == 0:
        _fail(src, f"{key!r} must have shape (n,) with n >= 1; got shape {a.shape}")
    if a.dtype.kind == "u" and np.any(a > np.iinfo(np.int64).max):
        _fail(src, f"{key!r} holds steps beyond int64")
    a = a.astype(np.int64)
    if a[0] < 0:
        _fail(src, f"{key!r} must be >= 0; got {int(a[0])}")
    bad = np.nonzero(np.diff(a) <= 0)[0]
    if len(bad):
        i = int(bad[0])
        _fail(src, f"{key!r} must be strictly increasing; entry {i + 1} ({int(a[i + 1])}) follows {int(a[i])}")
    return a


def _finite(src, key, a):
    bad = ~np.isfinite(a)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        _fail(src, f"{key!r} holds a non-finite value ({float(a[idx])!r}) at index {idx}")
    return a


def _matrices(src, key, value, n, d, why_d):
    a = _real_array(src, key, value)
    want = (d, d) if n is None else (n, d, d)
    if a.shape != want:
        if n is not None and a.ndim == 3 and a.shape[0] != n:
            why = f" (one matrix per checkpoint: {n} steps)"
        elif a.ndim == len(want):
            why = f" ({why_d})"
        else:
            why = ""
        _fail(src, f"{key!r} has shape {a.shape}, expected {_shape_text(want)}{why}")
    return _finite(src, key, a.astype(np.float64))


def _shape_text(shape):
    return "(" + ", ".join(str(s) for s in shape) + ")"


def load_run(run, M):
    """Read and validate a run (docs/audit.md, "Auditing a trajectory made elsewhere").

    Parameters
    ----------
    run : str, os.PathLike or Mapping
        Path of an ``.npz`` archive (read with ``allow_pickle=False``) or a mapping with the
        same keys (:data:`KEYS`).
    M : int
        The dataset's vocabulary size (the columns of ``embeddings``).

    Returns
    -------
    LoadedRun
        Checkpoints converted to token coordinates with :func:`refimpl.model.to_token_coords`.

    Raises
    ------
    TrajectoryFileError
        One line naming the source and the key: unreadable file, an array of Python objects,
        an unknown or missing key, a wrong shape or dtype, a non-finite value, steps that are
        negative or not strictly increasing, ``d`` that differs between arrays or from the
        embeddings, non-orthonormal embeddings.
    ResourceError
        The archive would not fit in memory.
    """
    if isinstance(run, Mapping):
        src, data = "run mapping", dict(run)
    elif isinstance(run, (str, os.PathLike)):
        src, data = _read_npz(run)
    else:
        raise TrajectoryFileError(f"run must be a path to an .npz archive or a mapping; got {type(run).__name__}")
    unknown = sorted(str(k) for k in data if k not in KEYS)
    if unknown:
        _fail(src, f"unknown key {unknown[0]!r} (the keys are {', '.join(KEYS)})")
    has1 = [k in data for k in ("stage1_steps", "stage1_W_ov")]
    has2 = [k in data for k in ("stage2_steps", "stage2_W_kq")]
    for has, keys in ((has1, ("stage1_steps", "stage1_W_ov")), (has2, ("stage2_steps", "stage2_W_kq"))):
        if any(has) and not all(has):
            _fail(src, f"missing key {keys[has.index(False)]!r} ({keys[has.index(True)]!r} is given)")
    if not any(has1) and not any(has2):
        _fail(src, "no checkpoints: give stage1_steps and stage1_W_ov, or stage2_steps and stage2_W_kq, or both")
    with_1, with_2 = all(has1), all(has2)
    if with_1 and "eta0" not in data:
        _fail(src, "missing key 'eta0' (the stage-1 step size the checkpoints were made with)")
    if with_2:
        for key, why in (("eta", "the stage-2 step size"), ("W_ov", "the W_ov fixed during stage 2")):
            if key not in data:
                _fail(src, f"missing key {key!r} ({why})")
    eta0 = _scalar(src, "eta0", data["eta0"]) if "eta0" in data else None
    eta = _scalar(src, "eta", data["eta"]) if "eta" in data else None
    # the width d: from the embeddings if given, else from the first matrix
    if "embeddings" in data:
        E = _real_array(src, "embeddings", data["embeddings"])
        if E.ndim != 2 or E.shape[1] != M:
            _fail(src, f"'embeddings' must have shape (d, {M}) for the dataset's M = {M}; got {E.shape}")
        E = _finite(src, "embeddings", E.astype(np.float64))
        try:
            check_orthonormal(E, _EMBEDDING_TOL)
        except NonOrthonormalEmbeddingError as exc:
            _fail(src, f"'embeddings': {exc}")
        d, kind = int(E.shape[0]), "given"
    else:
        E, kind, d = None, "identity", M
    why_d = (f"d = {d}, the rows of 'embeddings'" if E is not None else
             f"d = M = {M}: without 'embeddings' the checkpoints are in token coordinates")
    steps1 = O1 = steps2 = K2 = W_ov = None
    if with_1:
        steps1 = _steps(src, "stage1_steps", data["stage1_steps"])
        O1 = _matrices(src, "stage1_W_ov", data["stage1_W_ov"], len(steps1), d, why_d)
    if with_2:
        steps2 = _steps(src, "stage2_steps", data["stage2_steps"])
        K2 = _matrices(src, "stage2_W_kq", data["stage2_W_kq"], len(steps2), d, why_d)
    if "W_ov" in data:
        W_ov = _matrices(src, "W_ov", data["W_ov"], None, d, why_d)
    if E is not None:      # E^T W E for every matrix (a stack broadcasts)
        O1, K2, W_ov = (None if W is None else to_token_coords(W, E) for W in (O1, K2, W_ov))
    contiguous = (lambda W: None if W is None else np.ascontiguousarray(W, dtype=np.float64))
    return LoadedRun(steps1, contiguous(O1), steps2, contiguous(K2), contiguous(W_ov), eta0, eta, int(d),
                     kind, src)


# ================================================================== refimpl's own checkpoints
def _resolved(ds, config):
    """A resolved TrainConfig from a TrainConfig, an AuditConfig or None (the audit's defaults)."""
    from .train import TrainConfig
    if config is None:
        config = au.AuditConfig()
    if isinstance(config, au.AuditConfig):
        config = config.train_config()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig or an AuditConfig; got {type(config).__name__}")
    return config.resolved(ds.vocab_size)


def _keep(wanted):
    """A replay callback keeping copies of the iterates at ``wanted`` steps, and the last one seen."""
    kept, last = {}, {}

    def callback(t, W):
        last["t"], last["W"] = t, W
        if t in wanted:
            kept[t] = W.copy()
    return kept, last, callback


def _steps_arg(steps, T, cfg):
    if steps is None:
        return [int(s) for s in record_steps(T, cfg.record_dense_limit, cfg.record_points)]
    out = sorted({int(s) for s in steps})
    if out and (out[0] < 0 or out[-1] > T):
        raise InputError(f"checkpoint steps must lie in 0..{T}; got {out[0]}..{out[-1]}")
    return out


def _finish_stage(kept, last, reason, stage):
    """Checkpoints of a replay: the wanted steps it reached, plus the step a stop ended on (the
    trainer records it too). A non-finite stop raises NonFiniteTrainingError naming ``stage``."""
    from .train import NON_FINITE, NonFiniteTrainingError, stop_kind
    kind, step = stop_kind(reason)
    if kind == NON_FINITE:
        raise NonFiniteTrainingError(stage, step)
    if step is not None and step not in kept:
        kept[step] = last["W"].copy()
    steps = sorted(kept)
    return np.array(steps, dtype=np.int64), np.array([kept[s] for s in steps]).reshape(len(steps), *last["W"].shape)


def refimpl_checkpoints(ds, config=None, *, stage1_steps=None, stage2_steps=None, embeddings=None):
    """Checkpoints of refimpl's own Algorithm 1 run, as the mapping :func:`audit_trajectory` reads.

    Parameters
    ----------
    ds : RealizableDataset
    config : TrainConfig, AuditConfig or None
        The run (None: the audit's defaults, :class:`refimpl.audit.AuditConfig`).
    stage1_steps, stage2_steps : iterable of int or None
        Steps to save (None: the trainer's recording schedule,
        :func:`refimpl.trajectory.record_steps`, so the audit of the file sees the steps
        ``refimpl audit`` sees). An empty sequence leaves that stage out of the mapping.
        A stage that stops early (zero gradient) ends at the stopping step, as the trainer's.
    embeddings : (d, M) array or None
        Orthonormal ``E``: the checkpoints are ``E O E^T``, ``E K E^T`` (d x d) and the mapping
        holds ``embeddings``. None: token coordinates (E = I, no ``embeddings`` key).

    Returns
    -------
    dict
        Keys of :data:`KEYS` (``stage*`` ones only for stages kept); ``W_ov`` is the stage-1
        output, ``eta0`` / ``eta`` the resolved step sizes.

    Notes
    -----
    Stage 1 is replayed with the trainer's per-step path (``kernels.Stage1Direction`` and the
    Kahan update, :func:`refimpl.train.stage1_replay`) and stage 2 with :func:`refimpl.train.stage2_replay`,
    so the iterates are the trainer's bit for bit (the tests compare the last ones with
    :func:`refimpl.train.train_two_stage`).

    Raises
    ------
    TypeError
        ``ds`` is not a RealizableDataset, or ``config`` is neither a TrainConfig nor an
        AuditConfig.
    ConfigError
        A bad field of ``config``.
    InputError
        Steps outside ``0..T0`` / ``0..T``, or embeddings that are not ``(d, M)``.
    NonOrthonormalEmbeddingError
        ``embeddings`` are not orthonormal.
    NonFiniteTrainingError
        Training reaches a non-finite value (the file could not hold it).
    """
    from .train import _init_pair, require_dataset, stage1_replay, stage2_replay
    require_dataset(ds, "refimpl_checkpoints")
    ensure_valid(ds)
    check_training(ds, "saving checkpoints")
    cfg = _resolved(ds, config)
    M = ds.vocab_size
    O0, K0 = _init_pair(cfg, M, None, None)
    want1 = _steps_arg(stage1_steps, cfg.T0, cfg)
    want2 = _steps_arg(stage2_steps, cfg.T, cfg)
    kept1, last1, cb1 = _keep(set(want1))
    reason1 = stage1_replay(ds, O0, cfg.eta0, cfg.T0, cb1)
    s1, O1 = _finish_stage(kept1, last1, reason1, "stage 1")
    O = last1["W"].copy()
    out = {"W_ov": O, "eta0": np.float64(cfg.eta0), "eta": np.float64(cfg.eta)}
    if want1:
        out.update(stage1_steps=s1, stage1_W_ov=O1)
    if want2:
        kept2, last2, cb2 = _keep(set(want2))
        reason2 = stage2_replay(ds, O, K0, cfg.eta, cfg.T, cb2)
        out["stage2_steps"], out["stage2_W_kq"] = _finish_stage(kept2, last2, reason2, "stage 2")
    if embeddings is not None:
        E = np.asarray(embeddings, dtype=np.float64)
        if E.ndim != 2 or E.shape[1] != M:
            raise InputError(f"embeddings must have shape (d, {M}); got {E.shape}")
        check_orthonormal(E, _EMBEDDING_TOL)
        for key in ("W_ov", "stage1_W_ov", "stage2_W_kq"):
            if key in out:
                out[key] = E @ out[key] @ E.T
        out["embeddings"] = E
    return out


def save_checkpoints(ds, path, config=None, *, stage1_steps=None, stage2_steps=None, embeddings=None):
    """Write :func:`refimpl_checkpoints` to ``path`` as an ``.npz`` archive (atomically).

    The dataset comes first, as in :func:`refimpl.save_dataset`; the earlier order
    ``save_checkpoints(path, ds)`` is recognised by type and still works for one release,
    with a DeprecationWarning.

    Parameters
    ----------
    ds : RealizableDataset
    path : str or os.PathLike
        The archive, used as given (no ``.npz`` is appended).
    config, stage1_steps, stage2_steps, embeddings
        As in :func:`refimpl_checkpoints`.

    Returns
    -------
    dict
        The mapping that was written (keys of :data:`KEYS`).

    Examples
    --------
    >>> import os, tempfile
    >>> import refimpl as ri
    >>> from refimpl.audit import AuditConfig
    >>> ds = ri.generate(vocab_size=6, n_sentences=20, seed=4)
    >>> path = os.path.join(tempfile.mkdtemp(), "own.npz")
    >>> data = ri.save_checkpoints(ds, path, AuditConfig(T0=200, T=300))
    >>> ri.audit_trajectory(ds, path)["certified_failures"]
    []
    """
    from .data import RealizableDataset
    from .io import atomic_write_bytes
    if isinstance(path, RealizableDataset) and not isinstance(ds, RealizableDataset):
        warnings.warn("save_checkpoints(path, ds) is deprecated: pass the dataset first, "
                      "save_checkpoints(ds, path)", DeprecationWarning, stacklevel=2)
        ds, path = path, ds
    data = refimpl_checkpoints(ds, config, stage1_steps=stage1_steps, stage2_steps=stage2_steps,
                               embeddings=embeddings)
    buf = io.BytesIO()
    np.savez(buf, **data)
    atomic_write_bytes(path, buf.getvalue())
    return data


# ================================================================== metrics of the checkpoints
def _unit(W):
    n = float(np.linalg.norm(W))
    return (W / n, n) if n > 0 else (None, 0.0)


def _stage1_trajectory(ds, steps, Os, O_hat):
    """The trainer's stage-1 columns at the checkpoints (dist_from_init and proj_on_star from
    the first checkpoint)."""
    xs, ys = ds.colloc_tokens, ds.colloc_next
    direction = kernels.Stage1Direction(xs, ys, ds.vocab_size)
    traj = Trajectory(STAGE1_COLUMNS, len(steps))
    for t, O in zip(steps, Os):
        _, _, _, loss, log10_loss = direction.direction(O)
        traj.append(step=int(t), loss=loss, log10_loss=log10_loss, **stage1_metrics(O, Os[0], O_hat, xs, ys))
    return traj.finish()


def _stage2_trajectory(ds, steps, Ks, O, K_hat):
    """The trainer's stage-2 columns at the checkpoints (the same metrics as its ``record``)."""
    lengths, y = ds.lengths, ds.next_tokens
    constraints = attention_constraints(ds)
    floor, _, vertex, details = stage2_floor(ds, O, return_details=True)
    excess = ExcessLoss(ds, O, floor, vertex, details["log_loss"])
    direction = kernels.Stage2Direction(O, ds.flat_tokens, lengths, y)
    traj = Trajectory(STAGE2_COLUMNS, len(steps))
    for t, K in zip(steps, Ks):
        _, _, _, loss, log10_loss = direction.direction(K)
        traj.append(step=int(t), loss=loss, log10_loss=log10_loss,
                    **stage2_metrics(K, Ks[0], K_hat, excess, constraints))
    return traj.finish()


def _shifted(traj, t0):
    """The same rows with ``step - t0``: a run started at its first checkpoint."""
    out = Trajectory(traj.columns, len(traj))
    for i in range(len(traj)):
        row = {c: traj[c][i] for c in traj.columns}
        row["step"] = int(row["step"]) - int(t0)
        out.append(**row)
    return out.finish()


# ================================================================== the NGD step-length checks
def _check_row(check_id, stage, verdict, measured, bound, detail, failure=None):
    assert (verdict == au.FAIL) == (failure is not None), (check_id, verdict, failure)
    return {"id": check_id, "title": f"NGD step length (stage {stage})", "status": "certified",
            "verdict": verdict, "failure": failure, "measured": measured, "bound": bound, "detail": detail}


def _step_check(check_id, stage, steps, Ws, step_size, zero_gradient):
    """``||W_{t+1} - W_t|| = eta`` for consecutive checkpoints, ``<= k eta`` for checkpoints k steps apart.

    Every NGD step has length eta exactly (or the stage stops at a zero gradient), so a pair
    of checkpoints one step apart must be eta apart (a length-0 step is accepted only where
    the gradient is exactly 0: ``zero_gradient(W)``) and a pair k steps apart at most k eta
    apart (triangle inequality). Tolerance: ``REL_TOL (k eta + ||W_t|| + ||W_{t+k}||)``: the
    rounding of one update of W is ~1e-16 ||W||, and the conversion to token coordinates adds
    as much; 1e-9 is far above both and far below a wrong step size.
    """
    if steps is None:
        return _check_row(check_id, stage, au.NA, {}, {}, f"the file has no stage-{stage} checkpoints")
    if len(steps) < 2:
        return _check_row(check_id, stage, au.NA, {"checkpoints": 1}, {},
                          f"one stage-{stage} checkpoint: no pair to compare")
    gap = np.diff(steps)
    dist = np.array([np.linalg.norm(Ws[i + 1] - Ws[i]) for i in range(len(gap))])
    norms = np.linalg.norm(Ws, axis=(1, 2))
    tol = au.REL_TOL * (gap * step_size + norms[:-1] + norms[1:])
    unit = gap == 1
    dev = np.abs(dist - step_size)
    zero_ok = unit & (dist == 0.0)
    if zero_ok.any():    # a stop at a zero gradient: NGD stays put
        for i in np.nonzero(zero_ok)[0]:
            zero_ok[i] = zero_gradient(Ws[i])
    ok_unit = (dev <= tol) | zero_ok
    ok_gapped = dist <= gap * step_size + tol
    bad_unit = np.nonzero(unit & ~ok_unit)[0]
    bad_gapped = np.nonzero(~unit & ~ok_gapped)[0]
    measured = {"pairs_one_step_apart": int(unit.sum()), "pairs_further_apart": int((~unit).sum()),
                "max_rel_dev_one_step": float(np.max(dev[unit] / step_size)) if unit.any() else None,
                "max_dist_over_steps_eta": float(np.max(dist[~unit] / (gap[~unit] * step_size)))
                if (~unit).any() else None}
    bound = {"step_length": step_size, "rel_tol": au.REL_TOL}
    what = ("||W_{t+1} - W_t|| = eta for checkpoints one step apart, <= k eta for checkpoints k steps apart"
            if unit.any() else
            "no two checkpoints are one step apart: only ||W_{t+k} - W_t|| <= k eta is checked")
    if len(bad_unit) or len(bad_gapped):
        i = int(bad_unit[0]) if len(bad_unit) else int(bad_gapped[0])
        measured["first_violation"] = {"from_step": int(steps[i]), "to_step": int(steps[i + 1]),
                                       "distance": float(dist[i])}
        detail = (f"{what}; violated from t = {int(steps[i])} to t = {int(steps[i + 1])}: distance "
                  f"{float(dist[i]):.6g} for {int(gap[i])} step(s) of the declared {step_size:.6g}")
        return _check_row(check_id, stage, au.FAIL, measured, bound, detail, au.CERTIFIED)
    return _check_row(check_id, stage, au.PASS, measured, bound, what)


# ================================================================== the audit
def _na(claim_id, why):
    return au._row(claim_id, au.NA, {}, {}, why)


def _c5(s1_abs):
    """C5 on the given stage-1 run: exact direction (from zero it is exact by C2) or a power law
    over the last decade of its checkpoints (audit._direction_verdict, the audit's protocol)."""
    verdict, expo, why = au._direction_verdict(s1_abs.step, s1_abs.one_minus_cos, au._steps_of(s1_abs), "")
    measured = {"final_one_minus_cos": float(s1_abs.one_minus_cos[-1]), "fitted_exponent_last_decade": expo,
                "steps": au._steps_of(s1_abs)}
    return au._row("C5", verdict, measured, {"fitted_exponent": "< 0"},
                   why or "1 - cos(O_t, O*) of the given stage-1 run decreases (power law over the last decade)",
                   au.MEASURED if verdict == au.FAIL else None)


def _run_view(stage1, stage2, eta0, eta, init, common):
    """What the audit's claim functions read of a TrainResult, for the given trajectories."""
    empty1, empty2 = Trajectory(STAGE1_COLUMNS, 0).finish(), Trajectory(STAGE2_COLUMNS, 0).finish()
    return SimpleNamespace(stage1=stage1 if stage1 is not None else empty1,
                           stage2=stage2 if stage2 is not None else empty2,
                           config=SimpleNamespace(eta0=eta0, eta=eta, init=init),
                           stop_reason={"stage1": "completed", "stage2": "completed"}, **common)


def _c16(ds, r, s2, init, K_star, gamma_kq, inert):
    """C16 from the stage-2 checkpoints: :func:`refimpl.audit._c16` with every checkpoint kept
    (the certificate is called at checkpoints only; ``t0`` is the earliest certified one)."""
    if s2 is None:
        return _na("C16", "the file has no stage-2 checkpoints")
    if r.eta is None:
        return _na("C16", "no declared eta: the certified rate is a rate per step of size eta")
    T0 = int(r.stage1_steps[-1]) if r.stage1_steps is not None else 0
    view = SimpleNamespace(stage2=s2, config=SimpleNamespace(eta=r.eta, init=init, T0=T0), W_ov=r.W_ov,
                           W_kq=r.stage2_K[-1], K_star=K_star, gamma_kq=gamma_kq)
    keep = SimpleNamespace(K={int(t): K for t, K in zip(r.stage2_steps, r.stage2_K)}, stride=1)
    return au._c16(ds, view, keep, inert)


def audit_trajectory(ds, run):
    """Evaluate the claims C1-C11 and C16 on checkpoints of a run made elsewhere.

    Parameters
    ----------
    ds : RealizableDataset
        The dataset the run was trained on (validated first: DatasetError if not realizable).
    run : str, os.PathLike or Mapping
        An ``.npz`` archive or a mapping with the keys of :data:`KEYS` (module docstring,
        docs/audit.md). Read by :func:`load_run` (TrajectoryFileError, one line, on bad input).

    Returns
    -------
    dict
        The report, schema ``refimpl/audit@7``: the keys of ``refimpl audit``'s report (12 claim
        rows C1-C11, C16 with the same verdict rules, ``regime``, ``certified_failures`` (exit 1 when
        non-empty), ``measured_failures``, ``generalization``) plus ``"source": "trajectory"``,
        ``checks`` (the NGD step-length rows ``NGD-1``, ``NGD-2``, certified: a FAIL is listed in
        ``certified_failures``) and ``checkpoints`` (counts, first and last steps, and
        :data:`USES`). ``regime`` is ``"no_stage2"`` when the file has no stage-2 checkpoints.

    Raises
    ------
    TypeError
        ``ds`` is not a RealizableDataset.
    DatasetError
        ``ds`` is not realizable.
    TrajectoryFileError
        The run is malformed (:func:`load_run`; one line naming the source and the key).
    ResourceError
        The dataset or the archive would not fit in memory.

    Notes
    -----
    The step sizes are the declared ``eta0`` / ``eta``; the bounds use them. C2 needs a
    checkpoint at ``t = 0`` equal to zero. C5 is measured on the given stage-1 run (``refimpl
    audit`` measures it on an extra random-start run; the same protocol). C3, C4, C7 and C8
    are checked from the first checkpoint of their stage (module docstring).

    Examples
    --------
    >>> import refimpl as ri
    >>> from refimpl.audit import AuditConfig
    >>> from refimpl.audit_trajectory import refimpl_checkpoints
    >>> ds = ri.generate(vocab_size=6, n_sentences=20, seed=4)
    >>> run = refimpl_checkpoints(ds, AuditConfig(T0=200, T=300))   # or an .npz made elsewhere
    >>> report = ri.audit_trajectory(ds, run)
    >>> report["source"], report["certified_failures"]
    ('trajectory', [])
    """
    from .train import require_dataset
    require_dataset(ds, "audit_trajectory")
    ensure_valid(ds)
    check_training(ds, "auditing a trajectory")
    start = time.perf_counter()
    r = load_run(run, ds.vocab_size)
    M = ds.vocab_size
    O_star, ov_cert = w_ov_star(ds)
    K_star, kq_cert = w_kq_star(ds)
    O_hat, n_ov = _unit(O_star)
    K_hat, n_kq = _unit(K_star)
    common = dict(O_star=O_star, K_star=K_star, certificates={"W_ov*": ov_cert, "W_kq*": kq_cert},
                  gamma_ov=1.0 / n_ov if n_ov > 0 else math.inf, gamma_kq=1.0 / n_kq if n_kq > 0 else math.inf,
                  W_ov=r.W_ov)
    inert = attention_inert(ds)
    s1 = s1_rel = s2 = s2_rel = None
    init = "unknown"
    if r.stage1_steps is not None:
        s1 = _stage1_trajectory(ds, r.stage1_steps, r.stage1_O, O_hat)
        s1_rel = _shifted(s1, r.stage1_steps[0])
        if r.stage1_steps[0] == 0:
            init = "zero" if not np.any(r.stage1_O[0]) else "nonzero"
    if r.stage2_steps is not None:
        s2 = _stage2_trajectory(ds, r.stage2_steps, r.stage2_K, r.W_ov, K_hat)
        s2_rel = _shifted(s2, r.stage2_steps[0])
    absolute = _run_view(s1, s2, r.eta0, r.eta, init, common)   # absolute steps: C2, C5, C9, C11
    relative = _run_view(s1_rel, s2_rel, r.eta0, r.eta, init, common)  # from the first checkpoint

    rows = [au._c1(ds, absolute)]
    if s1 is None:
        rows += [_na(c, "the file has no stage-1 checkpoints") for c in ("C2", "C3", "C4", "C5")]
    else:
        if init == "unknown":
            rows.append(_na("C2", f"no stage-1 checkpoint at t = 0 (the first is t = {int(r.stage1_steps[0])}): "
                                  "the initialization is not known"))
        elif init != "zero":
            rows.append(_na("C2", "the exact trajectory is claimed from zero initialization only "
                                  "(the checkpoint at t = 0 is not 0)"))
        elif len(s1) < 2:
            rows.append(_na("C2", "one stage-1 checkpoint (t = 0): the claim at t = 0 is an identity"))
        else:
            rows.append(au._c2(ds, absolute))
        if len(s1) < 2:
            one = f"one stage-1 checkpoint (t = {int(r.stage1_steps[0])}): no step to bound"
            rows += [_na("C3", one), _na("C4", one)]
        else:
            rows += [au._c3(ds, relative), au._c4(ds, relative)]
        rows.append(_c5(s1))
    rows.append(au._c6(ds, absolute, inert))
    generalization = None
    if s2 is None:
        why = "the file has no stage-2 checkpoints"
        rows += [_na(c, why) for c in ("C7", "C8", "C9", "C10", "C11")]
        regime = "no_stage2"
    else:
        if inert is None and len(s2) < 2:
            rows.append(_na("C7", f"one stage-2 checkpoint (t = {int(r.stage2_steps[0])}): no step to bound"))
        else:
            rows.append(au._c7(ds, relative, inert))
        gaps = bounds.c8_sentence_log_gaps(r.W_ov, ds.tokens, ds.lengths, ds.next_tokens, ds.optimal)
        c10, regime = au._c10(ds, relative, gaps, inert)
        rows += [au._c8(ds, relative, gaps, regime, inert), au._c9(ds, absolute, regime, inert), c10]
        checkpoints = (r.W_ov, [(int(t), K) for t, K in zip(r.stage2_steps, r.stage2_K)])
        row, generalization = au._c11(ds, absolute, regime, inert, run=checkpoints)
        rows.append(row)
    rows.append(_c16(ds, r, s2, init, K_star, common["gamma_kq"], inert))
    assert [row["id"] for row in rows] == CLAIM_IDS

    stage1_dir = None if s1 is None else kernels.Stage1Direction(ds.colloc_tokens, ds.colloc_next, M)
    stage2_dir = None if s2 is None else kernels.Stage2Direction(r.W_ov, ds.flat_tokens, ds.lengths,
                                                                  ds.next_tokens)
    checks = [_step_check("NGD-1", 1, r.stage1_steps, r.stage1_O, r.eta0,
                          lambda W: stage1_dir.direction(W)[1] == 0.0),
              _step_check("NGD-2", 2, r.stage2_steps, r.stage2_K, r.eta,
                          lambda W: stage2_dir.direction(W)[1] == 0.0)]
    every = rows + checks
    return {
        "schema": SCHEMA,
        "source": "trajectory",
        "dataset": {"vocab_size": M, "n_sentences": ds.n_sentences,
                    "n_colloc": int(len(ds.colloc_tokens)), "max_len": ds.max_len},
        "config": {"eta0": r.eta0, "eta": r.eta,
                   "T0": int(r.stage1_steps[-1]) if s1 is not None else None,
                   "T": int(r.stage2_steps[-1]) if s2 is not None else None,
                   "init": init, "d": r.d, "embeddings": r.embeddings, "run": r.source},
        "regime": regime,
        "stop_reason": {"stage1": "checkpoints" if s1 is not None else "absent",
                        "stage2": "checkpoints" if s2 is not None else "absent"},
        "claims": rows,
        "checks": checks,
        "certified_failures": [x["id"] for x in every if x["failure"] == au.CERTIFIED],
        "measured_failures": [x["id"] for x in every if x["failure"] == au.MEASURED],
        "generalization": generalization,
        "checkpoints": {"stage1": _summary(r.stage1_steps),
                        "stage2": _summary(r.stage2_steps),
                        "W_ov_minus_last_stage1_max_abs": (float(np.max(np.abs(r.W_ov - r.stage1_O[-1])))
                                                           if s1 is not None and r.W_ov is not None else None),
                        "uses": dict(USES)},
        "runtime_seconds": time.perf_counter() - start,
    }


def _summary(steps):
    if steps is None:
        return None
    return {"count": int(len(steps)), "first_step": int(steps[0]), "last_step": int(steps[-1]),
            "pairs_one_step_apart": int(np.sum(np.diff(steps) == 1))}


def format_table(report):
    """The trajectory report as the text table of ``refimpl audit FILE --trajectory RUN.npz``.

    Parameters
    ----------
    report : dict
        From :func:`audit_trajectory`.

    Returns
    -------
    str
        A header line (the run, M, N, d, the declared step sizes, the last step of each stage,
        the initialization, the regime), the column line, one line per claim C1-C11, C16 and per NGD
        step-length check as in :func:`refimpl.audit.format_table` (nothing shortened; the
        reason after ``--`` for a row that is not PASS), and the summary line.
    """
    c, d = report["config"], report["dataset"]
    body = au.format_table({**report, "claims": report["claims"] + report["checks"],
                            "config": {"eta0": math.nan, "eta": math.nan, "T0": None, "T": None}})
    lines = body.splitlines()

    def num(v):
        return "-" if v is None else f"{v:.4g}"
    lines[0] = (f"refimpl audit --trajectory {c['run']}: M={d['vocab_size']} N={d['n_sentences']} d={c['d']} "
                f"eta0={num(c['eta0'])} eta={num(c['eta'])} stage1 last t={c['T0'] if c['T0'] is not None else '-'} "
                f"stage2 last t={c['T'] if c['T'] is not None else '-'} init={c['init']} regime={report['regime']}")
    return "\n".join(lines) + "\n"


class _CallableModule(type(math)):
    """This module, callable as :func:`audit_trajectory`.

    Importing ``refimpl.audit_trajectory`` makes the package attribute of that name this
    module (Python binds a submodule to its package), so the module itself answers
    ``ri.audit_trajectory(ds, run)``.
    """

    def __call__(self, ds, run):
        return audit_trajectory(ds, run)


sys.modules[__name__].__class__ = _CallableModule
