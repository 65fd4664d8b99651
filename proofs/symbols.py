"""SymPy symbols with assumptions, shared by every module of ``refimpl_proofs``.

Conventions (docs/theory.md, "Definitions"): ``M`` vocabulary size, ``n_c = |C|``,
``N`` sentences, ``L`` positions, ``t`` step counter, ``eta0``/``eta`` the
stage-1/stage-2 step sizes, ``gamma_ov = 1/||O*||``, ``gamma_kq = 1/||K*||``.
Exact constants only (``Rational``, ``sqrt``); no float literals anywhere.
"""
import sympy as sp

# sizes
M = sp.Symbol("M", integer=True, positive=True)        # |V|, M >= 2 where it matters
n_c = sp.Symbol("n_c", integer=True, positive=True)    # |C|
N = sp.Symbol("N", integer=True, positive=True)        # number of sentences
L = sp.Symbol("L", integer=True, positive=True)        # positions in one sentence
k_chain = sp.Symbol("k", integer=True, positive=True)  # relations in a chain (C6)

# time and step sizes
t = sp.Symbol("t", nonnegative=True)                   # step counter (real for lambdify)
T0 = sp.Symbol("T0", nonnegative=True)                 # stage-1 steps before stage 2
eta0 = sp.Symbol("eta0", positive=True)                # stage-1 step size
eta = sp.Symbol("eta", positive=True)                  # stage-2 step size

# margins and norms
gamma_ov = sp.Symbol("gamma_ov", positive=True)        # 1/||O*||_F
gamma_kq = sp.Symbol("gamma_kq", positive=True)        # 1/||K*||_F
norm0 = sp.Symbol("norm0", nonnegative=True)           # ||O_0|| or ||K_0||
c1 = sp.Symbol("c1", positive=True)                    # C4 contraction constant
c8 = sp.Symbol("c8", positive=True)                    # C8 lower-bound constant
a = sp.Symbol("a", nonnegative=True)                   # logit margin of a column
m = sp.Symbol("m", real=True)                          # a (possibly negative) margin

# C12 (margin-to-cosine): margin m(W) = min_j <A_j, W> > 0, ||W||, gamma = 1/||W*||
margin_W = sp.Symbol("m(W)", positive=True)
norm_W = sp.Symbol("||W||", positive=True)
gamma_mm = sp.Symbol("gamma", positive=True)

# scalar unknowns of the recursions and the loss
b = sp.Symbol("b", positive=True)                      # C4 recursion value (loss bound)
lu = sp.Symbol("lu", real=True)                        # log of u = (M-1) e^{-x}, etc.
x = sp.Symbol("x", nonnegative=True)                   # a nonnegative real argument

# exact constants
HALF = sp.Rational(1, 2)
SQRT2 = sp.sqrt(2)
# below this value of log u, log(log(1+u)) = log u to < 1e-17 absolute
# (|log(log1p(u)/u)| <= u for 0 < u <= 1): used by the log-space bounds
LOG_TINY = sp.Integer(-40)


def vec(name, n, **assumptions):
    """Column of ``n`` fresh symbols ``name_0 .. name_{n-1}`` (sympy Matrix, shape (n, 1))."""
    return sp.Matrix([sp.Symbol(f"{name}_{i}", **assumptions) for i in range(n)])


def mat(name, rows, cols, **assumptions):
    """Matrix of fresh symbols ``name_{i}_{j}`` (sympy Matrix, shape (rows, cols))."""
    return sp.Matrix(rows, cols,
                     lambda i, j: sp.Symbol(f"{name}_{i}_{j}", **assumptions))
