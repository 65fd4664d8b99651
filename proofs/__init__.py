"""proofs: the symbolic side of refimpl (pure SymPy; NumPy only in ``numeric``).

Modules
-------
symbols      SymPy symbols with assumptions, exact constants.
derivations  symbolic checks of every algebraic proof step (each returns bool).
claims       the registry C1..C11 of SPEC section 6 (``CLAIMS``, ``get``).
numeric      the only place SymPy becomes NumPy (``lambdify``): certified bounds
             as float64 callables for the audit and the tests.
exact        exact rational least-distance solver (independent check of the
             floating-point max-margin solver).

Letters as in SPEC: M tokens, n_c = |C| collocation pairs, N sentences,
L positions, t step counter. This package imports nothing from ``refimpl``.
"""
