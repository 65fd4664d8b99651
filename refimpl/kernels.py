"""Numba kernels in token coordinates: losses and scale-free gradients (docs/model.md).

Token coordinates: ``O = E^T W_ov E`` and ``K = E^T W_kq E``, float64 (M, M),
row = key token, column = query token. For a sentence x (length L, query q):

    s_l = K[x_l, q],   phi = softmax(s),   z = sum_l phi_l O[:, x_l]   (M,)
    loss = log1p(sum_{v != y} exp(z_v - z_y)),   r = p - e_y
    dL/dO[:, x_l] += (1/N) phi_l r
    dL/dK[x_l, q] += (1/N) phi_l (g_l - sum_m phi_m g_m),   g_l = O[:, x_l]^T r

Scale-free gradients (docs/model.md, "Scale-free gradient"). Every gradient is
returned as ``(Gs, log_scale)`` with ``G = exp(log_scale) * Gs`` and Gs = O(1):
the common factor ``exp(-lam_min)`` is divided out, where per sentence
``lam = max(m, 0) (+ delta for dL/dK alone)``, m = z_y - max_{v != y} z_v the
logit margin, delta the attention gap (below). So NGD directions stay exact
after the loss underflows float64. ``log10_loss`` is computed in log space and
is finite for any margin; ``loss`` is the float64 value (may underflow to 0).

Attention gap. When the top score of a sentence belongs to one token x* (all
its positions), every term of dL/dK carries a factor exp(-delta), delta = s_top
minus the best other score: with u_l = 1 on top positions and
exp(s_l - s_second) elsewhere, U = n_top + e^{-delta} sum_{other} u,

    top l:    e^{delta} phi_l (g_l - gbar) = (1/U^2) sum_{m other} u_m (g_* - g_m)
    other l:  e^{delta} phi_l (g_l - gbar) = (u_l/U^2) (n_top (g_l - g_*) + e^{-delta} sum_{m other} u_m (g_l - g_m))

When different tokens tie for the top score, delta = 0 and the plain formula is used.

Parallelism. Sentences are split into a fixed number of contiguous chunks (a
function of N, L, M only, never of the thread count); each chunk accumulates
into its own M x M scratch with its own running scale, and chunks are reduced
in index order, so results are bit-identical run to run. The same chunks run either
on Numba's threads or one after another on the calling thread, with the same bits;
which of the two a prepared problem uses is chosen by timing both (:class:`_Chooser`,
environment variable ``REFIMPL_THREADS``), because on a CPU shared with another busy
process the threaded driver can be several times slower than the serial one.
Kernels allocate nothing that grows with N. Requires M >= 2. All kernels:
``njit(cache=True)``, no fastmath; the sentence loop lives in
:mod:`refimpl.kernels_chunk` and is called through the plain Python wrappers below.

Structured O. When every column of O is a constant except at a few rows (bitwise; after
stage 1 from zero initialisation O[:, x] = a (e_{n(x)} - 1/M) on the collocation set and 0
elsewhere), :class:`Stage2Direction` and :class:`Stage1Direction` compute from the column
constants and the exceptions instead (:mod:`refimpl.kernels_sparse`, :func:`structure`):
the same formulas, O(L |S|) per sentence instead of O(L M) (S: the next token and the
exception rows of the sentence's tokens, |S| <= L + 1 after stage 1), equal to the dense
results up to rounding. The one-shot functions (stage1_grad, stage2_grad, joint_grad,
stage2_loss) always run the dense kernels.
"""
from __future__ import annotations

import math
import numbers
import os
import time

import numpy as np
from numba import njit

from .checks import check_padded, check_square, check_token_problem, check_tokens, check_weights
from .budget import check_bytes
from .errors import ConfigError, InputError, SentenceInputError, ShapeError
from . import kernels_sparse
from .kernels_chunk import _drive_parallel, _drive_serial
from .kernels_math import scaled, sumsq4
from .kernels_metrics import fro_norm
from .kernels_np import (attention_np, joint_grad_np, logits_np, normalize_np,  # noqa: F401 (twins)
                         normalize_pair_np, stage1_grad_np, stage2_grad_np, stage2_loss_np)

_PUBLIC = ("stage1_grad", "stage2_grad", "joint_grad", "stage2_loss", "normalize", "normalize_pair",
           "attention", "logits")
__all__ = ["Stage1Direction", "Stage2Direction", "THREADS_ENV", "compensated_step", "n_chunks", "ragged", *_PUBLIC, *(n + "_np" for n in _PUBLIC)]

# Chunk counts (n_chunks), measured on the 2-vCPU VM (two threads gave ~1.4-1.6x on the
# step, 1.94x on a pure FMA loop: bench/README.md, "Shared CPU"). Quiet, threads paid off from ~6000 token-columns of
# work (N * Lmax * M; ~25 us serial), but a parallel region costs a thread wake-up and a
# barrier, which a busy process on the other vCPU stretches to a scheduler time slice: below
# ~50,000 token-columns (~60 us serial at M = 20; size S, M=20 N=200 lengths 2..6, is 24,000)
# the gain on a quiet machine (a few us; a sleeping pool's wake-up alone is ~10 us) is not
# worth the risk, so those sizes stay serial.
# Chunks also need >= 10 M^2 of work each (each zeroes and reduces its own M x M
# accumulator); 4 chunks beat 2 from 200 M^2 on.
_PARALLEL_WORK = 50_000
_MIN_WORK_PER_M2 = 10
_FOUR_CHUNKS_PER_M2 = 200
_SCRATCH_BYTES = 1 << 28  # cap on chunks * M * M * 8 * (number of gradients)
_OPTS = dict(cache=True, fastmath=False, nogil=True, boundscheck=False, error_model="numpy")
_LANES = 8    # O^T's rows are padded to a multiple of this many float64 (_transposed)


# ===================================================================== public wrappers
def n_chunks(N, Lmax, M, n_grads=1):
    """Number of chunks used for (N, Lmax, M): 1 (serial), 2 or 4 (module constants above).

    A function of the sizes only, so results never depend on the thread count.
    """
    work = N * Lmax * M
    per_m2 = work / (M * M * max(n_grads, 1))
    if work < _PARALLEL_WORK or per_m2 < _MIN_WORK_PER_M2:
        return 1
    nc = 4 if per_m2 >= _FOUR_CHUNKS_PER_M2 else 2
    cap = max(1, _SCRATCH_BYTES // (8 * M * M * max(n_grads, 1)))
    return int(max(1, min(nc, cap, N)))


def _transposed(O, M=None):
    """O^T as a C-contiguous float64 (M, Mp) copy, after checking O is (M, M) with M >= 2.

    Mp is M rounded up to a multiple of ``_LANES``; columns M..Mp-1 are zeros. The compiled
    loops over a sentence's M logits then run whole SIMD vectors: a loop of M = 20 left 4
    elements to scalar code: an exp loop over 20 entries took 27.4 ns, one over 24 took
    18.7 ns. The padding only adds terms that are exactly zero.
    """
    O = np.asarray(O, dtype=np.float64)
    M = O.shape[0] if M is None else M
    if O.ndim != 2 or O.shape != (M, M) or M < 2:
        raise ShapeError(f"O must be square {(M, M)} with M >= 2, got shape {O.shape}")
    OT = np.zeros((M, -(-M // _LANES) * _LANES))
    OT[:, :M] = O.T
    return OT


def ragged(tokens, lengths):
    """(flat int64 (T,), offsets int64 (N + 1,), Lmax) from sentences given as a padded
    ``tokens`` (N, width) with ``lengths`` (N,), or as already flat ``tokens`` (T,) with
    ``lengths`` (N,) summing to T. Checks that every length lies in 1..width (or that the
    lengths add up to T), so the compiled loops never index past a sentence."""
    tokens = np.asarray(tokens)
    lengths = np.ascontiguousarray(lengths, dtype=np.int64).ravel()
    if tokens.dtype.kind not in "iu":
        raise ShapeError(f"tokens must be an integer array, got dtype {tokens.dtype}")
    if lengths.size and lengths.min() < 1:
        i = int(np.argmin(lengths))
        raise SentenceInputError(f"lengths[{i}] = {lengths[i]}: a sentence needs at least one token")
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if tokens.ndim == 1:
        if offsets[-1] != len(tokens):
            raise SentenceInputError(f"flat tokens hold {len(tokens)} tokens but the lengths add up to "
                                     f"{offsets[-1]}")
        flat = np.ascontiguousarray(tokens, dtype=np.int64)
    elif tokens.ndim == 2:
        N, width = tokens.shape
        if len(lengths) != N:
            raise ShapeError(f"tokens has {N} rows but lengths has {len(lengths)} entries")
        if lengths.size and lengths.max() > width:
            i = int(np.argmax(lengths))
            raise SentenceInputError(f"lengths[{i}] = {lengths[i]} exceeds the padded width {width}")
        flat = np.ascontiguousarray(tokens[np.arange(width)[None, :] < lengths[:, None]], dtype=np.int64)
    else:
        raise ShapeError(f"tokens must be 1-D (flat) or 2-D (padded), got {tokens.ndim} dimensions")
    return flat, offsets, max(int(lengths.max(initial=0)), 1)


THREADS_ENV = "REFIMPL_THREADS"
"""Environment variable choosing how chunked kernels run: ``auto`` (default: time both
drivers and keep the faster, :class:`_Chooser`), ``serial`` (the chunks one after another on
the calling thread) or ``parallel`` (the chunks on Numba's threads, ``NUMBA_NUM_THREADS``).
It covers the step kernels and the recorded-step metric passes
(:class:`refimpl.trajectory.ExcessLoss`, :class:`refimpl.trajectory.LogitAccuracy`). The
results are the same bits in all three; it is read when a problem is prepared."""
_PROBE_EVERY = 64      # calls between two timings of the driver not in use
_PROBE_SOONER = 2.0    # a parallel call this much slower than usual brings the next timing forward
_MIN_PROBE_GAP = 8     # ... but not closer than this many calls to the previous one
_RECENT = 15           # timings of the driver in use whose median is "usual"


def _median(xs):
    """The upper median of a short non-empty list (plain Python: np.median costs ~10 us)."""
    return sorted(xs)[len(xs) // 2]


def _threads_mode():
    """``REFIMPL_THREADS`` as one of "auto", "serial", "parallel" (ConfigError otherwise)."""
    mode = os.environ.get(THREADS_ENV, "").strip().lower() or "auto"
    if mode not in ("auto", "serial", "parallel"):
        raise ConfigError(f"{THREADS_ENV}={os.environ[THREADS_ENV]!r}: expected auto, serial or parallel")
    return mode


class _Chooser:
    """The serial or the parallel driver for one chunked problem, chosen by timing both.

    Both drivers run the same chunks and reduce them in the same order, so the choice
    changes the speed only, never a bit of the result. On a quiet 2-vCPU machine the
    parallel driver wins from ~50,000 token-columns of work; with another busy process on
    the second vCPU it can lose several-fold (its second thread waits for a time slice,
    and the whole step waits for it), while the serial step loses at most what the busy
    sibling vCPU costs it (0.96-1.04x measured, bench/README.md). So ``auto`` (the default):

    - calls 0 and 1 run each driver once, untimed (compilation, thread start-up); calls 2-5
      alternate them, timed, and the faster (by its best time) is kept;
    - every ``_PROBE_EVERY`` (64) calls the other driver runs once; if it beats the median
      of the last 3 timings of the kept one, it runs once more, and after two wins in a row
      it is kept instead (so a neighbour appearing or leaving mid-run is followed within
      ~64 calls);
    - when that median of 3 of the parallel driver exceeds ``_PROBE_SOONER`` (2x) the
      median of its last ``_RECENT`` (15) timings (both looked at every 4th call), the next
      probe comes at once, or ``_MIN_PROBE_GAP`` (8) calls after the previous one: a
      neighbour costs the parallel driver most.

    Parameters
    ----------
    mode : {"auto", "serial", "parallel"}
        "serial" / "parallel" always use that driver (no timing).

    Attributes
    ----------
    use : int
        The driver in use, 0 (serial) or 1 (parallel).
    counts : list of two ints
        Calls run by the serial and by the parallel driver so far.
    clock : callable
        Seconds as a float (``time.perf_counter``; replaceable in tests).
    """

    def __init__(self, mode):
        self.mode = mode
        self.clock = time.perf_counter
        self.use = 0 if mode == "serial" else 1          # index into (serial, parallel)
        self.calls = 0
        self.counts = [0, 0]                             # calls run by each driver
        self._recent = []
        self._timed = 0
        self._median = np.inf
        self._next_probe = 6
        self._last_probe = 0
        self._wins = 0
        self._start = [np.inf, np.inf]                   # best time of each in calls 2-5

    def run(self, drivers, args):
        """Run ``drivers[0 or 1](*args)`` (serial, parallel) and learn from its time."""
        k = self.calls
        self.calls = k + 1
        if self.mode != "auto":
            self.counts[self.use] += 1
            return drivers[self.use](*args)
        if 6 <= k < self._next_probe:                    # the kept driver (most calls)
            which = self.use
        elif k < 6:                                      # start-up: P, S untimed, then P S P S
            which = 1 - k % 2
        else:
            which = 1 - self.use
        clock = self.clock
        t0 = clock()
        out = drivers[which](*args)
        t = clock() - t0
        self.counts[which] += 1
        if k < 6:
            if k >= 2:
                self._start[which] = min(self._start[which], t)
            if k == 5:
                self._keep(0 if self._start[0] < self._start[1] else 1, [self._start[0], self._start[1]])
            return out
        if which != self.use:                            # a probe of the other driver
            self._last_probe = k
            if t < self._short():                        # faster than the last 3 of the kept one
                self._wins += 1
                if self._wins >= 2:
                    self._keep(which, [t])
                else:
                    self._next_probe = k + 1             # confirm on the next call
            else:
                self._wins = 0
                self._next_probe = k + _PROBE_EVERY
            return out
        recent = self._recent
        recent.append(t)
        if len(recent) > _RECENT:
            del recent[0]
        self._timed += 1
        if self._timed % 4 == 0:                         # every 4th call: the medians
            self._median = _median(recent)
            if self.use == 1 and self._short() > _PROBE_SOONER * self._median:
                self._next_probe = min(self._next_probe, max(k + 1, self._last_probe + _MIN_PROBE_GAP))
        return out

    def _short(self):
        """Median of the last (up to) 3 timings of the driver in use."""
        return _median(self._recent[-3:])

    def _keep(self, which, times):
        self.use = which
        self._recent = [times[which]] if len(times) == 2 else list(times)
        self._median = _median(self._recent)
        self._wins = 0
        self._next_probe = self.calls + _PROBE_EVERY
        self._last_probe = self.calls


def chooser_for(nc):
    """The :class:`_Chooser` of a problem split into ``nc`` chunks: always serial for one chunk,
    else as ``REFIMPL_THREADS`` says. Used by the step kernels and the metric passes."""
    return _Chooser("serial" if nc == 1 else _threads_mode())


_CHOOSERS = {}   # one-shot kernel calls (stage2_grad, joint_grad, stage2_loss): a chooser per problem shape


class _Prepared:
    """O^T and the ragged int64 sentence arrays, converted once; ``drive(K, want_o, want_k, unit)``.
    ``OT`` may be replaced between calls (stage 1 moves O). ``chooser`` (:class:`_Chooser`)
    picks the serial or the parallel driver for the ``nc`` chunks at each call.

    Private: every public entry checks its tokens, lengths and next tokens first
    (:func:`refimpl.checks.check_token_problem`, :func:`refimpl.checks.check_tokens`), so
    only the O(N) structure is re-checked here, not the O(T) token ranges."""

    def __init__(self, O, tokens, lengths, ys, n_grads, chunks):
        self.OT = _transposed(O)
        self.M = M = self.OT.shape[0]
        self.flat, self.offsets, self.Lmax = ragged(tokens, lengths)
        self.ys = np.ascontiguousarray(ys, dtype=np.int64).ravel()
        N = len(self.offsets) - 1
        if len(self.ys) != N:
            raise ShapeError(f"{N} sentences but {len(self.ys)} next tokens")
        self.nc = n_chunks(N, self.Lmax, M, n_grads) if chunks is None else _given_chunks(chunks, N, M, n_grads)
        self.chooser = chooser_for(self.nc)

    def drive(self, K, want_o, want_k, unit):
        """(GO (M, M) or None, GK (M, M) or None, log_scale, loss, log10_loss, norm)."""
        K = np.ascontiguousarray(K, dtype=np.float64)
        M = self.M
        if K.shape != (M, M):
            raise ShapeError(f"K must have shape {(M, M)}, got {K.shape}")
        GOT = np.empty((M, M) if want_o else (0, 0))
        GK = np.empty((M, M) if want_k else (0, 0))
        log_scale, loss, log10_loss, norm = self.chooser.run(
            (_drive_serial, _drive_parallel),
            (self.OT, K, self.flat, self.offsets, self.ys, self.Lmax, want_o, want_k, self.nc, unit, GOT, GK))
        return (GOT.T.copy() if want_o else None, GK if want_k else None, float(log_scale),
                float(loss), float(log10_loss), float(norm))


def _given_chunks(chunks, N, M, n_grads):
    """A caller's ``chunks``, checked: an integer in 1..max(N, 1), whose per-chunk (M, M)
    accumulators (``n_grads`` of them) fit in memory (:func:`refimpl.budget.check_bytes`).
    A float, a bool, 0 or a negative count is a :class:`ConfigError` (0 chunks would return a
    zero gradient and a zero loss without looking at a sentence)."""
    if isinstance(chunks, (bool, np.bool_)) or not isinstance(chunks, (int, np.integer)):
        raise ConfigError(f"chunks must be a positive integer, got {chunks!r}")
    nc = int(chunks)
    if not 1 <= nc <= max(N, 1):
        raise ConfigError(f"chunks must be between 1 and the number of sentences ({N}), got {nc}")
    check_bytes(8.0 * nc * M * M * max(n_grads, 1), f"{nc} chunks of (M, M) accumulators at M={M}")
    return nc


def _run(O, K, tokens, lengths, ys, want_o, want_k, chunks=None):
    p = _Prepared(O, tokens, lengths, ys, int(want_o) + int(want_k), chunks)
    if p.nc > 1 and p.chooser.mode == "auto":          # repeated calls on one problem (a training
        key = (len(p.offsets), len(p.flat), p.M, p.nc, want_o, want_k)   # loop) share a chooser
        if key not in _CHOOSERS and len(_CHOOSERS) >= 32:
            _CHOOSERS.clear()
        p.chooser = _CHOOSERS.setdefault(key, p.chooser)
    return p.drive(K, want_o, want_k, False)[:5]


def _check_collocation_not_empty(xs):
    """SentenceInputError for an empty ``xs`` of any dtype (``[]`` becomes a float64 array,
    so this comes before the integer check, which would name the dtype instead)."""
    try:
        n = np.size(xs)
    except (TypeError, ValueError):      # not array-like: check_tokens names the problem
        return
    if n == 0:
        raise SentenceInputError("xs: no sentences (the collocation is empty, so the collocation "
                                 "loss L0 and its gradient are undefined)")


class Stage1Direction:
    """The stage-1 NGD direction of the collocation loss L0 (docs/reproduce.md), one compiled
    call per step.

    Prepared once from xs, ys : int64 (n_c,) = colloc_tokens, colloc_next and M: the
    one-token sentences, their int64 arrays and the K they read (only K[x, x], and the
    attention over one token is 1 whatever it is). ``direction(O)`` returns
    (D (M, M), norm, log_scale, loss, log10_loss) with D = GOs / ||GOs||_F, GOs the
    scale-free dL0/dO of :func:`stage1_grad`; D is zero and norm 0.0 for a zero gradient.

    Structured path. At a call whose O is column constants plus a few exceptions
    (:func:`structure`; from zero initialisation every stage-1 iterate is, with one exception
    per collocation column) and whose collocation tokens are distinct, the direction is
    :func:`refimpl.kernels_sparse.stage1_direction`: O(n_c + exceptions) work plus writing D,
    instead of two transposed copies of O and M^2 accumulators. The same values up to
    rounding (the Frobenius norm and the sum of e^{z_v - zmax} are taken as products over the
    rows that share a value); every D it returns is again constant + exceptions per column.
    ``structured``: None (default) from M >= 64 on, True at any M, False never.

    Raises
    ------
    SentenceInputError
        ``xs`` is empty (no collocation tokens: L0 and its gradient are undefined, as the
        stage-2 kernels refuse no sentences), or a token of ``xs`` or ``ys`` is not an
        integer in 0..M-1 (naming its index and value).
    ShapeError
        ``xs`` or ``ys`` is not 1-D, or their lengths differ.
    """

    def __init__(self, xs, ys, M, *, structured=None):
        _check_collocation_not_empty(xs)
        xs = check_tokens(xs, M, "xs")
        ys = check_tokens(ys, M, "ys", len(xs))
        self._K = np.zeros((M, M))
        self._p = _Prepared(self._K, xs[:, None], np.ones(len(xs), dtype=np.int64), ys, 1, 1)
        self._xs = np.ascontiguousarray(xs, dtype=np.int64)
        self._ys = np.ascontiguousarray(ys, dtype=np.int64)
        self._min_m = _STRUCT_MIN_M if structured is None else (2 if structured else None)
        if len(np.unique(self._xs)) != len(self._xs) or len(self._xs) == 0:
            self._min_m = None
        self.structured_calls = 0

    def _drive(self, O, unit):
        if unit and self._min_m is not None:
            rep = structure(O, self._min_m)
            if rep is not None and np.isfinite(rep[0]).all() and np.isfinite(rep[3]).all():
                M = self._p.M
                if O.shape != (M, M):
                    raise ShapeError(f"O must be square {(M, M)}, got shape {O.shape}")
                D = np.empty((M, M))
                log_scale, loss, log10_loss, norm = kernels_sparse.stage1_direction(
                    rep[0], rep[1], rep[2], rep[3], self._xs, self._ys, D)
                self.structured_calls += 1
                return D, float(norm), float(log_scale), float(loss), float(log10_loss)
        self._p.OT = _transposed(O, self._p.M)
        GO, _, log_scale, loss, log10_loss, norm = self._p.drive(self._K, True, False, unit)
        return GO, norm, log_scale, loss, log10_loss

    def direction(self, O):
        return self._drive(O, True)


def stage1_grad(O, xs, ys):
    """Collocation loss L0 and its scale-free gradient (docs/model.md).

    O : float64 (M, M); xs, ys : int64 (n_c,) = colloc_tokens, colloc_next, n_c >= 1.
    Returns (Gs (M, M), log_scale, loss, log10_loss), dL0/dO = exp(log_scale) * Gs,
    log_scale = -max(min_x margin_x, 0).

    Raises
    ------
    SentenceInputError
        ``xs`` is empty (no collocation tokens), or a token of ``xs`` or ``ys`` is not an
        integer in 0..M-1.
    ShapeError, NonFiniteError
        O is not a finite real (M, M) array; xs or ys is not 1-D or their lengths differ.
    """
    O = check_square(O, "O")
    GO, _, log_scale, loss, log10_loss = Stage1Direction(xs, ys, len(O))._drive(O, False)
    return GO, log_scale, loss, log10_loss


def stage2_grad(O, K, tokens, lengths, ys, *, chunks=None):
    """dL/dK with O fixed, scale-free (docs/model.md; stage 2 of Algorithm 1).

    O, K : float64 (M, M); tokens : int64 (N, Lmax) padded, or flat (T,) (:func:`ragged`);
    lengths, ys : int64 (N,).
    Returns (GKs (M, M), log_scale, loss, log10_loss), dL/dK = exp(log_scale) * GKs,
    log_scale = -min_i (max(m_i, 0) + delta_i). ``chunks`` overrides :func:`n_chunks` (an
    integer from 1 to N; anything else is a :class:`~refimpl.errors.ConfigError`).
    """
    O, K = check_token_problem(O, K, tokens, lengths, ys)
    _, GK, log_scale, loss, log10_loss = _run(O, K, tokens, lengths, ys, False, True, chunks)
    return GK, log_scale, loss, log10_loss


def joint_grad(O, K, tokens, lengths, ys, *, chunks=None):
    """dL/dO and dL/dK with ONE common scale (joint NGD baseline).

    Returns (GOs, GKs, log_scale, loss, log10_loss), both (M, M);
    log_scale = -min_i max(m_i, 0).
    """
    O, K = check_token_problem(O, K, tokens, lengths, ys)
    return _run(O, K, tokens, lengths, ys, True, True, chunks)


def stage2_loss(O, K, tokens, lengths, ys, *, chunks=None):
    """(loss, log10_loss) of the full dataset, no gradient."""
    O, K = check_token_problem(O, K, tokens, lengths, ys)
    _, _, _, loss, log10_loss = _run(O, K, tokens, lengths, ys, False, False, chunks)
    return loss, log10_loss


class Stage2Direction:
    """The stage-2 NGD direction with O fixed, one compiled call per step (docs/reproduce.md).

    Prepared once from O : float64 (M, M), tokens : int64 (N, Lmax) padded or flat (T,) and
    lengths, ys : int64 (N,); O^T and the integer arrays are converted here, not per step.
    ``direction(K)`` returns (D (M, M), norm, log_scale, loss, log10_loss) with
    D = GKs / ||GKs||_F, GKs the scale-free dL/dK of :func:`stage2_grad` (same bits as
    ``normalize(stage2_grad(...)[0])`` on the dense path), norm = ||GKs||_F; D is zero and
    norm 0.0 when the gradient vanishes exactly. This is the per-step path of the trainer and
    of ``bench/bench_step.py``. When the problem is chunked (:func:`n_chunks` > 1) each call
    runs the chunks serially or on Numba's threads, whichever this object has timed faster
    (``REFIMPL_THREADS``, :class:`_Chooser`); the bits are the same either way.

    Structured path. When every column of O is a constant except at a few rows, detected
    bitwise (:func:`refimpl.kernels_sparse.detect`: at most ``_STRUCT_MAX_PER_COLUMN`` (8)
    exceptions in a column and ``_STRUCT_MAX_MEAN`` (4) per column on average) -- as after
    stage 1 from zero initialisation, where O[:, x] = a (e_{n(x)} - 1/M) -- the logits,
    log-sum-exp and g_l = O[:, x_l]^T (p - e_y) are formed from the constants and the
    exceptions (O(L |S|) per sentence instead of O(L M), |S| <= 1 + the exceptions of the
    sentence's tokens; the formulas are in :mod:`refimpl.kernels_sparse`). The result equals
    the dense one up to rounding: the sum over v != y of e^{z_v - zmax} is formed as
    (M - |S|) e^{base - zmax} + sum_S, and g_l as its exact sparse value (the dense dot
    product rounds at ~M eps |c_x| sum_v p_v); ``tests/test_kernels_sparse.py`` states the
    agreement.

    Parameters
    ----------
    O : float64 (M, M)
    tokens : int64 (N, Lmax) padded or (T,) flat
    lengths, ys : int64 (N,)
    chunks : int, optional
        Overrides :func:`n_chunks`: an integer from 1 to N (dense path; given, the structured
        path is not used). Anything else is a :class:`~refimpl.errors.ConfigError`.
    structured : bool or None, optional
        None (default): the structured path when O has the structure and M >= 64 (below, the
        dense kernel, whose M exponentials per sentence vectorize, is as fast and keeps the bits
        of :func:`stage2_grad`); True: whenever O has
        the structure (any M); False: always dense. The attribute ``structured`` says which
        path is in use.
    """

    def __init__(self, O, tokens, lengths, ys, *, chunks=None, structured=None):
        O, _ = check_token_problem(O, None, tokens, lengths, ys, need_k=False)   # once, not per step
        self._s = None
        M = O.shape[0]
        if chunks is None and structured is not False and (structured or M >= _STRUCT_MIN_M) and M >= 2:
            self._s = _Structured.build(O, tokens, lengths, ys)
        self.structured = self._s is not None
        self._p = None if self.structured else _Prepared(O, tokens, lengths, ys, 1, chunks)

    def direction(self, K):
        if self._s is not None:
            return self._s.direction(K)
        _, D, log_scale, loss, log10_loss, norm = self._p.drive(K, False, True, True)
        return D, norm, log_scale, loss, log10_loss   # norm >= 0 with unit=True


# Automatic structured path from this vocabulary size on. Serial step times (us), dense /
# structured, O after stage 1 from zero, N = 2000 (M = 128: 5000): M = 32, lengths 2..6:
# 370 / 377; M = 64: 524 / 393 (2..6), 793 / 739 (2..16); M = 100: 1167 / 736 (2..16),
# 2166 / 1683 (2..40); M = 128: 5107 / 2041 (2..16). A structured sentence costs ~2 L scalar
# exponentials, a dense one M vectorized ones and 2 L M multiply-adds.
_STRUCT_MIN_M = 64
_STRUCT_MAX_MEAN = 4         # at most this many exceptions per column on average ...
_STRUCT_MAX_PER_COLUMN = 8   # ... and in any one column (bounds the per-sentence special set)


def structure(O, min_m=2):
    """The column-constant + exceptions form of O (:func:`refimpl.kernels_sparse.detect`) when it
    is worth using, else None.

    O : float64 (M, M), finite. Used when M >= ``min_m``, every column has at most
    ``_STRUCT_MAX_PER_COLUMN`` exceptions and all columns together at most
    ``_STRUCT_MAX_MEAN * M``. Returns ``(cst, eoff, erow, evals, edif)`` or None.
    """
    O = np.ascontiguousarray(O, dtype=np.float64)
    M = O.shape[0]
    if M < max(min_m, 2):
        return None
    return kernels_sparse.detect(O, _STRUCT_MAX_MEAN * M, _STRUCT_MAX_PER_COLUMN)


class _Structured:
    """The structured stage-2 problem (:mod:`refimpl.kernels_sparse`): the column constants
    and exceptions of O, the ragged sentences, their (key, query) pairs and a driver chooser."""

    @classmethod
    def build(cls, O, tokens, lengths, ys):
        """A prepared structured problem, or None when O lacks the structure."""
        rep = structure(O)
        if rep is None:
            return None
        M = rep[0].shape[0]
        kmax = int(np.diff(rep[1]).max(initial=0))
        self = cls()
        self.M = M
        self.rep = rep
        self.kmax = max(kmax, 1)
        self.flat, self.offsets, self.Lmax = ragged(tokens, lengths)
        self.ys = np.ascontiguousarray(ys, dtype=np.int64).ravel()
        N = len(self.offsets) - 1
        if len(self.ys) != N:
            raise ShapeError(f"{N} sentences but {len(self.ys)} next tokens")
        self.pairs, self.slot = kernels_sparse.pair_slots(self.flat, self.offsets, M)
        self.nc = kernels_sparse.sparse_chunks(N, len(self.flat))
        self.chooser = chooser_for(self.nc)
        return self

    def direction(self, K):
        """(D (M, M), norm, log_scale, loss, log10_loss), as :meth:`Stage2Direction.direction`."""
        K = np.ascontiguousarray(K, dtype=np.float64)
        M = self.M
        if K.shape != (M, M):
            raise ShapeError(f"K must have shape {(M, M)}, got {K.shape}")
        vals = np.empty(len(self.pairs))
        cst, eoff, erow, evals, edif = self.rep
        log_scale, loss, log10_loss, norm = self.chooser.run(
            kernels_sparse.DRIVERS,
            (cst, eoff, erow, evals, edif, K, self.flat, self.offsets, self.ys, self.slot, self.pairs,
             self.Lmax, self.kmax, self.nc, vals))
        D = np.zeros((M, M))
        kernels_sparse.scatter(self.pairs, vals, D)
        return D, float(norm), float(log_scale), float(loss), float(log10_loss)


@njit(**_OPTS)
def _compensated_step(W, c, D, eta, out):
    """:func:`compensated_step` without its checks: the loop runs over ``W.size`` and writes
    ``c`` and ``out`` without bounds checks. Only for callers whose four arrays are float64,
    C-contiguous and of one shape by construction (the trainer's update, checked once)."""
    fw, fc, fd, fo = W.ravel(), c.ravel(), D.ravel(), out.ravel()
    for v in range(fw.shape[0]):
        y = fd[v] * -eta - fc[v]
        t = fw[v] + y
        fc[v] = (t - fw[v]) - y
        fo[v] = t


_STEP_ARGS = ("W", "c", "D", "out")
_F64 = np.dtype(np.float64)


def _check_step_arrays(W, c, D, eta, out):
    """Raise unless W, c, D, out are float64 C-contiguous ndarrays of W's shape, c and out
    writable, and eta a real number (the rules of :func:`compensated_step`); else return."""
    arrays = (W, c, D, out)
    for name, a in zip(_STEP_ARGS, arrays):
        if not isinstance(a, np.ndarray):
            raise ShapeError(f"compensated_step: {name} must be a float64 ndarray, got {type(a).__name__}")
        if a.dtype != _F64:
            raise ShapeError(f"compensated_step: {name} must have dtype float64, got {a.dtype} "
                             f"(nothing is converted: c and out are written in place)")
        if not a.flags.c_contiguous:
            raise ShapeError(f"compensated_step: {name} must be C-contiguous (np.ascontiguousarray), "
                             f"got strides {a.strides} for shape {a.shape}")
    for name, a in zip(_STEP_ARGS[1:], arrays[1:]):
        if a.shape != W.shape:
            raise ShapeError(f"compensated_step: {name} has shape {a.shape} but W has shape {W.shape}; "
                             f"the four arrays must have one shape")
    for name, a in (("c", c), ("out", out)):
        if not a.flags.writeable:
            raise InputError(f"compensated_step: {name} is read-only; it is written in place")
    if isinstance(eta, (bool, np.bool_)) or not isinstance(eta, numbers.Real):
        raise InputError(f"compensated_step: eta must be a real number, got {eta!r}"[:200])


def compensated_step(W, c, D, eta, out):
    """Kahan-compensated ``W - eta * D`` into ``out`` (all float64 (M, M), C-contiguous).

    y = -eta D - c;  out = W + y;  c <- (out - W) - y   (c updated in place).

    Parameters
    ----------
    W, D : ndarray, float64, C-contiguous
        The iterate and the step direction (only read).
    c : ndarray, float64, C-contiguous, writable
        The running compensation, updated in place (start from zeros).
    eta : float
        The step size (any real number: a Python or NumPy float or integer).
    out : ndarray, float64, C-contiguous, writable
        Receives the new iterate; may be ``W`` itself.

    Raises
    ------
    ShapeError
        One of the four arrays is not a float64 C-contiguous ndarray (nothing is converted:
        c and out are written in place), or c, D or out has a shape other than W's; the
        message names the argument.
    InputError
        ``c`` or ``out`` is read-only, or ``eta`` is not a real number.

    Notes
    -----
    The compiled loop behind this function (``_compensated_step``) runs over ``W.size``
    entries without bounds checks, so every rule above is checked first (a few
    microseconds); the trainer and the benchmarks, which update arrays they allocated
    themselves, call the loop directly.
    """
    _check_step_arrays(W, c, D, eta, out)
    _compensated_step(W, c, D, eta, out)


def normalize(Gs):
    """(D, norm): D = Gs / ||Gs||_F, or (zeros, 0.0) when Gs is exactly zero (never NaN).

    Computed in Numba with a fixed-order sum: np.linalg.norm would call a threaded BLAS
    dot whose spinning pool then competes with the kernel threads (and whose sum order
    depends on the BLAS thread count).
    """
    Gs = np.ascontiguousarray(Gs, dtype=np.float64)
    norm = fro_norm(Gs)                  # sqrt(sumsq4) bits; no underflow at entries of 1e-200
    if norm == 0.0:
        return np.zeros_like(Gs), 0.0
    if norm < 1e-300:                    # 1 / norm would overflow for a subnormal norm
        return Gs / norm, norm
    return scaled(Gs, 1.0 / norm), norm


def normalize_pair(GOs, GKs):
    """(DO, DK, norm): the pair divided by its joint Frobenius norm sqrt(||GO||^2 + ||GK||^2)."""
    GOs = np.ascontiguousarray(GOs, dtype=np.float64)
    GKs = np.ascontiguousarray(GKs, dtype=np.float64)
    norm = math.sqrt(sumsq4(GOs) + sumsq4(GKs))
    if not 2.0 ** -830 <= norm * norm <= 2.0 ** 1000 and norm == norm:   # squares under/overflowed
        norm = math.hypot(fro_norm(GOs), fro_norm(GKs))
    if norm == 0.0:
        return np.zeros_like(GOs), np.zeros_like(GKs), 0.0
    if norm < 1e-300:
        return GOs / norm, GKs / norm, norm
    return scaled(GOs, 1.0 / norm), scaled(GKs, 1.0 / norm), norm


# ===================================================================== metrics helpers
@njit(**_OPTS)
def _attention(KT, tokens, lengths):
    N, Lmax = tokens.shape
    phi = np.zeros((N, Lmax))
    for i in range(N):
        L = lengths[i]
        q = tokens[i, L - 1]
        smax = -np.inf
        for l in range(L):
            smax = max(smax, KT[q, tokens[i, l]])
        tot = 0.0
        for l in range(L):
            phi[i, l] = math.exp(KT[q, tokens[i, l]] - smax)
            tot += phi[i, l]
        for l in range(L):
            phi[i, l] /= tot
    return phi


@njit(**_OPTS)
def _logits(OT, phi, tokens, lengths):
    N = tokens.shape[0]
    M = OT.shape[0]
    z = np.zeros((N, M))
    for i in range(N):
        for l in range(lengths[i]):
            row = OT[tokens[i, l]]
            for v in range(M):
                z[i, v] += phi[i, l] * row[v]
    return z


def attention(K, tokens, lengths):
    """phi : float64 (N, Lmax), phi[i, l] = softmax_l K[x_l, q] on positions l < lengths[i], 0 after.

    K : float (M, M), finite; tokens : int (N, Lmax) padded, lengths : int (N,) in 1..Lmax,
    tokens[i, :lengths[i]] in 0..M-1 (checked: InputError family)."""
    K = check_square(K, "K")
    tokens, lengths = check_padded(tokens, lengths, K.shape[0])
    KT = np.ascontiguousarray(K.T)
    return _attention(KT, tokens, lengths)


def logits(O, K, tokens, lengths, phi=None):
    """z : float64 (N, M), z_i = sum_l phi_il O[:, x_il] (prediction = argmax over axis 1).

    phi : float64 (N, Lmax) attention to use instead of :func:`attention` of K (for
    example the c -> infinity limit, or one already computed); K is then not read.
    O, K : float (M, M), finite; tokens, lengths as in :func:`attention` (checked).
    """
    O = check_square(O, "O")
    tokens, lengths = check_padded(tokens, lengths, O.shape[0])
    phi = attention(K, tokens, lengths) if phi is None else check_weights(phi, tokens.shape, "phi")
    return _logits(np.ascontiguousarray(O.T), phi, tokens, lengths)
