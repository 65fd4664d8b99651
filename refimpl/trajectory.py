"""Training trajectories: which steps are recorded and how a record is stored (docs/reproduce.md).

A :class:`Trajectory` is a table with one float64 (or int64) numpy array per
column, all of the same length, the rows being the recorded steps in
increasing order. Columns are read as attributes (``traj.loss``) or by name
(``traj["loss"]``); :meth:`Trajectory.to_csv` writes the table atomically.

The metrics of the columns are computed here too (:func:`stage1_metrics`,
:class:`ExcessLoss`, ...), from the kernels' outputs; none of them costs more
than a kernel call.

Recording schedule (:func:`record_steps`): every step when the stage has at
most ``dense_limit`` steps; otherwise the union of a geometric schedule
(``round(T ** (k / n))``, dense in log-scale plots) and a linear one
(``k T / n``, dense in linear plots), always containing 0 and T.
"""
from __future__ import annotations

import io
import math

import numpy as np

from .data import training_relations
from .io import atomic_write_text
from .maxmargin import log_loss

__all__ = ["Trajectory", "record_steps", "STAGE1_COLUMNS", "STAGE2_COLUMNS", "JOINT_COLUMNS",
           "direction_metrics", "stage1_metrics", "attention_constraints", "attention_inert", "attention_margin",
           "accuracy", "ExcessLoss"]

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
    """The stage-1 columns other than step and losses, as a dict.

    O, O0 : (M, M) current and initial iterate; O_hat : W_ov* / ||W_ov*||;
    xs, ys : (n_c,) collocation tokens and their next tokens.
    """
    cos, omc, dist = direction_metrics(O, O_hat)
    n_c = len(xs)
    margins = logit_margins(O[:, xs].T, ys)  # (n_c,): O[n(x), x] - max_{v != n(x)} O[v, x]
    return dict(norm=np.linalg.norm(O), dist_from_init=np.linalg.norm(O - O0), cos_to_star=cos,
                one_minus_cos=omc, normalized_distance=dist,
                proj_on_star=np.vdot(O - O0, O_hat) if O_hat is not None else 0.0,
                min_margin=margins.min() if n_c else math.inf,
                accuracy=float(np.mean(margins > 0)) if n_c else 1.0)


def attention_constraints(ds):
    """The training constraints of W_kq* as three int64 arrays ``(x*, x', q)``, or None if none
    (:func:`refimpl.data.training_relations`, reordered for :func:`attention_margin`)."""
    q, lower, upper = training_relations(ds)
    return (upper, lower, q) if len(q) else None


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
    """min over training constraints of K[x*, q] - K[x', q]; +inf when there are none."""
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


class ExcessLoss:
    """The excess-loss columns ``L(O, K) - L_floor(O)`` and their log10 for a fixed O (the floor
    of docs/theory.md section 9), computed in log space so that an excess far below the
    smallest double (large ``T0``: the floor and the excess are of size ``e^{-a}``) keeps its
    logarithm.

    Call it with ``(phi, z)``; precomputes what does not depend on K.

    Parameters
    ----------
    ds : RealizableDataset
    O : ndarray, float64, shape (M, M)
        The fixed W_ov.
    floor : float
        ``L_floor(O)``.
    vertex : array_like of bool, shape (N,)
        Whether perfect attention is the floor of each sentence.
    log_floor : array_like of float, shape (N,)
        Per-sentence log-floors.
    """

    _DIRECT = 30.0  # delta_v above this: the excess is not small, take log(loss_i - floor_i) directly
    _LOG_TINY = -40.0  # below, log(log1p(e^r)) = r to < e^{-40} relative

    def __init__(self, ds, O, floor, vertex, log_floor):
        N = ds.n_sentences
        self.floor = float(floor)
        self.y, self.idx = ds.next_tokens, np.arange(N)
        self.vertex = np.asarray(vertex, dtype=bool)
        self.log_floor = np.asarray(log_floor, dtype=np.float64)  # (N,) per-sentence log-floors
        self.OT = np.ascontiguousarray(O.T)  # (M, M): row u is the column O[:, u]
        self.safe = np.where(ds.valid_mask, ds.tokens, 0)  # (N, Lmax); padding has phi = 0
        zs = self.OT[ds.optimal]  # (N, M): perfect-attention logits z*
        self.zs = zs
        b = zs - zs[self.idx, self.y][:, None]
        b[self.idx, self.y] = -np.inf
        self.c = b.max(axis=1)  # (N,): max_{v != y} (z*_v - z*_y), finite (M >= 2)
        self.eb = np.exp(b - self.c[:, None])  # (N, M): exp(z*_v - z*_y - c) in [0, 1], 0 at v = y
        # log(1 + S*_i), S*_i = sum_{v != y} exp(z*_v - z*_y) = e^c sum(eb): never overflows
        self.log1p_s = np.logaddexp(0.0, self.c + np.log(self.eb.sum(axis=1)))

    def __call__(self, phi, z):
        """Excess loss ``L(O, K) - L_floor(O)`` and its log10, without cancellation or underflow.

        Parameters
        ----------
        phi : ndarray, float64, shape (N, Lmax)
            The attention at K.
        z : ndarray, float64, shape (N, M)
            The logits at K.

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
        N = len(self.y)
        dz = np.zeros_like(self.zs)  # (N, M): z - z*, one position at a time (no N x L x M array)
        for l in range(phi.shape[1]):
            dz += phi[:, l, None] * (self.OT[self.safe[:, l]] - self.zs)
        delta = dz - dz[self.idx, self.y][:, None]
        lx = np.full(N, -np.inf)  # log of each sentence's excess
        with np.errstate(divide="ignore", under="ignore", over="ignore", invalid="ignore"):
            stable = self.vertex & (delta.max(axis=1) <= self._DIRECT)
            if stable.any():
                num = (self.eb[stable] * np.expm1(delta[stable])).sum(axis=1)
                pos = num > 0
                log_r = (self.c[stable] + np.log(np.where(pos, num, 1.0)) - self.log1p_s[stable])
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
