"""Exact rational least-distance programs: an independent check of the float solver.

Problem (docs/maxmargin.md, one column of W_kq* or W_ov*)::

    min ||k||^2   s.t.   G k >= 1        G : rows g_j (length M), here e_a - e_b

Algorithm (Lawson & Hanson, "Solving Least Squares Problems", ch. 23, LDP via
NNLS), run in exact rational arithmetic:

1. Let ``E = [G^T ; 1^T]`` ((M+1) x m) and ``f = (0, ..., 0, 1)``. Solve the
   non-negative least squares ``min ||E u - f|| s.t. u >= 0`` with the
   Lawson-Hanson active-set method. In exact arithmetic its invariants hold
   exactly: the passive columns stay linearly independent (a column with
   ``w_j = E_j^T (f - E u) > 0`` is never in their span, since ``w_P = 0``),
   the new column gets a positive coefficient, and the residual strictly
   decreases between outer iterations, so the method terminates.
2. With ``r = E u - f``: ``r = 0`` means the constraints are infeasible.
   Otherwise ``-r_{M} = ||r||^2 > 0`` and ``k = -r[:M]/r_M``, and the dual
   multipliers are ``alpha = u/||r||^2 >= 0``, so ``k = G^T alpha``. The NNLS
   optimality ``w <= 0`` gives ``G k >= 1`` and ``w_j = 0`` on ``u_j > 0``
   gives complementary slackness.
3. The KKT conditions are re-checked exactly (``check_kkt``) before returning.

Internally the arithmetic is ``fractions.Fraction`` (exact and much faster
than SymPy objects); results are returned as ``sympy.Rational``.
"""
from fractions import Fraction

import sympy as sp


def _solve(A, rhs):
    """Exact solve of a square nonsingular system (Gaussian elimination, Fractions)."""
    n = len(A)
    aug = [list(row) + [v] for row, v in zip(A, rhs)]
    for col in range(n):
        piv = next((r for r in range(col, n) if aug[r][col] != 0), None)
        if piv is None:
            raise ArithmeticError("singular normal equations (passive set dependent)")
        aug[col], aug[piv] = aug[piv], aug[col]
        for r in range(n):
            if r != col and aug[r][col] != 0:
                fac = aug[r][col] / aug[col][col]
                aug[r] = [x - fac * y for x, y in zip(aug[r], aug[col])]
    return [aug[i][n] / aug[i][i] for i in range(n)]


def _least_squares(cols, f):
    """``argmin_s ||sum_j s_j cols_j - f||`` for independent ``cols`` (normal equations)."""
    gram = [[sum(x * y for x, y in zip(ci, cj)) for cj in cols] for ci in cols]
    return _solve(gram, [sum(x * y for x, y in zip(ci, f)) for ci in cols])


def nnls(cols, f, max_iter=None):
    """Exact Lawson-Hanson NNLS: ``min ||E u - f||, u >= 0``, E given by its columns.

    cols : list of m columns (each a list of Fractions, length n_rows); f : (n_rows,).
    Returns u (list of m Fractions).
    """
    m = len(cols)
    max_iter = max_iter or 50 * (m + 1)
    u, passive = [Fraction(0)] * m, []

    def dual(u_):
        res = [fi - sum(u_[j] * cols[j][i] for j in range(m)) for i, fi in enumerate(f)]
        return [sum(c * r for c, r in zip(col, res)) for col in cols]

    for _ in range(max_iter):
        w = dual(u)
        cand = [j for j in range(m) if j not in passive and w[j] > 0]
        if not cand:
            return u
        passive.append(max(cand, key=lambda j: (w[j], -j)))
        while True:
            s = _least_squares([cols[j] for j in passive], f)
            if all(v > 0 for v in s):
                u = [Fraction(0)] * m
                for j, v in zip(passive, s):
                    u[j] = v
                break
            step = min(u[j] / (u[j] - v) for j, v in zip(passive, s) if v <= 0)
            for j, v in zip(passive, s):
                u[j] += step * (v - u[j])
            for j in passive:
                if u[j] <= 0:
                    u[j] = Fraction(0)
            passive = [j for j in passive if u[j] > 0]
    raise RuntimeError(f"exact NNLS did not terminate in {max_iter} iterations")


def _as_fraction(v):
    if isinstance(v, sp.Rational):
        return Fraction(int(v.p), int(v.q))
    return Fraction(v)


def exact_least_distance(G_rows):
    """Exact ``min ||k||^2 s.t. G k >= 1`` with its dual certificate.

    G_rows : list of m rows (ints/Fractions/sympy Rationals), each of length M.
    Returns ``(k, alpha)``: k list of M ``sympy.Rational``, alpha list of m
    ``sympy.Rational`` >= 0 with ``k = G^T alpha`` and ``alpha_j (G_j k - 1) = 0``.
    Raises ValueError if the constraints are infeasible (e.g. rows a-b and b-a).
    """
    rows = [[_as_fraction(v) for v in row] for row in G_rows]
    if not rows:
        raise ValueError("no constraints: k = 0 trivially")
    M_ = len(rows[0])
    assert all(len(r) == M_ for r in rows), "rows of unequal length"
    cols = [r + [Fraction(1)] for r in rows]             # E = [G^T; 1^T], column j
    f = [Fraction(0)] * M_ + [Fraction(1)]
    u = nnls(cols, f)
    r = [sum(u[j] * cols[j][i] for j in range(len(cols))) - f[i] for i in range(M_ + 1)]
    if r[M_] == 0:
        raise ValueError(f"infeasible constraints: G k >= 1 has no solution ({len(rows)} rows)")
    k = [-ri / r[M_] for ri in r[:M_]]
    alpha = [-uj / r[M_] for uj in u]
    k_s = [sp.Rational(v.numerator, v.denominator) for v in k]
    alpha_s = [sp.Rational(v.numerator, v.denominator) for v in alpha]
    if not check_kkt(G_rows, k_s, alpha_s):
        raise ArithmeticError("exact KKT check failed (bug in exact NNLS)")
    return k_s, alpha_s


def check_kkt(G_rows, k, alpha):
    """Exact KKT of ``min ||k||^2/2 s.t. G k >= 1``: True iff all four hold exactly.

    primal ``G k >= 1``; dual ``alpha >= 0``; stationarity ``k = G^T alpha``;
    complementary slackness ``alpha_j (G_j k - 1) = 0``. KKT is sufficient for
    this convex program, so True certifies optimality.
    """
    G = sp.Matrix(G_rows)
    kv, av = sp.Matrix(k), sp.Matrix(alpha)
    slack = G * kv - sp.ones(G.rows, 1)
    return (all(s >= 0 for s in slack) and all(x >= 0 for x in av)
            and (kv - G.T * av).is_zero_matrix
            and all(x * s == 0 for x, s in zip(av, slack)))


def difference_rows(pairs, M_):
    """Rows ``e_upper - e_lower`` (length M_) for pairs ``(upper, lower)``, duplicates dropped."""
    rows = []
    for hi, lo in dict.fromkeys((int(h), int(l_)) for h, l_ in pairs):
        row = [0] * M_
        row[hi] += 1
        row[lo] -= 1
        rows.append(row)
    return rows


def exact_w_kq_column(pairs, M_):
    """Exact column ``K*[:, q]`` from the training constraints of query q.

    pairs : ``(x_star, x_prime)`` for every training sentence with query q and
    every other distinct token; each is ``K[x*, q] - K[x', q] >= 1``.
    Returns ``(k, alpha, rows)`` (k, alpha as in ``exact_least_distance``).
    """
    rows = difference_rows(pairs, M_)
    k, alpha = exact_least_distance(rows)
    return k, alpha, rows
