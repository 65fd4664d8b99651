"""refimpl_proofs: the symbolic side of refimpl (pure SymPy; NumPy only in ``numeric``).

The folder ``proofs/`` of the repository, installed under this name.

Modules
-------
symbols      SymPy symbols with assumptions, exact constants.
derivations  symbolic checks of every algebraic proof step (each returns bool).
claims       the registry of the claims C1..C16 (``CLAIMS``, ``get``, ``check``;
             docs/theory.md).
certify      each claim as hypotheses => conclusion: derives its constants again and
             returns a ``ClaimResult`` (verdict and every step checked).
numeric      the only place SymPy becomes NumPy (``lambdify``): certified bounds
             as float64 callables for the audit and the tests.
exact        exact rational least-distance solver (independent check of the
             floating-point max-margin solver).

Letters as in docs/theory.md: M tokens, n_c = |C| collocation pairs, N sentences,
L positions, t step counter. This package imports nothing from ``refimpl``.
"""


def check_all():
    """Check every claim of the registry; a ``certify.Summary`` (``ok``, ``proved``,
    ``measured``, ``failed`` and one ``ClaimResult`` per claim, in registry order)."""
    from . import certify, claims
    return certify.Summary(tuple(claims.check(cid) for cid in claims.CLAIMS))
