"""Symbolic checks of the algebraic steps of the proofs in ``docs/theory.md``.

Every ``check_*`` function returns ``True`` when SymPy proves the step and
``False`` otherwise. Inequalities are reduced to identities whose right-hand
side is nonnegative by construction (products of nonnegative factors, sums of
squares weighted by probabilities), so the check is an exact ``expand(...) == 0``
or ``cancel(...) == 0``; each docstring says which identity is checked.

The closed forms the claims use are defined here, next to the checks that
justify them; the registry (``claims``) holds them as each claim's constants,
``certify`` derives them again from the hypotheses of the proofs, and
``numeric`` lambdifies the registry's copy (and the log-space forms below, which
``certify`` checks against it).
"""
import itertools

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p

from .symbols import (HALF, LOG_TINY, SQRT2, M, N, a, b, c1, c8, eta, eta0,
                      gamma_kq, gamma_ov, lu, m, mat, n_c, norm0, t, vec, x)

# ----------------------------------------------------------------------------
# Closed forms of the claims (docs/theory.md); all exact, no floats.
# ----------------------------------------------------------------------------
C1_NORM_SQ = n_c * (M - 1) / M                                   # ||O*||^2
C2_LOSS = sp.log(1 + (M - 1) * sp.exp(-gamma_ov * eta0 * t))      # L0(O_t), O_0 = 0
C3_NORM_UPPER = eta0 * t                                         # ||O_t - O_0||
C3_PROJ_LOWER = eta0 * t * gamma_ov / SQRT2                      # <O_t - O_0, hat O*>
C4_C1 = gamma_ov * (1 - eta0 * sp.exp(SQRT2 * eta0))             # c1
C4_STEP = b - eta0 * c1 * (1 - sp.exp(-n_c * b)) / n_c           # b_t -> b_{t+1}
C4_LOWER = sp.log(1 + sp.exp(-gamma_ov * (norm0 + eta0 * t))) / n_c
C7_NORM_UPPER = eta * t                                          # ||K_t - K_0||
C8_LOWER = c8 * sp.exp(-gamma_kq * (norm0 + eta * t))            # excess loss >=
C8_GAP_ZERO_INIT = a * (M - 1) / (sp.exp(a) + M - 1)             # Delta_i >=, a = gamma_ov eta0 T0
# c8 = min over sentences i of C8_CONSTANT_TERM at (Delta_i, L_i, N)
Delta_i, L_i = sp.Symbol("Delta_i", positive=True), sp.Symbol("L_i", positive=True)
C8_CONSTANT_TERM = Delta_i / (L_i * N)

# C13 (stage-1 a-priori cosine, C3 + C4 + C12): with b = b_t the C4 upper bound of L0(O_t),
# m(O_t) >= -log(n_c b) - n_c b and cos(O_t, O*) >= that / (gamma_ov (||O_0|| + eta0 t)).
C13_MARGIN_LOWER = -sp.log(n_c * b) - n_c * b
C13_COS_LOWER = C13_MARGIN_LOWER / (gamma_ov * (norm0 + eta0 * t))
C13_LIMINF = 1 - eta0 * sp.exp(SQRT2 * eta0)                     # liminf of C13_COS_LOWER
# log space: b = e^lu (b_t underflows float64 long before the bound stops growing)
C13_COS_LOWER_LOG = (-sp.log(n_c) - lu - n_c * sp.exp(lu)) / (gamma_ov * (norm0 + eta0 * t))

# C14 (invariant part of the initialization): p_inv = ||P W_0||, q_inv = ||(I - P) W_0||,
# P the orthogonal projection on the span NGD never moves; step size eta_step (eta0 or eta).
p_inv = sp.Symbol("||P W_0||", nonnegative=True)
q_inv = sp.Symbol("||(I-P) W_0||", nonnegative=True)
eta_step = sp.Symbol("eta_step", positive=True)
_r14 = q_inv + eta_step * t
_s14 = sp.sqrt(p_inv ** 2 + _r14 ** 2)
C14_GAP_LOWER = p_inv ** 2 / (_s14 * (_s14 + _r14))              # 1 - cos(W_t, W*) >=

# C15 (finite-time generalization, zero-init stage 1): an unseen sentence of L positions with
# n_star >= 1 copies of its maximum xhat is predicted n(xhat) once its attention margin exceeds
# log((L - n_star)/n_star) (<= log(L - 1)); the margin moves by at most sqrt2 eta per step.
n_star = sp.Symbol("n_star", positive=True)
L_pos = sp.Symbol("L", positive=True)
C15_THRESHOLD = sp.log((L_pos - n_star) / n_star)
C15_DRIFT = SQRT2 * eta

# the same with log1p for float evaluation (log(1 + tiny) loses digits); equal by rewrite
C2_LOSS_LOG1P = log1p((M - 1) * sp.exp(-gamma_ov * eta0 * t))
C4_LOWER_LOG1P = log1p(sp.exp(-gamma_ov * (norm0 + eta0 * t))) / n_c

# log space: LOGLOG1PEXP(lu) = log(log(1 + e^lu)); below LOG_TINY the second
# branch equals lu to < e^lu absolute (see check_log_space_forms).
LOGLOG1PEXP = sp.Piecewise((lu, lu < LOG_TINY), (sp.log(log1p(sp.exp(lu))), True))
C2_LOG_LOSS = LOGLOG1PEXP.subs(lu, sp.log(M - 1) - gamma_ov * eta0 * t)
C4_LOWER_LOG = LOGLOG1PEXP.subs(lu, -gamma_ov * (norm0 + eta0 * t)) - sp.log(n_c)
C8_LOWER_LOG = sp.log(c8) - gamma_kq * (norm0 + eta * t)
# beta = log b: beta' = beta + log(1 - eta0 c1 h(n_c e^beta)), h(x) = (1 - e^-x)/x, h(0) = 1
C4_LOG_STEP = sp.Piecewise(
    (lu + log1p(-eta0 * c1), lu + sp.log(n_c) < LOG_TINY),
    (lu + log1p(eta0 * c1 * expm1(-n_c * sp.exp(lu)) / (n_c * sp.exp(lu))), True))


def _zero(expr):
    """True iff ``expr`` is identically 0 (cancel first, simplify as fallback)."""
    expr = sp.sympify(expr)
    if sp.cancel(sp.together(sp.expand(expr))) == 0:
        return True
    return sp.simplify(expr) == 0


def _softmax(z):
    den = sum(sp.exp(v) for v in z)
    return [sp.exp(v) / den for v in z]


def _probabilities(M_, y):
    """Symbols p_v >= 0 for v != y, and p_y = 1 - sum_{v != y} p_v (list, length M_)."""
    p = list(vec("p", M_, nonnegative=True))
    p[y] = 1 - sum(p[v] for v in range(M_) if v != y)
    return p


# ----------------------------------------------------------------------------
# The gradient in token coordinates (docs/model.md, docs/theory.md section 0)
# ----------------------------------------------------------------------------
def check_gradient_formula(M_, L_, sentence, y):
    """Model gradient (docs/model.md), proved by symbolic differentiation.

    Loss ``log sum_v exp(z_v) - z_y`` with ``z = sum_l phi_l O[:, x_l]``,
    ``phi = softmax(s)``, ``s_l = K[x_l, q]``, symbolic O, K (M_ x M_), a
    concrete sentence (length L_, repeats allowed). Checked, for every entry:
    ``dL/dO[:, x_l] = sum over positions with token x_l of phi_l (p - e_y)`` and
    ``dL/dK[x_l, q] = sum over those positions of phi_l (g_l - sum_m phi_m g_m)``
    with ``g_l = O[:, x_l]^T (p - e_y)``; all other entries 0.
    """
    assert len(sentence) == L_ and all(0 <= v < M_ for v in sentence) and 0 <= y < M_
    O, K = mat("O", M_, M_, real=True), mat("K", M_, M_, real=True)
    q = sentence[-1]
    phi = _softmax([K[v, q] for v in sentence])
    z = [sum(phi[l] * O[v, xl] for l, xl in enumerate(sentence)) for v in range(M_)]
    loss = sp.log(sum(sp.exp(zv) for zv in z)) - z[y]
    r = [pv - (1 if v == y else 0) for v, pv in enumerate(_softmax(z))]    # p - e_y
    g = [sum(O[v, xl] * r[v] for v in range(M_)) for xl in sentence]      # (L_,)
    gbar = sum(phi[l] * g[l] for l in range(L_))
    grad_O, grad_K = sp.zeros(M_, M_), sp.zeros(M_, M_)
    for l, xl in enumerate(sentence):
        for v in range(M_):
            grad_O[v, xl] += phi[l] * r[v]
        grad_K[xl, q] += phi[l] * (g[l] - gbar)
    return all(_zero(sp.diff(loss, O[i, j]) - grad_O[i, j])
               and _zero(sp.diff(loss, K[i, j]) - grad_K[i, j])
               for i in range(M_) for j in range(M_))


# ----------------------------------------------------------------------------
# Per-column inequalities (C3, C4)
# ----------------------------------------------------------------------------
def check_residual_norm_bound(M_, y=0):
    """``(1 - p_y)^2 <= ||p - e_y||^2 <= 2 (1 - p_y)^2`` on the simplex.

    Checked identities (p_y = 1 - sum_{v != y} p_v):
    ``2 (1 - p_y)^2 - ||p - e_y||^2 = 2 sum_{v<w, v,w != y} p_v p_w``
    ``||p - e_y||^2 - (1 - p_y)^2 = sum_{v != y} p_v^2``; both sides >= 0.
    """
    p = _probabilities(M_, y)
    others = [v for v in range(M_) if v != y]
    res_sq = sum((p[v] - (1 if v == y else 0)) ** 2 for v in range(M_))
    u = 1 - p[y]
    cross = 2 * sum(p[v] * p[w] for v, w in itertools.combinations(others, 2))
    return (_zero(2 * u ** 2 - res_sq - cross)
            and _zero(res_sq - u ** 2 - sum(p[v] ** 2 for v in others)))


def check_hessian_bound(M_, y=0):
    """``d^T (diag p - p p^T) d <= 2 (1 - p_y) ||d||^2`` (C4 curvature step).

    Checked identity, with ``E d = sum_v p_v d_v``:
    ``2(1-p_y)||d||^2 - d^T(diag p - pp^T)d = (E d - d_y)^2
       + sum_{v != y} p_v [ (d_v + d_y)^2 + 2 sum_{w != v, y} d_w^2 ]``
    (every term >= 0), plus ``d^T(diag p - pp^T)d = sum_{v<w} p_v p_w (d_v - d_w)^2 >= 0``.
    """
    p, d = _probabilities(M_, y), list(vec("d", M_, real=True))
    mean = sum(p[v] * d[v] for v in range(M_))
    quad = sum(p[v] * d[v] ** 2 for v in range(M_)) - mean ** 2
    norm_sq = sum(dv ** 2 for dv in d)
    sos = (mean - d[y]) ** 2 + sum(
        p[v] * ((d[v] + d[y]) ** 2 + 2 * sum(d[w] ** 2 for w in range(M_) if w not in (v, y)))
        for v in range(M_) if v != y)
    variance = sum(p[v] * p[w] * (d[v] - d[w]) ** 2
                   for v, w in itertools.combinations(range(M_), 2))
    return _zero(2 * (1 - p[y]) * norm_sq - quad - sos) and _zero(quad - variance)


def check_growth_factor(M_, y=0):
    """``|d/ds log(1 - p_y(o + s d))| <= sqrt(2) ||d||`` (C4: factor e^{sqrt2 eta0}).

    Checked identity: ``d/ds log u |_{s=0} = p_y (E_q d - d_y)`` where
    ``u = 1 - p_y`` and ``E_q d = sum_{v != y} p_v d_v / u`` (a q-average of
    ``d_v``, so ``|E_q d - d_y| <= max_{v != y} |d_v - d_y|``), and
    ``2||d||^2 - (d_v - d_y)^2 = (d_v + d_y)^2 + 2 sum_{w != v,y} d_w^2 >= 0``.
    """
    o, d = list(vec("o", M_, real=True)), list(vec("d", M_, real=True))
    s = sp.Symbol("s", real=True)
    p_s = _softmax([o[v] + s * d[v] for v in range(M_)])
    dlogu = sp.diff(sp.log(1 - p_s[y]), s).subs(s, 0)
    p = _softmax(o)
    u = sum(p[v] for v in range(M_) if v != y)
    formula = p[y] * (sum(p[v] * d[v] for v in range(M_) if v != y) / u - d[y])
    norm_sq = sum(dv ** 2 for dv in d)
    pair_ok = all(_zero(2 * norm_sq - (d[v] - d[y]) ** 2 - (d[v] + d[y]) ** 2
                        - 2 * sum(d[w] ** 2 for w in range(M_) if w not in (v, y)))
                  for v in range(M_) if v != y)
    return _zero(dlogu - formula) and pair_ok


def check_inner_product_identity(M_, y=0):
    """``<e_y - p, e_y - (1/M) 1> = 1 - p_y`` on the simplex (C3, C4).

    Summed over columns and divided by n_c: ``<-grad L0, O*> = mean_x (1 - p_x)``.
    """
    p = _probabilities(M_, y)
    ostar = [(1 if v == y else 0) - sp.Rational(1, M_) for v in range(M_)]
    inner = sum(((1 if v == y else 0) - p[v]) * ostar[v] for v in range(M_))
    return _zero(inner - (1 - p[y]))


# ----------------------------------------------------------------------------
# C1, C2: closed forms for general M
# ----------------------------------------------------------------------------
def check_c1_closed_form():
    """C1 for symbolic M: the column ``o = e_y - (1/M) 1`` is optimal.

    Checked: every constraint ``o_y - o_v = 1`` is active; KKT stationarity
    ``o = sum_{v != y} alpha_v (e_y - e_v)`` with ``alpha_v = 1/M >= 0``
    (y-entry ``(M-1)/M``, v-entry ``-1/M``); ``||o||^2 = (M-1)/M``. KKT is
    sufficient for this convex QP, so summing over x in C gives
    ``||O*||^2 = n_c (M-1)/M`` (columns outside C are unconstrained, so 0).
    """
    o_y, o_v, alpha = 1 - 1 / M, -1 / M, 1 / M
    return (_zero(o_y - o_v - 1) and _zero((M - 1) * alpha - o_y)
            and _zero(-alpha - o_v) and _zero(o_y ** 2 + (M - 1) * o_v ** 2 - (M - 1) / M))


def check_c2_trajectory():
    """C2 for symbolic M: along ``O = c hat O*`` the NGD direction is ``hat O*``.

    For a column ``o = a (e_y - (1/M) 1)`` (``a = c gamma_ov``): checked
    ``p - e_y = -M p_v (e_y - (1/M) 1)`` (y-entry; the v-entries are trivial),
    with the same factor ``-M p_v`` in every column, so ``-grad L0`` is a
    positive multiple of ``O*`` (also at a = 0), and the column loss is
    ``log(1 + (M-1) e^{-a})``; with ``a = gamma_ov eta0 t`` this is C2_LOSS.
    """
    z_y, z_v = a * (1 - 1 / M), -a / M
    den = sp.exp(z_y) + (M - 1) * sp.exp(z_v)
    p_y, p_v = sp.exp(z_y) / den, sp.exp(z_v) / den
    loss_arg = den * sp.exp(-z_y)                     # loss = log(loss_arg)
    target = C2_LOSS.subs(gamma_ov * eta0 * t, a).args[0]
    return (_zero(p_y - 1 + M * p_v * (1 - 1 / M))
            and _zero(sp.powsimp(sp.expand(loss_arg - target))))


# ----------------------------------------------------------------------------
# C4: descent, recursion, lower bound
# ----------------------------------------------------------------------------
def check_subadditivity():
    """``f(l) = 1 - e^{-l}``: ``f(a) + f(b) - f(a+b) = (1 - e^{-a})(1 - e^{-b}) >= 0``.

    By induction ``sum_x f(l_x) >= f(sum_x l_x)``, i.e.
    ``mean_x (1 - p_x) >= (1 - exp(-n_c L0))/n_c``.
    """
    u, v = sp.symbols("u v", nonnegative=True)
    f = lambda s: 1 - sp.exp(-s)                                    # noqa: E731
    return _zero(sp.expand(f(u) + f(v) - f(u + v) - (1 - sp.exp(-u)) * (1 - sp.exp(-v))))


def check_c4_descent_algebra():
    """One NGD step: ``L0' <= L0 - eta0 c1 (1 - e^{-n_c L0})/n_c``.

    Symbols: ``G = ||grad L0||``, ``U = max_x (1 - p_x) <= n_c G``,
    ``mu = mean_x (1 - p_x)`` with ``G >= gamma_ov mu`` and
    ``mu >= (1 - e^{-n_c L0})/n_c``, ``w = eta0 e^{sqrt2 eta0} < 1``.
    Taylor: ``L0' <= L0 - eta0 G + (eta0^2/2)(2/n_c) e^{sqrt2 eta0} U``. Checked
    that each successive upper bound minus the previous one equals a product
    of nonnegative factors: ``(eta0 w/n_c)(U - n_c G) <= 0``,
    ``eta0 (1-w)(gamma_ov mu - G) <= 0``, ``eta0 c1 ((1-e^{-n_c L0})/n_c - mu) <= 0``.
    """
    G, U, mu, L0 = sp.symbols("G U mu L0", positive=True)
    w = eta0 * sp.exp(SQRT2 * eta0)
    step0 = L0 - eta0 * G + (eta0 ** 2 / 2) * (2 / n_c) * sp.exp(SQRT2 * eta0) * U
    step1 = L0 - eta0 * G * (1 - w)
    step2 = L0 - eta0 * C4_C1 * mu
    step3 = C4_STEP.subs({b: L0, c1: C4_C1})
    return (_zero(step0 - step1 - (eta0 * w / n_c) * (U - n_c * G))
            and _zero(step1 - step2 - eta0 * (1 - w) * (gamma_ov * mu - G))
            and _zero(step2 - step3 - eta0 * C4_C1 * ((1 - sp.exp(-n_c * L0)) / n_c - mu)))


def check_c4_recursion_monotone():
    """``F(b) = b - eta0 c1 (1 - e^{-n_c b})/n_c`` is increasing with ``F(0) = 0``.

    Checked: ``F'(b) = 1 - eta0 c1 e^{-n_c b}`` and
    ``F'(b) - (1 - eta0 c1) = eta0 c1 (1 - e^{-n_c b}) >= 0``, so ``F' > 0``
    when ``eta0 c1 < 1``; hence ``L0 <= b`` implies ``F(L0) <= F(b)``.
    Also that ``eta0 c1 < 1`` is implied: ``gamma_ov^2 = M/(n_c (M-1)) <= 2``
    (``2 n_c (M-1) - M = 2 (n_c - 1)(M-1) + (M - 2) >= 0`` for M >= 2) and
    ``eta0 (1 - eta0 e^{sqrt2 eta0}) <= eta0 (1 - eta0) = 1/4 - (eta0 - 1/2)^2``,
    so ``eta0 c1 <= sqrt(2)/4``.
    """
    dF = sp.diff(C4_STEP, b)
    return (_zero(dF - (1 - eta0 * c1 * sp.exp(-n_c * b)))
            and _zero(dF - (1 - eta0 * c1) - eta0 * c1 * (1 - sp.exp(-n_c * b)))
            and C4_STEP.subs(b, 0) == 0
            and _zero(2 * n_c * (M - 1) - M - 2 * (n_c - 1) * (M - 1) - (M - 2))
            and _zero(eta0 * (1 - eta0) - (sp.Rational(1, 4) - (eta0 - HALF) ** 2)))


def check_c4_linear_rate():
    """Linear decay of ``b_t``: ``b_{t+1}/b_t = 1 - eta0 c1 h(n_c b_t)``.

    ``h(x) = (1 - e^{-x})/x`` is decreasing (checked:
    ``h'(x) = (e^{-x}(1 + x) - 1)/x^2`` and ``e^{x} - 1 - x >= 0``, whose
    derivative ``e^x - 1 >= 0`` for x >= 0) with ``h(0+) = 1``. Since
    ``b_t <= b_0``: ``b_t <= b_0 rho^t``, ``rho = 1 - eta0 c1 h(n_c b_0)``,
    and the ratio tends to ``1 - eta0 c1``.
    """
    h = (1 - sp.exp(-x)) / x
    return (_zero(C4_STEP / b - (1 - eta0 * c1 * h.subs(x, n_c * b)))
            and _zero(sp.diff(h, x) - (sp.exp(-x) * (1 + x) - 1) / x ** 2)
            and _zero(sp.diff(sp.exp(x) - 1 - x, x) - (sp.exp(x) - 1))
            and sp.limit(h, x, 0, "+") == 1)


def check_c4_lower_algebra():
    """``L0(O) >= (1/n_c) log(1 + e^{-gamma_ov ||O||})`` and its monotonicity.

    Checked: ``log(1 + e^{-m})`` decreases in m (derivative ``-1/(1 + e^m)``),
    so the column attaining the minimum margin ``m <= gamma_ov ||O||`` has loss
    ``>= log(1 + e^{-gamma_ov ||O||})``; and C4_LOWER equals that with
    ``||O|| <= norm0 + eta0 t`` (C3). The margin bound is the scaling argument
    (O/m feasible when m > 0), no algebra beyond ``||O/m|| = ||O||/m``.
    """
    g = sp.log(1 + sp.exp(-m))
    return (_zero(sp.diff(g, m) + 1 / (1 + sp.exp(m)))
            and _zero(C4_LOWER - g.subs(m, gamma_ov * (norm0 + eta0 * t)) / n_c))


# ----------------------------------------------------------------------------
# C6, C8
# ----------------------------------------------------------------------------
def check_c6_chain(k):
    """C6: a chain ``a_0 <_q ... <_q a_k`` of k training constraints telescopes.

    Checked: ``sum_i (K[a_{i+1}, q] - K[a_i, q] - 1) = K[a_k, q] - K[a_0, q] - k``,
    so if every summand is >= 0 (a constraint of the W_kq* problem) the
    difference is >= k.
    """
    kk = list(vec("kq", k + 1, real=True))
    return _zero(sum(kk[i + 1] - kk[i] - 1 for i in range(k)) - (kk[k] - kk[0] - k))


def check_c8_vertex_gradient(M_, tokens, y):
    """C8: gradient of ``f(pi) = loss(sum_j pi_j O[:, tokens_j]; y)`` at the vertex.

    Checked: ``df/dpi_j`` at ``pi = e_0`` (``tokens[0]`` is x*) equals
    ``g_j = O[:, tokens_j]^T (p* - e_y)``, ``p* = softmax(O[:, x*])``; f is convex
    (``check_hessian_bound`` proves the variance form ``>= 0``), so
    ``f(pi) - f(e_0) >= sum_j pi_j (g_j - g_0) >= Delta (1 - pi_0)``.
    """
    O = mat("O", M_, M_, real=True)
    pi = list(vec("pi", len(tokens), nonnegative=True))
    z = [sum(pi[j] * O[v, tk] for j, tk in enumerate(tokens)) for v in range(M_)]
    f = sp.log(sum(sp.exp(zv) for zv in z)) - z[y]
    vertex = {pi[j]: (1 if j == 0 else 0) for j in range(len(tokens))}
    p_star = _softmax([O[v, tokens[0]] for v in range(M_)])
    r = [p_star[v] - (1 if v == y else 0) for v in range(M_)]
    return all(_zero(sp.diff(f, pi[j]).subs(vertex) - sum(O[v, tk] * r[v] for v in range(M_)))
               for j, tk in enumerate(tokens))


def check_c8_zero_init_gap(M_):
    """C8 constant from zero-init stage 1: ``O = a O*`` columnwise, y = 0.

    Columns: ``x*`` -> ``a (e_0 - 1/M)``; another collocation token with
    target w = 1 -> ``a (e_1 - 1/M)``; a token outside C -> 0. Checked:
    ``g_w - g_* = a M/(e^a + M - 1)`` and ``g_0 - g_* = a (M-1)/(e^a + M - 1)``,
    so every ``Delta_i >= C8_GAP_ZERO_INIT > 0`` for a > 0.
    """
    unit = lambda v: [(1 if i == v else 0) - sp.Rational(1, M_) for i in range(M_)]  # noqa: E731
    o_star, o_w = [a * e for e in unit(0)], [a * e for e in unit(1)]
    p = _softmax(o_star)
    r = [p[v] - (1 if v == 0 else 0) for v in range(M_)]
    g = lambda col: sum(c * rv for c, rv in zip(col, r))          # noqa: E731
    gap = C8_GAP_ZERO_INIT.subs(M, M_)
    return (_zero(g(o_w) - g(o_star) - a * M_ / (sp.exp(a) + M_ - 1))
            and _zero(0 - g(o_star) - gap))


def check_c8_lower_algebra():
    """Attention leak: ``1 - pi* >= e^{-m}/(L - 1 + e^{-m}) >= e^{-gamma_kq R}/L``.

    Checked identities (``pi = pi*``, ``r = e^{-m} n'/n* >= e^{-m}/(L-1)``):
    ``(1 - pi) - r/(1+r) = ((1 - pi) - r pi)/(1 + r)`` (so ``1 - pi >= r pi``
    gives the bound); ``d/dE [E/(L-1+E)] = (L-1)/(L-1+E)^2 >= 0``;
    ``F/(L-1+F) - F/L = F(1-F)/(L(L-1+F)) >= 0`` for ``F = e^{-gamma_kq R} <= 1``
    and ``F <= e^{-m}`` (margin ``m <= gamma_kq ||K|| <= gamma_kq R``);
    finally C8_LOWER_LOG is ``log`` of C8_LOWER.
    """
    pi, r_, E, F, Ls = sp.symbols("pi r E F L", positive=True)
    return (_zero((1 - pi) - r_ / (1 + r_) - ((1 - pi) - r_ * pi) / (1 + r_))
            and _zero(sp.diff(E / (Ls - 1 + E), E) - (Ls - 1) / (Ls - 1 + E) ** 2)
            and _zero(F / (Ls - 1 + F) - F / Ls - F * (1 - F) / (Ls * (Ls - 1 + F)))
            and _zero(sp.expand_log(sp.log(C8_LOWER), force=True) - C8_LOWER_LOG))


# ----------------------------------------------------------------------------
# Log-space forms used by numeric
# ----------------------------------------------------------------------------
def check_log_space_forms():
    """The log-space closed forms equal the logs of the plain ones.

    Checked: the second branch of LOGLOG1PEXP is ``log(log(1 + e^lu))`` (so
    C2_LOG_LOSS = log C2_LOSS and C4_LOWER_LOG = log C4_LOWER there); the
    first branch errs by ``|log(log1p(u)/u)| <= u = e^lu < e^{-40}``, from
    ``u - u^2/2 <= log1p(u) <= u`` (checked: derivatives of ``u - log1p(u)``
    and ``log1p(u) - u + u^2/2`` are ``u/(1+u)`` and ``u^2/(1+u)``, both >= 0,
    both functions 0 at u = 0). The C4_LOG_STEP second branch is
    ``log(F(e^lu))``; its first branch drops ``h(x) - 1`` with ``|h(x)-1| <= x/2``.
    """
    u = sp.Symbol("u", positive=True)
    branch = LOGLOG1PEXP.args[1][0].rewrite(sp.log)
    step = C4_LOG_STEP.args[1][0].rewrite(sp.log).rewrite(sp.exp)
    return (_zero(sp.exp(branch) - sp.log(1 + sp.exp(lu)))
            and _zero(C2_LOSS_LOG1P.rewrite(sp.log) - C2_LOSS)
            and _zero(C4_LOWER_LOG1P.rewrite(sp.log) - C4_LOWER)
            and _zero(sp.diff(u - sp.log(1 + u), u) - u / (1 + u))
            and _zero(sp.diff(sp.log(1 + u) - u + u ** 2 / 2, u) - u ** 2 / (1 + u))
            and _zero(sp.exp(step) - C4_STEP.subs(b, sp.exp(lu))))


def check_c16_covariance(M_):
    """C16 step 1 (docs/stage2_upper.md), fixed size ``M_``: for p on the simplex,
    ``Cov_p(a, b) = (1/2) sum_{v,w} p_v p_w (a_v - a_w)(b_v - b_w)`` and
    ``(1/2) sum_{v != w} p_v p_w = (1 - sum_v p_v^2)/2``; then
    ``(1 - p_y) - (1 - p_y^2)/2 = (1 - p_y)^2/2 >= 0`` (the weight bound ``<= 1 - p_y``).
    """
    p = _probabilities(M_, 0)
    av, bv = vec("a", M_, real=True), vec("b", M_, real=True)
    Ea = sum(p[v] * av[v] for v in range(M_))
    Eb = sum(p[v] * bv[v] for v in range(M_))
    cov = sum(p[v] * av[v] * bv[v] for v in range(M_)) - Ea * Eb
    pairs = HALF * sum(p[v] * p[w] * (av[v] - av[w]) * (bv[v] - bv[w])
                       for v in range(M_) for w in range(M_))
    off = HALF * sum(p[v] * p[w] for v in range(M_) for w in range(M_) if v != w)
    py = sp.Symbol("p_y", nonnegative=True)
    return (_zero(cov - pairs) and _zero(off - (1 - sum(pv ** 2 for pv in p)) / 2)
            and _zero((1 - py) - (1 - py ** 2) / 2 - (1 - py) ** 2 / 2))


def check_c16_attention_derivatives(J_):
    """C16 steps 2, 6, 7, fixed number ``J_`` of tokens: with ``pi = softmax(s + tau sigma)``,
    ``d/dtau pi_v = pi_v (sigma_v - sigma_bar)`` and
    ``d^2/dtau^2 pi_v = pi_v ((sigma_v - sigma_bar)^2 - Var_pi(sigma))``; with
    ``p = softmax(z)``, ``d/dt c^T p(z + t dz) = c^T (diag p - p p^T) dz = Cov_p(c, dz)``;
    and ``2 (x^2 + y^2) - (x - y)^2 = (x + y)^2`` (``R(sigma) <= sqrt2 ||D||``).
    """
    tau = sp.Symbol("tau", real=True)
    sc, sg = vec("s", J_, real=True), vec("sigma", J_, real=True)
    pi = _softmax([sc[v] + tau * sg[v] for v in range(J_)])
    bar = sum(pi[v] * sg[v] for v in range(J_))
    var = sum(pi[v] * sg[v] ** 2 for v in range(J_)) - bar ** 2
    ok = all(_zero(sp.diff(pi[v], tau) - pi[v] * (sg[v] - bar))
             and _zero(sp.diff(pi[v], tau, 2) - pi[v] * ((sg[v] - bar) ** 2 - var)) for v in range(J_))
    z, dz, c = vec("z", J_, real=True), vec("dz", J_, real=True), vec("c", J_, real=True)
    p = _softmax([z[v] + tau * dz[v] for v in range(J_)])
    lhs = sp.diff(sum(c[v] * p[v] for v in range(J_)), tau)
    cov = (sum(p[v] * c[v] * dz[v] for v in range(J_))
           - sum(p[v] * c[v] for v in range(J_)) * sum(p[v] * dz[v] for v in range(J_)))
    xs, ys = sp.symbols("x y", real=True)
    return ok and _zero(lhs - cov) and _zero(2 * (xs ** 2 + ys ** 2) - (xs - ys) ** 2 - (xs + ys) ** 2)


def check_c16_domination_pairs(J_):
    """C16 step 4, fixed number ``J_`` of tokens (token 0 is x*, ``h_0 = d_0 = 0``):
    ``(1/2) sum_{v,w} pi_v pi_w (h_v - h_w)(d_v - d_w) = pi_0 sum_{v>0} pi_v h_v d_v
    + (1/2) sum_{v,w>0} pi_v pi_w (h_v - h_w)(d_v - d_w)`` (the pairs containing x*, and the rest).
    """
    pi, h, d = vec("pi", J_, nonnegative=True), vec("h", J_, real=True), vec("d", J_, real=True)
    h[0], d[0] = 0, 0
    full = HALF * sum(pi[v] * pi[w] * (h[v] - h[w]) * (d[v] - d[w]) for v in range(J_) for w in range(J_))
    inner = HALF * sum(pi[v] * pi[w] * (h[v] - h[w]) * (d[v] - d[w])
                       for v in range(1, J_) for w in range(1, J_))
    return _zero(full - pi[0] * sum(pi[v] * h[v] * d[v] for v in range(1, J_)) - inner)


ALL_CHECKS = {
    "check_gradient_formula": lambda: (check_gradient_formula(2, 2, [1, 1], 0)
                                       and check_gradient_formula(3, 3, [0, 1, 0], 2)),
    "check_residual_norm_bound": lambda: all(check_residual_norm_bound(k) for k in (2, 3, 4)),
    "check_hessian_bound": lambda: all(check_hessian_bound(k) for k in (2, 3, 4)),
    "check_growth_factor": lambda: all(check_growth_factor(k) for k in (2, 3)),
    "check_inner_product_identity": lambda: all(check_inner_product_identity(k) for k in (2, 3, 4, 5)),
    "check_c1_closed_form": check_c1_closed_form,
    "check_c2_trajectory": check_c2_trajectory,
    "check_subadditivity": check_subadditivity,
    "check_c4_descent_algebra": check_c4_descent_algebra,
    "check_c4_recursion_monotone": check_c4_recursion_monotone,
    "check_c4_linear_rate": check_c4_linear_rate,
    "check_c4_lower_algebra": check_c4_lower_algebra,
    "check_c6_chain": lambda: all(check_c6_chain(k) for k in (1, 2, 3, 5)),
    "check_c8_vertex_gradient": lambda: check_c8_vertex_gradient(3, [0, 1, 2], 1),
    "check_c8_zero_init_gap": lambda: all(check_c8_zero_init_gap(k) for k in (2, 3, 4, 5)),
    "check_c8_lower_algebra": check_c8_lower_algebra,
    "check_log_space_forms": check_log_space_forms,
    "check_c16_covariance": lambda: all(check_c16_covariance(k) for k in (2, 3, 4)),
    "check_c16_attention_derivatives": lambda: all(check_c16_attention_derivatives(k) for k in (2, 3)),
    "check_c16_domination_pairs": lambda: all(check_c16_domination_pairs(k) for k in (2, 3, 4)),
}
"""Name -> zero-argument check on the default sizes; ``claims`` refers to these names."""

# ----------------------------------------------------------------------------
# C16 (stage-2 a-posteriori upper bound, docs/stage2_upper.md). Per sentence: Delta the vertex
# gap, hmax / hrange the largest value / the spread of h*_v over U', rho = max_v R(o_v - o_s),
# D_W the spread of W[v, q] over U', u_star = 1 - p*_y; mu the margin of the comparator W,
# delta the step tolerance of (S_delta), E0 >= E(K_t0), e an attention leak eps_i.
# ----------------------------------------------------------------------------
E0 = sp.Symbol("E0", positive=True)
e_leak = sp.Symbol("e", nonnegative=True)
Delta16 = sp.Symbol("Delta", positive=True)
hmax16, hrange16, rho16, D16 = sp.symbols("hmax hrange rho D_W", nonnegative=True)
u_star = sp.Symbol("u_star", nonnegative=True)
mu16 = sp.Symbol("mu", positive=True)
normW16 = sp.Symbol("||W||", positive=True)
delta16 = sp.Symbol("delta", nonnegative=True)
kappa16, beta16 = sp.Symbol("kappa", positive=True), sp.Symbol("beta", nonnegative=True)
r16 = sp.Symbol("r", real=True)
k16 = sp.Symbol("k", integer=True, nonnegative=True)
C16_L = u_star * rho16 * (sp.exp(rho16 * e_leak) - 1)                   # l(e), step 2
C16_HMIN = Delta16 - C16_L                                              # h_min(e)
C16_C = mu16 * (1 - e_leak) - e_leak * (hrange16 + 2 * C16_L) * D16 / (2 * C16_HMIN)   # c(e), step 4
C16_B = hmax16 + C16_L + u_star * rho16 ** 2 * e_leak * sp.exp(rho16 * e_leak)           # b(e), step 7
C16_GROWTH = sp.exp(SQRT2 * (1 + delta16) * eta)                        # g, step 6
C16_EPS_BAR = N * E0 / Delta16                                          # eps_bar, step 5
C16_BETA_I = 2 * (1 + delta16) ** 2 * C16_GROWTH * C16_B.subs(e_leak, C16_GROWTH * C16_EPS_BAR) / Delta16
C16_RATE = (1 - delta16) * kappa16 / normW16 - eta * beta16 / 2         # r, (H4)
C16_BOUND = E0 * (1 - eta * r16) ** k16                                 # E(K_{t0+k}) <=
C16_BOUND_LOG = sp.log(E0) + k16 * log1p(-eta * r16)                    # its log (numeric)
C16_RATE_INF = (1 - delta16) * mu16 / normW16 - (1 + delta16) ** 2 * eta * C16_GROWTH * hmax16 / Delta16
# zero-init stage 1 (docs/stage2_upper.md section 4), a = gamma_ov eta0 T0, U' inside C
C16_USTAR_ZERO_INIT = (M - 1) / (sp.exp(a) + M - 1)
C16_GAP_IN_C_ZERO_INIT = a * M / (sp.exp(a) + M - 1)
C16_EPS_STAR_ZERO_INIT = sp.log(1 + M / (2 * (M - 1))) / (2 * a)        # h_min(e) > 0 iff e < this
C16_RATE_INF_ZERO_INIT = gamma_kq - eta * sp.exp(SQRT2 * eta)          # delta = 0, mu/||W|| = gamma_kq
