"""The project's single gradient-check helper.

Two checks, both at float64 with a fixed seed:

* directional derivative: for random directions v, the central difference
  (f(x + eps v) - f(x - eps v)) / (2 eps) against <grad f(x), v>;
* adjoint identity <u, J v> = <J^T u, v> for a vector-valued f with a
  hand-written vector-Jacobian product (J v by central differences, J^T u
  analytic).

Inputs x are tuples of arrays (e.g. (W_ov, W_kq)); directions are drawn per
array and scaled to unit total norm. On failure the message prints the
analytic and numeric numbers, their difference and the tolerance.
"""
from __future__ import annotations

import numpy as np

__all__ = ["check_grad", "check_vjp"]


def _as_tuple(x):
    return tuple(np.asarray(a, dtype=np.float64) for a in (x if isinstance(x, (tuple, list)) else (x,)))


def _unit_direction(rng, xs):
    v = tuple(rng.standard_normal(a.shape) for a in xs)
    n = np.sqrt(sum(float(np.sum(b * b)) for b in v))
    return tuple(b / n for b in v)


def _inner(a, b):
    return float(sum(np.sum(p * q) for p, q in zip(_as_tuple(a), _as_tuple(b))))


def _shift(xs, v, t):
    return tuple(a + t * b for a, b in zip(xs, v))


def _compare(analytic, numeric, rtol, atol, what, name, k, eps):
    tol = atol + rtol * max(abs(analytic), abs(numeric))
    if not abs(analytic - numeric) <= tol:
        raise AssertionError(
            f"{name}: {what} mismatch in direction {k}: analytic {analytic:.17g}, "
            f"numeric (central difference, eps={eps:g}) {numeric:.17g}, "
            f"|difference| {abs(analytic - numeric):.3e} > tolerance {tol:.3e} "
            f"(rtol={rtol:g}, atol={atol:g})")
    return abs(analytic - numeric)


def check_grad(f, x, grad, *, rtol, atol=0.0, eps=1e-6, n_dirs=3, seed=0, name="f"):
    """Assert that ``grad`` is the gradient of the scalar function ``f`` at ``x``.

    f : callable taking the arrays of ``x`` as positional arguments, returning a float.
    x : array or tuple of arrays; grad : same structure as x.
    Checks <grad, v> against the central difference for ``n_dirs`` random unit
    directions v (truncation error O(eps^2 |f'''|), rounding O(ulp |f| / eps)).
    Returns the largest absolute difference seen.
    """
    xs, gs = _as_tuple(x), _as_tuple(grad)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for k in range(n_dirs):
        v = _unit_direction(rng, xs)
        numeric = (f(*_shift(xs, v, eps)) - f(*_shift(xs, v, -eps))) / (2 * eps)
        worst = max(worst, _compare(_inner(gs, v), float(numeric), rtol, atol,
                                    "directional derivative", name, k, eps))
    return worst


def check_vjp(f, vjp, x, *, rtol, atol=0.0, eps=1e-6, n_dirs=3, seed=0, name="f"):
    """Assert the adjoint identity <u, J v> = <J^T u, v> for f: x -> array.

    f : callable on the arrays of ``x`` returning an array (any shape).
    vjp : callable ``vjp(u)`` returning J^T u at x, same structure as x.
    J v comes from central differences; u is a random cotangent shaped like f(x).
    Returns the largest absolute difference seen.
    """
    xs = _as_tuple(x)
    rng = np.random.default_rng(seed)
    y0 = np.asarray(f(*xs), dtype=np.float64)
    worst = 0.0
    for k in range(n_dirs):
        v = _unit_direction(rng, xs)
        u = rng.standard_normal(y0.shape)
        jv = (np.asarray(f(*_shift(xs, v, eps))) - np.asarray(f(*_shift(xs, v, -eps)))) / (2 * eps)
        worst = max(worst, _compare(_inner(vjp(u), v), float(np.sum(u * jv)), rtol, atol,
                                    "adjoint identity <u, Jv> = <J^T u, v>", name, k, eps))
    return worst
