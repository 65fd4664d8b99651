"""Training trajectories: which steps are recorded and how a record is stored (docs/reproduce.md).

A :class:`Trajectory` is a table with one float64 (or int64) numpy array per
column, all of the same length, the rows being the recorded steps in
increasing order. Columns are read as attributes (``traj.loss``) or by name
(``traj["loss"]``); :meth:`Trajectory.to_csv` writes the table atomically.

The metrics of the columns are computed here too (:func:`stage1_metrics`,
:class:`ExcessLoss`, ...). The trainer's record path is compiled
(:mod:`refimpl.kernels_metrics`: one pass over the ragged sentences, no (N, M) array);
the NumPy definitions stay as references (:func:`stage1_metrics_np`,
:meth:`ExcessLoss.reference`, :func:`accuracy`, :func:`attention_margin_np`,
:func:`direction_metrics`) and ``tests/test_metrics_fused.py`` compares the two.

Recording schedule (:func:`record_steps`): every step when the stage has at
most ``dense_limit`` steps; otherwise the union of a geometric schedule
(``round(T ** (k / n))``, dense in log-scale plots) and a linear one
(``k T / n``, dense in linear plots), always containing 0 and T.
"""
from __future__ import annotations

import io
import math

import numpy as np

from . import kernels, kernels_metrics as km, kernels_sparse
from .checks import check_square, check_tokens, check_weights
from .data import ensure_valid, training_relations
from .errors import ShapeError
from .io import atomic_write_text
from .maxmargin import log_loss

__all__ = ["Trajectory", "record_steps", "STAGE1_COLUMNS", "STAGE2_COLUMNS", "JOINT_COLUMNS",
           "direction_metrics", "stage1_metrics", "stage1_metrics_np", "stage2_metrics", "attention_constraints", "attention_inert",
           "attention_margin", "attention_margin_np", "accuracy", "ExcessLoss", "LogitAccuracy"]

# column name -> meaning (the order is the CSV column order)
STAGE1_COLUMNS = {
    "step": "t, number of NGD steps taken",
    "loss": "collocation loss L0(O_t) (underflows to 0 past margins ~745)",
    "log10_loss": "log10 L0(O_t), computed in log space (finite for every t)",
    "norm": "||O_t||_F",
    "dist_from_init": "||O_t - O_0||_F",
    "cos_to_star": "cos(O_t, O*), NaN when O_t = 0",
    "one_minus_cos": "1 - cos(O_t, O*) = ||hat O_t - hat O*||^2 / 2 (no cancellation), NaN when O_t = 0",
    "normalized_distance": "||hat O_t - hat O*||_F, NaN when O_t = 0",
    "proj_on_star": "<O_t - O_0, hat O*>",
    "min_margin": "min over x in C, v != n(x) of O_t[n(x), x] - O_t[v, x]",
    "accuracy": "fraction of x in C whose logit n(x) is strictly largest",
}
STAGE2_COLUMNS = {
    "step": "t, number of NGD steps taken",
    "loss": "L(O, K_t)",
    "log10_loss": "log10 L(O, K_t), computed in log space",
    "norm": "||K_t||_F",
    "dist_from_init": "||K_t - K_0||_F",
    "cos_to_star": "cos(K_t, K*), NaN when K_t = 0 or K* = 0",
    "one_minus_cos": "1 - cos(K_t, K*) = ||hat K_t - hat K*||^2 / 2, NaN when undefined",
    "normalized_distance": "||hat K_t - hat K*||_F, NaN when undefined",
    "attention_margin": "min over training constraints of K_t[x*, q] - K_t[x', q] (+inf if none)",
    "train_accuracy": "fraction of sentences whose logit y is strictly largest",
    "floor": "L_floor(O), the stage-2 floor of docs/maxmargin.md (constant)",
    "excess_loss": "L(O, K_t) - L_floor(O), computed per sentence without cancellation",
    "log10_excess": "log10 of excess_loss (-inf when it is exactly 0)",
}
JOINT_COLUMNS = {
    "step": "t, number of joint NGD steps taken",
    "loss": "L(O_t, K_t)",
    "log10_loss": "log10 L(O_t, K_t), computed in log space",
    "norm_ov": "||O_t||_F",
    "norm_kq": "||K_t||_F",
    "one_minus_cos_ov": "1 - cos(O_t, O*), NaN when undefined",
    "one_minus_cos_kq": "1 - cos(K_t, K*), NaN when undefined",
    "attention_margin": "min over training constraints of K_t[x*, q] - K_t[x', q] (+inf if none)",
    "train_accuracy": "fraction of sentences whose logit y is strictly largest",
}


def record_steps(T, dense_limit=2000, n_points=2000):
    """Sorted unique int64 steps in ``0..T`` at which a stage records a row.

    All of ``0..T`` when ``T <= dense_limit``; otherwise the union of
    ``n_points // 2`` geometric and ``n_points // 2`` linear points (fewer after
    deduplication, at least ``n_points // 2``), with 0 and T always included.
    """
    T = int(T)
    if T <= dense_limit:
        return np.arange(T + 1, dtype=np.int64)
    half = max(n_points // 2, 2)
    geom = np.round(np.logspace(0.0, np.log10(T), half)).astype(np.int64)
    lin = np.round(np.linspace(0.0, T, half)).astype(np.int64)
    return np.unique(np.concatenate([[0, T], geom, lin]))


class Trajectory:
    """Recorded rows of one training stage: one numpy array per column.

    Parameters
    ----------
    columns : sequence of str
        Column names in CSV order; ``"step"`` is stored as int64, the rest as float64.
    capacity : int
        Maximum number of rows (the length of the recording schedule).
    """

    def __init__(self, columns, capacity):
        self.columns = tuple(columns)
        self._data = {c: np.zeros(capacity, dtype=np.int64 if c == "step" else np.float64)
                      for c in self.columns}
        self._n = 0

    def append(self, **row):
        """Add one row; every column must be given."""
        i = self._n
        for c in self.columns:
            self._data[c][i] = row[c]
        self._n = i + 1

    def finish(self):
        """Trim the preallocated arrays to the rows actually recorded; returns self."""
        self._data = {c: a[: self._n].copy() for c, a in self._data.items()}
        return self

    def __len__(self):
        return self._n

    def __getitem__(self, name):
        return self._data[name][: self._n]

    def __getattr__(self, name):
        data = self.__dict__.get("_data")
        if data is not None and name in data:
            return data[name][: self._n]
        raise AttributeError(f"trajectory has no column {name!r}")

    def as_dict(self):
        """``{column: array}`` (views of the recorded rows)."""
        return {c: self[c] for c in self.columns}

    def last(self):
        """The last recorded row as ``{column: python scalar}`` (empty dict if no rows)."""
        if self._n == 0:
            return {}
        return {c: self[c][-1].item() for c in self.columns}

    def to_csv_text(self):
        """CSV text: a header line, then one line per row; floats with 17 significant digits."""
        buf = io.StringIO()
        buf.write(",".join(self.columns) + "\n")
        cols = [self[c] for c in self.columns]
        for i in range(self._n):
            buf.write(",".join(str(int(a[i])) if a.dtype.kind == "i" else repr(float(a[i]))
                               for a in cols))
            buf.write("\n")
        return buf.getvalue()

    def to_csv(self, path):
        """Write :meth:`to_csv_text` to ``path`` atomically."""
        atomic_write_text(path, self.to_csv_text())

    def __repr__(self):
        return f"Trajectory({len(self)} rows, columns={list(self.columns)})"


# ==================================================================== checks
# The metrics below hand their arrays to compiled loops that index without bounds checks, so
# each public entry checks them here first (refimpl.checks; docs/model.md "Checked boundaries").
def _tokens(values, M, name, matrix=None):
    """:func:`refimpl.checks.check_tokens` of ``values`` (1-D, int, in 0..M-1) for a function
    whose M comes from the shape of its matrix argument ``matrix`` (a name): there a valid
    token >= M means that matrix is too small, a ShapeError naming it."""
    if matrix is not None:
        a = values if isinstance(values, np.ndarray) else np.asarray(values)
        if a.dtype.kind in "iu" and a.ndim == 1 and a.size and a.min() >= 0 and a.max() >= M:
            raise ShapeError(f"{matrix} has shape ({M}, {M}), too small for {name}, which holds token "
                             f"{a.max()}: {matrix} must be (M, M) with M > {a.max()} (the vocabulary size)")
    return check_tokens(values, M, name)


class _Constraints(tuple):
    """The ``(x*, x', q)`` tuple of :func:`attention_constraints`: read-only int64 arrays whose
    tokens are known to lie in 0..``vocab_size``-1, so :func:`_constraints` accepts it for any
    K of at least that size in O(1) (it is checked per recorded training step)."""

    def __new__(cls, arrays, vocab_size):
        self = super().__new__(cls, arrays)
        self.vocab_size = int(vocab_size)
        return self


def _constraints(constraints, M, matrix=None):
    """:func:`attention_constraints` output checked for an (M, M) K: None, or three 1-D int arrays
    ``(x*, x', q)`` of one length with every token in 0..M-1, as contiguous int64 (``matrix``:
    see :func:`_tokens`). O(R) for R constraints (the cost of the margin itself)."""
    if constraints is None:
        return None
    if isinstance(constraints, _Constraints) and constraints.vocab_size <= M:
        return constraints
    if not isinstance(constraints, (tuple, list)) or len(constraints) != 3:
        raise ShapeError(f"constraints must be None or a tuple (x*, x', q) of three int arrays "
                         f"(attention_constraints), got {type(constraints).__name__}"
                         + (f" of length {len(constraints)}" if isinstance(constraints, (tuple, list)) else ""))
    star, other, q = (_tokens(a, M, f"constraints[{i}] ({what})", matrix)
                      for i, (a, what) in enumerate(zip(constraints, ("x*", "x'", "q"))))
    if not len(star) == len(other) == len(q):
        raise ShapeError(f"constraints: x*, x' and q must have one length, got lengths "
                         f"{len(star)}, {len(other)}, {len(q)}")
    return star, other, q


def _margin(K, constraints):
    """attention_margin of a checked K and checked constraints (compiled)."""
    if constraints is None:
        return math.inf
    return float(km.constraint_margin(K, *constraints))


# ==================================================================== metrics
def direction_metrics(W, W_star_hat):
    """``(cos, 1 - cos, ||hat W - hat W*||)`` against the unit matrix ``W_star_hat``.

    ``1 - cos`` is computed as ``||hat W - hat W*||^2 / 2``, which has full relative
    accuracy when the directions almost agree. NaN when W = 0 or W* = 0 (``W_star_hat`` None).
    """
    n = np.linalg.norm(W)
    if n == 0.0 or W_star_hat is None:
        return math.nan, math.nan, math.nan
    dist = float(np.linalg.norm(W / n - W_star_hat))
    return float(np.vdot(W, W_star_hat) / n), 0.5 * dist * dist, dist


def stage1_metrics(O, O0, O_hat, xs, ys):
    """The stage-1 columns other than step and losses, as a dict (compiled, no (n_c, M) copy).

    Parameters
    ----------
    O, O0 : array_like, float, shape (M, M)
        Current and initial iterate (M from the shape of O). They may hold inf or NaN (a
        non-finite stop records its last iterate): see Returns.
    O_hat : array_like, float, shape (M, M), finite, or None
        ``W_ov* / ||W_ov*||`` (None when W_ov* = 0).
    xs, ys : array_like, int, shape (n_c,)
        Collocation tokens and their next tokens, each in 0..M-1.

    Returns
    -------
    dict
        ``norm = ||O||``, ``dist_from_init = ||O - O0||``, ``cos_to_star``, ``one_minus_cos``,
        ``normalized_distance`` (:func:`direction_metrics`), ``proj_on_star = <O - O0, O_hat>``,
        ``min_margin = min_x O[n(x), x] - max_{v != n(x)} O[v, x]`` (+inf when n_c = 0) and
        ``accuracy`` = the fraction of x with a positive margin (1.0 when n_c = 0). The
        margins are exact (a max and one subtraction), the same as :func:`stage1_metrics_np`;
        the norms are fixed-order sums that agree with it to a few ulps. When O is not
        finite and n_c > 0, ``min_margin`` and ``accuracy`` are NaN (a max over NaN entries is
        undefined); the norms, distances and cosines then follow IEEE arithmetic (inf or NaN).

    Raises
    ------
    ShapeError
        O not a square 2-D float array, or too small for a token of xs or ys; O0 or O_hat
        not of O's shape (M, M); xs, ys not 1-D, or of different lengths.
    NonFiniteError
        O_hat holds NaN or inf.
    SentenceInputError
        xs or ys not integers, or holding a negative token.
    """
    O = check_square(O, "O", finite=False)
    M = O.shape[0]                      # the tokens first: a token >= M names O as too small
    xs = _tokens(xs, M, "xs", "O")
    ys = _tokens(ys, M, "ys", "O")
    if len(ys) != len(xs):
        raise ShapeError(f"ys must have the length of xs ({len(xs)}, one next token per collocation "
                         f"token), got {len(ys)}")
    O0 = check_square(O0, "O0", M, finite=False)
    O_hat = None if O_hat is None else check_square(O_hat, "O_hat", M)
    return _stage1_metrics(O, O0, O_hat, xs, ys)


def _stage1_metrics(O, O0, O_hat, xs, ys):
    """:func:`stage1_metrics` of checked arguments: O, O0 C-contiguous float64 (M, M), O_hat
    finite (M, M) or None, xs, ys contiguous int64 in 0..M-1. The trainer checks once and
    calls this per recorded step (its iterates are its own float64 (M, M) arrays)."""
    nrm, dist0, cos, omc, dist, proj = km.matrix_metrics(O, O0, O_hat)
    n_c = len(xs)
    if n_c == 0:
        min_margin, acc = math.inf, 1.0
    elif np.isfinite(O).all():
        low, n_ok = km.colloc_margins(O, xs, ys)
        min_margin, acc = float(low), n_ok / n_c
    else:
        min_margin, acc = math.nan, math.nan
    return dict(norm=nrm, dist_from_init=dist0, cos_to_star=cos, one_minus_cos=omc, normalized_distance=dist,
                proj_on_star=proj, min_margin=min_margin, accuracy=acc)


def stage1_metrics_np(O, O0, O_hat, xs, ys):
    """NumPy reference of :func:`stage1_metrics` (builds the (n_c, M) logits ``O[:, xs].T``)."""
    cos, omc, dist = direction_metrics(O, O_hat)
    n_c = len(xs)
    margins = logit_margins(O[:, xs].T, ys)  # (n_c,): O[n(x), x] - max_{v != n(x)} O[v, x]
    return dict(norm=np.linalg.norm(O), dist_from_init=np.linalg.norm(O - O0), cos_to_star=cos,
                one_minus_cos=omc, normalized_distance=dist,
                proj_on_star=np.vdot(O - O0, O_hat) if O_hat is not None else 0.0,
                min_margin=margins.min() if n_c else math.inf,
                accuracy=float(np.mean(margins > 0)) if n_c else 1.0)


def stage2_metrics(K, K0, K_hat, excess, constraints):
    """The stage-2 columns other than step and losses, as a dict (compiled, no (N, M) array).

    Parameters
    ----------
    K, K0 : array_like, float, shape (M, M)
        Current and initial iterate, M = ``excess``'s vocabulary size. They may hold inf or
        NaN (a non-finite stop records its last iterate): see Returns.
    K_hat : array_like, float, shape (M, M), finite, or None
        ``W_kq* / ||W_kq*||`` (None when W_kq* = 0).
    excess : ExcessLoss
        For the fixed O (its floor is the ``floor`` column).
    constraints : tuple of int64 arrays or None
        :func:`attention_constraints` of the dataset.

    Returns
    -------
    dict
        ``norm``, ``dist_from_init``, ``cos_to_star``, ``one_minus_cos``, ``normalized_distance``
        (:func:`refimpl.kernels_metrics.matrix_metrics`), ``attention_margin``, and from one pass
        over the sentences (:meth:`ExcessLoss.at`) ``train_accuracy``, ``excess_loss``,
        ``log10_excess``, with ``floor``. The trainer's rows and the trajectory audit's
        recomputed rows both come from here, so they agree bit for bit. When K is not finite,
        ``excess_loss`` and ``log10_excess`` are NaN (:meth:`ExcessLoss.at`), so is
        ``attention_margin`` when there are constraints, and the norms follow IEEE arithmetic.

    Raises
    ------
    TypeError
        ``excess`` is not an :class:`ExcessLoss`.
    ShapeError
        K, K0 or K_hat not of shape (M, M); constraints not None or three 1-D arrays of one
        length.
    NonFiniteError
        K_hat holds NaN or inf.
    SentenceInputError
        A constraint token that is not an integer or is outside 0..M-1.
    """
    if not isinstance(excess, ExcessLoss):
        raise TypeError(f"excess must be an ExcessLoss, got {type(excess).__name__}")
    M = excess.OT.shape[0]
    K = check_square(K, "K", M, finite=False)
    K0 = check_square(K0, "K0", M, finite=False)
    K_hat = None if K_hat is None else check_square(K_hat, "K_hat", M)
    return _stage2_metrics(K, K0, K_hat, excess, _constraints(constraints, M))


def _stage2_metrics(K, K0, K_hat, excess, constraints):
    """:func:`stage2_metrics` of checked arguments (K, K0 C-contiguous float64 (M, M), K_hat
    finite or None, constraints checked); the trainer checks once and calls this per recorded
    step, so its rows and the audit's recomputed rows are the same computation."""
    nrm, dist0, cos, omc, dist, _ = km.matrix_metrics(K, K0, K_hat)
    finite = bool(np.isfinite(K).all())      # one pass, shared with the excess
    ex, log10_ex, acc = excess._at(K, finite)
    # a non-finite K has no margin; without constraints the margin is +inf for every K
    margin = math.nan if constraints is not None and not finite else _margin(K, constraints)
    return dict(norm=nrm, dist_from_init=dist0, cos_to_star=cos, one_minus_cos=omc, normalized_distance=dist,
                attention_margin=margin, train_accuracy=acc, floor=excess.floor,
                excess_loss=ex, log10_excess=log10_ex)


def attention_constraints(ds):
    """The training constraints of W_kq* as three int64 arrays ``(x*, x', q)``, or None if none
    (:func:`refimpl.data.training_relations`, reordered for :func:`attention_margin`)."""
    q, lower, upper = training_relations(ds)
    if not len(q):
        return None
    arrays = [np.array(a, dtype=np.int64) for a in (upper, lower, q)]   # own copies, read-only:
    for a in arrays:                                                    # _constraints trusts them
        a.setflags(write=False)
    return _Constraints(arrays, ds.vocab_size)


def attention_inert(ds):
    """Why attention cannot change the loss on ``ds``, or None when it can.

    Attention matters only in a sentence with two distinct tokens (a training constraint of
    W_kq*); without one, ``z = sum_l phi_l O[:, x_l]`` is the same column for every K, the
    stage-2 gradient is exactly zero and ``W_kq* = 0``.

    Returns
    -------
    str or None
        ``"every sentence has length 1: attention is constant"``, ``"no sentence has two
        distinct tokens: attention does not change any logit"``, or None.
    """
    if attention_constraints(ds) is not None:
        return None
    if int(np.max(ds.lengths)) == 1:
        return "every sentence has length 1: attention is constant"
    return "no sentence has two distinct tokens: attention does not change any logit"


def attention_margin(K, constraints):
    """min over training constraints of K[x*, q] - K[x', q]; +inf when there are none.

    Compiled (no gathered temporaries); the same value as :func:`attention_margin_np` (one
    subtraction per constraint, then a min: exact).

    Parameters
    ----------
    K : array_like, float, shape (M, M), finite
    constraints : tuple ``(x*, x', q)`` of int arrays, shape (R,) each, or None
        From :func:`attention_constraints`; every token in 0..M-1.

    Returns
    -------
    float

    Raises
    ------
    ShapeError
        K not a square 2-D float array, or too small for a token of the constraints;
        constraints not None or three 1-D arrays of one length.
    NonFiniteError
        K holds NaN or inf (the margin would be made up from the finite entries).
    SentenceInputError
        A constraint token that is not an integer or is negative.
    """
    K = check_square(K, "K")
    return _margin(K, _constraints(constraints, K.shape[0], "K"))


def attention_margin_np(K, constraints):
    """NumPy reference of :func:`attention_margin`."""
    if constraints is None:
        return math.inf
    star, other, q = constraints
    return float(np.min(K[star, q] - K[other, q]))


def logit_margins(z, y):
    """z_y - max_{v != y} z_v per row. z : (N, M) logits; y : int (N,). +inf when M = 1."""
    rows = np.arange(len(y))
    other = z.copy()
    other[rows, y] = -np.inf
    return z[rows, y] - other.max(axis=1)


def accuracy(z, y):
    """Fraction of rows whose logit y is strictly the largest. z : (N, M); y : int (N,)."""
    return float(np.mean(logit_margins(z, y) > 0))


class LogitAccuracy:
    """The train accuracy at (O, K) without the (N, M) logits: one compiled pass
    (:func:`refimpl.kernels_metrics.logit_accuracy`), equal to
    ``accuracy(kernels.logits(O, K, ds.tokens, ds.lengths), ds.next_tokens)`` bit for bit.

    Parameters
    ----------
    ds : RealizableDataset
        Validated here if it was not (:func:`refimpl.data.ensure_valid`); its ragged sentences
        and next tokens are kept (O(N) scratch besides).

    Call it with ``(O, K)``, finite float (M, M) each (M = ``ds.vocab_size``); returns the
    fraction of sentences whose logit y is strictly the largest. The call raises ShapeError
    (O or K not of shape (M, M)) or NonFiniteError (O or K holds NaN or inf), as
    :func:`refimpl.kernels.logits` does; each check is O(M^2).

    Raises
    ------
    TypeError
        ``ds`` is not a RealizableDataset.
    DatasetError
        ``ds`` is not a realizable dataset.
    """

    def __init__(self, ds):
        ensure_valid(ds)
        self.M = int(ds.vocab_size)
        self.flat = np.ascontiguousarray(ds.flat_tokens, dtype=np.int64)
        self.offsets = np.ascontiguousarray(ds.offsets, dtype=np.int64)
        self.y = np.ascontiguousarray(ds.next_tokens, dtype=np.int64)
        self.N, self.Lmax = len(self.y), ds.max_len
        self.nc = km.metric_chunks(self.N, len(self.flat), ds.vocab_size)
        self._chooser = kernels.chooser_for(self.nc)   # serial or threaded: the same bits
        self._correct = np.empty(self.N, dtype=np.uint8)

    def __call__(self, O, K):
        O = check_square(O, "O", self.M)
        K = check_square(K, "K", self.M)
        if self.N == 0:
            return math.nan
        OT = np.ascontiguousarray(O.T)
        KT = np.ascontiguousarray(K.T)
        return km.logit_accuracy(OT, KT, self.flat, self.offsets, self.y, self.Lmax, self.nc,
                                 self._correct, self._chooser) / self.N


class ExcessLoss:
    """The excess-loss columns ``L(O, K) - L_floor(O)`` and their log10 for a fixed O (the floor
    of docs/theory.md section 9), computed in log space so that an excess far below the
    smallest double (large ``T0``: the floor and the excess are of size ``e^{-a}``) keeps its
    logarithm, together with the train accuracy.

    :meth:`at` ``(K)`` is the trainer's path: one compiled pass over the ragged sentences
    (:func:`refimpl.kernels_metrics.excess_accuracy`). :meth:`reference` ``(phi, z)`` (also
    ``__call__``) is the NumPy definition, which builds (N, M) arrays per call; the
    constructor builds none (O(N) arrays and O(P M) tables, P <= M the distinct pairs (x*, y)).

    Parameters
    ----------
    ds : RealizableDataset
        Validated here if it was not (:func:`refimpl.data.ensure_valid`).
    O : array_like, float, shape (M, M), finite
        The fixed W_ov (M = ``ds.vocab_size``).
    floor : float
        ``L_floor(O)``.
    vertex : array_like of bool, shape (N,)
        Whether perfect attention is the floor of each sentence.
    log_floor : array_like of float, shape (N,), finite
        Per-sentence log-floors.

    Raises
    ------
    TypeError
        ``ds`` is not a RealizableDataset.
    DatasetError
        ``ds`` is not a realizable dataset.
    ShapeError
        O not of shape (M, M); vertex or log_floor not of shape (N,).
    NonFiniteError
        O or log_floor holds NaN or inf.

    Notes
    -----
    Per pair p = (x*, y) with ``b_v = O[v, x*] - O[y, x*]`` (``b_y = -inf``): ``c_p = max_v b_v``,
    ``eb[p, v] = exp(b_v - c_p)`` in [0, 1] and ``log1p_s[p] = log(1 + sum_v e^{b_v})``
    (= the vertex log-loss argument; never overflows). The formulas are in :meth:`reference`.
    """

    _DIRECT = km._DIRECT  # delta_v above this: the excess is not small, take log(loss_i - floor_i) directly
    _LOG_TINY = km._LOG_TINY  # below, log(log1p(e^r)) = r to < e^{-40} relative

    def __init__(self, ds, O, floor, vertex, log_floor):
        ensure_valid(ds)
        N, M = ds.n_sentences, int(ds.vocab_size)
        O = check_square(O, "O", M)
        vertex = np.asarray(vertex)                              # bool (N,), read per sentence
        if vertex.shape != (N,):
            raise ShapeError(f"vertex must have shape ({N},) (one flag per sentence), got shape {vertex.shape}")
        log_floor = check_weights(log_floor, (N,), "log_floor")
        self.floor = float(floor)
        self._ds = ds
        self.y = np.ascontiguousarray(ds.next_tokens, dtype=np.int64)
        self.vertex = np.ascontiguousarray(vertex, dtype=bool)
        self.log_floor = np.ascontiguousarray(log_floor, dtype=np.float64)  # (N,) per-sentence log-floors
        self.OT = np.ascontiguousarray(O.T)  # (M, M): row u is the column O[:, u]
        self.flat = np.ascontiguousarray(ds.flat_tokens, dtype=np.int64)
        self.offsets = np.ascontiguousarray(ds.offsets, dtype=np.int64)
        self.xstar = np.ascontiguousarray(ds.optimal, dtype=np.int64)
        self.Lmax = ds.max_len
        keys, pair = np.unique(self.xstar * M + self.y, return_inverse=True)
        self.pair = np.ascontiguousarray(pair.reshape(-1), dtype=np.int64)  # (N,) index of (x*, y)
        xp, yp = keys // M, keys % M
        P = len(keys)
        zs = self.OT[xp]  # (P, M): perfect-attention logits z* of each pair
        b = zs - zs[np.arange(P), yp][:, None]
        b[np.arange(P), yp] = -np.inf
        self.c = b.max(axis=1) if M > 1 else np.zeros(P)  # (P,): max_{v != y} (z*_v - z*_y), finite
        with np.errstate(divide="ignore", invalid="ignore", under="ignore"):
            self.eb = np.ascontiguousarray(np.exp(b - self.c[:, None]))  # (P, M) in [0, 1], 0 at v = y
            # log(1 + S*), S* = sum_{v != y} exp(z*_v - z*_y) = e^c sum(eb): never overflows
            self.log1p_s = np.logaddexp(0.0, self.c + np.log(self.eb.sum(axis=1)))
            ecl = np.exp(self.c - self.log1p_s)  # (P,) e^c / (1 + S*) in (0, 1]: R = num * ecl
        self.ecl = np.where(ecl >= km._ECL_MIN, ecl, 0.0)
        self._tie = km._TIE * km._EPS * (float(np.max(np.abs(O))) if O.size else 0.0)
        # O as column constants + a few exceptions (after stage 1 from zero): O(L |S|) per sentence
        self._rep = kernels.structure(O, kernels._STRUCT_MIN_M)
        if self._rep is not None:  # the (key, query) pairs: K is gathered there instead of transposed
            self._pairs, self._slot = kernels_sparse.pair_slots(self.flat, self.offsets, M)
        self._nc = km.metric_chunks(N, len(self.flat), M)
        self._chooser = kernels.chooser_for(self._nc)
        self._lx = np.empty(N)
        self._xv = np.empty(N)
        self._correct = np.empty(N, dtype=np.uint8)

    def at(self, K):
        """Excess loss, its log10 and the train accuracy at K, in one compiled pass.

        Parameters
        ----------
        K : array_like, float, shape (M, M)
            The attention matrix (token coordinates); inf and NaN are allowed (see Returns).

        Returns
        -------
        excess : float
            ``L(O, K) - L_floor(O)`` (underflows to 0.0 below 5e-324; NaN when K is not finite).
        log10_excess : float
            Its log10 from log space (``-inf`` when every sentence is at its floor; NaN when K
            is not finite).
        accuracy : float
            Fraction of sentences whose logit y is strictly the largest (the same count as
            :func:`accuracy` of the padded logits; a NaN logit is not largest).

        Raises
        ------
        ShapeError
            K not of shape (M, M) (checked before the compiled pass; O(1) for a float64 array).

        Notes
        -----
        The formulas of :meth:`reference`, with O(M + Lmax) scratch per chunk of sentences
        (module docstring of :mod:`refimpl.kernels_metrics`): the same values to rounding
        (``tests/test_metrics_fused.py`` states the tolerances). When O is column constants
        plus a few exceptions (:func:`refimpl.kernels.structure`, M >= 64, as after stage 1
        from zero) the pass is :func:`refimpl.kernels_metrics.excess_accuracy_structured`,
        O(L |S|) per sentence, |S| <= L + 2 the rows that differ from the column constants,
        instead of O(L M) (``tests/test_kernels_sparse.py`` compares them).
        """
        K = check_square(K, "K", self.OT.shape[0], finite=False)
        return self._at(K, bool(np.isfinite(K).all()))

    def _at(self, K, finite):
        """:meth:`at` of a checked K (C-contiguous float64 (M, M)); ``finite``: whether K is."""
        N = len(self.y)
        if self._rep is not None:
            ex, log10_ex, n_ok = km.excess_accuracy_structured(
                self._rep, kernels_sparse.gather(K, self._pairs), self._slot, self.flat, self.offsets, self.y,
                self.xstar, self.pair, self.eb, self.c, self.log1p_s, self.ecl, self.vertex, self.log_floor,
                self._tie, self.Lmax, self._nc, self._lx, self._xv, self._correct, self._chooser)
        else:
            KT = np.ascontiguousarray(K.T)  # (M, M) copy: rows are queries
            ex, log10_ex, n_ok = km.excess_accuracy(
                self.OT, KT, self.flat, self.offsets, self.y, self.xstar, self.pair, self.eb, self.c, self.log1p_s,
                self.ecl, self.vertex, self.log_floor, self._tie, self.Lmax, self._nc, self._lx, self._xv,
                self._correct, self._chooser)
        if not finite:  # a non-finite stop: the attention (so the excess) is undefined
            ex, log10_ex = math.nan, math.nan
        return ex, log10_ex, (n_ok / N if N else math.nan)

    def reference(self, phi, z):
        """Excess loss ``L(O, K) - L_floor(O)`` and its log10 in NumPy (the definition).

        Parameters
        ----------
        phi : ndarray, float64, shape (N, Lmax)
            The attention at K (:func:`refimpl.kernels.attention`).
        z : ndarray, float64, shape (N, M)
            The logits at K (:func:`refimpl.kernels.logits`).

        Returns
        -------
        excess : float
            ``L - L_floor`` in float64 (underflows to 0.0 below 5e-324).
        log10_excess : float
            Its log10 from log space (finite while the excess is positive, ``-inf`` at 0).

        Notes
        -----
        A sentence whose floor is the perfect-attention vertex has ``floor_i = log1p(S*_i)`` and
        ``loss_i = log1p(S_i)``. With ``z - z* = sum_l phi_l (O[:, x_l] - O[:, x*])`` (positions
        of x* add 0, so this small vector comes from the small attention weights directly) and
        ``delta_v = (z - z*)_v - (z - z*)_y``: ``S_i - S*_i = sum_v exp(z*_v - z*_y) expm1(delta_v)``
        and ``loss_i - floor_i = log1p(R_i)``, ``R_i = (S_i - S*_i)/(1 + S*_i)``. With
        ``c_i = max_{v != y}(z*_v - z*_y)``:
        ``log R_i = c_i + log(sum_v e^{z*_v - z*_y - c_i} expm1(delta_v)) - log(1 + S*_i)``, every
        term of order 1, and ``log(loss_i - floor_i) = log(log1p(e^{log R_i}))`` (``= log R_i``
        below -40, error < e^{-40} relative). A sentence with some ``delta_v > 30`` (far from its
        floor) or whose floor is inside the simplex uses
        ``log(loss_i - floor_i) = l_i + log(-expm1(f_i - l_i))`` from the log-loss ``l_i`` and
        log-floor ``f_i``. A sentence whose computed excess is <= 0 (rounding at the floor)
        contributes 0. The mean is a log-sum-exp over sentences minus ``log N``.
        """
        ds = self._ds
        N = len(self.y)
        idx = np.arange(N)
        safe = np.where(ds.valid_mask, ds.tokens, 0)  # (N, Lmax); padding has phi = 0
        zs = self.OT[self.xstar]  # (N, M): perfect-attention logits z*
        c, eb, log1p_s = self.c[self.pair], self.eb[self.pair], self.log1p_s[self.pair]
        dz = np.zeros_like(zs)  # (N, M): z - z*, one position at a time (no N x L x M array)
        for l in range(phi.shape[1]):
            dz += phi[:, l, None] * (self.OT[safe[:, l]] - zs)
        delta = dz - dz[idx, self.y][:, None]
        lx = np.full(N, -np.inf)  # log of each sentence's excess
        with np.errstate(divide="ignore", under="ignore", over="ignore", invalid="ignore"):
            stable = self.vertex & (delta.max(axis=1) <= self._DIRECT)
            if stable.any():
                num = (eb[stable] * np.expm1(delta[stable])).sum(axis=1)
                pos = num > 0
                log_r = (c[stable] + np.log(np.where(pos, num, 1.0)) - log1p_s[stable])
                small = log_r < self._LOG_TINY
                log_x = np.where(small, log_r, np.log(np.log1p(np.exp(np.minimum(log_r, 700.0)))))
                lx[stable] = np.where(pos, log_x, -np.inf)
            direct = ~stable
            if direct.any():
                ll = log_loss(z[direct], self.y[direct])
                lf = self.log_floor[direct]
                above = ll > lf
                lx[direct] = np.where(above, ll + np.log(-np.expm1(np.minimum(lf - ll, 0.0))), -np.inf)
            top = lx.max()
            if not top > -np.inf:
                return 0.0, -math.inf
            log_ex = top + math.log(float(np.sum(np.exp(lx - top)))) - math.log(N)
            return math.exp(log_ex), float(log_ex / math.log(10.0))

    __call__ = reference
