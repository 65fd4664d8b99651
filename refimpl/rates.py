"""Fitting the rates of measured claims (docs/theory.md, measurement protocols).

Each fit is a least-squares line (``np.polyfit``, degree 1) over a stated window
of a recorded trajectory, ignoring non-finite or non-positive values where a
logarithm is taken. Each returns ``None`` when the window holds fewer than
three usable points, so a caller never reports a slope fitted to nothing.

A run must also be long enough for its window to mean anything:
:func:`too_short` gives the NOT APPLICABLE reason for a stage of fewer than
:data:`MIN_FIT_STEPS` steps (docs/audit.md, "Fits need 100 steps").
"""
from __future__ import annotations

import numpy as np

__all__ = ["fit_power_law", "fit_exponential_rate", "fit_linear_slope", "too_short", "MIN_FIT_STEPS"]

MIN_POINTS = 3
# A stage must take at least this many steps before a fitted rate is reported or decides a
# verdict: the last decade [T/10, T] then starts at t >= 10 (past the first steps, where NGD
# still points along its initial gradient) and holds >= 91 steps, the last half >= 51
# (every step is recorded while T <= 2000). See docs/audit.md.
MIN_FIT_STEPS = 100


def too_short(n_steps, why=""):
    """The NOT APPLICABLE reason for a fit over a stage of ``n_steps`` steps, or None if it is long enough.

    Parameters
    ----------
    n_steps : int
        Steps the stage took (its last recorded step).
    why : str
        Appended in parentheses (e.g. the stop reason of a stage that stopped early).

    Returns
    -------
    str or None
        ``"too short to fit: n steps, need >= 100"`` when ``n_steps < MIN_FIT_STEPS``.
    """
    n = int(n_steps)
    if n >= MIN_FIT_STEPS:
        return None
    return f"too short to fit: {n} steps{f' ({why})' if why else ''}, need >= {MIN_FIT_STEPS}"


def _line(x, y):
    if len(x) < MIN_POINTS or np.ptp(x) == 0:
        return None
    return float(np.polyfit(x, y, 1)[0])


def fit_power_law(t, y, decades=1.0, floor=0.0):
    """Exponent p of ``y ~ t^p`` over the last ``decades`` of steps (``t >= T / 10^decades``).

    Parameters
    ----------
    t : array_like, shape (R,)
        Steps, increasing.
    y : array_like, shape (R,)
        Values; only finite values above ``floor`` (and ``t > 0``) are used.
    decades : float
        Width of the window in decades of t.
    floor : float
        Values ``<= floor`` are left out (e.g. a direction that already agrees within
        rounding: fitting those would fit the rounding noise).

    Returns
    -------
    float or None
        The slope of ``log y`` against ``log t``; None with fewer than three usable points.
    """
    t, y = np.asarray(t, float), np.asarray(y, float)
    if len(t) == 0 or t[-1] <= 0:
        return None
    sel = (t >= t[-1] / 10 ** decades) & (t > 0) & np.isfinite(y) & (y > floor)
    return _line(np.log(t[sel]), np.log(y[sel]))


def fit_exponential_rate(t, log_y, fraction=0.5):
    """Rate r of ``y ~ exp(r t)`` from natural-log values, over the last ``fraction`` of the
    finite points (the part of the run where ``log y`` is still representable)."""
    t, log_y = np.asarray(t, float), np.asarray(log_y, float)
    ok = np.isfinite(log_y)
    t, log_y = t[ok], log_y[ok]
    if len(t) == 0:
        return None
    sel = t >= t[0] + (1 - fraction) * (t[-1] - t[0])
    return _line(t[sel], log_y[sel])


def fit_linear_slope(t, y, fraction=0.5):
    """Slope of ``y`` against ``t`` over the last ``fraction`` of the steps."""
    t, y = np.asarray(t, float), np.asarray(y, float)
    if len(t) == 0:
        return None
    sel = (t >= (1 - fraction) * t[-1]) & np.isfinite(y)
    return _line(t[sel], y[sel])
