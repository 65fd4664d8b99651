"""refimpl_proofs: the symbolic side of refimpl (pure SymPy; NumPy only in ``numeric``).

The folder ``proofs/`` of the repository, installed under this name.

Modules
-------
symbols      SymPy symbols with assumptions, exact constants.
derivations  symbolic checks of every algebraic proof step (each returns bool).
claims       the registry of the claims C1..C11 (``CLAIMS``, ``get``; docs/theory.md).
numeric      the only place SymPy becomes NumPy (``lambdify``): certified bounds
             as float64 callables for the audit and the tests.
exact        exact rational least-distance solver (independent check of the
             floating-point max-margin solver).

Letters as in docs/theory.md: M tokens, n_c = |C| collocation pairs, N sentences,
L positions, t step counter. This package imports nothing from ``refimpl``.
"""
