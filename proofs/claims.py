"""The registry of claims C1..C16 (docs/theory.md).

Each claim is a frozen ``Claim``: its statement is a SymPy relation over the
symbols of ``symbols`` and the closed forms of ``derivations``;
``constants`` name the SymPy expressions the statement is built from (the
bounds and closed forms; ``numeric`` lambdifies exactly these), and ``check``
derives each of them again from the hypotheses of its proof (``certify``) and
returns a ``certify.ClaimResult`` listing every step checked, so a wrong
constant fails. ``proof_steps`` name the ``derivations.ALL_CHECKS`` entries
cited in ``docs/theory.md``. ``reading`` names the
readings of the paper the claim depends on, where its statement leaves a choice
(keys of ``READINGS``).

    from refimpl_proofs import claims
    c = claims.get("C4"); c.status      # 'certified'
    claims.check("C4").verdict          # 'proved'
    claims.check("C9").verdict          # 'measured'
"""
from dataclasses import dataclass

import sympy as sp

from . import derivations as dv
from .symbols import M, b, c1, eta0, gamma_mm, k_chain, margin_W, norm_W, t

STATUSES = (
    "certified",                                        # proved bound, every run satisfies it
    "measured",                                         # fitted and reported, not proved
    "certified from zero init, measured otherwise",
    "certified upper, measured slope",
    "certified lower, measured rate",
    "certified for K*, measured for trained weights",
    "certified a posteriori",                           # proved theorem whose hypotheses are
    #                                                     inequalities checked on each run (in
    #                                                     interval arithmetic); no verdict without them
)

READINGS = {
    "R1-realizable": "datasets: Assumption 1 read as unique optimal token x* in C with "
                     "y = n(x*), and no other distinct token x' of the sentence with n(x') = y.",
    "R2-fixed-Wov": "Algorithm 1: stage 2 keeps W_ov exactly as stage 1 left it (no rescaling).",
    "R3-floor": "max-margin problems: the stage-2 floor is the per-sentence convex relaxation "
                "min over the attention simplex.",
    "R4-training-relations": "C6/C11: the relations of <_q are the pairs (x', x*) of training "
                             "sentences with query q (not supplied generating relations that "
                             "no sentence uses); see 'Corrections to earlier statements of the "
                             "claims' in docs/theory.md.",
}

# Quantities measured on a run (names only; the audit supplies their values).
norm_sq_Ostar = sp.Symbol("||O*||^2", positive=True)
L0_t = sp.Symbol("L0(O_t)", nonnegative=True)
b_t = sp.Symbol("b_t", positive=True)
dist_ov = sp.Symbol("||O_t-O_0||", nonnegative=True)
proj_ov = sp.Symbol("<O_t-O_0,hatO*>", real=True)
dist_kq = sp.Symbol("||K_t-K_0||", nonnegative=True)
excess_t = sp.Symbol("L(O,K_t)-L_floor(O)", nonnegative=True)
cos_gap_ov = sp.Function("one_minus_cos_O")
cos_gap_kq = sp.Function("one_minus_cos_K")
kstar_diff = sp.Symbol("K*[x,q]-K*[x',q]", real=True)
kstar_first = sp.Symbol("K*[xhat,q]-max_{x'!=xhat}K*[x',q]", real=True)
excess_limit = sp.Symbol("lim_t excess", nonnegative=True)
c8_min_term = sp.Symbol("c8 (min over sentences)", positive=True)
delta_zero_init = sp.Symbol("Delta_i (zero-init stage 1)", real=True)
cos_W_Wstar = sp.Symbol("cos(W,W*)", real=True)
cos_O_Ostar = sp.Symbol("cos(O_t,O*)", real=True)
one_minus_cos_t = sp.Symbol("1-cos(W_t,W*)", real=True)
mhat_K = sp.Symbol("mhat(K)", real=True)   # attention margin of an unseen sentence (C15)
excess_t0k = sp.Symbol("E(K_{t0+k})", nonnegative=True)            # C16
c16_names = {n: sp.Symbol(n, real=True) for n in
             ("l_i(e)", "c_i(e)", "b_i(e)", "beta_i", "eps_bar_i", "g", "r", "r_inf",
              "u*_i (zero init)", "Delta_i in C (zero init)", "eps* (zero init)", "r_inf (zero init)")}


@dataclass(frozen=True)
class Claim:
    """One claim of docs/theory.md."""
    id: str                    # "C1" .. "C16"
    title: str                 # short name
    status: str                # one of STATUSES
    doc_ref: str               # where docs/ states and proves it
    reading: tuple             # keys of READINGS the claim depends on
    preconditions: tuple       # ((SymPy relation or str, reason), ...)
    statement: object          # SymPy relation (or And of relations)
    proof_steps: tuple         # names in derivations.ALL_CHECKS
    constants: tuple = ()      # ((name, SymPy expression), ...) the statement is built from

    def constant(self, name):
        """The SymPy expression of the named constant (KeyError names the known ones)."""
        for key, expr in self.constants:
            if key == name:
                return expr
        raise KeyError(f"{self.id} has no constant {name!r}; known: "
                       f"{', '.join(k for k, _ in self.constants)}")

    def __post_init__(self):
        assert self.status in STATUSES, f"{self.id}: unknown status {self.status!r}"
        assert all(r in READINGS for r in self.reading), f"{self.id}: unknown reading"
        unknown = [s for s in self.proof_steps if s not in dv.ALL_CHECKS]
        assert not unknown, f"{self.id}: unknown proof steps {unknown}"


_M2 = (sp.Ge(M, 2), "a one-token vocabulary has zero loss and no margin")
_ORTHO = ("E^T E = I", "token coordinates equal embedding coordinates (docs/model.md)")
_C4_STEP = (sp.Lt(eta0 * sp.exp(dv.SQRT2 * eta0), 1), "c1 > 0: descent beats curvature")

_CLAIMS = (
    Claim("C1", "closed form of W_ov*", "certified", "docs/theory.md C1; docs/maxmargin.md",
          ("R1-realizable",),
          (_M2, _ORTHO),
          sp.Eq(norm_sq_Ostar, dv.C1_NORM_SQ),
          ("check_c1_closed_form",),
          (("norm_sq", dv.C1_NORM_SQ),)),
    Claim("C2", "exact stage-1 trajectory from zero", "certified",
          "docs/theory.md C2; docs/reproduce.md",
          ("R1-realizable",),
          (_M2, _ORTHO, ("O_0 = 0", "the trajectory is a ray only from the origin")),
          sp.Eq(L0_t, dv.C2_LOSS),
          ("check_c2_trajectory", "check_c1_closed_form", "check_log_space_forms"),
          (("loss", dv.C2_LOSS),)),
    Claim("C3", "stage-1 norm growth", "certified", "docs/theory.md C3", (),
          (_M2, _ORTHO),
          sp.And(sp.Le(dist_ov, dv.C3_NORM_UPPER), sp.Ge(proj_ov, dv.C3_PROJ_LOWER)),
          ("check_inner_product_identity", "check_residual_norm_bound"),
          (("norm_upper", dv.C3_NORM_UPPER), ("proj_lower", dv.C3_PROJ_LOWER))),
    Claim("C4", "stage-1 linear loss convergence, any init", "certified", "docs/theory.md C4", (),
          (_M2, _ORTHO, _C4_STEP,
           (sp.Lt(eta0 * dv.C4_C1, 1), "F increasing; implied by the previous one "
                                       "(eta0 c1 <= sqrt(2)/4), kept explicit")),
          sp.And(sp.Le(L0_t, b_t), sp.Ge(L0_t, dv.C4_LOWER),
                 sp.Eq(sp.Symbol("b_{t+1}"), dv.C4_STEP.subs({b: b_t, c1: dv.C4_C1})),
                 sp.Eq(c1, dv.C4_C1)),
          ("check_hessian_bound", "check_growth_factor", "check_residual_norm_bound",
           "check_inner_product_identity", "check_subadditivity", "check_c4_descent_algebra",
           "check_c4_recursion_monotone", "check_c4_linear_rate", "check_c4_lower_algebra",
           "check_log_space_forms"),
          (("c1", dv.C4_C1), ("lower", dv.C4_LOWER), ("step", dv.C4_STEP))),
    Claim("C5", "stage-1 directional convergence",
          "certified from zero init, measured otherwise", "docs/theory.md C5", (),
          (_M2, _ORTHO, ("random init", "from zero it is exact by C2: cos = 1 for t >= 1")),
          sp.Eq(sp.Limit(cos_gap_ov(t), t, sp.oo), 0),
          ("check_c2_trajectory",)),
    Claim("C6", "W_kq* certificate and order consistency", "certified",
          "docs/theory.md C6; docs/maxmargin.md",
          ("R1-realizable", "R4-training-relations"),
          (_ORTHO,
           ("every link of the chain is a training relation with query q",
            "supplied relations no sentence uses are not constraints (Corrections)"),
           ("KKT of the solver holds", "K* is the exact minimizer")),
          sp.Ge(kstar_diff, k_chain),
          ("check_c6_chain",),
          (("chain_gap", k_chain),)),
    Claim("C7", "stage-2 norm growth", "certified upper, measured slope", "docs/theory.md C7",
          ("R2-fixed-Wov",), (_ORTHO,),
          sp.Le(dist_kq, dv.C7_NORM_UPPER),
          (),
          (("norm_upper", dv.C7_NORM_UPPER),)),
    Claim("C8", "stage-2 excess loss: certified lower bound c8 exp(-gamma_kq (||K_0|| + eta t))",
          "certified lower, measured rate",
          "docs/theory.md C8; docs/maxmargin.md", ("R1-realizable", "R2-fixed-Wov", "R3-floor"),
          (_ORTHO,
           ("Delta_i > 0 for every sentence i", "vertex x* strictly optimal in the floor; "
            "holds for zero-init stage 1 with T0 >= 1 (check_c8_zero_init_gap)"),
           ("c8 = (1/N) min_i Delta_i / L_i", "L_i = positions of sentence i")),
          sp.And(sp.Ge(excess_t, dv.C8_LOWER), sp.Eq(c8_min_term, dv.C8_CONSTANT_TERM),
                 sp.Ge(delta_zero_init, dv.C8_GAP_ZERO_INIT)),
          ("check_c8_vertex_gradient", "check_hessian_bound", "check_c8_lower_algebra",
           "check_c8_zero_init_gap"),
          (("lower", dv.C8_LOWER), ("c8", dv.C8_CONSTANT_TERM),
           ("gap_zero_init", dv.C8_GAP_ZERO_INIT))),
    Claim("C9", "stage-2 directional convergence", "measured", "docs/theory.md C9",
          ("R2-fixed-Wov",), (_ORTHO, ("Delta_i > 0 for every sentence i", "as C8"),),
          sp.Eq(sp.Limit(cos_gap_kq(t), t, sp.oo), 0),
          ()),
    Claim("C10", "precondition of stage 2 (weak stage 1)", "measured", "docs/theory.md C10",
          ("R2-fixed-Wov", "R3-floor"),
          (_ORTHO,
           ("small T0 or a user-supplied W_ov", "from zero-init stage 1 the floor "
            "vertex is optimal for every T0 >= 1, so a positive excess is a dynamics effect"),),
          sp.Gt(excess_limit, 0),
          ("check_c8_zero_init_gap",)),
    Claim("C11", "generalization via extended orders",
          "certified for K*, measured for trained weights",
          "docs/theory.md C11; docs/generalization.md",
          ("R1-realizable", "R4-training-relations"),
          (_ORTHO,
           ("the sentence's distinct tokens have a unique maximum xhat under the "
            "closure of the training relations of q", "C6 then applies to each other token"),
           ("xhat in C", "n(xhat) must exist; automatic when xhat is above some token")),
          sp.Ge(kstar_first, 1),
          ("check_c6_chain",)),
    Claim("C12", "margin-to-cosine lemma for least-distance optima", "certified",
          "docs/theory.md C12", (),
          (_ORTHO,
           ("W* minimizes ||W|| s.t. <A_j, W> >= 1 (j = 1..J), with KKT multipliers lambda_j",
            "W* = sum_j lambda_j A_j, lambda_j >= 0, complementary slackness"),
           ("m(W) = min_j <A_j, W> > 0", "the bound is vacuous otherwise")),
          sp.Ge(cos_W_Wstar, margin_W / (gamma_mm * norm_W)),
          (),
          (("cos_lower", margin_W / (gamma_mm * norm_W)),)),
    Claim("C13", "stage-1 a-priori cosine lower bound (C3 + C4 + C12)", "certified",
          "docs/theory.md C13", (),
          (_M2, _ORTHO, _C4_STEP,
           ("b_t is the C4 upper bound of L0(O_t) (b_0 = L0(O_0))", "C4"),
           ("the margin lower bound -log(n_c b_t) - n_c b_t > 0", "the bound is vacuous otherwise")),
          sp.And(sp.Ge(cos_O_Ostar, dv.C13_COS_LOWER),  # b stands for b_t
                 sp.Ge(sp.Symbol("liminf_t cos(O_t,O*)"), dv.C13_LIMINF)),
          ("check_c4_lower_algebra", "check_c4_linear_rate"),
          (("cos_lower", dv.C13_COS_LOWER), ("margin_lower", dv.C13_MARGIN_LOWER),
           ("liminf", dv.C13_LIMINF))),
    Claim("C14", "certified lower bound on 1 - cos from the part of W_0 NGD never moves",
          "certified", "docs/theory.md C14", ("R2-fixed-Wov",),
          (_ORTHO,
           ("P = orthogonal projection on the invariant span: stage 1, the columns outside C and "
            "the constant part of each column in C; stage 2, per query column q the indicator of "
            "each connected component of the tokens of the sentences of query q (a token in no "
            "such sentence is its own component)", "the NGD gradient is orthogonal to it"),
           ("p = ||P W_0||, q = ||(I - P) W_0||, eta_step = eta0 (stage 1) or eta (stage 2)",
            "from zero init p = 0 and the bound is 0 (vacuous)")),
          sp.Ge(one_minus_cos_t, dv.C14_GAP_LOWER),
          (),
          (("gap_lower", dv.C14_GAP_LOWER),)),
    Claim("C15", "finite-time generalization from zero-init stage 1", "certified",
          "docs/theory.md C15", ("R1-realizable", "R2-fixed-Wov", "R4-training-relations"),
          (_M2, _ORTHO,
           ("O_0 = 0 and T0 >= 1", "O[:, x] = a (e_n(x) - 1/M) on C (C2), 0 elsewhere, a > 0"),
           ("xhat in C, n_star >= 1 copies of xhat among the L positions", "C11"),
           ("attention margin of the sentence mhat(K) = min_{x' != xhat} K[xhat,q] - K[x',q]",
            "any K: the claim is about W_kq at each step")),
          sp.And(sp.Gt(mhat_K, dv.C15_THRESHOLD),
                 sp.Ge(sp.Symbol("mhat(K_{t+s})"), sp.Symbol("mhat(K_t)") - dv.C15_DRIFT * t)),
          ("check_c2_trajectory",),
          (("threshold", dv.C15_THRESHOLD), ("drift", dv.C15_DRIFT))),
    Claim("C16", "stage-2 excess: certified linear upper bound after a checkpoint, a posteriori",
          "certified a posteriori", "docs/stage2_upper.md; docs/theory.md C8",
          ("R1-realizable", "R2-fixed-Wov", "R3-floor"),
          (_ORTHO,
           ("(H1) Delta_i > 0 for every sentence i with two or more distinct tokens",
            "the vertex e_x* is the unique minimizer of the sentence's convex floor problem"),
           ("(H2) mu = min_i min_{v != x*} (W[x*, q] - W[v, q]) > 0 for the comparator W (K*)",
            "gradient domination needs a direction that increases every attention margin"),
           ("(H3) h_min,i(eps_bar_i) = Delta_i - l_i(eps_bar_i) > 0 and kappa = min_i c_i(eps_bar_i) > 0",
            "E(K_t0) small enough: the threshold on the excess"),
           ("(H4) 0 < eta r < 1, r = (1 - delta) kappa/||W|| - eta beta/2", "descent beats curvature"),
           ("steps K_{t+1} = K_t - eta D_t, ||D_t|| <= 1 + delta, <D_t, G_t> >= (1 - delta) ||G_t||",
            "exact NGD is delta = 0; the float64 iterates are checked with delta = 1e-9"),
           ("E0 >= E(K_t0), the upper end of an interval enclosure",
            "a posteriori: (H1)-(H4) and E0 are evaluated on the run in interval arithmetic")),
          sp.And(sp.Le(excess_t0k, dv.C16_BOUND), sp.Eq(c16_names["r"], dv.C16_RATE),
                 sp.Eq(c16_names["l_i(e)"], dv.C16_L), sp.Eq(c16_names["c_i(e)"], dv.C16_C),
                 sp.Eq(c16_names["b_i(e)"], dv.C16_B), sp.Eq(c16_names["beta_i"], dv.C16_BETA_I),
                 sp.Eq(c16_names["eps_bar_i"], dv.C16_EPS_BAR), sp.Eq(c16_names["g"], dv.C16_GROWTH),
                 sp.Eq(c16_names["r_inf"], dv.C16_RATE_INF),
                 sp.Eq(c16_names["u*_i (zero init)"], dv.C16_USTAR_ZERO_INIT),
                 sp.Eq(c16_names["Delta_i in C (zero init)"], dv.C16_GAP_IN_C_ZERO_INIT),
                 sp.Eq(c16_names["eps* (zero init)"], dv.C16_EPS_STAR_ZERO_INIT),
                 sp.Eq(c16_names["r_inf (zero init)"], dv.C16_RATE_INF_ZERO_INIT)),
          ("check_c16_covariance", "check_c16_attention_derivatives", "check_c16_domination_pairs",
           "check_growth_factor", "check_c8_vertex_gradient", "check_c8_zero_init_gap"),
          (("bound", dv.C16_BOUND), ("rate", dv.C16_RATE), ("l", dv.C16_L), ("c", dv.C16_C),
           ("b", dv.C16_B), ("beta_i", dv.C16_BETA_I), ("eps_bar", dv.C16_EPS_BAR),
           ("growth", dv.C16_GROWTH), ("rate_inf", dv.C16_RATE_INF),
           ("ustar_zero_init", dv.C16_USTAR_ZERO_INIT), ("gap_in_C_zero_init", dv.C16_GAP_IN_C_ZERO_INIT),
           ("eps_star_zero_init", dv.C16_EPS_STAR_ZERO_INIT),
           ("rate_inf_zero_init", dv.C16_RATE_INF_ZERO_INIT))),
)

CLAIMS = {c.id: c for c in _CLAIMS}
"""Claim id -> Claim, in the order C1..C16."""


def get(claim_id):
    """The Claim with id ``claim_id`` ("C1" .. "C16"); KeyError names the known ids."""
    try:
        return CLAIMS[claim_id]
    except KeyError:
        raise KeyError(f"unknown claim {claim_id!r}; known: {', '.join(CLAIMS)}") from None


def check(claim_id):
    """Check the claim: a ``certify.ClaimResult`` listing every step checked.

    ``verdict`` is 'proved' (every step proved), 'proved (certified part; the rest is
    measured)', 'measured' (C5, C9, C10: never 'proved') or 'failed'; ``bool(result)``
    is True only for a proved claim. The constants are read from ``CLAIMS`` at call time.
    """
    from . import certify
    return certify.check(get(claim_id), CLAIMS)

