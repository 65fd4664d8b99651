"""Checking another implementation of the model against the dense reference, with a diagnosis.

An outside implementation (NumPy, PyTorch, JAX, ...) of the loss and gradients of
docs/model.md is a function

    fn(W_ov, W_kq, arrays) -> (loss, grad_W_ov, grad_W_kq)

in embedding space: ``W_ov``, ``W_kq`` and both gradients are float (d, d), ``arrays`` is a
:class:`~refimpl.data.DatasetArrays` (``ds.to_arrays()``: ``tokens`` padded with the pad
value M, ``mask``, ``lengths``, ``queries``, ``optimal``, ``next_tokens``, ``colloc_tokens``,
``colloc_next``) with ``embeddings`` E (d, M) and ``vocab_size`` M set. One NGD step is

    step_fn(W_ov, W_kq, arrays, eta) -> the updated matrix
        stage 1: W_ov - eta * G / ||G||_F,  G = dL0/dW_ov (collocation loss)
        stage 2: W_kq - eta * G / ||G||_F,  G = dL/dW_kq (W_ov fixed)

This module compares such functions with :func:`refimpl.model.loss_and_grads` and
:func:`refimpl.model.stage1_loss_and_grad` (exact to 1e-12 relative also at saturation,
docs/model.md, section 8) on one :class:`Case` at a time, and explains a mismatch
(:func:`diagnose`). It needs no Hypothesis: :mod:`refimpl.testing` draws the cases
(``assert_matches_reference``, ``assert_step_matches_reference``) and calls it.

Tolerance model (per output X in loss, grad_W_ov, grad_W_kq; norms are Frobenius)::

    ||X - X_ref|| <= (rtol + kappa) ||X_ref|| + floor_X + TINY

* ``rtol`` (default 1e-9): the reference is exact to 1e-12 and a float64 implementation
  without cancellation lands within ~1e-13, while the bugs found in practice are far
  larger (a transposed W_kq: 1e-4 on the loss, ~1 on the gradients; the cancelling
  attention backward at attention gap 20: 1.9e-8).
* ``kappa = 8 eps (1 + max|s| + max|z|)``: scores s and logits z carry rounding of
  eps (|s| + |z|), which no float64 evaluation avoids and which moves every output by that
  much relatively (docs/model.md, section 8, "What is not exact").
* ``floor_X``: rounding of sums whose terms are larger than the result. For grad_W_ov
  ``8 eps (N + Lmax + d) mean_i ||E r_i|| ||h_i||``; for grad_W_kq the same with the terms
  ``sum_l |dloss_i/ds_l| ||e_{x_l}|| ||e_q||``, plus ``64 eps Lmax mean_i sum_l phi_l |g_l|``
  over the sentences with one distinct token, whose exact contribution is 0 but which
  ``phi_l (g_l - gbar)`` leaves at rounding level; for the loss ``8 eps (N + Lmax + d) loss``.
  None of these is a fraction of the terms' raw size where that would hide cancellation:
  every floor scales like the exact result at saturation.
* ``TINY`` = 2.2e-308, the smallest normal float64: where the reference underflows to 0
  (a loss or gradient below the float64 range) any |X| <= TINY is accepted.

Exactly-zero references (all sentences of one distinct token: grad_W_kq = 0) and tiny
losses are therefore compared without dividing by them.
"""
from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, replace

import numpy as np

from . import model
from .data import RealizableDataset, ensure_valid

__all__ = ["EPS", "TINY", "DEFAULT_RTOL", "OUTPUTS", "REGIMES", "Case", "Outputs", "OutputCheck",
           "Comparison", "StepComparison", "Diagnosis", "OracleMismatch", "reference", "compare",
           "check", "compare_step", "step_reference", "diagnose", "diagnose_step", "orthonormal",
           "stage1_output", "moderate_case", "saturated_case", "format_failure"]

EPS = float(np.finfo(np.float64).eps)      # 2.2e-16
TINY = float(np.finfo(np.float64).tiny)    # 2.2e-308, smallest normal float64
DEFAULT_RTOL = 1e-9
OUTPUTS = ("loss", "grad_W_ov", "grad_W_kq")
REGIMES = ("moderate", "saturated")
_MATCH_RTOL = 1e-7      # a diagnosis variant "matches" an output to this relative error
_SWEEP = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


# ============================================================================ cases
@dataclass(frozen=True, eq=False)
class Case:
    """One input of the check: a dataset, an embedding and embedding-space weights.

    Attributes
    ----------
    dataset : RealizableDataset (valid)
    embeddings : float64 (d, M), E
    W_ov, W_kq : float64 (d, d)
    regime : str, "moderate", "saturated" or "given"
    label : str, how the weights were made (for messages)
    eta : float or None, the step size of a step check
    """

    dataset: RealizableDataset
    embeddings: np.ndarray
    W_ov: np.ndarray
    W_kq: np.ndarray
    regime: str = "given"
    label: str = ""
    eta: float | None = None

    @property
    def d(self):
        """Embedding width d."""
        return int(self.embeddings.shape[0])

    @property
    def M(self):
        """Vocabulary size M."""
        return int(self.dataset.vocab_size)

    def arrays(self, pad=None):
        """``dataset.to_arrays(pad)`` with ``embeddings`` set to a copy of E."""
        return replace(self.dataset.to_arrays(pad), embeddings=self.embeddings.copy())

    def scaled(self, lam):
        """The same case with both weight matrices multiplied by ``lam``."""
        return replace(self, W_ov=lam * self.W_ov, W_kq=lam * self.W_kq,
                       label=f"{lam:g} x ({self.label})" if self.label else f"{lam:g} x weights")

    def describe(self):
        """Several lines: sizes, how the weights were made, the sentences."""
        ds = self.dataset
        E_kind = "identity" if self.d == self.M and np.array_equal(self.embeddings, np.eye(self.M)) \
            else "orthonormal columns" if _is_orthonormal(self.embeddings) else "general"
        lines = [f"M = {self.M} tokens, N = {ds.n_sentences} sentences, Lmax = {ds.max_len}, "
                 f"d = {self.d} (E: {E_kind}), regime {self.regime!r}"
                 + (f", eta = {self.eta:.6g}" if self.eta is not None else "")]
        if self.label:
            lines.append(f"weights: {self.label}")
        sents = ds.sentences()
        shown = sents if len(sents) <= 12 else sents[:12]
        lines.append(f"sentences: {shown}{' ...' if len(sents) > len(shown) else ''}")
        lines.append(f"next tokens: {ds.next_tokens[:len(shown)].tolist()}"
                     f"{' ...' if len(sents) > len(shown) else ''}")
        lines.append(f"collocation (x, n(x)): {ds.collocation_pairs.tolist()}")
        return "\n".join(lines)


def _is_orthonormal(E, tol=1e-12):
    return float(np.max(np.abs(E.T @ E - np.eye(E.shape[1])), initial=0.0)) <= tol


def orthonormal(d, M, seed):
    """A random embedding with orthonormal columns.

    Parameters
    ----------
    d, M : int, d >= M
    seed : int, seed of the Gaussian whose QR factor is taken

    Returns
    -------
    float64 (d, M)
        The first M columns of a random orthogonal d x d matrix: E^T E = I to rounding.
    """
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q[:, :M]


_STAGE1 = {}


def stage1_output(ds, T0, eta0=None):
    """The stage-1 output from zero, as :func:`refimpl.train_two_stage` computes it.

    Parameters
    ----------
    ds : RealizableDataset (validated here)
    T0 : int >= 0, number of steps
    eta0 : float or None, the step size; None is the trainer's default 0.2/sqrt(M)

    Returns
    -------
    O : float64 (M, M), token coordinates
        The trainer's update (the kernels' scale-free direction and the Kahan-compensated
        step) without its certificates and metrics; cached per (collocation, T0, eta0). A
        zero gradient stops early, as in the trainer.
    """
    from . import kernels
    ensure_valid(ds)
    M = ds.vocab_size
    eta0 = 0.2 / math.sqrt(M) if eta0 is None else float(eta0)
    key = (M, ds.colloc_tokens.tobytes(), ds.colloc_next.tobytes(), int(T0), eta0)
    if key not in _STAGE1:
        if len(_STAGE1) > 256:
            _STAGE1.clear()
        direction = kernels.Stage1Direction(ds.colloc_tokens, ds.colloc_next, M)
        O, comp, out = np.zeros((M, M)), np.zeros((M, M)), np.empty((M, M))
        for _ in range(int(T0)):
            D, norm, *_ = direction.direction(O)
            if norm == 0.0:
                break
            kernels.compensated_step(O, comp, D, eta0, out)
            O, out = out, O
        _STAGE1[key] = O
    return _STAGE1[key].copy()


def moderate_case(ds, E, o_scale=1.0, k_scale=1.0, seed=0):
    """A case with weights of scale ~1.

    Parameters
    ----------
    ds : RealizableDataset; E : float (d, M), orthonormal columns
    o_scale, k_scale : float, the scales of O and K
    seed : int, seed of the Gaussian entries

    Returns
    -------
    Case
        O = o_scale N(0, 1), K = k_scale N(0, 1) in token coordinates (M, M), and
        W_ov = E O E^T, W_kq = E K E^T (:func:`~refimpl.model.from_token_coords`); regime "moderate".
    """
    M = ds.vocab_size
    O, K = np.random.default_rng(seed).standard_normal((2, M, M))
    E = np.asarray(E, dtype=np.float64)
    return Case(ds, E, E @ (o_scale * O) @ E.T, E @ (k_scale * K) @ E.T, "moderate",
                f"O = {o_scale:.4g} N(0,1), K = {k_scale:.4g} N(0,1) (token coordinates, seed {seed})")


def saturated_case(ds, E, T0=2000, c=35.0):
    """A case with saturated softmax and attention.

    Parameters
    ----------
    ds : RealizableDataset; E : float (d, M), orthonormal columns
    T0 : int, stage-1 steps for O (:func:`stage1_output`; logit margins grow ~linearly in T0)
    c : float, the scale of K = c K*, K* = ``w_kq_star(ds)[0]`` (every attention gap >= c)

    Returns
    -------
    Case
        W_ov = E O E^T, W_kq = E K E^T; regime "saturated".
    """
    from .maxmargin import w_kq_star
    O = stage1_output(ds, T0)
    K = c * w_kq_star(ds)[0]
    E = np.asarray(E, dtype=np.float64)
    return Case(ds, E, E @ O @ E.T, E @ K @ E.T, "saturated",
                f"O = stage-1 output after T0 = {T0} steps, K = {c:.4g} K*")


# ============================================================================ outputs
@dataclass(frozen=True, eq=False)
class Outputs:
    """(loss, grad_W_ov, grad_W_kq): a float and two float64 (d, d) arrays."""

    loss: float
    grad_W_ov: np.ndarray
    grad_W_kq: np.ndarray

    def get(self, name):
        """The output called ``name`` (one of :data:`OUTPUTS`)."""
        return getattr(self, name)


def reference(case):
    """The exact outputs for a case.

    Parameters
    ----------
    case : Case

    Returns
    -------
    Outputs
        :func:`refimpl.model.loss_and_grads` (dataset, weights, embeddings of the case).
    """
    loss, g_ov, g_kq = model.loss_and_grads(case.dataset, case.W_ov, case.W_kq, case.embeddings)
    return Outputs(float(loss), g_ov, g_kq)


@dataclass(frozen=True)
class _Scales:
    kappa: float       # 8 eps (1 + max|s| + max|z|)
    sums: float        # 8 eps (N + Lmax + d)
    ov_terms: float    # mean_i ||E r_i|| ||h_i||
    kq_terms: float    # mean_i sum_l |a_il| ||e_x|| ||e_q||
    kq_single: float   # mean_i [one distinct token] sum_l phi_l |g_l| ||e_x|| ||e_q||


def _scales(case):
    """Sizes of the terms of the reference computation (model.forward / backward), in blocks."""
    ds, E = case.dataset, case.embeddings
    W_ov, W_kq = case.W_ov, case.W_kq
    tokens, lengths, ys = ds.tokens, ds.lengths, ds.next_tokens
    N, d = len(lengths), E.shape[0]
    col = np.linalg.norm(E, axis=0)                                  # ||e_v||
    smax = zmax = ov = kq = single = 0.0
    for lo in range(0, N, 256):
        sl = slice(lo, min(lo + 256, N))
        tok, ln = tokens[sl], lengths[sl]
        tok = tok[:, : int(ln.max())]
        n, L = tok.shape
        rows = np.arange(n)
        valid = np.arange(L)[None, :] < ln[:, None]
        x = np.where(valid, tok, 0)
        q = tok[rows, ln - 1]
        z, (X, Q, phi, h) = model.forward(W_ov, W_kq, tok, ln, E)
        per_token = (Q @ W_kq.T) @ E
        s = np.where(valid, per_token[rows[:, None], x], 0.0)
        smax = max(smax, float(np.abs(s).max()))
        zmax = max(zmax, float(np.abs(z).max()))
        _, r = model.cross_entropy(z, ys[sl])
        Er = r @ E.T
        ov += float(np.sum(np.linalg.norm(Er, axis=1) * np.linalg.norm(h, axis=1)))
        b = Er @ W_ov
        a = model._score_gradient(phi, X, b)                         # exact dloss/ds (pair form)
        weight = col[x] * col[q][:, None] * valid                    # ||e_x|| ||e_q||
        kq += float(np.sum(np.abs(a) * weight))
        g = np.einsum("nld,nd->nl", X, b)
        one = np.array([len(np.unique(t[:k])) == 1 for t, k in zip(tok, ln)])
        single += float(np.sum((phi * np.abs(g) * weight)[one]))
    return _Scales(kappa=8 * EPS * (1 + smax + zmax), sums=8 * EPS * (N + ds.max_len + d),
                   ov_terms=ov / N, kq_terms=kq / N, kq_single=single / N)


def _tolerances(ref, sc, rtol, Lmax):
    rel = rtol + sc.kappa
    return {"loss": rel * abs(ref.loss) + sc.sums * abs(ref.loss) + TINY,
            "grad_W_ov": rel * _norm(ref.grad_W_ov) + sc.sums * sc.ov_terms + TINY,
            "grad_W_kq": (rel * _norm(ref.grad_W_kq) + sc.sums * sc.kq_terms
                          + 64 * EPS * Lmax * sc.kq_single + TINY)}


def _norm(X):
    """Frobenius norm without underflow or overflow of the squares (outputs near 1e-174 are
    common at saturation, and their squares are below the float64 range)."""
    X = np.asarray(X, dtype=np.float64)
    m = float(np.max(np.abs(X), initial=0.0))
    if m == 0.0 or not math.isfinite(m):
        return m
    return m * float(np.linalg.norm(X / m))


@dataclass(frozen=True)
class OutputCheck:
    """One output against the reference: error = ||X - X_ref||_F (|loss - loss_ref| for the
    loss), reference_norm = ||X_ref||_F, tolerance (absolute, from the tolerance model)."""

    name: str
    error: float
    reference_norm: float
    tolerance: float

    @property
    def ok(self):
        """error <= tolerance (False for NaN)."""
        return bool(self.error <= self.tolerance)

    @property
    def rel_error(self):
        """error / reference_norm (0 when both are 0, inf when only the reference is 0)."""
        if self.reference_norm > 0:
            return self.error / self.reference_norm
        return 0.0 if self.error == 0 else math.inf


def _check_outputs(out, ref, tols):
    checks = []
    for name in OUTPUTS:
        err = abs(out.loss - ref.loss) if name == "loss" else _norm(out.get(name) - ref.get(name))
        checks.append(OutputCheck(name, float(err), abs(ref.loss) if name == "loss" else _norm(ref.get(name)),
                                  float(tols[name])))
    return tuple(checks)


@dataclass(eq=False)
class Comparison:
    """The result of :func:`compare`: the case, both outputs and one :class:`OutputCheck` per
    output, or the ``problem`` (an exception of ``fn``, a malformed or non-finite return)."""

    case: Case
    reference: Outputs
    tolerances: dict
    outputs: Outputs | None = None
    checks: tuple = ()
    problem: str | None = None
    exception: BaseException | None = None

    @property
    def ok(self):
        """No problem and every output within its tolerance."""
        return self.problem is None and all(c.ok for c in self.checks)

    @property
    def failing(self):
        """Names of the outputs outside their tolerance."""
        return [c.name for c in self.checks if not c.ok]

    def table(self):
        """One line per output: relative error, tolerance, verdict."""
        if not self.checks:
            return f"no outputs to compare: {self.problem}"
        rows = [f"  {'output':<10} {'rel. error':>10} {'tolerance':>10} {'|reference|':>11}"]
        for c in self.checks:
            tol = c.tolerance / c.reference_norm if c.reference_norm > 0 else c.tolerance
            rows.append(f"  {c.name:<10} {c.rel_error:10.2e} {tol:10.2e} {c.reference_norm:11.3e}  "
                        f"{'ok' if c.ok else 'MISMATCH'}"
                        + ("" if c.reference_norm > 0 else "  (reference is 0: absolute)"))
        return "\n".join(rows)


def _call(fn, args, what):
    """fn(*args), or (None, problem text, exception)."""
    try:
        return fn(*args), None, None
    except Exception as exc:            # the user's function: any failure is a finding
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" at {tb[-1].filename}:{tb[-1].lineno} ({tb[-1].line})" if tb else ""
        return None, f"{what} raised {type(exc).__name__}: {exc}{where}", exc


def _as_outputs(result, d):
    """The user's return value as Outputs, or a problem text."""
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        return None, (f"fn must return (loss, grad_W_ov, grad_W_kq), got {type(result).__name__}"
                      + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else ""))
    try:
        loss = np.asarray(result[0], dtype=np.float64)
        grads = [np.asarray(g, dtype=np.float64) for g in result[1:]]
    except (TypeError, ValueError) as exc:
        return None, (f"fn's outputs are not float arrays ({exc}); return NumPy arrays "
                      f"(a PyTorch tensor: t.detach().cpu().numpy())")
    if loss.size != 1:
        return None, f"loss must be a scalar, got shape {loss.shape}"
    for name, g in zip(OUTPUTS[1:], grads):
        if g.shape != (d, d):
            return None, f"{name} has shape {g.shape}, expected ({d}, {d}) (embedding space, d = {d})"
    out = Outputs(float(loss.reshape(())), *grads)
    bad = [n for n in OUTPUTS if not np.all(np.isfinite(out.get(n)))]
    if bad:
        return out, f"non-finite values in {', '.join(bad)}"
    return out, None


def compare(fn, case, rtol=DEFAULT_RTOL):
    """Run ``fn(W_ov, W_kq, arrays)`` on ``case`` and compare with the reference.

    Parameters
    ----------
    fn : callable ``(W_ov (d, d), W_kq (d, d), arrays) -> (loss, grad_W_ov, grad_W_kq)``
        Receives copies of the weights and ``case.arrays()`` (pad = M, embeddings set).
    case : Case
    rtol : float
        Relative tolerance of the tolerance model (module docstring).

    Returns
    -------
    Comparison
        ``.ok``, ``.checks`` (one :class:`OutputCheck` per output), ``.problem`` when ``fn``
        raised or returned something malformed (the exception in ``.exception``).
    """
    ref = reference(case)
    tols = _tolerances(ref, _scales(case), rtol, case.dataset.max_len)
    result, problem, exc = _call(fn, (case.W_ov.copy(), case.W_kq.copy(), case.arrays()), "fn")
    if problem is not None:
        return Comparison(case, ref, tols, problem=problem, exception=exc)
    out, problem = _as_outputs(result, case.d)
    if out is None:
        return Comparison(case, ref, tols, problem=problem)
    return Comparison(case, ref, tols, out, _check_outputs(out, ref, tols), problem)


def check(fn, ds, W_ov, W_kq, embeddings=None, *, rtol=DEFAULT_RTOL):
    """:func:`compare` at one given point, without a search.

    Parameters
    ----------
    fn : callable, as for :func:`compare`
    ds : RealizableDataset, valid (validated here)
    W_ov, W_kq : float (d, d)
    embeddings : float (d, M) or None (E = I, d = M)
    rtol : float

    Returns
    -------
    Comparison
        ``.ok``, ``.table()``; pass it to :func:`diagnose` when it failed.
    """
    ensure_valid(ds)
    E = np.eye(ds.vocab_size) if embeddings is None else np.asarray(embeddings, dtype=np.float64)
    W_ov = np.array(W_ov, dtype=np.float64)
    W_kq = np.array(W_kq, dtype=np.float64)
    return compare(fn, Case(ds, E, W_ov, W_kq, "given", "weights given"), rtol)


# ============================================================================ diagnosis
@dataclass(frozen=True)
class Diagnosis:
    """What a mismatch most likely comes from.

    ``cause`` is a short key: "transposed W_kq", "transposed W_ov", "missing 1/N",
    "extra 1/N", "padding read as a token", "cancellation at saturation",
    "token coordinates", "embeddings ignored", "gradients swapped", "exception",
    "malformed output", "non-finite output" or "unrecognised" (for steps also "ascent",
    "not normalized", "wrong norm", "wrong loss", "step returned"); ``explanation`` is
    the text shown to the user."""

    cause: str
    explanation: str


_FORMULAS = {
    "loss": ("the loss computed as log(sum_v exp z_v) - z_y cancels once the margin "
             "z_y - max_{v != y} z_v exceeds ~37 (1 - p_y < 1e-16): write it as "
             "log1p(sum_{v != y} exp(z_v - z_y)) in the two stabilized branches of docs/model.md, section 5"),
    "grad_W_ov": ("the residual r_y = p_y - 1 is 0 once 1 - p_y < 1e-16: use r_y = -(sum_{v != y} p_v) "
                  "(docs/model.md, section 5); grad_W_kq inherits the error through b = W_ov^T E r"),
    "grad_W_kq": ("the attention backward phi_l (g_l - sum_m phi_m g_m) subtracts two nearly equal numbers "
                  "once attention saturates (the old phi (g - gbar) formula): use the pair form "
                  "phi_l sum_m phi_m (g_l - g_m) with g_l - g_m = (e_{x_l} - e_{x_m})^T b "
                  "(docs/model.md, sections 2 and 8)"),
}


def _padded_variant(case, token, keep_query):
    """The dataset with every padded position read as ``token``: sentences of length Lmax,
    the query kept last (``keep_query``) or the last column taken as the query."""
    ds = case.dataset
    L = ds.max_len
    sents = []
    for s in ds.sentences():
        fill = [token] * (L - len(s))
        sents.append(s[:-1] + fill + s[-1:] if keep_query else s + fill)
    return RealizableDataset(ds.vocab_size, ds.collocation_pairs, sents, ds.next_tokens)


def _variants(case, ref):
    """(cause, explanation, Outputs) for each bug the diagnosis recognises."""
    ds, E, W_ov, W_kq = case.dataset, case.embeddings, case.W_ov, case.W_kq
    N, M, d = ds.n_sentences, case.M, case.d
    out = []

    def lg(A, B, data=ds, emb=E):
        loss, g_ov, g_kq = model.loss_and_grads(data, A, B, emb)
        return float(loss), g_ov, g_kq

    l_t, gov_t, gkq_t = lg(W_ov, W_kq.T)
    text = ("your outputs equal the reference evaluated at W_kq.T: the scores must be "
            "s_l = e_{x_l}^T W_kq e_q (row = key token x_l, column = query q), docs/model.md, section 1")
    out.append(("transposed W_kq", text, Outputs(l_t, gov_t, gkq_t.T)))
    out.append(("transposed W_kq", text, Outputs(l_t, gov_t, gkq_t)))
    l_o, gov_o, gkq_o = lg(W_ov.T, W_kq)
    text = ("your outputs equal the reference evaluated at W_ov.T: the logits must be "
            "z = E^T W_ov h (docs/model.md, section 1)")
    out.append(("transposed W_ov", text, Outputs(l_o, gov_o.T, gkq_o)))
    out.append(("transposed W_ov", text, Outputs(l_o, gov_o, gkq_o)))
    if N > 1:
        out.append(("missing 1/N", f"the output is N = {N} times the reference: a sum over the sentences "
                    "where L(theta) = (1/N) sum_i loss_i is a mean (docs/model.md, section 1)",
                    Outputs(N * ref.loss, N * ref.grad_W_ov, N * ref.grad_W_kq)))
        out.append(("extra 1/N", f"the output is 1/N = 1/{N} of the reference: divided by N twice",
                    Outputs(ref.loss / N, ref.grad_W_ov / N, ref.grad_W_kq / N)))
    if np.any(ds.lengths < ds.max_len):
        n_pad = int(np.sum(ds.max_len - ds.lengths))
        for token in sorted({M - 1, 0}):
            for keep in (True, False):
                how = ("the query taken from arrays.queries" if keep
                       else "the last column of arrays.tokens taken as the query")
                text = (f"your outputs equal the reference on sentences whose {n_pad} padded position(s) "
                        f"hold token {token} ({how}): padding is read as a token. -1 padding reads as token "
                        f"M-1 = {M - 1} under NumPy/PyTorch indexing; arrays.tokens pads with M = {M} so that "
                        f"such a read raises. Use arrays.mask: give masked positions score -inf (attention 0)")
                out.append(("padding read as a token", text, Outputs(*lg(W_ov, W_kq, _padded_variant(case, token, keep)))))
    identity = d == M and np.array_equal(E, np.eye(M))
    if d == M and not identity:
        out.append(("token coordinates", "your gradients equal E^T G E, the reference gradients in token "
                    "coordinates: return them in embedding space, E G_tok E^T (ri.from_token_coords)",
                    Outputs(ref.loss, model.to_token_coords(ref.grad_W_ov, E), model.to_token_coords(ref.grad_W_kq, E))))
        out.append(("embeddings ignored", "your outputs equal the reference with E = I: arrays.embeddings "
                    "(E, d x M) was not used (e_v is column v of E)", Outputs(*lg(W_ov, W_kq, ds, None))))
    out.append(("gradients swapped", "your grad_W_ov is the reference grad_W_kq and vice versa: return "
                "(loss, grad_W_ov, grad_W_kq) in this order", Outputs(ref.loss, ref.grad_W_kq, ref.grad_W_ov)))
    return out


def _matches(x, v, floor):
    x, v = np.asarray(x, dtype=np.float64), np.asarray(v, dtype=np.float64)
    return bool(_norm(x - v) <= _MATCH_RTOL * _norm(v) + floor)


def _explains(comparison, outs, name, floor):
    """The variant's output ``name`` matches the returned one and differs from the reference
    (a variant equal to the reference there explains nothing)."""
    v = outs.get(name)
    return (_matches(comparison.outputs.get(name), v, floor)
            and not _matches(comparison.reference.get(name), v, floor))


def _ratio_text(comp, name):
    x, r = np.asarray(comp.outputs.get(name), dtype=np.float64), np.asarray(comp.reference.get(name), dtype=np.float64)
    rn = _norm(r)
    if rn == 0 or _norm(x) == 0:
        return ""
    alpha = float(np.sum(x * r)) / rn ** 2
    cos = float(np.sum(x * r)) / (rn * _norm(x))
    return f" (<X, X_ref>/|X_ref|^2 = {alpha:.6g}, cosine {cos:.6f})"


def _sweep(compare_scaled, case):
    """[(lam, Comparison)] over the weights scaled by lam in _SWEEP."""
    return [(lam, compare_scaled(case.scaled(lam))) for lam in _SWEEP]


def _grows(rows, name):
    """True when output ``name`` passes at the smallest scale, fails at scale 1, and its
    relative error grows by 1e3 or more along the sweep (a cancellation's signature)."""
    first, last = rows[0][1], rows[-1][1]
    if first.problem is not None or last.problem is not None or not first.checks or not last.checks:
        return False
    c0 = next(c for c in first.checks if c.name == name)
    c1 = next(c for c in last.checks if c.name == name)
    return c0.ok and not c1.ok and math.log10(max(c1.rel_error, EPS)) - math.log10(max(c0.rel_error, EPS)) >= 3


def _sweep_table(rows, names):
    lines = ["  weights x  " + "  ".join(f"{n:>10}" for n in names)]
    for lam, comp in rows:
        if comp.problem is not None and not comp.checks:
            lines.append(f"  {lam:9.4g}  {comp.problem}")
            continue
        errs = {c.name: c for c in comp.checks}
        lines.append(f"  {lam:9.4g}  " + "  ".join(
            f"{errs[n].rel_error:10.2e}" + (" " if errs[n].ok else "*") for n in names))
    lines.append("  (* = outside the tolerance)")
    return "\n".join(lines)


def diagnose(fn, comparison, rtol=DEFAULT_RTOL, passed_regimes=()):
    """Explain a failed :class:`Comparison` of ``fn`` (may call ``fn`` again on rescaled weights).

    Checked in this order: an exception of ``fn`` (an ``IndexError`` on a padded dataset is
    padding read as a token: ``arrays.tokens`` holds M there), a malformed or non-finite
    return, then for every output outside its tolerance the outputs of known bugs, computed
    with the reference (W_kq or W_ov transposed, a missing or extra 1/N, padding read as token
    M-1 or 0, token-coordinate gradients, E ignored, gradients swapped), and, for the
    saturated regime, cancellation: ``fn`` passes with the weights scaled down and the error
    grows by orders of magnitude as they grow back (docs/model.md, section 8).

    Parameters
    ----------
    fn : callable, the function compared
    comparison : Comparison, with ``ok`` False
    rtol : float, the tolerance of the comparison
    passed_regimes : tuple of str, regimes ``fn`` already passed (quoted in the text)

    Returns
    -------
    Diagnosis
    """
    case = comparison.case
    ds = case.dataset
    if comparison.exception is not None:
        exc = comparison.exception
        padded = np.any(ds.lengths < ds.max_len)
        if isinstance(exc, IndexError) and padded:
            return Diagnosis("padding read as a token", (
                f"{comparison.problem}. arrays.tokens holds the pad value M = {case.M} (one past the last "
                f"token) at its {int(np.sum(ds.max_len - ds.lengths))} masked position(s) (arrays.mask False), "
                f"so an index error there means a padded position was read as a token. Read only "
                f"positions with arrays.mask (e.g. np.where(arrays.mask, arrays.tokens, 0)) and give masked "
                f"positions score -inf so their attention is 0."))
        return Diagnosis("exception", comparison.problem)
    if comparison.outputs is None:
        d, M = case.d, case.M
        text = comparison.problem
        if f"shape ({M}, {M})" in text and d != M:
            return Diagnosis("token coordinates", (
                f"{text}: the gradients look like token coordinates (M x M). fn works in embedding "
                f"space: return E G E^T (ri.from_token_coords(G, arrays.embeddings))."))
        return Diagnosis("malformed output", text)
    names = comparison.failing
    if comparison.problem is not None:                       # non-finite values
        hint = ("" if case.regime != "saturated" else
                " At saturation logits and scores are in the hundreds: an exponential of an unshifted "
                "logit or score overflows; subtract the maximum first (docs/model.md, section 5).")
        return Diagnosis("non-finite output", comparison.problem + "." + hint)
    floors = {n: comparison.tolerances[n] for n in OUTPUTS}
    found = {}
    variants = [(cause, text, outs, [n for n in names if _explains(comparison, outs, n, floors[n])])
                for cause, text, outs in _variants(case, comparison.reference)]
    for cause, text, outs, ok in variants:
        if ok and len(ok) == len(names):
            found.setdefault(cause, text)
    if found:
        cause, text = next(iter(found.items()))
        extra = "" if len(found) == 1 else f" (equally consistent with: {', '.join(list(found)[1:])})"
        return Diagnosis(cause, f"{text}.{extra}")
    per_output = {}
    for cause, text, outs, ok in variants:
        for n in ok:
            per_output.setdefault(n, (cause, text))
    if len(per_output) == len(names) and len({c for c, _ in per_output.values()}) > 1:
        parts = [f"{n}: {c} ({t})" for n, (c, t) in per_output.items()]
        return Diagnosis(" + ".join(sorted({c for c, _ in per_output.values()})), "; ".join(parts) + ".")
    if case.regime == "saturated":
        rows = _sweep(lambda c: compare(fn, c, rtol), case)
        grown = [n for n in names if _grows(rows, n)]
        if grown and len(grown) == len(names):
            where = "" if "moderate" not in passed_regimes else "fn passed the moderate regime; "
            text = (f"{where}with the weights scaled down fn agrees with the "
                    f"reference, and the error of {', '.join(grown)} grows by orders of magnitude as the "
                    f"attention gaps and logit margins grow:\n{_sweep_table(rows, OUTPUTS)}\n"
                    + "\n".join(f"  {n}: {_FORMULAS[n]}." for n in grown))
            return Diagnosis("cancellation at saturation", text)
    hints = []
    if names == ["grad_W_kq"]:
        hints.append("only grad_W_kq is off: the attention backward d loss/d s_l and the outer "
                     "product e_{x_l} e_q^T (docs/model.md, section 3)")
    elif "loss" not in names:
        hints.append("the loss agrees and the gradients do not: the backward pass (docs/model.md, section 3)")
    else:
        hints.append("the loss is off: the forward pass (docs/model.md, section 1): scores, softmax over "
                     "the sentence's positions only, h, logits, cross entropy")
    ratios = "; ".join(f"{n}{_ratio_text(comparison, n)}" for n in names)
    return Diagnosis("unrecognised", f"no known bug explains it; {hints[0]}. {ratios}.")


# ============================================================================ steps
def step_reference(case, stage):
    """The reference NGD step of ``stage`` (1 or 2) with step size ``case.eta``.

    Returns ``(W_new, G, D)``, float64 (d, d) each (W_new and D None when the direction is
    undefined). Stage 1: G = dL0/dW_ov (:func:`refimpl.model.stage1_loss_and_grad`, the collocation loss),
    W_new = W_ov - eta G/||G||_F. Stage 2: G = dL/dW_kq (:func:`refimpl.model.loss_and_grads`,
    W_ov fixed), W_new = W_kq - eta G/||G||_F. This is the trainer's update in embedding
    space: its token-coordinate step E^T (.) E has the same direction and the same norm for
    orthonormal E (docs/model.md, section 4), and its Kahan compensation is zero on a first step.
    D is None when ||G|| is 0 or below the float64 range (no direction is defined)."""
    if stage == 1:
        _, G = model.stage1_loss_and_grad(case.dataset, case.W_ov, case.embeddings)
        W = case.W_ov
    else:
        _, _, G = model.loss_and_grads(case.dataset, case.W_ov, case.W_kq, case.embeddings)
        W = case.W_kq
    n = _norm(G)
    if not n >= 1e4 * TINY:
        return None, G, None
    D = G / n
    return W - case.eta * D, G, D


@dataclass(eq=False)
class StepComparison:
    """The result of :func:`compare_step`: the reference and returned iterates, the error
    ||W_new - W_ref||_F and its tolerance, or the ``problem``."""

    case: Case
    stage: int
    reference: np.ndarray
    direction: np.ndarray
    tolerance: float
    returned: np.ndarray | None = None
    error: float = math.nan
    problem: str | None = None
    exception: BaseException | None = None

    @property
    def ok(self):
        """No problem and the error within the tolerance."""
        return self.problem is None and bool(self.error <= self.tolerance)

    @property
    def failing(self):
        """["W_new"] when the step is off, else []."""
        return [] if self.ok else ["W_new"]

    def table(self):
        """One line: error relative to eta and the tolerance."""
        if self.returned is None:
            return f"no step to compare: {self.problem}"
        eta = self.case.eta
        return (f"  ||W_new - W_ref||_F / eta = {self.error / eta:.2e} (tolerance {self.tolerance / eta:.2e}), "
                f"step length ||W - W_new||_F / eta = {self.step_length():.6g} (reference 1)")

    def step_length(self):
        """||W - W_new||_F / eta of the returned iterate."""
        W = self.case.W_ov if self.stage == 1 else self.case.W_kq
        return _norm(W - self.returned) / self.case.eta


def compare_step(step_fn, case, stage, rtol=DEFAULT_RTOL):
    """Run ``step_fn(W_ov, W_kq, arrays, eta)`` and compare with :func:`step_reference`.

    Parameters
    ----------
    step_fn : callable ``(W_ov, W_kq, arrays, eta) -> W_new`` (float (d, d))
    case : Case with ``eta`` set
    stage : 1 or 2
    rtol : float

    Returns
    -------
    StepComparison

    Notes
    -----
    Tolerance: ``||W_new - W_ref||_F <= (rtol + kappa) eta + 4 eps (||W||_F + eta) + TINY``:
    the direction relative to rtol and the conditioning of the scores and logits (module
    docstring), plus the rounding of the subtraction W - eta D. Raises ValueError when the
    reference direction is undefined (a zero or underflowing gradient); the case strategies
    of :mod:`refimpl.testing` never produce such cases.
    """
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")
    W_ref, G, D = step_reference(case, stage)
    if D is None:
        raise ValueError(f"the reference gradient has norm {_norm(G):.3e}: no NGD direction is defined")
    W = case.W_ov if stage == 1 else case.W_kq
    eta = case.eta
    tol = (rtol + _scales(case).kappa) * eta + 4 * EPS * (_norm(W) + eta) + TINY
    result, problem, exc = _call(step_fn, (case.W_ov.copy(), case.W_kq.copy(), case.arrays(), eta), "step_fn")
    if problem is not None:
        return StepComparison(case, stage, W_ref, D, tol, problem=problem, exception=exc)
    try:
        Wn = np.asarray(result, dtype=np.float64)
    except (TypeError, ValueError) as err:
        return StepComparison(case, stage, W_ref, D, tol, problem=f"step_fn returned no float array ({err})")
    if Wn.shape != (case.d, case.d):
        return StepComparison(case, stage, W_ref, D, tol, problem=(
            f"step_fn returned shape {Wn.shape}, expected ({case.d}, {case.d}) (the updated "
            f"{'W_ov' if stage == 1 else 'W_kq'} in embedding space)"))
    if not np.all(np.isfinite(Wn)):
        return StepComparison(case, stage, W_ref, D, tol, Wn, math.inf, "non-finite values in the returned matrix")
    return StepComparison(case, stage, W_ref, D, tol, Wn, _norm(Wn - W_ref))


def diagnose_step(step_fn, comparison, rtol=DEFAULT_RTOL, passed_regimes=()):
    """Explain a failed :class:`StepComparison` (may call ``step_fn`` on rescaled weights).

    Recognised: an exception or malformed return; the step returned instead of the iterate;
    W + eta D (ascent); W - eta G (not normalized); the right direction with another length
    (a norm other than Frobenius); stage 1 with the sentence loss instead of the collocation
    loss L0; stage 2 with W_kq transposed; cancellation at saturation (as :func:`diagnose`).
    """
    c = comparison
    case, stage = c.case, c.stage
    if c.exception is not None:
        return Diagnosis("exception", c.problem)
    if c.returned is None:
        return Diagnosis("malformed output", c.problem)
    if c.problem is not None:
        G = step_reference(case, stage)[1]
        hint = ""
        if float(np.max(np.abs(G))) < 1e-154:
            hint = (f" The gradient's largest entry is {float(np.max(np.abs(G))):.3g}: its squares are below the "
                    f"float64 range, so sqrt(sum G_ij^2) (np.linalg.norm, torch.linalg.norm) is 0 and "
                    f"G/||G|| is 0/0. Divide G by max|G_ij| before taking the norm (the direction is the same).")
        return Diagnosis("non-finite output", c.problem + "." + hint)
    W = case.W_ov if stage == 1 else case.W_kq
    eta, D, Wn = case.eta, c.direction, c.returned
    U = (W - Wn) / eta                                  # the user's step direction times its length
    floor = c.tolerance / eta

    def near(A, B):
        return _norm(A - B) <= _MATCH_RTOL * max(_norm(B), 1.0) + floor

    if near(Wn, -eta * D) or near(Wn, eta * D):
        return Diagnosis("step returned", "step_fn returned the step (+-eta G/||G||_F), not the updated "
                         "matrix W - eta G/||G||_F.")
    if near(U, -D):
        return Diagnosis("ascent", "the step goes up the gradient: W + eta G/||G||_F instead of W - eta G/||G||_F.")
    G = step_reference(case, stage)[1]
    if near(U, G) and abs(_norm(G) - 1.0) > 1e-6:
        return Diagnosis("not normalized", f"the step is eta G, not eta G/||G||_F (||G||_F = {_norm(G):.6g}): "
                         f"normalized gradient descent moves by exactly eta per step.")
    Un = _norm(U)
    if Un > 0 and _norm(U / Un - D) <= 1e-7 + floor:
        norm2 = np.linalg.norm(G, 2)
        guess = ""
        if abs(Un - _norm(G) / norm2) <= 1e-6 * Un:
            guess = " It equals ||G||_F/||G||_2: divided by the spectral norm."
        elif abs(Un - _norm(G) / np.abs(G).max()) <= 1e-6 * Un:
            guess = " It equals ||G||_F/max|G|: divided by the largest entry."
        return Diagnosis("wrong norm", f"the direction is right but the step length is {Un:.6g} eta instead of "
                         f"eta: divide G by its Frobenius norm sqrt(sum G_ij^2).{guess}")
    if stage == 1:
        _, Gs, _ = model.loss_and_grads(case.dataset, case.W_ov, case.W_kq, case.embeddings)
        if _norm(Gs) > 0 and near(U, Gs / _norm(Gs)):
            return Diagnosis("wrong loss", "stage 1 stepped along the gradient of the sentence loss L; it trains "
                             "W_ov on the collocation loss L0 = (1/|C|) sum_{x in C} loss(W_ov; [x], n(x)) "
                             "(arrays.colloc_tokens, arrays.colloc_next; docs/model.md, section 1).")
    else:
        _, _, Gt = model.loss_and_grads(case.dataset, case.W_ov, case.W_kq.T, case.embeddings)
        for Gv in (Gt.T, Gt):
            if _norm(Gv) > 0 and near(U, Gv / _norm(Gv)):
                return Diagnosis("transposed W_kq", "the step follows the gradient at W_kq.T: the scores must be "
                                 "s_l = e_{x_l}^T W_kq e_q (docs/model.md, section 1).")
    cos = float(np.sum(U * D)) / Un if Un > 0 else math.nan
    if case.regime == "saturated":
        rows = [(lam, compare_step(step_fn, case.scaled(lam), stage, rtol)) for lam in _SWEEP]
        first, last = rows[0][1], rows[-1][1]
        if first.ok and not last.ok and first.returned is not None and last.returned is not None:
            e0 = max(first.error / case.eta, EPS)
            e1 = last.error / case.eta
            if math.log10(max(e1, EPS)) - math.log10(e0) >= 3:
                table = "\n".join(f"  weights x {lam:7.4g}: ||W_new - W_ref||/eta = {r.error / case.eta:.2e}"
                                  + ("" if r.ok else " *") for lam, r in rows)
                name = "grad_W_ov" if stage == 1 else "grad_W_kq"
                where = "" if "moderate" not in passed_regimes else "step_fn passed the moderate regime; "
                return Diagnosis("cancellation at saturation", (
                    f"{where}with the weights scaled down the step agrees, and its "
                    f"error grows by orders of magnitude with the weights (* = outside the tolerance):\n{table}\n"
                    f"  {_FORMULAS[name]}."))
    return Diagnosis("unrecognised", f"the step direction differs from G/||G||_F (cosine {cos:.9f}, step length "
                     f"{Un:.6g} eta); check the gradient itself with assert_matches_reference.")


# ============================================================================ reporting
class OracleMismatch(AssertionError):
    """An implementation disagrees with the reference.

    Attributes
    ----------
    case : Case, the (shrunk) failing input: ``case.dataset``, ``case.W_ov``, ``case.W_kq``,
        ``case.embeddings``, ``case.arrays()``
    comparison : Comparison or StepComparison
    diagnosis : Diagnosis
    """

    def __init__(self, comparison, diagnosis, passed_regimes=(), what="fn"):
        self.comparison = comparison
        self.case = comparison.case
        self.diagnosis = diagnosis
        super().__init__(format_failure(comparison, diagnosis, passed_regimes, what))


def format_failure(comparison, diagnosis, passed_regimes=(), what="fn"):
    """The message of :class:`OracleMismatch`: the case, the error table, the diagnosis."""
    case = comparison.case
    head = (f"{what} does not match the refimpl reference (regime {case.regime!r}"
            + (f"; passed: {', '.join(passed_regimes)}" if passed_regimes else "") + ").")
    return "\n".join([
        head,
        "Failing example (shrunk):",
        _indent(case.describe()),
        comparison.table(),
        f"Diagnosis: {diagnosis.cause}: {diagnosis.explanation}",
        "The inputs are attached to this exception: err.case.dataset, err.case.W_ov, err.case.W_kq, "
        "err.case.embeddings, err.case.arrays().",
    ])


def _indent(text):
    return "\n".join("  " + line for line in text.splitlines())
