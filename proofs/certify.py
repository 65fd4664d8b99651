"""Each certified claim as hypotheses => conclusion, checked by SymPy against the registry.

For every claim of ``claims`` this module derives the claim's constants from the
ingredients of its proof (docs/theory.md) and compares them with the SymPy
expressions stored in the claim (``Claim.constant(name)``), so a wrong constant in
the registry fails its check. Inequalities are checked as **certificates**: the
conclusion minus its right-hand side is written as ``sum_i w_i s_i`` where every
``s_i >= 0`` is a hypothesis (a slack) and every multiplier ``w_i`` is nonnegative
by SymPy's assumptions on its symbols (``positive=True`` etc.); SymPy checks the
identity exactly and asks ``w_i.is_nonnegative``.

Kinds of steps (``StepResult.kind``):

symbolic     proved for symbolic sizes (``Sum``/``summation`` over ``M``, ``k``, ``t``).
instances    exact SymPy identity for fixed small sizes (stated as such).
interval     mpmath interval arithmetic (a rigorous enclosure).
numeric evidence only
             no proof: the claim (or this part) is measured on runs.

``check(claim)`` returns a :class:`ClaimResult`; ``claims.check(id)`` and
``refimpl_proofs.check_all()`` call it.
"""
from dataclasses import dataclass, field

import mpmath
import sympy as sp

from . import derivations as dv
from .symbols import (HALF, LOG_TINY, SQRT2, M, N, a, b, c1, c8, eta, eta0, gamma_kq,
                      gamma_mm, gamma_ov, k_chain, lu, m, margin_W, n_c, norm0, norm_W, t)

SYMBOLIC, INSTANCES, INTERVAL, NUMERIC = ("symbolic", "instances", "interval",
                                          "numeric evidence only")
PROVED, PROVED_PART, MEASURED, FAILED = ("proved", "proved (certified part; the rest is measured)",
                                         "measured", "failed")


@dataclass(frozen=True)
class StepResult:
    """One checked step: ``passed`` is True/False, or None for numeric evidence only."""
    name: str
    kind: str
    passed: object
    detail: str = ""


@dataclass(frozen=True)
class ClaimResult:
    """The outcome of checking one claim: its verdict and every step checked."""
    claim_id: str
    verdict: str                      # PROVED, PROVED_PART, MEASURED or FAILED
    steps: tuple = field(default=())
    note: str = ""

    @property
    def proved(self):
        """True iff every certified part is proved (never for a measured claim)."""
        return self.verdict in (PROVED, PROVED_PART)

    @property
    def ok(self):
        """True iff no checked step failed (a measured claim is ok but not proved)."""
        return self.verdict != FAILED

    @property
    def failed_steps(self):
        return tuple(s.name for s in self.steps if s.passed is False)

    def __bool__(self):
        return self.proved

    def __str__(self):
        lines = [f"{self.claim_id}: {self.verdict}" + (f" ({self.note})" if self.note else "")]
        for s in self.steps:
            mark = {True: "ok", False: "FAIL", None: "--"}[s.passed]
            lines.append(f"  [{mark}] {s.name} ({s.kind})" + (f": {s.detail}" if s.detail else ""))
        return "\n".join(lines)


# ----------------------------------------------------------------------------- helpers
def _zero(expr):
    """True iff ``expr`` is identically 0, after evaluating sums (``doit``)."""
    expr = sp.sympify(expr)
    if expr.has(sp.Sum):
        expr = sp.expand(expr).doit()
    return dv._zero(expr)


def certificate(expr, terms, substitutions=None):
    """``expr >= 0`` from hypotheses: True iff ``expr == sum w_i s_i`` and every ``w_i >= 0``.

    terms : sequence of ``(w_i, s_i)``; each ``s_i >= 0`` is a hypothesis of the lemma and
    ``w_i`` must be nonnegative by the assumptions of its symbols (``w_i.is_nonnegative``).
    substitutions : ``{slack symbol: its definition}`` applied before the identity check
    (a positive slack symbol stands for a strict precondition such as ``1 - w > 0``).
    """
    subs = substitutions or {}
    if not all(sp.sympify(w).is_nonnegative for w, _ in terms):
        return False
    rest = expr - sum(w * s for w, s in terms)
    return _zero(sp.sympify(rest).subs(subs))


def _step(name, kind, fn, detail=""):
    if kind == NUMERIC:                          # no proof: recorded, never counted as passed
        return StepResult(name, kind, None, detail)
    try:
        ok = bool(fn())
    except Exception as exc:                     # a check that cannot run is a failed check
        return StepResult(name, kind, False, f"{type(exc).__name__}: {exc}")
    return StepResult(name, kind, ok, detail)


def _uses(claim, *names):
    """The statement of the claim contains each of its named constants."""
    return all(claim.statement.has(claim.constant(n)) for n in names)


# integer step counter for sums over steps; the claims use the real ``t``
_s, _v, _j = sp.symbols("s v j", integer=True, nonnegative=True)
_T = sp.Symbol("T", integer=True, nonnegative=True)
_J = sp.Symbol("J", integer=True, positive=True)
_p = sp.IndexedBase("p", nonnegative=True)
_o = sp.IndexedBase("o", real=True)
_alpha = sp.IndexedBase("alpha", nonnegative=True)
_g = sp.IndexedBase("g", real=True)


def _at_integer_t(expr):
    return sp.sympify(expr).subs(t, _T)


# ----------------------------------------------------------------------------- shared lemmas
def lemma_least_distance():
    """KKT => optimality of a least-distance program, any number ``J`` of constraints.

    Hypotheses: ``k* = sum_j alpha_j A_j``, ``alpha_j >= 0``, complementary slackness
    ``sum_j alpha_j (<A_j, k*> - 1) = 0``; ``k`` feasible: ``g_j = <A_j, k> >= 1``.
    With ``nk = ||k||^2``, ``ns = ||k*||^2 = sum_j alpha_j`` (stationarity and slackness),
    ``<k, k*> = sum_j alpha_j g_j`` (linearity): checked
    ``||k||^2 - ||k*||^2 = ||k - k*||^2 + 2 sum_j alpha_j (g_j - 1)`` (both terms >= 0).
    """
    nk, d = sp.symbols("nk d", nonnegative=True)       # d = ||k - k*||^2
    ns = sp.Sum(_alpha[_j], (_j, 1, _J))
    ip = sp.Sum(_alpha[_j] * _g[_j], (_j, 1, _J))
    # bilinearity: ||k - k*||^2 = nk - 2 ip + ns
    identity = (nk - ns) - (nk - 2 * ip + ns) - 2 * sp.Sum(_alpha[_j] * (_g[_j] - 1), (_j, 1, _J))
    return _zero(identity)


def lemma_simplex_sum_squares():
    """``(sum_v p_v)^2 - sum_v p_v^2 = sum_v p_v (S - p_v) >= 0`` for symbolic ``M``.

    ``S = sum_{v=1}^{M-1} p_v``; each ``S - p_v`` is a sum of the other nonnegative terms.
    This is Lemma A's upper side (``2(1-p_y)^2 - ||p - e_y||^2``) and C3's
    ``sum a_x^2 <= (sum a_x)^2``.
    """
    S = sp.Sum(_p[_v], (_v, 1, M - 1))
    lhs = S ** 2 - sp.Sum(_p[_v] ** 2, (_v, 1, M - 1))
    rhs = sp.Sum(_p[_v] * S - _p[_v] ** 2, (_v, 1, M - 1))
    return _zero(sp.expand(lhs) - sp.expand(rhs).doit())


def lemma_residual_norm():
    """Lemma A, symbolic ``M``: ``||p - e_y||^2 = (1 - p_y)^2 + sum_{v != y} p_v^2``."""
    S = sp.Sum(_p[_v], (_v, 1, M - 1))
    p_y = 1 - S
    res_sq = (p_y - 1) ** 2 + sp.Sum(_p[_v] ** 2, (_v, 1, M - 1))
    return _zero(res_sq - (1 - p_y) ** 2 - sp.Sum(_p[_v] ** 2, (_v, 1, M - 1)))


def lemma_inner_product():
    """Lemma D, symbolic ``M``: ``<e_y - p, e_y - (1/M) 1> = 1 - p_y``."""
    S = sp.Sum(_p[_v], (_v, 1, M - 1))
    p_y = 1 - S
    inner = (1 - p_y) * (1 - 1 / M) + sp.Sum(-_p[_v] * (-1 / M), (_v, 1, M - 1))
    return _zero(inner - (1 - p_y))


_d = sp.IndexedBase("d", real=True)


def lemma_curvature():
    """Lemma B, symbolic ``M`` (y = 0, ``S = sum_{v>=1} p_v``, ``D = sum_{v>=1} d_v^2``).

    Checked: ``2 (1 - p_y) ||d||^2 - Var_p(d) = (E d - d_y)^2
    + sum_v p_v [(d_v + d_y)^2 + 2 (D - d_v^2)]`` (``D - d_v^2`` is the sum of the other
    squares, ``>= 0``), and ``Var_p(d) = sum_w p_w (d_w - E d)^2 >= 0`` (convexity).
    """
    d_y = sp.Symbol("d_y", real=True)
    Sm = lambda e: sp.Sum(e, (_v, 1, M - 1))                            # noqa: E731
    S = Sm(_p[_v])
    p_y = 1 - S
    D = Sm(_d[_v] ** 2)
    mean = p_y * d_y + Sm(_p[_v] * _d[_v])
    var = p_y * d_y ** 2 + Sm(_p[_v] * _d[_v] ** 2) - mean ** 2
    sos = (mean - d_y) ** 2 + Sm(_p[_v] * ((_d[_v] + d_y) ** 2 - 2 * _d[_v] ** 2)) + 2 * D * S
    spread = p_y * (d_y - mean) ** 2 + Sm(_p[_v] * (_d[_v] - mean) ** 2)
    return _zero(2 * (1 - p_y) * (d_y ** 2 + D) - var - sos) and _zero(var - spread)


def lemma_growth():
    """Lemma C, symbolic ``M`` (y = 0): ``d/ds log u(o + s d) |_0 = p_y (E_q d - d_y)``, and
    ``2||d||^2 - (d_v - d_y)^2 = (d_v + d_y)^2 + 2 (D - d_v^2)`` (``D = sum_{w != y} d_w^2``)."""
    o_y, d_y, d_v, s = sp.symbols("o_y d_y d_v s", real=True)
    o = sp.IndexedBase("o", real=True)
    Sm = lambda e: sp.Sum(e, (_v, 1, M - 1))                            # noqa: E731
    u = Sm(sp.exp(o[_v] + s * _d[_v])) / (sp.exp(o_y + s * d_y) + Sm(sp.exp(o[_v] + s * _d[_v])))
    dlogu = sp.diff(sp.log(u), s).subs(s, 0)
    Z, U = sp.exp(o_y) + Sm(sp.exp(o[_v])), Sm(sp.exp(o[_v]))
    formula = (sp.exp(o_y) / Z) * (Sm(sp.exp(o[_v]) * _d[_v]) / U - d_y)
    D = sp.Symbol("D", nonnegative=True)
    return (_zero(dlogu - formula)
            and _zero(2 * (d_y ** 2 + D) - (d_v - d_y) ** 2 - (d_v + d_y) ** 2 - 2 * (D - d_v ** 2)))


def lemma_vertex_gradient():
    """C8 vertex gradient for symbolic ``M`` and ``J`` tokens (target y = 0, x* = token 0):
    ``d/dpi_i [log sum_v e^{z_v} - z_0]`` at ``pi = e_0``, ``z_v = sum_j pi_j O[v, j]``,
    equals ``g_i = sum_v p*_v O[v, i] - O[0, i]``, ``p* = softmax(O[:, 0])``."""
    i, j, r = sp.symbols("i j r", integer=True, nonnegative=True)
    pi, O = sp.IndexedBase("pi"), sp.IndexedBase("O", real=True)
    z = lambda vv: sp.Sum(pi[j] * O[vv, j], (j, 0, _J - 1))              # noqa: E731
    f = sp.log(sp.Sum(sp.exp(z(_v)), (_v, 0, M - 1))) - z(0)
    grad = sp.diff(f, pi[i]).doit().subs(_J, i + 1 + r)                  # token i among the J
    at_vertex = grad.replace(lambda e: isinstance(e, sp.Indexed) and e.base == pi,
                             lambda e: sp.KroneckerDelta(e.indices[0], 0)).doit()
    Z = sp.Sum(sp.exp(O[_v, 0]), (_v, 0, M - 1))
    return _zero(at_vertex - (sp.Sum(sp.exp(O[_v, 0]) * O[_v, i], (_v, 0, M - 1)) / Z - O[0, i]))


def _log_space_threshold():
    """Interval: ``e^{LOG_TINY} < 5e-18`` (the dropped term of the log-space forms)."""
    with mpmath.workprec(80):
        enclosure = mpmath.iv.exp(mpmath.iv.mpf(int(LOG_TINY)))
        bound = mpmath.iv.mpf(5) / mpmath.iv.mpf(10 ** 18)
        return enclosure.b < bound.a


# ----------------------------------------------------------------------------- per claim
def _c1_steps(claim):
    stated = claim.constant("norm_sq")
    alpha_v = 1 / M                                   # multiplier of every constraint
    o_y = sp.summation(alpha_v, (_v, 1, M - 1))       # stationarity, y-entry
    o_v = -alpha_v                                    # stationarity, v-entry
    col_sq = o_y ** 2 + sp.summation(o_v ** 2, (_v, 1, M - 1))
    # optimality of the column against any feasible o (o_y - o_v >= 1):
    oy = sp.Symbol("o_y", real=True)
    feas = (oy ** 2 + sp.Sum(_o[_v] ** 2, (_v, 1, M - 1))) - col_sq
    dist = (oy - o_y) ** 2 + sp.Sum((_o[_v] - o_v) ** 2, (_v, 1, M - 1))
    slack_sum = sp.Sum(alpha_v * (oy - _o[_v] - 1), (_v, 1, M - 1))
    return [
        _step("kkt: all constraints active, alpha_v = 1/M >= 0 (symbolic M)", SYMBOLIC,
              lambda: _zero(o_y - o_v - 1) and sp.sympify(alpha_v).is_nonnegative),
        _step("optimality: ||o||^2 - ||o*||^2 = ||o - o*||^2 + 2 sum alpha_v (o_y - o_v - 1)",
              SYMBOLIC, lambda: _zero(feas - dist - 2 * slack_sum)),
        _step("least-distance KKT lemma (any number of constraints)", SYMBOLIC,
              lemma_least_distance),
        _step("stated ||O*||^2 equals n_c ||o*||^2 (columns outside C are 0)", SYMBOLIC,
              lambda: _zero(stated - n_c * col_sq)),
        _step("statement uses the constant", SYMBOLIC, lambda: _uses(claim, "norm_sq")),
    ]


def _c2_steps(claim, c1_claim):
    stated = claim.constant("loss")
    z_y, z_v = a * (1 - 1 / M), -a / M                # column a (e_y - 1/M), a = c gamma_ov
    den = sp.exp(z_y) + sp.summation(sp.exp(z_v), (_v, 1, M - 1))
    P = sp.exp(z_v) / den
    column_loss = sp.log(den) - z_y
    gamma_from_c1 = 1 / sp.sqrt(c1_claim.constant("norm_sq"))
    stated_at_a = stated.subs(t, a / (gamma_ov * eta0))
    return [
        _step("ray: p - e_y = -M P (e_y - (1/M) 1), y-entry, symbolic M", SYMBOLIC,
              lambda: _zero(sp.exp(z_y) / den - 1 + M * P * (1 - 1 / M))),
        _step("P > 0: the gradient never vanishes", SYMBOLIC, lambda: P.is_positive),
        _step("gamma_ov = 1/sqrt(C1 norm^2) > 0 for M >= 2", SYMBOLIC,
              lambda: gamma_from_c1.subs(M, sp.Symbol("M_1", positive=True) + 1).is_positive),
        _step("stated L0(O_t) equals the column loss at a = gamma_ov eta0 t", SYMBOLIC,
              lambda: _zero(sp.powsimp(sp.expand(sp.exp(stated_at_a) - sp.exp(column_loss))))),
        _step("log1p and log-space forms equal the stated closed form", SYMBOLIC,
              lambda: _zero(dv.C2_LOSS_LOG1P.rewrite(sp.log) - stated)
              and _zero(sp.exp(dv.C2_LOG_LOSS.args[1][0]).rewrite(sp.log) - stated)),
        _step("log-space threshold e^{-40} < 5e-18", INTERVAL, _log_space_threshold),
        _step("statement uses the constant", SYMBOLIC, lambda: _uses(claim, "loss")),
    ]


def _c3_steps(claim):
    upper, lower = claim.constant("norm_upper"), claim.constant("proj_lower")
    G, mu = sp.symbols("G mu", positive=True)         # ||grad L0||, mean_x (1 - p_x)
    increment = eta0 * mu * gamma_ov / G              # eta0 <-G, O*>/(||G|| ||O*||)
    per_step = eta0 * gamma_ov / SQRT2
    return [
        _step("triangle inequality: sum of t unit steps of length eta0 (symbolic t)", SYMBOLIC,
              lambda: _zero(_at_integer_t(upper) - sp.summation(eta0, (_s, 0, _T - 1)))),
        _step("Lemma A (symbolic M): ||p - e_y||^2 = (1-p_y)^2 + sum p_v^2", SYMBOLIC,
              lemma_residual_norm),
        _step("Lemma A upper / sum a^2 <= (sum a)^2 (symbolic M)", SYMBOLIC,
              lemma_simplex_sum_squares),
        _step("Lemma D (symbolic M): <-grad L0, O*> = mean_x (1 - p_x)", SYMBOLIC,
              lemma_inner_product),
        _step("per step: increment - eta0 gamma_ov/sqrt2 = w (sqrt2 mu - ||G||), w >= 0",
              SYMBOLIC, lambda: certificate(increment - per_step,
                                            [(eta0 * gamma_ov / (SQRT2 * G), SQRT2 * mu - G)])),
        _step("stated projection bound equals the sum of t per-step bounds", SYMBOLIC,
              lambda: _zero(_at_integer_t(lower) - sp.summation(per_step, (_s, 0, _T - 1)))),
        _step("statement uses both constants", SYMBOLIC,
              lambda: _uses(claim, "norm_upper", "proj_lower")),
    ]


def _c4_steps(claim, c3_claim):
    c1_stated, lower, step = claim.constant("c1"), claim.constant("lower"), claim.constant("step")
    G, U, mu, L0 = sp.symbols("G U mu L0", positive=True)
    w = eta0 * sp.exp(SQRT2 * eta0)
    one_minus_w = sp.Symbol("1-w", positive=True)     # precondition eta0 e^{sqrt2 eta0} < 1
    taylor = L0 - eta0 * G + (eta0 ** 2 / 2) * (2 / n_c) * sp.exp(SQRT2 * eta0) * U
    after = L0 - eta0 * c1_stated * mu
    mono = sp.diff(sp.log(1 + sp.exp(-m)), m)
    radius = norm0 + c3_claim.constant("norm_upper")  # ||O_t|| <= ||O_0|| + eta0 t (C3)
    derived_lower = sp.log(1 + sp.exp(-gamma_ov * radius)) / n_c
    F = step.subs(c1, c1_stated)
    return [
        _step("Lemma B (curvature, symbolic M): 2(1-p_y)||d||^2 - Var_p(d) is a weighted "
              "sum of squares", SYMBOLIC, lemma_curvature),
        _step("Lemma C (growth factor e^{sqrt2 eta0}, symbolic M)", SYMBOLIC, lemma_growth),
        _step("Lemma A, D (symbolic M)", SYMBOLIC,
              lambda: lemma_residual_norm() and lemma_inner_product()),
        _step("descent: Taylor bound - (L0 - eta0 c1 mu) = certificate, c1 as stated", SYMBOLIC,
              lambda: certificate(after - taylor,
                                  [(eta0 * w / n_c, n_c * G - U),
                                   (eta0 * one_minus_w, G - gamma_ov * mu)],
                                  {one_minus_w: 1 - w})),
        _step("concavity: f(a)+f(b)-f(a+b) = (1-e^-a)(1-e^-b)", SYMBOLIC,
              dv.ALL_CHECKS["check_subadditivity"]),
        _step("recursion: (L0 - eta0 c1 mu) - F(L0) = eta0 c1 ((1-e^{-n_c L0})/n_c - mu)",
              SYMBOLIC, lambda: certificate(F.subs(b, L0) - after,
                                            [(eta0 * c1_stated.subs(1 - w, one_minus_w),
                                              mu - (1 - sp.exp(-n_c * L0)) / n_c)],
                                            {one_minus_w: 1 - w})),
        _step("F increasing: F'(b) - (1 - eta0 c1) = eta0 c1 (1 - e^{-n_c b}); F(0) = 0", SYMBOLIC,
              lambda: certificate(sp.diff(step, b) - (1 - eta0 * c1),
                                  [(eta0 * c1, 1 - sp.exp(-n_c * b))]) and step.subs(b, 0) == 0),
        _step("eta0 c1 <= sqrt2/4 (implied precondition)", SYMBOLIC,
              dv.ALL_CHECKS["check_c4_recursion_monotone"]),
        _step("linear rate: h(x) = (1-e^-x)/x decreasing, h(0+) = 1", SYMBOLIC,
              dv.ALL_CHECKS["check_c4_linear_rate"]),
        _step("lower: log(1 + e^{-m}) decreasing (derivative -1/(1+e^m) < 0)", SYMBOLIC,
              lambda: _zero(mono + 1 / (1 + sp.exp(m))) and (-1 / (1 + sp.exp(m))).is_negative),
        _step("stated lower bound equals (1/n_c) log(1 + e^{-gamma_ov (||O_0|| + C3 bound)})",
              SYMBOLIC, lambda: _zero(lower - derived_lower)),
        _step("log1p and log-space forms equal the stated lower bound", SYMBOLIC,
              lambda: _zero(dv.C4_LOWER_LOG1P.rewrite(sp.log) - lower)
              and _zero(sp.exp((dv.C4_LOWER_LOG + sp.log(n_c)).args[1][0]).rewrite(sp.log) / n_c
                        - lower)),
        _step("log-space recursion step is log F(e^beta)", SYMBOLIC,
              lambda: _zero(sp.exp(dv.C4_LOG_STEP.args[1][0].rewrite(sp.log).rewrite(sp.exp))
                            - step.subs(b, sp.exp(lu)))),
        _step("log-space threshold e^{-40} < 5e-18", INTERVAL, _log_space_threshold),
        _step("preconditions: eta0 e^{sqrt2 eta0} < 1 and eta0 c1 < 1 with the stated c1",
              SYMBOLIC, lambda: any(isinstance(p, sp.Lt) and _zero(p.lhs - w) and p.rhs == 1
                                    for p, _ in claim.preconditions)
              and any(isinstance(p, sp.Lt) and _zero(p.lhs - eta0 * c1_stated) and p.rhs == 1
                      for p, _ in claim.preconditions)),
        _step("statement uses the constants", SYMBOLIC, lambda: _uses(claim, "c1", "lower")),
    ]


def _c6_steps(claim):
    K = sp.IndexedBase("K", real=True)
    i = sp.Symbol("i", integer=True, nonnegative=True)
    return [
        _step("chain telescopes: sum_{i<k} (K[a_{i+1}] - K[a_i] - 1) = K[a_k] - K[a_0] - k "
              "(symbolic k)", SYMBOLIC,
              lambda: _zero(sp.Sum(K[i + 1] - K[i] - 1, (i, 0, k_chain - 1)).doit()
                            - (K[k_chain] - K[0] - k_chain))
              and _zero(claim.constant("chain_gap") - k_chain)),
        _step("KKT certificate is sufficient (least-distance lemma)", SYMBOLIC,
              lemma_least_distance),
        _step("solver certificate on the run", NUMERIC, lambda: None,
              "checked per run (exact rationals on small instances, 1e-10 on floats)"),
    ]


def _c7_steps(claim):
    return [
        _step("triangle inequality: sum of t steps of length eta (symbolic t)", SYMBOLIC,
              lambda: _zero(_at_integer_t(claim.constant("norm_upper"))
                            - sp.summation(eta, (_s, 0, _T - 1)))),
        _step("statement uses the constant", SYMBOLIC, lambda: _uses(claim, "norm_upper")),
    ]


def _c8_steps(claim, c7_claim):
    lower, c8_term, gap0 = (claim.constant("lower"), claim.constant("c8"),
                            claim.constant("gap_zero_init"))
    F, L1 = sp.symbols("F L_1", positive=True)
    g0, Dl = sp.symbols("g_* Delta", real=True)       # vertex gradient entry of x*, the gap
    Ls = 1 + L1                                       # a constrained sentence has L >= 2
    one_minus_F = sp.Symbol("1-F", nonnegative=True)
    radius = norm0 + c7_claim.constant("norm_upper")
    derived = (dv.Delta_i / (dv.L_i * N)) * sp.exp(-gamma_kq * radius)
    # zero-init columns a(e_y - 1/M) (x*, target y), a(e_w - 1/M) (other token in C), 0 (outside C)
    z_y, z_o = a * (1 - 1 / M), -a / M
    den = sp.exp(z_y) + sp.summation(sp.exp(z_o), (_v, 1, M - 1))
    r_y, r_o = sp.exp(z_y) / den - 1, sp.exp(z_o) / den
    g_star = z_y * r_y + sp.summation(z_o * r_o, (_v, 1, M - 1))
    g_w = (-a / M) * r_y + (a * (1 - 1 / M)) * r_o + sp.summation((-a / M) * r_o, (_v, 1, M - 2))
    return [
        _step("vertex gradient grad_pi f(e_x*) = (g_v) (symbolic M and number of tokens)",
              SYMBOLIC, lemma_vertex_gradient),
        _step("convexity in pi: Var_p >= 0 (Lemma B, symbolic M)", SYMBOLIC, lemma_curvature),
        _step("tangent: sum_{v != x*} pi_v (g_v - g_*) - Delta (1 - pi_*) = "
              "sum_v pi_v (g_v - g_* - Delta) >= 0 (symbolic number of tokens)", SYMBOLIC,
              lambda: _zero(sp.Sum(_alpha[_j] * (_g[_j] - g0), (_j, 1, _J))
                            - Dl * (1 - (1 - sp.Sum(_alpha[_j], (_j, 1, _J))))
                            - sp.Sum(_alpha[_j] * (_g[_j] - g0 - Dl), (_j, 1, _J)))),
        _step("leak: F/(L-1+F) - F/L = F(1-F)/(L(L-1+F)) >= 0", SYMBOLIC,
              lambda: certificate(F / (Ls - 1 + F) - F / Ls,
                                  [(F / (Ls * (Ls - 1 + F)), one_minus_F)], {one_minus_F: 1 - F})),
        _step("leak: (1-pi) - r/(1+r) = ((1-pi) - r pi)/(1+r)", SYMBOLIC,
              dv.ALL_CHECKS["check_c8_lower_algebra"]),
        _step("stated bound with stated c8 equals (Delta/(L N)) e^{-gamma_kq (||K_0|| + C7 bound)}",
              SYMBOLIC, lambda: _zero(lower.subs(c8, c8_term) - derived)),
        _step("zero-init vertex gaps (symbolic M): g_w - g_* = aM/(e^a+M-1), 0 - g_* = stated",
              SYMBOLIC, lambda: _zero(g_w - g_star - a * M / (sp.exp(a) + M - 1))
              and _zero(-g_star - gap0)),
        _step("zero-init gap > 0 for a > 0", SYMBOLIC,
              lambda: gap0.subs(a, sp.Symbol("a_pos", positive=True)).subs(
                  M, sp.Symbol("M1", positive=True) + 1).is_positive),
        _step("log-space bound is log of the stated bound", SYMBOLIC,
              lambda: _zero(sp.expand_log(sp.log(lower), force=True) - dv.C8_LOWER_LOG)),
        _step("statement uses the constant", SYMBOLIC, lambda: _uses(claim, "lower")),
    ]


def _c12_steps(claim):
    lam = _alpha
    mW, nW, nS = sp.symbols("m_W nW nS", positive=True)   # margin, ||W||, ||W*||
    ip = sp.Sum(lam[_j] * _g[_j], (_j, 1, _J))            # <W, W*> = sum lambda_j <A_j, W>
    return [
        _step("sum_j lambda_j = ||W*||^2: ||W*||^2 - sum lambda_j = sum lambda_j (<A_j, W*> - 1)"
              " = 0 (stationarity, complementary slackness)", SYMBOLIC,
              lambda: _zero(sp.Sum(lam[_j] * _g[_j], (_j, 1, _J)) - sp.Sum(lam[_j], (_j, 1, _J))
                            - sp.Sum(lam[_j] * (_g[_j] - 1), (_j, 1, _J)))),
        _step("<W, W*> - m(W) ||W*||^2 = sum_j lambda_j (<A_j, W> - m(W)) >= 0", SYMBOLIC,
              lambda: _zero(ip - mW * sp.Sum(lam[_j], (_j, 1, _J))
                            - sp.Sum(lam[_j] * (_g[_j] - mW), (_j, 1, _J)))),
        _step("stated cosine bound equals m(W) ||W*||^2/(||W|| ||W*||) = m(W)/(gamma ||W||)",
              SYMBOLIC, lambda: _zero(claim.constant("cos_lower").subs(
                  {margin_W: mW, norm_W: nW, gamma_mm: 1 / nS}) - mW * nS ** 2 / (nW * nS))),
        _step("least-distance KKT lemma", SYMBOLIC, lemma_least_distance),
        _step("statement uses the constant", SYMBOLIC, lambda: _uses(claim, "cos_lower")),
    ]


def _monotone_from_zero(f, var, slack_subs=None):
    """``f >= 0`` on ``var >= 0``: ``f(0) = 0`` and ``f' >= 0`` by the symbols' assumptions
    (``slack_subs`` replaces an expression by a positive slack symbol before asking)."""
    df = sp.diff(f, var)
    if slack_subs:
        df = sp.simplify(df).subs(slack_subs)
    return _zero(f.subs(var, 0)) and bool(df.is_nonnegative)


def _c13_steps(claim, c3_claim, c4_claim, c12_claim):
    cos_lower, m_lower, liminf = (claim.constant("cos_lower"), claim.constant("margin_lower"),
                                  claim.constant("liminf"))
    X = sp.Symbol("x", nonnegative=True)              # n_c L0 <= n_c b
    y = sp.Symbol("y", nonnegative=True)
    one_minus_y = sp.Symbol("1-y", positive=True)
    b0, theta = sp.symbols("b_0 theta", positive=True)
    derived_margin = sp.expand_log(-sp.log((n_c * b) * sp.exp(n_c * b)), force=True)
    radius = norm0 + c3_claim.constant("norm_upper")  # ||O_t|| <= ||O_0|| + eta0 t (C3)
    c12 = c12_claim.constant("cos_lower")
    derived_cos = c12.subs({margin_W: derived_margin, gamma_mm: gamma_ov, norm_W: radius})
    # -log b_t >= -log b_0 + eta0 c1 sum_{s<t} h(n_c b_s) = -log b_0 + eta0 c1 theta_t t, theta_t -> 1
    c1_c4 = c4_claim.constant("c1")
    along = cos_lower.subs(b, b0 * sp.exp(-eta0 * c1 * theta * t))
    return [
        _step("C4 lower argument: the column attaining m has loss >= log(1 + e^{-m}), so "
              "e^{-m} = exp(log(1 + e^{-m})) - 1 <= e^{n_c b} - 1", SYMBOLIC,
              lambda: _zero(sp.exp(sp.log(1 + sp.exp(-m))) - 1 - sp.exp(-m))
              and dv.ALL_CHECKS["check_c4_lower_algebra"]()),
        _step("expm1(x) <= x e^x: f = x e^x - e^x + 1, f(0) = 0, f' = x e^x >= 0", SYMBOLIC,
              lambda: _monotone_from_zero(X * sp.exp(X) - sp.exp(X) + 1, X)),
        _step("stated margin lower bound = -log(n_c b e^{n_c b}) <= -log expm1(n_c b) <= m(O_t)",
              SYMBOLIC, lambda: _zero(sp.expand_log(m_lower, force=True) - derived_margin)),
        _step("margin bound decreasing in b (so L0 <= b_t suffices): d/db = -1/b - n_c < 0",
              SYMBOLIC, lambda: bool(sp.diff(m_lower, b).is_negative)),
        _step("C12 bound decreasing in ||W|| for m > 0 (so ||O_t|| <= ||O_0|| + eta0 t suffices)",
              SYMBOLIC, lambda: bool(sp.diff(c12, norm_W).is_negative)),
        _step("stated cosine bound = C12 bound at (margin bound, gamma_ov, ||O_0|| + C3 bound)",
              SYMBOLIC, lambda: _zero(sp.expand_log(cos_lower, force=True)
                                      - sp.expand_log(derived_cos, force=True))),
        _step("-log(1 - y) >= y (f(0) = 0, f' = y/(1-y) >= 0), so log b_{t+1} - log b_t <= "
              "-eta0 c1 h(n_c b_t); h(0+) = 1 and b_t -> 0 (C4)", SYMBOLIC,
              lambda: _monotone_from_zero(-sp.log(1 - y) - y, y, {1 - y: one_minus_y,
                                                                  y - 1: -one_minus_y})
              and dv.ALL_CHECKS["check_c4_linear_rate"]()),
        _step("limit of the bound along log b_t = log b_0 - eta0 c1 theta t is theta c1/gamma_ov; "
              "stated liminf = c1/gamma_ov (theta -> 1, C4's c1)", SYMBOLIC,
              lambda: _zero(sp.limit(along, t, sp.oo) - theta * c1 / gamma_ov)
              and _zero(liminf - c1_c4 / gamma_ov)),
        _step("log-space form (b = e^lu) equals the stated bound", SYMBOLIC,
              lambda: _zero(sp.expand_log(dv.C13_COS_LOWER_LOG.subs(lu, sp.log(b)), force=True)
                            - sp.expand_log(cos_lower, force=True))),
        _step("statement uses the constants", SYMBOLIC, lambda: _uses(claim, "cos_lower", "liminf")),
    ]


def _c14_steps(claim, c7_claim):
    gap = claim.constant("gap_lower")
    p, q, h = dv.p_inv, dv.q_inv, dv.eta_step
    r = sp.Symbol("r", nonnegative=True)
    pp = sp.Symbol("p", positive=True)                  # p > 0 (at p = 0 the bound is 0)
    u, w, phi = (sp.IndexedBase(n, real=True) for n in ("u", "w", "phi"))
    S = sp.Sum(_p[_v], (_v, 1, M - 1))
    A = sp.Sum(phi[_j] * _g[_j], (_j, 1, _J))          # sum_m phi_m g_m
    stage2 = sp.expand(sp.Sum(phi[_j] * (_g[_j] - A), (_j, 1, _J)).doit())
    Sphi = sp.Sum(phi[_j], (_j, 1, _J))
    radius = q + c7_claim.constant("norm_upper").subs(eta, h)  # ||(I-P) W_t|| <= q + eta t
    derived = 1 - radius / sp.sqrt(p ** 2 + radius ** 2)
    return [
        _step("stage 1 invariant: a gradient column (p - e_y)/n_c sums to 0 (symbolic M)", SYMBOLIC,
              lambda: _zero(((1 - S) - 1) + S)),
        _step("stage 2 invariant: sum_l phi_l (g_l - sum_m phi_m g_m) = 0 when sum phi = 1 "
              "(symbolic L; a sentence's gradient lives on one component)", SYMBOLIC,
              lambda: _zero(stage2.subs(Sphi, 1)) or _zero(sp.expand(
                  sp.Sum(phi[_j] * _g[_j], (_j, 1, _J)) - A * Sphi).subs(Sphi, 1))),
        _step("W* orthogonal to the span: O* columns (1 - 1/M) - (M-1)/M = 0; each W_kq* "
              "constraint e_x* - e_x' sums to 0 on its component", SYMBOLIC,
              lambda: _zero((1 - 1 / M) - (M - 1) / M)
              and _zero(sp.Sum(_alpha[_j] * (1 - 1), (_j, 1, _J)).doit())),
        _step("Pythagoras: ||u + w||^2 = ||u||^2 + ||w||^2 when <u, w> = 0 (any dimension)",
              SYMBOLIC, lambda: _zero(sp.expand(sp.Sum((u[_j] + w[_j]) ** 2, (_j, 1, _J))
                                                - sp.Sum(u[_j] ** 2, (_j, 1, _J))
                                                - sp.Sum(w[_j] ** 2, (_j, 1, _J))
                                                - 2 * sp.Sum(u[_j] * w[_j], (_j, 1, _J))).doit())),
        _step("cos <= r/sqrt(p^2 + r^2) increasing in r: derivative p^2/(p^2 + r^2)^(3/2) >= 0",
              SYMBOLIC, lambda: _zero(sp.diff(r / sp.sqrt(p ** 2 + r ** 2), r)
                                      - p ** 2 / (p ** 2 + r ** 2) ** sp.Rational(3, 2))
              and (pp ** 2 / (pp ** 2 + r ** 2) ** sp.Rational(3, 2)).is_nonnegative),
        _step("stated bound = 1 - r/sqrt(p^2 + r^2) at r = q + (C7 bound with eta_step)",
              SYMBOLIC, lambda: _zero(gap - derived)),
        _step("stated bound >= 0, and 0 at p = 0 (zero init: vacuous)", SYMBOLIC,
              lambda: bool(gap.subs(p, pp).is_nonnegative) and _zero(gap.subs(p, 0))),
        _step("statement uses the constant", SYMBOLIC, lambda: _uses(claim, "gap_lower")),
    ]


def _c15_steps(claim, c7_claim, c2_claim, c1_claim):
    thr, drift = claim.constant("threshold"), claim.constant("drift")
    phi, dv_, du_ = (sp.IndexedBase(n, real=True) for n in ("phi", "dv", "du"))
    Lm = sp.Symbol("L-n_star", positive=True)
    mm, sc, Z = sp.symbols("m s Z", positive=True)
    zv = sp.Sum(phi[_j] * a * (dv_[_j] - 1 / M), (_j, 1, _J))
    zu = sp.Sum(phi[_j] * a * (du_[_j] - 1 / M), (_j, 1, _J))
    wv = sp.Sum(phi[_j] * dv_[_j], (_j, 1, _J))
    wu = sp.Sum(phi[_j] * du_[_j], (_j, 1, _J))
    n, Lp = dv.n_star, dv.L_pos
    # w_{n(xhat)} - w_v >= (e^s/Z)(n* - (L - n*) e^{-m})
    lower_gap = (sp.exp(sc) / Z) * (n - Lm * sp.exp(-mm))
    return [
        _step("zero-init stage-1 columns a (e_n(x) - 1/M) (C2 ray): z_v - z_u = a (w_v - w_u), "
              "w_v the attention mass on tokens x in C with n(x) = v", SYMBOLIC,
              lambda: _zero(sp.expand(zv - zu - a * (wv - wu)).doit())
              and all(s.passed for s in _c2_steps(c2_claim, c1_claim))),
        _step("margin bound: n* - (L - n*) e^{-m} = 0 exactly at the stated threshold "
              "(the sufficient condition is sharp)", SYMBOLIC,
              lambda: _zero(n - (Lp - n) * sp.exp(-thr))),
        _step("above the threshold the gap bound (e^s/Z)(n* - (L-n*) e^{-m}) is increasing in m",
              SYMBOLIC, lambda: bool(sp.diff(lower_gap, mm).is_positive)),
        _step("threshold <= log(L - 1): equal at n* = 1, decreasing in n* (L > n*)", SYMBOLIC,
              lambda: _zero(thr.subs(n, 1) - sp.log(Lp - 1))
              and bool(sp.expand_log(sp.diff(thr, n).subs(Lp, n + Lm), force=True).is_negative)),
        _step("drift: a margin is <A, K> with ||A|| = sqrt2; one NGD step moves K by the C7 "
              "bound at t = 1", SYMBOLIC,
              lambda: _zero(drift - sp.sqrt(1 ** 2 + 1 ** 2) * c7_claim.constant("norm_upper").subs(t, 1))),
        _step("statement uses the constants", SYMBOLIC, lambda: _uses(claim, "threshold", "drift")),
    ]


def _c16_steps(claim, c8_claim):
    """C16 (docs/stage2_upper.md): every constant derived again from the proof's ingredients."""
    bound, rate, lf, cf, bf = (claim.constant(n) for n in ("bound", "rate", "l", "c", "b"))
    beta_i, eps_bar, growth, rate_inf = (claim.constant(n) for n in ("beta_i", "eps_bar", "growth", "rate_inf"))
    u0, gap0, eps0, rinf0 = (claim.constant(n) for n in ("ustar_zero_init", "gap_in_C_zero_init",
                                                          "eps_star_zero_init", "rate_inf_zero_init"))
    e, Dl, hmax, hrange, rho, DW, u = (dv.e_leak, dv.Delta16, dv.hmax16, dv.hrange16, dv.rho16, dv.D16,
                                       dv.u_star)
    mu, nW, dl, kap, bet, r, k, E0 = (dv.mu16, dv.normW16, dv.delta16, dv.kappa16, dv.beta16, dv.r16,
                                      dv.k16, dv.E0)
    tt, R, X, Ex = sp.symbols("t R X E", nonnegative=True)
    hmin = sp.Symbol("h_min", positive=True)            # (H3): h_min(e) > 0
    eta_r = sp.Symbol("eta_r", positive=True)           # (H4): 0 < eta r
    one_minus = sp.Symbol("1-eta_r", positive=True)     # (H4): eta r < 1
    # step 2: |h_v - h*_v| <= int_0^1 u* e^{t R} R(c_v) R dt with R = R(dz) <= rho e, R(c_v) <= rho
    l_derived = sp.integrate(u * sp.exp(tt * R) * rho * R, (tt, 0, 1)).subs(R, rho * e)
    # step 4: -<grad, W> >= mu (1 - e) X - (1/2) e (X / h_min) (hrange + 2 l) D_W = c(e) X
    dom = mu * (1 - e) * X - HALF * e * (X / hmin) * (hrange + 2 * lf) * DW
    # step 7: psi'' <= R(sigma)^2 [e (hmax + l(e)) + u* e^{rho e} rho^2 e^2] = R(sigma)^2 e b(e)
    curv = e * (hmax + lf) + u * sp.exp(rho * e) * rho ** 2 * e ** 2
    g = sp.exp(SQRT2 * (1 + dl) * eta)                   # step 6: eps(eta) <= eps(0) e^{R(sigma) eta}
    # zero init (C2 ray): O[:, s] = a (e_y - 1/M), p*_w = e^{-a} / (1 + (M-1) e^{-a}) for w != y
    pw = sp.exp(-a) / (1 + (M - 1) * sp.exp(-a))
    h_in = pw * (2 * a) + (M - 2) * pw * a             # c_v = a (e_n(v) - e_y): c_w - c_y = 2a, a, ...
    h_out = (M - 1) * pw * a                            # c_v = -a (e_y - 1/M): c_w - c_y = a
    hmin0 = gap0 - u0 * (2 * a) * (sp.exp(2 * a * e) - 1)   # rho = R(c_v) = 2a, U' inside C
    Mp = sp.Symbol("M_1", positive=True)                # M = M_1 + 1 >= 2
    return [
        _step("step 1: covariance as a sum over pairs; pair weight (1 - sum p^2)/2 <= 1 - p_y "
              "(fixed M = 2..4)", INSTANCES, dv.ALL_CHECKS["check_c16_covariance"]),
        _step("steps 2, 6, 7: softmax derivatives d pi = pi (sigma - bar), d^2 pi = pi ((sigma - bar)^2 "
              "- Var), d c^T p = Cov_p(c, dz); (x - y)^2 <= 2(x^2 + y^2) (fixed sizes)", INSTANCES,
              dv.ALL_CHECKS["check_c16_attention_derivatives"]),
        _step("Lemma C (growth factor, symbolic M): 1 - p_y <= u* e^{t R(dz)}", SYMBOLIC, lemma_growth),
        _step("step 2: stated l(e) = int_0^1 u* e^{t rho e} rho (rho e) dt", SYMBOLIC,
              lambda: _zero(lf - l_derived)),
        _step("monotone in e (remark b): dl/de >= 0, d h_min/de <= 0, db/de >= 0", SYMBOLIC,
              lambda: bool(sp.diff(lf, e).is_nonnegative) and bool((-sp.diff(Dl - lf, e)).is_nonnegative)
              and bool(sp.diff(bf, e).is_nonnegative)),
        _step("step 3: the vertex gradient of C8 (symbolic M and number of tokens)", SYMBOLIC,
              lemma_vertex_gradient),
        _step("step 3: convexity in pi (Lemma B, symbolic M)", SYMBOLIC, lemma_curvature),
        _step("step 4: pairs containing x* and pairs inside U' (fixed sizes)", INSTANCES,
              dv.ALL_CHECKS["check_c16_domination_pairs"]),
        _step("step 4: stated c(e) X = mu (1 - e) X - (1/2) e (X/h_min) (hrange + 2 l) D_W", SYMBOLIC,
              lambda: _zero(cf * X - dom.subs(hmin, Dl - lf))),
        _step("remark a: mu - c(e) = mu e + e (hrange + 2 l) D_W / (2 h_min) >= 0, so r <= mu/||W||",
              SYMBOLIC, lambda: certificate(mu - cf, [(mu, e), (e * DW / (2 * hmin), hrange + 2 * lf)],
                                            {hmin: Dl - lf})),
        _step("step 5: eps_i <= excess_i/Delta_i <= N E0/Delta_i = stated eps_bar", SYMBOLIC,
              lambda: _zero(eps_bar - N * E0 / Dl)),
        _step("step 6: R(sigma) <= sqrt2 (1 + delta): stated g = e^{R eta}", SYMBOLIC,
              lambda: _zero(growth - g)),
        _step("step 7: psi_i'' <= R(sigma)^2 e b(e) with the stated b", SYMBOLIC,
              lambda: _zero(curv - e * bf)),
        _step("step 7: R(sigma)^2 g b(g eps_bar) excess/Delta with R^2 <= 2 (1 + delta)^2 = stated beta_i "
              "excess", SYMBOLIC,
              lambda: _zero(beta_i - 2 * (1 + dl) ** 2 * g * bf.subs(e, g * eps_bar) / Dl)),
        _step("step 8: E - eta (1 - delta) kappa E/||W|| + (eta^2/2) beta E = (1 - eta r) E, stated r",
              SYMBOLIC, lambda: _zero(Ex - eta * (1 - dl) * kap * Ex / nW + eta ** 2 / 2 * bet * Ex
                                      - (1 - eta * rate) * Ex)),
        _step("step 8: 0 < (1 - eta r) E <= E under (H4)", SYMBOLIC,
              lambda: certificate(Ex - (1 - eta_r) * Ex, [(Ex, eta_r)])
              and certificate((1 - eta_r) * Ex, [(Ex, one_minus)], {one_minus: 1 - eta_r})),
        _step("induction: stated bound at k = 0 is E0 and bound(k+1) = (1 - eta r) bound(k)", SYMBOLIC,
              lambda: _zero(bound.subs(k, 0) - E0)
              and _zero(sp.expand(bound.subs(k, k + 1) - (1 - eta * r) * bound, power_base=True))),
        _step("log-space bound: C16_BOUND_LOG is the log of the stated bound", SYMBOLIC,
              lambda: _zero(sp.expand_log(sp.log(bound), force=True) - dv.C16_BOUND_LOG.rewrite(sp.log))),
        _step("remark b: r_inf = lim_{E0 -> 0} r (kappa -> c(0), beta -> 2 (1+delta)^2 g b(0)/Delta)",
              SYMBOLIC, lambda: _zero(rate_inf - rate.subs({kap: cf.subs(e, 0),
                                                            bet: 2 * (1 + dl) ** 2 * g * bf.subs(e, 0) / Dl}))),
        _step("section 4: zero-init u* = (M-1) p*_w = stated; h*_v = a M p*_w (v in C) = stated; "
              "h*_v = a (M-1) p*_w (outside C) = C8's zero-init gap", SYMBOLIC,
              lambda: _zero(u0 - (M - 1) * pw) and _zero(gap0 - h_in)
              and _zero(h_out - c8_claim.constant("gap_zero_init"))),
        _step("section 4: h_min(e) = (a M - 2 a (M-1) expm1(2 a e))/(e^a + M - 1) vanishes at the stated "
              "eps*, and decreases in e", SYMBOLIC,
              lambda: _zero(sp.simplify(hmin0.subs(e, eps0))) and
              bool((-sp.diff(hmin0, e)).subs(M, Mp + 1).subs(a, sp.Symbol("a_p", positive=True)).is_nonnegative)),
        _step("section 4: r_inf with delta = 0, mu/||W|| = gamma_kq, hmax = Delta = stated", SYMBOLIC,
              lambda: _zero(rinf0 - rate_inf.subs(dl, 0).subs({mu: gamma_kq * nW, hmax: Dl}))),
        _step("statement uses the constants", SYMBOLIC,
              lambda: _uses(claim, "bound", "rate", "l", "c", "b", "beta_i", "eps_bar", "growth",
                            "rate_inf", "ustar_zero_init", "gap_in_C_zero_init", "eps_star_zero_init",
                            "rate_inf_zero_init")),
        _step("hypotheses (H1)-(H4) and E0 on a run", NUMERIC, lambda: None,
              "checked a posteriori in interval arithmetic (refimpl.stage2_bound, audit row C16)"),
    ]


def _measured(note):
    return [_step("measured on runs", NUMERIC, lambda: None, note)]


def check(claim, registry):
    """Check one claim (a ``claims.Claim``) against the registry mapping id -> Claim."""
    cid = claim.id
    get = registry.__getitem__
    if cid == "C1":
        steps = _c1_steps(claim)
    elif cid == "C2":
        steps = _c2_steps(claim, get("C1"))
    elif cid == "C3":
        steps = _c3_steps(claim)
    elif cid == "C4":
        steps = _c4_steps(claim, get("C3"))
    elif cid == "C5":
        steps = ([_step("from zero init: the iterates lie on the ray of O* (C2)", SYMBOLIC,
                        lambda: all(s.passed for s in _c2_steps(get("C2"), get("C1"))))]
                 + _measured("1 - cos(O_t, O*) from a random init"))
    elif cid == "C6":
        steps = _c6_steps(claim)
    elif cid == "C7":
        steps = _c7_steps(claim) + _measured("slope of ||K_t - K_0|| / eta")
    elif cid == "C8":
        steps = _c8_steps(claim, get("C7")) + _measured("decay rate of the excess")
    elif cid == "C9":
        steps = _measured("1 - cos(K_t, K*)")
    elif cid == "C10":
        steps = ([_step("from zero-init stage 1 every vertex gap is > 0 (C8)", SYMBOLIC,
                        lambda: all(s.passed for s in _c8_steps(get("C8"), get("C7"))
                                    if s.kind == SYMBOLIC))]
                 + _measured("positive limit excess in the weak-stage-1 regime"))
    elif cid == "C11":
        steps = ([_step("K* part: a chain of k >= 1 training relations gives a gap >= 1 (C6)",
                        SYMBOLIC, lambda: all(s.passed is not False for s in _c6_steps(get("C6"))))]
                 + _measured("prediction n(xhat) by trained weights"))
    elif cid == "C12":
        steps = _c12_steps(claim)
    elif cid == "C13":
        steps = _c13_steps(claim, get("C3"), get("C4"), get("C12"))
    elif cid == "C14":
        steps = _c14_steps(claim, get("C7"))
    elif cid == "C15":
        steps = _c15_steps(claim, get("C7"), get("C2"), get("C1"))
    elif cid == "C16":
        steps = _c16_steps(claim, get("C8"))
    else:
        raise KeyError(cid)
    steps = tuple(steps)
    if any(s.passed is False for s in steps):
        verdict = FAILED
    elif claim.status == "measured" or cid == "C5":
        verdict = MEASURED
    elif claim.status in ("certified", "certified a posteriori"):
        verdict = PROVED
    else:
        verdict = PROVED_PART
    instances = [s.name for s in steps if s.kind == INSTANCES]
    note = f"{len(instances)} step(s) checked on fixed sizes only" if instances else ""
    return ClaimResult(cid, verdict, steps, note)


@dataclass(frozen=True)
class Summary:
    """Result of :func:`refimpl_proofs.check_all`: one ClaimResult per claim."""
    results: tuple

    @property
    def ok(self):
        return all(r.ok for r in self.results)

    @property
    def proved(self):
        return tuple(r.claim_id for r in self.results if r.proved)

    @property
    def measured(self):
        return tuple(r.claim_id for r in self.results if r.verdict == MEASURED)

    @property
    def failed(self):
        return tuple(r.claim_id for r in self.results if r.verdict == FAILED)

    def __bool__(self):
        return self.ok

    def __str__(self):
        head = (f"proved: {', '.join(self.proved) or '-'}; measured: {', '.join(self.measured) or '-'}; "
                f"failed: {', '.join(self.failed) or '-'}")
        return "\n".join([head] + [str(r) for r in self.results])
