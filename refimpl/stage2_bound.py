"""A-posteriori certified upper bound on the stage-2 excess loss (docs/stage2_upper.md).

If at a checkpoint ``K = K_{t0}`` of stage 2 the quantities below satisfy the hypotheses of
the theorem of docs/stage2_upper.md, every later NGD iterate satisfies

    E(K_{t0 + k}) <= E0 (1 - eta r)^k        for every k >= 0,

``E(K) = L(O, K) - L_floor(O)`` the excess loss, ``E0 >= E(K_{t0})`` an enclosure's upper end
and ``r > 0`` explicit. Every quantity that decides the verdict is evaluated in interval
arithmetic with outward rounding (a private ``mpmath`` interval context, so the global
``mpmath.iv`` precision is not touched); the float64 inputs ``O``, ``K``, ``W = K*`` and ``eta``
are treated as exact numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from mpmath import libmp
from mpmath.ctx_iv import MPIntervalContext

from .data import RealizableDataset

__all__ = ["Stage2UpperCertificate", "certify_stage2_upper"]

_PREC = 128            # bits of the interval context at the first attempt
_MAX_PREC = 4096       # the excess enclosure is retried at doubled precision up to this
_REL_WIDTH = 1e-6      # accepted relative width of the enclosure of E(K_t0)


@dataclass(frozen=True)
class Stage2UpperCertificate:
    """Result of :func:`certify_stage2_upper`.

    Attributes
    ----------
    ok : bool
        The hypotheses (H1)-(H4) of docs/stage2_upper.md hold, verified in interval arithmetic.
    reason : str
        Empty when ``ok``; otherwise the first hypothesis that failed, with its numbers.
    eta : float
        The stage-2 step size the certificate is for.
    step_tol : float
        The direction tolerance ``delta`` of the theorem (0 for exact NGD).
    rate : float
        ``r``, rounded down (NaN when not ok): ``E(K_{t0+k}) <= E0 (1 - eta r)^k``.
    log10_excess0 : float
        Upper end of the enclosure of ``log10 E(K_t0)``, rounded up (always computed; when (H1)
        fails it is the log of the mean loss above the vertex loss, NaN if that mean is negative).
    log10_factor : float
        Upper bound on ``log10(1 - eta r) < 0``, rounded up (NaN when not ok).
    quantities : mapping str -> (float, float)
        Interval enclosures ``(lo, hi)`` (outward rounded to float64) of the verified
        quantities: ``excess0`` (``E(K_t0)``), ``min_gap`` (``min_i Delta_i``), ``mu``
        (margin of ``W``), ``norm_W``, ``max_eps_bar``, ``min_hmin_ratio``
        (``min_i h_min,i / Delta_i``), ``kappa``, ``beta``, ``rate`` (``r``), ``gamma_W``
        (``mu/||W||``, a lower bound on ``gamma_kq``). Those not reached are absent.
    """

    ok: bool
    reason: str
    eta: float
    step_tol: float
    rate: float
    log10_excess0: float
    log10_factor: float
    quantities: dict = field(default_factory=dict)

    @property
    def rate_per_step(self):
        """``-ln(1 - eta r)``, the certified decay of ``ln E`` per step (float; NaN when not ok)."""
        return -math.log1p(-self.eta * self.rate) if self.ok else math.nan

    def log10_bound(self, k):
        """Certified upper bound on ``log10 E(K_{t0 + k})``: ``log10 E0 + k log10(1 - eta r)``.

        Parameters
        ----------
        k : int or array_like of int, >= 0
            Steps after the checkpoint.

        Returns
        -------
        float or ndarray of float
            The bound, each value computed exactly from the two stored floats and rounded up.

        Raises
        ------
        ValueError
            The certificate is not ok, or some ``k < 0``.
        """
        if not self.ok:
            raise ValueError(f"no certified bound: {self.reason}")
        ks = np.asarray(k)
        if ks.dtype.kind not in "iu" or np.any(ks < 0):
            raise ValueError("k must be integers >= 0")
        e0, f = libmp.from_float(self.log10_excess0), libmp.from_float(self.log10_factor)
        out = np.array([libmp.to_float(libmp.mpf_add(e0, libmp.mpf_mul(libmp.from_int(int(v)), f), 60,
                                                     libmp.round_ceiling), rnd=libmp.round_ceiling)
                        for v in ks.reshape(-1)], dtype=np.float64).reshape(ks.shape)
        return out[()] if out.ndim == 0 else out

    def bound(self, k):
        """``10 ** log10_bound(k)`` (float64; may underflow to 0 where the log does not)."""
        return np.power(10.0, self.log10_bound(k))


# ------------------------------------------------------------------ interval helpers
def _lo(x):
    return libmp.to_float(x._mpi_[0], rnd=libmp.round_floor)


def _hi(x):
    return libmp.to_float(x._mpi_[1], rnd=libmp.round_ceiling)


def _pair(x):
    return (_lo(x), _hi(x))


def _imax(ctx, xs):
    """An enclosure of the max of the enclosed numbers."""
    return ctx.mpf([max(x.a for x in xs), max(x.b for x in xs)])


def _imin(ctx, xs):
    return ctx.mpf([min(x.a for x in xs), min(x.b for x in xs)])


def _positive(x):
    return x.a > 0


# ------------------------------------------------------------------ per-sentence data
def _sentences(ds):
    """Per sentence with >= 2 distinct tokens: (i, s, y, q, U' (tokens != s), n_s, n_v (U'))."""
    out = []
    for i in range(ds.n_sentences):
        toks, counts = np.unique(ds.sentence(i), return_counts=True)
        if len(toks) < 2:
            continue
        s = int(ds.optimal[i])
        others = [int(v) for v in toks if v != s]
        n_other = [int(c) for v, c in zip(toks, counts) if v != s]
        out.append((i, s, int(ds.next_tokens[i]), int(ds.queries[i]), others,
                    int(counts[toks == s][0]), n_other))
    return out


def _vertex_constants(ctx, O, W, sent):
    """Constants of one sentence that do not depend on K (docs/stage2_upper.md, section 2).

    Returns a dict of intervals: ``A`` (M,) ``e^{o_w - o_y}`` (``o = O[:, s]``; 0 at y),
    ``one_plus_S`` ``1 + S*``, ``ustar`` ``1 - p*_y``, ``gap`` ``Delta_i = min_v h*_v``,
    ``hmax`` ``max_v h*_v``, ``hrange`` ``max_v h*_v - min_v h*_v``, ``rho``
    ``max_v range(o_v - o_s)``, ``D`` ``max_v W[v, q] - min_v W[v, q]`` (v in U'),
    ``cdiff`` {v: (M,) ``o_v - o_s``}, ``margins`` [``W[s, q] - W[v, q]``].
    """
    _, s, y, q, others, _, _ = sent
    M = O.shape[0]
    o = [ctx.mpf(float(O[w, s])) for w in range(M)]
    A = [ctx.exp(o[w] - o[y]) if w != y else ctx.mpf(0) for w in range(M)]
    S = ctx.fsum(A)
    one_plus_S = 1 + S
    pstar = [a / one_plus_S for a in A]                # p*_w for w != y (0 at y)
    cdiff, hs, rhos = {}, [], []
    for v in others:
        c = [ctx.mpf(float(O[w, v])) - o[w] for w in range(M)]
        cdiff[v] = c
        hs.append(sum((pstar[w] * (c[w] - c[y]) for w in range(M) if w != y), ctx.mpf(0)))
        rhos.append(_imax(ctx, c) - _imin(ctx, c))
    Wq = [ctx.mpf(float(W[v, q])) for v in others]
    ws = ctx.mpf(float(W[s, q]))
    hmin_star, hmax_star = _imin(ctx, hs), _imax(ctx, hs)
    return dict(A=A, one_plus_S=one_plus_S, ustar=S / one_plus_S, gap=hmin_star, hmax=hmax_star,
                hrange=hmax_star - hmin_star, rho=_imax(ctx, rhos), D=_imax(ctx, Wq) - _imin(ctx, Wq),
                cdiff=cdiff, margins=[ws - w for w in Wq])


def _sentence_excess(ctx, K, sent, const):
    """Enclosure of ``loss_i(K) - loss_i(e_s)``, written without cancellation:
    ``log1p(sum_{w != y} e^{o_w - o_y} expm1(dz_w - dz_y) / (1 + S*))``, ``dz = sum_{v in U'}
    pi_v (o_v - o_s)``, ``pi_v = n_v e^{K[v,q] - K[s,q]} / (n_s + sum_u n_u e^{K[u,q] - K[s,q]})``."""
    _, s, y, q, others, n_s, n_other = sent
    ks = ctx.mpf(float(K[s, q]))
    B = [n * ctx.exp(ctx.mpf(float(K[v, q])) - ks) for v, n in zip(others, n_other)]
    den = n_s + sum(B[1:], B[0])
    pis = [b / den for b in B]
    M = len(const["A"])
    dz = [sum((pi * const["cdiff"][v][w] for pi, v in zip(pis, others)), ctx.mpf(0)) for w in range(M)]
    num = sum((const["A"][w] * ctx.expm1(dz[w] - dz[y]) for w in range(M) if w != y), ctx.mpf(0))
    return ctx.log1p(num / const["one_plus_S"])


def _excess(ctx, K, sents, consts, N):
    """Enclosure of E(K) = (1/N) sum_i (loss_i(K) - loss_i(e_s)) (sentences with one distinct token add 0)."""
    total = ctx.mpf(0)
    for sent, c in zip(sents, consts):
        total = total + _sentence_excess(ctx, K, sent, c)
    return total / N


# ------------------------------------------------------------------ the certificate
def certify_stage2_upper(ds, O, K, eta, K_star=None, *, step_tol=0.0):
    """Certify ``E(K_{t0+k}) <= E0 (1 - eta r)^k`` for all k >= 0 from the checkpoint ``K = K_{t0}``.

    The theorem and its proof: docs/stage2_upper.md. Per sentence i with two or more distinct
    tokens (``s = x*``, ``y``, ``q``, ``U'`` its other distinct tokens, ``o_v = O[:, v]``,
    ``p* = softmax(o_s)``, ``u* = 1 - p*_y``):

    - ``h*_v = (o_v - o_s)^T (p* - e_y)``, ``Delta_i = min_{v in U'} h*_v`` (the vertex gap),
      ``rho_i = max_{v in U'} (max - min of o_v - o_s)``, ``D_i = max - min of W[v, q], v in U'``;
    - ``eps_bar_i = N E0 / Delta_i``; ``l_i(e) = u* rho_i expm1(rho_i e)``;
      ``h_min,i = Delta_i - l_i(eps_bar_i)``;
      ``c_i = mu (1 - eps_bar_i) - eps_bar_i (hrange_i + 2 l_i(eps_bar_i)) D_i / (2 h_min,i)``;
    - ``eps_hat_i = eps_bar_i e^{sqrt2 (1 + delta) eta}``;
      ``beta_i = 2 (1 + delta)^2 e^{sqrt2 (1 + delta) eta} (hmax_i + l_i(eps_hat_i)
      + u* rho_i^2 eps_hat_i e^{rho_i eps_hat_i}) / Delta_i``;

    ``mu = min_i min_{v in U'} (W[s, q] - W[v, q])``, ``kappa = min_i c_i``,
    ``beta = max_i beta_i`` and ``r = (1 - delta) kappa / ||W|| - eta beta / 2``.

    Hypotheses checked (all in interval arithmetic): (H1) every ``Delta_i > 0``; (H2) ``mu > 0``;
    (H3) every ``h_min,i > 0`` and ``kappa > 0``; (H4) ``0 < eta r < 1``.

    Parameters
    ----------
    ds : RealizableDataset
        The training sentences (valid).
    O : float64 array (M, M)
        The fixed W_ov of stage 2 (token coordinates).
    K : float64 array (M, M)
        The checkpoint ``K_{t0}``.
    eta : float > 0
        The stage-2 step size.
    K_star : float64 array (M, M) or None
        The comparator ``W`` (any matrix with positive margin works; ``W_kq*`` gives the best
        rate, ``mu/||W|| <= gamma_kq``). None: ``refimpl.w_kq_star(ds)``.
    step_tol : float in [0, 1), default 0
        ``delta``: the theorem allows steps ``K_{t+1} = K_t - eta D_t`` with
        ``||D_t|| <= 1 + delta`` and ``<D_t, G_t> >= (1 - delta) ||G_t||`` (exact NGD: 0).

    Returns
    -------
    Stage2UpperCertificate
        ``ok``, ``reason``, ``rate``, ``log10_excess0``, ``log10_bound(k)``, ``quantities``.

    Raises
    ------
    TypeError
        ``ds`` is not a RealizableDataset.
    ValueError
        Shapes, non-finite inputs, ``eta <= 0`` or ``step_tol`` outside ``[0, 1)``.

    Examples
    --------
    >>> import refimpl as ri
    >>> from refimpl.stage2_bound import certify_stage2_upper
    >>> ds = ri.generate(vocab_size=6, n_sentences=20, seed=4)
    >>> res = ri.train_two_stage(ds, T0=200, T=0, progress=False)
    >>> cert = certify_stage2_upper(ds, res.W_ov, res.W_kq, res.config.eta)
    >>> cert.ok                                  # K = 0: far from the vertex, nothing certified
    False
    """
    if not isinstance(ds, RealizableDataset):
        raise TypeError(f"certify_stage2_upper expects a RealizableDataset, got {type(ds).__name__}")
    M = ds.vocab_size
    O = np.asarray(O, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    if K_star is None:
        from .maxmargin import w_kq_star
        K_star = w_kq_star(ds)[0]
    W = np.asarray(K_star, dtype=np.float64)
    for name, A in (("O", O), ("K", K), ("K_star", W)):
        if A.shape != (M, M):
            raise ValueError(f"{name} must have shape ({M}, {M}), got {A.shape}")
        if not np.all(np.isfinite(A)):
            raise ValueError(f"{name} has non-finite entries")
    eta = float(eta)
    if not (math.isfinite(eta) and eta > 0):
        raise ValueError(f"eta must be finite and > 0, got {eta}")
    delta = float(step_tol)
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"step_tol must be in [0, 1), got {delta}")

    ctx = MPIntervalContext()
    ctx.prec = _PREC
    N = ds.n_sentences
    sents = _sentences(ds)
    q = {}

    def result(ok, reason, e0, rate=None, factor=None):
        log10_e0 = _hi(ctx.log10(e0)) if e0.b > 0 else (-math.inf if e0.b == 0 else math.nan)
        return Stage2UpperCertificate(
            ok=ok, reason=reason, eta=eta, step_tol=delta,
            rate=_lo(rate) if rate is not None else math.nan, log10_excess0=log10_e0,
            log10_factor=_hi(factor) if factor is not None else math.nan,
            quantities=MappingProxyType(dict(q)))

    if not sents:
        q["excess0"] = (0.0, 0.0)
        return result(False, "no sentence has two distinct tokens: the excess is 0 for every K "
                      "and stage 2 stops at step 0", ctx.mpf(0))

    consts = [_vertex_constants(ctx, O, W, s) for s in sents]
    # E0: the enclosure of E(K_t0), at higher precision when too wide (cancellation in dz)
    while True:
        e0 = _excess(ctx, K, sents, consts, N)
        if ctx.prec >= _MAX_PREC or e0.b <= 0 or _hi((e0.b - e0.a) / e0.b) <= _REL_WIDTH:
            break
        ctx.prec = 2 * ctx.prec
        consts = [_vertex_constants(ctx, O, W, s) for s in sents]
    gaps = [c["gap"] for c in consts]
    min_gap = _imin(ctx, gaps)
    bad = [s[0] for s, g in zip(sents, gaps) if not _positive(g)]
    if bad:
        # without (H1) the vertex need not be the floor: e0 encloses the mean of loss_i(K) - loss_i(e_s),
        # which may be negative (a sentence doing better than perfect attention); not an excess
        q["excess0"], q["min_gap"] = _pair(e0), _pair(min_gap)
        return result(False, f"(H1) vertex gap Delta_i not certified > 0 for {len(bad)} sentence(s), "
                      f"first i = {bad[0]} (min_i Delta_i in [{_lo(min_gap):.3e}, {_hi(min_gap):.3e}])", e0)
    e0 = ctx.mpf([max(e0.a, 0), max(e0.b, 0)])   # E >= 0 under (H1) (the floor is a per-sentence minimum)
    q["excess0"] = _pair(e0)
    q["min_gap"] = _pair(min_gap)
    E0 = ctx.mpf(e0.b)                         # the number E0 of the theorem (an upper bound)

    mu = _imin(ctx, [m for c in consts for m in c["margins"]])
    normW = ctx.sqrt(ctx.fsum(ctx.mpf(float(x)) ** 2 for x in W.reshape(-1)))
    q["mu"], q["norm_W"] = _pair(mu), _pair(normW)
    if not _positive(mu):
        return result(False, f"(H2) the comparator's margin mu = min (W[x*, q] - W[x', q]) is not "
                      f"certified > 0 (in [{_lo(mu):.3e}, {_hi(mu):.3e}])", e0)
    q["gamma_W"] = _pair(mu / normW)

    if E0 == 0:   # every sentence exactly at its vertex: impossible for finite K, kept for safety
        return result(False, "E(K_t0) = 0: nothing to bound", e0)

    grow = ctx.exp(ctx.sqrt(2) * (1 + ctx.mpf(delta)) * ctx.mpf(eta))
    kappas, betas, eps_bars, ratios = [], [], [], []
    for sent, c in zip(sents, consts):
        gap, u, rho = c["gap"], c["ustar"], c["rho"]
        eb = N * E0 / gap
        eps_bars.append(eb)
        lip = u * rho * ctx.expm1(rho * eb)
        hmin = gap - lip
        ratios.append(hmin / gap)
        if not _positive(hmin):
            q["max_eps_bar"] = _pair(_imax(ctx, eps_bars))
            return result(False, f"(H3) sentence {sent[0]}: h_min = Delta_i - u* rho expm1(rho eps_bar) "
                          f"is not certified > 0 at eps_bar = N E0 / Delta_i = {_hi(eb):.3e} "
                          f"(Delta_i = {_lo(gap):.3e}, rho = {_hi(rho):.3e}): E(K_t0) is not yet small "
                          f"enough", e0)
        kappas.append(mu * (1 - eb) - eb * (c["hrange"] + 2 * lip) * c["D"] / (2 * hmin))
        eh = eb * grow
        betas.append(2 * (1 + ctx.mpf(delta)) ** 2 * grow
                     * (c["hmax"] + u * rho * ctx.expm1(rho * eh) + u * rho ** 2 * eh * ctx.exp(rho * eh)) / gap)
    kappa, beta = _imin(ctx, kappas), _imax(ctx, betas)
    q["max_eps_bar"] = _pair(_imax(ctx, eps_bars))
    q["min_hmin_ratio"] = _pair(_imin(ctx, ratios))
    q["kappa"], q["beta"] = _pair(kappa), _pair(beta)
    if not _positive(kappa):
        return result(False, f"(H3) kappa = min_i c_i is not certified > 0 (in [{_lo(kappa):.3e}, "
                      f"{_hi(kappa):.3e}]): E(K_t0) is not yet small enough", e0)
    r = (1 - ctx.mpf(delta)) * kappa / normW - ctx.mpf(eta) * beta / 2
    q["rate"] = _pair(r)
    if not (_positive(r) and (ctx.mpf(eta) * r).b < 1):
        return result(False, f"(H4) r = (1 - delta) kappa/||W|| - eta beta/2 is not certified in "
                      f"(0, 1/eta) (r in [{_lo(r):.3e}, {_hi(r):.3e}], kappa/||W|| ~ "
                      f"{_lo(kappa / normW):.3e}, eta beta/2 ~ {_hi(ctx.mpf(eta) * beta / 2):.3e})", e0)
    r_lo = ctx.mpf(r.a)
    factor = ctx.log10(1 - ctx.mpf(eta) * r_lo)
    return result(True, "", e0, rate=r_lo, factor=factor)
